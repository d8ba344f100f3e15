//! The Windows mobility detector (plugin kind 3): IP Helper notifications of unicast
//! address, default-route and IP interface changes, debounced.
//!
//! `WinMobility` implements [`MobilityDetector`]; `plugin_header()` exports it through
//! the plugin ABI (pass it to `Plugin::from_static`), and the
//! `cyphonic-win-mobility-plugin` crate builds the same thing as
//! `cyphonic_win_mobility.dll`. No privileges are needed. On other systems this crate
//! holds only its platform-independent parts ([`MobilityOptions`]), so that they build
//! and are tested everywhere.
//!
//! # Opening
//!
//! `open` parses the options, creates its events, registers
//! `NotifyUnicastIpAddressChange`, `NotifyRouteChange2` and `NotifyIpInterfaceChange`
//! (both families, no initial notification), and only then walks the adapters
//! (`GetAdaptersAddresses`) and the IP interfaces (`GetIpInterfaceTable`), so no change
//! falls between the tables and the registrations.
//!
//! # Options
//!
//! `options` holds `key=value` lines; blank lines and `#` comments are ignored.
//!
//! | key | value | default |
//! |---|---|---|
//! | `debounce_ms` | 0..=60000: the quiet time that ends a burst of changes; the last line wins | 300 |
//! | `ignore_ifname` | an interface alias (friendly name, e.g. `cyphonic`) or adapter name (GUID string), matched without regard to case; may repeat. Its changes are not reported and its addresses are left out of snapshots (the node passes its own tunnel adapter's name) | none |
//! | `poll_ms` | 0 (off) or 50..=3600000: also compare address snapshots this often and report a difference, for systems whose notifications do not work (Wine, below) | 0 |
//!
//! Any other key, a line without `=` or a bad value fails `open` with
//! `INVALID_ARGUMENT`, naming the key. The keys and their rules are netlink-mobility's
//! (plus `poll_ms`), so a node passes the same text on either system.
//!
//! # What is reported
//!
//! - A unicast address added, changed (DAD state, lifetimes) or deleted:
//!   [`HINT_ADDRESSES_CHANGED`].
//! - A default route (prefix length 0), IPv4 or IPv6, added, changed or deleted:
//!   [`HINT_ROUTES_CHANGED`]. Other routes are dropped in the callback.
//! - An IP interface that becomes connected or disconnected (`Connected` of its
//!   `MIB_IPINTERFACE_ROW`; one that appears connected or vanishes while connected
//!   counts): both hints. Other parameter changes (metrics, MTU, ...) are not reported.
//! - A notification without a row, or more than 256 changes queued between two looks
//!   (we lost track): both hints, and the tables are read again.
//! - With `poll_ms`: a snapshot that differs from the previous poll's:
//!   [`HINT_ADDRESSES_CHANGED`].
//!
//! Changes on an interface named in `ignore_ifname` are skipped: the interface index of
//! the notification is resolved through the last adapter walk (an index it misses
//! triggers one new walk per `wait`).
//!
//! # Waiting
//!
//! The callbacks run on IP Helper's threads: each queues its change (in room reserved up
//! front, so they never allocate, and inside `catch_unwind`, so they never unwind into
//! the system) and signals an event. `wait` blocks in `WaitForMultipleObjects` on that
//! event and the wake event, takes the queued changes, and applies the debounce of
//! netlink-mobility: the first relevant change starts a burst; further changes extend
//! it until `debounce_ms` pass without one (or 10 × `debounce_ms` since it began); then
//! `wait` returns the union of the burst's hints. A timeout or `wake` returns 0 and keeps
//! the burst for the next `wait`; changes between two waits are queued meanwhile: none is
//! lost. A `wake` while no `wait` blocks makes the next `wait` return 0 at once.
//! Concurrent `wait` calls take turns.
//!
//! # Snapshots
//!
//! `snapshot` walks `GetAdaptersAddresses` (both families) and lists the unicast
//! addresses of the adapters that are up (`IfOperStatusUp`), not loopback
//! (`IF_TYPE_SOFTWARE_LOOPBACK`) and not ignored, link-local ones included, with
//! `OnLinkPrefixLength` and the interface index (`Ipv6IfIndex` for IPv6, or `IfIndex`
//! where that is 0; `IfIndex` for IPv4). Flags: DAD state tentative, duplicate or invalid
//! → [`ADDR_FLAG_TENTATIVE`]; deprecated → [`ADDR_FLAG_DEPRECATED`]; an IPv6 address
//! whose suffix origin is random (Windows' privacy addresses) →
//! [`ADDR_FLAG_TEMPORARY`].
//!
//! # Closing
//!
//! Dropping the detector cancels the three registrations (`CancelMibChangeNotify2`,
//! which returns once no callback runs any more) before the state the callbacks point at
//! is freed, then closes the events.
//!
//! # Under Wine
//!
//! Measured with Wine 8.0 (Debian `8.0~repack-4`) on Linux:
//!
//! - The three `Notify*` calls succeed with a null handle and never call back for a
//!   change: addresses added and removed, a default route added, a link set down (in a
//!   network namespace, watched for 10 s) brought no callback at all.
//! - Asked for an initial notification, only `NotifyUnicastIpAddressChange` calls back,
//!   once, synchronously on the registering thread before it returns, with a null row
//!   and `MibInitialNotification`; the other two never do. (This detector asks for
//!   none, and ignores initial notifications anyway.)
//! - `CancelMibChangeNotify2` of a null handle returns `NO_ERROR` (this detector skips
//!   null handles); `GetIpInterfaceTable` fails with `ERROR_NOT_SUPPORTED` (connection
//!   changes then count from the first notification, which never comes).
//! - `GetAdaptersAddresses` works and follows the Linux host live: `lo` as a software
//!   loopback, every other Linux link with its addresses and prefix lengths and Linux's
//!   interface index as `IfIndex`, `OperStatus` down for links that are down; but
//!   `Ipv6IfIndex` is 0 everywhere, and every address is DAD-preferred with a made-up
//!   suffix origin (DHCP) and lifetimes.
//!
//! So under Wine `snapshot` is right, and `wait` reports nothing unless `poll_ms` is set.
//!
//! [`HINT_ADDRESSES_CHANGED`]: cyphonic_plugin_abi::HINT_ADDRESSES_CHANGED
//! [`HINT_ROUTES_CHANGED`]: cyphonic_plugin_abi::HINT_ROUTES_CHANGED
//! [`ADDR_FLAG_TEMPORARY`]: cyphonic_plugin_abi::ADDR_FLAG_TEMPORARY
//! [`ADDR_FLAG_DEPRECATED`]: cyphonic_plugin_abi::ADDR_FLAG_DEPRECATED
//! [`ADDR_FLAG_TENTATIVE`]: cyphonic_plugin_abi::ADDR_FLAG_TENTATIVE
//! [`MobilityDetector`]: cyphonic_plugin_abi::MobilityDetector

// The decisions below are used by the Windows glue only; elsewhere they are built for
// their tests.
#[cfg_attr(not(windows), allow(dead_code))]
#[cfg(windows)]
mod detector;
#[cfg_attr(not(windows), allow(dead_code))]
mod model;
mod options;
#[cfg(windows)]
mod sys;

#[cfg(windows)]
pub use crate::detector::{WinMobility, plugin_header};
pub use crate::options::{DEFAULT_DEBOUNCE, MobilityOptions};
