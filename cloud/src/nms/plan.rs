//! Path planning: from what the NMS knows about two registered nodes (their real
//! endpoints and the endpoints their NAT showed us), which [`PathPlan`] they should
//! build their tunnel with.
//!
//! The rules, per address family both nodes can use (a family is usable by a node
//! when it has a real or an observed endpoint in it):
//!
//! - a node is *behind NAT* in a family when we observed it there and the observed
//!   endpoint is not one of its real endpoints. A family we never observed a node in
//!   is taken at face value (its real endpoints are assumed reachable);
//! - both behind NAT with the same public IP: [`PathPlan::Local`] (they sit behind the
//!   same NAT and use each other's real, private endpoints) when both announced a real
//!   endpoint in that family, else [`PathPlan::HolePunch`] (through the NAT's hairpin);
//! - neither behind NAT: [`PathPlan::Direct`];
//! - exactly one behind NAT: [`PathPlan::Direct`] as well. The NAT'd node sends first,
//!   to the public node's real endpoint, which opens its own mapping; nodes can tell
//!   which of them that is from the route (a peer whose observed endpoint is not among
//!   its real ones is behind NAT). When neither is behind NAT the direction's initiator
//!   sends first;
//! - both behind different NATs: [`PathPlan::HolePunch`].
//!
//! When both families are usable the better plan wins (Local, then Direct, then
//! HolePunch): a pair behind two IPv4 NATs with public IPv6 goes Direct over IPv6. No
//! family in common (an IPv4-only node and an IPv6-only node): [`PathPlan::Relay`],
//! since a TRS bridges the families.

use std::net::{IpAddr, SocketAddr};

use cyphonic_proto::wire::signal::PathPlan;

/// What the planner knows about one node.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reachability<'a> {
    /// The endpoints the node announced (registration or address update).
    pub real: &'a [SocketAddr],
    /// The source of its latest datagram over IPv4, if that is fresh.
    pub observed_v4: Option<SocketAddr>,
    /// The source of its latest datagram over IPv6, if that is fresh.
    pub observed_v6: Option<SocketAddr>,
}

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(addr: &SocketAddr) -> Self {
        match addr.ip() {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    fn bit(self) -> u8 {
        match self {
            Family::V4 => 1,
            Family::V6 => 2,
        }
    }
}

/// A set of address families (IPv4, IPv6, both or none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Families(u8);

impl Families {
    pub const NONE: Families = Families(0);

    pub fn with(self, family: Family) -> Self {
        Families(self.0 | family.bit())
    }

    pub fn contains(self, family: Family) -> bool {
        self.0 & family.bit() != 0
    }

    pub fn intersects(self, other: Families) -> bool {
        self.0 & other.0 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn of_endpoints<'a>(endpoints: impl IntoIterator<Item = &'a SocketAddr>) -> Self {
        endpoints
            .into_iter()
            .fold(Families::NONE, |f, e| f.with(Family::of(e)))
    }
}

impl Reachability<'_> {
    /// The families this node can be reached in at all.
    pub fn families(&self) -> Families {
        Family::BOTH
            .into_iter()
            .filter(|f| self.usable(*f))
            .fold(Families::NONE, Families::with)
    }

    pub fn observed(&self, family: Family) -> Option<SocketAddr> {
        match family {
            Family::V4 => self.observed_v4,
            Family::V6 => self.observed_v6,
        }
    }

    fn has_real(&self, family: Family) -> bool {
        self.real.iter().any(|e| Family::of(e) == family)
    }

    fn usable(&self, family: Family) -> bool {
        self.has_real(family) || self.observed(family).is_some()
    }

    /// Observed in this family at an endpoint that is not one of its own.
    pub fn behind_nat(&self, family: Family) -> bool {
        self.observed(family)
            .is_some_and(|observed| !self.real.contains(&observed))
    }
}

/// The plan for a direction between `a` and `b` (symmetric: both ends get it).
pub fn plan(a: &Reachability<'_>, b: &Reachability<'_>) -> PathPlan {
    Family::BOTH
        .into_iter()
        .filter(|f| a.usable(*f) && b.usable(*f))
        .map(|f| plan_in(a, b, f))
        .min_by_key(|p| rank(*p))
        .unwrap_or(PathPlan::Relay)
}

fn plan_in(a: &Reachability<'_>, b: &Reachability<'_>, family: Family) -> PathPlan {
    match (a.behind_nat(family), b.behind_nat(family)) {
        (false, false) | (true, false) | (false, true) => PathPlan::Direct,
        (true, true) => {
            let same_nat = a
                .observed(family)
                .zip(b.observed(family))
                .is_some_and(|(x, y)| x.ip() == y.ip());
            if same_nat && a.has_real(family) && b.has_real(family) {
                PathPlan::Local
            } else {
                PathPlan::HolePunch
            }
        }
    }
}

/// Lower is better. Relay is only ever the answer when no family is shared.
fn rank(plan: PathPlan) -> u8 {
    match plan {
        PathPlan::Local => 0,
        PathPlan::Direct => 1,
        PathPlan::HolePunch => 2,
        PathPlan::Relay => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn node<'a>(real: &'a [SocketAddr], v4: Option<&str>, v6: Option<&str>) -> Reachability<'a> {
        Reachability {
            real,
            observed_v4: v4.map(ep),
            observed_v6: v6.map(ep),
        }
    }

    fn both_ways(a: &Reachability<'_>, b: &Reachability<'_>) -> PathPlan {
        let p = plan(a, b);
        assert_eq!(p, plan(b, a), "plans must be symmetric");
        p
    }

    #[test]
    fn v4_only_and_v6_only_need_a_relay() {
        let r4 = [ep("203.0.113.1:4500")];
        let r6 = [ep("[2001:db8::1]:4500")];
        let a = node(&r4, Some("203.0.113.1:4500"), None);
        let b = node(&r6, None, Some("[2001:db8::1]:4500"));
        assert_eq!(both_ways(&a, &b), PathPlan::Relay);
        // Also when the families are only known from observation.
        let a = node(&[], Some("198.51.100.1:1000"), None);
        let b = node(&[], None, Some("[2001:db8::2]:1000"));
        assert_eq!(both_ways(&a, &b), PathPlan::Relay);
        // A node we know nothing about shares no family with anyone.
        assert_eq!(both_ways(&node(&[], None, None), &a), PathPlan::Relay);
    }

    #[test]
    fn public_to_public_is_direct() {
        let ra = [ep("203.0.113.1:4500")];
        let rb = [ep("203.0.113.2:4500")];
        let a = node(&ra, Some("203.0.113.1:4500"), None);
        let b = node(&rb, Some("203.0.113.2:4500"), None);
        assert_eq!(both_ways(&a, &b), PathPlan::Direct);
        assert!(!a.behind_nat(Family::V4));
    }

    #[test]
    fn public_to_nat_is_direct() {
        let ra = [ep("203.0.113.1:4500")];
        let rb = [ep("192.168.1.20:4500")];
        let a = node(&ra, Some("203.0.113.1:4500"), None);
        let b = node(&rb, Some("198.51.100.7:61000"), None);
        assert!(b.behind_nat(Family::V4));
        assert_eq!(both_ways(&a, &b), PathPlan::Direct);
    }

    #[test]
    fn two_different_nats_hole_punch() {
        let ra = [ep("10.0.0.5:4500")];
        let rb = [ep("192.168.1.20:4500")];
        let a = node(&ra, Some("198.51.100.1:40000"), None);
        let b = node(&rb, Some("198.51.100.7:61000"), None);
        assert_eq!(both_ways(&a, &b), PathPlan::HolePunch);
    }

    #[test]
    fn same_nat_goes_local() {
        let ra = [ep("192.168.1.10:4500")];
        let rb = [ep("192.168.1.20:4500")];
        let a = node(&ra, Some("198.51.100.7:40000"), None);
        let b = node(&rb, Some("198.51.100.7:61000"), None);
        assert_eq!(both_ways(&a, &b), PathPlan::Local);
        // Behind the same NAT but one announced no private endpoint: only the NAT's
        // hairpin can join them.
        let c = node(&[], Some("198.51.100.7:62000"), None);
        assert_eq!(both_ways(&a, &c), PathPlan::HolePunch);
    }

    #[test]
    fn dual_stack_prefers_the_better_family() {
        // Two IPv4 NATs, but both have public IPv6: direct over IPv6.
        let ra = [ep("10.0.0.5:4500"), ep("[2001:db8:a::5]:4500")];
        let rb = [ep("192.168.1.20:4500"), ep("[2001:db8:b::20]:4500")];
        let a = node(
            &ra,
            Some("198.51.100.1:40000"),
            Some("[2001:db8:a::5]:4500"),
        );
        let b = node(
            &rb,
            Some("198.51.100.7:61000"),
            Some("[2001:db8:b::20]:4500"),
        );
        assert_eq!(both_ways(&a, &b), PathPlan::Direct);

        // Same IPv4 NAT and public IPv6: the LAN wins.
        let rc = [ep("10.0.0.6:4500"), ep("[2001:db8:a::6]:4500")];
        let c = node(
            &rc,
            Some("198.51.100.1:40001"),
            Some("[2001:db8:a::6]:4500"),
        );
        assert_eq!(both_ways(&a, &c), PathPlan::Local);

        // Dual-stack node and an IPv4-only node behind another NAT: the only shared
        // family decides.
        let rd = [ep("192.168.7.7:4500")];
        let d = node(&rd, Some("198.51.100.99:5000"), None);
        assert_eq!(both_ways(&a, &d), PathPlan::HolePunch);

        // Dual-stack node and an IPv6-only public node: direct over IPv6.
        let re = [ep("[2001:db8:e::1]:4500")];
        let e = node(&re, None, Some("[2001:db8:e::1]:4500"));
        assert_eq!(both_ways(&a, &e), PathPlan::Direct);

        // NAT66 on both sides and different IPv4 NATs: hole punch in either family.
        let f = node(&ra, Some("198.51.100.1:40000"), Some("[2001:db8:ff::1]:9"));
        let g = node(&rb, Some("198.51.100.7:61000"), Some("[2001:db8:ee::1]:9"));
        assert_eq!(both_ways(&f, &g), PathPlan::HolePunch);
    }

    #[test]
    fn unobserved_family_is_taken_at_face_value() {
        // `a` registered over IPv4 only; its announced IPv6 endpoint is believed.
        let ra = [ep("10.0.0.5:4500"), ep("[2001:db8:a::5]:4500")];
        let a = node(&ra, Some("198.51.100.1:40000"), None);
        let rb = [ep("[2001:db8:b::1]:4500")];
        let b = node(&rb, None, Some("[2001:db8:b::1]:4500"));
        assert_eq!(both_ways(&a, &b), PathPlan::Direct);
    }

    #[test]
    fn families_sets() {
        let ra = [ep("10.0.0.5:4500")];
        let a = node(&ra, None, Some("[2001:db8::1]:1"));
        let f = a.families();
        assert!(f.contains(Family::V4) && f.contains(Family::V6));
        assert!(node(&[], None, None).families().is_empty());
        let v6 = Families::of_endpoints(&[ep("[2001:db8::1]:1")]);
        assert!(v6.intersects(f));
        assert!(!v6.intersects(Families::NONE.with(Family::V4)));
    }
}
