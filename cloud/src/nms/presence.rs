//! The presence table: which nodes are registered, where they are, and when they
//! expire.
//!
//! Built to hold 100,000 nodes in a few hundred bytes each:
//! - the credential is not copied: a [`Presence`] shares the `Arc<PeerIdentity>` the
//!   channel server already holds for the node's channel (it is swapped for the
//!   newest channel's when that carries the same credential, so one copy stays alive);
//! - real endpoints are packed bytes (6 per IPv4 endpoint, 18 per IPv6 one, IPv4
//!   first) decoded on demand; the observed endpoints are one optional address per
//!   family, each with the tick it was last seen at;
//! - the name index keys nodes by a keyed 64-bit hash of their name instead of a copy
//!   of it (the name is compared against the node's credential on lookup; a second
//!   name with the same hash goes to a small spill map);
//! - the address index keys nodes by the virtual IPv4 and IPv6 addresses of their
//!   credentials (20 and 32 bytes an entry), so that a node can ask for a direction to
//!   the owner of an overlay address. Like a name, an address belongs to the newest
//!   registration that claims it;
//! - times are `u32` ticks of [`TICK`] since the table was made;
//! - expiry is one `(deadline tick, node)` entry per node in a `BTreeSet`, moved lazily:
//!   a keepalive only bumps `last_seen`, and an entry that comes due for a node seen
//!   since is re-filed at the node's real deadline. No task or timer per node.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cyphonic_proto::channel::{ChannelHandle, PeerIdentity};
use cyphonic_proto::credential::SignedCredential;
use cyphonic_proto::wire::signal::{MAX_ENDPOINTS, MAX_OBSERVED};
use cyphonic_proto::wire::{Fqdn, NodeId};

use super::plan::Reachability;
use crate::net;

/// Resolution of presence times.
pub(crate) const TICK: Duration = Duration::from_millis(100);

const PACKED_V4: usize = 6;
const PACKED_V6: usize = 18;

/// One registered node.
#[derive(Debug)]
pub(crate) struct Presence {
    /// The node's channel identity; its credential is the one peers get in routes.
    peer: Arc<PeerIdentity>,
    /// Real endpoints packed: `real_v4` IPv4 ones (address, port), then IPv6 ones.
    real: Box<[u8]>,
    /// The channel the node last sent on.
    pub(crate) channel: ChannelHandle,
    last_seen: u32,
    seen_v4: u32,
    seen_v6: u32,
    /// The deadline tick of this node's entry in the expiry set.
    scheduled: u32,
    observed_v6: Option<([u8; 16], u16)>,
    observed_v4: Option<SocketAddrV4>,
    /// Bumped by every registration (never 0), so answers cached for the node's
    /// earlier requests are not mistaken for answers to a restarted node's.
    generation: u16,
    real_v4: u8,
    /// Index of the socket the node last sent to.
    pub(crate) socket: u8,
}

/// Real endpoints unpacked on the stack.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Endpoints {
    list: [SocketAddr; MAX_ENDPOINTS],
    len: usize,
}

impl Deref for Endpoints {
    type Target = [SocketAddr];

    fn deref(&self) -> &[SocketAddr] {
        &self.list[..self.len]
    }
}

/// What a registration records.
#[derive(Debug)]
pub(crate) struct Registration<'a> {
    /// Must carry a credential (the NMS accepts only credential channels).
    pub(crate) peer: Arc<PeerIdentity>,
    pub(crate) endpoints: &'a [SocketAddr],
    pub(crate) observed: SocketAddr,
    pub(crate) channel: ChannelHandle,
    pub(crate) socket: u8,
}

/// All registered nodes of one NMS.
#[derive(Debug)]
pub(crate) struct Presences {
    nodes: HashMap<NodeId, Presence>,
    /// Name hash -> node; see the module docs.
    by_name: HashMap<u64, NodeId>,
    /// Names whose hash another name already holds in `by_name`.
    spill: HashMap<Fqdn, NodeId>,
    /// Virtual addresses (from the credentials) -> node.
    by_vip4: HashMap<Ipv4Addr, NodeId>,
    by_vip6: HashMap<Ipv6Addr, NodeId>,
    hasher: RandomState,
    expiry: BTreeSet<(u32, NodeId)>,
    epoch: Instant,
    ttl: u32,
    generations: u16,
    /// Tests force every name onto one hash.
    #[cfg(test)]
    collide: bool,
}

impl Presence {
    pub(crate) fn credential(&self) -> &SignedCredential {
        self.peer
            .credential
            .as_ref()
            .expect("Presences::register only admits identities with a credential")
    }

    pub(crate) fn fqdn(&self) -> &Fqdn {
        &self.credential().credential().fqdn
    }

    pub(crate) fn static_public(&self) -> &[u8; 32] {
        &self.peer.static_public
    }

    pub(crate) fn generation(&self) -> u16 {
        self.generation
    }

    /// The real endpoints, IPv4 first.
    pub(crate) fn real(&self) -> Endpoints {
        unpack(&self.real, self.real_v4)
    }

    /// The planner's view over `real` (this node's [`Self::real`]), with observations
    /// older than `ttl` ticks left out (the node may have left that network).
    pub(crate) fn reachability<'a>(
        &self,
        real: &'a [SocketAddr],
        now: u32,
        ttl: u32,
    ) -> Reachability<'a> {
        let fresh = |seen: u32| now.saturating_sub(seen) <= ttl;
        Reachability {
            real,
            observed_v4: self
                .observed_v4
                .filter(|_| fresh(self.seen_v4))
                .map(SocketAddr::V4),
            observed_v6: self
                .observed_v6
                .filter(|_| fresh(self.seen_v6))
                .map(|(ip, port)| SocketAddr::from((Ipv6Addr::from(ip), port))),
        }
    }

    /// The fresh observed endpoints, IPv4 first (at most [`MAX_OBSERVED`]).
    pub(crate) fn observed(&self, now: u32, ttl: u32) -> Vec<SocketAddr> {
        let r = self.reachability(&[], now, ttl);
        let list: Vec<SocketAddr> = r.observed_v4.into_iter().chain(r.observed_v6).collect();
        debug_assert!(list.len() <= MAX_OBSERVED);
        list
    }

    fn observe(&mut self, observed: SocketAddr, tick: u32) {
        match net::canonical(observed) {
            SocketAddr::V4(v4) => {
                self.observed_v4 = Some(v4);
                self.seen_v4 = tick;
            }
            SocketAddr::V6(v6) => {
                self.observed_v6 = Some((v6.ip().octets(), v6.port()));
                self.seen_v6 = tick;
            }
        }
    }

    fn set_real(&mut self, endpoints: &[SocketAddr]) {
        let (real, real_v4) = pack(endpoints);
        self.real = real;
        self.real_v4 = real_v4;
    }
}

impl Presences {
    /// `ttl`: how long a node stays registered without sending anything.
    pub(crate) fn new(epoch: Instant, ttl: Duration) -> Self {
        let ttl = u32::try_from(ttl.as_millis() / TICK.as_millis())
            .unwrap_or(u32::MAX)
            .max(1);
        Self {
            nodes: HashMap::new(),
            by_name: HashMap::new(),
            spill: HashMap::new(),
            by_vip4: HashMap::new(),
            by_vip6: HashMap::new(),
            hasher: RandomState::new(),
            expiry: BTreeSet::new(),
            epoch,
            ttl,
            generations: 0,
            #[cfg(test)]
            collide: false,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// `now` in ticks since the table was made.
    pub(crate) fn tick(&self, now: Instant) -> u32 {
        let ticks = now.saturating_duration_since(self.epoch).as_millis() / TICK.as_millis();
        u32::try_from(ticks).unwrap_or(u32::MAX)
    }

    /// The presence TTL in ticks.
    pub(crate) fn ttl(&self) -> u32 {
        self.ttl
    }

    pub(crate) fn get(&self, node: &NodeId) -> Option<&Presence> {
        self.nodes.get(node)
    }

    pub(crate) fn contains(&self, node: &NodeId) -> bool {
        self.nodes.contains_key(node)
    }

    pub(crate) fn node_by_fqdn(&self, fqdn: &Fqdn) -> Option<NodeId> {
        self.by_name
            .get(&self.name_hash(fqdn))
            .filter(|node| self.nodes.get(node).is_some_and(|p| p.fqdn() == fqdn))
            .or_else(|| self.spill.get(fqdn))
            .copied()
    }

    /// The registered node whose credential carries the virtual address `ip` (an
    /// IPv4-mapped IPv6 address counts as its IPv4 address). When two registered nodes
    /// claim an address, the newer registration has it, and once that node leaves
    /// nobody does until the older one registers again.
    pub(crate) fn node_by_address(&self, ip: IpAddr) -> Option<NodeId> {
        let ip = ip.to_canonical();
        let node = match ip {
            IpAddr::V4(v4) => self.by_vip4.get(&v4),
            IpAddr::V6(v6) => self.by_vip6.get(&v6),
        }?;
        // The index follows every change of a node's credential; checking costs little.
        let credential = self.nodes.get(node)?.credential().credential();
        (ip == IpAddr::V4(credential.vip4) || ip == IpAddr::V6(credential.vip6)).then_some(*node)
    }

    /// Adds the node, or replaces what an earlier registration recorded (keeping the
    /// observed endpoint of the other family). When another node held the same name
    /// (a device re-created under its old name), that node is dropped and returned: the
    /// newest registration owns a name. A virtual address claimed by another node moves
    /// to this one without dropping that node (it stays reachable by name): addresses
    /// are assigned once per device, so two live claims mean one credential is stale.
    pub(crate) fn register(&mut self, now: Instant, reg: Registration<'_>) -> Option<NodeId> {
        let Some(credential) = reg.peer.credential.as_ref() else {
            debug_assert!(false, "registration without a credential");
            return None;
        };
        let node = credential.credential().node_id;
        let tick = self.tick(now);
        let (real, real_v4) = pack(reg.endpoints);
        self.generations = self.generations.checked_add(1).unwrap_or(1);
        let generation = self.generations;
        if let Some((name, vip4, vip6)) = self.nodes.get(&node).map(|p| {
            let c = p.credential().credential();
            (c.fqdn.clone(), c.vip4, c.vip6)
        }) {
            // Unindexed while its name and addresses may change; indexed again below.
            self.unindex(&name, &node);
            self.unindex_addresses(vip4, vip6, &node);
        }
        match self.nodes.get_mut(&node) {
            Some(p) => {
                p.peer = reg.peer;
                p.real = real;
                p.real_v4 = real_v4;
                p.channel = reg.channel;
                p.socket = reg.socket;
                p.last_seen = tick;
                p.generation = generation;
                p.observe(reg.observed, tick);
            }
            None => {
                let scheduled = tick.saturating_add(self.ttl);
                let mut p = Presence {
                    peer: reg.peer,
                    real,
                    channel: reg.channel,
                    last_seen: tick,
                    seen_v4: 0,
                    seen_v6: 0,
                    scheduled,
                    observed_v6: None,
                    observed_v4: None,
                    generation,
                    real_v4,
                    socket: reg.socket,
                };
                p.observe(reg.observed, tick);
                self.nodes.insert(node, p);
                self.expiry.insert((scheduled, node));
            }
        }
        let displaced = self.index(node);
        self.index_addresses(node);
        if let Some(other) = displaced {
            self.remove(&other);
        }
        displaced
    }

    /// Any authenticated message from a registered node: it is alive, it sent from
    /// `observed` (NAT rebinding moves this) on `channel`. `None` if not registered.
    pub(crate) fn touch(
        &mut self,
        now: Instant,
        node: &NodeId,
        observed: SocketAddr,
        channel: ChannelHandle,
        socket: u8,
    ) -> Option<&mut Presence> {
        let tick = self.tick(now);
        let p = self.nodes.get_mut(node)?;
        p.last_seen = tick;
        p.observe(observed, tick);
        p.channel = channel;
        p.socket = socket;
        Some(p)
    }

    /// Swaps in the identity of the channel the node now uses (same node, key and
    /// name, a credential at least as new), so that the one of its old channel can be
    /// freed with that channel. A credential renewed by a registration on an older
    /// channel is not swapped back for that channel's.
    pub(crate) fn adopt_identity(&mut self, node: &NodeId, peer: &Arc<PeerIdentity>) {
        let Some(p) = self.nodes.get_mut(node) else {
            return;
        };
        if Arc::ptr_eq(&p.peer, peer) || p.peer.static_public != peer.static_public {
            return;
        }
        let Some(offered) = peer.credential.as_ref().map(|c| c.credential()) else {
            return;
        };
        let current = p.credential().credential();
        // Same name and addresses, so the indexes need no change.
        if offered.node_id == *node
            && offered.fqdn == current.fqdn
            && offered.vip4 == current.vip4
            && offered.vip6 == current.vip6
            && offered.not_after >= current.not_after
        {
            p.peer = Arc::clone(peer);
        }
    }

    /// The node moved: its real endpoints are now `endpoints` and it is observed at
    /// `observed` only (the other family's observation belongs to the old network).
    pub(crate) fn move_to(
        &mut self,
        now: Instant,
        node: &NodeId,
        endpoints: &[SocketAddr],
        observed: SocketAddr,
    ) -> bool {
        let tick = self.tick(now);
        let Some(p) = self.nodes.get_mut(node) else {
            return false;
        };
        p.set_real(endpoints);
        p.observed_v4 = None;
        p.observed_v6 = None;
        p.observe(observed, tick);
        p.last_seen = tick;
        true
    }

    pub(crate) fn remove(&mut self, node: &NodeId) -> Option<Presence> {
        let credential = self.nodes.get(node)?.credential().credential();
        let (name, vip4, vip6) = (credential.fqdn.clone(), credential.vip4, credential.vip6);
        self.unindex(&name, node);
        self.unindex_addresses(vip4, vip6, node);
        let p = self.nodes.remove(node)?;
        self.expiry.remove(&(p.scheduled, *node));
        Some(p)
    }

    /// Removes every node that sent nothing for the TTL, handing each to `expired`.
    pub(crate) fn expire(&mut self, now: Instant, mut expired: impl FnMut(NodeId, Presence)) {
        let tick = self.tick(now);
        while let Some(&(at, node)) = self.expiry.first() {
            if at > tick {
                break;
            }
            self.expiry.pop_first();
            let Some(p) = self.nodes.get_mut(&node) else {
                continue;
            };
            let deadline = p.last_seen.saturating_add(self.ttl);
            if deadline <= tick {
                if let Some(p) = self.remove(&node) {
                    expired(node, p);
                }
            } else {
                p.scheduled = deadline;
                self.expiry.insert((deadline, node));
            }
        }
    }

    /// When [`Self::expire`] may next find something to do.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.expiry.first().map(|&(at, _)| self.epoch + TICK * at)
    }

    /// Removes the nodes `drop` names, handing each to `removed`.
    pub(crate) fn remove_where(
        &mut self,
        mut drop: impl FnMut(&NodeId) -> bool,
        mut removed: impl FnMut(NodeId, Presence),
    ) {
        let doomed: Vec<NodeId> = self.nodes.keys().filter(|n| drop(n)).copied().collect();
        for node in doomed {
            if let Some(p) = self.remove(&node) {
                removed(node, p);
            }
        }
    }

    fn name_hash(&self, name: &Fqdn) -> u64 {
        #[cfg(test)]
        if self.collide {
            return 0;
        }
        self.hasher.hash_one(name)
    }

    /// Indexes `node` (present in `nodes`) under its name; returns the node that held
    /// the name before, if another.
    fn index(&mut self, node: NodeId) -> Option<NodeId> {
        let name = self.nodes.get(&node)?.fqdn().clone();
        if let Some(holder) = self.spill.get_mut(&name) {
            let previous = std::mem::replace(holder, node);
            return (previous != node).then_some(previous);
        }
        let hash = self.name_hash(&name);
        match self.by_name.get(&hash).copied() {
            Some(holder) if holder == node => None,
            Some(holder) if self.nodes.get(&holder).is_some_and(|p| *p.fqdn() != name) => {
                self.spill.insert(name, node);
                None
            }
            previous => {
                self.by_name.insert(hash, node);
                previous
            }
        }
    }

    /// Indexes `node` (present in `nodes`) under its virtual addresses, taking them
    /// from any node that held them.
    fn index_addresses(&mut self, node: NodeId) {
        let Some(p) = self.nodes.get(&node) else {
            return;
        };
        let credential = p.credential().credential();
        let (vip4, vip6) = (credential.vip4, credential.vip6);
        for (holder, ip) in [
            (self.by_vip4.insert(vip4, node), IpAddr::V4(vip4)),
            (self.by_vip6.insert(vip6, node), IpAddr::V6(vip6)),
        ] {
            if let Some(holder) = holder.filter(|h| *h != node) {
                tracing::info!(%node, previous = %holder, %ip, "virtual address moved to a newer node");
            }
        }
    }

    /// Removes the entries of `node`'s addresses that still point at it (a newer node
    /// may have taken one over).
    fn unindex_addresses(&mut self, vip4: Ipv4Addr, vip6: Ipv6Addr, node: &NodeId) {
        if self.by_vip4.get(&vip4) == Some(node) {
            self.by_vip4.remove(&vip4);
        }
        if self.by_vip6.get(&vip6) == Some(node) {
            self.by_vip6.remove(&vip6);
        }
    }

    fn unindex(&mut self, name: &Fqdn, node: &NodeId) {
        let hash = self.name_hash(name);
        if self.by_name.get(&hash) == Some(node) {
            self.by_name.remove(&hash);
        } else if self.spill.get(name) == Some(node) {
            self.spill.remove(name);
        }
    }
}

/// Packs the endpoints worth giving to peers: canonical form, no unspecified,
/// multicast or port-0 addresses, no duplicates, at most [`MAX_ENDPOINTS`], IPv4
/// first. Returns them with the number of IPv4 ones.
fn pack(endpoints: &[SocketAddr]) -> (Box<[u8]>, u8) {
    let mut list: Vec<SocketAddr> = Vec::with_capacity(endpoints.len().min(MAX_ENDPOINTS));
    for e in endpoints.iter().map(|e| net::canonical(*e)) {
        let useless = e.port() == 0
            || e.ip().is_unspecified()
            || e.ip().is_multicast()
            || e.ip() == IpAddr::V4(Ipv4Addr::BROADCAST);
        if !useless && !list.contains(&e) && list.len() < MAX_ENDPOINTS {
            list.push(e);
        }
    }
    list.sort_by_key(|e| e.is_ipv6());
    let mut packed = Vec::with_capacity(list.len() * PACKED_V6);
    let mut v4 = 0u8;
    for e in &list {
        match e.ip() {
            IpAddr::V4(ip) => {
                packed.extend_from_slice(&ip.octets());
                v4 += 1;
            }
            IpAddr::V6(ip) => packed.extend_from_slice(&ip.octets()),
        }
        packed.extend_from_slice(&e.port().to_be_bytes());
    }
    (packed.into_boxed_slice(), v4)
}

fn unpack(packed: &[u8], v4: u8) -> Endpoints {
    let mut out = Endpoints {
        list: [SocketAddr::from(([0, 0, 0, 0], 0)); MAX_ENDPOINTS],
        len: 0,
    };
    let (v4, v6) = packed.split_at((usize::from(v4) * PACKED_V4).min(packed.len()));
    let unpacked = v4
        .chunks_exact(PACKED_V4)
        .map(|c| SocketAddr::from(([c[0], c[1], c[2], c[3]], u16::from_be_bytes([c[4], c[5]]))))
        .chain(v6.chunks_exact(PACKED_V6).map(|c| {
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&c[..16]);
            SocketAddr::from((ip, u16::from_be_bytes([c[16], c[17]])))
        }));
    for (slot, e) in out.list.iter_mut().zip(unpacked) {
        *slot = e;
        out.len += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cyphonic_proto::channel::PurposeKind;
    use cyphonic_proto::credential::{CloudKeyId, Credential};
    use cyphonic_proto::time::UnixTime;
    use ed25519_dalek::SigningKey;

    fn identity(n: u8, name: &str) -> Arc<PeerIdentity> {
        identity_until(n, name, u64::MAX / 2)
    }

    fn identity_until(n: u8, name: &str, not_after: u64) -> Arc<PeerIdentity> {
        identity_with(n, name, not_after, vip4(n), vip6(n))
    }

    fn vip4(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(100, 64, 0, n)
    }

    fn vip6(n: u8) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(n))
    }

    fn identity_with(
        n: u8,
        name: &str,
        not_after: u64,
        vip4: Ipv4Addr,
        vip6: Ipv6Addr,
    ) -> Arc<PeerIdentity> {
        let cloud = SigningKey::from_bytes(&[1; 32]);
        let credential = Credential {
            cloud_key_id: CloudKeyId::of(&cloud.verifying_key()),
            node_id: NodeId([n; 16]),
            not_before: UnixTime(1),
            not_after: UnixTime(not_after),
            static_public: [n; 32],
            vip4,
            vip6,
            fqdn: Fqdn::new(name).unwrap(),
        }
        .sign(&cloud);
        Arc::new(PeerIdentity {
            static_public: [n; 32],
            purpose: PurposeKind::Credential,
            credential: Some(credential),
        })
    }

    fn handle() -> ChannelHandle {
        super::super::tests_support::some_handle()
    }

    fn ep(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn register(
        table: &mut Presences,
        now: Instant,
        n: u8,
        name: &str,
        endpoints: &[SocketAddr],
        observed: &str,
    ) -> Option<NodeId> {
        register_as(table, now, identity(n, name), endpoints, observed)
    }

    fn register_as(
        table: &mut Presences,
        now: Instant,
        peer: Arc<PeerIdentity>,
        endpoints: &[SocketAddr],
        observed: &str,
    ) -> Option<NodeId> {
        table.register(
            now,
            Registration {
                peer,
                endpoints,
                observed: ep(observed),
                channel: handle(),
                socket: 0,
            },
        )
    }

    fn by_address(table: &Presences, ip: &str) -> Option<NodeId> {
        table.node_by_address(ip.parse().unwrap())
    }

    #[test]
    fn packing_orders_and_filters() {
        let (packed, v4) = pack(&[
            ep("[2001:db8::1]:1"),
            ep("[::ffff:192.0.2.1]:2"),
            ep("0.0.0.0:3"),
            ep("192.0.2.1:0"),
            ep("224.0.0.1:5"),
            ep("192.0.2.1:2"),
            ep("10.0.0.1:4"),
        ]);
        assert_eq!(packed.len(), 2 * PACKED_V4 + PACKED_V6);
        assert_eq!(v4, 2);
        assert_eq!(
            &*unpack(&packed, v4),
            &[ep("192.0.2.1:2"), ep("10.0.0.1:4"), ep("[2001:db8::1]:1")]
        );
        let many: Vec<SocketAddr> = (1..40).map(|p| ep(&format!("10.0.0.1:{p}"))).collect();
        let (packed, v4) = pack(&many);
        assert_eq!(unpack(&packed, v4).len(), MAX_ENDPOINTS);
    }

    #[test]
    fn register_observe_per_family_and_index() {
        let t0 = Instant::now();
        let mut table = Presences::new(t0, Duration::from_secs(10));
        let real = [ep("192.168.1.5:4500"), ep("[2001:db8::5]:4500")];
        assert_eq!(
            register(&mut table, t0, 1, "a.cyphonic", &real, "198.51.100.1:999"),
            None
        );
        // The same node over the IPv6 socket: both observations are kept.
        register(
            &mut table,
            t0 + TICK,
            1,
            "a.cyphonic",
            &real,
            "[2001:db8::5]:4500",
        );
        let node = NodeId([1; 16]);
        let p = table.get(&node).unwrap();
        let now = table.tick(t0 + TICK);
        assert_eq!(
            p.observed(now, table.ttl()),
            vec![ep("198.51.100.1:999"), ep("[2001:db8::5]:4500")]
        );
        assert_eq!(&*p.real(), &real[..]);
        assert_eq!(p.real_v4, 1);
        assert_eq!(
            table.node_by_fqdn(&Fqdn::new("a.cyphonic").unwrap()),
            Some(node)
        );
        // NAT rebinding: the keepalive's source replaces the IPv4 observation.
        table
            .touch(t0 + TICK * 2, &node, ep("198.51.100.1:1000"), handle(), 1)
            .unwrap();
        let p = table.get(&node).unwrap();
        assert_eq!(p.socket, 1);
        let now = table.tick(t0 + TICK * 2);
        assert_eq!(p.observed(now, table.ttl())[0], ep("198.51.100.1:1000"));
        // A stale observation is not offered.
        assert_eq!(p.observed(now + table.ttl() + 5, table.ttl()).len(), 0);

        // Moving replaces the endpoints and forgets the other family's observation.
        assert!(table.move_to(
            t0 + TICK * 3,
            &node,
            &[ep("10.1.1.1:4500")],
            ep("203.0.113.9:5")
        ));
        let p = table.get(&node).unwrap();
        assert_eq!(&*p.real(), &[ep("10.1.1.1:4500")]);
        assert_eq!(
            p.observed(table.tick(t0 + TICK * 3), table.ttl()),
            vec![ep("203.0.113.9:5")]
        );
    }

    #[test]
    fn newest_registration_owns_a_name() {
        let t0 = Instant::now();
        let mut table = Presences::new(t0, Duration::from_secs(10));
        register(&mut table, t0, 1, "a.cyphonic", &[], "192.0.2.1:1");
        let displaced = register(&mut table, t0, 2, "a.cyphonic", &[], "192.0.2.2:1");
        assert_eq!(displaced, Some(NodeId([1; 16])));
        assert_eq!(table.len(), 1);
        assert_eq!(
            table.node_by_fqdn(&Fqdn::new("a.cyphonic").unwrap()),
            Some(NodeId([2; 16]))
        );
        // A node whose name changed is found under the new one only.
        register(&mut table, t0, 2, "b.cyphonic", &[], "192.0.2.2:1");
        assert_eq!(table.node_by_fqdn(&Fqdn::new("a.cyphonic").unwrap()), None);
        assert!(
            table
                .node_by_fqdn(&Fqdn::new("b.cyphonic").unwrap())
                .is_some()
        );
        assert!(table.remove(&NodeId([2; 16])).is_some());
        assert_eq!(table.node_by_fqdn(&Fqdn::new("b.cyphonic").unwrap()), None);
        assert!(table.expiry.is_empty());
    }

    #[test]
    fn address_index_follows_registrations() {
        let t0 = Instant::now();
        let mut table = Presences::new(t0, Duration::from_secs(10));
        let (a, b, c) = (NodeId([1; 16]), NodeId([2; 16]), NodeId([3; 16]));
        register(&mut table, t0, 1, "a.cyphonic", &[], "192.0.2.1:1");
        register(&mut table, t0, 2, "b.cyphonic", &[], "192.0.2.2:1");
        assert_eq!(by_address(&table, "100.64.0.1"), Some(a));
        assert_eq!(by_address(&table, "fd00::1"), Some(a));
        assert_eq!(by_address(&table, "100.64.0.2"), Some(b));
        assert_eq!(by_address(&table, "fd00::2"), Some(b));
        // An IPv4-mapped IPv6 address is the IPv4 address.
        assert_eq!(by_address(&table, "::ffff:100.64.0.2"), Some(b));
        assert_eq!(by_address(&table, "100.64.0.3"), None);
        assert_eq!(by_address(&table, "fd00::3"), None);

        // a registers again with other addresses: only the new ones find it.
        let moved = identity_with(
            1,
            "a.cyphonic",
            u64::MAX / 2,
            vip4(11),
            "fd00::b".parse().unwrap(),
        );
        register_as(&mut table, t0, moved, &[], "192.0.2.1:1");
        assert_eq!(by_address(&table, "100.64.0.1"), None);
        assert_eq!(by_address(&table, "fd00::1"), None);
        assert_eq!(by_address(&table, "100.64.0.11"), Some(a));
        assert_eq!(by_address(&table, "fd00::b"), Some(a));

        // c (another name) claims b's IPv4 address: the newer registration has it, b
        // keeps its name and its IPv6 address.
        let claim = identity_with(3, "c.cyphonic", u64::MAX / 2, vip4(2), vip6(3));
        assert_eq!(register_as(&mut table, t0, claim, &[], "192.0.2.3:1"), None);
        assert_eq!(table.len(), 3);
        assert_eq!(by_address(&table, "100.64.0.2"), Some(c));
        assert_eq!(by_address(&table, "fd00::2"), Some(b));
        assert_eq!(
            table.node_by_fqdn(&Fqdn::new("b.cyphonic").unwrap()),
            Some(b)
        );
        // b leaving does not take c's entry with it.
        assert!(table.remove(&b).is_some());
        assert_eq!(by_address(&table, "100.64.0.2"), Some(c));
        assert_eq!(by_address(&table, "fd00::2"), None);

        // A newer node under a's name displaces a, and its addresses replace a's.
        assert_eq!(
            register(&mut table, t0, 4, "a.cyphonic", &[], "192.0.2.4:1"),
            Some(a)
        );
        assert_eq!(by_address(&table, "100.64.0.11"), None);
        assert_eq!(by_address(&table, "100.64.0.4"), Some(NodeId([4; 16])));

        // An identity with other addresses is not adopted (the index would go stale).
        let other_addresses = identity_with(3, "c.cyphonic", u64::MAX / 2, vip4(3), vip6(3));
        table.adopt_identity(&c, &other_addresses);
        assert_eq!(by_address(&table, "100.64.0.2"), Some(c));
        assert_eq!(by_address(&table, "100.64.0.3"), None);

        // Expiry and removal empty the index.
        table.remove(&c);
        table.expire(t0 + Duration::from_secs(10), |_, _| {});
        assert_eq!(table.len(), 0);
        assert!(table.by_vip4.is_empty() && table.by_vip6.is_empty());
    }

    #[test]
    fn names_sharing_a_hash_are_all_found() {
        let t0 = Instant::now();
        let mut table = Presences::new(t0, Duration::from_secs(10));
        table.collide = true;
        let name = |s: &str| Fqdn::new(s).unwrap();
        for (n, s) in [(1, "a.cyphonic"), (2, "b.cyphonic"), (3, "c.cyphonic")] {
            assert_eq!(register(&mut table, t0, n, s, &[], "192.0.2.1:1"), None);
        }
        assert_eq!(table.spill.len(), 2);
        for (n, s) in [(1, "a.cyphonic"), (2, "b.cyphonic"), (3, "c.cyphonic")] {
            assert_eq!(table.node_by_fqdn(&name(s)), Some(NodeId([n; 16])));
        }
        assert_eq!(table.node_by_fqdn(&name("d.cyphonic")), None);
        // The holder of the hash leaves; the others stay reachable.
        table.remove(&NodeId([1; 16]));
        assert_eq!(table.node_by_fqdn(&name("a.cyphonic")), None);
        assert_eq!(
            table.node_by_fqdn(&name("c.cyphonic")),
            Some(NodeId([3; 16]))
        );
        // A renamed node, and a name taken over by a newer node, in the spill map.
        register(&mut table, t0, 2, "b2.cyphonic", &[], "192.0.2.1:1");
        assert_eq!(table.node_by_fqdn(&name("b.cyphonic")), None);
        assert_eq!(
            table.node_by_fqdn(&name("b2.cyphonic")),
            Some(NodeId([2; 16]))
        );
        let displaced = register(&mut table, t0, 4, "c.cyphonic", &[], "192.0.2.1:1");
        assert_eq!(displaced, Some(NodeId([3; 16])));
        assert_eq!(
            table.node_by_fqdn(&name("c.cyphonic")),
            Some(NodeId([4; 16]))
        );
        assert_eq!(table.len(), 2);
        table.remove(&NodeId([2; 16]));
        table.remove(&NodeId([4; 16]));
        assert!(table.by_name.is_empty() && table.spill.is_empty());
    }

    #[test]
    fn expiry_is_lazy_and_exact() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(2);
        let mut table = Presences::new(t0, ttl);
        register(&mut table, t0, 1, "a.cyphonic", &[], "192.0.2.1:1");
        register(&mut table, t0, 2, "b.cyphonic", &[], "192.0.2.2:1");
        assert_eq!(table.next_expiry(), Some(t0 + ttl));
        // Node 1 keeps sending; node 2 goes quiet.
        table
            .touch(
                t0 + Duration::from_secs(1),
                &NodeId([1; 16]),
                ep("192.0.2.1:1"),
                handle(),
                0,
            )
            .unwrap();
        let mut gone = Vec::new();
        table.expire(t0 + ttl - TICK, |n, _| gone.push(n));
        assert!(gone.is_empty());
        table.expire(t0 + ttl, |n, _| gone.push(n));
        assert_eq!(gone, vec![NodeId([2; 16])]);
        assert_eq!(table.len(), 1);
        // Node 1's entry was re-filed at its real deadline.
        assert_eq!(table.next_expiry(), Some(t0 + Duration::from_secs(3)));
        table.expire(t0 + Duration::from_secs(3), |n, _| gone.push(n));
        assert_eq!(gone.len(), 2);
        assert_eq!(table.len(), 0);
        assert!(table.by_name.is_empty() && table.spill.is_empty() && table.expiry.is_empty());
        assert!(table.by_vip4.is_empty() && table.by_vip6.is_empty());
    }

    #[test]
    fn identities_are_adopted_only_for_the_same_node_and_key() {
        let t0 = Instant::now();
        let mut table = Presences::new(t0, Duration::from_secs(10));
        register(&mut table, t0, 1, "a.cyphonic", &[], "192.0.2.1:1");
        let node = NodeId([1; 16]);
        let newer = identity(1, "a.cyphonic");
        table.adopt_identity(&node, &newer);
        assert!(Arc::ptr_eq(&table.get(&node).unwrap().peer, &newer));
        let other = identity(2, "a.cyphonic");
        table.adopt_identity(&node, &other);
        assert!(Arc::ptr_eq(&table.get(&node).unwrap().peer, &newer));
        // An older credential (the channel's, after a renewal) is not swapped back in.
        let older = identity_until(1, "a.cyphonic", 5);
        table.adopt_identity(&node, &older);
        assert!(Arc::ptr_eq(&table.get(&node).unwrap().peer, &newer));
    }

    #[test]
    fn record_sizes() {
        let presence = std::mem::size_of::<Presence>();
        let entry = std::mem::size_of::<(NodeId, Presence)>();
        let index = std::mem::size_of::<(u64, NodeId)>();
        let expiry = std::mem::size_of::<(u32, NodeId)>();
        eprintln!(
            "Presence {presence} B, map entry {entry} B, name index entry {index} B, \
             expiry entry {expiry} B, packed endpoint {PACKED_V4}/{PACKED_V6} B"
        );
        assert!(presence <= 88, "Presence grew to {presence} bytes");
        assert!(entry <= 104);
        assert!(index <= 24);
        assert!(expiry <= 20);
    }
}

#[cfg(test)]
mod memory {
    use super::*;
    use cyphonic_proto::channel::{
        ChannelClient, ChannelServer, Purpose, ServerConfig, ServerEvent, Service,
    };
    use cyphonic_proto::credential::{CloudKeyId, Credential};
    use cyphonic_proto::time::UnixTime;
    use ed25519_dalek::SigningKey;
    use rand_core::OsRng;
    use x25519_dalek::{PublicKey, StaticSecret};

    fn resident_bytes() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    /// Resident memory per registered node: one channel in the NMS's channel server
    /// (handshake, keys, replay window, hello memory, the verified credential) plus
    /// its presence. Slow in debug builds (real handshakes); run on its own:
    /// `cargo test -p cyphonic-cloud --lib nms::presence::memory -- --ignored --nocapture`.
    #[test]
    #[ignore = "measurement; slow in debug builds"]
    fn resident_memory_per_registered_node() {
        const N: usize = 6_000;
        let cloud = SigningKey::from_bytes(&[5; 32]);
        let mut config = ServerConfig::new(Service::NodeManagement);
        config.max_channels = 4 * N;
        config.hello_memory = 4 * N;
        let mut server = ChannelServer::new(&cloud, vec![], config);
        let t0 = Instant::now();
        let mut table = Presences::new(t0, Duration::from_secs(75));
        let unix = UnixTime::from_system_time(std::time::SystemTime::now());
        let mut hello = vec![0u8; 1024];
        let mut out = vec![0u8; 1024];
        // Everything a node costs that is not state (client side) is made up front.
        let nodes: Vec<(StaticSecret, cyphonic_proto::credential::SignedCredential)> = (0..N)
            .map(|i| {
                let secret = StaticSecret::random_from_rng(OsRng);
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&(i as u64).to_be_bytes());
                let credential = Credential {
                    cloud_key_id: CloudKeyId::of(&cloud.verifying_key()),
                    node_id: NodeId(id),
                    not_before: UnixTime(unix.0 - 10),
                    not_after: UnixTime(unix.0 + 3600),
                    static_public: PublicKey::from(&secret).to_bytes(),
                    // Distinct addresses, so that the address index is measured too.
                    vip4: Ipv4Addr::from(0x6440_0000 + i as u32),
                    vip6: Ipv6Addr::from((0xfd00_u128 << 112) | i as u128),
                    fqdn: Fqdn::new(&format!("node-{i:06}.site.example.cyphonic")).unwrap(),
                }
                .sign(&cloud);
                (secret, credential)
            })
            .collect();
        let mut hellos = Vec::with_capacity(N);
        for (secret, credential) in &nodes {
            let mut client = ChannelClient::new(
                &cloud.verifying_key(),
                secret,
                Service::NodeManagement,
                Purpose::Credential(credential.clone()),
            );
            let len = client.start(t0, unix, &mut OsRng, &mut hello).unwrap();
            hellos.push(hello[..len].to_vec());
        }
        // Nothing set up above is freed before the end, so that the nodes' state cannot
        // reuse freed memory and look smaller than it is.
        let before = resident_bytes();
        let mut accepted = Vec::with_capacity(N);
        for (i, h) in hellos.iter_mut().enumerate() {
            let src: SocketAddr = format!("10.{}.{}.{}:4500", i >> 16, (i >> 8) & 255, i & 255)
                .parse()
                .unwrap();
            let ServerEvent::Accept { channel, peer, .. } = server
                .handle_datagram(t0, unix, src, h, &mut OsRng, &mut out)
                .unwrap()
            else {
                panic!("hello refused");
            };
            accepted.push((src, channel, peer));
        }
        let channels = resident_bytes();
        for (src, channel, peer) in accepted.drain(..) {
            let real = [src, "[2001:db8::1]:4500".parse().unwrap()];
            table.register(
                t0,
                Registration {
                    peer,
                    endpoints: &real,
                    observed: "198.51.100.1:40000".parse().unwrap(),
                    channel,
                    socket: 0,
                },
            );
        }
        let after = resident_bytes();
        drop((nodes, hellos));
        assert_eq!(table.len(), N);
        assert_eq!(server.channel_count(), N);
        let per_node = (after.saturating_sub(before)) / N;
        eprintln!(
            "{N} nodes: {per_node} bytes resident per registered node \
             (channel server {} B, presence {} B)",
            channels.saturating_sub(before) / N,
            after.saturating_sub(channels) / N
        );
        assert!(per_node < 2048, "{per_node} bytes per node");
    }
}
