//! Directions in flight and what the NMS remembers about finished ones.
//!
//! A direction waits for the responder's confirmation: its push is retransmitted a few
//! times within the confirmation timeout, then the initiator hears OFFLINE. While it
//! waits, a retransmitted `DirectionRequest` (same node, same request id) starts
//! nothing; once it is answered, the answer is cached for a while so a retransmission
//! gets the same bytes (and the responder is not pushed to twice). A retransmission is
//! recognised by the [`Target`] it asks for, a name or a virtual address, as sent: an
//! address that changed hands since is still answered the first way.
//!
//! Also here: the relay sites offered in routes, and a short-lived cache of which
//! names the store knows, so that repeated lookups of an offline or unknown name do
//! not each cost a database query.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use cyphonic_proto::channel::ChannelHandle;
use cyphonic_proto::wire::signal::MAX_TRS_ENDPOINTS;
use cyphonic_proto::wire::{Fqdn, NodeId};
use zeroize::Zeroizing;

use super::plan::{Families, Family};
use crate::config::CloudConfig;
use crate::net;

/// Directions waiting for a confirmation, at most (beyond: UNAVAILABLE).
pub(crate) const MAX_PENDING: usize = 65_536;
/// Directions one initiator may have waiting at once (beyond: RATE_LIMITED).
pub(crate) const MAX_PENDING_PER_INITIATOR: u16 = 64;
/// Answered directions remembered for retransmissions, at most.
const COMPLETED_CAPACITY: usize = 16_384;
/// How long an answer is remembered: a little longer than a node keeps retrying
/// (`SignalingConfig::request_timeout`, 30 s by default).
const COMPLETED_TTL: Duration = Duration::from_secs(35);
/// Names whose store lookup result is remembered, at most.
const NAMES_CAPACITY: usize = 16_384;
/// How long a store lookup result is trusted.
const NAMES_TTL: Duration = Duration::from_secs(5);

/// A direction is named by the initiator and its request id.
pub(crate) type RequestKey = (NodeId, u32);

/// What a direction request asked for: a `DirectionRequest`'s name or a
/// `DirectionRequestByAddress`'s virtual address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Name(Fqdn),
    Address(IpAddr),
}

/// One TRS the NMS may offer.
#[derive(Debug, Clone)]
pub(crate) struct RelaySite {
    pub(crate) name: Fqdn,
    /// 1..=[`MAX_TRS_ENDPOINTS`], both families first when both exist.
    pub(crate) endpoints: Vec<SocketAddr>,
    families: Families,
}

/// The TRS instances to offer, in preference order: this process's TRS (when it runs
/// one: its `advertise` endpoints, else its listen addresses, where a wildcard one goes
/// out unspecified — "the address you reach the NMS at", see docs/protocol.md — and a
/// dual-stack `[::]` as both `0.0.0.0` and `::`), then `relays` from the configuration.
/// Sites without a usable endpoint or with a name that is not a valid FQDN are left
/// out with a warning.
pub(crate) fn relay_sites(config: &CloudConfig) -> Vec<RelaySite> {
    let mut sites = Vec::new();
    let trs = &config.services.trs;
    if trs.enabled {
        let endpoints: Vec<SocketAddr> = if trs.advertise.is_empty() {
            trs.listen.iter().flat_map(|e| offered_listen(*e)).collect()
        } else {
            trs.advertise.clone()
        };
        sites.extend(site(&trs.name, &endpoints));
    }
    for relay in &config.relays {
        sites.extend(site(&relay.name, &relay.endpoints));
    }
    sites
}

/// How a local listen address is offered: as it is, or for the dual-stack wildcard
/// (`net::bind_udp` turns V6ONLY off for it) as one unspecified endpoint per family.
fn offered_listen(listen: SocketAddr) -> Vec<SocketAddr> {
    match listen {
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => vec![
            SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, v6.port())),
            listen,
        ],
        _ => vec![listen],
    }
}

fn site(name: &str, endpoints: &[SocketAddr]) -> Option<RelaySite> {
    let Ok(fqdn) = Fqdn::new(name) else {
        tracing::warn!(
            relay = name,
            "relay name is not a valid DNS name; not offered"
        );
        return None;
    };
    let mut all: Vec<SocketAddr> = Vec::new();
    for e in endpoints.iter().map(|e| net::canonical(*e)) {
        if e.port() != 0 && !all.contains(&e) {
            all.push(e);
        }
    }
    // Keep one endpoint of each family before filling up, so a bridging relay stays
    // reachable from both sides when there are more than MAX_TRS_ENDPOINTS.
    let mut chosen: Vec<SocketAddr> = Vec::with_capacity(MAX_TRS_ENDPOINTS);
    for family in Family::BOTH {
        if let Some(e) = all.iter().find(|e| Family::of(e) == family) {
            chosen.push(*e);
        }
    }
    for e in &all {
        if chosen.len() == MAX_TRS_ENDPOINTS {
            break;
        }
        if !chosen.contains(e) {
            chosen.push(*e);
        }
    }
    if chosen.is_empty() {
        tracing::warn!(
            relay = name,
            "relay has no endpoint nodes can use; not offered"
        );
        return None;
    }
    Some(RelaySite {
        name: fqdn,
        families: Families::of_endpoints(&chosen),
        endpoints: chosen,
    })
}

/// The first site both nodes can reach (each in one of its families).
pub(crate) fn pick_site(sites: &[RelaySite], a: Families, b: Families) -> Option<&RelaySite> {
    sites
        .iter()
        .find(|s| s.families.intersects(a) && s.families.intersects(b))
}

/// A direction waiting for the responder.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) initiator: NodeId,
    pub(crate) request_id: u32,
    pub(crate) initiator_key: [u8; 32],
    pub(crate) initiator_channel: ChannelHandle,
    pub(crate) initiator_socket: u8,
    pub(crate) target: Target,
    pub(crate) generation: u16,
    pub(crate) responder: NodeId,
    pub(crate) responder_key: [u8; 32],
    pub(crate) responder_channel: ChannelHandle,
    pub(crate) responder_socket: u8,
    /// The encoded `RouteDirectionToResponder` (holds the punch and bind keys).
    pub(crate) push: Zeroizing<Vec<u8>>,
    /// The encoded `RouteDirectionToInitiator`, sent when the responder accepts.
    pub(crate) reply: Zeroizing<Vec<u8>>,
    deadline: Instant,
    timer: Instant,
}

/// What [`Directions::poll_due`] found.
#[derive(Debug)]
pub(crate) enum Due {
    /// Send the push of this direction again.
    Retransmit([u8; 16]),
    /// No confirmation in time; the direction is gone.
    TimedOut(Box<Pending>),
}

/// Why a new direction may not start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Busy {
    /// This initiator has [`MAX_PENDING_PER_INITIATOR`] waiting.
    Initiator,
    /// [`MAX_PENDING`] are waiting.
    Service,
}

#[derive(Debug)]
struct Completed {
    target: Target,
    generation: u16,
    reply: Zeroizing<Vec<u8>>,
    at: Instant,
}

/// Directions in flight and recently answered.
#[derive(Debug)]
pub(crate) struct Directions {
    pending: HashMap<[u8; 16], Pending>,
    /// Requests being worked on (a store lookup or a pending direction).
    in_flight: HashMap<RequestKey, Option<[u8; 16]>>,
    per_initiator: HashMap<NodeId, u16>,
    timers: BTreeSet<(Instant, [u8; 16])>,
    completed: HashMap<RequestKey, Completed>,
    completed_order: VecDeque<(Instant, RequestKey)>,
    push_counter: u32,
    confirm_timeout: Duration,
    retransmit_every: Duration,
}

impl Directions {
    pub(crate) fn new(confirm_timeout: Duration) -> Self {
        Self {
            pending: HashMap::new(),
            in_flight: HashMap::new(),
            per_initiator: HashMap::new(),
            timers: BTreeSet::new(),
            completed: HashMap::new(),
            completed_order: VecDeque::new(),
            push_counter: 0,
            confirm_timeout,
            // Three more tries within the timeout, never more often than every 100 ms.
            retransmit_every: (confirm_timeout / 4).max(Duration::from_millis(100)),
        }
    }

    /// The answer already given to this request, if it is the same request: same
    /// target (a node running two channels may reuse an id for another target) and
    /// the same registration of the node (`generation`; a restarted node may count its
    /// request ids from the start again).
    pub(crate) fn cached(
        &self,
        now: Instant,
        key: &RequestKey,
        target: &Target,
        generation: u16,
    ) -> Option<&[u8]> {
        self.completed
            .get(key)
            .filter(|c| {
                &c.target == target
                    && c.generation == generation
                    && now.saturating_duration_since(c.at) < COMPLETED_TTL
            })
            .map(|c| &c.reply[..])
    }

    pub(crate) fn is_in_flight(&self, key: &RequestKey) -> bool {
        self.in_flight.contains_key(key)
    }

    /// A store lookup for this request started.
    pub(crate) fn begin_lookup(&mut self, key: RequestKey) {
        self.in_flight.insert(key, None);
    }

    /// Forgets a request without answering it (its node left).
    pub(crate) fn abandon(&mut self, key: &RequestKey) {
        self.in_flight.remove(key);
    }

    /// Whether `initiator` may start another direction.
    pub(crate) fn check_capacity(&self, initiator: &NodeId) -> Result<(), Busy> {
        if self.pending.len() >= MAX_PENDING {
            return Err(Busy::Service);
        }
        if self.per_initiator.get(initiator).copied().unwrap_or(0) >= MAX_PENDING_PER_INITIATOR {
            return Err(Busy::Initiator);
        }
        Ok(())
    }

    /// A request id for a push: the top bit set, so it never equals an id the node
    /// chose for its own requests (nodes keep that bit clear).
    pub(crate) fn next_push_id(&mut self) -> u32 {
        self.push_counter = self.push_counter.wrapping_add(1) & 0x7fff_ffff;
        0x8000_0000 | self.push_counter
    }

    /// Tracks a direction whose push was just sent.
    pub(crate) fn insert(&mut self, now: Instant, id: [u8; 16], pending: NewPending) {
        let deadline = now + self.confirm_timeout;
        let timer = (now + self.retransmit_every).min(deadline);
        let key = (pending.initiator, pending.request_id);
        *self.per_initiator.entry(pending.initiator).or_insert(0) += 1;
        self.in_flight.insert(key, Some(id));
        self.timers.insert((timer, id));
        self.pending.insert(
            id,
            Pending {
                initiator: pending.initiator,
                request_id: pending.request_id,
                initiator_key: pending.initiator_key,
                initiator_channel: pending.initiator_channel,
                initiator_socket: pending.initiator_socket,
                target: pending.target,
                generation: pending.generation,
                responder: pending.responder,
                responder_key: pending.responder_key,
                responder_channel: pending.responder_channel,
                responder_socket: pending.responder_socket,
                push: pending.push,
                reply: pending.reply,
                deadline,
                timer,
            },
        );
    }

    pub(crate) fn get(&self, id: &[u8; 16]) -> Option<&Pending> {
        self.pending.get(id)
    }

    /// The responder answered: the direction ends (if `responder` is its responder).
    pub(crate) fn confirm(&mut self, id: &[u8; 16], responder: &NodeId) -> Option<Pending> {
        if self.pending.get(id)?.responder != *responder {
            return None;
        }
        self.take(id)
    }

    /// The next retransmission or timeout due at `now`; call until `None`.
    pub(crate) fn poll_due(&mut self, now: Instant) -> Option<Due> {
        loop {
            let &(at, id) = self.timers.first()?;
            if at > now {
                return None;
            }
            self.timers.pop_first();
            let Some(p) = self.pending.get_mut(&id) else {
                continue;
            };
            if p.timer != at {
                continue;
            }
            if now >= p.deadline {
                return self.take(&id).map(|p| Due::TimedOut(Box::new(p)));
            }
            p.timer = (now + self.retransmit_every).min(p.deadline);
            self.timers.insert((p.timer, id));
            return Some(Due::Retransmit(id));
        }
    }

    pub(crate) fn next_timer(&self) -> Option<Instant> {
        self.timers.first().map(|&(at, _)| at)
    }

    /// Removes every direction `node` takes part in. Returns the ones it was the
    /// responder of (their initiators are owed an answer).
    pub(crate) fn drop_node(&mut self, node: &NodeId) -> Vec<Pending> {
        let ids: Vec<[u8; 16]> = self
            .pending
            .iter()
            .filter(|(_, p)| p.initiator == *node || p.responder == *node)
            .map(|(id, _)| *id)
            .collect();
        let mut owed = Vec::new();
        for id in ids {
            if let Some(p) = self.take(&id) {
                if p.initiator != *node {
                    owed.push(p);
                }
            }
        }
        self.in_flight.retain(|(initiator, _), _| initiator != node);
        owed
    }

    /// Records the answer to a request (and ends its lookup, if any).
    pub(crate) fn complete(
        &mut self,
        now: Instant,
        key: RequestKey,
        target: Target,
        generation: u16,
        reply: Zeroizing<Vec<u8>>,
    ) {
        self.in_flight.remove(&key);
        while let Some(&(at, old)) = self.completed_order.front() {
            let expired = now.saturating_duration_since(at) >= COMPLETED_TTL;
            if !expired && self.completed.len() < COMPLETED_CAPACITY {
                break;
            }
            self.completed_order.pop_front();
            if self.completed.get(&old).is_some_and(|c| c.at == at) {
                self.completed.remove(&old);
            }
        }
        self.completed_order.push_back((now, key));
        self.completed.insert(
            key,
            Completed {
                target,
                generation,
                reply,
                at: now,
            },
        );
    }

    #[cfg(test)]
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    fn take(&mut self, id: &[u8; 16]) -> Option<Pending> {
        let p = self.pending.remove(id)?;
        self.timers.remove(&(p.timer, *id));
        self.in_flight.remove(&(p.initiator, p.request_id));
        if let Some(count) = self.per_initiator.get_mut(&p.initiator) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_initiator.remove(&p.initiator);
            }
        }
        Some(p)
    }
}

/// Everything about a new direction but its timers.
#[derive(Debug)]
pub(crate) struct NewPending {
    pub(crate) initiator: NodeId,
    pub(crate) request_id: u32,
    pub(crate) initiator_key: [u8; 32],
    pub(crate) initiator_channel: ChannelHandle,
    pub(crate) initiator_socket: u8,
    pub(crate) target: Target,
    pub(crate) generation: u16,
    pub(crate) responder: NodeId,
    pub(crate) responder_key: [u8; 32],
    pub(crate) responder_channel: ChannelHandle,
    pub(crate) responder_socket: u8,
    pub(crate) push: Zeroizing<Vec<u8>>,
    pub(crate) reply: Zeroizing<Vec<u8>>,
}

/// Whether the store knows a name, remembered for a few seconds.
#[derive(Debug, Default)]
pub(crate) struct KnownNames {
    names: HashMap<Fqdn, (bool, Instant)>,
}

impl KnownNames {
    pub(crate) fn get(&self, name: &Fqdn, now: Instant) -> Option<bool> {
        self.names
            .get(name)
            .filter(|(_, at)| now.saturating_duration_since(*at) < NAMES_TTL)
            .map(|(known, _)| *known)
    }

    pub(crate) fn insert(&mut self, name: Fqdn, known: bool, now: Instant) {
        if self.names.len() >= NAMES_CAPACITY {
            self.names
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < NAMES_TTL);
            if self.names.len() >= NAMES_CAPACITY {
                self.names.clear();
            }
        }
        self.names.insert(name, (known, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RelaySite as ConfigRelay;

    fn ep(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn handle() -> ChannelHandle {
        super::super::tests_support::some_handle()
    }

    fn new_pending(initiator: u8, request_id: u32, responder: u8) -> NewPending {
        NewPending {
            initiator: NodeId([initiator; 16]),
            request_id,
            initiator_key: [initiator; 32],
            initiator_channel: handle(),
            initiator_socket: 0,
            target: Target::Name(Fqdn::new("b.cyphonic").unwrap()),
            generation: 1,
            responder: NodeId([responder; 16]),
            responder_key: [responder; 32],
            responder_channel: handle(),
            responder_socket: 0,
            push: Zeroizing::new(vec![1]),
            reply: Zeroizing::new(vec![2]),
        }
    }

    #[test]
    fn relay_sites_from_config() {
        let mut config = CloudConfig::default();
        // Default: the local TRS listens on the dual-stack wildcard, offered as "the
        // NMS's address" in each family.
        let sites = relay_sites(&config);
        assert_eq!(sites.len(), 1);
        assert_eq!(
            sites[0].endpoints,
            vec![ep("0.0.0.0:7303"), ep("[::]:7303")]
        );
        config.services.trs.listen = vec![ep("192.0.2.1:7303")];
        let sites = relay_sites(&config);
        assert_eq!(sites.len(), 1);
        assert_eq!(sites[0].name.as_str(), "trs1");
        assert_eq!(sites[0].endpoints, vec![ep("192.0.2.1:7303")]);

        config.services.trs.advertise = (1..=6)
            .map(|i| ep(&format!("192.0.2.{i}:7303")))
            .chain([ep("[2001:db8::9]:7303")])
            .collect();
        config.relays = vec![
            ConfigRelay {
                name: "not a name".into(),
                endpoints: vec![ep("192.0.2.99:1")],
            },
            ConfigRelay {
                name: "trs2.example".into(),
                endpoints: vec![ep("[2001:db8::2]:7303")],
            },
        ];
        let sites = relay_sites(&config);
        assert_eq!(sites.len(), 2);
        // Both families survive the cut to four endpoints.
        assert_eq!(sites[0].endpoints.len(), MAX_TRS_ENDPOINTS);
        assert!(sites[0].endpoints.contains(&ep("[2001:db8::9]:7303")));
        assert_eq!(sites[1].name.as_str(), "trs2.example");

        let v4 = Families::NONE.with(Family::V4);
        let v6 = Families::NONE.with(Family::V6);
        assert_eq!(pick_site(&sites, v4, v6).unwrap().name.as_str(), "trs1");
        assert_eq!(
            pick_site(&sites[1..], v6, v6).unwrap().name.as_str(),
            "trs2.example"
        );
        assert!(pick_site(&sites[1..], v4, v6).is_none());

        config.services.trs.enabled = false;
        assert_eq!(relay_sites(&config).len(), 1);
    }

    #[test]
    fn push_ids_have_the_top_bit_set() {
        let mut d = Directions::new(Duration::from_millis(800));
        for _ in 0..3 {
            assert!(d.next_push_id() & 0x8000_0000 != 0);
        }
        d.push_counter = 0x7fff_ffff;
        assert_eq!(d.next_push_id(), 0x8000_0000);
    }

    #[test]
    fn retransmits_then_times_out() {
        let t0 = Instant::now();
        let mut d = Directions::new(Duration::from_millis(800));
        d.insert(t0, [7; 16], new_pending(1, 5, 2));
        assert!(d.is_in_flight(&(NodeId([1; 16]), 5)));
        assert_eq!(d.next_timer(), Some(t0 + Duration::from_millis(200)));
        assert!(d.poll_due(t0 + Duration::from_millis(199)).is_none());
        let mut retransmits = 0;
        let mut now = t0;
        loop {
            now += Duration::from_millis(50);
            match d.poll_due(now) {
                Some(Due::Retransmit(id)) => {
                    assert_eq!(id, [7; 16]);
                    retransmits += 1;
                }
                Some(Due::TimedOut(p)) => {
                    assert_eq!(p.request_id, 5);
                    assert_eq!(now, t0 + Duration::from_millis(800));
                    break;
                }
                None => {}
            }
        }
        assert_eq!(retransmits, 3);
        assert_eq!(d.pending_len(), 0);
        assert!(!d.is_in_flight(&(NodeId([1; 16]), 5)));
        assert!(d.timers.is_empty() && d.per_initiator.is_empty());
    }

    #[test]
    fn confirm_only_from_the_responder() {
        let t0 = Instant::now();
        let mut d = Directions::new(Duration::from_millis(800));
        d.insert(t0, [7; 16], new_pending(1, 5, 2));
        assert!(d.confirm(&[7; 16], &NodeId([3; 16])).is_none());
        assert!(d.confirm(&[7; 16], &NodeId([1; 16])).is_none());
        let p = d.confirm(&[7; 16], &NodeId([2; 16])).unwrap();
        assert_eq!(&p.reply[..], &[2]);
        assert!(d.confirm(&[7; 16], &NodeId([2; 16])).is_none());
        assert!(d.poll_due(t0 + Duration::from_secs(5)).is_none());
    }

    #[test]
    fn capacity_per_initiator() {
        let t0 = Instant::now();
        let mut d = Directions::new(Duration::from_millis(800));
        for i in 0..u32::from(MAX_PENDING_PER_INITIATOR) {
            assert_eq!(d.check_capacity(&NodeId([1; 16])), Ok(()));
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_be_bytes());
            d.insert(t0, id, new_pending(1, i, 2));
        }
        assert_eq!(d.check_capacity(&NodeId([1; 16])), Err(Busy::Initiator));
        assert_eq!(d.check_capacity(&NodeId([9; 16])), Ok(()));
        // The responder going away answers its initiators; the initiator going away
        // answers nobody.
        assert_eq!(d.drop_node(&NodeId([2; 16])).len(), 64);
        assert_eq!(d.check_capacity(&NodeId([1; 16])), Ok(()));
        d.insert(t0, [1; 16], new_pending(1, 1, 2));
        assert!(d.drop_node(&NodeId([1; 16])).is_empty());
        assert_eq!(d.pending_len(), 0);
    }

    #[test]
    fn completed_answers_are_cached_by_request_and_target() {
        let t0 = Instant::now();
        let mut d = Directions::new(Duration::from_millis(800));
        let key = (NodeId([1; 16]), 9);
        let b = Target::Name(Fqdn::new("b.cyphonic").unwrap());
        d.begin_lookup(key);
        assert!(d.is_in_flight(&key));
        d.complete(t0, key, b.clone(), 1, Zeroizing::new(vec![1, 2, 3]));
        assert!(!d.is_in_flight(&key));
        assert_eq!(d.cached(t0, &key, &b, 1), Some(&[1u8, 2, 3][..]));
        assert_eq!(
            d.cached(t0, &key, &Target::Name(Fqdn::new("c.cyphonic").unwrap()), 1),
            None
        );
        // The same node asked for by address is another request.
        let by_address = Target::Address("100.64.0.2".parse().unwrap());
        assert_eq!(d.cached(t0, &key, &by_address, 1), None);
        d.complete(t0, key, by_address.clone(), 1, Zeroizing::new(vec![4]));
        assert_eq!(d.cached(t0, &key, &by_address, 1), Some(&[4u8][..]));
        assert_eq!(d.cached(t0, &key, &b, 1), None);
        d.complete(t0, key, b.clone(), 1, Zeroizing::new(vec![1, 2, 3]));
        // The node registered again since: its ids may mean something else now.
        assert_eq!(d.cached(t0, &key, &b, 2), None);
        assert_eq!(d.cached(t0 + COMPLETED_TTL, &key, &b, 1), None);
        // Bounded: the oldest answers go first.
        for i in 0..COMPLETED_CAPACITY as u32 + 10 {
            d.complete(
                t0,
                (NodeId([2; 16]), i),
                b.clone(),
                1,
                Zeroizing::new(vec![]),
            );
        }
        assert!(d.completed.len() <= COMPLETED_CAPACITY);
        assert_eq!(d.cached(t0, &key, &b, 1), None);
    }

    #[test]
    fn known_names_expire() {
        let t0 = Instant::now();
        let mut names = KnownNames::default();
        let a = Fqdn::new("a.cyphonic").unwrap();
        names.insert(a.clone(), true, t0);
        assert_eq!(names.get(&a, t0), Some(true));
        assert_eq!(names.get(&a, t0 + NAMES_TTL), None);
        names.insert(a.clone(), false, t0 + NAMES_TTL);
        assert_eq!(names.get(&a, t0 + NAMES_TTL), Some(false));
    }
}
