//! The AES-256-GCM crypto suite as a shared library: `libcyphonic_aes_gcm.so` exports
//! the plugin entry point for the suite in the `cyphonic-aes-gcm` crate.

cyphonic_plugin_abi::export_plugin_entry!(cyphonic_aes_gcm_suite::plugin_header);
