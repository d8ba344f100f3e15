//! The sans-IO protocol core of cyphonic.
//!
//! Everything here is deterministic: callers pass the current time (`now`, a monotonic
//! [`std::time::Instant`], and where validity windows matter a [`time::UnixTime`]),
//! random number generators and buffers in, and get messages to send, timers and events
//! out. No sockets, no clock, no threads, no plugins, no Lua. `host/` and `cloud/` drive
//! these state machines over the network.
//!
//! - [`wire`]: every datagram of the system as a checked zero-copy view plus a parsed
//!   representation (`parse` / `emit`).
//! - [`credential`]: the cloud-signed statement binding a node id, FQDN and virtual
//!   addresses to the node's static X25519 key.
//! - [`suite`]: the AEAD abstraction the data path seals with; implementations live in
//!   the crypto-suite plugins, not here.
//! - [`tunnel`]: the node-to-node handshake, cookies, sessions (counters, replay window,
//!   rekey) and the per-peer state machine that combines them.
//! - [`channel`]: the authenticated, replay-protected node-to-cloud channel that login,
//!   registration and direction requests travel in.
//! - [`relay`]: relay tickets that let stateless TRS instances bind two endpoints.
#![forbid(unsafe_code)]

pub mod channel;
mod cookie;
pub mod credential;
mod noise;
pub mod relay;
pub mod replay;
pub mod suite;
pub mod time;
pub mod tunnel;
pub mod wire;
