//! Counters of the resolver.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hickory_proto::op::ResponseCode;

/// A snapshot of the resolver's counters, for `cyphonic status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResolverStats {
    /// Datagrams and TCP messages received, well-formed or not.
    pub received: u64,
    /// Messages that did not parse, were responses, or had no single question.
    pub malformed: u64,
    /// Queries dropped because too many were in flight.
    pub dropped: u64,
    /// Decisions of the filter.
    pub overlay: u64,
    pub forwarded: u64,
    pub blocked: u64,
    /// Filter errors, budget overruns and filter timeouts (each answered SERVFAIL).
    pub script_errors: u64,
    /// Overlay queries answered from the node's own name.
    pub own_name: u64,
    /// Overlay lookups that failed or did not finish within the deadline.
    pub overlay_errors: u64,
    pub overlay_timeouts: u64,
    /// Forwarded queries that no upstream answered.
    pub upstream_failures: u64,
    /// Responses sent, by response code (forwarded answers count with the upstream's).
    pub noerror: u64,
    pub nxdomain: u64,
    pub servfail: u64,
    pub refused: u64,
    pub formerr: u64,
    pub notimp: u64,
    pub other_rcode: u64,
}

/// A clonable reader of a running resolver's counters.
#[derive(Debug, Clone)]
pub struct StatsHandle(pub(super) Arc<Counters>);

impl StatsHandle {
    pub fn snapshot(&self) -> ResolverStats {
        self.0.snapshot()
    }
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) received: AtomicU64,
    pub(super) malformed: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) overlay: AtomicU64,
    pub(super) forwarded: AtomicU64,
    pub(super) blocked: AtomicU64,
    pub(super) script_errors: AtomicU64,
    pub(super) own_name: AtomicU64,
    pub(super) overlay_errors: AtomicU64,
    pub(super) overlay_timeouts: AtomicU64,
    pub(super) upstream_failures: AtomicU64,
    noerror: AtomicU64,
    nxdomain: AtomicU64,
    servfail: AtomicU64,
    refused: AtomicU64,
    formerr: AtomicU64,
    notimp: AtomicU64,
    other_rcode: AtomicU64,
}

pub(super) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    /// Counts a response by the RCODE in its header (low four bits of byte 3).
    pub(super) fn response(&self, message: &[u8]) {
        let Some(flags) = message.get(3) else {
            return;
        };
        let counter = match ResponseCode::from_low(flags & 0x0f) {
            ResponseCode::NoError => &self.noerror,
            ResponseCode::NXDomain => &self.nxdomain,
            ResponseCode::ServFail => &self.servfail,
            ResponseCode::Refused => &self.refused,
            ResponseCode::FormErr => &self.formerr,
            ResponseCode::NotImp => &self.notimp,
            _ => &self.other_rcode,
        };
        bump(counter);
    }

    pub(super) fn snapshot(&self) -> ResolverStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ResolverStats {
            received: get(&self.received),
            malformed: get(&self.malformed),
            dropped: get(&self.dropped),
            overlay: get(&self.overlay),
            forwarded: get(&self.forwarded),
            blocked: get(&self.blocked),
            script_errors: get(&self.script_errors),
            own_name: get(&self.own_name),
            overlay_errors: get(&self.overlay_errors),
            overlay_timeouts: get(&self.overlay_timeouts),
            upstream_failures: get(&self.upstream_failures),
            noerror: get(&self.noerror),
            nxdomain: get(&self.nxdomain),
            servfail: get(&self.servfail),
            refused: get(&self.refused),
            formerr: get(&self.formerr),
            notimp: get(&self.notimp),
            other_rcode: get(&self.other_rcode),
        }
    }
}
