//! The loaded `cyphonic_wintun.dll` (`Plugin::load`, as cyphonicd loads it), copied into a
//! temporary directory with or without a `wintun.dll` next to it: the missing DLL, the
//! test-only stub's failures (driver, access denied, a present adapter, a session that
//! will not start), bad options, a DLL that is not wintun, and the signed wintun.dll of
//! the `wintun` crate's package, which loads under Wine but has no driver to talk to.
//!
//! Windows only (CI runs them under Wine). Build the DLLs first:
//!
//! ```text
//! cargo build -p cyphonic-wintun-plugin -p cyphonic-test-wintun-stub --target x86_64-pc-windows-gnu
//! ```
//!
//! The signed wintun.dll is `$CYPHONIC_WINTUN_SIGNED_DLL` (plugins/wintun/find-signed-dll.sh
//! prints it), else looked up in the cargo registry under `$CARGO_HOME` or `~/.cargo`.

#![cfg(windows)]
#![allow(unsafe_code)]
// Helpers outside `#[test]` functions unwrap too; a panic is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use cyphonic_plugin_abi::{Plugin, PluginError, PluginKind, Status, VifPlugin, VifSettings};

const PLUGIN: &str = "cyphonic_wintun.dll";

#[test]
fn the_plugin_loads_as_a_virtual_interface_named_wintun() {
    let dir = TestDir::new(None);
    let plugin = Plugin::load(&dir.plugin()).unwrap();
    assert_eq!(plugin.name(), "wintun");
    assert_eq!(plugin.kind(), PluginKind::VirtualInterface);
}

#[test]
fn without_wintun_dll_open_is_not_found_and_names_the_directory() {
    let dir = TestDir::new(None);
    let err = dir.open(&settings("cyphonic-test")).unwrap_err();
    eprintln!("without wintun.dll: {err}");
    assert_eq!(err.status(), Status::NOT_FOUND, "{err}");
    let msg = err.message();
    assert!(
        msg.contains(&dir.path().display().to_string()),
        "the message names {}: {msg}",
        dir.path().display()
    );
    assert!(msg.contains("wintun.dll not found"), "{msg}");
    assert!(msg.contains("next to cyphonic_wintun.dll"), "{msg}");
}

#[test]
fn bad_options_are_refused_before_anything_is_loaded() {
    // No wintun.dll: the options are checked first, so this is not NOT_FOUND.
    let dir = TestDir::new(None);
    for (options, needle) in [
        ("ring_capacity=3", "`ring_capacity`"),
        ("ring_capacity=0x8000000", "`ring_capacity`"),
        ("network_category=public", "`network_category`"),
        ("queues=4", "`queues`"),
    ] {
        let mut s = settings("cyphonic-test");
        s.options = Some(options.into());
        let err = dir.open(&s).unwrap_err();
        assert_eq!(err.status(), Status::INVALID_ARGUMENT, "{options}: {err}");
        assert!(err.message().contains(needle), "{options}: {err}");
    }
    let mut s = settings("cyphonic-test");
    s.mtu = 100;
    assert_eq!(dir.open(&s).unwrap_err().status(), Status::INVALID_ARGUMENT);
}

/// What Wine 8 reports: the process token is elevated (TokenElevationTypeFull), so
/// `open` gets past its privilege check to the driver.
#[test]
fn wine_reports_an_elevated_token() {
    if under_wine() {
        assert!(elevated(), "Wine 8 runs processes with an elevated token");
    }
}

#[test]
fn the_stubs_driver_failure_is_a_clear_io_error_and_leaves_nothing() {
    let dir = TestDir::new(Some(&built("wintun.dll")));
    let stub = Stub::load(&dir.path().join("wintun.dll"));
    for round in 1..=2 {
        let err = dir.open(&settings("cyphonic-test")).unwrap_err();
        eprintln!("with the stub: {err}");
        if !elevated() {
            assert_eq!(err.status(), Status::PERMISSION_DENIED, "{err}");
            assert!(
                err.message()
                    .contains("run cyphonicd as Administrator or as the service")
            );
            return;
        }
        assert_eq!(err.status(), Status::IO, "{err}");
        let msg = err.message();
        for needle in [
            "creating wintun adapter `cyphonic-test`",
            // The stable GUID of the name.
            &guid_text(cyphonic_wintun::adapter_guid("cyphonic-test")),
            "(Win32 error 31)",
            "the wintun driver could not set up the adapter",
            // What the stub logged through wintun's logger.
            "wintun.dll logged: this is the TEST-ONLY stub wintun.dll",
        ] {
            assert!(msg.contains(needle), "round {round}: `{needle}` in {msg}");
        }
        let counts = stub.counts();
        assert_eq!(counts.open_calls, round, "looked for a stale adapter");
        assert_eq!(counts.create_calls, round);
        assert_eq!(counts.adapters_out, 0);
        assert_eq!(counts.sessions_started, 0);
    }
}

#[test]
fn access_denied_from_the_driver_is_permission_denied() {
    if !elevated() {
        return; // Refused earlier, by the token check (the test above covers it).
    }
    let dir = TestDir::new(Some(&built("wintun.dll")));
    let err = dir.open(&settings("stub-denied")).unwrap_err();
    assert_eq!(err.status(), Status::PERMISSION_DENIED, "{err}");
    assert!(
        err.message()
            .ends_with("(Win32 error 5); run cyphonicd as Administrator or as the service"),
        "{err}"
    );
}

#[test]
fn a_present_adapter_of_the_name_is_opened_closed_and_creation_goes_on() {
    if !elevated() {
        return;
    }
    let dir = TestDir::new(Some(&built("wintun.dll")));
    let stub = Stub::load(&dir.path().join("wintun.dll"));
    let err = dir.open(&settings("stub-present")).unwrap_err();
    // The stub's adapter has no interface (so no GUID to compare): not ours to refuse,
    // and creation then fails as without a driver.
    assert_eq!(err.status(), Status::IO, "{err}");
    assert!(err.message().contains("(Win32 error 31)"), "{err}");
    let counts = stub.counts();
    assert_eq!(
        (counts.adapters_out, counts.adapters_closed),
        (1, 1),
        "{counts:?}"
    );
    assert_eq!(counts.create_calls, 1);
}

#[test]
fn a_session_that_will_not_start_removes_the_new_adapter() {
    if !elevated() {
        return;
    }
    let dir = TestDir::new(Some(&built("wintun.dll")));
    let stub = Stub::load(&dir.path().join("wintun.dll"));
    let mut s = settings("stub-session-fails");
    s.options = Some("ring_capacity=0x20000".into());
    let err = dir.open(&s).unwrap_err();
    assert_eq!(err.status(), Status::IO, "{err}");
    assert!(
        err.message().starts_with(
            "starting the session of wintun adapter `stub-session-fails` (0x20000-byte rings): "
        ),
        "{err}"
    );
    assert!(err.message().contains("(Win32 error 31)"), "{err}");
    let counts = stub.counts();
    assert_eq!(
        (counts.adapters_out, counts.adapters_closed),
        (1, 1),
        "{counts:?}"
    );
    assert_eq!(counts.sessions_started, 0);
}

#[test]
fn a_dll_that_is_not_wintun_is_named_with_the_missing_export() {
    // The plugin itself, renamed: a valid DLL without wintun's exports.
    let dir = TestDir::new(Some(&built(PLUGIN)));
    let err = dir.open(&settings("cyphonic-test")).unwrap_err();
    assert_eq!(err.status(), Status::IO, "{err}");
    assert!(
        err.message()
            .contains("wintun.dll does not export WintunCreateAdapter"),
        "{err}"
    );
    assert!(err.message().contains("(Win32 error 127)"), "{err}");
}

#[test]
fn the_signed_wintun_dll_ships_in_the_wintun_crate_package() {
    let signed = signed_wintun_dll();
    let bytes = std::fs::read(&signed).unwrap();
    assert_eq!(&bytes[..2], b"MZ", "{} is a PE file", signed.display());
    // An x86-64 image (PE32+) with an Authenticode signature: data directory 4 (the
    // certificate table) is not empty.
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let pe = u32_at(0x3c) as usize;
    assert_eq!(&bytes[pe..pe + 4], b"PE\0\0");
    assert_eq!(u16_at(pe + 4), 0x8664, "machine: x86-64");
    let optional = pe + 24;
    assert_eq!(u16_at(optional), 0x20b, "PE32+");
    let certificates = optional + 112 + 4 * 8;
    assert!(
        u32_at(certificates + 4) > 0,
        "{} carries a signature",
        signed.display()
    );
}

/// The real wintun.dll under Wine: it loads (all exports resolve) and reports no
/// running driver; creating an adapter fails cleanly at wintun's first step, taking its
/// device-installation mutex in a private namespace, which Wine 8 does not support:
/// `ERROR_FILE_NOT_FOUND`, with wintun's own log line appended.
#[test]
fn the_signed_wintun_dll_loads_and_fails_cleanly_without_a_driver() {
    let dir = TestDir::new(Some(&signed_wintun_dll()));
    let dll = dir.path().join("wintun.dll");
    // SAFETY: the signed wintun.dll from the wintun package.
    let wintun = unsafe { wintun::load_from_path(&dll) }.unwrap();
    let version = wintun::get_running_driver_version(&wintun).unwrap_err();
    match version {
        wintun::Error::Io(e) => assert_eq!(e.raw_os_error(), Some(2), "{e}"),
        other => panic!("unexpected error {other}"),
    }
    drop(wintun);

    let err = dir.open(&settings("cyphonic-test")).unwrap_err();
    if !elevated() {
        assert_eq!(err.status(), Status::PERMISSION_DENIED, "{err}");
        return;
    }
    eprintln!("the signed wintun.dll under this system: {err}");
    assert_eq!(err.status(), Status::IO, "{err}");
    assert!(
        err.message()
            .starts_with("creating wintun adapter `cyphonic-test`"),
        "{err}"
    );
    if under_wine() {
        assert!(
            err.message()
                .contains("(Win32 error 2); the wintun driver could not set up the adapter"),
            "{err}"
        );
        assert!(
            err.message()
                .contains("(wintun.dll logged: Failed to take device installation mutex"),
            "{err}"
        );
    }
}

fn settings(name: &str) -> VifSettings {
    VifSettings {
        mtu: 1420,
        ifname: Some(name.into()),
        ipv4: Some(("100.64.7.1".parse().unwrap(), 10)),
        ipv6: Some(("fd7a:115c:a1e0::1".parse().unwrap(), 48)),
        routes: vec![("100.64.0.0".parse().unwrap(), 10)],
        options: None,
    }
}

/// A temporary directory holding a copy of the plugin, and of a `wintun.dll` if given.
struct TestDir(tempfile::TempDir);

impl TestDir {
    fn new(wintun_dll: Option<&Path>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(built(PLUGIN), dir.path().join(PLUGIN)).unwrap();
        if let Some(dll) = wintun_dll {
            std::fs::copy(dll, dir.path().join("wintun.dll")).unwrap();
        }
        Self(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn plugin(&self) -> PathBuf {
        self.path().join(PLUGIN)
    }

    fn open(&self, settings: &VifSettings) -> Result<(), PluginError> {
        let vif = VifPlugin::new(Plugin::load(&self.plugin()).unwrap()).unwrap();
        vif.open(settings).map(drop)
    }
}

/// The copy of the stub a test directory holds, kept loaded so its counters outlive the
/// plugin's own load of it.
struct Stub {
    counts: libloading::Symbol<'static, unsafe extern "system" fn(*mut StubCounts)>,
}

/// The stub's `StubCounts` (plugins/testing/wintun-stub).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct StubCounts {
    open_calls: u64,
    create_calls: u64,
    adapters_out: u64,
    adapters_closed: u64,
    sessions_started: u64,
    sessions_ended: u64,
    ring_bytes_in_use: u64,
}

impl Stub {
    fn load(path: &Path) -> Self {
        // SAFETY: the test-only stub, whose initialisers do nothing; leaked so the
        // symbol stays valid.
        let library: &'static libloading::Library =
            Box::leak(Box::new(unsafe { libloading::Library::new(path) }.unwrap()));
        // SAFETY: the stub exports this function with this signature.
        let counts = unsafe { library.get(b"WintunStubCounts\0") }.unwrap();
        Self { counts }
    }

    fn counts(&self) -> StubCounts {
        let mut counts = StubCounts::default();
        // SAFETY: `counts` is writable for one struct.
        unsafe { (self.counts)(&mut counts) };
        counts
    }
}

/// `target/x86_64-pc-windows-gnu/<profile>/<file>`, where cargo puts the cdylibs.
fn built(file: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let mut dir = exe.parent().unwrap();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().unwrap();
    }
    let path = dir.join(file);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p cyphonic-wintun-plugin -p cyphonic-test-wintun-stub \
         --target x86_64-pc-windows-gnu` first",
        path.display()
    );
    path
}

/// The signed wintun.dll of the `wintun` crate's package (`wintun/bin/amd64/wintun.dll`).
fn signed_wintun_dll() -> PathBuf {
    // Wine passes the Unix environment through; a Unix path is reachable as Z:.
    let windows_path = |p: String| {
        if p.starts_with('/') {
            PathBuf::from(format!("Z:{p}"))
        } else {
            PathBuf::from(p)
        }
    };
    if let Ok(p) = std::env::var("CYPHONIC_WINTUN_SIGNED_DLL") {
        let p = windows_path(p);
        assert!(
            p.is_file(),
            "CYPHONIC_WINTUN_SIGNED_DLL={} is not a file",
            p.display()
        );
        return p;
    }
    let cargo_home = std::env::var("CARGO_HOME")
        .map(windows_path)
        .or_else(|_| std::env::var("HOME").map(|h| windows_path(h).join(".cargo")))
        .or_else(|_| std::env::var("USERPROFILE").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap();
    let registry = cargo_home.join("registry").join("src");
    let found = std::fs::read_dir(&registry).ok().and_then(|entries| {
        entries
            .filter_map(Result::ok)
            .map(|e| e.path().join("wintun-0.5.1/wintun/bin/amd64/wintun.dll"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "no wintun-0.5.1/wintun/bin/amd64/wintun.dll under {}: fetch the crate \
             (cargo fetch) or set CYPHONIC_WINTUN_SIGNED_DLL (plugins/wintun/find-signed-dll.sh)",
            registry.display()
        )
    })
}

fn guid_text(guid: u128) -> String {
    let h = format!("{guid:032X}");
    format!(
        "{{{}-{}-{}-{}-{}}}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn elevated() -> bool {
    use windows_sys::Win32::Foundation::{CloseHandle, HANDLE};
    use windows_sys::Win32::Security::{
        GetTokenInformation, TOKEN_ELEVATION, TOKEN_QUERY, TokenElevation,
    };
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};
    let mut token: HANDLE = std::ptr::null_mut();
    let mut elevation = TOKEN_ELEVATION { TokenIsElevated: 0 };
    let mut len = 0;
    // SAFETY: out-pointers are valid; the token is closed once.
    unsafe {
        assert_ne!(
            OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token),
            0
        );
        let ok = GetTokenInformation(
            token,
            TokenElevation,
            (&raw mut elevation).cast(),
            size_of::<TOKEN_ELEVATION>() as u32,
            &mut len,
        );
        CloseHandle(token);
        assert_ne!(ok, 0);
    }
    elevation.TokenIsElevated != 0
}

fn under_wine() -> bool {
    use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleW, GetProcAddress};
    let ntdll: Vec<u16> = "ntdll.dll".encode_utf16().chain([0]).collect();
    // SAFETY: ntdll is always loaded; the names are NUL-terminated.
    unsafe {
        let module = GetModuleHandleW(ntdll.as_ptr());
        GetProcAddress(module, c"wine_get_version".as_ptr().cast()).is_some()
    }
}
