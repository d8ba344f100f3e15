//! The CYPHONIC cloud: the Authentication Service (AS), the Node Management Service
//! (NMS) and the Tunnel Relay Service (TRS), in one process by default.
//!
//! - [`config`]: `cloud.yaml` and its defaults.
//! - [`store`]: what survives restarts (devices, revocations, settings), SQLite by default.
//! - [`keys`]: the signing key in the data directory and the keys derived from it.
//! - [`context`]: what the services of one process share.
//! - [`auth`], [`nms`], [`trs`]: the three services, each a task over UDP sockets
//!   driving the sans-IO state machines of `cyphonic-proto`.
//! - [`net`]: socket set-up shared by the services.
//! - [`password`]: Argon2id hashing and verification.
//! - [`metrics`]: counters, the Prometheus endpoint and the periodic log line.
//! - [`server`]: `serve` — starts the enabled services and the watchers.
//! - [`admin`]: the `device` and `key` commands.
//! - [`bench`]: the load generator behind `cyphonic-cloud bench`.

pub mod admin;
pub mod auth;
pub mod bench;
pub mod config;
pub mod context;
pub mod keys;
pub mod metrics;
pub mod net;
pub mod nms;
pub mod password;
pub mod server;
pub mod store;
pub mod trs;
