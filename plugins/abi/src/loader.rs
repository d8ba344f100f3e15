//! `Plugin::load`: opening a plugin shared library (feature `loader`). The library is
//! never unloaded, so the `'static` header and every function pointer stay valid.

#![allow(unsafe_code)]

use std::path::Path;

use crate::abi::{ABI_MAJOR, EntryFn, PluginHeader};
use crate::host::{AbiVersion, LoadError, Plugin, header_prefix_version, validate};

impl Plugin {
    /// Loads the plugin shared library at `path` (absolute) and validates its header.
    ///
    /// Version rules: the entry symbol names the major (`cyphonic_plugin_entry_v1`) and
    /// the header's `abi_major` must equal this host's. Any minor is accepted: a plugin
    /// of a newer minor has extra trailing fields and functions this host ignores; one of
    /// an older minor lacks functions this host would treat as absent (`vtable_size`).
    /// A library without the v1 symbol is probed for `_v0`..`_v9` to report which ABI it
    /// was built for. Loading runs the library's initialisers; only load trusted files.
    pub fn load(path: &Path) -> Result<Plugin, LoadError> {
        let path_buf = || path.to_path_buf();
        if !path.is_absolute() {
            return Err(LoadError::RelativePath { path: path_buf() });
        }
        let meta = std::fs::metadata(path).map_err(|source| LoadError::Unreadable {
            path: path_buf(),
            source,
        })?;
        if !meta.is_file() {
            return Err(LoadError::NotAFile { path: path_buf() });
        }
        let library = open_library(path).map_err(|source| LoadError::Open {
            path: path_buf(),
            source,
        })?;
        // Never unloaded: the header, strings and functions must outlive every `Plugin`.
        let library: &'static libloading::Library = Box::leak(Box::new(library));

        let symbol = format!("cyphonic_plugin_entry_v{ABI_MAJOR}\0");
        // SAFETY: by the ABI, a `cyphonic_plugin_entry_v<N>` symbol is an `EntryFn`.
        let entry = match unsafe { library.get::<EntryFn>(symbol.as_bytes()) } {
            Ok(entry) => *entry,
            Err(_) => return Err(other_major(library, path)),
        };
        let header = entry();
        // SAFETY: the entry point returns a header valid forever (ABI contract; the
        // library is leaked), whose fields `validate` checks before trusting them.
        unsafe { validate(header, path) }
    }
}

#[cfg(unix)]
fn open_library(path: &Path) -> Result<libloading::Library, libloading::Error> {
    use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
    // RTLD_NOW: an unresolved symbol fails here, with a message, not at first call.
    // SAFETY: loading runs the library's initialisers; plugins are trusted code by
    // policy (docs/plugins.md) and the path was given by the operator.
    unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }.map(Into::into)
}

#[cfg(not(unix))]
fn open_library(path: &Path) -> Result<libloading::Library, libloading::Error> {
    // SAFETY: as for unix: plugins are trusted code, the path comes from the operator.
    unsafe { libloading::Library::new(path) }
}

/// The error for a library without the v1 entry point: which major it does export, if
/// any, with the minor when its header is readable.
fn other_major(library: &'static libloading::Library, path: &Path) -> LoadError {
    for major in (0..=9u16).filter(|&m| m != ABI_MAJOR) {
        let symbol = format!("cyphonic_plugin_entry_v{major}\0");
        // SAFETY: every major's entry point is an `extern "C" fn() -> *const header`
        // whose header starts with magic and version (a frozen part of the ABI).
        let Ok(entry) = (unsafe { library.get::<EntryFn>(symbol.as_bytes()) }) else {
            continue;
        };
        let header: *const PluginHeader = entry();
        // SAFETY: as above; `header_prefix_version` checks null and alignment.
        let version = unsafe { header_prefix_version(header) };
        let plugin_minor = version.filter(|v| v.major == major).map(|v| v.minor);
        return LoadError::AbiMismatch {
            path: path.to_path_buf(),
            plugin_major: major,
            plugin_minor,
            host: AbiVersion::HOST,
        };
    }
    LoadError::NoEntryPoint {
        path: path.to_path_buf(),
    }
}
