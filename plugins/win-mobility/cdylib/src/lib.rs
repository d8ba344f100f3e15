//! The Windows mobility detector as a DLL: `cyphonic_win_mobility.dll` exports the plugin
//! entry point for the detector in the `cyphonic-win-mobility` crate. On other systems the
//! library is empty (and the host reports a missing entry point).

#[cfg(windows)]
cyphonic_plugin_abi::export_plugin_entry!(cyphonic_win_mobility::plugin_header);
