//! The raw C ABI, version 1.0: constants and the `#[repr(C)]` structs and function tables
//! that cross the plugin boundary. `include/cyphonic_plugin.h` is the same contract in C;
//! `tests/c_header.rs` keeps the two in sync.
//!
//! Rules every item here follows: only primitives, `#[repr(C)]` structs and nullable
//! function pointers cross; results are `i32` status codes; the caller owns buffers;
//! new functions and fields are only ever appended; every struct the host sizes-checks
//! starts with a `struct_size` (the header with `header_size`). Array elements
//! ([`CryptoOp`], [`Packet`], [`Route`], [`AddrEntry`]) have no size field: their layout
//! is frozen for a major version.

#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_void};
use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::status::{PluginFailure, Status};

/// `PluginHeader::magic`: the bytes `"CPYH"` when read from memory on a little-endian
/// machine.
pub const MAGIC: u32 = 0x4859_5043;
/// The major ABI version this crate speaks. It is also in the entry symbol's name.
pub const ABI_MAJOR: u16 = 1;
/// The minor ABI version this crate speaks. Minors only append.
pub const ABI_MINOR: u16 = 0;
/// The symbol a plugin shared library exports (see [`EntryFn`]).
pub const ENTRY_SYMBOL: &str = "cyphonic_plugin_entry_v1";

/// `PluginHeader::kind`: a virtual network interface ([`VifVtable`]).
pub const KIND_VIRTUAL_INTERFACE: u32 = 1;
/// `PluginHeader::kind`: an AEAD crypto suite ([`CryptoVtable`]).
pub const KIND_CRYPTO_SUITE: u32 = 2;
/// `PluginHeader::kind`: a network change (mobility) detector ([`MobilityVtable`]).
pub const KIND_MOBILITY_DETECTOR: u32 = 3;

/// `CryptoInfo::suite_id` values, the registered suite numbers of the handshake.
pub const SUITE_AES_256_GCM: u32 = 1;
pub const SUITE_CHACHA20_POLY1305: u32 = 2;
pub const SUITE_AES_256_CTR_HMAC_SHA256: u32 = 3;

/// The nonce length every suite of ABI 1 uses ([`CryptoOp`] has a fixed 12-byte nonce).
pub const NONCE_LEN: usize = 12;

/// Bits of the hint `MobilityVtable::wait` returns.
pub const HINT_ADDRESSES_CHANGED: u32 = 1;
pub const HINT_ROUTES_CHANGED: u32 = 2;

/// Bits of `AddrEntry::flags`.
/// A temporary (privacy) IPv6 address.
pub const ADDR_FLAG_TEMPORARY: u16 = 1;
/// A deprecated address: still valid, not to be used for new traffic.
pub const ADDR_FLAG_DEPRECATED: u16 = 2;
/// A tentative address (duplicate address detection still running): not usable yet.
pub const ADDR_FLAG_TENTATIVE: u16 = 4;

/// Address families in [`Route`] and [`AddrEntry`].
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// Size of `VifInfo::ifname`, including the terminating NUL.
pub const VIF_IFNAME_LEN: usize = 64;

/// A `timeout_ms` that never expires (only `wake` or an event ends the wait).
pub const TIMEOUT_INFINITE: i32 = -1;

/// The entry point `cyphonic_plugin_entry_v1`. It returns a pointer to a header that
/// stays valid, unchanged, for the life of the process. Entry points of every major
/// version have this signature and their headers start with the same 12 bytes
/// (`magic`, `abi_major`, `abi_minor`, `header_size`), so a host can tell which version a
/// plugin was built for.
pub type EntryFn = extern "C" fn() -> *const PluginHeader;

/// Copies the UTF-8 message of the last failed call made on the calling thread into
/// `buf[..min(len, cap)]` (no NUL) and returns its full length (0: no message).
pub type LastErrorFn = unsafe extern "C" fn(buf: *mut u8, cap: usize) -> usize;

/// What the entry point returns. Built by the `*_plugin!` macros; its fields are private
/// so a header made in safe code always points at a vtable of the type its `kind` says.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PluginHeader {
    pub(crate) magic: u32,
    pub(crate) abi_major: u16,
    pub(crate) abi_minor: u16,
    pub(crate) header_size: u32,
    pub(crate) kind: u32,
    pub(crate) name: *const c_char,
    pub(crate) version: *const c_char,
    pub(crate) vtable: *const c_void,
    pub(crate) vtable_size: u32,
    pub(crate) reserved: u32,
    pub(crate) last_error: Option<LastErrorFn>,
}

// SAFETY: a header is immutable once built and every pointer in it refers to immutable
// `'static` data (C strings, a vtable of fn pointers): the safe constructors take
// `&'static` references, `from_raw_parts` makes its caller promise the same.
unsafe impl Sync for PluginHeader {}
// SAFETY: as for `Sync`: nothing in a header is tied to a thread.
unsafe impl Send for PluginHeader {}

impl PluginHeader {
    /// A header for a crypto-suite plugin.
    pub const fn crypto_suite(
        name: &'static CStr,
        version: &'static CStr,
        vtable: &'static CryptoVtable,
        last_error: Option<LastErrorFn>,
    ) -> Self {
        Self::new(
            KIND_CRYPTO_SUITE,
            name,
            version,
            (vtable as *const CryptoVtable).cast(),
            size_of::<CryptoVtable>() as u32,
            last_error,
        )
    }

    /// A header for a virtual-interface plugin.
    pub const fn virtual_interface(
        name: &'static CStr,
        version: &'static CStr,
        vtable: &'static VifVtable,
        last_error: Option<LastErrorFn>,
    ) -> Self {
        Self::new(
            KIND_VIRTUAL_INTERFACE,
            name,
            version,
            (vtable as *const VifVtable).cast(),
            size_of::<VifVtable>() as u32,
            last_error,
        )
    }

    /// A header for a mobility-detector plugin.
    pub const fn mobility_detector(
        name: &'static CStr,
        version: &'static CStr,
        vtable: &'static MobilityVtable,
        last_error: Option<LastErrorFn>,
    ) -> Self {
        Self::new(
            KIND_MOBILITY_DETECTOR,
            name,
            version,
            (vtable as *const MobilityVtable).cast(),
            size_of::<MobilityVtable>() as u32,
            last_error,
        )
    }

    /// A header from raw parts, for plugins that build their tables by hand.
    ///
    /// # Safety
    /// `name` and `version` are NUL-terminated strings and `vtable` points at
    /// `vtable_size` readable bytes laid out as the table of `kind`; all three stay valid
    /// and unchanged for the rest of the process.
    pub const unsafe fn from_raw_parts(
        kind: u32,
        name: *const c_char,
        version: *const c_char,
        vtable: *const c_void,
        vtable_size: u32,
        last_error: Option<LastErrorFn>,
    ) -> Self {
        Self {
            magic: MAGIC,
            abi_major: ABI_MAJOR,
            abi_minor: ABI_MINOR,
            header_size: size_of::<PluginHeader>() as u32,
            kind,
            name,
            version,
            vtable,
            vtable_size,
            reserved: 0,
            last_error,
        }
    }

    /// The same header with another `magic` (tests of the host's checks).
    pub const fn with_magic(mut self, magic: u32) -> Self {
        self.magic = magic;
        self
    }

    /// The same header claiming another ABI version (tests of the host's checks).
    pub const fn with_abi(mut self, major: u16, minor: u16) -> Self {
        self.abi_major = major;
        self.abi_minor = minor;
        self
    }

    /// The same header claiming another `header_size`. Harmless to memory safety: a host
    /// never reads more of a header than its own `PluginHeader`.
    pub const fn with_header_size(mut self, size: u32) -> Self {
        self.header_size = size;
        self
    }

    /// The same header claiming another `vtable_size`. A host never reads more of a
    /// vtable than its own definition, and refuses one that claims less.
    pub const fn with_vtable_size(mut self, size: u32) -> Self {
        self.vtable_size = size;
        self
    }

    pub const fn magic(&self) -> u32 {
        self.magic
    }

    pub const fn abi_major(&self) -> u16 {
        self.abi_major
    }

    pub const fn abi_minor(&self) -> u16 {
        self.abi_minor
    }

    pub const fn header_size(&self) -> u32 {
        self.header_size
    }

    pub const fn kind(&self) -> u32 {
        self.kind
    }

    pub const fn vtable_size(&self) -> u32 {
        self.vtable_size
    }

    const fn new(
        kind: u32,
        name: &'static CStr,
        version: &'static CStr,
        vtable: *const c_void,
        vtable_size: u32,
        last_error: Option<LastErrorFn>,
    ) -> Self {
        // SAFETY: the strings are `&'static CStr` and the caller passed a `&'static`
        // vtable of the type that matches `kind`, sized by `size_of`.
        unsafe {
            Self::from_raw_parts(
                kind,
                name.as_ptr(),
                version.as_ptr(),
                vtable,
                vtable_size,
                last_error,
            )
        }
    }
}

impl fmt::Debug for PluginHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginHeader")
            .field("magic", &format_args!("{:#010x}", self.magic))
            .field(
                "abi",
                &format_args!("{}.{}", self.abi_major, self.abi_minor),
            )
            .field("header_size", &self.header_size)
            .field("kind", &self.kind)
            .field("vtable_size", &self.vtable_size)
            .finish_non_exhaustive()
    }
}

/// The parameters of a crypto suite. All lengths are in bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CryptoInfo {
    pub struct_size: u32,
    pub suite_id: u32,
    pub key_len: u32,
    pub nonce_len: u32,
    pub tag_len: u32,
    pub reserved: u32,
    /// How many messages one key may seal before the host must rekey.
    pub max_messages_per_key: u64,
}

impl CryptoInfo {
    /// A v1.0 info block; `nonce_len` is always [`NONCE_LEN`].
    pub const fn new(suite_id: u32, key_len: u32, tag_len: u32, max_messages_per_key: u64) -> Self {
        Self {
            struct_size: size_of::<CryptoInfo>() as u32,
            suite_id,
            key_len,
            nonce_len: NONCE_LEN as u32,
            tag_len,
            reserved: 0,
            max_messages_per_key,
        }
    }
}

/// One seal or open in a batch: the host fills `nonce`, `aad`, `buf`, `buf_cap`, `len`;
/// the plugin writes `len`, `status` and the bytes of `buf[..buf_cap]`, nothing else.
///
/// Seal: `buf[..len]` is the plaintext; on success it is the ciphertext followed by the
/// tag and `len` grew by `tag_len` (`buf_cap` must allow that, else `BUFFER_TOO_SMALL`).
/// Open: `buf[..len]` is ciphertext followed by the tag; on success the plaintext is in
/// place and `len` shrank by `tag_len`; a bad tag is `AUTH_FAILED`.
///
/// In Rust the fields are private and an op borrows its buffers for `'a`, so safe code
/// cannot hand a plugin a dangling pointer: build ops with [`CryptoOp::new`].
#[repr(C)]
pub struct CryptoOp<'a> {
    pub(crate) nonce: [u8; NONCE_LEN],
    pub(crate) reserved: u32,
    pub(crate) aad: *const u8,
    pub(crate) aad_len: usize,
    pub(crate) buf: *mut u8,
    pub(crate) buf_cap: usize,
    pub(crate) len: usize,
    pub(crate) status: i32,
    pub(crate) reserved2: u32,
    pub(crate) _borrow: PhantomData<(&'a [u8], &'a mut [u8])>,
}

// SAFETY: an op is a set of borrows (`&[u8]` aad, `&mut [u8]` buf) plus plain data; both
// borrow types are Send and Sync.
unsafe impl Send for CryptoOp<'_> {}
// SAFETY: as above; `&CryptoOp` gives no access to the buffers.
unsafe impl Sync for CryptoOp<'_> {}

impl<'a> CryptoOp<'a> {
    /// An op over `buf` whose first `len` bytes are the input (plaintext to seal, or
    /// ciphertext and tag to open). `aad` and `buf` are borrowed until the op is dropped.
    pub fn new(
        nonce: &[u8; NONCE_LEN],
        aad: &'a [u8],
        buf: &'a mut [u8],
        len: usize,
    ) -> Result<Self, PluginFailure> {
        if len > buf.len() {
            return Err(PluginFailure::new(
                Status::INVALID_ARGUMENT,
                "crypto op length exceeds its buffer",
            ));
        }
        Ok(Self {
            nonce: *nonce,
            reserved: 0,
            aad: aad.as_ptr(),
            aad_len: aad.len(),
            buf: buf.as_mut_ptr(),
            buf_cap: buf.len(),
            len,
            status: Status::OK.code(),
            reserved2: 0,
            _borrow: PhantomData,
        })
    }

    pub fn nonce(&self) -> &[u8; NONCE_LEN] {
        &self.nonce
    }

    /// The length of the data in the buffer: the input before a batch call, the output
    /// after a successful one.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.buf_cap
    }

    pub fn status(&self) -> Status {
        Status(self.status)
    }

    /// The output length if this op succeeded.
    pub fn result(&self) -> Result<usize, Status> {
        if self.status == Status::OK.code() && self.len <= self.buf_cap {
            Ok(self.len)
        } else if self.status == Status::OK.code() {
            Err(Status::INTERNAL)
        } else {
            Err(Status(self.status))
        }
    }
}

impl fmt::Debug for CryptoOp<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CryptoOp")
            .field("aad_len", &self.aad_len)
            .field("buf_cap", &self.buf_cap)
            .field("len", &self.len)
            .field("status", &Status(self.status))
            .finish_non_exhaustive()
    }
}

/// `info(out)`: the caller sets `out->struct_size` to the size of its `CryptoInfo`; the
/// plugin fills at most that many bytes and sets `struct_size` to the size it filled.
pub type CryptoInfoFn = unsafe extern "C" fn(out: *mut CryptoInfo) -> i32;
/// `key_new(key, key_len, out)`: expands a key; `*out` receives an opaque handle that the
/// caller must release with `key_free`.
pub type CryptoKeyNewFn =
    unsafe extern "C" fn(key: *const u8, key_len: usize, out: *mut *mut c_void) -> i32;
/// `key_free(key)`: releases a key from `key_new`; null is a no-op.
pub type CryptoKeyFreeFn = unsafe extern "C" fn(key: *mut c_void);
/// `seal_batch` / `open_batch(key, ops, count)`: 0 when the batch was processed (each op
/// carries its own status), a negative status when the whole call failed.
pub type CryptoBatchFn =
    unsafe extern "C" fn(key: *const c_void, ops: *mut CryptoOp<'_>, count: usize) -> i32;

/// The function table of a crypto suite (kind 2).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CryptoVtable {
    pub struct_size: u32,
    pub reserved: u32,
    pub info: Option<CryptoInfoFn>,
    pub key_new: Option<CryptoKeyNewFn>,
    pub key_free: Option<CryptoKeyFreeFn>,
    pub seal_batch: Option<CryptoBatchFn>,
    pub open_batch: Option<CryptoBatchFn>,
}

/// A route a virtual interface should install: `addr/prefix_len`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route {
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    pub prefix_len: u8,
    pub reserved: [u8; 2],
    /// An IPv4 address uses the first 4 bytes; the rest are zero.
    pub addr: [u8; 16],
}

impl Route {
    pub fn new(addr: IpAddr, prefix_len: u8) -> Self {
        let (family, bytes) = family_and_bytes(addr);
        Self {
            family,
            prefix_len,
            reserved: [0; 2],
            addr: bytes,
        }
    }

    /// The destination, if `family` and `prefix_len` are valid.
    pub fn destination(&self) -> Option<(IpAddr, u8)> {
        ip_from_parts(self.family, self.prefix_len, &self.addr)
    }
}

/// How to configure a virtual interface (`VifVtable::open`). Raw pointers: the host keeps
/// what they point at alive for the duration of the `open` call only.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct VifConfig {
    pub struct_size: u32,
    pub mtu: u32,
    /// Requested interface name (NUL-terminated UTF-8), or null to let the plugin choose.
    pub ifname: *const c_char,
    pub has_ipv4: u8,
    pub ipv4_prefix_len: u8,
    pub has_ipv6: u8,
    pub ipv6_prefix_len: u8,
    pub ipv4: [u8; 4],
    pub ipv6: [u8; 16],
    pub routes: *const Route,
    pub route_count: usize,
    /// Plugin-specific `key=value` lines (NUL-terminated UTF-8), or null.
    pub options: *const c_char,
}

/// What a virtual interface reports about itself (`VifVtable::info`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct VifInfo {
    pub struct_size: u32,
    pub mtu: u32,
    pub ifindex: u32,
    pub reserved: u32,
    /// The OS name of the interface, NUL-terminated UTF-8.
    pub ifname: [u8; VIF_IFNAME_LEN],
}

impl VifInfo {
    /// An all-zero info block whose `struct_size` says how much the caller can take.
    pub const fn empty() -> Self {
        Self {
            struct_size: size_of::<VifInfo>() as u32,
            mtu: 0,
            ifindex: 0,
            reserved: 0,
            ifname: [0; VIF_IFNAME_LEN],
        }
    }
}

/// One packet slot of a batch over a caller-owned buffer `buf[..cap]`: the packet is
/// `buf[offset..offset + len]`; the `offset` bytes before it are headroom, so the data
/// path can prepend its header in place. A plugin only writes `len` and packet bytes.
///
/// In Rust the fields are private and a slot borrows its buffer for `'a`; the invariant
/// `offset + len <= cap` always holds for a `Packet` safe code can see.
#[repr(C)]
pub struct Packet<'a> {
    pub(crate) buf: *mut u8,
    pub(crate) cap: usize,
    pub(crate) offset: usize,
    pub(crate) len: usize,
    pub(crate) _borrow: PhantomData<&'a mut [u8]>,
}

// SAFETY: a packet slot is a `&mut [u8]` borrow plus plain numbers.
unsafe impl Send for Packet<'_> {}
// SAFETY: `&Packet` only gives shared access to the bytes, like `&&mut [u8]`.
unsafe impl Sync for Packet<'_> {}

impl<'a> Packet<'a> {
    /// A slot over `buf` holding the packet `buf[offset..offset + len]`.
    pub fn new(buf: &'a mut [u8], offset: usize, len: usize) -> Result<Self, PluginFailure> {
        if offset > buf.len() || len > buf.len() - offset {
            return Err(PluginFailure::new(
                Status::INVALID_ARGUMENT,
                "packet offset and length exceed its buffer",
            ));
        }
        Ok(Self {
            buf: buf.as_mut_ptr(),
            cap: buf.len(),
            offset,
            len,
            _borrow: PhantomData,
        })
    }

    /// An empty slot to read into, with `offset` bytes of headroom.
    pub fn empty(buf: &'a mut [u8], offset: usize) -> Result<Self, PluginFailure> {
        Self::new(buf, offset, 0)
    }

    /// Headroom before the packet.
    pub fn offset(&self) -> usize {
        self.offset
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The largest packet this slot can hold (`cap - offset`).
    pub fn room(&self) -> usize {
        self.cap - self.offset
    }

    /// The packet bytes.
    pub fn data(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `buf[..cap]` is borrowed mutably for 'a (constructor) or was checked
        // non-null and promised valid by the ABI caller (plugin glue); `offset + len <=
        // cap` is an invariant every writer of these fields keeps.
        unsafe { std::slice::from_raw_parts(self.buf.add(self.offset), self.len) }
    }

    /// The packet bytes, writable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        &mut self.space_mut()[..len]
    }

    /// Everything after the headroom (`room()` bytes), to read a packet into before
    /// calling [`Packet::set_len`].
    pub fn space_mut(&mut self) -> &mut [u8] {
        let room = self.room();
        if room == 0 {
            return &mut [];
        }
        // SAFETY: as in `data`; `&mut self` makes this the only live view.
        unsafe { std::slice::from_raw_parts_mut(self.buf.add(self.offset), room) }
    }

    /// Sets the packet length; it must fit in `room()`.
    pub fn set_len(&mut self, len: usize) -> Result<(), PluginFailure> {
        if len > self.room() {
            return Err(PluginFailure::new(
                Status::INTERNAL,
                "packet length exceeds the room of its slot",
            ));
        }
        self.len = len;
        Ok(())
    }
}

impl fmt::Debug for Packet<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Packet")
            .field("cap", &self.cap)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

/// `open(cfg, out_handle)`.
pub type VifOpenFn = unsafe extern "C" fn(cfg: *const VifConfig, out: *mut *mut c_void) -> i32;
/// `info(h, out)`: `out->struct_size` is set by the caller, as for [`CryptoInfoFn`].
pub type VifInfoFn = unsafe extern "C" fn(h: *mut c_void, out: *mut VifInfo) -> i32;
/// `read_batch(h, pkts, count, timeout_ms, out_filled)`.
pub type VifReadBatchFn = unsafe extern "C" fn(
    h: *mut c_void,
    pkts: *mut Packet<'_>,
    count: usize,
    timeout_ms: i32,
    out_filled: *mut usize,
) -> i32;
/// `write_batch(h, pkts, count, out_written)`.
pub type VifWriteBatchFn = unsafe extern "C" fn(
    h: *mut c_void,
    pkts: *const Packet<'_>,
    count: usize,
    out_written: *mut usize,
) -> i32;
/// `pollable_fd(h, out_fd)`: `UNSUPPORTED` if the interface has no pollable descriptor.
pub type VifPollableFdFn = unsafe extern "C" fn(h: *mut c_void, out_fd: *mut i64) -> i32;
/// `wake(h)`: makes a blocked `read_batch` (or `wait`) return soon with nothing.
pub type HandleWakeFn = unsafe extern "C" fn(h: *mut c_void) -> i32;
/// `close(h)`: releases a handle; no call on it may be in flight or follow.
pub type HandleCloseFn = unsafe extern "C" fn(h: *mut c_void);

/// The function table of a virtual interface (kind 1).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct VifVtable {
    pub struct_size: u32,
    pub reserved: u32,
    pub open: Option<VifOpenFn>,
    pub info: Option<VifInfoFn>,
    pub read_batch: Option<VifReadBatchFn>,
    pub write_batch: Option<VifWriteBatchFn>,
    pub pollable_fd: Option<VifPollableFdFn>,
    pub wake: Option<HandleWakeFn>,
    pub close: Option<HandleCloseFn>,
}

/// One local address, as a mobility detector's snapshot reports it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddrEntry {
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    pub prefix_len: u8,
    /// `ADDR_FLAG_*` bits.
    pub flags: u16,
    pub ifindex: u32,
    /// An IPv4 address uses the first 4 bytes; the rest are zero.
    pub addr: [u8; 16],
}

impl AddrEntry {
    pub fn new(addr: IpAddr, prefix_len: u8, flags: u16, ifindex: u32) -> Self {
        let (family, bytes) = family_and_bytes(addr);
        Self {
            family,
            prefix_len,
            flags,
            ifindex,
            addr: bytes,
        }
    }

    /// The address and prefix length, if `family` and `prefix_len` are valid.
    pub fn address(&self) -> Option<(IpAddr, u8)> {
        ip_from_parts(self.family, self.prefix_len, &self.addr)
    }
}

/// `open(options, out_handle)`: `options` is plugin-specific `key=value` text or null.
pub type MobilityOpenFn =
    unsafe extern "C" fn(options: *const c_char, out: *mut *mut c_void) -> i32;
/// `wait(h, timeout_ms, out_hint)`: blocks until a change (`*out_hint` = `HINT_*` bits),
/// the timeout or `wake` (`*out_hint` = 0).
pub type MobilityWaitFn =
    unsafe extern "C" fn(h: *mut c_void, timeout_ms: i32, out_hint: *mut u32) -> i32;
/// `snapshot(h, out, cap, out_count)`: the current addresses; `BUFFER_TOO_SMALL` with
/// `*out_count` = the number needed when `cap` is too small.
pub type MobilitySnapshotFn = unsafe extern "C" fn(
    h: *mut c_void,
    out: *mut AddrEntry,
    cap: usize,
    out_count: *mut usize,
) -> i32;

/// The function table of a mobility detector (kind 3).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MobilityVtable {
    pub struct_size: u32,
    pub reserved: u32,
    pub open: Option<MobilityOpenFn>,
    pub wait: Option<MobilityWaitFn>,
    pub snapshot: Option<MobilitySnapshotFn>,
    pub wake: Option<HandleWakeFn>,
    pub close: Option<HandleCloseFn>,
}

fn family_and_bytes(addr: IpAddr) -> (u8, [u8; 16]) {
    let mut bytes = [0u8; 16];
    match addr {
        IpAddr::V4(v4) => {
            bytes[..4].copy_from_slice(&v4.octets());
            (FAMILY_IPV4, bytes)
        }
        IpAddr::V6(v6) => (FAMILY_IPV6, v6.octets()),
    }
}

fn ip_from_parts(family: u8, prefix_len: u8, addr: &[u8; 16]) -> Option<(IpAddr, u8)> {
    match family {
        FAMILY_IPV4 if prefix_len <= 32 => {
            let v4 = Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]);
            Some((IpAddr::V4(v4), prefix_len))
        }
        FAMILY_IPV6 if prefix_len <= 128 => Some((IpAddr::V6(Ipv6Addr::from(*addr)), prefix_len)),
        _ => None,
    }
}
