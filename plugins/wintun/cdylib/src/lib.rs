//! The wintun virtual interface as a shared library: `cyphonic_wintun.dll` exports the
//! plugin entry point for the interface in the `cyphonic-wintun` crate. Ship it with the
//! signed `wintun.dll` in the same directory: it loads that file and no other. On other
//! systems the library is empty (and the host reports a missing entry point).

#[cfg(windows)]
cyphonic_plugin_abi::export_plugin_entry!(cyphonic_wintun::plugin_header);
