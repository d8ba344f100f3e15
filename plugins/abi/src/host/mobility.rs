//! Safe wrappers over a mobility-detector plugin: [`MobilityPlugin`] opens detectors,
//! [`MobilityHandle`] waits for changes and takes address snapshots, closing on drop.

use std::ffi::{CString, c_void};
use std::fmt;
use std::ptr::NonNull;

use super::{Plugin, PluginKind, Vtable, call_error, check};
use crate::abi::{
    AddrEntry, HandleCloseFn, HandleWakeFn, LastErrorFn, MobilityOpenFn, MobilitySnapshotFn,
    MobilityWaitFn,
};
use crate::status::{PluginError, Status};

/// A snapshot larger than this is treated as a plugin bug, not an allocation request.
const MAX_ENTRIES: usize = 1 << 16;

/// A loaded mobility-detector plugin.
#[derive(Debug, Clone)]
pub struct MobilityPlugin {
    plugin: Plugin,
    open: MobilityOpenFn,
    fns: MobilityFns,
}

impl MobilityPlugin {
    pub fn new(plugin: Plugin) -> Result<Self, PluginError> {
        let Vtable::Mobility(t) = plugin.vtable else {
            return Err(plugin.wrong_kind(PluginKind::MobilityDetector));
        };
        let missing = || PluginError::new(Status::INTERNAL, "validated vtable lost a function");
        let fns = MobilityFns {
            wait: t.wait.ok_or_else(missing)?,
            snapshot: t.snapshot.ok_or_else(missing)?,
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

    /// Starts a detector; `options` is plugin-specific `key=value` text.
    pub fn open(&self, options: Option<&str>) -> Result<MobilityHandle, PluginError> {
        let options = options
            .map(CString::new)
            .transpose()
            .map_err(|_| PluginError::new(Status::INVALID_ARGUMENT, "options contain NUL"))?;
        let mut raw: *mut c_void = std::ptr::null_mut();
        // SAFETY: `options` is null or a C string alive for the call; `raw` is a writable
        // out-pointer.
        let status = unsafe {
            (self.open)(
                options.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
                &mut raw,
            )
        };
        check(status, self.fns.last_error)?;
        let raw = NonNull::new(raw).ok_or_else(|| {
            PluginError::new(
                Status::INTERNAL,
                "open succeeded without returning a handle",
            )
        })?;
        Ok(MobilityHandle { raw, fns: self.fns })
    }
}

/// A running detector. Usable from several threads at once (typically one waiting, another
/// waking it or taking snapshots); dropping it closes it.
pub struct MobilityHandle {
    raw: NonNull<c_void>,
    fns: MobilityFns,
}

// SAFETY: the ABI requires every function but `close` to be callable concurrently from
// any thread on one handle; `close` runs from `Drop`, which has exclusive access.
unsafe impl Send for MobilityHandle {}
// SAFETY: as above.
unsafe impl Sync for MobilityHandle {}

impl MobilityHandle {
    /// Waits up to `timeout_ms` (`-1`: forever) for a change; returns the `HINT_*` bits,
    /// 0 on timeout or after [`MobilityHandle::wake`].
    pub fn wait(&self, timeout_ms: i32) -> Result<u32, PluginError> {
        let mut hint = 0u32;
        // SAFETY: live handle; `hint` is a writable out-pointer.
        let status = unsafe { (self.fns.wait)(self.raw.as_ptr(), timeout_ms, &mut hint) };
        check(status, self.fns.last_error)?;
        Ok(hint)
    }

    /// The current local addresses.
    pub fn snapshot(&self) -> Result<Vec<AddrEntry>, PluginError> {
        let mut entries: Vec<AddrEntry> = Vec::with_capacity(16);
        // Addresses can appear between two calls, so retry a few times with the size the
        // plugin asked for.
        for _ in 0..4 {
            let cap = entries.capacity();
            let mut count = 0usize;
            // SAFETY: live handle; `entries` has `cap` writable (uninitialised) slots,
            // which the plugin only writes; `count` is a writable out-pointer.
            let status = unsafe {
                (self.fns.snapshot)(self.raw.as_ptr(), entries.as_mut_ptr(), cap, &mut count)
            };
            if status == Status::BUFFER_TOO_SMALL.code() && count > cap && count <= MAX_ENTRIES {
                entries.reserve_exact(count);
                continue;
            }
            check(status, self.fns.last_error)?;
            if count > cap {
                return Err(PluginError::new(
                    Status::INTERNAL,
                    "snapshot returned more entries than cap",
                ));
            }
            // SAFETY: the plugin wrote `count <= cap` entries (checked), and `AddrEntry`
            // is plain data, valid for any bytes.
            unsafe { entries.set_len(count) };
            return Ok(entries);
        }
        Err(call_error(
            Status::BUFFER_TOO_SMALL.code(),
            self.fns.last_error,
        ))
    }

    /// Makes a blocked (or the next) [`MobilityHandle::wait`] return 0 promptly.
    pub fn wake(&self) -> Result<(), PluginError> {
        // SAFETY: live handle.
        check(
            unsafe { (self.fns.wake)(self.raw.as_ptr()) },
            self.fns.last_error,
        )
    }
}

impl Drop for MobilityHandle {
    fn drop(&mut self) {
        // SAFETY: the handle came from `open`, is closed once, and `&mut self` proves no
        // call on it is in flight.
        unsafe { (self.fns.close)(self.raw.as_ptr()) }
    }
}

impl fmt::Debug for MobilityHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MobilityHandle")
            .field("raw", &self.raw)
            .finish()
    }
}

#[derive(Clone, Copy)]
struct MobilityFns {
    wait: MobilityWaitFn,
    snapshot: MobilitySnapshotFn,
    wake: HandleWakeFn,
    close: HandleCloseFn,
    last_error: Option<LastErrorFn>,
}

impl fmt::Debug for MobilityFns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MobilityFns(..)")
    }
}
