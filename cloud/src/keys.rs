//! The cloud's keys on disk: the Ed25519 signing key in `<data_dir>/cloud.key`, the
//! relay key derived from it (or, on a TRS host without the signing key, read from the
//! file `key export-relay` wrote), and the text form of the public key nodes pin.
//!
//! Secret files are text: optional `#` comment lines and one line of 64 hex digits (the
//! Ed25519 seed, or the relay key). They are created with mode 0600 under a temporary
//! name and hard-linked into place, so they are never readable by others, not even
//! briefly, and two processes starting at once on an empty data directory end up with
//! the same key (the loser of the link reads the winner's file). A secret file that is
//! group- or world-readable is refused.
//!
//! The pin text is `cyphonic1:` followed by the 64 lower-case hex digits of the Ed25519
//! public key, e.g. `cyphonic1:3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c`.
//! Hex has no characters a terminal or YAML treats specially, and the prefix says what
//! the string is (and which format version) wherever it is pasted.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
#[cfg(unix)]
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cyphonic_proto::credential::CloudKeyId;
use cyphonic_proto::relay::RelayKey;
use ed25519_dalek::{SigningKey, VerifyingKey};
use hkdf::Hkdf;
use rand_core::{OsRng, RngCore as _};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::context::CloudKeys;

/// The signing key's file name inside the data directory.
pub const SIGNING_KEY_FILE: &str = "cloud.key";
/// Prefix of the pin text (see the module docs).
pub const PUBLIC_KEY_PREFIX: &str = "cyphonic1:";

/// Must match `proto::relay`'s private label: checked at run time by [`export_relay`].
const RELAY_KEY_LABEL: &[u8] = b"cyphonic relay key v1";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} holds a secret key but has mode {mode:03o} (readable by others); \
         run `chmod 600 {}` and consider the key exposed",
        .path.display(), .path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{}: {reason}", .path.display())]
    Malformed { path: PathBuf, reason: &'static str },
    #[error("{0} already exists; remove it first")]
    Exists(String),
    #[error("public key `{text}`: {reason}")]
    BadPublicKey { text: String, reason: &'static str },
    #[error(
        "this process has only a relay key; the signing key lives in the main cloud's data directory"
    )]
    NoSigningKey,
    #[error(
        "the relay key derivation does not match cyphonic-proto's (rebuild from one source tree)"
    )]
    RelayDerivation,
}

/// Loads `<data_dir>/cloud.key`, creating a fresh key there on first start. `data_dir`
/// must exist.
pub fn load_or_create(data_dir: &Path) -> Result<CloudKeys, KeyError> {
    let path = data_dir.join(SIGNING_KEY_FILE);
    let seed = match read_secret_file(&path) {
        Ok(seed) => seed,
        Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            let mut fresh = Zeroizing::new([0u8; 32]);
            OsRng.fill_bytes(fresh.as_mut());
            match create_secret_file(
                &path,
                "cyphonic cloud signing key (Ed25519 seed). Secret: keep mode 0600, back it up.",
                &fresh,
            ) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "created a new cloud signing key");
                    fresh
                }
                // Another process created it first: use theirs.
                Err(KeyError::Exists(_)) => read_secret_file(&path)?,
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    Ok(keys_from_seed(&seed))
}

/// Keys for a TRS that has only the relay key (`services.trs.relay_key_file`).
pub fn load_relay_only(path: &Path) -> Result<CloudKeys, KeyError> {
    let key = read_secret_file(path)?;
    Ok(CloudKeys {
        signing: None,
        trusted: Vec::new(),
        relay: RelayKey::from_bytes(*key),
    })
}

/// The relay key as 64 hex digits, for `services.trs.relay_key_file` on TRS hosts.
/// Secret: whoever has it can mint relay tickets (but not credentials).
pub fn export_relay(keys: &CloudKeys) -> Result<Zeroizing<String>, KeyError> {
    let signing = keys.signing.as_ref().ok_or(KeyError::NoSigningKey)?;
    let seed = Zeroizing::new(signing.to_bytes());
    // `RelayKey` never reveals its bytes, so recompute them the way proto does and
    // prove it by comparing key ids.
    let hkdf = Hkdf::<Sha256>::new(Some(RELAY_KEY_LABEL), seed.as_ref());
    let mut bytes = Zeroizing::new([0u8; 32]);
    hkdf.expand(RELAY_KEY_LABEL, bytes.as_mut())
        .map_err(|_| KeyError::RelayDerivation)?;
    if RelayKey::from_bytes(*bytes).key_id() != keys.relay.key_id() {
        return Err(KeyError::RelayDerivation);
    }
    Ok(Zeroizing::new(hex::encode(bytes.as_ref())))
}

/// Writes [`export_relay`]'s key to a new file (mode 0600) that
/// [`load_relay_only`] reads. Refuses to overwrite.
pub fn write_relay_file(keys: &CloudKeys, path: &Path) -> Result<(), KeyError> {
    let hex_key = export_relay(keys)?;
    let mut key = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(hex_key.as_bytes(), key.as_mut())
        .map_err(|_| KeyError::RelayDerivation)?;
    create_secret_file(
        path,
        "cyphonic relay key (services.trs.relay_key_file). Secret: keep mode 0600.",
        &key,
    )
}

/// The text a node pins: `cyphonic1:<64 hex digits>`.
pub fn public_key_text(key: &VerifyingKey) -> String {
    format!("{PUBLIC_KEY_PREFIX}{}", hex::encode(key.as_bytes()))
}

/// Parses [`public_key_text`]'s format (also without the prefix, any case, surrounding
/// whitespace ignored).
pub fn parse_public_key_text(text: &str) -> Result<VerifyingKey, KeyError> {
    let bad = |reason| KeyError::BadPublicKey {
        text: text.to_owned(),
        reason,
    };
    let trimmed = text.trim();
    let digits = trimmed.strip_prefix(PUBLIC_KEY_PREFIX).unwrap_or(trimmed);
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(digits, &mut bytes)
        .map_err(|_| bad("expected `cyphonic1:` and 64 hex digits"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| bad("not an Ed25519 public key"))
}

/// The key id credentials name (`CloudKeyId`), as 16 hex digits.
pub fn key_id_text(key: &VerifyingKey) -> String {
    hex::encode(CloudKeyId::of(key).0)
}

fn keys_from_seed(seed: &[u8; 32]) -> CloudKeys {
    let signing = SigningKey::from_bytes(seed);
    CloudKeys {
        trusted: vec![signing.verifying_key()],
        relay: RelayKey::derive(seed),
        signing: Some(signing),
    }
}

/// Reads a secret file, refusing one that others may read.
fn read_secret_file(path: &Path) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let io_err = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let malformed = |reason| KeyError::Malformed {
        path: path.to_owned(),
        reason,
    };
    let mut file = File::open(path).map_err(io_err)?;
    // Checked on the open handle, so the file cannot be swapped in between.
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(malformed("not a regular file"));
    }
    // The cloud is deployed on Unix; elsewhere (a developer's Windows build) the file
    // has whatever ACL its directory gives it.
    #[cfg(unix)]
    {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
    }
    if meta.len() > 4096 {
        return Err(malformed("too large for a key file"));
    }
    let mut text = Zeroizing::new(String::new());
    file.read_to_string(&mut text).map_err(io_err)?;
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let line = lines.next().ok_or_else(|| malformed("no key line"))?;
    if lines.next().is_some() {
        return Err(malformed("more than one key line"));
    }
    let mut key = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(line, key.as_mut())
        .map_err(|_| malformed("the key line must be 64 hex digits"))?;
    Ok(key)
}

/// Creates `path` holding `key` as hex under a `#` comment, mode 0600, atomically and
/// without replacing an existing file (`KeyError::Exists`).
fn create_secret_file(path: &Path, comment: &str, key: &[u8; 32]) -> Result<(), KeyError> {
    let io_err = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => dir.to_owned(),
        None => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io_err(io::Error::new(io::ErrorKind::InvalidInput, "no file name")))?;
    let temp = dir.join(format!(
        ".{}.{}.{:016x}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        OsRng.next_u64()
    ));
    let written = (|| -> io::Result<()> {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        options.mode(0o600);
        let mut file = options.open(&temp)?;
        let text = Zeroizing::new(format!("# {comment}\n{}\n", hex::encode(key)));
        file.write_all(text.as_bytes())?;
        file.sync_all()
    })();
    let linked = written.and_then(|()| std::fs::hard_link(&temp, path));
    // The temporary name goes either way; `path` (if linked) keeps the data.
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => {
            // Make the new directory entry durable (best effort: some filesystems refuse).
            if let Ok(dir) = File::open(&dir) {
                let _ = dir.sync_all();
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Err(KeyError::Exists(path.display().to_string()))
        }
        Err(e) => Err(io_err(e)),
    }
}

// The tests check Unix file modes; the cloud is deployed on Unix.
#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_a_private_key_once_and_reloads_it() {
        let dir = tempfile::tempdir().unwrap();
        let keys = load_or_create(dir.path()).unwrap();
        let path = dir.path().join(SIGNING_KEY_FILE);
        assert_eq!(mode(&path), 0o600);
        let signing = keys.signing.as_ref().unwrap();
        assert_eq!(keys.trusted, vec![signing.verifying_key()]);
        assert_eq!(
            keys.relay.key_id(),
            RelayKey::derive(&signing.to_bytes()).key_id()
        );

        let again = load_or_create(dir.path()).unwrap();
        assert_eq!(again.signing.unwrap().to_bytes(), signing.to_bytes());
        assert_eq!(again.relay.key_id(), keys.relay.key_id());
        // Only the key file: no temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(SIGNING_KEY_FILE)]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# "), "{text}");
    }

    #[test]
    fn concurrent_first_starts_agree_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let publics: Vec<VerifyingKey> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| load_or_create(dir.path()).unwrap().trusted[0]))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(publics.iter().all(|k| k == &publics[0]));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn refuses_a_readable_key_file() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        let path = dir.path().join(SIGNING_KEY_FILE);
        for bad in [0o644, 0o640, 0o604] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(bad)).unwrap();
            let err = load_or_create(dir.path()).unwrap_err();
            assert!(matches!(err, KeyError::Permissions { .. }), "{err}");
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        load_or_create(dir.path()).unwrap();
    }

    #[test]
    fn refuses_malformed_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SIGNING_KEY_FILE);
        for text in [
            "",
            "# only a comment\n",
            "abcd\n",
            &format!("{0}\n{0}\n", "00".repeat(32)),
        ] {
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let err = load_or_create(dir.path()).unwrap_err();
            assert!(matches!(err, KeyError::Malformed { .. }), "{text:?}: {err}");
        }
        // The documented format loads.
        std::fs::write(&path, format!("# comment\n\n  {}  \n", "AB".repeat(32))).unwrap();
        let keys = load_or_create(dir.path()).unwrap();
        assert_eq!(keys.signing.unwrap().to_bytes(), [0xab; 32]);
    }

    #[test]
    fn relay_key_exports_to_a_file_a_remote_trs_loads() {
        let dir = tempfile::tempdir().unwrap();
        let keys = load_or_create(dir.path()).unwrap();
        let hex_key = export_relay(&keys).unwrap();
        assert_eq!(hex_key.len(), 64);
        let relay_path = dir.path().join("relay.key");
        write_relay_file(&keys, &relay_path).unwrap();
        assert_eq!(mode(&relay_path), 0o600);
        assert!(
            std::fs::read_to_string(&relay_path)
                .unwrap()
                .contains(hex_key.as_str())
        );
        assert!(matches!(
            write_relay_file(&keys, &relay_path),
            Err(KeyError::Exists(_))
        ));

        let remote = load_relay_only(&relay_path).unwrap();
        assert!(remote.signing.is_none() && remote.trusted.is_empty());
        assert_eq!(remote.relay.key_id(), keys.relay.key_id());
        assert!(matches!(export_relay(&remote), Err(KeyError::NoSigningKey)));

        // A bare `key export-relay > file` with a loose umask is refused until chmod.
        let loose = dir.path().join("loose.key");
        std::fs::write(&loose, format!("{}\n", hex_key.as_str())).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_relay_only(&loose),
            Err(KeyError::Permissions { .. })
        ));
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            load_relay_only(&loose).unwrap().relay.key_id(),
            keys.relay.key_id()
        );
    }

    #[test]
    fn public_key_text_round_trips() {
        let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
        let text = public_key_text(&key);
        assert!(
            text.starts_with("cyphonic1:") && text.len() == 10 + 64,
            "{text}"
        );
        assert_eq!(parse_public_key_text(&text).unwrap(), key);
        assert_eq!(
            parse_public_key_text(&format!(
                " {}\n",
                text.to_uppercase().replace("CYPHONIC1:", "")
            ))
            .unwrap(),
            key
        );
        for bad in [
            "",
            "cyphonic1:",
            "cyphonic1:zz",
            &text[..text.len() - 2],
            "cyphonic2:00",
        ] {
            assert!(parse_public_key_text(bad).is_err(), "{bad}");
        }
        assert_eq!(key_id_text(&key), hex::encode(CloudKeyId::of(&key).0));
        assert_eq!(key_id_text(&key).len(), 16);
    }
}
