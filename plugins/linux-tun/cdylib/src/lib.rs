//! The Linux TUN virtual interface as a shared library: `libcyphonic_linux_tun.so`
//! exports the plugin entry point for the interface in the `cyphonic-linux-tun` crate.
//! On other systems the library is empty (and the host reports a missing entry point).

#[cfg(target_os = "linux")]
cyphonic_plugin_abi::export_plugin_entry!(cyphonic_linux_tun::plugin_header);
