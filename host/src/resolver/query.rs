//! One query, from bytes to the answer bytes: parse, ask the filter, then answer from
//! the overlay, forward, or block.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use cyphonic_proto::wire::Fqdn;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};

use super::forward::{Forwarder, Transport};
use super::stats::{Counters, StatsHandle, bump};
use super::{BlockResponse, OverlayAddrs, OverlayResolver, OwnName, ResolverConfig};
use crate::lua::{ScriptError, ScriptThread};

/// Our own answers are small; advertise the payload size DNS flag day 2020 settled on.
const EDNS_PAYLOAD: u16 = 1232;

/// What the filter script decided for a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    Overlay,
    Forward,
    Block,
}

impl Decision {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "overlay" => Some(Self::Overlay),
            "forward" => Some(Self::Forward),
            "block" => Some(Self::Block),
            _ => None,
        }
    }
}

/// Everything the query tasks share.
pub(super) struct Shared {
    pub(super) stats: Arc<Counters>,
    domain: Arc<str>,
    ttl: u32,
    block_response: BlockResponse,
    overlay_timeout: Duration,
    script_timeout: Duration,
    own: Option<OwnName>,
    filter: ScriptThread,
    overlay: Arc<dyn OverlayResolver>,
    forwarder: Forwarder,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("domain", &self.domain)
            .field("filter", &self.filter)
            .field("forwarder", &self.forwarder)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(super) fn new(
        config: &ResolverConfig,
        upstreams: Vec<SocketAddr>,
        filter: ScriptThread,
        overlay: Arc<dyn OverlayResolver>,
    ) -> Self {
        Self {
            stats: Arc::new(Counters::default()),
            domain: Arc::from(config.domain.as_str()),
            ttl: config.ttl_secs,
            block_response: config.block_response,
            overlay_timeout: config.overlay_timeout,
            script_timeout: config.script_timeout,
            own: config.own.clone(),
            filter,
            overlay,
            forwarder: Forwarder::new(upstreams, config.upstream_timeout),
        }
    }

    pub(super) fn stats_handle(&self) -> StatsHandle {
        StatsHandle(Arc::clone(&self.stats))
    }

    /// The answer to one DNS message from `client`, or `None` when nothing should be
    /// sent back (garbage, or a response posing as a query).
    pub(super) async fn handle(&self, bytes: &[u8], client: IpAddr, tcp: bool) -> Option<Vec<u8>> {
        bump(&self.stats.received);
        let answer = self.answer(bytes, client, tcp).await;
        if let Some(answer) = &answer {
            self.stats.response(answer);
        }
        answer
    }

    async fn answer(&self, bytes: &[u8], client: IpAddr, tcp: bool) -> Option<Vec<u8>> {
        let query = match Message::from_vec(bytes) {
            Ok(query) => query,
            Err(e) => {
                bump(&self.stats.malformed);
                tracing::debug!(%client, "malformed DNS message: {e}");
                return format_error(bytes);
            }
        };
        if query.message_type() != MessageType::Query {
            bump(&self.stats.malformed);
            return None;
        }
        if query.op_code() != OpCode::Query {
            return encode(&response(&query, ResponseCode::NotImp));
        }
        let [question] = query.queries() else {
            bump(&self.stats.malformed);
            return encode(&response(&query, ResponseCode::FormErr));
        };
        let name = display_name(&question.name().to_ascii());
        let qtype = question.query_type();

        let decision = match self.decide(&name, qtype, client).await {
            Ok(decision) => decision,
            Err(e) => {
                bump(&self.stats.script_errors);
                tracing::warn!(%client, name, %qtype, "DNS filter failed: {e}");
                return encode(&response(&query, ResponseCode::ServFail));
            }
        };
        tracing::trace!(%client, name, %qtype, ?decision, "DNS query");
        match decision {
            Decision::Overlay => {
                bump(&self.stats.overlay);
                let reply = self.overlay_answer(&query, &name, qtype).await;
                encode(&reply)
            }
            Decision::Forward => {
                bump(&self.stats.forwarded);
                let transport = if tcp {
                    Transport::Tcp
                } else {
                    Transport::Udp {
                        max_payload: query.max_payload(),
                    }
                };
                match self.forwarder.forward(bytes, transport).await {
                    Some(answer) => Some(answer),
                    None => {
                        bump(&self.stats.upstream_failures);
                        encode(&response(&query, ResponseCode::ServFail))
                    }
                }
            }
            Decision::Block => {
                bump(&self.stats.blocked);
                let rcode = match self.block_response {
                    BlockResponse::NxDomain => ResponseCode::NXDomain,
                    BlockResponse::Refused => ResponseCode::Refused,
                };
                encode(&response(&query, rcode))
            }
        }
    }

    /// Asks the filter script, within the script deadline.
    async fn decide(
        &self,
        name: &str,
        qtype: RecordType,
        client: IpAddr,
    ) -> Result<Decision, ScriptError> {
        let name = name.to_owned();
        let qtype = type_name(qtype);
        let domain = Arc::clone(&self.domain);
        let client = client.to_string();
        let call = self.filter.call(move |sb| {
            let ctx = sb.run(|lua| {
                let ctx = lua.create_table()?;
                ctx.raw_set("domain", &*domain)?;
                ctx.raw_set("client", client)?;
                Ok(ctx)
            })?;
            let verdict: String = sb.call("filter", (name, qtype, ctx))?;
            Decision::parse(&verdict).ok_or_else(|| ScriptError::BadReturn {
                script: sb.script_name().to_owned(),
                function: String::from("filter"),
                message: format!("{verdict:?} (expected \"overlay\", \"forward\" or \"block\")"),
            })
        });
        match tokio::time::timeout(self.script_timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(ScriptError::Runtime {
                script: self.filter.script_name().to_owned(),
                message: format!("no decision within {:?}", self.script_timeout),
            }),
        }
    }

    async fn overlay_answer(&self, query: &Message, name: &str, qtype: RecordType) -> Message {
        let Ok(fqdn) = Fqdn::new(name) else {
            // Not a name any node can have (underscores, empty labels...).
            return response(query, ResponseCode::NXDomain);
        };
        if !matches!(qtype, RecordType::A | RecordType::AAAA | RecordType::ANY) {
            let mut reply = response(query, ResponseCode::NoError);
            reply.set_authoritative(true);
            return reply;
        }
        let addrs = match &self.own {
            Some(own) if own.name == fqdn => {
                bump(&self.stats.own_name);
                own.addrs
            }
            _ => {
                match tokio::time::timeout(self.overlay_timeout, self.overlay.resolve(fqdn.clone()))
                    .await
                {
                    Ok(Ok(Some(addrs))) => addrs,
                    Ok(Ok(None)) => return response(query, ResponseCode::NXDomain),
                    Ok(Err(e)) => {
                        bump(&self.stats.overlay_errors);
                        tracing::info!(name = %fqdn, "overlay lookup failed: {e}");
                        return response(query, ResponseCode::ServFail);
                    }
                    Err(_) => {
                        bump(&self.stats.overlay_timeouts);
                        tracing::info!(name = %fqdn, "overlay lookup timed out");
                        return response(query, ResponseCode::ServFail);
                    }
                }
            }
        };
        let mut reply = response(query, ResponseCode::NoError);
        reply.set_authoritative(true);
        add_addresses(&mut reply, query, qtype, addrs, self.ttl);
        reply
    }
}

fn add_addresses(
    reply: &mut Message,
    query: &Message,
    qtype: RecordType,
    addrs: OverlayAddrs,
    ttl: u32,
) {
    // The owner name as the client spelled it (case included), like every server does.
    let Some(owner) = query.queries().first().map(|q| q.name().clone()) else {
        return;
    };
    if matches!(qtype, RecordType::A | RecordType::ANY) {
        if let Some(v4) = addrs.ipv4 {
            reply.add_answer(Record::from_rdata(owner.clone(), ttl, RData::A(A(v4))));
        }
    }
    if matches!(qtype, RecordType::AAAA | RecordType::ANY) {
        if let Some(v6) = addrs.ipv6 {
            reply.add_answer(Record::from_rdata(owner, ttl, RData::AAAA(AAAA(v6))));
        }
    }
}

/// A response skeleton echoing the question.
fn response(query: &Message, rcode: ResponseCode) -> Message {
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_checking_disabled(query.checking_disabled())
        .set_response_code(rcode);
    reply.add_queries(query.queries().iter().cloned());
    if query.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        reply.set_edns(edns);
    }
    reply
}

fn encode(message: &Message) -> Option<Vec<u8>> {
    match message.to_vec() {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            tracing::warn!("cannot encode a DNS response: {e}");
            None
        }
    }
}

/// FORMERR for a message that did not parse but has a header that says it is a
/// query; anything shorter or flagged as a response gets nothing (no reflection).
fn format_error(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.len() < 12 || bytes[2] & 0x80 != 0 {
        return None;
    }
    let mut reply = vec![0u8; 12];
    reply[..2].copy_from_slice(&bytes[..2]);
    // QR, the query's opcode and RD; RCODE 1 (FORMERR); no sections.
    reply[2] = 0x80 | (bytes[2] & 0x79);
    reply[3] = 0x01;
    Some(reply)
}

/// The name as scripts see it: lower case, no trailing dot, the root as ".".
fn display_name(ascii: &str) -> String {
    let name = ascii.strip_suffix('.').unwrap_or(ascii);
    if name.is_empty() {
        String::from(".")
    } else {
        name.to_ascii_lowercase()
    }
}

/// The type mnemonic as scripts see it; unknown types as `TYPE<n>` (RFC 3597).
fn type_name(qtype: RecordType) -> String {
    match qtype {
        RecordType::Unknown(code) => format!("TYPE{code}"),
        known => known.to_string(),
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn names_and_types_as_scripts_see_them() {
        assert_eq!(display_name("Node-B.Cyphonic."), "node-b.cyphonic");
        assert_eq!(display_name("."), ".");
        assert_eq!(type_name(RecordType::AAAA), "AAAA");
        assert_eq!(type_name(RecordType::Unknown(65400)), "TYPE65400");
    }

    #[test]
    fn format_error_echoes_the_id_and_never_answers_responses() {
        let garbage = [0xab, 0xcd, 0x01, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 1];
        let reply = format_error(&garbage).unwrap();
        assert_eq!(reply[..4], [0xab, 0xcd, 0x81, 0x01]);
        assert_eq!(reply[4..], [0; 8]);
        let mut response = garbage;
        response[2] |= 0x80;
        assert_eq!(format_error(&response), None);
        assert_eq!(format_error(&[1, 2, 3]), None);
    }
}
