//! Safe wrappers over a virtual-interface plugin: [`VifPlugin`] opens interfaces,
//! [`VifHandle`] reads and writes packet batches and closes on drop.

use std::ffi::{CString, c_void};
use std::fmt;
use std::ptr::NonNull;

use super::{Plugin, PluginKind, Vtable, check};
use crate::abi::{
    HandleCloseFn, HandleWakeFn, LastErrorFn, Packet, Route, VIF_IFNAME_LEN, VifConfig, VifInfo,
    VifInfoFn, VifOpenFn, VifPollableFdFn, VifReadBatchFn, VifWriteBatchFn,
};
use crate::settings::{VifDetails, VifSettings};
use crate::status::{PluginError, Status};

/// A loaded virtual-interface plugin.
#[derive(Debug, Clone)]
pub struct VifPlugin {
    plugin: Plugin,
    open: VifOpenFn,
    fns: VifFns,
}

impl VifPlugin {
    pub fn new(plugin: Plugin) -> Result<Self, PluginError> {
        let Vtable::Vif(t) = plugin.vtable else {
            return Err(plugin.wrong_kind(PluginKind::VirtualInterface));
        };
        let missing = || PluginError::new(Status::INTERNAL, "validated vtable lost a function");
        let fns = VifFns {
            info: t.info.ok_or_else(missing)?,
            read_batch: t.read_batch.ok_or_else(missing)?,
            write_batch: t.write_batch.ok_or_else(missing)?,
            pollable_fd: t.pollable_fd,
            wake: t.wake.ok_or_else(missing)?,
            close: t.close.ok_or_else(missing)?,
            last_error: plugin.last_error(),
        };
        Ok(Self {
            open: t.open.ok_or_else(missing)?,
            plugin,
            fns,
        })
    }

    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// Creates and configures an interface.
    pub fn open(&self, settings: &VifSettings) -> Result<VifHandle, PluginError> {
        settings.validate()?;
        let nul = |_| PluginError::new(Status::INVALID_ARGUMENT, "string contains NUL");
        let ifname = settings
            .ifname
            .as_deref()
            .map(CString::new)
            .transpose()
            .map_err(nul)?;
        let options = settings
            .options
            .as_deref()
            .map(CString::new)
            .transpose()
            .map_err(nul)?;
        let routes: Vec<Route> = settings
            .routes
            .iter()
            .map(|&(addr, len)| Route::new(addr, len))
            .collect();
        let (ipv4, ipv4_prefix_len) = settings.ipv4.map_or(([0; 4], 0), |(a, p)| (a.octets(), p));
        let (ipv6, ipv6_prefix_len) = settings.ipv6.map_or(([0; 16], 0), |(a, p)| (a.octets(), p));
        let cfg = VifConfig {
            struct_size: size_of::<VifConfig>() as u32,
            mtu: settings.mtu,
            ifname: ifname.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            has_ipv4: settings.ipv4.is_some().into(),
            ipv4_prefix_len,
            has_ipv6: settings.ipv6.is_some().into(),
            ipv6_prefix_len,
            ipv4,
            ipv6,
            routes: if routes.is_empty() {
                std::ptr::null()
            } else {
                routes.as_ptr()
            },
            route_count: routes.len(),
            options: options.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
        };
        let mut raw: *mut c_void = std::ptr::null_mut();
        // SAFETY: `cfg` and everything it points at (`ifname`, `options`, `routes`) live
        // until the end of this function; `raw` is a writable out-pointer.
        let status = unsafe { (self.open)(&cfg, &mut raw) };
        check(status, self.fns.last_error)?;
        let raw = NonNull::new(raw).ok_or_else(|| {
            PluginError::new(
                Status::INTERNAL,
                "open succeeded without returning a handle",
            )
        })?;
        Ok(VifHandle { raw, fns: self.fns })
    }
}

/// An open virtual interface. All methods may be used from several threads at once
/// (e.g. one reading, one writing, another waking the reader); dropping it closes it.
pub struct VifHandle {
    raw: NonNull<c_void>,
    fns: VifFns,
}

// SAFETY: the ABI requires every function but `close` to be callable concurrently from
// any thread on one handle (docs/plugins.md, "Threading"); `close` runs from `Drop`,
// which has exclusive access.
unsafe impl Send for VifHandle {}
// SAFETY: as above.
unsafe impl Sync for VifHandle {}

impl VifHandle {
    pub fn info(&self) -> Result<VifDetails, PluginError> {
        let mut info = VifInfo::empty();
        // SAFETY: live handle; `info` is writable and its `struct_size` is its size.
        let status = unsafe { (self.fns.info)(self.raw.as_ptr(), &mut info) };
        check(status, self.fns.last_error)?;
        if (info.struct_size as usize) < size_of::<VifInfo>() {
            return Err(PluginError::new(
                Status::INTERNAL,
                "VifInfo struct_size too small",
            ));
        }
        let name_len = info
            .ifname
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(VIF_IFNAME_LEN);
        if name_len == VIF_IFNAME_LEN {
            return Err(PluginError::new(
                Status::INTERNAL,
                "interface name is not NUL-terminated",
            ));
        }
        let ifname = std::str::from_utf8(&info.ifname[..name_len])
            .map_err(|_| PluginError::new(Status::INTERNAL, "interface name is not UTF-8"))?
            .to_owned();
        Ok(VifDetails {
            mtu: info.mtu,
            ifindex: info.ifindex,
            ifname,
        })
    }

    /// Reads up to `pkts.len()` packets into the slots' room after their headroom; returns
    /// how many leading slots hold a packet (0 on timeout or after [`VifHandle::wake`]).
    /// `timeout_ms`: `-1` waits forever, `0` does not block.
    pub fn read_batch(
        &self,
        pkts: &mut [Packet<'_>],
        timeout_ms: i32,
    ) -> Result<usize, PluginError> {
        let mut filled = 0usize;
        // SAFETY: live handle; every slot borrows its buffer for this call (safe
        // `Packet` construction); `filled` is a writable out-pointer.
        let status = unsafe {
            (self.fns.read_batch)(
                self.raw.as_ptr(),
                pkts.as_mut_ptr(),
                pkts.len(),
                timeout_ms,
                &mut filled,
            )
        };
        // Restore the slot invariant before anything can read a slot, whatever happened.
        let mut garbage = false;
        for pkt in pkts.iter_mut() {
            if pkt.offset > pkt.cap || pkt.len > pkt.cap - pkt.offset {
                pkt.offset = pkt.offset.min(pkt.cap);
                pkt.len = 0;
                garbage = true;
            }
        }
        check(status, self.fns.last_error)?;
        if garbage || filled > pkts.len() {
            return Err(PluginError::new(
                Status::INTERNAL,
                "read_batch returned a packet length or count past the buffers given",
            ));
        }
        Ok(filled)
    }

    /// Writes the packets in order; returns how many leading packets were consumed.
    pub fn write_batch(&self, pkts: &[Packet<'_>]) -> Result<usize, PluginError> {
        let mut written = 0usize;
        // SAFETY: live handle; every slot borrows its buffer for this call; `written` is a
        // writable out-pointer.
        let status = unsafe {
            (self.fns.write_batch)(self.raw.as_ptr(), pkts.as_ptr(), pkts.len(), &mut written)
        };
        check(status, self.fns.last_error)?;
        if written > pkts.len() {
            return Err(PluginError::new(
                Status::INTERNAL,
                "write_batch wrote more packets than given",
            ));
        }
        Ok(written)
    }

    /// A descriptor to poll for readability, or `None` if the interface has none.
    pub fn pollable_fd(&self) -> Result<Option<i64>, PluginError> {
        let Some(f) = self.fns.pollable_fd else {
            return Ok(None);
        };
        let mut fd = -1i64;
        // SAFETY: live handle; `fd` is a writable out-pointer.
        let status = unsafe { f(self.raw.as_ptr(), &mut fd) };
        if status == Status::UNSUPPORTED.code() {
            return Ok(None);
        }
        check(status, self.fns.last_error)?;
        Ok(Some(fd))
    }

    /// Makes a blocked (or the next) [`VifHandle::read_batch`] return 0 promptly.
    pub fn wake(&self) -> Result<(), PluginError> {
        // SAFETY: live handle.
        check(
            unsafe { (self.fns.wake)(self.raw.as_ptr()) },
            self.fns.last_error,
        )
    }
}

impl Drop for VifHandle {
    fn drop(&mut self) {
        // SAFETY: the handle came from `open`, is closed once, and `&mut self` proves no
        // call on it is in flight.
        unsafe { (self.fns.close)(self.raw.as_ptr()) }
    }
}

impl fmt::Debug for VifHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VifHandle").field("raw", &self.raw).finish()
    }
}

#[derive(Clone, Copy)]
struct VifFns {
    info: VifInfoFn,
    read_batch: VifReadBatchFn,
    write_batch: VifWriteBatchFn,
    pollable_fd: Option<VifPollableFdFn>,
    wake: HandleWakeFn,
    close: HandleCloseFn,
    last_error: Option<LastErrorFn>,
}

impl fmt::Debug for VifFns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VifFns(..)")
    }
}
