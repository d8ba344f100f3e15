//! Broken plugin files are contained: the fixtures under `plugins/testing/` panic or
//! return garbage on request (their `fault=` option), and the host, loading them with
//! `Plugin::load` like any plugin, must turn every fault into an error value — `PANIC`
//! from the export glue, `INTERNAL` (or the bogus status itself) from its own checks —
//! without crashing, reading out of bounds or trusting a length, and keep working.
//! (The wrong-ABI file is refused in `crypto_plugins.rs`.)

// The checks are shared helpers rather than `#[test]` functions; a failed unwrap in
// them is a failed test all the same.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cyphonic_plugin_abi::{
    MobilityHandle, MobilityPlugin, Packet, Plugin, PluginError, PluginKind, Status, VifHandle,
    VifPlugin, VifSettings,
};
use cyphonic_plugin_conformance::{BROKEN_MOBILITY, BROKEN_VIF};

const SENTINEL: u8 = 0xa5;
const HEADROOM: usize = 16;
const ROOM: usize = 64;

// ---- virtual interfaces ----------------------------------------------------------------

fn vif() -> VifPlugin {
    let plugin = Plugin::load(&BROKEN_VIF.locate()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plugin.kind(), PluginKind::VirtualInterface);
    VifPlugin::new(plugin).unwrap()
}

fn open_vif(fault: &str) -> Result<VifHandle, PluginError> {
    vif().open(&VifSettings {
        mtu: 1400,
        options: (!fault.is_empty()).then(|| format!("fault={fault}")),
        ..VifSettings::default()
    })
}

/// Writes one packet, which the loopback fixture queues for reading.
fn write(h: &VifHandle, packet: &[u8]) -> Result<usize, PluginError> {
    let mut buf = packet.to_vec();
    let len = buf.len();
    h.write_batch(&[Packet::new(&mut buf, 0, len).unwrap()])
}

/// The outcome of one `read_batch` into two sentinel-filled slots: the result, each
/// slot's (offset, len, data) as the host sees it afterwards, and the raw buffers.
struct Read {
    result: Result<usize, PluginError>,
    slots: Vec<(usize, usize, Vec<u8>)>,
    bufs: Vec<Vec<u8>>,
}

fn read(h: &VifHandle, timeout_ms: i32) -> Read {
    let mut bufs = vec![vec![SENTINEL; HEADROOM + ROOM]; 2];
    let mut slots: Vec<Packet<'_>> = bufs
        .iter_mut()
        .map(|b| Packet::empty(b, HEADROOM).unwrap())
        .collect();
    let result = h.read_batch(&mut slots, timeout_ms);
    let slots = slots
        .iter()
        .map(|p| (p.offset(), p.len(), p.data().to_vec()))
        .collect();
    Read {
        result,
        slots,
        bufs,
    }
}

/// `err` is `status` with `needle` in its message.
fn assert_error(err: &PluginError, status: Status, needle: &str) {
    assert_eq!(err.status, status, "{err}");
    assert!(err.message().contains(needle), "`{needle}` not in: {err}");
}

fn assert_panic(result: Result<impl std::fmt::Debug, PluginError>, fault: &str) {
    let err = result.expect_err(fault);
    assert_error(&err, Status::PANIC, "panicked");
    assert!(err.message().contains("on purpose"), "{fault}: {err}");
}

/// Packets written come back after the headroom, and the handle is still whole.
fn assert_loops_back(h: &VifHandle) {
    assert_eq!(write(h, b"still-alive"), Ok(1));
    let r = read(h, 1000);
    assert_eq!(r.result, Ok(1));
    assert_eq!(r.slots[0], (HEADROOM, 11, b"still-alive".to_vec()));
    assert!(r.bufs[0][..HEADROOM].iter().all(|&b| b == SENTINEL));
    assert!(r.bufs[0][HEADROOM + 11..].iter().all(|&b| b == SENTINEL));
    assert_eq!(r.slots[1].1, 0);
}

/// The fixture works when asked to, so the failures below are its faults.
#[test]
fn broken_vif_without_a_fault_is_a_working_loopback() {
    let h = Arc::new(open_vif("").unwrap());
    let info = h.info().unwrap();
    assert_eq!((info.ifname.as_str(), info.mtu), ("broken0", 1400));
    assert_eq!(read(&h, 0).result, Ok(0));
    assert_loops_back(&h);
    let reader = {
        let h = Arc::clone(&h);
        std::thread::spawn(move || read(&h, -1).result)
    };
    std::thread::sleep(Duration::from_millis(50));
    h.wake().unwrap();
    assert_eq!(reader.join().unwrap(), Ok(0));
    let err = open_vif("no-such-fault").unwrap_err();
    assert_error(&err, Status::INVALID_ARGUMENT, "no-such-fault");
}

#[test]
fn vif_panics_become_panic_errors_and_the_handle_survives() {
    assert_panic(open_vif("panic-open"), "panic-open");

    let h = open_vif("panic-info").unwrap();
    assert_panic(h.info(), "panic-info");
    assert_loops_back(&h);

    let h = open_vif("panic-read").unwrap();
    assert_eq!(write(&h, b"queued"), Ok(1));
    let r = read(&h, 1000);
    assert_panic(r.result, "panic-read");
    assert!(r.slots.iter().all(|s| s.1 == 0), "{:?}", r.slots);
    assert!(r.bufs.iter().flatten().all(|&b| b == SENTINEL));
    assert_eq!(h.info().unwrap().ifname, "broken0");

    let h = open_vif("panic-write").unwrap();
    assert_panic(write(&h, b"dropped"), "panic-write");
    assert_eq!(read(&h, 0).result, Ok(0), "a panicked write queued nothing");

    let h = open_vif("panic-wake").unwrap();
    assert_panic(h.wake(), "panic-wake");
    assert_loops_back(&h);

    // A panic in close is swallowed: the host's drop returns and the plugin still works.
    drop(open_vif("panic-close").unwrap());
    assert_loops_back(&open_vif("").unwrap());
}

#[test]
fn vif_open_without_a_handle_is_an_error() {
    let err = open_vif("null-handle").unwrap_err();
    assert_error(&err, Status::INTERNAL, "without returning a handle");
}

#[test]
fn vif_packet_lengths_past_the_buffer_are_caught() {
    for fault in ["len-past-cap", "huge-len", "offset-past-cap"] {
        let h = open_vif(fault).unwrap();
        assert_eq!(write(&h, b"0123456789"), Ok(1));
        let r = read(&h, 1000);
        let err = r.result.expect_err(fault);
        assert_error(&err, Status::INTERNAL, "past the buffers");
        // The slots are whole again: no length or offset past the buffer survives.
        for (offset, len, data) in &r.slots {
            assert!(*offset <= HEADROOM + ROOM, "{fault}: offset {offset}");
            assert_eq!((*len, data.len()), (0, 0), "{fault}");
        }
        // Only the slot's own bytes were written, by the glue, before the shim lied.
        assert!(r.bufs[0][..HEADROOM].iter().all(|&b| b == SENTINEL));
        assert_eq!(&r.bufs[0][HEADROOM..HEADROOM + 10], b"0123456789");
        assert!(r.bufs[0][HEADROOM + 10..].iter().all(|&b| b == SENTINEL));
        assert!(r.bufs[1].iter().all(|&b| b == SENTINEL));
    }
}

#[test]
fn vif_counts_past_the_batch_are_caught() {
    let h = open_vif("filled-past-count").unwrap();
    assert_eq!(write(&h, b"one"), Ok(1));
    let err = read(&h, 1000).result.unwrap_err();
    assert_error(&err, Status::INTERNAL, "past the buffers");

    let h = open_vif("written-past-count").unwrap();
    let err = write(&h, b"one").unwrap_err();
    assert_error(&err, Status::INTERNAL, "more packets than given");
}

#[test]
fn vif_garbage_info_is_caught() {
    for (fault, needle) in [
        ("info-no-nul", "not NUL-terminated"),
        ("info-bad-utf8", "not UTF-8"),
        ("info-short", "struct_size too small"),
    ] {
        let h = open_vif(fault).unwrap();
        let err = h.info().expect_err(fault);
        assert_error(&err, Status::INTERNAL, needle);
        assert_loops_back(&h);
    }
}

#[test]
fn vif_unknown_status_is_an_error() {
    let h = open_vif("unknown-status").unwrap();
    assert_eq!(write(&h, b"x"), Ok(1));
    let r = read(&h, 1000);
    let err = r.result.unwrap_err();
    assert_eq!(err.status, Status(4242), "{err}");
    assert!(!err.status.is_ok());
}

// ---- mobility detectors ----------------------------------------------------------------

fn mobility() -> MobilityPlugin {
    let plugin = Plugin::load(&BROKEN_MOBILITY.locate()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plugin.kind(), PluginKind::MobilityDetector);
    MobilityPlugin::new(plugin).unwrap()
}

fn open_mobility(fault: &str) -> Result<MobilityHandle, PluginError> {
    let options = format!("fault={fault}");
    mobility().open((!fault.is_empty()).then_some(options.as_str()))
}

/// The fixture's two addresses come out, and `wait` does not block.
fn assert_works(h: &MobilityHandle) {
    let snapshot = h.snapshot().unwrap();
    let addresses: Vec<_> = snapshot.iter().map(|e| e.address()).collect();
    assert_eq!(
        addresses,
        [
            Some(("198.51.100.1".parse().unwrap(), 24)),
            Some(("2001:db8::1".parse().unwrap(), 64))
        ]
    );
    assert_eq!(h.wait(0), Ok(0));
}

#[test]
fn broken_mobility_without_a_fault_works() {
    let h = Arc::new(open_mobility("").unwrap());
    assert_works(&h);
    let waiter = {
        let h = Arc::clone(&h);
        std::thread::spawn(move || h.wait(-1))
    };
    std::thread::sleep(Duration::from_millis(50));
    h.wake().unwrap();
    assert_eq!(waiter.join().unwrap(), Ok(0));
    let err = open_mobility("no-such-fault").unwrap_err();
    assert_error(&err, Status::INVALID_ARGUMENT, "no-such-fault");
}

#[test]
fn mobility_panics_become_panic_errors_and_the_handle_survives() {
    assert_panic(open_mobility("panic-open"), "panic-open");

    let h = open_mobility("panic-wait").unwrap();
    assert_panic(h.wait(0), "panic-wait");
    assert_eq!(h.snapshot().unwrap().len(), 2);

    let h = open_mobility("panic-snapshot").unwrap();
    assert_panic(h.snapshot(), "panic-snapshot");
    assert_eq!(h.wait(0), Ok(0));

    let h = open_mobility("panic-wake").unwrap();
    assert_panic(h.wake(), "panic-wake");
    assert_works(&h);

    drop(open_mobility("panic-close").unwrap());
    assert_works(&open_mobility("").unwrap());
}

#[test]
fn mobility_open_without_a_handle_is_an_error() {
    let err = open_mobility("null-handle").unwrap_err();
    assert_error(&err, Status::INTERNAL, "without returning a handle");
}

#[test]
fn mobility_snapshot_counts_past_the_array_are_caught() {
    for fault in ["count-past-cap", "huge-count"] {
        let h = open_mobility(fault).unwrap();
        let err = h.snapshot().expect_err(fault);
        assert_error(&err, Status::INTERNAL, "more entries than cap");
        assert_eq!(h.wait(0), Ok(0), "{fault}: the handle still works");
    }
}

#[test]
fn mobility_snapshots_that_never_fit_end_in_an_error() {
    // A million entries: the host refuses to allocate for them.
    let h = open_mobility("too-many").unwrap();
    let start = Instant::now();
    let err = h.snapshot().unwrap_err();
    assert_eq!(err.status, Status::BUFFER_TOO_SMALL, "{err}");
    // Always one more than offered: the host gives up after a few tries.
    let h = open_mobility("always-too-small").unwrap();
    let err = h.snapshot().unwrap_err();
    assert_eq!(err.status, Status::BUFFER_TOO_SMALL, "{err}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn mobility_garbage_entries_are_not_addresses() {
    let h = open_mobility("garbage-entries").unwrap();
    let snapshot = h.snapshot().unwrap();
    assert_eq!(snapshot.len(), 2);
    for entry in &snapshot {
        assert_eq!((entry.family, entry.prefix_len), (0xee, 0xff));
        assert_eq!(entry.address(), None, "{entry:?}");
    }
}

#[test]
fn mobility_unknown_status_is_an_error() {
    let h = open_mobility("unknown-status").unwrap();
    let err = h.wait(0).unwrap_err();
    assert_eq!(err.status, Status(4242), "{err}");
    assert_eq!(h.snapshot().unwrap().len(), 2);
}
