//! What the Win32 glue hands over, as plain data, and the decisions taken on it: which
//! addresses a snapshot lists and with which flags ([`Adapter`], [`addresses`]), and which
//! notifications are worth a hint ([`Change`], [`Inbox`], [`Tracker`]). Nothing here
//! calls Win32, so all of it is tested on every platform.

use std::collections::HashMap;
use std::net::IpAddr;

use cyphonic_plugin_abi::{
    ADDR_FLAG_DEPRECATED, ADDR_FLAG_TEMPORARY, ADDR_FLAG_TENTATIVE, AddrEntry,
    HINT_ADDRESSES_CHANGED, HINT_ROUTES_CHANGED,
};

use crate::options::MobilityOptions;

/// Every hint: what an unknown change or an overflowing inbox reports.
pub(crate) const ALL_HINTS: u32 = HINT_ADDRESSES_CHANGED | HINT_ROUTES_CHANGED;

// `NL_DAD_STATE` and `NL_SUFFIX_ORIGIN` (ws2ipdef.h), spelled out so that this module
// builds everywhere.
pub(crate) const DAD_INVALID: i32 = 0;
pub(crate) const DAD_TENTATIVE: i32 = 1;
pub(crate) const DAD_DUPLICATE: i32 = 2;
pub(crate) const DAD_DEPRECATED: i32 = 3;
pub(crate) const DAD_PREFERRED: i32 = 4;
pub(crate) const SUFFIX_RANDOM: i32 = 5;

/// An IP interface: (address family, interface index); Windows keeps one per family.
pub(crate) type IfKey = (u16, u32);

/// Changes the notification callbacks queue before `wait` takes them; more in one go
/// means we lost track and report everything.
pub(crate) const INBOX_CAP: usize = 256;

/// One adapter of a `GetAdaptersAddresses` walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Adapter {
    /// `IfIndex`: the IPv4 interface index (0 if IPv4 is off on it).
    pub(crate) if_index: u32,
    /// `Ipv6IfIndex`: the IPv6 interface index (0 if IPv6 is off on it; Wine 8 reports 0
    /// everywhere).
    pub(crate) ipv6_if_index: u32,
    /// `AdapterName`: the GUID string.
    pub(crate) name: String,
    /// `FriendlyName`: the alias users see (`Ethernet`, `Wi-Fi`, `cyphonic`).
    pub(crate) alias: String,
    /// `IfType` is `IF_TYPE_SOFTWARE_LOOPBACK`.
    pub(crate) loopback: bool,
    /// `OperStatus` is `IfOperStatusUp`.
    pub(crate) up: bool,
    pub(crate) unicast: Vec<Unicast>,
}

/// One unicast address of an [`Adapter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unicast {
    pub(crate) addr: IpAddr,
    /// `OnLinkPrefixLength`.
    pub(crate) prefix_len: u8,
    /// `DadState`, an `NL_DAD_STATE`.
    pub(crate) dad_state: i32,
    /// `SuffixOrigin`, an `NL_SUFFIX_ORIGIN`.
    pub(crate) suffix_origin: i32,
}

impl Adapter {
    /// The interface index of an address of this adapter: `Ipv6IfIndex` for IPv6 (or
    /// `IfIndex` where that is 0, as under Wine), `IfIndex` for IPv4.
    fn ifindex_of(&self, addr: IpAddr) -> u32 {
        match addr {
            IpAddr::V6(_) if self.ipv6_if_index != 0 => self.ipv6_if_index,
            _ => self.if_index,
        }
    }

    /// The interface indexes (IPv4 and IPv6) the adapter's notifications carry.
    fn indexes(&self) -> impl Iterator<Item = u32> {
        [self.if_index, self.ipv6_if_index]
            .into_iter()
            .filter(|&index| index != 0)
    }
}

/// The addresses a snapshot reports: those of adapters that are up, not loopback and not
/// ignored, in the walk's order; an address whose prefix length exceeds its width is
/// skipped.
pub(crate) fn addresses(adapters: &[Adapter], options: &MobilityOptions) -> Vec<AddrEntry> {
    adapters
        .iter()
        .filter(|a| a.up && !a.loopback && !options.ignores(&a.alias, &a.name))
        .flat_map(|a| {
            a.unicast.iter().filter_map(move |u| {
                let width = if u.addr.is_ipv4() { 32 } else { 128 };
                (u.prefix_len <= width).then(|| {
                    AddrEntry::new(
                        u.addr,
                        u.prefix_len,
                        addr_flags(u.addr.is_ipv6(), u.dad_state, u.suffix_origin),
                        a.ifindex_of(u.addr),
                    )
                })
            })
        })
        .collect()
}

/// `ADDR_FLAG_*` from the duplicate-address-detection state and the suffix origin:
/// still being checked, found duplicate or invalid → tentative (unusable, as Linux's
/// `IFA_F_DADFAILED` is mapped by netlink-mobility); deprecated → deprecated; an IPv6
/// address with a random suffix → temporary (Windows gives its privacy addresses the
/// suffix origin `IpSuffixOriginRandom`).
pub(crate) fn addr_flags(ipv6: bool, dad_state: i32, suffix_origin: i32) -> u16 {
    let mut flags = match dad_state {
        DAD_PREFERRED => 0,
        DAD_DEPRECATED => ADDR_FLAG_DEPRECATED,
        DAD_INVALID | DAD_TENTATIVE | DAD_DUPLICATE => ADDR_FLAG_TENTATIVE,
        // A state this code does not know: usable as far as we can tell.
        _ => 0,
    };
    if ipv6 && suffix_origin == SUFFIX_RANDOM {
        flags |= ADDR_FLAG_TEMPORARY;
    }
    flags
}

/// What one notification callback saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// A unicast address of this interface appeared, changed or went away.
    Address { index: u32 },
    /// A default route (prefix length 0) through this interface appeared, changed or
    /// went away. Other routes are dropped in the callback already.
    DefaultRoute { index: u32 },
    /// An IP interface (one per family) of this index.
    Interface {
        family: u16,
        index: u32,
        event: IfEvent,
    },
    /// A notification without a row: something changed, we do not know what.
    Unknown,
}

/// What happened to an IP interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IfEvent {
    Appeared {
        connected: bool,
    },
    /// Parameters changed (media connect and disconnect are among them).
    Changed {
        connected: bool,
    },
    Gone,
}

/// The callbacks' queue of changes for `wait`, bounded so that a callback never
/// allocates: a change that does not fit marks the inbox overflowed instead.
#[derive(Debug)]
pub(crate) struct Inbox {
    changes: Vec<Change>,
    overflowed: bool,
}

impl Inbox {
    pub(crate) fn new() -> Self {
        Self {
            changes: Vec::with_capacity(INBOX_CAP),
            overflowed: false,
        }
    }

    pub(crate) fn push(&mut self, change: Change) {
        if self.changes.len() < INBOX_CAP {
            self.changes.push(change);
        } else {
            self.overflowed = true;
        }
    }

    /// Hands the queued changes over by swapping `spare` (empty, with the same
    /// capacity) in; returns whether changes were lost since the last take.
    pub(crate) fn take(&mut self, spare: &mut Vec<Change>) -> bool {
        debug_assert!(spare.is_empty());
        std::mem::swap(&mut self.changes, spare);
        std::mem::take(&mut self.overflowed)
    }
}

/// Turns changes into hints: an interface matters when it gains or loses its
/// connection, and nothing on an ignored interface matters.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    /// Whether each IP interface (family, index) is connected, as last seen.
    connected: HashMap<IfKey, bool>,
    /// Whether each interface index is ignored, from the last adapter walk; used only
    /// when there are names to ignore.
    ignored: HashMap<u32, bool>,
    /// The adapters were walked again during this `wait` already.
    refreshed: bool,
}

impl Tracker {
    /// Starts over from the interface table (`GetIpInterfaceTable`: whether each IP
    /// interface is connected) and an adapter walk.
    pub(crate) fn reset(
        &mut self,
        interfaces: impl IntoIterator<Item = (IfKey, bool)>,
        adapters: &[Adapter],
        options: &MobilityOptions,
    ) {
        self.connected = interfaces.into_iter().collect();
        self.set_adapters(adapters, options);
    }

    /// A new `wait`: an unknown interface may trigger one adapter walk again.
    pub(crate) fn begin_wait(&mut self) {
        self.refreshed = false;
    }

    /// The hints of one change. `walk` lists the adapters afresh (or fails: `None`); it
    /// runs at most once per `wait`, when a change names an interface index the last walk
    /// did not know and names are ignored.
    pub(crate) fn hints(
        &mut self,
        change: Change,
        options: &MobilityOptions,
        walk: &mut dyn FnMut() -> Option<Vec<Adapter>>,
    ) -> u32 {
        let (index, hints) = match change {
            Change::Unknown => return ALL_HINTS,
            Change::Address { index } => (index, HINT_ADDRESSES_CHANGED),
            Change::DefaultRoute { index } => (index, HINT_ROUTES_CHANGED),
            Change::Interface {
                family,
                index,
                event,
            } => {
                let key = (family, index);
                let matters = match event {
                    IfEvent::Appeared { connected } | IfEvent::Changed { connected } => {
                        let was = self.connected.insert(key, connected);
                        // Unknown before counts as disconnected: what appears
                        // disconnected tells nothing.
                        was.unwrap_or(false) != connected
                    }
                    // An interface we never saw tells nothing either.
                    IfEvent::Gone => self.connected.remove(&key) == Some(true),
                };
                if !matters {
                    return 0;
                }
                let ignored = self.ignored(index, options, walk);
                if matches!(event, IfEvent::Gone) && !self.connected.keys().any(|k| k.1 == index) {
                    self.ignored.remove(&index);
                }
                return if ignored { 0 } else { ALL_HINTS };
            }
        };
        if self.ignored(index, options, walk) {
            0
        } else {
            hints
        }
    }

    fn set_adapters(&mut self, adapters: &[Adapter], options: &MobilityOptions) {
        self.ignored = adapters
            .iter()
            .flat_map(|a| {
                let ignored = options.ignores(&a.alias, &a.name);
                a.indexes().map(move |index| (index, ignored))
            })
            .collect();
    }

    fn ignored(
        &mut self,
        index: u32,
        options: &MobilityOptions,
        walk: &mut dyn FnMut() -> Option<Vec<Adapter>>,
    ) -> bool {
        if options.ignore_ifnames.is_empty() {
            return false;
        }
        if !self.ignored.contains_key(&index) && !self.refreshed {
            self.refreshed = true;
            if let Some(adapters) = walk() {
                self.set_adapters(&adapters, options);
            }
        }
        self.ignored.get(&index).copied().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUFFIX_MANUAL: i32 = 1;
    const SUFFIX_LINK_LAYER: i32 = 4;
    const AF_INET: u16 = 2;
    const AF_INET6: u16 = 23;

    fn unicast(addr: &str, prefix_len: u8, dad_state: i32, suffix_origin: i32) -> Unicast {
        Unicast {
            addr: addr.parse().unwrap(),
            prefix_len,
            dad_state,
            suffix_origin,
        }
    }

    fn adapter(index: u32, alias: &str, unicast: Vec<Unicast>) -> Adapter {
        Adapter {
            if_index: index,
            ipv6_if_index: index,
            name: format!("{{0000000{index}-GUID}}"),
            alias: alias.into(),
            loopback: false,
            up: true,
            unicast,
        }
    }

    fn table() -> Vec<Adapter> {
        vec![
            Adapter {
                loopback: true,
                ..adapter(
                    1,
                    "Loopback Pseudo-Interface 1",
                    vec![unicast("127.0.0.1", 8, DAD_PREFERRED, SUFFIX_MANUAL)],
                )
            },
            adapter(
                4,
                "Ethernet",
                vec![
                    unicast("192.0.2.2", 24, DAD_PREFERRED, SUFFIX_MANUAL),
                    unicast("2001:db8::1234", 64, DAD_PREFERRED, SUFFIX_LINK_LAYER),
                    unicast("2001:db8::abcd", 64, DAD_PREFERRED, SUFFIX_RANDOM),
                    unicast("2001:db8::dead", 64, DAD_DEPRECATED, SUFFIX_RANDOM),
                    unicast("2001:db8::beef", 64, DAD_TENTATIVE, SUFFIX_LINK_LAYER),
                    unicast("192.0.2.3", 33, DAD_PREFERRED, SUFFIX_MANUAL),
                ],
            ),
            Adapter {
                up: false,
                ..adapter(
                    5,
                    "Wi-Fi",
                    vec![unicast("198.51.100.7", 24, DAD_PREFERRED, SUFFIX_MANUAL)],
                )
            },
            adapter(
                7,
                "cyphonic",
                vec![unicast("100.64.0.1", 10, DAD_PREFERRED, SUFFIX_MANUAL)],
            ),
            // As under Wine: no IPv6 index, so IPv6 addresses use the IPv4 one.
            Adapter {
                ipv6_if_index: 0,
                ..adapter(
                    9,
                    "eth1",
                    vec![unicast("fd00::2", 64, DAD_PREFERRED, SUFFIX_MANUAL)],
                )
            },
        ]
    }

    fn opts(text: &str) -> MobilityOptions {
        MobilityOptions::parse(Some(text)).unwrap()
    }

    #[test]
    fn snapshot_skips_loopback_down_and_ignored_adapters() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let got = addresses(&table(), &opts("ignore_ifname=CYPHONIC"));
        assert_eq!(
            got,
            [
                AddrEntry::new(ip("192.0.2.2"), 24, 0, 4),
                AddrEntry::new(ip("2001:db8::1234"), 64, 0, 4),
                AddrEntry::new(ip("2001:db8::abcd"), 64, ADDR_FLAG_TEMPORARY, 4),
                AddrEntry::new(
                    ip("2001:db8::dead"),
                    64,
                    ADDR_FLAG_TEMPORARY | ADDR_FLAG_DEPRECATED,
                    4
                ),
                AddrEntry::new(ip("2001:db8::beef"), 64, ADDR_FLAG_TENTATIVE, 4),
                AddrEntry::new(ip("fd00::2"), 64, 0, 9),
            ]
        );
        // Not ignored: the overlay adapter is listed too; by GUID it is ignored again.
        let all = addresses(&table(), &MobilityOptions::default());
        assert_eq!(all.len(), 7);
        assert!(all.contains(&AddrEntry::new(ip("100.64.0.1"), 10, 0, 7)));
        assert_eq!(
            addresses(&table(), &opts("ignore_ifname={00000007-guid}")).len(),
            6
        );
    }

    #[test]
    fn flags_follow_dad_state_and_suffix_origin() {
        assert_eq!(addr_flags(true, DAD_PREFERRED, SUFFIX_LINK_LAYER), 0);
        assert_eq!(
            addr_flags(true, DAD_PREFERRED, SUFFIX_RANDOM),
            ADDR_FLAG_TEMPORARY
        );
        // Random suffixes mean nothing for IPv4 (there are none).
        assert_eq!(addr_flags(false, DAD_PREFERRED, SUFFIX_RANDOM), 0);
        assert_eq!(addr_flags(false, DAD_DEPRECATED, 0), ADDR_FLAG_DEPRECATED);
        for state in [DAD_INVALID, DAD_TENTATIVE, DAD_DUPLICATE] {
            assert_eq!(addr_flags(false, state, 0), ADDR_FLAG_TENTATIVE, "{state}");
        }
        assert_eq!(addr_flags(true, 99, 0), 0);
    }

    #[test]
    fn addresses_and_default_routes_are_reported_unless_ignored() {
        let options = opts("ignore_ifname=cyphonic");
        let mut tracker = Tracker::default();
        tracker.reset([], &table(), &options);
        tracker.begin_wait();
        let mut walks = 0;
        let mut walk = || {
            walks += 1;
            Some(table())
        };
        let mut hints = |c| tracker.hints(c, &options, &mut walk);
        assert_eq!(hints(Change::Address { index: 4 }), HINT_ADDRESSES_CHANGED);
        assert_eq!(
            hints(Change::DefaultRoute { index: 4 }),
            HINT_ROUTES_CHANGED
        );
        assert_eq!(hints(Change::Address { index: 7 }), 0);
        assert_eq!(hints(Change::DefaultRoute { index: 7 }), 0);
        assert_eq!(hints(Change::Unknown), ALL_HINTS);
        // Unknown indexes: one walk per wait, then they are not ignored.
        assert_eq!(hints(Change::Address { index: 42 }), HINT_ADDRESSES_CHANGED);
        assert_eq!(hints(Change::Address { index: 43 }), HINT_ADDRESSES_CHANGED);
        assert_eq!(walks, 1);

        // Without names to ignore, nothing is ever walked.
        let mut tracker = Tracker::default();
        let mut walk = || -> Option<Vec<Adapter>> { panic!("walked") };
        let none = MobilityOptions::default();
        assert_eq!(
            tracker.hints(Change::Address { index: 7 }, &none, &mut walk),
            HINT_ADDRESSES_CHANGED
        );
    }

    #[test]
    fn interfaces_matter_when_their_connection_changes() {
        let options = opts("ignore_ifname=cyphonic");
        let mut tracker = Tracker::default();
        tracker.reset(
            [
                ((AF_INET, 4), true),
                ((AF_INET6, 4), true),
                ((AF_INET, 7), true),
            ],
            &table(),
            &options,
        );
        tracker.begin_wait();
        let mut walk = || Some(table());
        let mut hints = |family, index, event| {
            tracker.hints(
                Change::Interface {
                    family,
                    index,
                    event,
                },
                &options,
                &mut walk,
            )
        };
        use IfEvent::*;
        assert_eq!(
            hints(AF_INET, 4, Changed { connected: true }),
            0,
            "metric, say"
        );
        assert_eq!(hints(AF_INET, 4, Changed { connected: false }), ALL_HINTS);
        assert_eq!(hints(AF_INET, 4, Changed { connected: false }), 0);
        assert_eq!(hints(AF_INET, 4, Changed { connected: true }), ALL_HINTS);
        assert_eq!(
            hints(AF_INET, 7, Changed { connected: false }),
            0,
            "ignored"
        );
        assert_eq!(hints(AF_INET, 20, Appeared { connected: false }), 0);
        assert_eq!(hints(AF_INET, 20, Changed { connected: true }), ALL_HINTS);
        assert_eq!(hints(AF_INET, 21, Appeared { connected: true }), ALL_HINTS);
        assert_eq!(hints(AF_INET, 21, Gone), ALL_HINTS, "was connected");
        assert_eq!(hints(AF_INET, 21, Gone), 0, "unknown by now");
        assert_eq!(hints(AF_INET6, 4, Gone), ALL_HINTS);
        assert_eq!(hints(AF_INET, 30, Gone), 0, "never seen");
    }

    #[test]
    fn the_inbox_is_bounded_and_reports_overflow() {
        let mut inbox = Inbox::new();
        let mut spare = Vec::with_capacity(INBOX_CAP);
        for index in 0..INBOX_CAP as u32 + 5 {
            inbox.push(Change::Address { index });
        }
        assert!(inbox.take(&mut spare));
        assert_eq!(spare.len(), INBOX_CAP);
        assert_eq!(spare[3], Change::Address { index: 3 });
        spare.clear();
        inbox.push(Change::Unknown);
        assert!(!inbox.take(&mut spare), "the overflow was reported once");
        assert_eq!(spare, [Change::Unknown]);
        assert!(spare.capacity() >= INBOX_CAP && inbox.changes.capacity() >= INBOX_CAP);
    }
}
