//! The cyphonic node host: the parts of `cyphonicd` that do I/O around the sans-IO
//! protocol core in `cyphonic-proto`.
//!
//! - [`signaling`]: the node's async cloud client: login and renewal at the AS,
//!   presence and directions at the NMS, relay binds at a TRS.
#![forbid(unsafe_code)]

pub mod signaling;
