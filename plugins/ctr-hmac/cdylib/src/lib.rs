//! The AES-256-CTR + HMAC-SHA256 crypto suite as a shared library: `libcyphonic_ctr_hmac.so` exports
//! the plugin entry point for the suite in the `cyphonic-ctr-hmac` crate.

cyphonic_plugin_abi::export_plugin_entry!(cyphonic_ctr_hmac_suite::plugin_header);
