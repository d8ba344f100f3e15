//! The system calls this plugin makes, as safe functions over borrowed descriptors and
//! slices: the two kinds of `NETLINK_ROUTE` socket (the subscribed event socket and the
//! per-call query socket), the wake eventfd and `poll`. This is the only module with
//! `unsafe`.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The receive buffer the event socket asks for. Bursts (an interface going away with
/// hundreds of addresses and routes) overrun the kernel's ~200 KiB default; an overrun
/// is survivable (`ENOBUFS`, reported as "everything changed") but loses the detail.
const EVENT_RCVBUF: libc::c_int = 1 << 20;

/// A non-blocking, close-on-exec `NETLINK_ROUTE` socket bound to the multicast `groups`
/// (`RTMGRP_*` bits), in the network namespace of the calling thread.
pub(crate) fn netlink_event_socket(groups: u32) -> io::Result<OwnedFd> {
    let fd = netlink_socket(libc::SOCK_NONBLOCK)?;
    // The forced size needs CAP_NET_ADMIN and ignores `rmem_max`; the plain one is
    // capped by `rmem_max`. Either is only an improvement, so errors are ignored.
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        if setsockopt_int(fd.as_fd(), libc::SOL_SOCKET, opt, EVENT_RCVBUF).is_ok() {
            break;
        }
    }
    // SAFETY: `sockaddr_nl` is plain old data; all-zero is valid (pid 0: let the kernel
    // pick the port id).
    let mut local: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    local.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    local.nl_groups = groups;
    // SAFETY: `local` is a sockaddr_nl of the length passed, alive for the call.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&local as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// A blocking, close-on-exec `NETLINK_ROUTE` socket for requests (dumps), in the network
/// namespace of the calling thread. It reports errors with the kernel's extended-ack text
/// when it has one, and gives up on a reply after 5 seconds rather than hanging forever.
pub(crate) fn netlink_query_socket() -> io::Result<OwnedFd> {
    let fd = netlink_socket(0)?;
    // Extended and capped acks are optional (older kernels): errors are ignored.
    for opt in [libc::NETLINK_EXT_ACK, libc::NETLINK_CAP_ACK] {
        let _ = setsockopt_int(fd.as_fd(), libc::SOL_NETLINK, opt, 1);
    }
    let timeout = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: `timeout` is a readable timeval of the length passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Sends one datagram to the kernel (netlink port 0).
pub(crate) fn netlink_send(fd: BorrowedFd<'_>, msg: &[u8]) -> io::Result<()> {
    // SAFETY: `sockaddr_nl` is plain old data; all-zero is valid (pid 0: the kernel).
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    loop {
        // SAFETY: `msg` is readable for its length and `kernel` is a sockaddr_nl of the
        // length passed, both for the call.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// One datagram taken off a netlink socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Datagram {
    /// Bytes of it in the buffer.
    pub(crate) len: usize,
    /// It was longer than the buffer; the rest is lost.
    pub(crate) truncated: bool,
    /// It came from the kernel (port 0), not from another process.
    pub(crate) from_kernel: bool,
}

/// Receives one datagram into `buf`. `EINTR` is retried; `EAGAIN` (nothing queued on a
/// non-blocking socket) and `ENOBUFS` (the socket overran and dropped messages) come back
/// as errors.
pub(crate) fn netlink_recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Datagram> {
    loop {
        // SAFETY: `sockaddr_nl` is plain old data; all-zero is valid.
        let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        let mut from_len = size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: `buf` is writable for its length, `from` is a writable sockaddr_nl of
        // the length in `from_len`, all alive for the call.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
                (&mut from as *mut libc::sockaddr_nl).cast(),
                &mut from_len,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        // With MSG_TRUNC the return value is the datagram's full length.
        let full = n as usize;
        return Ok(Datagram {
            len: full.min(buf.len()),
            truncated: full > buf.len(),
            from_kernel: from.nl_pid == 0,
        });
    }
}

/// A non-blocking, close-on-exec eventfd (counter mode) for waking a waiter.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain system call creating a new descriptor.
    let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `eventfd` just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Adds 1 to an eventfd's counter. A counter about to overflow is already signalled, so
/// `EAGAIN` is success too.
pub(crate) fn eventfd_signal(fd: BorrowedFd<'_>) -> io::Result<()> {
    let one = 1u64.to_ne_bytes();
    loop {
        // SAFETY: `one` is readable for its 8 bytes for the call.
        let n = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if n >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => return Ok(()),
            _ => return Err(err),
        }
    }
}

/// Resets an eventfd's counter to 0 (a no-op when it is 0 already).
pub(crate) fn eventfd_drain(fd: BorrowedFd<'_>) {
    let mut value = [0u8; 8];
    // Only EAGAIN (not signalled) can happen on a valid eventfd with an 8-byte buffer;
    // either way the counter is 0 afterwards.
    // SAFETY: `value` is writable for its 8 bytes for the call.
    let _ = unsafe { libc::read(fd.as_raw_fd(), value.as_mut_ptr().cast(), value.len()) };
}

/// The `revents` of one descriptor after [`poll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Revents(libc::c_short);

impl Revents {
    pub(crate) fn any(self) -> bool {
        self.0 != 0
    }

    /// The descriptor is in error, hung up or invalid; with `POLLIN` absent there is
    /// nothing to read that would clear it.
    pub(crate) fn failed_only(self) -> bool {
        self.0 & libc::POLLIN == 0 && self.0 & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
    }
}

/// Polls `a` and `b` for `POLLIN` for up to `timeout_ms` (`-1`: forever). `EINTR` comes
/// back as `ErrorKind::Interrupted`.
pub(crate) fn poll(
    a: BorrowedFd<'_>,
    b: BorrowedFd<'_>,
    timeout_ms: i32,
) -> io::Result<(Revents, Revents)> {
    let mut fds = [
        libc::pollfd {
            fd: a.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: `fds` is a valid, writable array of two `pollfd` for the call.
    if unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((Revents(fds[0].revents), Revents(fds[1].revents)))
}

fn netlink_socket(extra_flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain system call creating a new descriptor.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | extra_flags,
            libc::NETLINK_ROUTE,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `socket` just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    opt: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` is a readable c_int of the length passed, alive for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
