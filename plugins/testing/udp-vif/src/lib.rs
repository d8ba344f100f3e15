//! **TEST ONLY — never configure this in a real node.** A userspace "virtual interface"
//! (plugin kind 1) that carries one IP packet per UDP datagram over a socket, so that the
//! data path of a build can run end to end where no TUN driver exists: the Windows build
//! under Wine (which has no kernel drivers, so no wintun adapter), or a Linux test
//! without privileges. It uses nothing but [`std::net::UdpSocket`] and runs on any OS.
//!
//! [`UdpVif`] implements [`VirtualInterface`]; [`plugin_header`] exports it (pass it to
//! `Plugin::from_static`), and the same crate builds `libcyphonic_test_udp_vif.so` /
//! `cyphonic_test_udp_vif.dll` for `Plugin::load` (the rlib carries the entry symbol too, so
//! link it only into test binaries that link no other plugin's entry point).
//!
//! # What it is not
//!
//! It configures nothing in the operating system: no interface, no address, no route.
//! The addresses and routes of `VifConfig` are accepted and ignored, so the node's
//! virtual addresses exist only inside `cyphonicd` (its resolver must listen elsewhere,
//! e.g. on 127.0.0.1, and nothing else on the machine can reach the overlay). "The OS"
//! is whatever process holds the `peer` socket: a test that plays the applications,
//! or a second `udp-vif` (two of them with swapped `listen`/`peer` form a link).
//!
//! # Options
//!
//! `VifConfig::options` holds `key=value` lines; blank lines and `#` comments are
//! ignored and the last occurrence of a key wins.
//!
//! | key | value | required |
//! |---|---|---|
//! | `listen` | `ip:port` (`[v6]:port`) to bind: datagrams from `peer` arriving here are the packets `read_batch` returns. Port 0 picks a free port; the peer learns it from the source of the first packet written | yes |
//! | `peer` | `ip:port` the packets given to `write_batch` are sent to, from the `listen` socket; same family as `listen`, not unspecified, port not 0 | yes |
//!
//! Any other key, a line without `=`, a missing key or a bad address fails `open` with
//! `INVALID_ARGUMENT`, naming the key. The MTU of the config is reported back by `info`
//! (0 means 1500; otherwise 68 to 65507, the largest UDP payload); the interface index
//! is 0 and the name the requested one, or `udp-vif`.
//!
//! # Packets
//!
//! - `write_batch` sends each packet as one datagram to `peer`. Empty packets are
//!   skipped (consumed), since empty datagrams are wake markers; a packet larger than a
//!   UDP payload can be (65507 bytes) is dropped, counted and consumed.
//! - `read_batch` waits up to `timeout_ms` (`0`: not at all, `-1`: forever) for the
//!   first packet, then takes the further datagrams already queued without blocking, each
//!   into the next slot after its headroom, in arrival order. Only datagrams whose
//!   source address equals `peer` exactly are packets; others are dropped and counted, so
//!   no other process can inject packets. A packet longer than its slot's room is
//!   **dropped and counted**, never truncated (a truncated IP packet is garbage), and
//!   the read goes on with the next datagram. Datagrams are received into a 64 KiB
//!   buffer owned by the handle and copied into the slot: one copy, no allocation.
//! - `wake` sends an empty datagram from the socket to its own address. Empty datagrams
//!   are never packets; one from ourselves ends a blocked `read_batch` with what it has
//!   (0 packets if it was still waiting for the first). A `wake` while no read blocks
//!   makes the next read return 0 at once.
//! - Reads take turns (the socket's blocking mode and read timeout are per socket);
//!   writes and `wake` run alongside them. A write that finds the socket momentarily
//!   non-blocking (a reader draining) and its send buffer full retries briefly.
//!
//! On Windows an unconnected UDP socket reports an earlier datagram's ICMP "port
//! unreachable" as an error of a later receive (`WSAECONNRESET`); the read ignores it
//! and goes on.

mod options;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cyphonic_plugin_abi::{
    Packet, PluginFailure, Status, VifDetails, VifSettings, VirtualInterface,
};

pub use crate::options::UdpVifOptions;

cyphonic_plugin_abi::virtual_interface_plugin!(
    name: "udp-vif",
    version: env!("CARGO_PKG_VERSION"),
    interface: UdpVif,
);
cyphonic_plugin_abi::export_plugin_entry!(plugin_header);

/// The largest UDP payload over IPv4 (65535 - 20 - 8): a larger packet cannot be sent.
pub const MAX_DATAGRAM: usize = 65_507;
/// The MTU reported when the config asks for none (0).
pub const DEFAULT_MTU: u32 = 1500;
/// The interface name reported when the config asks for none.
pub const DEFAULT_NAME: &str = "udp-vif";
/// The smallest MTU accepted (IPv4's minimum).
const MIN_MTU: u32 = 68;
/// Receive buffer: larger than any datagram, so the kernel never truncates one.
const SCRATCH_LEN: usize = 64 * 1024;
/// How often a send that finds the send buffer full is retried, 100 µs apart.
const SEND_RETRIES: u32 = 2000;

/// An open UDP "interface"; dropping it closes the socket.
#[derive(Debug)]
pub struct UdpVif {
    socket: UdpSocket,
    /// The bound address (the port is the real one when `listen` asked for 0).
    local: SocketAddr,
    /// Where `wake` sends its marker: the bound address, loopback if bound to the
    /// unspecified address. A marker's source is this address.
    wake_to: SocketAddr,
    peer: SocketAddr,
    details: VifDetails,
    /// Set by `wake` before it sends the marker: a wake while no read blocks makes the
    /// next read return 0 at once, and a marker arriving without it (its wake already
    /// honoured) is ignored.
    woken: AtomicBool,
    reader: Mutex<Reader>,
    counters: Counters,
}

/// Datagrams this interface dropped, since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpVifStats {
    /// Received but not a packet: from a source other than `peer`, or empty (and not
    /// our own wake marker).
    pub foreign: u64,
    /// Received from `peer` but longer than the slot they were to be read into.
    pub oversize: u64,
    /// Given to `write_batch` but larger than [`MAX_DATAGRAM`], so never sent.
    pub unsendable: u64,
}

impl UdpVif {
    /// The address the socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Where written packets go.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// What was dropped so far.
    pub fn stats(&self) -> UdpVifStats {
        UdpVifStats {
            foreign: self.counters.foreign.load(Ordering::Relaxed),
            oversize: self.counters.oversize.load(Ordering::Relaxed),
            unsendable: self.counters.unsendable.load(Ordering::Relaxed),
        }
    }
}

impl VirtualInterface for UdpVif {
    fn open(settings: &VifSettings) -> Result<Self, PluginFailure> {
        let options = UdpVifOptions::parse(settings.options.as_deref())?;
        let mtu = match settings.mtu {
            0 => DEFAULT_MTU,
            mtu if (MIN_MTU..=MAX_DATAGRAM as u32).contains(&mtu) => mtu,
            mtu => {
                return Err(PluginFailure::invalid_argument(format!(
                    "udp-vif: MTU {mtu} is outside {MIN_MTU}..={MAX_DATAGRAM}"
                )));
            }
        };
        let socket = UdpSocket::bind(options.listen)
            .map_err(|e| io_failure(&format!("binding UDP {}", options.listen), &e))?;
        let local = socket
            .local_addr()
            .map_err(|e| io_failure("reading the bound address", &e))?;
        let wake_ip = match local.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let details = VifDetails {
            mtu,
            ifindex: 0,
            ifname: settings
                .ifname
                .clone()
                .unwrap_or_else(|| DEFAULT_NAME.to_owned()),
        };
        tracing::debug!(%local, peer = %options.peer, mtu, "udp-vif (test only): open");
        Ok(Self {
            socket,
            local,
            wake_to: SocketAddr::new(wake_ip, local.port()),
            peer: options.peer,
            details,
            woken: AtomicBool::new(false),
            reader: Mutex::new(Reader {
                scratch: vec![0; SCRATCH_LEN].into_boxed_slice(),
                mode: None,
            }),
            counters: Counters::default(),
        })
    }

    fn info(&self) -> Result<VifDetails, PluginFailure> {
        Ok(self.details.clone())
    }

    fn read_batch(&self, pkts: &mut [Packet<'_>], timeout_ms: i32) -> Result<usize, PluginFailure> {
        // A panic in an earlier read left at worst a stale cached socket mode, which the
        // next `set_mode` call may skip wrongly: forget it.
        let mut reader = self.reader.lock().unwrap_or_else(|poisoned| {
            let mut reader = poisoned.into_inner();
            reader.mode = None;
            reader
        });
        if self.woken.swap(false, Ordering::AcqRel) || pkts.is_empty() {
            return Ok(0);
        }
        // Negative: forever.
        let deadline = u64::try_from(timeout_ms)
            .ok()
            .map(|ms| Instant::now() + Duration::from_millis(ms));
        loop {
            let mode = match deadline {
                None => Mode::Blocking(None),
                Some(_) if timeout_ms == 0 => Mode::NonBlocking,
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Mode::Blocking(Some(left)),
                    _ => return Ok(0),
                },
            };
            reader.set_mode(&self.socket, mode)?;
            match self.receive(&mut reader, &mut pkts[0])? {
                Received::Packet => break,
                Received::Wake | Received::Nothing => return Ok(0),
                Received::Skipped => {}
            }
        }
        let mut filled = 1;
        reader.set_mode(&self.socket, Mode::NonBlocking)?;
        while filled < pkts.len() {
            match self.receive(&mut reader, &mut pkts[filled])? {
                Received::Packet => filled += 1,
                Received::Wake | Received::Nothing => break,
                Received::Skipped => {}
            }
        }
        Ok(filled)
    }

    fn write_batch(&self, pkts: &[Packet<'_>]) -> Result<usize, PluginFailure> {
        for (done, pkt) in pkts.iter().enumerate() {
            let data = pkt.data();
            if data.is_empty() {
                continue;
            }
            if data.len() > MAX_DATAGRAM {
                self.counters.unsendable.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if let Err(e) = self.send(data, self.peer) {
                // The packets before this one were consumed; the caller retries the rest
                // and gets the error then.
                return if done == 0 {
                    Err(io_failure(&format!("sending to {}", self.peer), &e))
                } else {
                    Ok(done)
                };
            }
        }
        Ok(pkts.len())
    }

    fn wake(&self) -> Result<(), PluginFailure> {
        self.woken.store(true, Ordering::Release);
        self.send(&[], self.wake_to)
            .map_err(|e| io_failure("sending the wake marker", &e))
    }
}

/// What one receive got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Received {
    /// A packet, now in the slot.
    Packet,
    /// Our own wake marker, with a wake pending: stop.
    Wake,
    /// Nothing arrived in time (or nothing was queued, when not blocking).
    Nothing,
    /// A datagram that is not a packet, or a transient error: receive again.
    Skipped,
}

/// The socket's blocking behaviour, as last set by a reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    NonBlocking,
    /// Blocking, with this read timeout (`None`: forever).
    Blocking(Option<Duration>),
}

/// What reads keep between calls; held for the whole of a read.
#[derive(Debug)]
struct Reader {
    scratch: Box<[u8]>,
    /// `None`: unknown (new socket, or after a panic).
    mode: Option<Mode>,
}

impl Reader {
    fn set_mode(&mut self, socket: &UdpSocket, mode: Mode) -> Result<(), PluginFailure> {
        if self.mode == Some(mode) {
            return Ok(());
        }
        let set = || -> io::Result<()> {
            match mode {
                Mode::NonBlocking => socket.set_nonblocking(true),
                Mode::Blocking(timeout) => {
                    if !matches!(self.mode, Some(Mode::Blocking(_))) {
                        socket.set_nonblocking(false)?;
                    }
                    socket.set_read_timeout(timeout)
                }
            }
        };
        // Unknown until the calls succeed.
        let result = set();
        self.mode = result.is_ok().then_some(mode);
        result.map_err(|e| io_failure("setting the socket's blocking mode", &e))
    }
}

#[derive(Debug, Default)]
struct Counters {
    foreign: AtomicU64,
    oversize: AtomicU64,
    unsendable: AtomicU64,
}

impl UdpVif {
    /// Receives one datagram in the socket's current mode and sorts it out; a packet is
    /// copied into `slot`.
    fn receive(
        &self,
        reader: &mut Reader,
        slot: &mut Packet<'_>,
    ) -> Result<Received, PluginFailure> {
        let (len, source) = match self.socket.recv_from(&mut reader.scratch) {
            Ok(got) => got,
            Err(e) => {
                return match e.kind() {
                    // Linux reports a read timeout as EAGAIN, Windows as WSAETIMEDOUT.
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Ok(Received::Nothing),
                    // A signal, or (Windows) an ICMP error about an earlier send.
                    io::ErrorKind::Interrupted
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionRefused => Ok(Received::Skipped),
                    _ => Err(io_failure("receiving from the UDP socket", &e)),
                };
            }
        };
        if len == 0 && source == self.wake_to {
            return Ok(if self.woken.swap(false, Ordering::AcqRel) {
                Received::Wake
            } else {
                // The marker of a wake that was already honoured.
                Received::Skipped
            });
        }
        if len == 0 || source != self.peer {
            self.counters.foreign.fetch_add(1, Ordering::Relaxed);
            return Ok(Received::Skipped);
        }
        let Some(room) = slot.space_mut().get_mut(..len) else {
            self.counters.oversize.fetch_add(1, Ordering::Relaxed);
            return Ok(Received::Skipped);
        };
        room.copy_from_slice(&reader.scratch[..len]);
        slot.set_len(len)?;
        Ok(Received::Packet)
    }

    /// Sends one datagram; retries while a reader's drain has the socket non-blocking
    /// and the send buffer is full.
    fn send(&self, data: &[u8], to: SocketAddr) -> io::Result<()> {
        let mut retries = 0;
        loop {
            match self.socket.send_to(data, to) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && retries < SEND_RETRIES => {
                    retries += 1;
                    std::thread::sleep(Duration::from_micros(100));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn io_failure(context: &str, err: &io::Error) -> PluginFailure {
    let status = match err.kind() {
        io::ErrorKind::PermissionDenied => Status::PERMISSION_DENIED,
        io::ErrorKind::AddrInUse | io::ErrorKind::AddrNotAvailable => Status::INVALID_ARGUMENT,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Status::TIMED_OUT,
        _ => Status::IO,
    };
    PluginFailure::new(status, format!("udp-vif: {context}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(options: &str) -> VifSettings {
        VifSettings {
            mtu: 1400,
            options: Some(options.to_owned()),
            ..VifSettings::default()
        }
    }

    #[test]
    fn mtu_name_and_unspecified_bind() {
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let opts = format!("listen=0.0.0.0:0\npeer={}", peer.local_addr().unwrap());
        let vif = UdpVif::open(&settings(&opts)).unwrap();
        assert_eq!(
            vif.info().unwrap(),
            VifDetails {
                mtu: 1400,
                ifindex: 0,
                ifname: DEFAULT_NAME.into()
            }
        );
        assert_eq!(vif.wake_to.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_ne!(vif.local_addr().port(), 0);
        // The marker to the loopback address arrives from it: a wake, not a foreign
        // datagram.
        vif.wake().unwrap();
        let mut buf = [0u8; 64];
        let mut pkts = [Packet::empty(&mut buf, 0).unwrap()];
        vif.woken.store(false, Ordering::Release);
        assert_eq!(vif.read_batch(&mut pkts, 100).unwrap(), 0);
        assert_eq!(
            vif.stats(),
            UdpVifStats::default(),
            "a marker is not foreign"
        );

        for (mtu, ok) in [
            (0, true),
            (67, false),
            (68, true),
            (65_507, true),
            (65_508, false),
        ] {
            let mut s = settings(&opts);
            s.mtu = mtu;
            s.ifname = Some("cyph0".into());
            match UdpVif::open(&s) {
                Ok(vif) => {
                    assert!(ok, "{mtu}");
                    let info = vif.info().unwrap();
                    assert_eq!(info.mtu, if mtu == 0 { DEFAULT_MTU } else { mtu });
                    assert_eq!(info.ifname, "cyph0");
                }
                Err(e) => {
                    assert!(!ok, "{mtu}: {e}");
                    assert_eq!(e.status(), Status::INVALID_ARGUMENT);
                    assert!(e.message().contains("MTU"), "{e}");
                }
            }
        }
    }
}
