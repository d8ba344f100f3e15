//! The cyphonic node: everything `cyphonicd` and the `cyphonic` CLI share, doing the
//! I/O around the sans-IO protocol core in `cyphonic-proto`. Modules follow the
//! CYPHONIC paper's node modules:
//!
//! - [`config`]: the YAML configuration and its validation (configuration module).
//! - [`state`]: the node key and the stored credential.
//! - [`plugins`]: the plugin host (virtual interface, crypto suites).
//! - [`signaling`]: the async cloud client: AS login and renewal, NMS presence and
//!   directions, TRS relay binds (signaling module).
//! - [`resolver`] and [`lua`]: the CYPHONIC resolver with its Lua DNS filter.
//! - [`packet`]: packet hook and packet handling: the data path.
//! - [`mobility`]: address-change detection (plugin or polling).
//! - [`control`]: the local API the CLI talks to.
//! - [`login`]: the AS login shared by `cyphonic login` and the starter page.
//! - [`ui`]: the starter page, a local web page served by the daemon.
//! - [`sys`]: the few OS calls std does not wrap.
//! - `windows` (Windows only): the service, the control pipe, ACLs and NRPT.
#![deny(unsafe_code)]

pub mod config;
pub mod config_logic;
pub mod control;
pub mod login;
pub mod lua;
pub mod mobility;
pub mod packet;
pub mod plugins;
pub mod resolver;
pub mod signaling;
pub mod state;
pub mod sys;
pub mod ui;
pub mod validate;
#[cfg(windows)]
pub mod windows;
