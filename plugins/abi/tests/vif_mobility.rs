//! Toy virtual-interface and mobility-detector plugins exported with the macros and
//! linked statically, driven through `VifPlugin`/`VifHandle` and
//! `MobilityPlugin`/`MobilityHandle`.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cyphonic_plugin_abi::{
    AddrEntry, HINT_ADDRESSES_CHANGED, MobilityDetector, MobilityPlugin, Packet, Plugin,
    PluginFailure, Status, VifDetails, VifPlugin, VifSettings, VirtualInterface,
};

// ---- a loopback interface -----------------------------------------------------------

/// Packets written come back on read. Options: `deny=1` refuses to open, `fd=N` makes
/// `pollable_fd` return N, `tag=T` marks the instance for the close counter.
struct Loopback {
    settings: VifSettings,
    state: Mutex<LoopState>,
    ready: Condvar,
}

#[derive(Default)]
struct LoopState {
    queue: VecDeque<Vec<u8>>,
    woken: bool,
}

static CLOSED_TAGGED: AtomicUsize = AtomicUsize::new(0);
/// The settings of every open, as the plugin decoded them.
static OPENED: Mutex<Vec<VifSettings>> = Mutex::new(Vec::new());

impl Loopback {
    fn state(&self) -> MutexGuard<'_, LoopState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        if self.settings.option("tag") == Some("counted") {
            CLOSED_TAGGED.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl VirtualInterface for Loopback {
    fn open(settings: &VifSettings) -> Result<Self, PluginFailure> {
        if settings.option("deny") == Some("1") {
            return Err(PluginFailure::new(
                Status::PERMISSION_DENIED,
                "needs CAP_NET_ADMIN",
            ));
        }
        OPENED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(settings.clone());
        Ok(Self {
            settings: settings.clone(),
            state: Mutex::default(),
            ready: Condvar::new(),
        })
    }

    fn info(&self) -> Result<VifDetails, PluginFailure> {
        Ok(VifDetails {
            mtu: self.settings.mtu,
            ifindex: 7,
            ifname: self
                .settings
                .ifname
                .clone()
                .unwrap_or_else(|| "loop0".to_owned()),
        })
    }

    fn read_batch(&self, pkts: &mut [Packet<'_>], timeout_ms: i32) -> Result<usize, PluginFailure> {
        let deadline =
            (timeout_ms >= 0).then(|| Instant::now() + Duration::from_millis(timeout_ms as u64));
        let mut state = self.state();
        while state.queue.is_empty() && !state.woken {
            let now = Instant::now();
            match deadline {
                Some(d) if now >= d => return Ok(0),
                Some(d) => {
                    state = self
                        .ready
                        .wait_timeout(state, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner()),
            }
        }
        state.woken = false;
        let mut filled = 0;
        for pkt in pkts.iter_mut() {
            let Some(data) = state.queue.pop_front() else {
                break;
            };
            let n = data.len().min(pkt.room());
            pkt.space_mut()[..n].copy_from_slice(&data[..n]);
            pkt.set_len(n)?;
            filled += 1;
        }
        Ok(filled)
    }

    fn write_batch(&self, pkts: &[Packet<'_>]) -> Result<usize, PluginFailure> {
        let mut state = self.state();
        state.queue.extend(pkts.iter().map(|p| p.data().to_vec()));
        self.ready.notify_all();
        Ok(pkts.len())
    }

    fn pollable_fd(&self) -> Result<i64, PluginFailure> {
        match self.settings.option("fd") {
            Some(fd) => fd
                .parse()
                .map_err(|_| PluginFailure::invalid_argument("fd= is not a number")),
            None => Err(PluginFailure::unsupported("no descriptor")),
        }
    }

    fn wake(&self) -> Result<(), PluginFailure> {
        self.state().woken = true;
        self.ready.notify_all();
        Ok(())
    }
}

mod loopback_plugin {
    cyphonic_plugin_abi::virtual_interface_plugin!(
        name: "loopback",
        version: "0.1.0",
        interface: super::Loopback,
    );
}

fn vif_plugin() -> VifPlugin {
    VifPlugin::new(
        Plugin::from_static(loopback_plugin::plugin_header(), "static:loopback").expect("valid"),
    )
    .expect("a virtual interface")
}

fn settings(options: &str) -> VifSettings {
    VifSettings {
        mtu: 1400,
        ifname: Some("cyph0".to_owned()),
        ipv4: Some((Ipv4Addr::new(100, 64, 0, 2), 10)),
        ipv6: Some(("fd00::2".parse().expect("ipv6"), 64)),
        routes: vec![
            (IpAddr::V4(Ipv4Addr::new(10, 1, 0, 0)), 16),
            (IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
        ],
        options: Some(options.to_owned()),
    }
}

#[test]
fn settings_cross_the_boundary_intact() {
    let wanted = settings("probe=settings\nmode=tun");
    let vif = vif_plugin().open(&wanted).expect("open");
    let opened = OPENED.lock().unwrap_or_else(|e| e.into_inner());
    let seen = opened
        .iter()
        .find(|s| s.option("probe") == Some("settings"));
    assert_eq!(seen, Some(&wanted));
    drop(opened);
    assert_eq!(
        vif.info().expect("info"),
        VifDetails {
            mtu: 1400,
            ifindex: 7,
            ifname: "cyph0".to_owned()
        }
    );
    assert_eq!(wanted.option("mode"), Some("tun"));
}

#[test]
fn packets_written_are_read_back_after_the_headroom() {
    let vif = vif_plugin().open(&settings("")).expect("open");
    let mut bufs = [[0u8; 64]; 3];
    for (i, buf) in bufs.iter_mut().enumerate() {
        buf[8..8 + 10 + i].fill(i as u8 + 1);
    }
    let out: Vec<Packet<'_>> = bufs
        .iter_mut()
        .enumerate()
        .map(|(i, b)| Packet::new(b, 8, 10 + i).expect("slot"))
        .collect();
    assert_eq!(vif.write_batch(&out).expect("write"), 3);
    drop(out);

    let mut rbufs = [[0u8; 40]; 4];
    let mut slots: Vec<Packet<'_>> = rbufs
        .iter_mut()
        .map(|b| Packet::empty(b, 16).expect("slot"))
        .collect();
    assert_eq!(vif.read_batch(&mut slots, 1000).expect("read"), 3);
    for (i, slot) in slots.iter().take(3).enumerate() {
        assert_eq!(slot.offset(), 16);
        assert_eq!(slot.data(), vec![i as u8 + 1; 10 + i].as_slice());
    }
    assert!(slots[3].is_empty());
    drop(slots);
    assert_eq!(rbufs[0][..16], [0; 16], "headroom untouched");

    let mut buf = [0u8; 32];
    let mut slot = [Packet::empty(&mut buf, 0).expect("slot")];
    assert_eq!(vif.read_batch(&mut slot, 0).expect("non-blocking read"), 0);
}

#[test]
fn wake_unblocks_a_reader_on_another_thread() {
    let vif = Arc::new(vif_plugin().open(&settings("")).expect("open"));
    let reader = {
        let vif = Arc::clone(&vif);
        std::thread::spawn(move || {
            let mut buf = [0u8; 32];
            let mut slot = [Packet::empty(&mut buf, 0).expect("slot")];
            vif.read_batch(&mut slot, -1)
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    vif.wake().expect("wake");
    assert_eq!(reader.join().expect("reader thread"), Ok(0));
}

#[test]
fn pollable_fd_is_optional() {
    let plugin = vif_plugin();
    assert_eq!(
        plugin.open(&settings("")).expect("open").pollable_fd(),
        Ok(None)
    );
    assert_eq!(
        plugin.open(&settings("fd=42")).expect("open").pollable_fd(),
        Ok(Some(42))
    );
    let err = plugin
        .open(&settings("fd=x"))
        .expect("open")
        .pollable_fd()
        .unwrap_err();
    assert_eq!(
        (err.status, err.message()),
        (Status::INVALID_ARGUMENT, "fd= is not a number")
    );
}

#[test]
fn open_failures_and_bad_settings_are_reported() {
    let plugin = vif_plugin();
    let err = plugin.open(&settings("deny=1")).unwrap_err();
    assert_eq!(
        (err.status, err.message()),
        (Status::PERMISSION_DENIED, "needs CAP_NET_ADMIN")
    );

    let mut bad = settings("");
    bad.ipv4 = Some((Ipv4Addr::new(10, 0, 0, 1), 33));
    assert_eq!(
        plugin.open(&bad).unwrap_err().status,
        Status::INVALID_ARGUMENT
    );
    let mut bad = settings("");
    bad.ifname = Some("x".repeat(64));
    assert_eq!(
        plugin.open(&bad).unwrap_err().status,
        Status::INVALID_ARGUMENT
    );
}

#[test]
fn dropping_the_handle_closes_the_interface() {
    let vif = vif_plugin().open(&settings("tag=counted")).expect("open");
    assert_eq!(CLOSED_TAGGED.load(Ordering::SeqCst), 0);
    drop(vif);
    assert_eq!(CLOSED_TAGGED.load(Ordering::SeqCst), 1);
}

/// A vif whose `read_batch` claims packets longer than their slots and more slots than
/// given: the host must fix up the slots and report an error.
#[allow(unsafe_code)]
mod garbage_vif {
    use std::ffi::c_void;

    use cyphonic_plugin_abi::{Packet, PluginHeader, VifVtable};

    unsafe extern "C" fn read_batch(
        _h: *mut c_void,
        pkts: *mut Packet<'_>,
        count: usize,
        _timeout_ms: i32,
        out_filled: *mut usize,
    ) -> i32 {
        // SAFETY: the host passes `count` slots and an out-pointer. `Packet` is
        // `repr(C)` `{buf, cap, offset, len}` (checked by the C header test): `len` is the
        // fourth word.
        unsafe {
            for i in 0..count {
                pkts.add(i).cast::<usize>().add(3).write(1 << 40);
            }
            out_filled.write(count + 5);
        }
        0
    }

    pub(crate) fn header() -> &'static PluginHeader {
        let mut vtable = cyphonic_plugin_abi::__private::vif_vtable::<super::Loopback>();
        vtable.read_batch = Some(read_batch);
        let vtable: &'static VifVtable = Box::leak(Box::new(vtable));
        Box::leak(Box::new(PluginHeader::virtual_interface(
            c"garbage-vif",
            c"0",
            vtable,
            None,
        )))
    }
}

#[test]
fn garbage_packet_lengths_from_a_plugin_are_caught() {
    let plugin = VifPlugin::new(
        Plugin::from_static(garbage_vif::header(), "static:garbage-vif").expect("valid"),
    )
    .expect("vif");
    let vif = plugin.open(&settings("")).expect("open");
    let mut buf = [0u8; 32];
    let mut slots = [Packet::empty(&mut buf, 4).expect("slot")];
    let err = vif.read_batch(&mut slots, 0).unwrap_err();
    assert_eq!(err.status, Status::INTERNAL);
    assert_eq!(slots[0].len(), 0, "slot invariant restored");
    assert!(slots[0].data().is_empty());
}

// ---- a scripted mobility detector ---------------------------------------------------

/// Options: `count=N` addresses in snapshots (default 3), `pending=1` reports a change on
/// the first wait.
struct Scripted {
    count: usize,
    state: Mutex<(u32, bool)>,
    changed: Condvar,
}

impl MobilityDetector for Scripted {
    fn open(options: Option<&str>) -> Result<Self, PluginFailure> {
        let opt = |k| options.and_then(|o| cyphonic_plugin_abi::option_value(o, k));
        let count = opt("count")
            .map_or(Ok(3), str::parse)
            .map_err(|_| PluginFailure::invalid_argument("count"))?;
        let pending = if opt("pending") == Some("1") {
            HINT_ADDRESSES_CHANGED
        } else {
            0
        };
        Ok(Self {
            count,
            state: Mutex::new((pending, false)),
            changed: Condvar::new(),
        })
    }

    fn wait(&self, timeout_ms: i32) -> Result<u32, PluginFailure> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.0 == 0 && !state.1 {
            state = if timeout_ms < 0 {
                self.changed
                    .wait_while(state, |s| s.0 == 0 && !s.1)
                    .unwrap_or_else(|e| e.into_inner())
            } else {
                let timeout = Duration::from_millis(timeout_ms as u64);
                self.changed
                    .wait_timeout_while(state, timeout, |s| s.0 == 0 && !s.1)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            };
        }
        let hint = std::mem::take(&mut state.0);
        state.1 = false;
        Ok(hint)
    }

    fn snapshot(&self) -> Result<Vec<AddrEntry>, PluginFailure> {
        Ok((0..self.count)
            .map(|i| {
                AddrEntry::new(
                    IpAddr::V4(Ipv4Addr::new(10, 0, (i / 256) as u8, i as u8)),
                    24,
                    0,
                    i as u32,
                )
            })
            .collect())
    }

    fn wake(&self) -> Result<(), PluginFailure> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.changed.notify_all();
        Ok(())
    }
}

mod scripted_plugin {
    cyphonic_plugin_abi::mobility_detector_plugin!(
        name: "scripted",
        version: "0.1.0",
        detector: super::Scripted,
    );
}

fn mobility() -> MobilityPlugin {
    MobilityPlugin::new(
        Plugin::from_static(scripted_plugin::plugin_header(), "static:scripted").expect("valid"),
    )
    .expect("a mobility detector")
}

#[test]
fn snapshots_larger_than_the_first_guess_arrive_whole() {
    let detector = mobility().open(Some("count=40")).expect("open");
    let entries = detector.snapshot().expect("snapshot");
    assert_eq!(entries.len(), 40);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(
            e.address(),
            Some((IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8)), 24))
        );
        assert_eq!(e.ifindex, i as u32);
    }
    assert_eq!(
        mobility()
            .open(None)
            .expect("open")
            .snapshot()
            .expect("snapshot")
            .len(),
        3
    );
    assert!(
        mobility()
            .open(Some("count=0"))
            .expect("open")
            .snapshot()
            .expect("snapshot")
            .is_empty()
    );
}

#[test]
fn wait_reports_hints_timeouts_and_wakes() {
    let detector = Arc::new(mobility().open(Some("pending=1")).expect("open"));
    assert_eq!(detector.wait(0), Ok(HINT_ADDRESSES_CHANGED));
    assert_eq!(detector.wait(10), Ok(0));
    let waiter = {
        let detector = Arc::clone(&detector);
        std::thread::spawn(move || detector.wait(-1))
    };
    std::thread::sleep(Duration::from_millis(50));
    detector.wake().expect("wake");
    assert_eq!(waiter.join().expect("waiter thread"), Ok(0));
}

#[test]
fn bad_options_are_reported() {
    let err = mobility().open(Some("count=many")).unwrap_err();
    assert_eq!(
        (err.status, err.message()),
        (Status::INVALID_ARGUMENT, "count")
    );
    assert!(mobility().open(Some("a\0b")).is_err());
}
