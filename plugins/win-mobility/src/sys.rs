//! The Win32 side: the events `wait` blocks on ([`Event`], [`wait_any`]), the IP Helper
//! change registrations and their callbacks ([`Watch`], feeding [`Shared`]), and the
//! table walks (`GetAdaptersAddresses` → [`adapters`], `GetIpInterfaceTable` →
//! [`interfaces`]), turned into the plain data of `model`.
//!
//! The callbacks run on IP Helper's threads with a pointer to the [`Shared`] state as
//! context. [`Watch`] owns both the registrations and that state, and its `Drop` cancels
//! every registration (`CancelMibChangeNotify2`, which waits for callbacks in progress)
//! before the state can be freed. The callbacks never unwind: they only read the row,
//! lock a mutex, push into pre-allocated room and set an event, inside `catch_unwind`.

#![allow(unsafe_code)]

use std::ffi::{CStr, c_void};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use std::panic::AssertUnwindSafe;
use std::ptr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use windows_sys::Win32::Foundation::{
    ERROR_BUFFER_OVERFLOW, ERROR_NO_DATA, FALSE, HANDLE, NO_ERROR, WAIT_OBJECT_0, WAIT_TIMEOUT,
    WIN32_ERROR,
};
use windows_sys::Win32::NetworkManagement::IpHelper::{
    CancelMibChangeNotify2, FreeMibTable, GAA_FLAG_SKIP_ANYCAST, GAA_FLAG_SKIP_DNS_INFO,
    GAA_FLAG_SKIP_DNS_SERVER, GAA_FLAG_SKIP_MULTICAST, GetAdaptersAddresses, GetIpInterfaceTable,
    IF_TYPE_SOFTWARE_LOOPBACK, IP_ADAPTER_ADDRESSES_LH, MIB_IPFORWARD_ROW2, MIB_IPINTERFACE_ROW,
    MIB_IPINTERFACE_TABLE, MIB_NOTIFICATION_TYPE, MIB_UNICASTIPADDRESS_ROW, MibAddInstance,
    MibDeleteInstance, MibInitialNotification, MibParameterNotification, NotifyIpInterfaceChange,
    NotifyRouteChange2, NotifyUnicastIpAddressChange,
};
use windows_sys::Win32::NetworkManagement::Ndis::IfOperStatusUp;
use windows_sys::Win32::Networking::WinSock::{
    AF_INET, AF_INET6, AF_UNSPEC, SOCKADDR_IN, SOCKADDR_IN6, SOCKET_ADDRESS,
};
use windows_sys::Win32::System::Threading::{
    CreateEventW, INFINITE, ResetEvent, SetEvent, WaitForMultipleObjects,
};

use crate::model::{Adapter, Change, IfEvent, IfKey, Inbox, Unicast};

/// A failed Win32 call: which one, and its error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Win32Error {
    pub(crate) call: &'static str,
    pub(crate) code: u32,
}

impl fmt::Display for Win32Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Win32 codes are the raw OS errors of `io::Error` on Windows; it has the text.
        let text = io::Error::from_raw_os_error(self.code as i32);
        write!(f, "{}: {text}", self.call)
    }
}

fn check(call: &'static str, code: WIN32_ERROR) -> Result<(), Win32Error> {
    if code == NO_ERROR {
        Ok(())
    } else {
        Err(Win32Error { call, code })
    }
}

/// An auto-reset event.
#[derive(Debug)]
pub(crate) struct Event(OwnedHandle);

impl Event {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: no security attributes and no name (both may be null); an auto-reset
        // event, initially not signalled.
        let handle = unsafe { CreateEventW(ptr::null(), FALSE, FALSE, ptr::null()) };
        if handle.is_null() {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh event handle that nothing else owns.
        Ok(Self(unsafe { OwnedHandle::from_raw_handle(handle) }))
    }

    pub(crate) fn set(&self) -> io::Result<()> {
        // SAFETY: a live event handle owned by `self`.
        if unsafe { SetEvent(self.raw()) } == FALSE {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Drops a pending signal; failing (it cannot, on a valid handle) costs at most one
    /// spurious early return of a later `wait`.
    pub(crate) fn reset(&self) {
        // SAFETY: a live event handle owned by `self`.
        unsafe { ResetEvent(self.raw()) };
    }

    fn raw(&self) -> HANDLE {
        self.0.as_raw_handle()
    }
}

/// Which event ended [`wait_any`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    Wake,
    Changed,
    Timeout,
}

/// Blocks until `wake` or `changed` is signalled (consuming the signal; `wake` wins
/// when both are) or `timeout` (`None`: forever) passes.
pub(crate) fn wait_any(
    wake: &Event,
    changed: &Event,
    timeout: Option<Duration>,
) -> io::Result<Signal> {
    let handles = [wake.raw(), changed.raw()];
    // Round up, so that a wait never ends just before what it waited for is due; stay
    // below INFINITE.
    let ms = timeout.map_or(INFINITE, |d| {
        u32::try_from(d.as_micros().div_ceil(1000)).map_or(INFINITE - 1, |ms| ms.min(INFINITE - 1))
    });
    // SAFETY: two live event handles, borrowed for the call.
    let rc = unsafe { WaitForMultipleObjects(2, handles.as_ptr(), FALSE, ms) };
    match rc {
        WAIT_OBJECT_0 => Ok(Signal::Wake),
        rc if rc == WAIT_OBJECT_0 + 1 => Ok(Signal::Changed),
        WAIT_TIMEOUT => Ok(Signal::Timeout),
        _ => Err(io::Error::last_os_error()),
    }
}

/// What the callbacks share with `wait`: the queue of changes and the event that says
/// it is not empty.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) changed: Event,
    inbox: Mutex<Inbox>,
}

impl Shared {
    /// Hands the queued changes over (see [`Inbox::take`]); `true` if some were lost.
    pub(crate) fn take(&self, spare: &mut Vec<Change>) -> bool {
        // A panic while the lock was held left at worst a change more or less.
        self.inbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(spare)
    }

    fn deliver(&self, change: Change) {
        self.inbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(change);
        // Nothing to do about a failure here; the next change or poll tries again.
        let _ = self.changed.set();
    }
}

/// The three change registrations (addresses, routes, IP interfaces; both families)
/// and the state their callbacks write to. Dropping it cancels the registrations first.
#[derive(Debug)]
pub(crate) struct Watch {
    registrations: Vec<Registration>,
    shared: Arc<Shared>,
}

impl Watch {
    /// Registers the callbacks, without initial notifications (`open` takes its own
    /// snapshot of the state).
    pub(crate) fn start() -> Result<Self, WatchError> {
        let shared = Arc::new(Shared {
            changed: Event::new().map_err(WatchError::Event)?,
            inbox: Mutex::new(Inbox::new()),
        });
        let mut watch = Watch {
            registrations: Vec::with_capacity(3),
            shared,
        };
        let context = Arc::as_ptr(&watch.shared).cast::<c_void>();
        let mut handle: HANDLE = ptr::null_mut();
        // SAFETY: a callback of the right signature; `context` points at the `Shared`
        // that `watch` keeps alive until its `Drop` has cancelled this registration;
        // `handle` is writable.
        let rc = unsafe {
            NotifyUnicastIpAddressChange(AF_UNSPEC, Some(on_address), context, false, &mut handle)
        };
        check("NotifyUnicastIpAddressChange", rc).map_err(WatchError::Register)?;
        watch.registrations.push(Registration(handle));
        let mut handle: HANDLE = ptr::null_mut();
        // SAFETY: as above.
        let rc =
            unsafe { NotifyRouteChange2(AF_UNSPEC, Some(on_route), context, false, &mut handle) };
        check("NotifyRouteChange2", rc).map_err(WatchError::Register)?;
        watch.registrations.push(Registration(handle));
        let mut handle: HANDLE = ptr::null_mut();
        // SAFETY: as above.
        let rc = unsafe {
            NotifyIpInterfaceChange(AF_UNSPEC, Some(on_interface), context, false, &mut handle)
        };
        check("NotifyIpInterfaceChange", rc).map_err(WatchError::Register)?;
        watch.registrations.push(Registration(handle));
        Ok(watch)
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // Cancel (waiting for running callbacks) before `shared` may go.
        self.registrations.clear();
    }
}

/// Why [`Watch::start`] failed.
#[derive(Debug)]
pub(crate) enum WatchError {
    Event(io::Error),
    Register(Win32Error),
}

/// A change registration; dropping it cancels it.
#[derive(Debug)]
struct Registration(HANDLE);

// SAFETY: the handle is an opaque token IP Helper hands out and takes back in
// `CancelMibChangeNotify2`, from any thread; it is never dereferenced here.
unsafe impl Send for Registration {}
// SAFETY: as above; `&Registration` allows nothing at all.
unsafe impl Sync for Registration {}

impl Drop for Registration {
    fn drop(&mut self) {
        // Wine 8 hands out null handles (its registrations are stubs): nothing to cancel.
        if self.0.is_null() {
            return;
        }
        // SAFETY: a handle from a successful `Notify*` call, cancelled exactly once.
        // `CancelMibChangeNotify2` returns once no callback of it runs any more.
        let rc = unsafe { CancelMibChangeNotify2(self.0) };
        if rc != NO_ERROR {
            tracing::warn!(code = rc, "win-mobility: CancelMibChangeNotify2 failed");
        }
    }
}

unsafe extern "system" fn on_address(
    context: *const c_void,
    row: *const MIB_UNICASTIPADDRESS_ROW,
    kind: MIB_NOTIFICATION_TYPE,
) {
    if kind == MibInitialNotification {
        return;
    }
    let change = if row.is_null() {
        Change::Unknown
    } else {
        // SAFETY: a non-null row is valid for the duration of the callback.
        let index = unsafe { (*row).InterfaceIndex };
        Change::Address { index }
    };
    // SAFETY: `context` is the one `Watch::start` registered (callback contract).
    unsafe { deliver(context, change) };
}

unsafe extern "system" fn on_route(
    context: *const c_void,
    row: *const MIB_IPFORWARD_ROW2,
    kind: MIB_NOTIFICATION_TYPE,
) {
    if kind == MibInitialNotification {
        return;
    }
    let change = if row.is_null() {
        Change::Unknown
    } else {
        // SAFETY: a non-null row is valid for the duration of the callback.
        let row = unsafe { &*row };
        // Only default routes tell about reachability; an address change brings a
        // handful of host and subnet routes, which the address hint covers.
        if row.DestinationPrefix.PrefixLength != 0 {
            return;
        }
        Change::DefaultRoute {
            index: row.InterfaceIndex,
        }
    };
    // SAFETY: as in `on_address`.
    unsafe { deliver(context, change) };
}

unsafe extern "system" fn on_interface(
    context: *const c_void,
    row: *const MIB_IPINTERFACE_ROW,
    kind: MIB_NOTIFICATION_TYPE,
) {
    if kind == MibInitialNotification {
        return;
    }
    let change = if row.is_null() {
        Change::Unknown
    } else {
        // SAFETY: a non-null row is valid for the duration of the callback.
        let row = unsafe { &*row };
        let connected = row.Connected;
        let event = if kind == MibAddInstance {
            Some(IfEvent::Appeared { connected })
        } else if kind == MibParameterNotification {
            Some(IfEvent::Changed { connected })
        } else if kind == MibDeleteInstance {
            // Only the key fields of a deleted row are meaningful.
            Some(IfEvent::Gone)
        } else {
            None
        };
        match event {
            Some(event) => Change::Interface {
                family: row.Family,
                index: row.InterfaceIndex,
                event,
            },
            None => Change::Unknown,
        }
    };
    // SAFETY: as in `on_address`.
    unsafe { deliver(context, change) };
}

/// Queues `change` for `wait`.
///
/// # Safety
/// `context` is null or the `Arc::as_ptr` of a `Shared` that stays alive for the call.
unsafe fn deliver(context: *const c_void, change: Change) {
    if context.is_null() {
        return;
    }
    // Unwinding into IP Helper's thread would abort the process; nothing here panics
    // short of a bug, and a bug costs one lost change.
    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the caller's promise: a live `Shared`.
        let shared = unsafe { &*context.cast::<Shared>() };
        shared.deliver(change);
    }));
}

/// Every adapter with its unicast addresses (`GetAdaptersAddresses`, both families).
pub(crate) fn adapters() -> Result<Vec<Adapter>, Win32Error> {
    const CALL: &str = "GetAdaptersAddresses";
    let flags = GAA_FLAG_SKIP_ANYCAST
        | GAA_FLAG_SKIP_MULTICAST
        | GAA_FLAG_SKIP_DNS_SERVER
        | GAA_FLAG_SKIP_DNS_INFO;
    // Microsoft's advice: start at 15 KB, which is enough almost everywhere.
    let mut size: u32 = 16 * 1024;
    for _ in 0..4 {
        // u64 elements: the structures need 8-byte alignment.
        let mut buf = vec![0u64; (size as usize).div_ceil(8)];
        let mut len = u32::try_from(buf.len() * 8).unwrap_or(u32::MAX);
        // SAFETY: `buf` has `len` writable bytes, aligned for the structures; the call
        // writes at most `len` bytes and updates `len`.
        let rc = unsafe {
            GetAdaptersAddresses(
                u32::from(AF_UNSPEC),
                flags,
                ptr::null(),
                buf.as_mut_ptr().cast(),
                &mut len,
            )
        };
        match rc {
            NO_ERROR => {
                // SAFETY: the call succeeded: `buf` holds the list it wrote, alive for
                // the parse.
                return Ok(unsafe { parse_adapters(buf.as_ptr().cast()) });
            }
            ERROR_NO_DATA => return Ok(Vec::new()),
            // Adapters may appear between the calls: leave some room.
            ERROR_BUFFER_OVERFLOW => size = len.max(size).saturating_add(4096),
            code => return Err(Win32Error { call: CALL, code }),
        }
    }
    Err(Win32Error {
        call: CALL,
        code: ERROR_BUFFER_OVERFLOW,
    })
}

/// # Safety
/// `next` is null or the head of an adapter list written by `GetAdaptersAddresses`,
/// alive for the call.
unsafe fn parse_adapters(mut next: *const IP_ADAPTER_ADDRESSES_LH) -> Vec<Adapter> {
    let mut adapters = Vec::new();
    while !next.is_null() {
        // SAFETY: a node of the list (caller's promise).
        let a = unsafe { &*next };
        let mut unicast = Vec::new();
        let mut u = a.FirstUnicastAddress.cast_const();
        while !u.is_null() {
            // SAFETY: a node of the adapter's unicast list, in the same buffer.
            let ua = unsafe { &*u };
            // SAFETY: the address points into the same buffer, `iSockaddrLength` long.
            if let Some(addr) = unsafe { socket_ip(&ua.Address) } {
                unicast.push(Unicast {
                    addr,
                    prefix_len: ua.OnLinkPrefixLength,
                    dad_state: ua.DadState,
                    suffix_origin: ua.SuffixOrigin,
                });
            }
            u = ua.Next.cast_const();
        }
        adapters.push(Adapter {
            // SAFETY: both members of the union are plain integers over the same bytes.
            if_index: unsafe { a.Anonymous1.Anonymous.IfIndex },
            ipv6_if_index: a.Ipv6IfIndex,
            // SAFETY: null or a NUL-terminated string in the same buffer.
            name: unsafe { ansi(a.AdapterName) },
            // SAFETY: null or a NUL-terminated wide string in the same buffer.
            alias: unsafe { wide(a.FriendlyName) },
            loopback: a.IfType == IF_TYPE_SOFTWARE_LOOPBACK,
            up: a.OperStatus == IfOperStatusUp,
            unicast,
        });
        next = a.Next.cast_const();
    }
    adapters
}

/// # Safety
/// `sa.lpSockaddr` is null or points at `sa.iSockaddrLength` readable bytes.
unsafe fn socket_ip(sa: &SOCKET_ADDRESS) -> Option<IpAddr> {
    let ptr = sa.lpSockaddr.cast_const();
    let len = usize::try_from(sa.iSockaddrLength).ok()?;
    if ptr.is_null() || len < size_of::<u16>() {
        return None;
    }
    // SAFETY: at least the family field is readable (checked above).
    let family = unsafe { (*ptr).sa_family };
    match family {
        AF_INET if len >= size_of::<SOCKADDR_IN>() => {
            // SAFETY: a SOCKADDR_IN's worth of bytes (checked), as its family says.
            let sin = unsafe { &*ptr.cast::<SOCKADDR_IN>() };
            // SAFETY: every member of the union is the same four bytes.
            let raw = unsafe { sin.sin_addr.S_un.S_addr };
            // Network byte order in memory: the bytes as they lie.
            Some(IpAddr::V4(Ipv4Addr::from(raw.to_ne_bytes())))
        }
        AF_INET6 if len >= size_of::<SOCKADDR_IN6>() => {
            // SAFETY: a SOCKADDR_IN6's worth of bytes (checked), as its family says.
            let sin6 = unsafe { &*ptr.cast::<SOCKADDR_IN6>() };
            // SAFETY: every member of the union is the same sixteen bytes.
            let bytes = unsafe { sin6.sin6_addr.u.Byte };
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

/// # Safety
/// `s` is null or a NUL-terminated string.
unsafe fn ansi(s: *const u8) -> String {
    if s.is_null() {
        return String::new();
    }
    // SAFETY: the caller's promise.
    unsafe { CStr::from_ptr(s.cast()) }
        .to_string_lossy()
        .into_owned()
}

/// # Safety
/// `s` is null or a NUL-terminated UTF-16 string.
unsafe fn wide(s: *const u16) -> String {
    if s.is_null() {
        return String::new();
    }
    // Aliases have at most 256 characters; the bound only guards against a missing NUL.
    let mut len = 0;
    // SAFETY: every unit up to and including the NUL is readable (caller's promise).
    while len < 1024 && unsafe { *s.add(len) } != 0 {
        len += 1;
    }
    // SAFETY: the `len` units before the NUL, read above.
    String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(s, len) })
}

/// Whether each IP interface is connected (`GetIpInterfaceTable`).
/// Wine 8 answers `ERROR_NOT_SUPPORTED`.
pub(crate) fn interfaces() -> Result<Vec<(IfKey, bool)>, Win32Error> {
    let mut table: *mut MIB_IPINTERFACE_TABLE = ptr::null_mut();
    // SAFETY: `table` is writable; on success it points at a table we free below.
    let rc = unsafe { GetIpInterfaceTable(AF_UNSPEC, &mut table) };
    check("GetIpInterfaceTable", rc)?;
    if table.is_null() {
        return Ok(Vec::new());
    }
    // SAFETY: a table from a successful call: `NumEntries` rows follow in place of the
    // one-element array.
    let rows = unsafe {
        std::slice::from_raw_parts((*table).Table.as_ptr(), (*table).NumEntries as usize)
    };
    let interfaces = rows
        .iter()
        .map(|row| ((row.Family, row.InterfaceIndex), row.Connected))
        .collect();
    // SAFETY: the table came from `GetIpInterfaceTable`, is freed once and not used
    // afterwards (`rows` ends above).
    unsafe { FreeMibTable(table.cast_const().cast()) };
    Ok(interfaces)
}
