//! The dedicated thread a sandbox lives on.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc;

use tokio::sync::oneshot;

use super::{Limits, Sandbox, Script, ScriptError};

/// Calls waiting for the script thread beyond which new calls are refused with
/// [`ScriptError::Busy`] instead of queueing without bound.
const QUEUE_DEPTH: usize = 256;

type Job = Box<dyn FnOnce(&mut Sandbox) + Send>;

/// Owns a [`Sandbox`] with one script loaded on its own std thread and runs calls on
/// it one at a time, in order.
///
/// Dropping the last handle ends the thread after the call it is running; the thread
/// is not joined, so a drop never waits for a script.
#[derive(Debug, Clone)]
pub struct ScriptThread {
    name: Arc<str>,
    jobs: mpsc::SyncSender<Job>,
}

impl ScriptThread {
    /// Starts the thread and loads `script` on it. Blocks until the script's main chunk
    /// has run (bounded by the budget): from async code call it inside
    /// `spawn_blocking`.
    pub fn spawn(script: Script, limits: Limits) -> Result<Self, ScriptError> {
        let name: Arc<str> = Arc::from(script.name());
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE_DEPTH);
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), ScriptError>>();
        std::thread::Builder::new()
            .name(String::from("cyphonic-lua"))
            .spawn(move || serve(script, limits, queue, ready_tx))
            .map_err(|e| ScriptError::Setup(format!("cannot start the script thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self { name, jobs }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ScriptError::Stopped {
                script: name.to_string(),
            }),
        }
    }

    /// Runs `f` on the script thread and waits for its result without blocking the
    /// async worker. `f` should enter Lua through [`Sandbox::call`] or
    /// [`Sandbox::run`] so that the budget applies.
    pub async fn call<R, F>(&self, f: F) -> Result<R, ScriptError>
    where
        F: FnOnce(&mut Sandbox) -> Result<R, ScriptError> + Send + 'static,
        R: Send + 'static,
    {
        let reply = self.submit(f)?;
        reply.await.map_err(|_| self.stopped())?
    }

    /// [`ScriptThread::call`] for synchronous callers (never from an async task).
    pub fn call_blocking<R, F>(&self, f: F) -> Result<R, ScriptError>
    where
        F: FnOnce(&mut Sandbox) -> Result<R, ScriptError> + Send + 'static,
        R: Send + 'static,
    {
        let reply = self.submit(f)?;
        reply.blocking_recv().map_err(|_| self.stopped())?
    }

    /// Name of the script the thread runs.
    pub fn script_name(&self) -> &str {
        &self.name
    }

    fn submit<R, F>(&self, f: F) -> Result<oneshot::Receiver<Result<R, ScriptError>>, ScriptError>
    where
        F: FnOnce(&mut Sandbox) -> Result<R, ScriptError> + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |sandbox| {
            // The caller may have given up (deadline); nobody to tell then.
            let _ = tx.send(f(sandbox));
        });
        match self.jobs.try_send(job) {
            Ok(()) => Ok(rx),
            Err(mpsc::TrySendError::Full(_)) => Err(ScriptError::Busy {
                script: self.name.to_string(),
            }),
            Err(mpsc::TrySendError::Disconnected(_)) => Err(self.stopped()),
        }
    }

    fn stopped(&self) -> ScriptError {
        ScriptError::Stopped {
            script: self.name.to_string(),
        }
    }
}

fn serve(
    script: Script,
    limits: Limits,
    queue: mpsc::Receiver<Job>,
    ready: mpsc::Sender<Result<(), ScriptError>>,
) {
    let mut sandbox = match Sandbox::with_script(limits, &script) {
        Ok(sandbox) => {
            let _ = ready.send(Ok(()));
            sandbox
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    drop(ready);
    while let Ok(job) = queue.recv() {
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut sandbox)));
        let rebuild = match outcome {
            Ok(()) => sandbox.memory_exhausted(),
            Err(_) => {
                tracing::error!(script = script.name(), "a script call panicked");
                true
            }
        };
        if rebuild {
            match Sandbox::with_script(limits, &script) {
                Ok(fresh) => {
                    tracing::info!(script = script.name(), "script state rebuilt from source");
                    sandbox = fresh;
                }
                Err(e) => {
                    tracing::warn!(
                        script = script.name(),
                        "cannot rebuild the script state: {e}"
                    );
                }
            }
        }
    }
}
