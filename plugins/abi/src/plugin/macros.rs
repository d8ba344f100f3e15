//! The export macros. They expand, in the plugin crate, to a `plugin_header()` function
//! holding a static header and vtable built from this crate's glue; the only attribute
//! that needs `unsafe` is `no_mangle`, confined to `export_plugin_entry!`.

/// Exports a [`CryptoSuite`](crate::CryptoSuite) implementation: defines
/// `pub fn plugin_header() -> &'static PluginHeader` in the invoking module.
///
/// ```text
/// cyphonic_plugin_abi::crypto_suite_plugin!(
///     name: "aes-gcm",
///     version: env!("CARGO_PKG_VERSION"),
///     suite: AesGcm,
/// );
/// ```
#[macro_export]
macro_rules! crypto_suite_plugin {
    (name: $name:expr, version: $version:expr, suite: $suite:ty $(,)?) => {
        $crate::__plugin_header_fn!(
            crypto_suite,
            $crate::CryptoVtable,
            $crate::__private::crypto_vtable::<$suite>(),
            $name,
            $version
        );
    };
}

/// Exports a [`VirtualInterface`](crate::VirtualInterface) implementation: defines
/// `pub fn plugin_header() -> &'static PluginHeader` in the invoking module.
#[macro_export]
macro_rules! virtual_interface_plugin {
    (name: $name:expr, version: $version:expr, interface: $vif:ty $(,)?) => {
        $crate::__plugin_header_fn!(
            virtual_interface,
            $crate::VifVtable,
            $crate::__private::vif_vtable::<$vif>(),
            $name,
            $version
        );
    };
}

/// Exports a [`MobilityDetector`](crate::MobilityDetector) implementation: defines
/// `pub fn plugin_header() -> &'static PluginHeader` in the invoking module.
#[macro_export]
macro_rules! mobility_detector_plugin {
    (name: $name:expr, version: $version:expr, detector: $detector:ty $(,)?) => {
        $crate::__plugin_header_fn!(
            mobility_detector,
            $crate::MobilityVtable,
            $crate::__private::mobility_vtable::<$detector>(),
            $name,
            $version
        );
    };
}

/// Emits the shared-library entry point `cyphonic_plugin_entry_v1` returning the header
/// of `$header` (a path to a `fn() -> &'static PluginHeader`, e.g. the `plugin_header`
/// a `*_plugin!` macro defined). Use it once per cdylib, never in an rlib: two copies
/// of the symbol cannot link into one binary.
///
/// ```text
/// cyphonic_plugin_abi::export_plugin_entry!(cyphonic_aes_gcm_suite::plugin_header);
/// ```
#[macro_export]
macro_rules! export_plugin_entry {
    ($header:path $(,)?) => {
        /// The plugin ABI 1 entry point: returns this plugin's static header.
        // `no_mangle` is an unsafe attribute: the symbol name must be unique in the
        // process. It is, by the plugin ABI's own naming, one per shared library.
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        pub extern "C" fn cyphonic_plugin_entry_v1() -> *const $crate::PluginHeader {
            let header: &'static $crate::PluginHeader = $header();
            header
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __plugin_header_fn {
    ($ctor:ident, $vtable_ty:ty, $vtable:expr, $name:expr, $version:expr) => {
        /// This plugin's ABI header: pass it to `Plugin::from_static` to use the plugin
        /// linked statically, or to `export_plugin_entry!` in a cdylib.
        pub fn plugin_header() -> &'static $crate::PluginHeader {
            const NAME: &str = $name;
            const VERSION: &str = $version;
            const NAME_Z: [u8; NAME.len() + 1] = $crate::__private::nul_terminated(NAME);
            const VERSION_Z: [u8; VERSION.len() + 1] = $crate::__private::nul_terminated(VERSION);
            static VTABLE: $vtable_ty = $vtable;
            static HEADER: $crate::PluginHeader = $crate::PluginHeader::$ctor(
                $crate::__private::cstr(&NAME_Z),
                $crate::__private::cstr(&VERSION_Z),
                &VTABLE,
                $crate::__private::LAST_ERROR,
            );
            &HEADER
        }
    };
}
