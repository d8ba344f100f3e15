//! The Windows half of [`crate::sys`]: WSAPoll, GetAdaptersAddresses, socket buffer
//! options through socket2 and the token's elevation.
#![allow(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::windows::io::AsRawSocket;
use std::time::Duration;

use windows_sys::Win32::Foundation::{CloseHandle, ERROR_BUFFER_OVERFLOW, HANDLE, NO_ERROR};
use windows_sys::Win32::NetworkManagement::IpHelper::{
    GAA_FLAG_SKIP_ANYCAST, GAA_FLAG_SKIP_DNS_SERVER, GAA_FLAG_SKIP_MULTICAST,
    GAA_FLAG_SKIP_UNICAST, GetAdaptersAddresses, IP_ADAPTER_ADDRESSES_LH,
    IP_ADAPTER_DNS_SERVER_ADDRESS_XP, IP_ADAPTER_UNICAST_ADDRESS_LH,
};
use windows_sys::Win32::Networking::WinSock::{
    AF_INET, AF_INET6, AF_UNSPEC, POLLRDNORM, POLLWRNORM, SOCKADDR_IN, SOCKADDR_IN6, WSAPOLLFD,
    WSAPoll,
};
use windows_sys::Win32::Security::{
    GetTokenInformation, TOKEN_ELEVATION, TOKEN_QUERY, TokenElevation,
};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

use super::LocalAddr;

pub(crate) fn wait_fd(socket: &UdpSocket, write: bool, timeout: Duration) -> bool {
    let mut pfd = WSAPOLLFD {
        fd: socket.as_raw_socket() as usize,
        events: if write { POLLWRNORM } else { POLLRDNORM },
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `pfd` is one valid WSAPOLLFD living across the call; the count is 1.
    let n = unsafe { WSAPoll(&mut pfd, 1, ms) };
    n > 0
}

pub(crate) fn local_addresses() -> std::io::Result<Vec<LocalAddr>> {
    let flags = GAA_FLAG_SKIP_ANYCAST | GAA_FLAG_SKIP_MULTICAST | GAA_FLAG_SKIP_DNS_SERVER;
    adapters(flags, |list| walk_adapters(list, false))
}

pub(crate) fn dns_servers() -> std::io::Result<Vec<SocketAddr>> {
    let flags = GAA_FLAG_SKIP_ANYCAST | GAA_FLAG_SKIP_MULTICAST | GAA_FLAG_SKIP_UNICAST;
    adapters(flags, |list| {
        let mut out: Vec<SocketAddr> = Vec::new();
        for entry in walk_adapters(list, true) {
            let server = SocketAddr::new(entry.addr, 53);
            if !entry.addr.is_loopback() && !out.contains(&server) {
                out.push(server);
            }
        }
        out
    })
}

/// Calls GetAdaptersAddresses with a buffer that grows as the call asks, and hands the
/// list to `walk` while the buffer lives.
fn adapters<T>(
    flags: u32,
    walk: impl FnOnce(*const IP_ADAPTER_ADDRESSES_LH) -> T,
) -> std::io::Result<T> {
    // 15 KB is Microsoft's suggested first guess; the call says how much it needs.
    let mut size: u32 = 15 * 1024;
    let mut buf: Vec<u64> = Vec::new();
    for _ in 0..4 {
        // u64 elements keep the buffer aligned for IP_ADAPTER_ADDRESSES_LH.
        buf.resize((size as usize).div_ceil(8), 0);
        // SAFETY: `buf` holds at least `size` writable bytes, suitably aligned; the
        // call writes at most `size` bytes and updates `size`.
        let rc = unsafe {
            GetAdaptersAddresses(
                u32::from(AF_UNSPEC),
                flags,
                std::ptr::null(),
                buf.as_mut_ptr().cast(),
                &mut size,
            )
        };
        if rc == ERROR_BUFFER_OVERFLOW {
            continue;
        }
        if rc != NO_ERROR {
            return Err(std::io::Error::from_raw_os_error(rc as i32));
        }
        return Ok(walk(buf.as_ptr().cast()));
    }
    Err(std::io::Error::other(
        "GetAdaptersAddresses kept asking for a larger buffer",
    ))
}

/// The unicast addresses of every adapter, or with `dns` their DNS server addresses.
fn walk_adapters(mut adapter: *const IP_ADAPTER_ADDRESSES_LH, dns: bool) -> Vec<LocalAddr> {
    let mut out = Vec::new();
    while !adapter.is_null() {
        // SAFETY: `adapter` is a node of the list GetAdaptersAddresses wrote into the
        // caller's buffer, which outlives this walk.
        let a = unsafe { &*adapter };
        adapter = a.Next;
        let ifname = if a.FriendlyName.is_null() {
            String::new()
        } else {
            // SAFETY: FriendlyName is a NUL-terminated UTF-16 string inside the buffer.
            unsafe { wide_to_string(a.FriendlyName) }
        };
        // Both lists start with the same (Length, Flags, Next, Address) layout; walk
        // them as pairs of (next, sockaddr).
        let mut cursor: (*const std::ffi::c_void, usize) = if dns {
            (a.FirstDnsServerAddress.cast(), 1)
        } else {
            (a.FirstUnicastAddress.cast(), 0)
        };
        while !cursor.0.is_null() {
            let sockaddr = if cursor.1 == 1 {
                // SAFETY: a node of the DNS server list inside the same buffer.
                let d = unsafe { &*cursor.0.cast::<IP_ADAPTER_DNS_SERVER_ADDRESS_XP>() };
                cursor.0 = d.Next.cast();
                d.Address.lpSockaddr
            } else {
                // SAFETY: a node of the unicast list inside the same buffer.
                let u = unsafe { &*cursor.0.cast::<IP_ADAPTER_UNICAST_ADDRESS_LH>() };
                cursor.0 = u.Next.cast();
                u.Address.lpSockaddr
            };
            if sockaddr.is_null() {
                continue;
            }
            // SAFETY: a non-null SOCKADDR whose family tells its real type; only the
            // matching struct is read.
            let addr = unsafe {
                match (*sockaddr).sa_family {
                    AF_INET => {
                        let sin = &*(sockaddr as *const SOCKADDR_IN);
                        Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            sin.sin_addr.S_un.S_addr,
                        ))))
                    }
                    AF_INET6 => {
                        let sin6 = &*(sockaddr as *const SOCKADDR_IN6);
                        Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.u.Byte)))
                    }
                    _ => None,
                }
            };
            if let Some(addr) = addr {
                out.push(LocalAddr {
                    ifname: ifname.clone(),
                    addr,
                });
            }
        }
    }
    out
}

/// # Safety
/// `p` points at a NUL-terminated UTF-16 string.
unsafe fn wide_to_string(p: *const u16) -> String {
    let mut len = 0;
    // SAFETY: the caller promises a terminating NUL, so every read is inside the string.
    while unsafe { *p.add(len) } != 0 {
        len += 1;
    }
    // SAFETY: `len` UTF-16 units starting at `p` were just read.
    String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(p, len) })
}

pub(crate) fn set_socket_buffers(sock: &socket2::Socket, bytes: usize) -> usize {
    // Windows has no system-wide cap like net.core.rmem_max: the request is honoured.
    let _ = sock.set_recv_buffer_size(bytes);
    let _ = sock.set_send_buffer_size(bytes);
    sock.recv_buffer_size().unwrap_or(0)
}

pub(crate) fn is_privileged() -> bool {
    let mut token: HANDLE = std::ptr::null_mut();
    // SAFETY: GetCurrentProcess returns a pseudo-handle; `token` is a valid out-pointer.
    if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
        return false;
    }
    let mut elevation = TOKEN_ELEVATION { TokenIsElevated: 0 };
    let mut returned = 0u32;
    // SAFETY: `elevation` is a TOKEN_ELEVATION of the size given; `token` is open.
    let ok = unsafe {
        GetTokenInformation(
            token,
            TokenElevation,
            (&mut elevation as *mut TOKEN_ELEVATION).cast(),
            std::mem::size_of::<TOKEN_ELEVATION>() as u32,
            &mut returned,
        )
    };
    // SAFETY: `token` was opened above and is closed once.
    unsafe { CloseHandle(token) };
    ok != 0 && elevation.TokenIsElevated != 0
}
