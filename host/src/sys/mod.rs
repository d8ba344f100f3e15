//! The few OS calls the node makes that std does not wrap: waiting for a socket with a
//! timeout (the data threads must notice shutdown), listing the host's addresses for
//! registration and mobility, sizing socket buffers, and asking whether the process has
//! the privileges a node needs. One API; `unix.rs` and `windows.rs` implement it.

use std::net::{IpAddr, UdpSocket};
use std::time::Duration;

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as os;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as os;

/// One address of a local interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAddr {
    pub ifname: String,
    pub addr: IpAddr,
}

/// Waits until `socket` is readable (or writable with `write`), at most `timeout`.
/// Returns whether it became ready.
pub(crate) fn wait_fd(socket: &UdpSocket, write: bool, timeout: Duration) -> bool {
    os::wait_fd(socket, write, timeout)
}

/// Every address configured on the host's interfaces.
pub fn local_addresses() -> std::io::Result<Vec<LocalAddr>> {
    os::local_addresses()
}

/// The DNS servers configured on the host's adapters (port 53), in adapter order,
/// loopback and duplicates skipped: the upstreams on Windows, where NRPT leaves them
/// in place.
#[cfg(windows)]
pub fn dns_servers() -> std::io::Result<Vec<std::net::SocketAddr>> {
    os::dns_servers()
}

/// Sets the socket's receive and send buffers to `bytes`, as far as the OS allows (on
/// Linux past `net.core.*mem_max` when the process has CAP_NET_ADMIN). Returns the
/// receive buffer size the OS reports afterwards.
pub fn set_socket_buffers(socket: &socket2::Socket, bytes: usize) -> usize {
    os::set_socket_buffers(socket, bytes)
}

/// Whether the process runs with the rights to create interfaces and change DNS: root
/// on Unix, an elevated token (Administrator or the service's LocalSystem) on Windows.
pub fn is_privileged() -> bool {
    os::is_privileged()
}
