//! The ChaCha20-Poly1305 crypto suite as a shared library: `libcyphonic_chacha20_poly1305.so` exports
//! the plugin entry point for the suite in the `cyphonic-chacha20-poly1305` crate.

cyphonic_plugin_abi::export_plugin_entry!(cyphonic_chacha20_poly1305_suite::plugin_header);
