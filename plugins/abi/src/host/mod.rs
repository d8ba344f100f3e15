//! The host side: validating a plugin's header ([`Plugin`]) and the safe per-kind
//! wrappers that call it. Everything a plugin hands back (header fields, vtables,
//! returned lengths and counts) is checked before safe code sees it.

#![allow(unsafe_code)]

mod crypto;
pub(crate) mod layout;
mod mobility;
mod vif;

pub use crypto::{CryptoKey, CryptoSuitePlugin};
pub use mobility::{MobilityHandle, MobilityPlugin};
pub use vif::{VifHandle, VifPlugin};

use std::ffi::{CStr, c_char};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::abi::{
    ABI_MAJOR, ABI_MINOR, CryptoVtable, KIND_CRYPTO_SUITE, KIND_MOBILITY_DETECTOR,
    KIND_VIRTUAL_INTERFACE, LastErrorFn, MAGIC, MobilityVtable, PluginHeader, VifVtable,
};
use crate::status::{PluginError, Status};

/// A plugin whose header passed every check of this host: right magic, same ABI major,
/// header and vtable large enough, required functions present, known kind. Cheap to
/// clone; the code it points at is never unloaded.
#[derive(Clone)]
pub struct Plugin {
    origin: PathBuf,
    header: &'static PluginHeader,
    name: &'static str,
    version: &'static str,
    vtable: Vtable,
}

impl Plugin {
    /// Validates a statically linked plugin's header (from its `plugin_header()`) as
    /// `Plugin::load` would; `label` stands in for the file name in errors.
    pub fn from_static(header: &'static PluginHeader, label: &str) -> Result<Plugin, LoadError> {
        // SAFETY: a `&'static PluginHeader` is readable for its whole size forever, and
        // its safe constructors guarantee valid strings and a vtable of `kind`'s type
        // (`from_raw_parts` makes its caller promise the same).
        unsafe { validate(header, Path::new(label)) }
    }

    /// The file the plugin was loaded from, or the label given to `from_static`.
    pub fn path(&self) -> &Path {
        &self.origin
    }

    pub fn kind(&self) -> PluginKind {
        self.vtable.kind()
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn version(&self) -> &'static str {
        self.version
    }

    /// The ABI version the plugin was built for.
    pub fn abi(&self) -> AbiVersion {
        AbiVersion {
            major: self.header.abi_major,
            minor: self.header.abi_minor,
        }
    }

    pub fn header(&self) -> &'static PluginHeader {
        self.header
    }

    fn last_error(&self) -> Option<LastErrorFn> {
        self.header.last_error
    }

    fn wrong_kind(&self, wanted: PluginKind) -> PluginError {
        PluginError::new(
            Status::INVALID_ARGUMENT,
            format!(
                "{}: plugin {:?} is a {}, not a {wanted}",
                self.origin.display(),
                self.name,
                self.kind()
            ),
        )
    }
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("path", &self.origin)
            .field("kind", &self.kind())
            .field("name", &self.name)
            .field("version", &self.version)
            .field("abi", &self.abi())
            .finish()
    }
}

/// The kinds of plugin ABI 1.0 knows (`PluginHeader::kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PluginKind {
    VirtualInterface,
    CryptoSuite,
    MobilityDetector,
}

impl PluginKind {
    pub fn from_raw(kind: u32) -> Option<Self> {
        match kind {
            KIND_VIRTUAL_INTERFACE => Some(Self::VirtualInterface),
            KIND_CRYPTO_SUITE => Some(Self::CryptoSuite),
            KIND_MOBILITY_DETECTOR => Some(Self::MobilityDetector),
            _ => None,
        }
    }

    pub fn raw(self) -> u32 {
        match self {
            Self::VirtualInterface => KIND_VIRTUAL_INTERFACE,
            Self::CryptoSuite => KIND_CRYPTO_SUITE,
            Self::MobilityDetector => KIND_MOBILITY_DETECTOR,
        }
    }

    /// The smallest vtable this host accepts for the kind: the ABI 1.0 table. Functions
    /// a later minor appends are optional to the host, detected through `vtable_size`.
    pub fn min_vtable_size(self) -> u32 {
        (match self {
            Self::VirtualInterface => size_of::<VifVtable>(),
            Self::CryptoSuite => size_of::<CryptoVtable>(),
            Self::MobilityDetector => size_of::<MobilityVtable>(),
        }) as u32
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::VirtualInterface => "virtual interface",
            Self::CryptoSuite => "crypto suite",
            Self::MobilityDetector => "mobility detector",
        })
    }
}

/// A plugin ABI version, `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AbiVersion {
    pub major: u16,
    pub minor: u16,
}

impl AbiVersion {
    /// The version this crate speaks.
    pub const HOST: AbiVersion = AbiVersion {
        major: ABI_MAJOR,
        minor: ABI_MINOR,
    };
}

impl fmt::Display for AbiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Why a plugin was refused. Every message starts with the file (or static label).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error("{}: plugin paths must be absolute", .path.display())]
    RelativePath { path: PathBuf },
    #[error("{}: cannot read plugin file: {source}", .path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a regular file", .path.display())]
    NotAFile { path: PathBuf },
    #[cfg(feature = "loader")]
    #[error("{}: cannot load shared library: {source}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: libloading::Error,
    },
    #[error(
        "{}: exports no plugin entry point ({}): not a cyphonic plugin",
        .path.display(),
        crate::abi::ENTRY_SYMBOL
    )]
    NoEntryPoint { path: PathBuf },
    #[error(
        "{}: built for plugin ABI {}, this host speaks {host}",
        .path.display(),
        abi_text(*.plugin_major, *.plugin_minor)
    )]
    AbiMismatch {
        path: PathBuf,
        plugin_major: u16,
        /// `None` when only the entry symbol's name told the major.
        plugin_minor: Option<u16>,
        host: AbiVersion,
    },
    #[error("{}: the entry point returned a null or misaligned header", .path.display())]
    BadHeaderPointer { path: PathBuf },
    #[error(
        "{}: bad magic {found:#010x} (expected {:#010x}): not a cyphonic plugin header",
        .path.display(),
        MAGIC
    )]
    BadMagic { path: PathBuf, found: u32 },
    #[error(
        "{}: header_size {size} is smaller than the {needed} bytes of a plugin ABI {host} header \
         (plugin claims ABI {plugin})",
        .path.display()
    )]
    HeaderTooSmall {
        path: PathBuf,
        size: u32,
        needed: u32,
        plugin: AbiVersion,
        host: AbiVersion,
    },
    #[error("{}: unknown plugin kind {kind} (plugin ABI {plugin}, this host speaks {host})", .path.display())]
    UnknownKind {
        path: PathBuf,
        kind: u32,
        plugin: AbiVersion,
        host: AbiVersion,
    },
    #[error("{}: the plugin's {field} is null or not UTF-8", .path.display())]
    BadString { path: PathBuf, field: &'static str },
    #[error("{}: the {kind} vtable pointer is null or misaligned", .path.display())]
    BadVtablePointer { path: PathBuf, kind: PluginKind },
    #[error(
        "{}: {kind} vtable is {size} bytes, a plugin ABI {host} host needs at least {needed} \
         (plugin claims ABI {plugin})",
        .path.display()
    )]
    VtableTooSmall {
        path: PathBuf,
        kind: PluginKind,
        size: u32,
        needed: u32,
        plugin: AbiVersion,
        host: AbiVersion,
    },
    #[error("{}: required {kind} function `{function}` is null", .path.display())]
    MissingFunction {
        path: PathBuf,
        kind: PluginKind,
        function: &'static str,
    },
}

impl LoadError {
    /// The file (or static label) the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::RelativePath { path }
            | Self::Unreadable { path, .. }
            | Self::NotAFile { path }
            | Self::NoEntryPoint { path }
            | Self::AbiMismatch { path, .. }
            | Self::BadHeaderPointer { path }
            | Self::BadMagic { path, .. }
            | Self::HeaderTooSmall { path, .. }
            | Self::UnknownKind { path, .. }
            | Self::BadString { path, .. }
            | Self::BadVtablePointer { path, .. }
            | Self::VtableTooSmall { path, .. }
            | Self::MissingFunction { path, .. } => path,
            #[cfg(feature = "loader")]
            Self::Open { path, .. } => path,
        }
    }
}

fn abi_text(major: u16, minor: Option<u16>) -> String {
    match minor {
        Some(minor) => format!("{major}.{minor}"),
        None => format!("{major}.x"),
    }
}

/// The validated function table of a plugin, copied out of the plugin at load time.
#[derive(Clone, Copy)]
enum Vtable {
    Crypto(CryptoVtable),
    Vif(VifVtable),
    Mobility(MobilityVtable),
}

impl Vtable {
    fn kind(&self) -> PluginKind {
        match self {
            Self::Crypto(_) => PluginKind::CryptoSuite,
            Self::Vif(_) => PluginKind::VirtualInterface,
            Self::Mobility(_) => PluginKind::MobilityDetector,
        }
    }
}

/// The first fields of every major version's header: enough to tell what a plugin is.
#[repr(C)]
#[derive(Clone, Copy)]
struct HeaderPrefix {
    magic: u32,
    abi_major: u16,
    abi_minor: u16,
    header_size: u32,
}

/// Reads the version prefix of a header; `None` for a null, misaligned or non-cyphonic
/// pointer.
///
/// # Safety
/// A non-null, aligned `header` points at least at a [`HeaderPrefix`].
#[cfg(feature = "loader")]
pub(crate) unsafe fn header_prefix_version(header: *const PluginHeader) -> Option<AbiVersion> {
    let prefix = header.cast::<HeaderPrefix>();
    if prefix.is_null() || !prefix.is_aligned() {
        return None;
    }
    // SAFETY: per the caller.
    let prefix = unsafe { prefix.read() };
    (prefix.magic == MAGIC).then_some(AbiVersion {
        major: prefix.abi_major,
        minor: prefix.abi_minor,
    })
}

/// Checks a header returned by an entry point and builds the [`Plugin`].
///
/// # Safety
/// A non-null `header` points at `header_size` readable bytes that stay valid and
/// unchanged forever; if it passes the size checks its strings are NUL-terminated and
/// its vtable pointer addresses `vtable_size` readable bytes of `kind`'s table.
pub(crate) unsafe fn validate(
    header: *const PluginHeader,
    path: &Path,
) -> Result<Plugin, LoadError> {
    let path_buf = || path.to_path_buf();
    let prefix_ptr = header.cast::<HeaderPrefix>();
    if prefix_ptr.is_null() || !header.is_aligned() {
        return Err(LoadError::BadHeaderPointer { path: path_buf() });
    }
    // SAFETY: non-null and aligned; every header starts with the prefix (caller).
    let prefix = unsafe { prefix_ptr.read() };
    if prefix.magic != MAGIC {
        return Err(LoadError::BadMagic {
            path: path_buf(),
            found: prefix.magic,
        });
    }
    let plugin = AbiVersion {
        major: prefix.abi_major,
        minor: prefix.abi_minor,
    };
    let host = AbiVersion::HOST;
    if plugin.major != host.major {
        return Err(LoadError::AbiMismatch {
            path: path_buf(),
            plugin_major: plugin.major,
            plugin_minor: Some(plugin.minor),
            host,
        });
    }
    let needed = size_of::<PluginHeader>() as u32;
    if prefix.header_size < needed {
        return Err(LoadError::HeaderTooSmall {
            path: path_buf(),
            size: prefix.header_size,
            needed,
            plugin,
            host,
        });
    }
    // SAFETY: `header_size` bytes are readable and cover our whole `PluginHeader`
    // (checked above); valid forever (caller).
    let header: &'static PluginHeader = unsafe { &*header };
    let Some(kind) = PluginKind::from_raw(header.kind) else {
        return Err(LoadError::UnknownKind {
            path: path_buf(),
            kind: header.kind,
            plugin,
            host,
        });
    };
    // SAFETY: null or NUL-terminated and immortal (caller).
    let name = unsafe { static_str(header.name) }
        .filter(|n| !n.is_empty())
        .ok_or_else(|| LoadError::BadString {
            path: path_buf(),
            field: "name",
        })?;
    // SAFETY: as above.
    let version = unsafe { static_str(header.version) }.ok_or_else(|| LoadError::BadString {
        path: path_buf(),
        field: "version",
    })?;

    let needed = kind.min_vtable_size();
    if header.vtable.is_null() || !header.vtable.cast::<CryptoVtable>().is_aligned() {
        return Err(LoadError::BadVtablePointer {
            path: path_buf(),
            kind,
        });
    }
    // SAFETY: non-null and aligned; every vtable starts with `struct_size` (caller).
    let struct_size = unsafe { header.vtable.cast::<u32>().read() };
    let size = header.vtable_size.min(struct_size);
    if size < needed {
        return Err(LoadError::VtableTooSmall {
            path: path_buf(),
            kind,
            size,
            needed,
            plugin,
            host,
        });
    }
    let missing = |function| LoadError::MissingFunction {
        path: path_buf(),
        kind,
        function,
    };
    let vtable = match kind {
        PluginKind::CryptoSuite => {
            // SAFETY: the vtable has at least `needed` = size_of::<CryptoVtable>() readable bytes
            // laid out as `kind`'s table (checked above and promised by the caller).
            let t = unsafe { header.vtable.cast::<CryptoVtable>().read() };
            require(&[
                ("info", t.info.is_some()),
                ("key_new", t.key_new.is_some()),
                ("key_free", t.key_free.is_some()),
                ("seal_batch", t.seal_batch.is_some()),
                ("open_batch", t.open_batch.is_some()),
            ])
            .map_err(missing)?;
            Vtable::Crypto(t)
        }
        PluginKind::VirtualInterface => {
            // SAFETY: the vtable has at least `needed` = size_of::<VifVtable>() readable bytes
            // laid out as `kind`'s table (checked above and promised by the caller).
            let t = unsafe { header.vtable.cast::<VifVtable>().read() };
            // `pollable_fd` is optional: null means UNSUPPORTED.
            require(&[
                ("open", t.open.is_some()),
                ("info", t.info.is_some()),
                ("read_batch", t.read_batch.is_some()),
                ("write_batch", t.write_batch.is_some()),
                ("wake", t.wake.is_some()),
                ("close", t.close.is_some()),
            ])
            .map_err(missing)?;
            Vtable::Vif(t)
        }
        PluginKind::MobilityDetector => {
            // SAFETY: the vtable has at least `needed` = size_of::<MobilityVtable>() readable bytes
            // laid out as `kind`'s table (checked above and promised by the caller).
            let t = unsafe { header.vtable.cast::<MobilityVtable>().read() };
            require(&[
                ("open", t.open.is_some()),
                ("wait", t.wait.is_some()),
                ("snapshot", t.snapshot.is_some()),
                ("wake", t.wake.is_some()),
                ("close", t.close.is_some()),
            ])
            .map_err(missing)?;
            Vtable::Mobility(t)
        }
    };
    Ok(Plugin {
        origin: path_buf(),
        header,
        name,
        version,
        vtable,
    })
}

fn require(functions: &[(&'static str, bool)]) -> Result<(), &'static str> {
    match functions.iter().find(|(_, present)| !present) {
        Some((name, _)) => Err(name),
        None => Ok(()),
    }
}

/// # Safety
/// A non-null `ptr` is a NUL-terminated string that is never freed or changed.
unsafe fn static_str(ptr: *const c_char) -> Option<&'static str> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: per the caller.
    unsafe { CStr::from_ptr(ptr) }.to_str().ok()
}

/// The error for a failed call: its status and the plugin's last-error message. An
/// `AUTH_FAILED` (a forged or corrupted packet, so attacker-driven and frequent) gets a
/// fixed message instead, so rejecting it never allocates.
pub(crate) fn call_error(status: i32, last_error: Option<LastErrorFn>) -> PluginError {
    let status = Status(status);
    if status == Status::AUTH_FAILED {
        return PluginError::new(status, "authentication failed");
    }
    let message = match last_error {
        // SAFETY: `f` is the plugin's `last_error`; we pass a buffer of the size we say.
        Some(f) => unsafe { fetch_last_error(f) },
        None => "(plugin provides no error messages)".to_owned(),
    };
    PluginError::new(status, message)
}

/// Messages longer than this are cut: a garbage length must not make the host allocate
/// without bound.
const MAX_MESSAGE: usize = 64 * 1024;

/// # Safety
/// `f` is a plugin's `last_error` function.
unsafe fn fetch_last_error(f: LastErrorFn) -> String {
    let mut small = [0u8; 256];
    // SAFETY: `small` has `small.len()` writable bytes.
    let full = unsafe { f(small.as_mut_ptr(), small.len()) };
    if full <= small.len() {
        return String::from_utf8_lossy(&small[..full]).into_owned();
    }
    let mut big = vec![0u8; full.min(MAX_MESSAGE)];
    // SAFETY: `big` has `big.len()` writable bytes.
    let again = unsafe { f(big.as_mut_ptr(), big.len()) };
    big.truncate(again.min(big.len()));
    String::from_utf8_lossy(&big).into_owned()
}

/// Turns a call's status into a result.
pub(crate) fn check(status: i32, last_error: Option<LastErrorFn>) -> Result<(), PluginError> {
    if status == Status::OK.code() {
        Ok(())
    } else {
        Err(call_error(status, last_error))
    }
}
