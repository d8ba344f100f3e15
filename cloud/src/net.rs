//! UDP socket set-up and address handling shared by the services.

use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

/// Socket buffers large enough that a burst of signaling or relayed traffic is queued
/// rather than dropped by the kernel (the default 208 KiB overflows under load).
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Binds a non-blocking UDP socket for tokio. A wildcard IPv6 address (`[::]`) also
/// receives IPv4 (V6ONLY is turned off explicitly, whatever the system default), so
/// one socket per port serves both families.
pub fn bind_udp(addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    let domain = match addr {
        SocketAddr::V4(_) => Domain::IPV4,
        SocketAddr::V6(_) => Domain::IPV6,
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(!addr.ip().is_unspecified())?;
    }
    // Best effort: the kernel caps these at net.core.[rw]mem_max without failing.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(socket.into())
}

/// The address as the node sees it: IPv4 peers reaching a dual-stack socket show up as
/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`), which we record and compare as IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// The address to hand to `send_to` on `socket_addr`'s socket: an IPv6 socket reaches an
/// IPv4 peer through its IPv4-mapped form.
pub fn for_socket(peer: SocketAddr, socket_addr: SocketAddr) -> SocketAddr {
    match (socket_addr, peer) {
        (SocketAddr::V6(_), SocketAddr::V4(v4)) => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        _ => peer,
    }
}

/// True when a socket bound to `socket_addr` can send to `peer`.
pub fn can_reach(socket_addr: SocketAddr, peer: SocketAddr) -> bool {
    match (socket_addr, peer) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => true,
        (SocketAddr::V4(_), SocketAddr::V6(_)) => false,
        (SocketAddr::V6(s), SocketAddr::V4(_)) => s.ip().is_unspecified(),
        (SocketAddr::V6(_), SocketAddr::V6(_)) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_become_ipv4() {
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:4000".parse().unwrap();
        assert_eq!(canonical(mapped), "192.0.2.7:4000".parse().unwrap());
        let v6: SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
        assert_eq!(canonical(v6), v6);
        let any6: SocketAddr = "[::]:7000".parse().unwrap();
        assert_eq!(for_socket("192.0.2.7:4000".parse().unwrap(), any6), mapped);
        assert!(can_reach(any6, "192.0.2.7:1".parse().unwrap()));
        assert!(!can_reach("127.0.0.1:1".parse().unwrap(), v6));
    }

    #[tokio::test]
    async fn dual_stack_socket_receives_ipv4() {
        let server = bind_udp("[::]:0".parse().unwrap()).unwrap();
        let port = server.local_addr().unwrap().port();
        let client = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        client
            .send_to(b"hi", SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .unwrap();
        let mut buf = [0u8; 8];
        let (n, from) = server.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hi");
        assert_eq!(canonical(from), client.local_addr().unwrap());
    }
}
