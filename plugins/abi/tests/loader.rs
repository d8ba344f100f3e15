//! Loading and validating plugins: `Plugin::load` on real shared libraries (a C plugin,
//! the bad-abi fixture built for ABI 2.0, a library that is no plugin) and
//! `Plugin::from_static` on doctored headers. Every refusal must name the file.

use std::path::{Path, PathBuf};
use std::process::Command;

use cyphonic_plugin_abi::{
    CryptoInfo, CryptoSuite, CryptoSuitePlugin, CryptoVtable, LoadError, Plugin, PluginFailure,
    PluginHeader, PluginKind, Status,
};
#[cfg(unix)]
use cyphonic_plugin_abi::{MobilityPlugin, VifPlugin};

#[test]
fn relative_paths_are_refused() {
    let err = Plugin::load(Path::new("plugins/libfoo.so")).unwrap_err();
    assert!(matches!(err, LoadError::RelativePath { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "plugins/libfoo.so: plugin paths must be absolute"
    );
}

// Unix paths, the Linux temp dir and the host C compiler.
#[cfg(unix)]
#[test]
fn a_missing_file_is_refused_by_name() {
    let path = Path::new("/nonexistent/dir/libcyphonic_nothing.so");
    let err = Plugin::load(path).unwrap_err();
    assert!(matches!(err, LoadError::Unreadable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("/nonexistent/dir/libcyphonic_nothing.so: cannot read plugin file"),
        "{msg}"
    );
    assert_eq!(err.path(), path);
}

// Unix paths, the Linux temp dir and the host C compiler.
#[cfg(unix)]
#[test]
fn a_directory_is_refused() {
    let dir = tmp_dir("a-directory");
    let err = Plugin::load(&dir).unwrap_err();
    assert!(matches!(err, LoadError::NotAFile { .. }), "{err:?}");
}

#[test]
fn a_plugin_for_a_future_major_is_refused_with_both_versions() {
    let so = bad_abi_library();
    let err = Plugin::load(&so).unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::AbiMismatch {
                plugin_major: 2,
                plugin_minor: Some(0),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "{}: built for plugin ABI 2.0, this host speaks 1.0",
            so.display()
        )
    );
}

// Unix paths, the Linux temp dir and the host C compiler.
#[cfg(unix)]
#[test]
fn a_library_without_an_entry_point_is_not_a_plugin() {
    let so = build_c_library("not-a-plugin", "int not_a_plugin(void) { return 42; }\n");
    let err = Plugin::load(&so).unwrap_err();
    assert!(matches!(err, LoadError::NoEntryPoint { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("{}: exports no plugin entry point", so.display()))
    );
}

// Unix paths, the Linux temp dir and the host C compiler.
#[cfg(unix)]
#[test]
fn a_garbage_file_fails_to_open_with_its_name() {
    let path = tmp_dir("garbage").join("libgarbage.so");
    std::fs::write(&path, b"this is not an ELF file").expect("write");
    let err = Plugin::load(&path).unwrap_err();
    assert!(matches!(err, LoadError::Open { .. }), "{err:?}");
    assert!(err.to_string().starts_with(&path.display().to_string()));
}

// Unix paths, the Linux temp dir and the host C compiler.
#[cfg(unix)]
#[test]
fn a_c_plugin_loads_and_works_through_the_safe_wrappers() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/xor_plugin.c");
    let so = build_c_library("xor-c", &std::fs::read_to_string(source).expect("C source"));
    let plugin = Plugin::load(&so).expect("load the C plugin");
    assert_eq!(plugin.path(), so);
    assert_eq!(
        (plugin.kind(), plugin.name(), plugin.version()),
        (PluginKind::CryptoSuite, "xor-c", "1.0.0")
    );
    assert_eq!(plugin.abi().to_string(), "1.0");

    // The library stays loaded: a second load hands back the same code.
    let again = Plugin::load(&so).expect("load again");
    assert!(std::ptr::eq(again.header(), plugin.header()));

    let suite = CryptoSuitePlugin::new(plugin).expect("crypto suite");
    assert_eq!(suite.info().tag_len, 16);
    let key = suite.key_new(&[5; 32]).expect("key");
    let nonce = [7u8; 12];
    let mut buf = [0x5au8; 64];
    let sealed = key
        .seal_in_place(&nonce, b"aad", &mut buf, 30)
        .expect("seal");
    assert_eq!(sealed, 46);
    assert_ne!(buf[..30], [0x5a; 30]);
    let opened = key
        .open_in_place(&nonce, b"aad", &mut buf[..sealed])
        .expect("open");
    assert_eq!(buf[..opened], [0x5a; 30]);

    let err = key
        .seal_in_place(&nonce, b"", &mut buf[..20], 10)
        .unwrap_err();
    assert_eq!(err.status, Status::BUFFER_TOO_SMALL);
    assert_eq!(
        err.message(),
        "no room for the tag",
        "last_error read from the C plugin"
    );
    let err = suite.key_new(&[1; 3]).unwrap_err();
    assert_eq!(
        (err.status, err.message()),
        (Status::INVALID_ARGUMENT, "key must be 32 bytes")
    );

    // A crypto plugin is not a virtual interface or a mobility detector.
    let plugin = suite.plugin().clone();
    let err = VifPlugin::new(plugin.clone()).unwrap_err();
    assert!(
        err.message()
            .contains("is a crypto suite, not a virtual interface"),
        "{err}"
    );
    assert!(MobilityPlugin::new(plugin).is_err());
}

// ---- from_static on doctored headers ------------------------------------------------

struct Nop;

impl CryptoSuite for Nop {
    type Key = ();
    const INFO: CryptoInfo = CryptoInfo::new(1, 32, 16, 1);

    fn key_new(_key: &[u8]) -> Result<(), PluginFailure> {
        Ok(())
    }

    fn seal(
        _: &(),
        _: &[u8; 12],
        _: &[u8],
        _: &mut [u8],
        len: usize,
    ) -> Result<usize, PluginFailure> {
        Ok(len + 16)
    }

    fn open(_: &(), _: &[u8; 12], _: &[u8], buf: &mut [u8]) -> Result<usize, PluginFailure> {
        Ok(buf.len() - 16)
    }
}

mod nop {
    cyphonic_plugin_abi::crypto_suite_plugin!(name: "nop", version: "0.0.1", suite: super::Nop);
}

fn leak(header: PluginHeader) -> &'static PluginHeader {
    Box::leak(Box::new(header))
}

#[test]
fn a_valid_static_header_passes() {
    let plugin = Plugin::from_static(nop::plugin_header(), "static:nop").expect("valid");
    assert_eq!(plugin.name(), "nop");
    assert_eq!(plugin.version(), "0.0.1");
}

#[test]
fn bad_magic_is_refused() {
    let header = leak(nop::plugin_header().with_magic(0xdead_beef));
    let err = Plugin::from_static(header, "static:nop").unwrap_err();
    assert_eq!(
        err.to_string(),
        "static:nop: bad magic 0xdeadbeef (expected 0x48595043): not a cyphonic plugin header"
    );
}

#[test]
fn another_major_is_refused_and_any_minor_accepted() {
    let err =
        Plugin::from_static(leak(nop::plugin_header().with_abi(2, 3)), "static:nop").unwrap_err();
    assert_eq!(
        err.to_string(),
        "static:nop: built for plugin ABI 2.3, this host speaks 1.0"
    );
    let err =
        Plugin::from_static(leak(nop::plugin_header().with_abi(0, 9)), "static:nop").unwrap_err();
    assert!(
        err.to_string().contains("built for plugin ABI 0.9"),
        "{err}"
    );

    let newer = Plugin::from_static(leak(nop::plugin_header().with_abi(1, 7)), "static:nop")
        .expect("newer minor");
    assert_eq!(newer.abi().to_string(), "1.7");
}

#[test]
fn a_too_small_header_or_vtable_is_refused_with_both_versions() {
    let err = Plugin::from_static(
        leak(nop::plugin_header().with_header_size(40)),
        "static:nop",
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "static:nop: header_size 40 is smaller than the 56 bytes of a plugin ABI 1.0 header (plugin claims ABI 1.0)"
    );
    let err = Plugin::from_static(
        leak(nop::plugin_header().with_vtable_size(24)),
        "static:nop",
    )
    .unwrap_err();
    assert!(matches!(
        err,
        LoadError::VtableTooSmall {
            size: 24,
            needed: 48,
            kind: PluginKind::CryptoSuite,
            ..
        }
    ));
    assert_eq!(
        err.to_string(),
        "static:nop: crypto suite vtable is 24 bytes, a plugin ABI 1.0 host needs at least 48 (plugin claims ABI 1.0)"
    );
    // A larger table (a newer minor's) is fine: the host reads only what it knows.
    Plugin::from_static(
        leak(nop::plugin_header().with_vtable_size(4096)),
        "static:nop",
    )
    .expect("larger vtable");
}

#[test]
fn a_vtable_whose_struct_size_is_too_small_is_refused() {
    let mut vtable = cyphonic_plugin_abi::__private::crypto_vtable::<Nop>();
    vtable.struct_size = 8;
    let vtable: &'static CryptoVtable = Box::leak(Box::new(vtable));
    let header = leak(PluginHeader::crypto_suite(c"nop", c"0", vtable, None));
    let err = Plugin::from_static(header, "static:small").unwrap_err();
    assert!(
        matches!(err, LoadError::VtableTooSmall { size: 8, .. }),
        "{err:?}"
    );
}

#[test]
fn a_missing_required_function_is_refused() {
    let mut vtable = cyphonic_plugin_abi::__private::crypto_vtable::<Nop>();
    vtable.open_batch = None;
    let vtable: &'static CryptoVtable = Box::leak(Box::new(vtable));
    let header = leak(PluginHeader::crypto_suite(c"nop", c"0", vtable, None));
    let err = Plugin::from_static(header, "static:holes").unwrap_err();
    assert_eq!(
        err.to_string(),
        "static:holes: required crypto suite function `open_batch` is null"
    );
}

#[test]
fn an_empty_name_is_refused() {
    let vtable: &'static CryptoVtable = Box::leak(Box::new(
        cyphonic_plugin_abi::__private::crypto_vtable::<Nop>(),
    ));
    let header = leak(PluginHeader::crypto_suite(c"", c"0", vtable, None));
    let err = Plugin::from_static(header, "static:anon").unwrap_err();
    assert_eq!(
        err.to_string(),
        "static:anon: the plugin's name is null or not UTF-8"
    );
}

#[test]
#[allow(unsafe_code)]
fn an_unknown_kind_is_refused() {
    let vtable: &'static CryptoVtable = Box::leak(Box::new(
        cyphonic_plugin_abi::__private::crypto_vtable::<Nop>(),
    ));
    // SAFETY: static strings and a static vtable; the kind is deliberately unknown, which
    // the host must refuse before it reads the vtable.
    let header = unsafe {
        PluginHeader::from_raw_parts(
            42,
            c"odd".as_ptr(),
            c"0".as_ptr(),
            std::ptr::from_ref(vtable).cast(),
            size_of::<CryptoVtable>() as u32,
            None,
        )
    };
    let err = Plugin::from_static(leak(header), "static:odd").unwrap_err();
    assert_eq!(
        err.to_string(),
        "static:odd: unknown plugin kind 42 (plugin ABI 1.0, this host speaks 1.0)"
    );
}

#[test]
fn a_plugin_without_last_error_still_reports_its_status() {
    let header = leak(PluginHeader::crypto_suite(
        c"quiet",
        c"0",
        Box::leak(Box::new(
            cyphonic_plugin_abi::__private::crypto_vtable::<Nop>(),
        )),
        None,
    ));
    let suite = CryptoSuitePlugin::new(Plugin::from_static(header, "static:quiet").expect("valid"))
        .expect("suite");
    let err = suite.key_new(&[0; 3]).unwrap_err();
    assert_eq!(err.status, Status::INVALID_ARGUMENT);
    assert_eq!(err.message(), "(plugin provides no error messages)");
}

// ---- helpers ------------------------------------------------------------------------

/// `libcyphonic_test_bad_abi_plugin.so` from the workspace build next to this test
/// (`target/<profile>/deps/<test>` -> `target/<profile>/`), or built on demand into a
/// directory of its own (the outer cargo may hold the lock on the main one).
fn bad_abi_library() -> PathBuf {
    let file = format!(
        "{}cyphonic_test_bad_abi_plugin{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let next_to_us = profile_dir.join(&file);
    if next_to_us.is_file() {
        return next_to_us;
    }
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bad-abi-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_owned());
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "cyphonic-test-bad-abi-plugin",
            "--target-dir",
        ])
        .arg(&target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building the bad-abi fixture failed");
    let built = target_dir.join("debug").join(&file);
    assert!(built.is_file(), "{} not built", built.display());
    built
}

/// Compiles `source` (with the ABI header on the include path) into a shared library.
#[cfg(unix)]
fn build_c_library(name: &str, source: &str) -> PathBuf {
    let dir = tmp_dir(name);
    let c_file = dir.join(format!("{name}.c"));
    let so = dir.join(format!("lib{name}.so"));
    std::fs::write(&c_file, source).expect("write C source");
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("include");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let out = Command::new(&cc)
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-shared",
            "-fPIC",
            "-I",
        ])
        .arg(&include)
        .arg("-o")
        .arg(&so)
        .arg(&c_file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}"));
    assert!(
        out.status.success(),
        "C compile failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    so
}

#[cfg(unix)]
fn tmp_dir(tag: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("loader-{tag}"));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}
