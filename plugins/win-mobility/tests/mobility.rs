//! The Windows mobility detector as the host sees it: `cyphonic_win_mobility.dll` loaded
//! with `Plugin::load` (build it first: `cargo build -p cyphonic-win-mobility-plugin
//! --target x86_64-pc-windows-gnu`), on Windows or under Wine. Under Wine the change
//! notifications are stubs (see the crate docs), so these tests cover what does not
//! need a change: options, snapshots (against an independent adapter walk, and under
//! Wine against the Linux host's own tables), the `BUFFER_TOO_SMALL` protocol,
//! timeouts, `wake`, and open/close cycles without leaks.

#![cfg(windows)]
// Raw calls: the C host's view of `snapshot`, and Win32 for the independent checks.
#![allow(unsafe_code)]
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::ffi::{c_char, c_void};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use cyphonic_plugin_abi::{AddrEntry, MobilityPlugin, MobilityVtable, Plugin, PluginKind, Status};
use windows_sys::Win32::Foundation::{CloseHandle, ERROR_BUFFER_OVERFLOW, NO_ERROR};
use windows_sys::Win32::NetworkManagement::IpHelper::{
    GetAdaptersAddresses, IF_TYPE_SOFTWARE_LOOPBACK, IP_ADAPTER_ADDRESSES_LH,
};
use windows_sys::Win32::NetworkManagement::Ndis::IfOperStatusUp;
use windows_sys::Win32::Networking::WinSock::{
    AF_INET, AF_INET6, AF_UNSPEC, SOCKADDR_IN, SOCKADDR_IN6,
};
use windows_sys::Win32::System::Threading::{
    CreateEventW, GetCurrentProcess, GetProcessHandleCount,
};

/// (address, prefix length, interface index): what the snapshot and the checks compare.
type Listed = BTreeSet<(IpAddr, u8, u32)>;
/// IPv6 (address, prefix length, interface index).
type ListedV6 = BTreeSet<(Ipv6Addr, u8, u32)>;

#[test]
fn loads_and_opens_with_and_without_options() {
    let _serial = serial();
    let mobility = loaded();
    assert_eq!(mobility.plugin().name(), "win-mobility");
    assert_eq!(mobility.plugin().kind(), PluginKind::MobilityDetector);
    drop(mobility.open(None).unwrap());
    drop(mobility.open(Some("")).unwrap());
    drop(
        mobility
            .open(Some(
                "# node defaults\ndebounce_ms=100\nignore_ifname=cyphonic\npoll_ms=0\n",
            ))
            .unwrap(),
    );
    // The statically linked header is the same plugin.
    let header = Plugin::from_static(cyphonic_win_mobility::plugin_header(), "static").unwrap();
    assert_eq!(header.name(), "win-mobility");
}

#[test]
fn bad_options_are_refused_naming_the_key() {
    let _serial = serial();
    let mobility = loaded();
    for (options, needle) in [
        ("sensitivity=high", "`sensitivity`"),
        ("debounce_ms=200\nsensitivity=high", "`sensitivity`"),
        ("debounce_ms=soon", "`debounce_ms`"),
        ("debounce_ms=100000", "`debounce_ms`"),
        ("ignore_ifname=", "`ignore_ifname`"),
        ("ignore_ifname", "`ignore_ifname`"),
        ("poll_ms=1", "`poll_ms`"),
    ] {
        let err = mobility.open(Some(options)).expect_err(options);
        assert_eq!(err.status(), Status::INVALID_ARGUMENT, "{err}");
        assert!(err.message().contains(needle), "{options}: {err}");
    }
}

#[test]
fn snapshot_lists_what_the_system_lists() {
    let _serial = serial();
    let h = loaded().open(None).unwrap();
    let snapshot = h.snapshot().unwrap();
    let listed: Listed = snapshot.iter().map(listed).collect();
    assert_eq!(listed.len(), snapshot.len(), "no duplicates: {snapshot:?}");
    assert_eq!(listed, independent_walk(), "{snapshot:?}");
    assert!(
        snapshot
            .iter()
            .all(|e| !e.address().unwrap().0.is_loopback()),
        "{snapshot:?}"
    );

    // Under Wine, the adapters are the Linux host's: the same addresses as Linux lists
    // for its links that are up, except loopback.
    if let Some((v4, v6)) = linux_view() {
        let ours_v4: BTreeSet<Ipv4Addr> = snapshot
            .iter()
            .filter_map(|e| match e.address() {
                Some((IpAddr::V4(a), _)) => Some(a),
                _ => None,
            })
            .collect();
        let ours_v6: ListedV6 = snapshot
            .iter()
            .filter_map(|e| match e.address() {
                Some((IpAddr::V6(a), p)) => Some((a, p, e.ifindex)),
                _ => None,
            })
            .collect();
        assert_eq!(ours_v4, v4, "IPv4 addresses against /proc/net/fib_trie");
        assert_eq!(ours_v6, v6, "IPv6 addresses against /proc/net/if_inet6");
    } else {
        eprintln!("not under Wine on Linux: no host tables to compare with");
    }
}

#[test]
fn snapshot_reports_buffer_too_small_with_the_count_needed() {
    let _serial = serial();
    let mobility = loaded();
    let vtable = raw_vtable(mobility.plugin());
    let mut h: *mut c_void = std::ptr::null_mut();
    // SAFETY: null options, a writable out-pointer.
    let status = unsafe { (vtable.open.unwrap())(std::ptr::null(), &mut h) };
    assert_eq!(status, Status::OK.code());
    assert!(!h.is_null());
    let snapshot = vtable.snapshot.unwrap();
    let needed = mobility.open(None).unwrap().snapshot().unwrap().len();
    assert!(
        needed >= 1,
        "this test needs a non-loopback address that is up"
    );

    let mut count = usize::MAX;
    // SAFETY: a live handle; cap 0 with a null array; a writable count.
    let status = unsafe { snapshot(h, std::ptr::null_mut(), 0, &mut count) };
    assert_eq!(status, Status::BUFFER_TOO_SMALL.code());
    assert_eq!(count, needed);

    let mut out = vec![AddrEntry::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0, 0, 0); needed];
    let mut count = 0;
    // SAFETY: a live handle; `out` has at least `needed - 1` writable entries.
    let status = unsafe { snapshot(h, out.as_mut_ptr(), needed - 1, &mut count) };
    assert_eq!(status, Status::BUFFER_TOO_SMALL.code());
    assert_eq!(count, needed);

    // SAFETY: as above, with room for all.
    let status = unsafe { snapshot(h, out.as_mut_ptr(), needed, &mut count) };
    assert_eq!(status, Status::OK.code());
    assert_eq!(count, needed);
    let listed: Listed = out.iter().map(listed).collect();
    assert_eq!(listed, independent_walk());
    // SAFETY: a handle from `open`, closed once with no call in flight.
    unsafe { (vtable.close.unwrap())(h) };
}

#[test]
fn wait_times_out_with_no_hint() {
    let _serial = serial();
    let h = loaded().open(None).unwrap();
    let start = Instant::now();
    assert_eq!(h.wait(0).unwrap(), 0);
    assert!(start.elapsed() < Duration::from_millis(500));
    let start = Instant::now();
    assert_eq!(h.wait(50).unwrap(), 0);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(45) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[test]
fn wake_ends_a_blocked_wait_and_the_next_one() {
    let _serial = serial();
    let h = Arc::new(loaded().open(Some("debounce_ms=1000")).unwrap());
    let (tx, rx) = mpsc::channel();
    let waiter = {
        let h = Arc::clone(&h);
        std::thread::spawn(move || tx.send(h.wait(-1).unwrap()).unwrap())
    };
    std::thread::sleep(Duration::from_millis(200));
    let woke = Instant::now();
    h.wake().unwrap();
    let got = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("wake did not end the blocked wait");
    assert_eq!(got, 0);
    assert!(
        woke.elapsed() < Duration::from_secs(1),
        "{:?}",
        woke.elapsed()
    );
    waiter.join().unwrap();

    // A wake while nobody waits: the next wait, even forever, returns 0 at once; the one
    // after that waits again.
    h.wake().unwrap();
    let start = Instant::now();
    assert_eq!(h.wait(-1).unwrap(), 0);
    assert!(start.elapsed() < Duration::from_millis(500));
    let start = Instant::now();
    assert_eq!(h.wait(100).unwrap(), 0);
    assert!(
        start.elapsed() >= Duration::from_millis(90),
        "the wake was consumed"
    );
    drop(Arc::into_inner(h).expect("the waiter let go of the handle"));
}

#[test]
fn open_and_close_fifty_times_without_leaks() {
    let _serial = serial();
    let mobility = loaded();
    // Lazy one-time set-up (winsock, IP Helper's threads) is not a leak.
    drop(mobility.open(None).unwrap());
    let (count_before, probe_before) = (handle_count(), handle_probe());
    for round in 0..50 {
        let h = mobility
            .open(Some("debounce_ms=0\nignore_ifname=cyphonic"))
            .unwrap();
        if round % 10 == 0 {
            h.snapshot().unwrap();
            h.wait(0).unwrap();
        }
        drop(h);
    }
    let (count_after, probe_after) = (handle_count(), handle_probe());
    if count_before > 0 {
        // Windows: two events per detector; 50 leaked detectors would show 100.
        assert!(
            count_after <= count_before + 4,
            "handles: {count_before} before, {count_after} after 50 open/close"
        );
    } else {
        // Wine 8 reports 0 handles; a leaked handle would move the lowest free slot
        // that a new handle takes.
        assert_eq!(
            probe_after, probe_before,
            "a new handle lands elsewhere after 50 open/close: something leaked"
        );
    }
    // Still works afterwards.
    let h = mobility.open(None).unwrap();
    assert_eq!(h.snapshot().unwrap().len(), independent_walk().len());
    h.wake().unwrap();
    assert_eq!(h.wait(-1).unwrap(), 0);
}

/// Needs an address change from outside while it waits, hence ignored; under Wine, in a
/// network namespace of its own (a fresh Wine prefix, so that Wine's own processes run
/// in it too):
///
/// ```text
/// ip netns add wm; ip netns exec wm ip link add d0 type ifb; ip netns exec wm ip link set d0 up
/// ip netns exec wm env WINEPREFIX=/tmp/wine-wm <runner> mobility-*.exe --ignored poll_ms &
/// sleep 15; ip netns exec wm ip addr add 198.51.100.7/24 dev d0
/// ```
#[test]
#[ignore = "needs an address change made from outside during the test"]
fn poll_ms_reports_an_address_change() {
    let _serial = serial();
    let h = loaded().open(Some("poll_ms=100\ndebounce_ms=100")).unwrap();
    let before = h.snapshot().unwrap();
    eprintln!("watching; change an address within 60 s");
    let hint = h.wait(60_000).unwrap();
    assert_eq!(hint, cyphonic_plugin_abi::HINT_ADDRESSES_CHANGED);
    let after = h.snapshot().unwrap();
    assert_ne!(before, after);
    eprintln!("reported: {before:?} -> {after:?}");
}

// ---- helpers -------------------------------------------------------------------------

/// One test at a time: the leak check watches the process's handles.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn loaded() -> MobilityPlugin {
    let path = profile_dir().join("cyphonic_win_mobility.dll");
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build -p cyphonic-win-mobility-plugin --target x86_64-pc-windows-gnu` (same target directory and profile) first",
        path.display()
    );
    let plugin = Plugin::load(&path).unwrap_or_else(|e| panic!("{e}"));
    MobilityPlugin::new(plugin).unwrap()
}

/// `target/<triple>/<profile>/`, where Cargo puts the DLL; test executables live in
/// its `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable knows its path");
    let dir = exe.parent().expect("the executable is in a directory");
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.parent().expect("deps/ has a parent").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

fn listed(e: &AddrEntry) -> (IpAddr, u8, u32) {
    let (addr, prefix) = e.address().expect("a valid entry");
    (addr, prefix, e.ifindex)
}

/// The plugin's vtable as a C host reads it from the header (cyphonic_plugin.h), to call
/// `snapshot` with a small array, which the safe wrapper never does.
fn raw_vtable(plugin: &Plugin) -> MobilityVtable {
    #[repr(C)]
    struct RawHeader {
        magic: u32,
        abi_major: u16,
        abi_minor: u16,
        header_size: u32,
        kind: u32,
        name: *const c_char,
        version: *const c_char,
        vtable: *const c_void,
        vtable_size: u32,
    }
    let header: *const RawHeader =
        (plugin.header() as *const cyphonic_plugin_abi::PluginHeader).cast();
    // SAFETY: `PluginHeader` is `#[repr(C)]` and starts with these fields (the C
    // header's `cyphonic_plugin_header`); the loader validated that the vtable is a
    // mobility table of at least its size.
    unsafe {
        assert!((*header).vtable_size as usize >= size_of::<MobilityVtable>());
        (*header).vtable.cast::<MobilityVtable>().read()
    }
}

/// The addresses of the adapters that are up and not loopback, walked here without the
/// plugin's code.
fn independent_walk() -> Listed {
    let mut size = 0u32;
    let mut buf: Vec<u64> = Vec::new();
    loop {
        // SAFETY: `buf` has `size` writable bytes (0 at first, with a null pointer).
        let rc = unsafe {
            GetAdaptersAddresses(
                u32::from(AF_UNSPEC),
                0,
                std::ptr::null(),
                if buf.is_empty() {
                    std::ptr::null_mut()
                } else {
                    buf.as_mut_ptr().cast()
                },
                &mut size,
            )
        };
        match rc {
            NO_ERROR => break,
            ERROR_BUFFER_OVERFLOW => buf = vec![0u64; size as usize / 8 + 1],
            rc => panic!("GetAdaptersAddresses: {rc}"),
        }
    }
    let mut listed = Listed::new();
    let mut adapter = buf.as_ptr().cast::<IP_ADAPTER_ADDRESSES_LH>();
    while !adapter.is_null() {
        // SAFETY: the list the successful call wrote into `buf`.
        let a = unsafe { &*adapter };
        adapter = a.Next;
        if a.IfType == IF_TYPE_SOFTWARE_LOOPBACK || a.OperStatus != IfOperStatusUp {
            continue;
        }
        // SAFETY: a union of integers.
        let if_index = unsafe { a.Anonymous1.Anonymous.IfIndex };
        let mut unicast = a.FirstUnicastAddress;
        while !unicast.is_null() {
            // SAFETY: the adapter's unicast list, in `buf`.
            let u = unsafe { &*unicast };
            unicast = u.Next;
            let sa = u.Address.lpSockaddr;
            // SAFETY: a socket address of the size its family says, in `buf`.
            let addr = unsafe {
                match (*sa).sa_family {
                    AF_INET => IpAddr::V4(Ipv4Addr::from(
                        (*sa.cast::<SOCKADDR_IN>())
                            .sin_addr
                            .S_un
                            .S_addr
                            .to_ne_bytes(),
                    )),
                    AF_INET6 => IpAddr::V6(Ipv6Addr::from(
                        (*sa.cast::<SOCKADDR_IN6>()).sin6_addr.u.Byte,
                    )),
                    _ => continue,
                }
            };
            let index = match addr {
                IpAddr::V6(_) if a.Ipv6IfIndex != 0 => a.Ipv6IfIndex,
                _ => if_index,
            };
            listed.insert((addr, u.OnLinkPrefixLength, index));
        }
    }
    listed
}

/// Under Wine on Linux (where `Z:` is `/`): the host's IPv4 addresses (the local routes
/// of `/proc/net/fib_trie`, which exist for links that are up) and IPv6 addresses with
/// prefix length and interface index (`/proc/net/if_inet6`, links whose operational
/// state is up or unknown), loopback left out. `None` elsewhere.
fn linux_view() -> Option<(BTreeSet<Ipv4Addr>, ListedV6)> {
    let root = Path::new("Z:\\");
    let if_inet6 = std::fs::read_to_string(root.join("proc\\net\\if_inet6")).ok()?;
    let fib_trie = std::fs::read_to_string(root.join("proc\\net\\fib_trie")).ok()?;
    let up = |name: &str| {
        let state =
            std::fs::read_to_string(root.join(format!("sys\\class\\net\\{name}\\operstate")))
                .unwrap_or_default();
        matches!(state.trim(), "up" | "unknown")
    };
    let mut v6 = BTreeSet::new();
    for line in if_inet6.lines() {
        // address, index, prefix length, scope, flags (hex), name
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [addr, index, prefix, _, _, name] = fields[..] else {
            continue;
        };
        if name == "lo" || !up(name) {
            continue;
        }
        let addr = Ipv6Addr::from(u128::from_str_radix(addr, 16).unwrap());
        let index = u32::from_str_radix(index, 16).unwrap();
        let prefix = u8::from_str_radix(prefix, 16).unwrap();
        v6.insert((addr, prefix, index));
    }
    let mut v4 = BTreeSet::new();
    let mut leaf: Option<Ipv4Addr> = None;
    for line in fib_trie.lines() {
        let line = line.trim();
        if let Some(addr) = line.strip_prefix("|-- ") {
            leaf = addr.parse().ok();
        } else if line.starts_with("/32 host LOCAL") {
            if let Some(addr) = leaf.filter(|a| !a.is_loopback()) {
                v4.insert(addr);
            }
        }
    }
    Some((v4, v6))
}

fn handle_count() -> u32 {
    let mut count = 0;
    // SAFETY: the pseudo-handle of this process; a writable count.
    let ok = unsafe { GetProcessHandleCount(GetCurrentProcess(), &mut count) };
    if ok == 0 { 0 } else { count }
}

/// The value a new handle gets: the lowest free slot of the handle table.
fn handle_probe() -> usize {
    // SAFETY: an unnamed auto-reset event without security attributes.
    let event = unsafe { CreateEventW(std::ptr::null(), 0, 0, std::ptr::null()) };
    assert!(!event.is_null());
    // SAFETY: the event just created, closed once.
    unsafe { CloseHandle(event) };
    event as usize
}
