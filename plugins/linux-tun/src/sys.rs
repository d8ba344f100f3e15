//! The system calls this plugin makes, as safe functions over borrowed descriptors and
//! slices: the TUN device, the wake eventfd, `poll`, and the raw rtnetlink socket. This
//! is the only module with `unsafe`.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `IFNAMSIZ`: interface names are at most 15 bytes plus the NUL.
pub(crate) const IFNAMSIZ: usize = libc::IFNAMSIZ;

/// Creates a fresh TUN device (`IFF_TUN | IFF_NO_PI`) named `name` (a kernel template
/// such as `tun%d` allowed) in the calling thread's network namespace, and returns its
/// descriptor (non-blocking, close-on-exec) and the name the kernel gave it.
///
/// `IFF_TUN_EXCL` makes an existing device of that name an error (`EBUSY`) instead of
/// attaching to it: only a device this descriptor created is guaranteed to vanish, with
/// its addresses and routes, when the descriptor is closed.
pub(crate) fn open_tun(name: &str) -> io::Result<(OwnedFd, String)> {
    if name.is_empty() || name.len() >= IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: a NUL-terminated literal path; the flags ask for a new descriptor.
    let raw = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };

    // SAFETY: `ifreq` is plain old data (arrays, integers, a union of those); all-zero
    // is a valid value, and it NUL-terminates the name we copy in below.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags =
        (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_TUN_EXCL) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `ifreq`, which lives on our stack for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = ifr
        .ifr_name
        .iter()
        .position(|&c| c == 0)
        .unwrap_or(IFNAMSIZ);
    let bytes: Vec<u8> = ifr.ifr_name[..len].iter().map(|&c| c as u8).collect();
    let name = String::from_utf8(bytes).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    Ok((fd, name))
}

/// A non-blocking, close-on-exec eventfd (counter mode) for waking a reader.
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
    match write(fd, &one) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// Resets an eventfd's counter to 0 (a no-op when it is 0 already).
pub(crate) fn eventfd_drain(fd: BorrowedFd<'_>) {
    let mut value = [0u8; 8];
    // Only EAGAIN (not signalled) can happen on a valid eventfd with an 8-byte buffer;
    // either way the counter is 0 afterwards.
    let _ = read(fd, &mut value);
}

/// `read(2)` into `buf`.
pub(crate) fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the call.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `write(2)` of `buf`.
pub(crate) fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the call.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// The `revents` of one descriptor after [`poll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Revents(libc::c_short);

impl Revents {
    pub(crate) fn any(self) -> bool {
        self.0 != 0
    }

    /// The descriptor is in error or hung up (a TUN device removed under us).
    pub(crate) fn failed(self) -> bool {
        self.0 & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
    }
}

/// Polls `a` for `a_events` and `b` for `POLLIN` (if given) for up to `timeout_ms`
/// (`-1`: forever). `EINTR` comes back as `ErrorKind::Interrupted`.
pub(crate) fn poll(
    a: BorrowedFd<'_>,
    a_events: libc::c_short,
    b: Option<BorrowedFd<'_>>,
    timeout_ms: i32,
) -> io::Result<(Revents, Revents)> {
    let mut fds = [
        libc::pollfd {
            fd: a.as_raw_fd(),
            events: a_events,
            revents: 0,
        },
        libc::pollfd {
            fd: b.map_or(-1, |b| b.as_raw_fd()),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let nfds: libc::nfds_t = if b.is_some() { 2 } else { 1 };
    // SAFETY: `fds[..nfds]` is a valid, writable array of `pollfd` for the call.
    if unsafe { libc::poll(fds.as_mut_ptr(), nfds, timeout_ms) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((Revents(fds[0].revents), Revents(fds[1].revents)))
}

pub(crate) const POLLIN: libc::c_short = libc::POLLIN;
pub(crate) const POLLOUT: libc::c_short = libc::POLLOUT;

/// A raw `NETLINK_ROUTE` socket (close-on-exec) that reports errors with the kernel's
/// extended-ack text when it has one, and gives up on a reply after 5 seconds rather
/// than hanging `open` forever.
pub(crate) fn netlink_route_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain system call creating a new descriptor.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `socket` just returned this descriptor and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let on: libc::c_int = 1;
    // Extended acks and capped acks are optional (older kernels): errors are ignored.
    for opt in [libc::NETLINK_EXT_ACK, libc::NETLINK_CAP_ACK] {
        // SAFETY: `on` is a readable c_int of the length passed.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_NETLINK,
                opt,
                (&on as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
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

/// Receives one datagram; a datagram longer than `buf` is an error rather than
/// silently truncated.
pub(crate) fn netlink_recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is writable for its length for the call.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        let n = n as usize;
        if n > buf.len() {
            return Err(io::Error::other(
                "netlink reply larger than the receive buffer",
            ));
        }
        return Ok(n);
    }
}
