//! The `cyphonic` Windows service: installing, removing, starting and stopping it through the
//! service control manager (SCM), and the service side of `cyphonicd` — the dispatcher, the
//! control handler that turns Stop/Shutdown/Preshutdown into a [`StopSignal`], and the status
//! reports (StartPending → Running → StopPending → Stopped with an exit code).
//!
//! The service runs as LocalSystem, starts automatically at boot (before anyone logs on) and is
//! restarted by the SCM after a failure: 5 s, 5 s, then every 30 s, the count resetting after a
//! day without failures. A body that returns an error stops the service with a
//! service-specific exit code, which counts as a failure for those recovery actions.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
    ServiceInfo, ServiceStartType, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{
    self, ServiceControlHandlerResult, ServiceStatusHandle,
};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};
use windows_sys::Win32::Foundation::{
    ERROR_ACCESS_DENIED, ERROR_FAILED_SERVICE_CONTROLLER_CONNECT, ERROR_SERVICE_ALREADY_RUNNING,
    ERROR_SERVICE_DOES_NOT_EXIST, ERROR_SERVICE_EXISTS, ERROR_SERVICE_MARKED_FOR_DELETE,
    ERROR_SERVICE_NOT_ACTIVE,
};

pub use windows_service::service::ServiceState;

/// The service's name in the SCM (`sc query cyphonic`).
pub const SERVICE_NAME: &str = "cyphonic";
/// The name shown in the Services console.
pub const DISPLAY_NAME: &str = "CYPHONIC node";
/// The description shown in the Services console.
pub const DESCRIPTION: &str = "CYPHONIC overlay network node (cyphonicd): keeps this machine's \
     overlay address, tunnel interface and overlay DNS rule up. Stopping it disconnects the \
     overlay.";
/// How long [`start`] waits for Running and [`stop`]/[`uninstall`] for Stopped.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Exit code reported when the body returns an error.
pub const EXIT_FAILED: u32 = 1;
/// Exit code reported when the body panics.
pub const EXIT_PANICKED: u32 = 2;

/// How long the SCM should expect the node to take to shut down once asked.
const STOP_WAIT_HINT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(
        "access denied {action} the {name} service: run from an elevated (Administrator) prompt"
    )]
    AccessDenied { action: &'static str, name: String },
    #[error("the {name} service is not installed")]
    NotInstalled { name: String },
    #[error(
        "the {name} service is marked for deletion: close the Services console (and any other \
         program holding it open), then retry; if it persists, reboot"
    )]
    MarkedForDeletion { name: String },
    #[error("the service executable must be an absolute path, not {}", .0.display())]
    RelativeExecutable(PathBuf),
    #[error(
        "the {name} service did not reach {wanted:?} within {} s (it is {current:?})",
        WAIT_TIMEOUT.as_secs()
    )]
    Timeout {
        name: String,
        wanted: ServiceState,
        current: ServiceState,
    },
    #[error("the {name} service stopped while starting (exit code {exit:?}): see cyphonicd's log")]
    StartFailed { name: String, exit: ServiceExitCode },
    #[error(
        "not started by the service control manager: run cyphonicd in a console, or start the \
         installed service (`sc start cyphonic`)"
    )]
    NotAService,
    #[error("service::run called while a service body is already pending")]
    AlreadyRunning,
    #[error("{action} the {name} service: {source}")]
    Api {
        action: &'static str,
        name: String,
        #[source]
        source: windows_service::Error,
    },
    /// The body returned an error (or panicked); the SCM got a failure exit code.
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

/// Installs (or, when it exists, reconfigures) the `cyphonic` service to run
/// `exe args...` as LocalSystem, started at boot, with restart-on-failure recovery.
pub fn install(exe: &Path, args: &[OsString]) -> Result<(), ServiceError> {
    install_as(&Names::real(), exe, args)
}

/// Stops the service if it runs (waiting up to [`WAIT_TIMEOUT`]) and deletes it.
pub fn uninstall() -> Result<(), ServiceError> {
    uninstall_named(SERVICE_NAME)
}

/// Starts the service and waits until it reports Running. Already running is success.
pub fn start() -> Result<(), ServiceError> {
    start_named(SERVICE_NAME)
}

/// Asks the service to stop and waits until it reports Stopped. Not running is success.
pub fn stop() -> Result<(), ServiceError> {
    stop_named(SERVICE_NAME)
}

/// The service's state, `None` when it is not installed.
pub fn status() -> Result<Option<ServiceState>, ServiceError> {
    status_named(SERVICE_NAME)
}

/// Runs `body` as the `cyphonic` service. Call it from `cyphonicd`'s `main` when started by
/// the SCM; it blocks until the service has stopped.
///
/// `body` runs on the service thread with a [`StopSignal`] that fires on Stop, Shutdown or
/// Preshutdown; it should run the node until then and return. The service reports Running
/// before calling `body`, StopPending when a stop is requested, and Stopped when `body`
/// returns: exit code 0 for `Ok`, service-specific [`EXIT_FAILED`] for `Err` (logged) and
/// [`EXIT_PANICKED`] for a panic, so the SCM's recovery actions restart the node.
///
/// Returns [`ServiceError::NotAService`] when the process was not started by the SCM (e.g.
/// run from a console), and [`ServiceError::Failed`] with the body's error after a failed run.
/// Windows answers NotAService at once but Wine 8 only after about 10 s, so call `run` only
/// when asked to (a flag such as `--service` in the arguments given to [`install`]) rather
/// than as a probe.
pub fn run<F>(body: F) -> Result<(), ServiceError>
where
    F: FnOnce(StopSignal) -> anyhow::Result<()> + Send + 'static,
{
    run_named(SERVICE_NAME, Box::new(body))
}

/// Fires once when the service is asked to stop. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StopSignal(watch::Receiver<bool>);

impl StopSignal {
    /// Completes once a stop has been requested (or the [`StopTrigger`] is gone).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        // An error means the trigger was dropped: nobody can ask to stop any more, so stop.
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// Whether a stop has been requested.
    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }
}

/// The sending side of a [`StopSignal`]: the service control handler holds one; a console run
/// can make its own with [`stop_channel`] and fire it on Ctrl-C.
#[derive(Debug)]
pub struct StopTrigger(watch::Sender<bool>);

impl StopTrigger {
    /// Requests the stop; idempotent.
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

/// A fresh trigger/signal pair.
pub fn stop_channel() -> (StopTrigger, StopSignal) {
    let (tx, rx) = watch::channel(false);
    (StopTrigger(tx), StopSignal(rx))
}

/// The service identity; tests install under their own names.
#[derive(Debug, Clone)]
struct Names {
    name: String,
    display_name: String,
}

impl Names {
    fn real() -> Self {
        Self {
            name: SERVICE_NAME.to_owned(),
            display_name: DISPLAY_NAME.to_owned(),
        }
    }
}

/// The recovery policy: restart after 5 s, 5 s, then 30 s (repeated); reset after a day.
fn failure_actions() -> ServiceFailureActions {
    let restart = |secs| ServiceAction {
        action_type: ServiceActionType::Restart,
        delay: Duration::from_secs(secs),
    };
    ServiceFailureActions {
        reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(24 * 60 * 60)),
        reboot_msg: None,
        command: None,
        actions: Some(vec![restart(5), restart(5), restart(30)]),
    }
}

fn install_as(names: &Names, exe: &Path, args: &[OsString]) -> Result<(), ServiceError> {
    let name = &names.name;
    if !exe.is_absolute() {
        return Err(ServiceError::RelativeExecutable(exe.to_owned()));
    }
    let manager = manager(
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
        "installing",
        name,
    )?;
    let info = ServiceInfo {
        name: name.into(),
        display_name: names.display_name.clone().into(),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: exe.to_owned(),
        launch_arguments: args.to_vec(),
        dependencies: vec![],
        account_name: None, // LocalSystem
        account_password: None,
    };
    let access = ServiceAccess::QUERY_CONFIG | ServiceAccess::CHANGE_CONFIG | ServiceAccess::START;
    let service = match manager.create_service(&info, access) {
        Ok(service) => {
            tracing::info!("service {name} created");
            service
        }
        Err(windows_service::Error::Winapi(e))
            if e.raw_os_error() == Some(ERROR_SERVICE_EXISTS as i32) =>
        {
            let service = manager
                .open_service(name, access)
                .map_err(|e| api_error("opening", name, e))?;
            service
                .change_config(&info)
                .map_err(|e| api_error("reconfiguring", name, e))?;
            tracing::info!("service {name} already existed: configuration updated");
            service
        }
        Err(e) => return Err(api_error("creating", name, e)),
    };
    service
        .set_description(DESCRIPTION)
        .map_err(|e| api_error("describing", name, e))?;
    service
        .update_failure_actions(failure_actions())
        .map_err(|e| api_error("setting recovery actions of", name, e))?;
    // Without this flag only crashes trigger recovery, not a Stopped report with an error
    // code. Older or emulated SCMs may lack it; recovery after crashes still works then.
    if let Err(e) = service.set_failure_actions_on_non_crash_failures(true) {
        tracing::warn!(
            "service {name}: cannot enable recovery on non-crash failures ({e}); the node is \
             restarted only after crashes"
        );
    }
    Ok(())
}

fn uninstall_named(name: &str) -> Result<(), ServiceError> {
    let manager = manager(ServiceManagerAccess::CONNECT, "uninstalling", name)?;
    let service = manager
        .open_service(
            name,
            ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
        )
        .map_err(|e| api_error("opening", name, e))?;
    let state = service
        .query_status()
        .map_err(|e| api_error("querying", name, e))?
        .current_state;
    if state != ServiceState::Stopped {
        request_stop(&service, name)?;
        wait_for(&service, name, ServiceState::Stopped)?;
    }
    service
        .delete()
        .map_err(|e| api_error("deleting", name, e))?;
    tracing::info!("service {name} deleted");
    Ok(())
}

fn start_named(name: &str) -> Result<(), ServiceError> {
    let manager = manager(ServiceManagerAccess::CONNECT, "starting", name)?;
    let service = manager
        .open_service(name, ServiceAccess::QUERY_STATUS | ServiceAccess::START)
        .map_err(|e| api_error("opening", name, e))?;
    match service.start::<OsString>(&[]) {
        Ok(()) => {}
        Err(windows_service::Error::Winapi(e))
            if e.raw_os_error() == Some(ERROR_SERVICE_ALREADY_RUNNING as i32) => {}
        Err(e) => return Err(api_error("starting", name, e)),
    }
    let status = wait_for(&service, name, ServiceState::Running)?;
    if status.current_state == ServiceState::Stopped {
        return Err(ServiceError::StartFailed {
            name: name.to_owned(),
            exit: status.exit_code,
        });
    }
    Ok(())
}

fn stop_named(name: &str) -> Result<(), ServiceError> {
    let manager = manager(ServiceManagerAccess::CONNECT, "stopping", name)?;
    let service = manager
        .open_service(name, ServiceAccess::QUERY_STATUS | ServiceAccess::STOP)
        .map_err(|e| api_error("opening", name, e))?;
    request_stop(&service, name)?;
    wait_for(&service, name, ServiceState::Stopped).map(drop)
}

fn status_named(name: &str) -> Result<Option<ServiceState>, ServiceError> {
    let manager = manager(ServiceManagerAccess::CONNECT, "querying", name)?;
    let service = match manager.open_service(name, ServiceAccess::QUERY_STATUS) {
        Ok(service) => service,
        Err(e) => {
            return match api_error("opening", name, e) {
                ServiceError::NotInstalled { .. } => Ok(None),
                other => Err(other),
            };
        }
    };
    let status = service
        .query_status()
        .map_err(|e| api_error("querying", name, e))?;
    Ok(Some(status.current_state))
}

fn request_stop(
    service: &windows_service::service::Service,
    name: &str,
) -> Result<(), ServiceError> {
    match service.stop() {
        Ok(_) => Ok(()),
        Err(windows_service::Error::Winapi(e))
            if e.raw_os_error() == Some(ERROR_SERVICE_NOT_ACTIVE as i32) =>
        {
            Ok(())
        }
        Err(e) => Err(api_error("stopping", name, e)),
    }
}

/// Polls until the service is in `wanted` or Stopped (a failed start ends there), or times out.
fn wait_for(
    service: &windows_service::service::Service,
    name: &str,
    wanted: ServiceState,
) -> Result<ServiceStatus, ServiceError> {
    let deadline = Instant::now() + WAIT_TIMEOUT;
    loop {
        let status = service
            .query_status()
            .map_err(|e| api_error("querying", name, e))?;
        if status.current_state == wanted || status.current_state == ServiceState::Stopped {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            return Err(ServiceError::Timeout {
                name: name.to_owned(),
                wanted,
                current: status.current_state,
            });
        }
        std::thread::sleep(POLL);
    }
}

fn manager(
    access: ServiceManagerAccess,
    action: &'static str,
    name: &str,
) -> Result<ServiceManager, ServiceError> {
    ServiceManager::local_computer(None::<&str>, access).map_err(|e| api_error(action, name, e))
}

fn api_error(action: &'static str, name: &str, e: windows_service::Error) -> ServiceError {
    let name = name.to_owned();
    let code = match &e {
        windows_service::Error::Winapi(io) => io.raw_os_error().map(|c| c as u32),
        _ => None,
    };
    match code {
        Some(ERROR_ACCESS_DENIED) => ServiceError::AccessDenied { action, name },
        Some(ERROR_SERVICE_DOES_NOT_EXIST) => ServiceError::NotInstalled { name },
        Some(ERROR_SERVICE_MARKED_FOR_DELETE) => ServiceError::MarkedForDeletion { name },
        _ => ServiceError::Api {
            action,
            name,
            source: e,
        },
    }
}

// ---- the service side ----

type Body = Box<dyn FnOnce(StopSignal) -> anyhow::Result<()> + Send>;

/// The body handed from [`run`] to the dispatcher's `service_main` callback, which the SCM
/// calls on its own thread with no way to pass context but this.
static PENDING: Mutex<Option<(String, Body)>> = Mutex::new(None);
/// The body's result, handed back to [`run`].
static OUTCOME: Mutex<Option<anyhow::Result<()>>> = Mutex::new(None);

define_windows_service!(ffi_service_main, service_main);

fn run_named(name: &str, body: Body) -> Result<(), ServiceError> {
    {
        let mut pending = lock(&PENDING);
        if pending.is_some() {
            return Err(ServiceError::AlreadyRunning);
        }
        *pending = Some((name.to_owned(), body));
    }
    let dispatched = service_dispatcher::start(name, ffi_service_main);
    let never_started = lock(&PENDING).take().is_some();
    match dispatched {
        Err(windows_service::Error::Winapi(e))
            if e.raw_os_error() == Some(ERROR_FAILED_SERVICE_CONTROLLER_CONNECT as i32) =>
        {
            Err(ServiceError::NotAService)
        }
        Err(e) => Err(api_error("dispatching", name, e)),
        Ok(()) if never_started => Ok(()),
        Ok(()) => match lock(&OUTCOME).take() {
            Some(Err(e)) => Err(ServiceError::Failed(e)),
            Some(Ok(())) | None => Ok(()),
        },
    }
}

fn service_main(_arguments: Vec<OsString>) {
    let Some((name, body)) = lock(&PENDING).take() else {
        return;
    };
    if let Err(e) = serve(&name, body) {
        tracing::error!("service {name}: {e:#}");
        *lock(&OUTCOME) = Some(Err(e));
    }
}

/// Runs the body between the status reports. The body's outcome is stored for [`run`] before
/// Stopped is reported, because that report lets the dispatcher (and so [`run`]) return.
fn serve(name: &str, body: Body) -> anyhow::Result<()> {
    let (trigger, signal) = stop_channel();
    let handle_cell: Arc<OnceLock<ServiceStatusHandle>> = Arc::default();
    let cell = Arc::clone(&handle_cell);
    let handler = move |control| {
        let (result, stopping) = control_response(control);
        if stopping {
            if let Some(handle) = cell.get() {
                report(handle, ServiceState::StopPending, ServiceExitCode::NO_ERROR);
            }
            trigger.stop();
        }
        result
    };
    let handle = service_control_handler::register(name, handler)
        .map_err(|e| anyhow::anyhow!("registering the {name} service control handler: {e}"))?;
    let _ = handle_cell.set(handle);
    report(
        &handle,
        ServiceState::StartPending,
        ServiceExitCode::NO_ERROR,
    );
    report(&handle, ServiceState::Running, ServiceExitCode::NO_ERROR);

    let (exit, outcome) = match panic::catch_unwind(AssertUnwindSafe(|| body(signal))) {
        Ok(Ok(())) => (ServiceExitCode::NO_ERROR, Ok(())),
        Ok(Err(e)) => {
            tracing::error!("service {name} failed: {e:#}");
            (ServiceExitCode::ServiceSpecific(EXIT_FAILED), Err(e))
        }
        Err(_) => {
            tracing::error!("service {name} panicked");
            (
                ServiceExitCode::ServiceSpecific(EXIT_PANICKED),
                Err(anyhow::anyhow!("the {name} service panicked")),
            )
        }
    };
    *lock(&OUTCOME) = Some(outcome);
    report(&handle, ServiceState::Stopped, exit);
    Ok(())
}

/// How the control handler answers `control`, and whether it asks the node to stop.
fn control_response(control: ServiceControl) -> (ServiceControlHandlerResult, bool) {
    match control {
        ServiceControl::Stop | ServiceControl::Shutdown | ServiceControl::Preshutdown => {
            (ServiceControlHandlerResult::NoError, true)
        }
        // The SCM asks for the current status; SetServiceStatus already told it.
        ServiceControl::Interrogate => (ServiceControlHandlerResult::NoError, false),
        _ => (ServiceControlHandlerResult::NotImplemented, false),
    }
}

/// The status to report for `state`: which controls are accepted, and a wait hint for the
/// pending states.
fn status_for(state: ServiceState, exit_code: ServiceExitCode) -> ServiceStatus {
    let (controls_accepted, wait_hint, checkpoint) = match state {
        // Preshutdown (rather than Shutdown) gives the node time to remove its DNS rule and
        // adapter before the system goes down.
        ServiceState::Running => (
            ServiceControlAccept::STOP | ServiceControlAccept::PRESHUTDOWN,
            Duration::ZERO,
            0,
        ),
        ServiceState::StartPending => (ServiceControlAccept::empty(), Duration::from_secs(10), 1),
        ServiceState::StopPending => (ServiceControlAccept::empty(), STOP_WAIT_HINT, 1),
        _ => (ServiceControlAccept::empty(), Duration::ZERO, 0),
    };
    ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted,
        exit_code,
        checkpoint,
        wait_hint,
        process_id: None,
    }
}

fn report(handle: &ServiceStatusHandle, state: ServiceState, exit_code: ServiceExitCode) {
    if let Err(e) = handle.set_service_status(status_for(state, exit_code)) {
        tracing::warn!("reporting service state {state:?}: {e}");
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::windows::security::under_wine;
    use windows_sys::Win32::Foundation::ERROR_INVALID_LEVEL;

    fn test_names(tag: &str) -> Names {
        Names {
            name: format!("cyphonic-test-{tag}-{}", std::process::id()),
            display_name: format!("CYPHONIC node (test {tag})"),
        }
    }

    fn is_invalid_level(e: &windows_service::Error) -> bool {
        matches!(e, windows_service::Error::Winapi(io) if io.raw_os_error() == Some(ERROR_INVALID_LEVEL as i32))
    }

    fn open(name: &str) -> windows_service::service::Service {
        ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
            .unwrap()
            .open_service(
                name,
                ServiceAccess::QUERY_CONFIG | ServiceAccess::QUERY_STATUS,
            )
            .unwrap()
    }

    #[test]
    fn install_query_uninstall() {
        let names = test_names("install");
        let exe = std::env::current_exe().unwrap();
        let args = [
            OsString::from("--service"),
            OsString::from("--config"),
            OsString::from(r"C:\Program Data\x.yaml"),
        ];
        install_as(&names, &exe, &args).unwrap();

        let service = open(&names.name);
        let config = service.query_config().unwrap();
        assert_eq!(config.start_type, ServiceStartType::AutoStart);
        assert_eq!(config.service_type, ServiceType::OWN_PROCESS);
        assert_eq!(config.display_name, OsString::from(&names.display_name));
        let image = config.executable_path.to_string_lossy().into_owned();
        assert!(image.contains(&*exe.to_string_lossy()), "{image}");
        assert!(
            image.ends_with(r#"--service --config "C:\Program Data\x.yaml""#),
            "{image}"
        );
        let account = config.account_name.unwrap_or_default();
        assert!(
            account.is_empty() || account.eq_ignore_ascii_case("LocalSystem"),
            "{account:?}"
        );
        assert_eq!(
            status_named(&names.name).unwrap(),
            Some(ServiceState::Stopped)
        );

        // Wine 8's SCM accepts the recovery settings but cannot return them (ERROR_INVALID_LEVEL).
        let wine = under_wine();
        match service.get_failure_actions() {
            Ok(actions) => {
                assert_eq!(actions.reset_period, failure_actions().reset_period);
                assert_eq!(actions.actions, failure_actions().actions);
            }
            Err(e) if wine && is_invalid_level(&e) => {
                eprintln!("wine: failure actions not queryable: {e}");
            }
            Err(e) => panic!("querying failure actions: {e}"),
        }
        match service.get_failure_actions_on_non_crash_failures() {
            Ok(flag) => assert!(flag),
            Err(e) if wine && is_invalid_level(&e) => {
                eprintln!("wine: failure-actions flag not queryable: {e}");
            }
            Err(e) => panic!("querying the failure-actions flag: {e}"),
        }
        drop(service);

        // Reinstalling updates instead of failing.
        install_as(&names, &exe, &[]).unwrap();
        let image = open(&names.name).query_config().unwrap().executable_path;
        assert!(
            !image.to_string_lossy().contains("--service"),
            "{}",
            image.display()
        );

        uninstall_named(&names.name).unwrap();
        assert_eq!(status_named(&names.name).unwrap(), None);
        let err = uninstall_named(&names.name).unwrap_err();
        assert!(matches!(err, ServiceError::NotInstalled { .. }), "{err}");
        let err = start_named(&names.name).unwrap_err();
        assert!(matches!(err, ServiceError::NotInstalled { .. }), "{err}");
    }

    /// The service body for `runs_under_the_scm`: the test binary itself, started by the SCM
    /// with arguments that select this (otherwise ignored) test.
    #[test]
    #[ignore = "run by the service control manager in runs_under_the_scm"]
    fn service_entry() {
        // The SCM passes `--exact` (see runs_under_the_scm); `--include-ignored` by hand does
        // not, and must not race the other tests for the pending body.
        if !std::env::args().any(|a| a == "--exact") {
            return;
        }
        let dir = scm_test_dir();
        let result = run_named(
            SCM_TEST_NAME,
            Box::new(move |stop: StopSignal| {
                std::fs::write(dir.join("running"), b"")?;
                if dir.join("fail").exists() {
                    anyhow::bail!("asked to fail");
                }
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(stop.wait());
                std::fs::write(dir.join("stopped"), b"")?;
                Ok(())
            }),
        );
        // Run by hand (`--include-ignored`): not a service, nothing to report.
        if !matches!(result, Err(ServiceError::NotAService)) {
            std::fs::write(scm_test_dir().join("returned"), format!("{result:?}")).unwrap();
        }
    }

    const SCM_TEST_NAME: &str = "cyphonic-test-scm";

    /// Serializes the tests that start a service dispatcher: Wine hands the control pipe of a
    /// starting service to whichever process calls StartServiceCtrlDispatcherW first, so a
    /// concurrent in-process call would steal it.
    static DISPATCHER: Mutex<()> = Mutex::new(());

    fn scm_test_dir() -> PathBuf {
        std::env::temp_dir().join(SCM_TEST_NAME)
    }

    fn wait_file(path: &Path) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if path.exists() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    #[test]
    fn runs_under_the_scm() {
        let _serial = lock(&DISPATCHER);
        let names = Names {
            name: SCM_TEST_NAME.to_owned(),
            display_name: "CYPHONIC node (SCM test)".to_owned(),
        };
        let dir = scm_test_dir();
        let _ = uninstall_named(&names.name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let exe = std::env::current_exe().unwrap();
        let args: Vec<OsString> = [
            "--ignored",
            "--exact",
            "windows::service::tests::service_entry",
        ]
        .into_iter()
        .map(OsString::from)
        .collect();
        install_as(&names, &exe, &args).unwrap();

        // Start, Running, stop: the body sees the stop signal and returns Ok.
        start_named(&names.name).unwrap();
        assert_eq!(
            status_named(&names.name).unwrap(),
            Some(ServiceState::Running)
        );
        assert!(wait_file(&dir.join("running")));
        stop_named(&names.name).unwrap();
        assert_eq!(
            status_named(&names.name).unwrap(),
            Some(ServiceState::Stopped)
        );
        assert!(wait_file(&dir.join("stopped")));
        assert!(wait_file(&dir.join("returned")));
        assert_eq!(
            std::fs::read_to_string(dir.join("returned")).unwrap(),
            "Ok(())"
        );

        // A failing body stops the service with the service-specific exit code.
        for f in ["running", "stopped", "returned"] {
            std::fs::remove_file(dir.join(f)).unwrap();
        }
        std::fs::write(dir.join("fail"), b"").unwrap();
        let started = start_named(&names.name);
        assert!(wait_file(&dir.join("returned")));
        let service = open(&names.name);
        let status = wait_for(&service, &names.name, ServiceState::Stopped).unwrap();
        assert_eq!(status.current_state, ServiceState::Stopped);
        assert_eq!(
            status.exit_code,
            ServiceExitCode::ServiceSpecific(EXIT_FAILED)
        );
        if let Err(e) = started {
            assert!(
                matches!(
                    e,
                    ServiceError::StartFailed {
                        exit: ServiceExitCode::ServiceSpecific(EXIT_FAILED),
                        ..
                    }
                ),
                "{e}"
            );
        }
        let returned = std::fs::read_to_string(dir.join("returned")).unwrap();
        assert!(returned.contains("asked to fail"), "{returned}");
        drop(service);

        uninstall_named(&names.name).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn relative_executable_is_rejected() {
        let err = install_as(&test_names("relative"), Path::new("cyphonicd.exe"), &[]).unwrap_err();
        assert!(matches!(err, ServiceError::RelativeExecutable(_)), "{err}");
    }

    #[test]
    fn run_outside_the_scm_says_so() {
        let _serial = lock(&DISPATCHER);
        let err = run_named("cyphonic-test-not-a-service", Box::new(|_| Ok(()))).unwrap_err();
        assert!(matches!(err, ServiceError::NotAService), "{err}");
        // The body was not kept: a later call may dispatch again.
        assert!(lock(&PENDING).is_none());
    }

    #[test]
    fn stop_controls_stop_and_interrogate_answers() {
        for control in [
            ServiceControl::Stop,
            ServiceControl::Shutdown,
            ServiceControl::Preshutdown,
        ] {
            let (result, stopping) = control_response(control);
            assert!(matches!(result, ServiceControlHandlerResult::NoError));
            assert!(stopping, "{control:?}");
        }
        let (result, stopping) = control_response(ServiceControl::Interrogate);
        assert!(matches!(result, ServiceControlHandlerResult::NoError));
        assert!(!stopping);
        let (result, stopping) = control_response(ServiceControl::Pause);
        assert!(matches!(
            result,
            ServiceControlHandlerResult::NotImplemented
        ));
        assert!(!stopping);
    }

    #[test]
    fn status_reports_accept_stop_only_when_running() {
        let running = status_for(ServiceState::Running, ServiceExitCode::NO_ERROR);
        assert!(
            running
                .controls_accepted
                .contains(ServiceControlAccept::STOP | ServiceControlAccept::PRESHUTDOWN)
        );
        assert!(
            !running
                .controls_accepted
                .contains(ServiceControlAccept::SHUTDOWN)
        );
        let stopping = status_for(ServiceState::StopPending, ServiceExitCode::NO_ERROR);
        assert!(stopping.controls_accepted.is_empty());
        assert!(stopping.wait_hint > Duration::ZERO && stopping.checkpoint > 0);
        let failed = status_for(
            ServiceState::Stopped,
            ServiceExitCode::ServiceSpecific(EXIT_FAILED),
        );
        assert_eq!(failed.exit_code, ServiceExitCode::ServiceSpecific(1));
    }

    #[test]
    fn failure_actions_policy() {
        let actions = failure_actions();
        assert_eq!(
            actions.reset_period,
            ServiceFailureResetPeriod::After(Duration::from_secs(86400))
        );
        let delays: Vec<_> = actions
            .actions
            .unwrap()
            .iter()
            .map(|a| (a.action_type, a.delay.as_secs()))
            .collect();
        assert_eq!(
            delays,
            [
                (ServiceActionType::Restart, 5),
                (ServiceActionType::Restart, 5),
                (ServiceActionType::Restart, 30)
            ]
        );
    }

    #[tokio::test]
    async fn stop_signal_fires_once_triggered() {
        let (trigger, signal) = stop_channel();
        assert!(!signal.is_requested());
        let waiter = tokio::spawn({
            let signal = signal.clone();
            async move { signal.wait().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        trigger.stop();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(signal.is_requested());
        // Already requested: returns at once; a dropped trigger also releases waiters.
        signal.wait().await;
        let (trigger, signal) = stop_channel();
        drop(trigger);
        tokio::time::timeout(Duration::from_secs(5), signal.wait())
            .await
            .unwrap();
    }
}
