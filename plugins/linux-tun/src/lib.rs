//! The Linux virtual interface (plugin kind 1): a TUN device, configured over rtnetlink.
//!
//! [`LinuxTun`] implements [`VirtualInterface`]; [`plugin_header`] exports it through the
//! plugin ABI (pass it to `Plugin::from_static`), and the `cyphonic-linux-tun-plugin`
//! crate builds the same thing as `libcyphonic_linux_tun.so`.
//!
//! # Opening
//!
//! `open` needs `CAP_NET_ADMIN`. The interface is created in the network namespace of
//! the calling thread, and in that order:
//!
//! 1. A new TUN device from `/dev/net/tun` (`IFF_TUN | IFF_NO_PI`: bare IPv4/IPv6
//!    packets, no header), named `ifname` (at most 15 bytes; a kernel template such as
//!    `cyph%d` works) or `tun%d` when none is given. A device of that name existing
//!    already is an error (`IO`, "Device or resource busy"): attaching to someone else's
//!    device would break the promise that closing removes it. The descriptor is
//!    non-blocking and close-on-exec.
//! 2. MTU (`mtu` 0 keeps the kernel's 1500; otherwise 68..=65535, and at least 1280
//!    with an IPv6 address), transmit queue length, link up: one `RTM_SETLINK`.
//! 3. The IPv4 and IPv6 addresses (`RTM_NEWADDR`, replacing an equal one); IPv6 with
//!    `nodad`, so it is usable at once.
//! 4. One route per entry of `routes` through the interface (main table, protocol
//!    `static`, metric default), host bits cleared. An entry equal to an address's own
//!    prefix is skipped (the kernel made that route when the address was added), and a
//!    route that exists already (`EEXIST`) is no error.
//!
//! Settings are checked before anything is created; a failure after that drops the
//! half-configured device with the descriptor. Errors carry the kernel's extended-ack
//! text when it gives one.
//!
//! # Options
//!
//! `options` holds `key=value` lines; blank lines and `#` comments are ignored, the last
//! line of a key wins.
//!
//! | key | value | default |
//! |---|---|---|
//! | `txqueuelen` | transmit queue length, 0..=2^32-1 packets | 1000, or the kernel's default if larger (TUN's is 500, which drops in bursts) |
//!
//! Any other key, a line without `=` or a bad value fails `open` with
//! `INVALID_ARGUMENT`, naming the key.
//!
//! # Closing
//!
//! Dropping the [`LinuxTun`] (the host's `close`) closes the descriptor, and the kernel
//! removes the device, its addresses and its routes with it.
//!
//! # Data path
//!
//! No allocation and no logging per packet.
//!
//! - `read_batch` first reads whatever is queued (non-blocking, saving a `poll` under
//!   load); if nothing is, it `poll`s the TUN descriptor together with the eventfd that
//!   `wake` signals, then reads until `EAGAIN` or the batch is full. Each packet goes to
//!   the slot's room after its headroom. A packet longer than the room (the kernel
//!   truncates it and reports the full length) is dropped and counted in
//!   [`TunStats::rx_dropped`], its slot reused. It returns 0 on timeout and on `wake`
//!   (also a `wake` that came while no read was blocked). A read error after some
//!   packets returns those; the error comes back on the next call.
//! - `write_batch` writes one packet per `write`. On `EAGAIN` it polls for writability
//!   for up to 100 ms per call, then reports what it wrote so far. A packet the kernel
//!   refuses on its own (`EINVAL`: not IPv4/IPv6 or malformed; `EMSGSIZE`, `ENOBUFS`,
//!   `ENOMEM`) counts as written and in [`TunStats::tx_dropped`]. Other errors end the
//!   batch: reported as an error when nothing was written, else on the next call.
//! - `pollable_fd` is the TUN descriptor; `wake` signals the eventfd.
//!
//! Drop counters are logged with `tracing` at debug level when they reach a power of
//! two, and their totals when the interface closes (a dlopened copy of this plugin has
//! its own `tracing` dispatcher, which the host does not set: there, read
//! [`LinuxTun::stats`] instead, or nothing).

#![cfg(target_os = "linux")]

mod config;
mod netlink;
mod sys;

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cyphonic_plugin_abi::{
    Packet, PluginFailure, Status, VifDetails, VifSettings, VirtualInterface,
};

use crate::config::{DEFAULT_TXQUEUELEN, Plan};
use crate::netlink::{NetlinkError, Rtnetlink};

cyphonic_plugin_abi::virtual_interface_plugin!(
    name: "linux-tun",
    version: env!("CARGO_PKG_VERSION"),
    interface: LinuxTun,
);

/// How long one `write_batch` waits in total for a full device queue to drain.
const WRITE_STALL_BUDGET: Duration = Duration::from_millis(100);

/// An open TUN interface; dropping it removes the interface.
#[derive(Debug)]
pub struct LinuxTun {
    tun: OwnedFd,
    wake_fd: OwnedFd,
    /// Set by `wake` before it signals `wake_fd`, so that a wake arriving while no read
    /// waits makes the next read return 0 even if packets are queued.
    woken: AtomicBool,
    details: VifDetails,
    rx_dropped: AtomicU64,
    tx_dropped: AtomicU64,
}

/// Packets dropped by the interface since it opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunStats {
    /// Read but longer than the slot's room.
    pub rx_dropped: u64,
    /// Refused by the kernel one by one (malformed, too big).
    pub tx_dropped: u64,
}

impl LinuxTun {
    /// The drop counters.
    pub fn stats(&self) -> TunStats {
        TunStats {
            rx_dropped: self.rx_dropped.load(Ordering::Relaxed),
            tx_dropped: self.tx_dropped.load(Ordering::Relaxed),
        }
    }
}

impl VirtualInterface for LinuxTun {
    fn open(settings: &VifSettings) -> Result<Self, PluginFailure> {
        let plan = Plan::new(settings)?;
        let (tun, ifname) = sys::open_tun(&plan.ifname).map_err(|e| {
            let hint = match e.raw_os_error() {
                Some(libc::EBUSY) => " (an interface of that name exists)",
                Some(libc::EPERM | libc::EACCES) => " (needs CAP_NET_ADMIN)",
                _ => "",
            };
            PluginFailure::new(
                status_of(e.raw_os_error()),
                format!("creating TUN device `{}`{hint}: {e}", plan.ifname),
            )
        })?;
        let wake_fd = sys::eventfd().map_err(|e| os_failure("creating the wake eventfd", &e))?;
        let configure = |step: &str, e: NetlinkError| {
            PluginFailure::new(
                status_of(e.errno()),
                format!("configuring {ifname}: {step}: {e}"),
            )
        };
        let mut nl = Rtnetlink::open().map_err(|e| configure("opening rtnetlink", e))?;
        let link = nl
            .link(&ifname)
            .map_err(|e| configure("looking up the link", e))?;
        let txqlen = plan
            .options
            .txqueuelen
            .unwrap_or(link.txqlen.max(DEFAULT_TXQUEUELEN));
        nl.set_link_up(
            link.index,
            plan.mtu,
            (txqlen != link.txqlen).then_some(txqlen),
        )
        .map_err(|e| configure("setting MTU and queue length, link up", e))?;
        if let Some((addr, prefix_len)) = plan.ipv4 {
            nl.add_address(link.index, IpAddr::V4(addr), prefix_len)
                .map_err(|e| configure(&format!("adding {addr}/{prefix_len}"), e))?;
        }
        if let Some((addr, prefix_len)) = plan.ipv6 {
            nl.add_address(link.index, IpAddr::V6(addr), prefix_len)
                .map_err(|e| configure(&format!("adding {addr}/{prefix_len}"), e))?;
        }
        for &(dst, prefix_len) in &plan.routes {
            nl.add_route(link.index, dst, prefix_len)
                .map_err(|e| configure(&format!("adding route {dst}/{prefix_len}"), e))?;
        }
        let mtu = plan.mtu.unwrap_or(link.mtu);
        tracing::debug!(
            ifname,
            ifindex = link.index,
            mtu,
            txqlen,
            routes = plan.routes.len(),
            "linux-tun: interface up"
        );
        Ok(Self {
            tun,
            wake_fd,
            woken: AtomicBool::new(false),
            details: VifDetails {
                mtu,
                ifindex: link.index,
                ifname,
            },
            rx_dropped: AtomicU64::new(0),
            tx_dropped: AtomicU64::new(0),
        })
    }

    fn info(&self) -> Result<VifDetails, PluginFailure> {
        Ok(self.details.clone())
    }

    fn read_batch(&self, pkts: &mut [Packet<'_>], timeout_ms: i32) -> Result<usize, PluginFailure> {
        if pkts.is_empty() {
            return Ok(0);
        }
        if self.woken.swap(false, Ordering::AcqRel) {
            sys::eventfd_drain(self.wake_fd.as_fd());
            return Ok(0);
        }
        let filled = self.read_ready(pkts)?;
        if filled > 0 || timeout_ms == 0 {
            return Ok(filled);
        }
        // Negative: forever.
        let deadline = u64::try_from(timeout_ms)
            .ok()
            .map(|ms| Instant::now() + Duration::from_millis(ms));
        loop {
            let wait = match deadline {
                None => -1,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(0);
                    }
                    ceil_ms(left)
                }
            };
            let (tun, wake) = match sys::poll(
                self.tun.as_fd(),
                sys::POLLIN,
                Some(self.wake_fd.as_fd()),
                wait,
            ) {
                Ok(revents) => revents,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(os_failure("polling the TUN device", &e)),
            };
            if wake.any() {
                self.woken.store(false, Ordering::Release);
                sys::eventfd_drain(self.wake_fd.as_fd());
                return Ok(0);
            }
            if tun.any() {
                let filled = self.read_ready(pkts)?;
                if filled > 0 {
                    return Ok(filled);
                }
                if tun.failed() {
                    return Err(PluginFailure::new(
                        Status::CLOSED,
                        "the TUN device reports an error or hang-up",
                    ));
                }
                // Only oversized packets, dropped: keep waiting.
            }
        }
    }

    fn write_batch(&self, pkts: &[Packet<'_>]) -> Result<usize, PluginFailure> {
        let fd = self.tun.as_fd();
        let mut written = 0;
        let mut stall_deadline = None;
        while let Some(pkt) = pkts.get(written) {
            let err = match sys::write(fd, pkt.data()) {
                Ok(_) => {
                    written += 1;
                    continue;
                }
                Err(e) => e,
            };
            match err.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN) => {
                    let deadline =
                        *stall_deadline.get_or_insert_with(|| Instant::now() + WRITE_STALL_BUDGET);
                    if !self.wait_writable(deadline)? {
                        return Ok(written);
                    }
                }
                Some(libc::EINVAL | libc::EMSGSIZE | libc::ENOBUFS | libc::ENOMEM) => {
                    count_drop(
                        &self.tx_dropped,
                        &self.details.ifname,
                        "dropped packets the kernel refused",
                    );
                    written += 1;
                }
                // The error repeats on the next call, which reports it.
                _ if written > 0 => return Ok(written),
                _ => return Err(os_failure("writing to the TUN device", &err)),
            }
        }
        Ok(written)
    }

    fn pollable_fd(&self) -> Result<i64, PluginFailure> {
        Ok(i64::from(self.tun.as_raw_fd()))
    }

    fn wake(&self) -> Result<(), PluginFailure> {
        self.woken.store(true, Ordering::Release);
        sys::eventfd_signal(self.wake_fd.as_fd())
            .map_err(|e| os_failure("signalling the wake eventfd", &e))
    }
}

impl LinuxTun {
    /// Reads queued packets into the leading slots without blocking.
    fn read_ready(&self, pkts: &mut [Packet<'_>]) -> Result<usize, PluginFailure> {
        let fd = self.tun.as_fd();
        let mut filled = 0;
        while let Some(slot) = pkts.get_mut(filled) {
            let space = slot.space_mut();
            if space.is_empty() {
                if filled == 0 {
                    return Err(PluginFailure::invalid_argument(
                        "packet slot has no room after its headroom",
                    ));
                }
                break;
            }
            match sys::read(fd, space) {
                // A TUN device never yields an empty packet; do not spin on one.
                Ok(0) => break,
                Ok(n) if n > space.len() || truncated(&space[..n]) => {
                    count_drop(
                        &self.rx_dropped,
                        &self.details.ifname,
                        "dropped packets longer than the read slot",
                    );
                }
                Ok(n) => {
                    slot.set_len(n)?;
                    filled += 1;
                }
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => break,
                    io::ErrorKind::Interrupted => {}
                    // Hand out what we have; the error repeats on the next call.
                    _ if filled > 0 => break,
                    _ => return Err(os_failure("reading from the TUN device", &e)),
                },
            }
        }
        Ok(filled)
    }

    /// Waits up to the rest of `deadline`'s time for POLLOUT on the device; false when
    /// the budget is spent.
    fn wait_writable(&self, deadline: Instant) -> Result<bool, PluginFailure> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        match sys::poll(self.tun.as_fd(), sys::POLLOUT, None, ceil_ms(left)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(os_failure("polling the TUN device", &e)),
        }
    }
}

impl Drop for LinuxTun {
    fn drop(&mut self) {
        let stats = self.stats();
        tracing::debug!(
            ifname = self.details.ifname,
            rx_dropped = stats.rx_dropped,
            tx_dropped = stats.tx_dropped,
            "linux-tun: closing interface"
        );
        // Closing `tun` (a field) removes the device, its addresses and its routes.
    }
}

/// Whether an IP packet's own length field claims more than the `n` bytes read: the
/// kernel truncated it into a short buffer. (It also reports the untruncated length,
/// which the caller checks first; this guards against that ever changing.)
fn truncated(pkt: &[u8]) -> bool {
    let be16 = |at: usize| {
        pkt.get(at..at + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    };
    let claimed = match pkt.first().map(|b| b >> 4) {
        Some(4) => be16(2),
        Some(6) => be16(4).map(|payload| 40 + payload),
        _ => None,
    };
    claimed.is_some_and(|claimed| claimed > pkt.len())
}

/// Counts a dropped packet; logs only at powers of two, so a flood costs no logging.
fn count_drop(counter: &AtomicU64, ifname: &str, what: &'static str) {
    let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
    if n.is_power_of_two() {
        tracing::debug!(ifname, total = n, "linux-tun: {what}");
    }
}

fn ceil_ms(d: Duration) -> i32 {
    i32::try_from(d.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
}

fn status_of(errno: Option<i32>) -> Status {
    match errno {
        Some(libc::EPERM | libc::EACCES) => Status::PERMISSION_DENIED,
        Some(libc::ENOENT | libc::ENODEV) => Status::NOT_FOUND,
        Some(libc::EINVAL | libc::ERANGE) => Status::INVALID_ARGUMENT,
        Some(libc::ETIMEDOUT | libc::EAGAIN) => Status::TIMED_OUT,
        // The TUN device was detached from this descriptor.
        Some(libc::EBADFD) => Status::CLOSED,
        _ => Status::IO,
    }
}

fn os_failure(context: &str, err: &io::Error) -> PluginFailure {
    PluginFailure::new(status_of(err.raw_os_error()), format!("{context}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_is_read_from_the_ip_length_fields() {
        let mut v4 = [0u8; 28];
        v4[0] = 0x45;
        v4[2..4].copy_from_slice(&28u16.to_be_bytes());
        assert!(!truncated(&v4));
        v4[2..4].copy_from_slice(&1400u16.to_be_bytes());
        assert!(truncated(&v4));
        let mut v6 = [0u8; 48];
        v6[0] = 0x60;
        v6[4..6].copy_from_slice(&8u16.to_be_bytes());
        assert!(!truncated(&v6));
        v6[4..6].copy_from_slice(&9u16.to_be_bytes());
        assert!(truncated(&v6));
        assert!(!truncated(&[]));
        assert!(!truncated(&[0x45]));
    }

    #[test]
    fn ceil_ms_rounds_up_and_saturates() {
        assert_eq!(ceil_ms(Duration::from_micros(1)), 1);
        assert_eq!(ceil_ms(Duration::from_millis(100)), 100);
        assert_eq!(ceil_ms(Duration::from_secs(u64::MAX / 4)), i32::MAX);
    }
}
