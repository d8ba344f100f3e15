//! The control API transport on Windows: a named pipe (the Unix socket's counterpart) whose
//! security descriptor lets only SYSTEM and the Administrators group open it, created as the
//! first instance of its name so a second daemon, or a process squatting the name to
//! impersonate the node, is detected at startup instead of silently sharing the name.
//!
//! The server keeps one instance listening at all times (tokio's documented pattern): a client
//! never sees `ERROR_FILE_NOT_FOUND` between two connections. Clients retry on
//! `ERROR_PIPE_BUSY` (all instances momentarily taken) for a few seconds.
#![allow(unsafe_code)]

use std::io;
use std::os::windows::io::AsRawHandle;
use std::ptr;
use std::time::{Duration, Instant};

use tokio::net::windows::named_pipe::{
    ClientOptions, NamedPipeClient, NamedPipeServer, PipeMode, ServerOptions,
};
use windows_sys::Win32::Foundation::{ERROR_ACCESS_DENIED, ERROR_PIPE_BUSY};
use windows_sys::Win32::Security::Authorization::{GetSecurityInfo, SE_KERNEL_OBJECT};
use windows_sys::Win32::Security::{DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR};

use super::security::{SecurityDescriptor, context};

/// The pipe `cyphonicd` serves its control API on.
pub const DEFAULT_PIPE: &str = r"\\.\pipe\cyphonic";

/// Protected DACL (no inherited entries): full access for LocalSystem and the built-in
/// Administrators group, nothing for anyone else. A non-elevated administrator's token has the
/// Administrators SID deny-only, so the CLI needs an elevated prompt, like `sudo` on Linux.
pub const PIPE_SDDL: &str = "D:P(A;;GA;;;SY)(A;;GA;;;BA)";

/// How long [`connect`] retries while every instance of the pipe is busy.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

const BUSY_RETRY: Duration = Duration::from_millis(50);

/// A named pipe server that accepts clients one at a time while always keeping one instance
/// listening.
#[derive(Debug)]
pub struct PipeListener {
    name: String,
    sd: SecurityDescriptor,
    next: NamedPipeServer,
}

impl PipeListener {
    /// Creates the first instance of `name` with [`PIPE_SDDL`]. Must be called inside a Tokio
    /// runtime.
    ///
    /// Fails with [`io::ErrorKind::AddrInUse`] ("another cyphonicd is running or the pipe name
    /// is taken") when an instance of `name` already exists, whoever created it.
    pub fn bind(name: &str) -> io::Result<Self> {
        let taken = |why: &dyn std::fmt::Display| {
            io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "cannot create the control pipe {name}: another cyphonicd is running or the \
                     pipe name is taken ({why}); stop the other instance (`sc query cyphonic`, \
                     Task Manager) and retry"
                ),
            )
        };
        // FILE_FLAG_FIRST_PIPE_INSTANCE below is the race-free check on Windows; this probe
        // catches a live server where that flag is ignored (Wine 8). The probe client sends
        // nothing and is closed at once.
        match ClientOptions::new().open(name) {
            Ok(probe) => {
                drop(probe);
                return Err(taken(&"a server answers on it"));
            }
            Err(e) if is_taken(&e) => return Err(taken(&e)),
            // NotFound is the normal case; other errors resurface from the create below.
            Err(_) => {}
        }
        let sd = SecurityDescriptor::from_sddl(PIPE_SDDL)?;
        let next = create_instance(name, &sd, true).map_err(|e| {
            if is_taken(&e) {
                taken(&e)
            } else {
                context(e, format_args!("creating the control pipe {name}"))
            }
        })?;
        Ok(Self {
            name: name.to_owned(),
            sd,
            next,
        })
    }

    /// The pipe's name (`\\.\pipe\...`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The listening instance, e.g. to read back its DACL with [`pipe_dacl_sddl`].
    pub fn listening_instance(&self) -> &NamedPipeServer {
        &self.next
    }

    /// Waits for the next client and returns its connected server end. A fresh instance is
    /// created before returning so that one is always listening. After an error (e.g. a client
    /// that vanished before being accepted) the listener stays usable: call `accept` again.
    pub async fn accept(&mut self) -> io::Result<NamedPipeServer> {
        if let Err(e) = self.next.connect().await {
            // That instance is spent; replace it so the next accept listens again.
            if let Ok(fresh) = create_instance(&self.name, &self.sd, false) {
                self.next = fresh;
            }
            return Err(context(e, format_args!("accepting on {}", self.name)));
        }
        let fresh = create_instance(&self.name, &self.sd, false)
            .map_err(|e| context(e, format_args!("creating a new instance of {}", self.name)))?;
        Ok(std::mem::replace(&mut self.next, fresh))
    }
}

/// Connects to the pipe `name`, retrying for [`CONNECT_TIMEOUT`] while all instances are busy.
///
/// Errors keep their kind: [`io::ErrorKind::NotFound`] (immediately) when nothing serves the
/// name, [`io::ErrorKind::PermissionDenied`] for a non-elevated caller,
/// [`io::ErrorKind::TimedOut`] when the server stays busy.
pub async fn connect(name: &str) -> io::Result<NamedPipeClient> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        // The default SECURITY_IDENTIFICATION QoS keeps a squatting server from impersonating
        // the (administrator) client.
        let err = match ClientOptions::new().open(name) {
            Ok(client) => return Ok(client),
            Err(e) => e,
        };
        if err.raw_os_error() == Some(ERROR_PIPE_BUSY as i32) {
            if Instant::now() < deadline {
                tokio::time::sleep(BUSY_RETRY).await;
                continue;
            }
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "cyphonicd's control pipe {name} stayed busy for {} s",
                    CONNECT_TIMEOUT.as_secs()
                ),
            ));
        }
        return Err(match err.kind() {
            io::ErrorKind::NotFound => io::Error::new(
                io::ErrorKind::NotFound,
                format!("nothing listens on {name}: is cyphonicd running? (`sc query cyphonic`)"),
            ),
            io::ErrorKind::PermissionDenied => io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "access to {name} denied: the control pipe is restricted to Administrators \
                     and SYSTEM; run from an elevated prompt"
                ),
            ),
            _ => context(err, format_args!("connecting to {name}")),
        });
    }
}

/// The DACL of an open pipe handle (either end) as SDDL, e.g. `D:P(A;;FA;;;SY)(A;;FA;;;BA)`.
pub fn pipe_dacl_sddl(pipe: &impl AsRawHandle) -> io::Result<String> {
    let mut sd: PSECURITY_DESCRIPTOR = ptr::null_mut();
    // SAFETY: the handle is open for the lifetime of the borrow; only the descriptor
    // out-parameter is requested (the others are documented as optional) and it receives a
    // LocalAlloc'd buffer that `SecurityDescriptor` frees.
    let rc = unsafe {
        GetSecurityInfo(
            pipe.as_raw_handle(),
            SE_KERNEL_OBJECT,
            DACL_SECURITY_INFORMATION,
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            &mut sd,
        )
    };
    if rc != 0 || sd.is_null() {
        return Err(context(
            io::Error::from_raw_os_error(rc as i32),
            "reading the pipe's security descriptor",
        ));
    }
    // SAFETY: `sd` was just allocated by GetSecurityInfo with LocalAlloc and is owned by nobody
    // else.
    let sd = unsafe { SecurityDescriptor::from_local(sd, "pipe handle".to_owned()) };
    sd.to_sddl(DACL_SECURITY_INFORMATION)
}

/// The errors by which Windows says an instance of the name exists: the DACL of someone
/// else's pipe (or FILE_FLAG_FIRST_PIPE_INSTANCE) denies us, or all its instances are busy.
fn is_taken(e: &io::Error) -> bool {
    let code = e.raw_os_error();
    code == Some(ERROR_ACCESS_DENIED as i32) || code == Some(ERROR_PIPE_BUSY as i32)
}

fn create_instance(
    name: &str,
    sd: &SecurityDescriptor,
    first: bool,
) -> io::Result<NamedPipeServer> {
    let mut attrs = sd.attributes();
    let mut opts = ServerOptions::new();
    opts.first_pipe_instance(first)
        .reject_remote_clients(true)
        .pipe_mode(PipeMode::Byte);
    // SAFETY: `attrs` is a valid SECURITY_ATTRIBUTES whose descriptor (`sd`) outlives this
    // call; CreateNamedPipeW copies the descriptor into the kernel object.
    unsafe { opts.create_with_security_attributes_raw(name, (&raw mut attrs).cast()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::windows::security::under_wine;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    fn unique(tag: &str) -> String {
        format!(r"\\.\pipe\cyphonic-test-{tag}-{}", std::process::id())
    }

    /// Trustees of the ACEs in a DACL's SDDL (the last field of each `(...)`).
    fn trustees(sddl: &str) -> Vec<String> {
        sddl.split('(')
            .skip(1)
            .map(|ace| {
                ace.trim_end_matches(')')
                    .rsplit(';')
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }

    #[tokio::test]
    async fn echo_both_ways_and_dacl_is_admins_only() {
        let name = unique("echo");
        let mut listener = PipeListener::bind(&name).unwrap();
        assert_eq!(listener.name(), name);

        let dacl = pipe_dacl_sddl(listener.listening_instance()).unwrap();
        eprintln!("pipe DACL: {dacl}");
        assert!(dacl.starts_with("D:P"), "DACL not protected: {dacl}");
        let mut who = trustees(&dacl);
        who.sort();
        assert_eq!(who, ["BA", "SY"], "unexpected ACEs in {dacl}");

        let server = tokio::spawn(async move {
            let conn = listener.accept().await.unwrap();
            // The replacement instance carries the same DACL.
            let again = pipe_dacl_sddl(listener.listening_instance()).unwrap();
            let (r, mut w) = tokio::io::split(conn);
            let mut line = String::new();
            BufReader::new(r).read_line(&mut line).await.unwrap();
            w.write_all(format!("echo {line}").as_bytes())
                .await
                .unwrap();
            w.flush().await.unwrap();
            (line, again)
        });

        let client = connect(&name).await.unwrap();
        let client_dacl = pipe_dacl_sddl(&client).unwrap();
        let (r, mut w) = tokio::io::split(client);
        w.write_all(b"reload\n").await.unwrap();
        let mut reply = String::new();
        BufReader::new(r).read_line(&mut reply).await.unwrap();

        let (got, again) = server.await.unwrap();
        assert_eq!(got, "reload\n");
        assert_eq!(reply, "echo reload\n");
        assert_eq!(again, dacl);
        assert_eq!(client_dacl, dacl);
    }

    #[tokio::test]
    async fn serves_several_clients_in_turn() {
        let name = unique("many");
        let mut listener = PipeListener::bind(&name).unwrap();
        let server = tokio::spawn(async move {
            for _ in 0..3 {
                let mut conn = listener.accept().await.unwrap();
                conn.write_all(b"hi\n").await.unwrap();
            }
        });
        for _ in 0..3 {
            let client = connect(&name).await.unwrap();
            let mut line = String::new();
            BufReader::new(client).read_line(&mut line).await.unwrap();
            assert_eq!(line, "hi\n");
        }
        server.await.unwrap();
    }

    #[tokio::test]
    async fn listener_survives_a_client_that_left_early() {
        let name = unique("early");
        let mut listener = PipeListener::bind(&name).unwrap();
        // Connects and closes before the server accepts: Windows then fails the accept with
        // ERROR_NO_DATA, Wine hands over a connection at EOF. Either way the next works.
        drop(connect(&name).await.unwrap());
        if let Ok(mut gone) = listener.accept().await {
            let mut buf = Vec::new();
            let n = tokio::io::AsyncReadExt::read_to_end(&mut gone, &mut buf).await;
            assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        }
        let server = tokio::spawn(async move {
            let mut conn = listener.accept().await.unwrap();
            conn.write_all(b"ok\n").await.unwrap();
        });
        let mut line = String::new();
        BufReader::new(connect(&name).await.unwrap())
            .read_line(&mut line)
            .await
            .unwrap();
        assert_eq!(line, "ok\n");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn pipe_dacl_is_enforced_on_connect() {
        // A pipe only LocalService may open stands for ours seen from a non-elevated prompt.
        let name = unique("denied");
        let sd = SecurityDescriptor::from_sddl("D:P(A;;GA;;;LS)").unwrap();
        let _server = create_instance(&name, &sd, true).unwrap();
        match connect(&name).await {
            Err(err) => {
                assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
                assert!(
                    err.to_string().contains("run from an elevated prompt"),
                    "{err}"
                );
            }
            // Wine 8 stores a pipe's DACL (it reads back) but does not check it on open.
            Ok(_) if under_wine() => eprintln!("wine: pipe DACL not enforced on open"),
            Ok(_) => panic!("connected through a DACL that denies us"),
        }
        // And a daemon started there reports the name as taken.
        let err = PipeListener::bind(&name).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    }

    #[tokio::test]
    async fn second_bind_is_detected() {
        let name = unique("dup");
        let _first = PipeListener::bind(&name).unwrap();
        let err = PipeListener::bind(&name).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        assert!(
            err.to_string()
                .contains("another cyphonicd is running or the pipe name is taken"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn squatted_name_is_detected() {
        let name = unique("squat");
        // Someone else's pipe, with the default (permissive) descriptor.
        let _squatter = ServerOptions::new().create(&name).unwrap();
        let err = PipeListener::bind(&name).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    }

    #[tokio::test]
    async fn connect_to_missing_pipe_fails_fast() {
        let name = unique("missing");
        let started = Instant::now();
        let err = connect(&name).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains("is cyphonicd running"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn trustees_parse_sddl() {
        assert_eq!(trustees("D:P(A;;FA;;;SY)(A;;FA;;;BA)"), ["SY", "BA"]);
        assert!(trustees("D:P").is_empty());
    }
}
