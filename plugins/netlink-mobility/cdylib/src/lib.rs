//! The Linux netlink mobility detector as a shared library:
//! `libcyphonic_netlink_mobility.so` exports the plugin entry point for the detector in
//! the `cyphonic-netlink-mobility` crate. On other systems the library is empty (and the
//! host reports a missing entry point).

#[cfg(target_os = "linux")]
cyphonic_plugin_abi::export_plugin_entry!(cyphonic_netlink_mobility::plugin_header);
