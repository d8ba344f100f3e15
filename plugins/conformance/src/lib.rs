//! Support for the plugin conformance tests (`tests/`), which run the plugin contract
//! against every plugin file the workspace builds, loaded by absolute path through the
//! real loader: where those files are ([`PluginArtifact`]: next to the test executable,
//! built on demand; [`built_plugins`]: every one of a kind that is there), how a C host
//! could misuse a plugin ([`c_host`]), which the safe wrappers cannot express, and the
//! network namespaces the interface and mobility contracts run in ([`netns`]). Also the
//! suites' shared known-answer harness ([`kat`]).

pub mod c_host;
pub mod kat;
#[cfg(target_os = "linux")]
pub mod netns;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use cyphonic_plugin_abi::{Plugin, PluginKind};

/// The crypto-suite plugin files of the workspace.
pub const AES_GCM: PluginArtifact = PluginArtifact {
    package: "cyphonic-aes-gcm-plugin",
    lib_name: "cyphonic_aes_gcm",
};
pub const CHACHA20_POLY1305: PluginArtifact = PluginArtifact {
    package: "cyphonic-chacha20-poly1305-plugin",
    lib_name: "cyphonic_chacha20_poly1305",
};
pub const CTR_HMAC: PluginArtifact = PluginArtifact {
    package: "cyphonic-ctr-hmac-plugin",
    lib_name: "cyphonic_ctr_hmac",
};
/// The virtual-interface plugin file of the workspace.
pub const LINUX_TUN: PluginArtifact = PluginArtifact {
    package: "cyphonic-linux-tun-plugin",
    lib_name: "cyphonic_linux_tun",
};
/// The mobility-detector plugin file of the workspace.
pub const NETLINK_MOBILITY: PluginArtifact = PluginArtifact {
    package: "cyphonic-netlink-mobility-plugin",
    lib_name: "cyphonic_netlink_mobility",
};

/// Library names of test-only plugins start with this: the deliberately broken fixtures
/// (left to the containment tests) and the userspace interface for Wine ([`UDP_VIF`]).
pub const FIXTURE_PREFIX: &str = "cyphonic_test_";
/// A fixture built for plugin ABI 2.0, which an ABI 1 host must refuse.
pub const BAD_ABI: PluginArtifact = PluginArtifact {
    package: "cyphonic-test-bad-abi-plugin",
    lib_name: "cyphonic_test_bad_abi_plugin",
};
/// A fixture virtual interface that panics or returns garbage, per its `fault=` option.
pub const BROKEN_VIF: PluginArtifact = PluginArtifact {
    package: "cyphonic-test-broken-vif-plugin",
    lib_name: "cyphonic_test_broken_vif_plugin",
};
/// The test-only userspace interface (one IP packet per UDP datagram, no OS
/// configuration, for Wine): not a real interface, so it cannot meet the kernel-facing
/// contract; its own crate's tests cover it.
pub const UDP_VIF: PluginArtifact = PluginArtifact {
    package: "cyphonic-test-udp-vif",
    lib_name: "cyphonic_test_udp_vif",
};
/// A fixture mobility detector that panics or returns garbage, per its `fault=` option.
pub const BROKEN_MOBILITY: PluginArtifact = PluginArtifact {
    package: "cyphonic-test-broken-mobility-plugin",
    lib_name: "cyphonic_test_broken_mobility_plugin",
};

/// A plugin file found in the profile directory by [`built_plugins`].
#[derive(Debug)]
pub struct BuiltPlugin {
    /// The library name, e.g. `cyphonic_linux_tun` for `libcyphonic_linux_tun.so`.
    pub lib_name: String,
    pub plugin: Plugin,
}

impl BuiltPlugin {
    /// Whether this is a test-only plugin ([`FIXTURE_PREFIX`]).
    pub fn is_fixture(&self) -> bool {
        self.lib_name.starts_with(FIXTURE_PREFIX)
    }
}

/// Asserts that the plugin files of `kind` built in the target directory are exactly
/// `subjects` (the ones a conformance test covers) plus the known broken `fixtures`, so
/// a new plugin cannot ship without conformance coverage. Every artifact named must be
/// built.
pub fn assert_covered(kind: PluginKind, subjects: &[PluginArtifact], fixtures: &[PluginArtifact]) {
    for artifact in subjects.iter().chain(fixtures) {
        artifact.locate();
    }
    let (built_fixtures, built_subjects): (Vec<_>, Vec<_>) = built_plugins(kind)
        .into_iter()
        .partition(|p| p.is_fixture());
    let built: Vec<&str> = built_subjects.iter().map(|p| p.lib_name.as_str()).collect();
    let expected: Vec<&str> = subjects.iter().map(|a| a.lib_name).collect();
    assert_eq!(built, expected, "{kind:?} plugins built");
    for fixture in &built_fixtures {
        assert!(
            fixtures.iter().any(|f| f.lib_name == fixture.lib_name),
            "{} is an unknown fixture",
            fixture.plugin.path().display()
        );
    }
    assert_eq!(built_fixtures.len(), fixtures.len(), "{built_fixtures:?}");
}

/// Every `<DLL_PREFIX>cyphonic_*<DLL_SUFFIX>` file in [`profile_dir`] that loads as an
/// ABI 1 plugin of `kind`, sorted by library name. Files that are not ABI 1 plugins (the
/// bad-ABI fixture) are other tests' business.
pub fn built_plugins(kind: PluginKind) -> Vec<BuiltPlugin> {
    let dir = profile_dir();
    let (prefix, suffix) = (std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    let mut found: Vec<BuiltPlugin> = entries
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let lib_name = path
                .file_name()?
                .to_str()?
                .strip_prefix(prefix)?
                .strip_suffix(suffix)?
                .to_owned();
            if !lib_name.starts_with("cyphonic_") {
                return None;
            }
            let plugin = Plugin::load(&path).ok()?;
            (plugin.kind() == kind).then_some(BuiltPlugin { lib_name, plugin })
        })
        .collect();
    found.sort_by(|a, b| a.lib_name.cmp(&b.lib_name));
    found
}

/// Where a built plugin comes from: its cdylib package and its library name.
#[derive(Debug, Clone, Copy)]
pub struct PluginArtifact {
    /// The Cargo package that builds the file, e.g. `cyphonic-aes-gcm-plugin`.
    pub package: &'static str,
    /// The `[lib] name`, e.g. `cyphonic_aes_gcm` for `libcyphonic_aes_gcm.so`.
    pub lib_name: &'static str,
}

impl PluginArtifact {
    /// The platform's file name, e.g. `libcyphonic_aes_gcm.so`.
    pub fn file_name(&self) -> String {
        format!(
            "{}{}{}",
            std::env::consts::DLL_PREFIX,
            self.lib_name,
            std::env::consts::DLL_SUFFIX
        )
    }

    /// The absolute path of the built file in this test run's target profile directory,
    /// after `cargo build -p <package>` (same target directory and profile) has brought
    /// it up to date: the package is not a dependency of the tests, so nothing else
    /// rebuilds a stale or missing file. Once per package and process; a file still
    /// missing afterwards is a panic naming it, never a skip.
    pub fn locate(&self) -> PathBuf {
        let dir = profile_dir();
        let path = dir.join(self.file_name());
        // One build at a time: tests run in parallel and would race on the same files.
        static BUILT: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
        let mut built = BUILT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !built.contains(&self.package) {
            build(self.package, &dir, path.is_file());
            built.push(self.package);
        }
        assert!(
            path.is_file(),
            "plugin file {} is missing even after `cargo build -p {}`",
            path.display(),
            self.package
        );
        path
    }
}

/// `target/<profile>/`, where Cargo puts cdylibs; the test executable lives in
/// `target/<profile>/deps/`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable knows its own path");
    let deps = exe.parent().expect("the executable is in a directory");
    let dir = if deps.file_name().is_some_and(|name| name == "deps") {
        deps.parent().expect("deps/ has a parent")
    } else {
        deps
    };
    dir.canonicalize()
        .unwrap_or_else(|e| panic!("cannot resolve {}: {e}", dir.display()))
}

/// Runs `cargo build -p package`. Without a Cargo to run (tests copied elsewhere), an
/// existing file is used as it is.
fn build(package: &str, profile_dir: &Path, exists: bool) {
    let target_dir = profile_dir
        .parent()
        .expect("target/<profile> has a parent: the target directory");
    let profile = profile_dir
        .file_name()
        .and_then(|name| name.to_str())
        .expect("the profile directory has a UTF-8 name");
    // `debug` is the directory of the `dev` profile (and of `test`).
    let profile = if profile == "debug" { "dev" } else { profile };
    // Cargo sets CARGO for the tests it runs; the Cargo that built them is the fallback.
    let cargo = std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(Into::into))
        .unwrap_or_else(|| "cargo".into());
    let status = Command::new(&cargo)
        .args(["build", "--quiet", "-p", package, "--profile", profile])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status();
    let status = match status {
        Ok(status) => status,
        Err(e) if exists => {
            eprintln!("cannot run {cargo:?} to refresh {package} ({e}); using the file as built");
            return;
        }
        Err(e) => panic!("cannot run {cargo:?} to build {package}: {e}"),
    };
    assert!(
        status.success(),
        "`cargo build -p {package}` failed: {status}"
    );
}
