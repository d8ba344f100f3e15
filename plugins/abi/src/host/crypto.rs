//! Safe wrappers over a crypto-suite plugin: [`CryptoSuitePlugin`] makes keys,
//! [`CryptoKey`] seals and opens (batches, or one buffer in place without allocating).

use std::ffi::c_void;
use std::fmt;
use std::ptr::NonNull;

use super::{Plugin, PluginKind, Vtable, check};
use crate::abi::{
    CryptoBatchFn, CryptoInfo, CryptoKeyFreeFn, CryptoKeyNewFn, CryptoOp, LastErrorFn, NONCE_LEN,
};
use crate::status::{PluginError, Status};

/// A loaded crypto suite whose parameters have been checked.
#[derive(Debug, Clone)]
pub struct CryptoSuitePlugin {
    plugin: Plugin,
    fns: KeyFns,
    info: CryptoInfo,
}

impl CryptoSuitePlugin {
    /// Wraps a plugin of kind crypto suite and reads its [`CryptoInfo`], which must be
    /// usable with ABI 1 (`nonce_len` 12, sane key and tag lengths).
    pub fn new(plugin: Plugin) -> Result<Self, PluginError> {
        let Vtable::Crypto(vtable) = plugin.vtable else {
            return Err(plugin.wrong_kind(PluginKind::CryptoSuite));
        };
        let last_error = plugin.last_error();
        let missing = || PluginError::new(Status::INTERNAL, "validated vtable lost a function");
        let info_fn = vtable.info.ok_or_else(missing)?;
        let fns = KeyFns {
            key_new: vtable.key_new.ok_or_else(missing)?,
            key_free: vtable.key_free.ok_or_else(missing)?,
            seal_batch: vtable.seal_batch.ok_or_else(missing)?,
            open_batch: vtable.open_batch.ok_or_else(missing)?,
            last_error,
        };
        let mut info = CryptoInfo::new(0, 0, 0, 0);
        info.nonce_len = 0;
        // SAFETY: `info` is a writable `CryptoInfo` whose `struct_size` is its size.
        check(unsafe { info_fn(&mut info) }, last_error)?;
        let bad = |what: String| {
            Err(PluginError::new(
                Status::INTERNAL,
                format!(
                    "{}: crypto suite {:?} reports {what}",
                    plugin.path().display(),
                    plugin.name()
                ),
            ))
        };
        if (info.struct_size as usize) < size_of::<CryptoInfo>() {
            return bad(format!("an info struct_size of {}", info.struct_size));
        }
        if info.nonce_len as usize != NONCE_LEN {
            return bad(format!(
                "nonce_len {}; plugin ABI 1 needs {NONCE_LEN}",
                info.nonce_len
            ));
        }
        if !(1..=1024).contains(&info.key_len) || !(1..=64).contains(&info.tag_len) {
            return bad(format!(
                "key_len {} and tag_len {}",
                info.key_len, info.tag_len
            ));
        }
        Ok(Self { plugin, fns, info })
    }

    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    pub fn info(&self) -> CryptoInfo {
        self.info
    }

    /// Expands `key` into a plugin key.
    pub fn key_new(&self, key: &[u8]) -> Result<CryptoKey, PluginError> {
        let mut raw: *mut c_void = std::ptr::null_mut();
        // SAFETY: `key` is readable for `key.len()` bytes and `raw` is a writable
        // out-pointer, both for the duration of the call.
        let status = unsafe { (self.fns.key_new)(key.as_ptr(), key.len(), &mut raw) };
        check(status, self.fns.last_error)?;
        let raw = NonNull::new(raw).ok_or_else(|| {
            PluginError::new(
                Status::INTERNAL,
                "key_new succeeded without returning a key",
            )
        })?;
        Ok(CryptoKey {
            raw,
            fns: self.fns,
            info: self.info,
        })
    }
}

/// A key living in the plugin. Send + Sync (the ABI requires keys to be immutable and
/// usable from several threads at once); dropping it calls the plugin's `key_free`.
pub struct CryptoKey {
    raw: NonNull<c_void>,
    fns: KeyFns,
    info: CryptoInfo,
}

// SAFETY: the ABI makes keys immutable after `key_new` and safe to use from any thread,
// concurrently (docs/plugins.md, "Threading"); `key_free` may run on any thread.
unsafe impl Send for CryptoKey {}
// SAFETY: as above: every call through `&CryptoKey` is a concurrent-safe batch call.
unsafe impl Sync for CryptoKey {}

impl CryptoKey {
    pub fn info(&self) -> &CryptoInfo {
        &self.info
    }

    pub fn tag_len(&self) -> usize {
        self.info.tag_len as usize
    }

    /// Seals every op in place. `Ok` means the plugin processed the batch: each op then
    /// carries its own status ([`CryptoOp::result`]). An op whose returned length is not
    /// possible (past its capacity) is set to `INTERNAL` and the call returns an error.
    pub fn seal_batch(&self, ops: &mut [CryptoOp<'_>]) -> Result<(), PluginError> {
        self.batch(self.fns.seal_batch, ops, Direction::Seal)
    }

    /// Opens every op in place; as [`CryptoKey::seal_batch`].
    pub fn open_batch(&self, ops: &mut [CryptoOp<'_>]) -> Result<(), PluginError> {
        self.batch(self.fns.open_batch, ops, Direction::Open)
    }

    /// Seals `buf[..plaintext_len]` and appends the tag; returns the sealed length
    /// (`plaintext_len + tag_len`). Does not allocate unless the plugin fails.
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        plaintext_len: usize,
    ) -> Result<usize, PluginError> {
        let expected = plaintext_len.checked_add(self.tag_len());
        let cap = buf.len();
        let (status, len) = self.single(self.fns.seal_batch, nonce, aad, buf, plaintext_len)?;
        check(status, self.fns.last_error)?;
        if Some(len) != expected || len > cap {
            return Err(garbage_len(len, expected.unwrap_or(usize::MAX)));
        }
        Ok(len)
    }

    /// Opens `buf` (ciphertext followed by the tag) in place; returns the plaintext
    /// length (`buf.len() - tag_len`). Does not allocate, even when the tag is bad.
    pub fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<usize, PluginError> {
        let input_len = buf.len();
        let (status, len) = self.single(self.fns.open_batch, nonce, aad, buf, input_len)?;
        check(status, self.fns.last_error)?;
        match input_len.checked_sub(self.tag_len()) {
            Some(expected) if expected == len => Ok(len),
            expected => Err(garbage_len(len, expected.unwrap_or(0))),
        }
    }

    /// One op through a batch function; returns the op's status and length.
    fn single(
        &self,
        f: CryptoBatchFn,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        len: usize,
    ) -> Result<(i32, usize), PluginError> {
        let mut op = CryptoOp::new(nonce, aad, buf, len)?;
        // Pre-set so an op the plugin forgot to process does not read as success.
        op.status = Status::INTERNAL.code();
        // SAFETY: `self.raw` is a live key of this plugin; `op` borrows `aad` and `buf`,
        // valid for the call, and is a one-element array.
        let status = unsafe { f(self.raw.as_ptr(), &mut op, 1) };
        check(status, self.fns.last_error)?;
        Ok((op.status, op.len))
    }

    fn batch(
        &self,
        f: CryptoBatchFn,
        ops: &mut [CryptoOp<'_>],
        dir: Direction,
    ) -> Result<(), PluginError> {
        if ops.is_empty() {
            return Ok(());
        }
        for op in ops.iter_mut() {
            op.status = Status::INTERNAL.code();
        }
        // SAFETY: `self.raw` is a live key of this plugin; every op borrows its buffers
        // for at least this call (safe `CryptoOp` construction).
        let status = unsafe { f(self.raw.as_ptr(), ops.as_mut_ptr(), ops.len()) };
        let mut garbage = None;
        let tag_len = self.tag_len();
        for op in ops.iter_mut() {
            let possible = match dir {
                Direction::Seal => op.len >= tag_len && op.len <= op.buf_cap,
                Direction::Open => op.len.checked_add(tag_len).is_some_and(|l| l <= op.buf_cap),
            };
            if op.status == Status::OK.code() && !possible {
                op.status = Status::INTERNAL.code();
                garbage.get_or_insert((op.len, op.buf_cap));
            }
        }
        check(status, self.fns.last_error)?;
        match garbage {
            Some((len, cap)) => Err(PluginError::new(
                Status::INTERNAL,
                format!("plugin returned op length {len}, impossible for capacity {cap}"),
            )),
            None => Ok(()),
        }
    }
}

impl Drop for CryptoKey {
    fn drop(&mut self) {
        // SAFETY: `raw` came from this plugin's `key_new`, is freed exactly once, and no
        // call on it is in flight (we hold it by value).
        unsafe { (self.fns.key_free)(self.raw.as_ptr()) }
    }
}

impl fmt::Debug for CryptoKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material (it lives in the plugin anyway).
        write!(f, "CryptoKey(suite {})", self.info.suite_id)
    }
}

#[derive(Clone, Copy)]
struct KeyFns {
    key_new: CryptoKeyNewFn,
    key_free: CryptoKeyFreeFn,
    seal_batch: CryptoBatchFn,
    open_batch: CryptoBatchFn,
    last_error: Option<LastErrorFn>,
}

impl fmt::Debug for KeyFns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyFns(..)")
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Seal,
    Open,
}

fn garbage_len(len: usize, expected: usize) -> PluginError {
    PluginError::new(
        Status::INTERNAL,
        format!("plugin returned length {len}, expected {expected}"),
    )
}
