//! The plugin side: the traits a Rust plugin implements and the macros that export an
//! implementation through the C ABI (`crypto_suite_plugin!`, `virtual_interface_plugin!`,
//! `mobility_detector_plugin!`, `export_plugin_entry!`).
//!
//! A plugin crate is an rlib that invokes one `*_plugin!` macro, which defines
//! `pub fn plugin_header() -> &'static PluginHeader`; the host can link that rlib
//! statically and pass the header to `Plugin::from_static`. A one-line cdylib crate next
//! to it invokes `export_plugin_entry!(the_rlib::plugin_header)` to become a loadable
//! shared library. (Two rlibs that both defined the `no_mangle` entry symbol could not be
//! linked into one binary, hence the split.)

pub(crate) mod glue;
mod macros;

use crate::abi::{AddrEntry, CryptoInfo, Packet};
use crate::settings::{VifDetails, VifSettings};
use crate::status::PluginFailure;

/// An AEAD crypto suite (plugin kind 2).
///
/// The export glue has already checked every pointer and length when these functions
/// run, and it turns a panic into the `PANIC` status.
pub trait CryptoSuite: 'static {
    /// An expanded key. Immutable once made; the host seals and opens with one key from
    /// several threads at once.
    type Key: Send + Sync + 'static;

    /// The suite's parameters. `nonce_len` must be 12 (see [`CryptoInfo::new`]).
    const INFO: CryptoInfo;

    /// Expands `key`; the glue has checked `key.len() == INFO.key_len`.
    fn key_new(key: &[u8]) -> Result<Self::Key, PluginFailure>;

    /// Seals `buf[..plaintext_len]` in place and writes the tag after it; returns the
    /// sealed length (`plaintext_len + INFO.tag_len`). `buf` is the op's whole buffer;
    /// the glue has checked that the tag fits.
    fn seal(
        key: &Self::Key,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
        plaintext_len: usize,
    ) -> Result<usize, PluginFailure>;

    /// Opens `buf` (exactly ciphertext followed by the tag; the glue has checked it is at
    /// least `INFO.tag_len` long) in place; returns the plaintext length. A bad tag is
    /// [`PluginFailure::auth_failed`].
    fn open(
        key: &Self::Key,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<usize, PluginFailure>;
}

/// A virtual network interface (plugin kind 1). All methods may be called concurrently
/// from different threads (typically one reader, one writer, and `wake` from anywhere);
/// dropping the value closes the interface.
pub trait VirtualInterface: Send + Sync + Sized + 'static {
    fn open(settings: &VifSettings) -> Result<Self, PluginFailure>;

    fn info(&self) -> Result<VifDetails, PluginFailure>;

    /// Reads up to `pkts.len()` packets, each into [`Packet::space_mut`] followed by
    /// [`Packet::set_len`]; returns how many leading slots were filled. Waits up to
    /// `timeout_ms` (`-1`: forever, `0`: do not block) for the first packet; returns 0 on
    /// timeout or after [`VirtualInterface::wake`].
    fn read_batch(&self, pkts: &mut [Packet<'_>], timeout_ms: i32) -> Result<usize, PluginFailure>;

    /// Writes the packets in order ([`Packet::data`]); returns how many leading packets
    /// were consumed. A packet the OS refuses on its own (too big, say) counts as consumed.
    fn write_batch(&self, pkts: &[Packet<'_>]) -> Result<usize, PluginFailure>;

    /// A descriptor that polls readable when `read_batch` would not block.
    fn pollable_fd(&self) -> Result<i64, PluginFailure> {
        Err(PluginFailure::unsupported(
            "this interface has no pollable descriptor",
        ))
    }

    /// Makes a blocked (or the next) `read_batch` return 0 promptly.
    fn wake(&self) -> Result<(), PluginFailure>;
}

/// A detector of local address and route changes (plugin kind 3). All methods may be
/// called concurrently; dropping the value closes it.
pub trait MobilityDetector: Send + Sync + Sized + 'static {
    /// `options` is plugin-specific `key=value` text.
    fn open(options: Option<&str>) -> Result<Self, PluginFailure>;

    /// Waits up to `timeout_ms` (`-1`: forever) for a change; returns the `HINT_*` bits,
    /// or 0 on timeout or after [`MobilityDetector::wake`].
    fn wait(&self, timeout_ms: i32) -> Result<u32, PluginFailure>;

    /// The current local addresses.
    fn snapshot(&self) -> Result<Vec<AddrEntry>, PluginFailure>;

    /// Makes a blocked (or the next) `wait` return 0 promptly.
    fn wake(&self) -> Result<(), PluginFailure>;
}
