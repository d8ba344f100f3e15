//! [`WintunInterface`]: the [`VirtualInterface`] over a wintun adapter and session.
//! `open` is the sequence the crate docs describe; the data path moves packets between
//! the host's slots and wintun's rings.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cyphonic_plugin_abi::{
    Packet, PluginFailure, Status, VifDetails, VifSettings, VirtualInterface,
};
use windows_sys::Win32::NetworkManagement::IpHelper::{
    ConvertInterfaceLuidToAlias, ConvertInterfaceLuidToGuid, ConvertInterfaceLuidToIndex,
};
use windows_sys::Win32::NetworkManagement::Ndis::NET_LUID_LH;
use windows_sys::core::GUID;

use crate::config::{MAX_MTU, NetworkCategory, Plan, TUNNEL_TYPE};
use crate::driver::{Adapter, Driver, Session, clear_driver_error, take_driver_error};
use crate::errors::{NEED_ADMIN, Step, code, win32_failure};
use crate::guid::format_guid;
use crate::ipconfig;
use crate::nlm::{PrivateMarker, spawn_mark_private};
use crate::sys::{self, Event, win32_text};

/// How long one `write_batch` that could not write anything waits for the driver to
/// drain a full send ring.
const WRITE_STALL_BUDGET: Duration = Duration::from_millis(100);
const WRITE_STALL_STEP: Duration = Duration::from_millis(1);

/// An open wintun adapter with its session; dropping it ends the session and removes
/// the adapter.
#[derive(Debug)]
pub struct WintunInterface {
    // Fields drop in order: the marker thread stops, the session ends, the adapter is
    // removed, then wintun.dll may unload.
    _marker: Option<PrivateMarker>,
    session: Session,
    _adapter: Adapter,
    _driver: Driver,
    wake: Event,
    /// Set by `wake` before it signals `wake`, so that a wake arriving while no read
    /// waits makes the next read return 0 even if packets are queued.
    woken: AtomicBool,
    details: VifDetails,
    rx_dropped: AtomicU64,
    tx_dropped: AtomicU64,
}

/// Packets dropped by the interface since it opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WintunStats {
    /// Received from the ring but longer than the slot's room.
    pub rx_dropped: u64,
    /// Empty or longer than wintun's 65535-byte maximum.
    pub tx_dropped: u64,
}

impl WintunInterface {
    /// The drop counters.
    pub fn stats(&self) -> WintunStats {
        WintunStats {
            rx_dropped: self.rx_dropped.load(Ordering::Relaxed),
            tx_dropped: self.tx_dropped.load(Ordering::Relaxed),
        }
    }
}

impl VirtualInterface for WintunInterface {
    fn open(settings: &VifSettings) -> Result<Self, PluginFailure> {
        let plan = Plan::new(settings)?;
        let name = plan.name.as_str();
        let dir = sys::module_dir().map_err(|e| {
            PluginFailure::new(
                Status::IO,
                format!("locating the directory of cyphonic_wintun.dll: {e}"),
            )
        })?;
        let driver = Driver::load_from(&dir)?;
        match sys::is_elevated() {
            Ok(true) => {}
            Ok(false) => {
                return Err(PluginFailure::new(
                    Status::PERMISSION_DENIED,
                    format!(
                        "creating wintun adapter `{name}` needs an elevated process: {NEED_ADMIN}"
                    ),
                ));
            }
            // Let the driver decide; its error says the same if it comes to that.
            Err(e) => tracing::debug!(error = %e, "wintun: cannot read the token elevation"),
        }
        match driver.running_version() {
            Ok((major, minor)) => tracing::debug!(major, minor, "wintun: driver running"),
            Err(c) => tracing::debug!(status = c, "wintun: driver not running yet"),
        }
        check_stale(&driver, &plan)?;

        clear_driver_error();
        let adapter = driver
            .create_adapter(name, TUNNEL_TYPE, plan.guid)
            .map_err(|c| {
                let context = format!(
                    "creating wintun adapter `{name}` {} with {}",
                    format_guid(plan.guid),
                    driver.path().display()
                );
                with_driver_log(win32_failure(
                    Step::CreateAdapter,
                    &context,
                    c,
                    &win32_text(c),
                ))
            })?;
        let luid = adapter.luid();
        let capacity = plan.options.ring_capacity;
        let session = adapter.start_session(capacity).map_err(|c| {
            let context = format!(
                "starting the session of wintun adapter `{name}` ({capacity:#x}-byte rings)"
            );
            with_driver_log(win32_failure(
                Step::StartSession,
                &context,
                c,
                &win32_text(c),
            ))
        })?;
        // A failure from here on drops `session` and `adapter`: the adapter is removed.
        let mtu = ipconfig::configure(luid, &plan)?;
        let ifindex = luid_to_index(luid).map_err(|c| {
            win32_failure(
                Step::Configure,
                &format!("reading the interface index of `{name}`"),
                c,
                &win32_text(c),
            )
        })?;
        // The alias Windows shows; wintun renames a foreign adapter that held ours, so it
        // is normally `name`.
        let ifname = luid_to_alias(luid)
            .filter(|alias| alias.len() < cyphonic_plugin_abi::VIF_IFNAME_LEN)
            .unwrap_or_else(|| name.to_owned());
        let wake = Event::new().map_err(|e| PluginFailure::io(&e))?;
        let marker = match plan.options.network_category {
            NetworkCategory::Private => spawn_mark_private(plan.guid, ifname.clone()),
            NetworkCategory::Leave => None,
        };
        tracing::debug!(
            ifname,
            ifindex,
            mtu,
            ring_capacity = capacity,
            routes = plan.routes.len(),
            "wintun: interface up"
        );
        Ok(Self {
            _marker: marker,
            session,
            _adapter: adapter,
            _driver: driver,
            wake,
            woken: AtomicBool::new(false),
            details: VifDetails {
                mtu,
                ifindex,
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
            self.wake.reset();
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
                None => None,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(0);
                    }
                    Some(ceil_ms(left))
                }
            };
            // The ring's event comes first: with both signalled, packets are returned
            // and the wake is kept for the next call.
            match sys::wait_either([self.session.read_event(), self.wake.raw()], wait) {
                Ok(None) => return Ok(0),
                Ok(Some(0)) => {
                    let filled = self.read_ready(pkts)?;
                    if filled > 0 {
                        return Ok(filled);
                    }
                    // Only oversized packets, dropped: keep waiting.
                }
                Ok(Some(_)) => {
                    self.woken.store(false, Ordering::Release);
                    self.wake.reset();
                    return Ok(0);
                }
                Err(e) => {
                    return Err(PluginFailure::new(
                        Status::IO,
                        format!("waiting for packets from the wintun adapter: {e}"),
                    ));
                }
            }
        }
    }

    fn write_batch(&self, pkts: &[Packet<'_>]) -> Result<usize, PluginFailure> {
        let mut written = 0;
        let mut stall_deadline = None;
        while let Some(pkt) = pkts.get(written) {
            let data = pkt.data();
            if data.is_empty() || data.len() > MAX_MTU as usize {
                count_drop(
                    &self.tx_dropped,
                    &self.details.ifname,
                    "dropped packets wintun cannot carry (empty or over 65535 bytes)",
                );
                written += 1;
                continue;
            }
            match self.session.send(data) {
                Ok(()) => written += 1,
                // The ring is full: hand back what went, the caller comes back for the rest.
                Err(code::ERROR_BUFFER_OVERFLOW) if written > 0 => return Ok(written),
                Err(code::ERROR_BUFFER_OVERFLOW) => {
                    let deadline =
                        *stall_deadline.get_or_insert_with(|| Instant::now() + WRITE_STALL_BUDGET);
                    if Instant::now() >= deadline {
                        return Ok(0);
                    }
                    std::thread::sleep(WRITE_STALL_STEP);
                }
                // The error repeats on the next call, which reports it.
                Err(_) if written > 0 => return Ok(written),
                Err(c) => {
                    return Err(win32_failure(
                        Step::DataPath,
                        "sending to the wintun adapter",
                        c,
                        &win32_text(c),
                    ));
                }
            }
        }
        Ok(written)
    }

    fn wake(&self) -> Result<(), PluginFailure> {
        self.woken.store(true, Ordering::Release);
        self.wake.set().map_err(|e| PluginFailure::io(&e))
    }
}

impl WintunInterface {
    /// Copies queued packets into the leading slots without blocking.
    fn read_ready(&self, pkts: &mut [Packet<'_>]) -> Result<usize, PluginFailure> {
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
            let received = match self.session.receive() {
                Ok(Some(received)) => received,
                Ok(None) => break,
                // Hand out what we have; the error repeats on the next call.
                Err(_) if filled > 0 => break,
                Err(c) => {
                    return Err(win32_failure(
                        Step::DataPath,
                        "receiving from the wintun adapter",
                        c,
                        &win32_text(c),
                    ));
                }
            };
            let bytes = received.bytes();
            if bytes.is_empty() {
                continue;
            }
            let Some(room) = space.get_mut(..bytes.len()) else {
                count_drop(
                    &self.rx_dropped,
                    &self.details.ifname,
                    "dropped packets longer than the read slot",
                );
                continue;
            };
            room.copy_from_slice(bytes);
            let len = bytes.len();
            drop(received);
            slot.set_len(len)?;
            filled += 1;
        }
        Ok(filled)
    }
}

impl Drop for WintunInterface {
    fn drop(&mut self) {
        let stats = self.stats();
        tracing::debug!(
            ifname = self.details.ifname,
            rx_dropped = stats.rx_dropped,
            tx_dropped = stats.tx_dropped,
            "wintun: closing interface"
        );
        // The fields end the session and remove the adapter, in that order.
    }
}

/// Before creating: an adapter of our name that is *present* belongs to a live process
/// (a crashed process's adapter is no longer present, and wintun's own sweep on every
/// create removes it; the stable GUID then revives its device identity). Opening it
/// tells which: with our GUID it is another cyphonicd using this name, which must not be
/// taken over; with another GUID it is some other program's, which wintun renames.
/// Closing an adapter we only opened releases the handle and leaves the adapter.
fn check_stale(driver: &Driver, plan: &Plan) -> Result<(), PluginFailure> {
    let name = plan.name.as_str();
    let existing = match driver.open_adapter(name) {
        Ok(existing) => existing,
        Err(code::ERROR_NOT_FOUND) => return Ok(()),
        Err(c) => {
            tracing::debug!(
                name,
                status = c,
                "wintun: cannot look for an existing adapter; creating anyway"
            );
            return Ok(());
        }
    };
    let guid = luid_to_guid(existing.luid());
    drop(existing);
    match guid {
        Ok(guid) if guid == plan.guid => Err(PluginFailure::new(
            Status::IO,
            format!(
                "wintun adapter `{name}` {} is already up, held by another process \
                 (another cyphonicd?): stop it, or give this node another interface name",
                format_guid(guid)
            ),
        )),
        Ok(guid) => {
            tracing::warn!(
                name,
                other = format_guid(guid),
                "wintun: another program's adapter has this name; wintun renames it"
            );
            Ok(())
        }
        Err(c) => {
            tracing::debug!(
                name,
                status = c,
                "wintun: an adapter of this name exists but has no interface"
            );
            Ok(())
        }
    }
}

/// Appends what wintun.dll logged about the failure, if anything.
fn with_driver_log(failure: PluginFailure) -> PluginFailure {
    match take_driver_error() {
        Some(logged) => PluginFailure::new(
            failure.status(),
            format!("{} (wintun.dll logged: {logged})", failure.message()),
        ),
        None => failure,
    }
}

fn luid_to_index(luid: NET_LUID_LH) -> Result<u32, u32> {
    let mut index = 0u32;
    // SAFETY: `luid` and `index` are valid for the call.
    match unsafe { ConvertInterfaceLuidToIndex(&luid, &mut index) } {
        0 => Ok(index),
        c => Err(c),
    }
}

fn luid_to_guid(luid: NET_LUID_LH) -> Result<u128, u32> {
    let mut guid = GUID::from_u128(0);
    // SAFETY: `luid` and `guid` are valid for the call.
    match unsafe { ConvertInterfaceLuidToGuid(&luid, &mut guid) } {
        0 => Ok(guid_to_u128(&guid)),
        c => Err(c),
    }
}

/// The inverse of `GUID::from_u128`.
fn guid_to_u128(guid: &GUID) -> u128 {
    (u128::from(guid.data1) << 96)
        | (u128::from(guid.data2) << 80)
        | (u128::from(guid.data3) << 64)
        | u128::from(u64::from_be_bytes(guid.data4))
}

fn luid_to_alias(luid: NET_LUID_LH) -> Option<String> {
    // IF_MAX_STRING_SIZE + 1
    let mut alias = [0u16; 257];
    // SAFETY: `alias` is writable for its length in UTF-16 units.
    match unsafe { ConvertInterfaceLuidToAlias(&luid, alias.as_mut_ptr(), alias.len()) } {
        0 => {
            let len = alias.iter().position(|&c| c == 0).unwrap_or(alias.len());
            String::from_utf16(&alias[..len]).ok()
        }
        _ => None,
    }
}

/// Counts a dropped packet; logs only at powers of two, so a flood costs no logging.
fn count_drop(counter: &AtomicU64, ifname: &str, what: &'static str) {
    let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
    if n.is_power_of_two() {
        tracing::debug!(ifname, total = n, "wintun: {what}");
    }
}

fn ceil_ms(d: Duration) -> u32 {
    u32::try_from(d.as_micros().div_ceil(1000)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    const HEADROOM: usize = 16;

    #[test]
    fn guids_round_trip_through_the_windows_struct() {
        for g in [0, u128::MAX, 0x0123_4567_89ab_cdef_0011_2233_4455_6677] {
            assert_eq!(guid_to_u128(&GUID::from_u128(g)), g);
        }
    }

    #[test]
    fn ceil_ms_rounds_up_and_saturates() {
        assert_eq!(ceil_ms(Duration::from_micros(1)), 1);
        assert_eq!(ceil_ms(Duration::from_millis(100)), 100);
        assert_eq!(ceil_ms(Duration::from_secs(u64::MAX / 4)), u32::MAX);
    }

    /// `target/x86_64-pc-windows-gnu/<profile>/`, where the stub `wintun.dll` is built.
    pub(crate) fn profile_dir() -> PathBuf {
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().unwrap();
        let dir = if dir.file_name().is_some_and(|n| n == "deps") {
            dir.parent().unwrap()
        } else {
            dir
        };
        assert!(
            dir.join("wintun.dll").is_file(),
            "{} has no stub wintun.dll: run `cargo build -p cyphonic-test-wintun-stub \
             --target x86_64-pc-windows-gnu` first",
            dir.display()
        );
        dir.to_path_buf()
    }

    /// An interface over the stub's in-memory loopback ring (what the system is sent
    /// comes straight back), without `open`'s IP configuration, which Wine cannot do.
    fn loopback(capacity: u32) -> WintunInterface {
        let driver = Driver::load_from(&profile_dir()).unwrap();
        let adapter = driver.create_adapter("stub-ring", TUNNEL_TYPE, 1).unwrap();
        let session = adapter.start_session(capacity).unwrap();
        WintunInterface {
            _marker: None,
            session,
            _adapter: adapter,
            _driver: driver,
            wake: Event::new().unwrap(),
            woken: AtomicBool::new(false),
            details: VifDetails {
                mtu: 1420,
                ifindex: 0,
                ifname: "stub-ring".into(),
            },
            rx_dropped: AtomicU64::new(0),
            tx_dropped: AtomicU64::new(0),
        }
    }

    fn packet(n: u8, len: usize) -> Vec<u8> {
        let mut p = vec![n; len];
        p[0] = 0x45;
        p
    }

    fn write_all(vif: &WintunInterface, packets: &[Vec<u8>]) -> usize {
        let mut bufs: Vec<Vec<u8>> = packets
            .iter()
            .map(|p| [&[0u8; HEADROOM][..], p].concat())
            .collect();
        let slots: Vec<Packet<'_>> = bufs
            .iter_mut()
            .map(|b| {
                let len = b.len() - HEADROOM;
                Packet::new(b, HEADROOM, len).unwrap()
            })
            .collect();
        vif.write_batch(&slots).unwrap()
    }

    fn read(vif: &WintunInterface, slots: usize, room: usize, timeout_ms: i32) -> Vec<Vec<u8>> {
        let mut bufs = vec![vec![0xa5u8; HEADROOM + room]; slots];
        let mut pkts: Vec<Packet<'_>> = bufs
            .iter_mut()
            .map(|b| Packet::empty(b, HEADROOM).unwrap())
            .collect();
        let n = vif.read_batch(&mut pkts, timeout_ms).unwrap();
        let out = pkts[..n].iter().map(|p| p.data().to_vec()).collect();
        drop(pkts);
        // Headroom untouched.
        assert!(
            bufs.iter()
                .all(|b| b[..HEADROOM].iter().all(|&x| x == 0xa5))
        );
        out
    }

    #[test]
    fn packets_go_through_the_rings_in_order_and_in_batches() {
        let vif = loopback(0x2_0000);
        let sent: Vec<Vec<u8>> = (0..5).map(|i| packet(i, 60 + usize::from(i))).collect();
        assert_eq!(write_all(&vif, &sent), 5);
        // A batch of 3 takes the first three; the rest waits for the next call.
        assert_eq!(read(&vif, 3, 1500, 1000), sent[..3]);
        assert_eq!(read(&vif, 8, 1500, 0), sent[3..]);
        assert!(read(&vif, 8, 1500, 0).is_empty());
        assert_eq!(vif.stats(), WintunStats::default());
        assert_eq!(vif.info().unwrap().ifname, "stub-ring");
        assert!(vif.pollable_fd().is_err());
    }

    #[test]
    fn a_read_waits_for_the_ring_event_until_its_timeout() {
        let vif = loopback(0x2_0000);
        let start = Instant::now();
        assert!(read(&vif, 4, 1500, 100).is_empty());
        assert!(
            start.elapsed() >= Duration::from_millis(90),
            "{:?}",
            start.elapsed()
        );
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                assert_eq!(write_all(&vif, &[packet(9, 100)]), 1);
            });
            let start = Instant::now();
            assert_eq!(read(&vif, 4, 1500, 5000), vec![packet(9, 100)]);
            assert!(start.elapsed() < Duration::from_secs(4));
        });
    }

    #[test]
    fn wake_ends_a_blocked_read_and_a_pending_wake_the_next_one() {
        let vif = loopback(0x2_0000);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                vif.wake().unwrap();
            });
            let start = Instant::now();
            assert!(read(&vif, 4, 1500, -1).is_empty());
            assert!(start.elapsed() < Duration::from_secs(5));
        });
        // A wake with no read blocked: the next read returns 0 even with packets queued,
        // and the one after gets the packets.
        assert_eq!(write_all(&vif, &[packet(1, 80)]), 1);
        vif.wake().unwrap();
        assert!(read(&vif, 4, 1500, 1000).is_empty());
        assert_eq!(read(&vif, 4, 1500, 1000), vec![packet(1, 80)]);
        // The wake was consumed: a read now times out.
        assert!(read(&vif, 4, 1500, 50).is_empty());
    }

    #[test]
    fn oversized_packets_are_dropped_and_counted_and_empty_slots_refused() {
        let vif = loopback(0x2_0000);
        let sent = [packet(1, 1400), packet(2, 200), packet(3, 1401)];
        assert_eq!(write_all(&vif, &sent), 3);
        assert_eq!(
            read(&vif, 4, 1400, 1000),
            vec![packet(1, 1400), packet(2, 200)]
        );
        assert_eq!(vif.stats().rx_dropped, 1);
        // Empty and over-long packets are consumed and counted, not sent.
        assert_eq!(
            write_all(&vif, &[vec![], packet(4, 70_000), packet(5, 64)]),
            3
        );
        assert_eq!(vif.stats().tx_dropped, 2);
        assert_eq!(read(&vif, 4, 1500, 1000), vec![packet(5, 64)]);
        let mut buf = [0u8; HEADROOM];
        let mut no_room = [Packet::empty(&mut buf, HEADROOM).unwrap()];
        let err = vif.read_batch(&mut no_room, 0).unwrap_err();
        assert_eq!(err.status(), Status::INVALID_ARGUMENT);
    }

    #[test]
    fn a_full_ring_ends_the_batch_with_the_count_written() {
        // 128 KiB of ring: 87 packets of 1500 bytes fit, the 88th does not.
        let vif = loopback(0x2_0000);
        let burst: Vec<Vec<u8>> = (0..100).map(|i| packet(i, 1500)).collect();
        assert_eq!(write_all(&vif, &burst), 87);
        // Nothing fits: the call retries for its budget, then reports 0.
        let start = Instant::now();
        assert_eq!(write_all(&vif, &burst[87..]), 0);
        assert!(
            start.elapsed() >= WRITE_STALL_BUDGET,
            "{:?}",
            start.elapsed()
        );
        // Reading frees the ring.
        assert_eq!(read(&vif, 128, 1500, 1000).len(), 87);
        assert_eq!(write_all(&vif, &burst[87..]), 13);
    }
}
