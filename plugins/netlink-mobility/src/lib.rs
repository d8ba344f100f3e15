//! The Linux mobility detector (plugin kind 3): rtnetlink notifications of address,
//! default-route and link changes, debounced.
//!
//! [`NetlinkMobility`] implements [`MobilityDetector`]; [`plugin_header`] exports it
//! through the plugin ABI (pass it to `Plugin::from_static`), and the
//! `cyphonic-netlink-mobility-plugin` crate builds the same thing as
//! `libcyphonic_netlink_mobility.so`. No privileges are needed.
//!
//! # Opening
//!
//! `open` parses the options, then opens a non-blocking `NETLINK_ROUTE` socket joined to
//! `RTMGRP_LINK`, `RTMGRP_IPV4_IFADDR`, `RTMGRP_IPV6_IFADDR`, `RTMGRP_IPV4_ROUTE` and
//! `RTMGRP_IPV6_ROUTE` (receive buffer raised to 1 MiB where allowed), an eventfd for
//! `wake`, and only then dumps the links (names and operational state) on a separate
//! socket, so no link change falls between the dump and the subscription. Everything
//! lives in the network namespace of the thread calling `open`; `snapshot` and the rare
//! link re-dump of `wait` use the namespace of their calling thread, so call them from
//! the same namespace (a daemon has only one).
//!
//! # Options
//!
//! `options` holds `key=value` lines; blank lines and `#` comments are ignored.
//!
//! | key | value | default |
//! |---|---|---|
//! | `debounce_ms` | 0..=60000: the quiet time that ends a burst of changes; the last line wins | 300 |
//! | `ignore_ifname` | an interface name; may repeat. Its changes are not reported and its addresses are left out of snapshots (the node passes its own TUN name) | none |
//!
//! Any other key, a line without `=` or a bad value fails `open` with
//! `INVALID_ARGUMENT`, naming the key.
//!
//! # What is reported
//!
//! - `RTM_NEWADDR` / `RTM_DELADDR`: [`HINT_ADDRESSES_CHANGED`]. A deleted IPv4 address
//!   reports [`HINT_ROUTES_CHANGED`] too: the kernel silently flushes the IPv4 routes
//!   (default routes included) that depended on it, without an `RTM_DELROUTE`.
//! - `RTM_NEWROUTE` / `RTM_DELROUTE` of a default route (destination length 0) in the
//!   main table, IPv4 or IPv6: [`HINT_ROUTES_CHANGED`]. Other routes and tables are not
//!   reported.
//! - `RTM_NEWLINK` / `RTM_DELLINK` where the link becomes or stops being operationally
//!   up (`IFF_RUNNING`; a link that appears up or vanishes while up counts): both hints.
//!   Other link changes (MTU, admin state without carrier, ...) are not reported.
//! - An overrun of the event socket (`ENOBUFS`: the kernel dropped notifications) or a
//!   notification we could not read: both hints, since something changed and we lost
//!   track of what; the link table is re-dumped.
//!
//! Changes on an interface named in `ignore_ifname` are skipped: the interface index of
//! the message is resolved through the link table, kept current by the link
//! notifications themselves (an index the table misses triggers one re-dump per `wait`).
//! A default route counts as on an interface when that is its single output interface.
//! IPv6 address lifetime refreshes (router advertisements) arrive as `RTM_NEWADDR` and
//! are reported like any other; a caller compares snapshots before acting.
//!
//! # Waiting
//!
//! `wait` reads everything queued, then polls the event socket and the wake eventfd. The
//! first relevant change starts a burst; further changes extend it until `debounce_ms`
//! pass without one (or 10 × `debounce_ms` since the burst began, so a flapping link
//! cannot starve the caller); then `wait` returns the union of the burst's hints. A
//! timeout or `wake` returns 0 and keeps a burst in progress for the next `wait`, which
//! returns it as soon as it is due: nothing is lost between two waits. A `wake` while no
//! `wait` blocks makes the next `wait` return 0 at once. Concurrent `wait` calls take
//! turns. No allocation per notification (except a link's name when it is new or
//! renamed).
//!
//! # Snapshots
//!
//! `snapshot` dumps the addresses (`RTM_GETADDR`, IPv4 and IPv6, every interface,
//! loopback and link-local included) on a fresh socket and returns them with prefix
//! length, interface index and flags: `IFA_F_TEMPORARY` → [`ADDR_FLAG_TEMPORARY`],
//! `IFA_F_DEPRECATED` → [`ADDR_FLAG_DEPRECATED`], `IFA_F_TENTATIVE` or
//! `IFA_F_DADFAILED` → [`ADDR_FLAG_TENTATIVE`]. Addresses of ignored interfaces are
//! left out. A dump the kernel marks interrupted (the table changed meanwhile) is
//! restarted.
//!
//! [`HINT_ADDRESSES_CHANGED`]: cyphonic_plugin_abi::HINT_ADDRESSES_CHANGED
//! [`HINT_ROUTES_CHANGED`]: cyphonic_plugin_abi::HINT_ROUTES_CHANGED
//! [`ADDR_FLAG_TEMPORARY`]: cyphonic_plugin_abi::ADDR_FLAG_TEMPORARY
//! [`ADDR_FLAG_DEPRECATED`]: cyphonic_plugin_abi::ADDR_FLAG_DEPRECATED
//! [`ADDR_FLAG_TENTATIVE`]: cyphonic_plugin_abi::ADDR_FLAG_TENTATIVE

#![cfg(target_os = "linux")]

mod netlink;
mod options;
mod sys;

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use cyphonic_plugin_abi::{
    AddrEntry, Burst, HINT_ADDRESSES_CHANGED, HINT_ROUTES_CHANGED, MobilityDetector, PluginFailure,
    Status,
};

use crate::netlink::{Event, Link, Messages, NetlinkError, Query};
pub use crate::options::{DEFAULT_DEBOUNCE, MobilityOptions};

cyphonic_plugin_abi::mobility_detector_plugin!(
    name: "netlink-mobility",
    version: env!("CARGO_PKG_VERSION"),
    detector: NetlinkMobility,
);

/// Every hint: what an overrun or an unreadable notification reports.
const ALL_HINTS: u32 = HINT_ADDRESSES_CHANGED | HINT_ROUTES_CHANGED;
/// The multicast groups of the event socket.
const EVENT_GROUPS: u32 = netlink::RTMGRP_LINK
    | netlink::RTMGRP_IPV4_IFADDR
    | netlink::RTMGRP_IPV6_IFADDR
    | netlink::RTMGRP_IPV4_ROUTE
    | netlink::RTMGRP_IPV6_ROUTE;
/// A notification is one message of at most a page or two; link messages with many
/// attributes are the largest.
const EVENT_BUF: usize = 64 * 1024;

/// A running detector; dropping it closes its sockets.
#[derive(Debug)]
pub struct NetlinkMobility {
    events: OwnedFd,
    wake_fd: OwnedFd,
    /// Set by `wake` before it signals `wake_fd`, so that a wake arriving while no
    /// `wait` blocks makes the next `wait` return 0 at once.
    woken: AtomicBool,
    options: MobilityOptions,
    /// Everything `wait` reads and keeps; held for the whole of a `wait`.
    state: Mutex<WaitState>,
}

impl NetlinkMobility {
    /// The parsed options this detector runs with.
    pub fn options(&self) -> &MobilityOptions {
        &self.options
    }
}

impl MobilityDetector for NetlinkMobility {
    fn open(options: Option<&str>) -> Result<Self, PluginFailure> {
        let options = MobilityOptions::parse(options)?;
        let events = sys::netlink_event_socket(EVENT_GROUPS)
            .map_err(|e| os_failure("opening the rtnetlink event socket", &e))?;
        let wake_fd = sys::eventfd().map_err(|e| os_failure("creating the wake eventfd", &e))?;
        // After the subscription: a link change from here on is either in the dump or
        // queued on the event socket.
        let links = Query::open()
            .and_then(|mut q| q.links())
            .map_err(|e| netlink_failure("listing the links", &e))?;
        tracing::debug!(
            links = links.len(),
            debounce_ms = options.debounce.as_millis(),
            ignored = ?options.ignore_ifnames,
            "netlink-mobility: watching"
        );
        let state = WaitState {
            buf: vec![0; EVENT_BUF],
            links: LinkTable::from_dump(links),
            burst: Burst::new(options.debounce, Instant::now()),
        };
        Ok(Self {
            events,
            wake_fd,
            woken: AtomicBool::new(false),
            options,
            state: Mutex::new(state),
        })
    }

    fn wait(&self, timeout_ms: i32) -> Result<u32, PluginFailure> {
        // A panic in an earlier wait left at worst a stale link table or burst: both
        // only cost a spurious or merged report, so carry on with them.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if self.woken.swap(false, Ordering::AcqRel) {
            sys::eventfd_drain(self.wake_fd.as_fd());
            return Ok(0);
        }
        // Negative: forever.
        let deadline = u64::try_from(timeout_ms)
            .ok()
            .map(|ms| Instant::now() + Duration::from_millis(ms));
        let mut redumped = false;
        loop {
            let read = self.receive(&mut state, &mut redumped)?;
            let now = Instant::now();
            if let Some(hints) = state.burst.take_due(now) {
                return Ok(hints);
            }
            let until = match (deadline, state.burst.due()) {
                (Some(d), Some(b)) => Some(d.min(b)),
                (d, b) => d.or(b),
            };
            if deadline.is_some_and(|d| d <= now) {
                return Ok(0);
            }
            let wait_ms = until.map_or(-1, |t| ceil_ms(t.saturating_duration_since(now)));
            let (events, wake) = match sys::poll(self.events.as_fd(), self.wake_fd.as_fd(), wait_ms)
            {
                Ok(revents) => revents,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(os_failure("polling the rtnetlink socket", &e)),
            };
            if wake.any() {
                self.woken.store(false, Ordering::Release);
                sys::eventfd_drain(self.wake_fd.as_fd());
                return Ok(0);
            }
            // An error condition that reading did not clear would spin this loop.
            if events.failed_only() && read == 0 && self.receive(&mut state, &mut redumped)? == 0 {
                return Err(PluginFailure::new(
                    Status::CLOSED,
                    "the rtnetlink socket reports an error that reading does not clear",
                ));
            }
        }
    }

    fn snapshot(&self) -> Result<Vec<AddrEntry>, PluginFailure> {
        let mut query =
            Query::open().map_err(|e| netlink_failure("opening an rtnetlink socket", &e))?;
        let ignored: Vec<u32> = if self.options.ignore_ifnames.is_empty() {
            Vec::new()
        } else {
            query
                .links()
                .map_err(|e| netlink_failure("listing the links", &e))?
                .into_iter()
                .filter(|link| self.options.ignores(&link.name))
                .map(|link| link.index)
                .collect()
        };
        let mut addrs = query
            .addresses()
            .map_err(|e| netlink_failure("listing the addresses", &e))?;
        addrs.retain(|a| !ignored.contains(&a.ifindex));
        Ok(addrs)
    }

    fn wake(&self) -> Result<(), PluginFailure> {
        self.woken.store(true, Ordering::Release);
        sys::eventfd_signal(self.wake_fd.as_fd())
            .map_err(|e| os_failure("signalling the wake eventfd", &e))
    }
}

/// What `wait` keeps between calls.
#[derive(Debug)]
struct WaitState {
    /// Receive buffer of the event socket.
    buf: Vec<u8>,
    links: LinkTable,
    burst: Burst,
}

impl NetlinkMobility {
    /// Reads every queued notification into the burst without blocking; returns how
    /// many datagrams (or overruns) it took. `redumped` limits link re-dumps to one per
    /// `wait`.
    fn receive(&self, state: &mut WaitState, redumped: &mut bool) -> Result<usize, PluginFailure> {
        let WaitState { buf, links, burst } = state;
        let mut taken = 0;
        loop {
            let (hints, lost) = match sys::netlink_recv(self.events.as_fd(), buf) {
                Ok(got) if !got.from_kernel => continue,
                Ok(got) if got.truncated => (ALL_HINTS, "a notification larger than the buffer"),
                Ok(got) => {
                    let mut hints = 0;
                    for msg in Messages::new(&buf[..got.len]) {
                        let Ok((header, payload)) = msg else {
                            hints |= ALL_HINTS;
                            break;
                        };
                        hints |= match Event::parse(header.ty, payload) {
                            Some(event) => links.hints(event, &self.options, redumped),
                            None => ALL_HINTS,
                        };
                    }
                    (hints, "")
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    (ALL_HINTS, "notifications (the socket overran)")
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(taken),
                Err(e) => return Err(os_failure("reading rtnetlink notifications", &e)),
            };
            taken += 1;
            if !lost.is_empty() {
                tracing::debug!("netlink-mobility: lost {lost}; reporting every change");
                links.redump();
                *redumped = true;
            }
            burst.record(hints, Instant::now());
        }
    }
}

/// The links of the namespace by index: names (for `ignore_ifname`) and operational
/// state (for link hints), kept current by the link notifications.
#[derive(Debug, Default)]
struct LinkTable {
    links: HashMap<u32, LinkState>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct LinkState {
    name: String,
    running: bool,
}

impl LinkTable {
    fn from_dump(dump: Vec<Link>) -> Self {
        let links = dump
            .into_iter()
            .map(|l| {
                (
                    l.index,
                    LinkState {
                        name: l.name,
                        running: l.running,
                    },
                )
            })
            .collect();
        Self { links }
    }

    /// Replaces the table with a fresh dump; on failure keeps the old one (it is only
    /// used to skip ignored interfaces and to notice link state changes).
    fn redump(&mut self) {
        match Query::open().and_then(|mut q| q.links()) {
            Ok(dump) => *self = Self::from_dump(dump),
            Err(e) => tracing::debug!("netlink-mobility: re-listing the links: {e}"),
        }
    }

    /// The hints of one notification, updating the table with link notifications.
    fn hints(&mut self, event: Event<'_>, options: &MobilityOptions, redumped: &mut bool) -> u32 {
        match event {
            Event::Address {
                index,
                ipv4,
                deleted,
            } => {
                if self.ignored(index, options, redumped) {
                    0
                } else if ipv4 && deleted {
                    ALL_HINTS
                } else {
                    HINT_ADDRESSES_CHANGED
                }
            }
            Event::DefaultRoute { oif } => {
                if oif.is_some_and(|oif| self.ignored(oif, options, redumped)) {
                    0
                } else {
                    HINT_ROUTES_CHANGED
                }
            }
            Event::Link(link) => {
                let name = link.name.unwrap_or_default();
                let was_running = match self.links.get_mut(&link.index) {
                    Some(state) => {
                        if state.name != name {
                            name.clone_into(&mut state.name);
                        }
                        std::mem::replace(&mut state.running, link.running)
                    }
                    None => {
                        let state = LinkState {
                            name: name.to_owned(),
                            running: link.running,
                        };
                        self.links.insert(link.index, state);
                        false
                    }
                };
                if was_running != link.running && !options.ignores(name) {
                    ALL_HINTS
                } else {
                    0
                }
            }
            // The kernel announces a link's addresses and routes going away before the
            // link itself, so the name is still known for those. An unknown link (its
            // appearance lost in an overrun, which reported everything) tells nothing.
            Event::LinkGone { index } => match self.links.remove(&index) {
                Some(state) if state.running && !options.ignores(&state.name) => ALL_HINTS,
                _ => 0,
            },
            Event::Other => 0,
        }
    }

    /// Whether the link with this index is ignored; an index the table misses triggers
    /// one re-dump per `wait`, and a link that is gone by then is not ignored.
    fn ignored(&mut self, index: u32, options: &MobilityOptions, redumped: &mut bool) -> bool {
        if options.ignore_ifnames.is_empty() {
            return false;
        }
        if !self.links.contains_key(&index) && !*redumped {
            *redumped = true;
            self.redump();
        }
        self.links
            .get(&index)
            .is_some_and(|state| options.ignores(&state.name))
    }
}

fn ceil_ms(d: Duration) -> i32 {
    i32::try_from(d.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
}

fn status_of(errno: Option<i32>) -> Status {
    match errno {
        Some(libc::EPERM | libc::EACCES) => Status::PERMISSION_DENIED,
        Some(libc::ENOENT | libc::ENODEV) => Status::NOT_FOUND,
        Some(libc::EINVAL) => Status::INVALID_ARGUMENT,
        Some(libc::ETIMEDOUT | libc::EAGAIN) => Status::TIMED_OUT,
        Some(libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT) => Status::UNSUPPORTED,
        _ => Status::IO,
    }
}

fn os_failure(context: &str, err: &io::Error) -> PluginFailure {
    PluginFailure::new(status_of(err.raw_os_error()), format!("{context}: {err}"))
}

fn netlink_failure(context: &str, err: &NetlinkError) -> PluginFailure {
    PluginFailure::new(status_of(err.errno()), format!("{context}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::LinkInfo;

    fn table() -> LinkTable {
        LinkTable::from_dump(vec![
            Link {
                index: 1,
                name: "lo".into(),
                running: true,
            },
            Link {
                index: 2,
                name: "eth0".into(),
                running: true,
            },
            Link {
                index: 3,
                name: "cyph0".into(),
                running: true,
            },
        ])
    }

    fn opts() -> MobilityOptions {
        MobilityOptions::parse(Some("ignore_ifname=cyph0")).unwrap()
    }

    #[test]
    fn addresses_and_default_routes_map_to_hints_unless_ignored() {
        let (mut links, opts) = (table(), opts());
        let mut redumped = true; // no re-dump in a unit test
        let addr = |index, ipv4, deleted| Event::Address {
            index,
            ipv4,
            deleted,
        };
        let mut hints = |e| links.hints(e, &opts, &mut redumped);
        assert_eq!(hints(addr(2, true, false)), HINT_ADDRESSES_CHANGED);
        assert_eq!(hints(addr(2, false, true)), HINT_ADDRESSES_CHANGED);
        assert_eq!(hints(addr(2, true, true)), ALL_HINTS);
        assert_eq!(hints(addr(3, true, true)), 0);
        assert_eq!(
            hints(Event::DefaultRoute { oif: Some(2) }),
            HINT_ROUTES_CHANGED
        );
        assert_eq!(
            hints(Event::DefaultRoute { oif: None }),
            HINT_ROUTES_CHANGED
        );
        assert_eq!(hints(Event::DefaultRoute { oif: Some(3) }), 0);
        // Unknown to the table (and no re-dump): not ignored.
        assert_eq!(hints(addr(99, false, false)), HINT_ADDRESSES_CHANGED);
        assert_eq!(hints(Event::Other), 0);
    }

    #[test]
    fn link_hints_follow_operational_state_changes() {
        let (mut links, opts) = (table(), opts());
        let mut redumped = true;
        let link = |index, name, running| {
            Event::Link(LinkInfo {
                index,
                name: Some(name),
                running,
            })
        };
        let mut hints = |e| links.hints(e, &opts, &mut redumped);
        assert_eq!(hints(link(2, "eth0", true)), 0, "no state change");
        assert_eq!(hints(link(2, "eth0", false)), ALL_HINTS);
        assert_eq!(hints(link(2, "eth0", false)), 0);
        assert_eq!(hints(link(3, "cyph0", false)), 0, "ignored");
        assert_eq!(hints(link(4, "d0", false)), 0, "appears down");
        assert_eq!(hints(link(5, "d1", true)), ALL_HINTS, "appears up");
        assert_eq!(hints(Event::LinkGone { index: 4 }), 0, "was down");
        assert_eq!(hints(Event::LinkGone { index: 5 }), ALL_HINTS, "was up");
        assert_eq!(hints(Event::LinkGone { index: 5 }), 0, "unknown");
        assert_eq!(hints(Event::LinkGone { index: 1 }), ALL_HINTS);
        // A rename onto an ignored name makes its changes ignored.
        assert_eq!(hints(link(2, "cyph0", true)), 0);
        assert_eq!(
            hints(Event::Address {
                index: 2,
                ipv4: false,
                deleted: false
            }),
            0
        );
    }

    #[test]
    fn ceil_ms_rounds_up_and_saturates() {
        assert_eq!(ceil_ms(Duration::ZERO), 0);
        assert_eq!(ceil_ms(Duration::from_micros(1)), 1);
        assert_eq!(ceil_ms(Duration::from_secs(u64::MAX / 4)), i32::MAX);
    }
}
