//! The Windows virtual interface (plugin kind 1): a wintun adapter, configured through
//! IP Helper.
//!
//! [`WintunInterface`] implements [`VirtualInterface`](cyphonic_plugin_abi::VirtualInterface);
//! `plugin_header` exports it through the plugin ABI (pass it to `Plugin::from_static`),
//! and the `cyphonic-wintun-plugin` crate builds the same thing as `cyphonic_wintun.dll`.
//! Both exist only on Windows; elsewhere this crate holds just the platform-independent
//! logic ([`adapter_guid`], option parsing, error mapping), so it builds and its tests
//! run everywhere.
//!
//! # Opening
//!
//! In that order:
//!
//! 1. The settings are checked (`INVALID_ARGUMENT`): name (default [`DEFAULT_IFNAME`]),
//!    MTU (0 keeps the adapter's; otherwise 576..=65535, at least 1280 with an IPv6
//!    address), prefixes, options.
//! 2. `wintun.dll` is loaded from the directory of the module holding this code (the
//!    DLL, or the EXE when linked statically), found with `GetModuleHandleExW` on one of
//!    its own addresses: never from the DLL search path, and its own imports only from
//!    that directory and System32. Missing: `NOT_FOUND`, naming the directory and the
//!    fix (reinstall, or copy `bin\amd64\wintun.dll` from the wintun package next to
//!    `cyphonic_wintun.dll`). Every export the `wintun` crate resolves is checked, so a
//!    wrong DLL is named with the missing function.
//! 3. The process token must be elevated, else `PERMISSION_DENIED` ("run cyphonicd as
//!    Administrator or as the service").
//! 4. A *present* adapter with the same name is looked for. A crashed run leaves no
//!    present adapter (its software device goes with the process, and wintun removes
//!    such orphans on every create, the stable GUID reviving the device identity), so
//!    one that is present belongs to a live process: with our GUID it is another
//!    cyphonicd using this name, and `open` fails (`IO`) rather than take it over; with
//!    another GUID wintun renames that program's adapter and `open` goes on. (wintun
//!    0.14 has no delete call: closing an adapter one only opened leaves it.)
//! 5. The adapter is created with tunnel type `CYPHONIC` and the GUID [`adapter_guid`]
//!    derives from the name, so the same name keeps the same adapter identity and
//!    Windows keeps its network profile. Failures are `IO` (`PERMISSION_DENIED` for
//!    access denied) with Windows' text, the code, a hint, and the last error wintun.dll
//!    logged.
//! 6. The session starts with rings of `ring_capacity` bytes.
//! 7. Through IP Helper, keyed by the adapter LUID: addresses and static routes left by
//!    an earlier run of the same adapter are removed (link-local addresses are left to
//!    Windows); the MTU is set explicitly for IPv4 and IPv6 (`SetIpInterfaceEntry`
//!    `NlMtu`; IPv6 only from 1280, and skipped when IPv6 is unbound and no IPv6 address
//!    is asked for); the addresses are added as preferred (no duplicate detection); one
//!    on-link route per `routes` entry (host bits cleared; entries equal to an
//!    address's own prefix are left to Windows, which adds those; existing ones are no
//!    error).
//! 8. With `network_category=private`, a background thread marks the adapter's network
//!    Private (see `nlm`).
//!
//! A failure after step 5 drops the session and the adapter: nothing is left behind.
//!
//! # Options
//!
//! `options` holds `key=value` lines; blank lines and `#` comments are ignored, the last
//! line of a key wins.
//!
//! | key | value | default |
//! |---|---|---|
//! | `ring_capacity` | bytes per ring: a power of two from `0x20000` to `0x4000000`, decimal or `0x` hex | `0x400000` (4 MiB) |
//! | `network_category` | `private`: mark the network Private, best effort; `leave`: do not touch it | `private` |
//!
//! Any other key, a line without `=` or a bad value fails `open` with
//! `INVALID_ARGUMENT`, naming the key.
//!
//! # Data path
//!
//! No allocation and no logging per packet.
//!
//! - `read_batch` first drains what is queued (`WintunReceivePacket` until
//!   `ERROR_NO_MORE_ITEMS`); if nothing is, it waits (`WaitForMultipleObjects`) on the
//!   session's read event and the interface's own wake event for the timeout, then
//!   drains up to the batch size. Each packet is copied to the slot's room after its
//!   headroom. A packet longer than the room is dropped (released unread) and counted
//!   in [`WintunStats::rx_dropped`], its slot reused. It returns 0 on timeout and on
//!   `wake` (also a `wake` that came while no read was blocked); with packets and a
//!   wake both pending it returns the packets and the next call returns 0. A receive
//!   error after some packets returns those; the error comes back on the next call
//!   (`CLOSED` when the adapter is going away).
//! - `write_batch` allocates, copies and sends one packet at a time, in order. A full
//!   send ring (`ERROR_BUFFER_OVERFLOW`) ends the batch with the count written so far;
//!   when that count would be 0 it first retries every millisecond for up to 100 ms,
//!   then returns 0. Empty packets and packets over 65535 bytes count as written and in
//!   [`WintunStats::tx_dropped`].
//! - `pollable_fd` is `UNSUPPORTED` (wintun offers an event, not a descriptor).
//!
//! # Closing
//!
//! Dropping the [`WintunInterface`] (the host's `close`) stops the network-category
//! thread, ends the session and closes the adapter, which removes it with its addresses
//! and routes.
//!
//! # Logging
//!
//! wintun.dll's own log goes to `tracing` (target `wintun`). A loaded
//! `cyphonic_wintun.dll` has its own `tracing` dispatcher, which the host does not set:
//! there, the errors reach the host through the failure messages only.

#![cfg_attr(windows, allow(unsafe_code))]
// On other systems only the pure logic is compiled, and only its tests use all of it.
#![cfg_attr(not(windows), allow(dead_code))]

mod config;
mod errors;
mod guid;

#[cfg(windows)]
mod driver;
#[cfg(windows)]
mod interface;
#[cfg(windows)]
mod ipconfig;
#[cfg(windows)]
mod nlm;
#[cfg(windows)]
mod sys;

pub use config::DEFAULT_IFNAME;
pub use guid::adapter_guid;
#[cfg(windows)]
pub use interface::{WintunInterface, WintunStats};

#[cfg(windows)]
cyphonic_plugin_abi::virtual_interface_plugin!(
    name: "wintun",
    version: env!("CARGO_PKG_VERSION"),
    interface: WintunInterface,
);
