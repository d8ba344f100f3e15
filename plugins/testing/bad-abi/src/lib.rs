//! A test fixture: a shared library that looks like a plugin built for plugin ABI 2.0.
//! It exports `cyphonic_plugin_entry_v2` and not `_v1`, so an ABI 1 host must refuse it
//! with "built for plugin ABI 2.0, this host speaks 1.0". Only the header prefix that
//! every major shares (magic, major, minor, header size) is meaningful.

// `no_mangle` is an unsafe attribute; exporting the entry symbol is this crate's purpose.
#![allow(unsafe_code)]

/// The frozen start of every major version's plugin header.
#[repr(C)]
#[derive(Debug)]
pub struct FutureHeader {
    magic: u32,
    abi_major: u16,
    abi_minor: u16,
    header_size: u32,
    kind: u32,
}

static HEADER: FutureHeader = FutureHeader {
    magic: 0x4859_5043,
    abi_major: 2,
    abi_minor: 0,
    header_size: size_of::<FutureHeader>() as u32,
    kind: 2,
};

/// The entry point of a (hypothetical) plugin ABI 2.
#[unsafe(no_mangle)]
pub extern "C" fn cyphonic_plugin_entry_v2() -> *const FutureHeader {
    &HEADER
}
