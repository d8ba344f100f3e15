//! The adapter's GUID, derived from its name: the same name gives the same GUID on every
//! start, so Windows sees the same adapter (NetCfgInstanceId) and keeps its network
//! profile (Private, firewall rules) instead of creating "Network 2", "Network 3"...

use sha2::{Digest, Sha256};

/// The namespace of cyphonic adapter GUIDs. Random, and fixed forever: changing it
/// would give every installed adapter a new identity and a new network profile.
const NAMESPACE: u128 = 0x59c7_94a7_523b_4e4e_a63c_e053_0513_c777;

/// The GUID of the adapter named `name`, as the `u128` whose big-endian hex digits are
/// the GUID's text (`GUID::from_u128`'s convention).
///
/// SHA-256 over the namespace and the name lowercased (Windows compares adapter names
/// case-insensitively, so "Cyphonic" and "cyphonic" are one adapter), truncated to 128
/// bits and stamped as an RFC 9562 version 8 (custom) UUID.
pub fn adapter_guid(name: &str) -> u128 {
    let digest = Sha256::new()
        .chain_update(NAMESPACE.to_be_bytes())
        .chain_update(name.to_lowercase().as_bytes())
        .finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    let raw = u128::from_be_bytes(first);
    // Version nibble (bits 76..80) = 8, variant (bits 62..64) = 0b10.
    (raw & !(0xF << 76) & !(0x3 << 62)) | (0x8 << 76) | (0x2 << 62)
}

/// `{XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX}`, as Windows prints GUIDs.
pub(crate) fn format_guid(guid: u128) -> String {
    let hex = format!("{guid:032X}");
    format!(
        "{{{}-{}-{}-{}-{}}}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_is_stable_case_insensitive_and_distinct() {
        let a = adapter_guid("cyphonic");
        assert_eq!(a, adapter_guid("cyphonic"));
        assert_eq!(a, adapter_guid("CyPhonic"));
        assert_ne!(a, adapter_guid("cyphonic2"));
        assert_ne!(a, adapter_guid(""));
        // Pinned (computed independently with Python's hashlib): a change here changes
        // every installed adapter's identity.
        assert_eq!(format_guid(a), "{DEBC6C67-4C4E-8ECF-925D-6DC2AC1E9BDE}");
    }

    #[test]
    fn guid_has_version_8_and_rfc_variant() {
        for name in ["cyphonic", "a", "a much longer adapter name with spaces"] {
            let g = adapter_guid(name);
            assert_eq!((g >> 76) & 0xF, 8, "{name}");
            assert_eq!((g >> 62) & 0x3, 0b10, "{name}");
        }
    }

    #[test]
    fn guid_text_is_windows_style() {
        assert_eq!(
            format_guid(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
            "{01234567-89AB-CDEF-0011-223344556677}"
        );
        assert_eq!(format_guid(0), "{00000000-0000-0000-0000-000000000000}");
    }
}
