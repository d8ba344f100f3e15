//! Windows OS glue for the node: everything `cyphonicd` needs from Windows that Linux
//! gets from Unix sockets, file modes, `/etc/resolv.conf` and systemd.
//!
//! - [`pipe`]: the control API transport, a named pipe only SYSTEM and Administrators may open.
//! - [`acl`]: `%ProgramData%\cyphonic` and credential files readable only by SYSTEM and
//!   Administrators.
//! - [`nrpt`]: the Name Resolution Policy Table rule that sends the overlay domain to the node's
//!   resolver, and the Group Policy check.
//! - [`service`]: install/uninstall/start/stop of the `cyphonic` Windows service and the
//!   service-side runtime (control handler, status reports, exit codes).
//!
//! Every function here is a thin, checked wrapper over one Win32 facility; the node logic stays
//! in the portable modules.

pub mod acl;
pub mod nrpt;
pub mod pipe;
pub mod service;

mod security;
