//! What the node keeps on disk between runs, in its state directory (mode 0700 on Unix;
//! on Windows a protected DACL for SYSTEM and Administrators only, inherited by the
//! files): the static X25519 key (`node.key`) and the credential the AS issued for it
//! (`credential.json`), both mode 0600 on Unix. `cyphonic login` writes them; the daemon reads
//! them at start and rewrites the credential on every renewal.
//!
//! Files are replaced atomically (write a temporary file, fsync, rename), so a crash
//! never leaves half a key behind.

use std::fs;
use std::io::Write;
#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cyphonic_proto::credential::SignedCredential;
use cyphonic_proto::time::UnixTime;
use cyphonic_proto::wire::Fqdn;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

const KEY_FILE: &str = "node.key";
const CREDENTIAL_FILE: &str = "credential.json";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
}

/// The credential as stored, with what the login answered besides it.
#[derive(Debug, Clone)]
pub struct StoredCredential {
    pub credential: SignedCredential,
    pub domain: Fqdn,
    pub device_id: String,
    /// When the credential was obtained and when to renew it.
    pub obtained_at: UnixTime,
    pub renew_after_secs: u64,
}

impl StoredCredential {
    /// The Unix second at which renewal is due.
    pub fn renew_at(&self) -> u64 {
        let not_after = self.credential.credential().not_after.0;
        let planned = self.obtained_at.0.saturating_add(self.renew_after_secs);
        // Never later than a minute before expiry, whatever the AS said.
        planned.min(not_after.saturating_sub(60))
    }
}

#[derive(Serialize, Deserialize)]
struct CredentialFile {
    credential: String,
    domain: String,
    device_id: String,
    obtained_at: u64,
    renew_after_secs: u64,
}

/// The node's state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The node's static key, created on first use.
    pub fn node_key(&self) -> Result<StaticSecret, StateError> {
        let path = self.dir.join(KEY_FILE);
        match fs::read(&path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                let array: [u8; 32] =
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| StateError::Corrupt {
                            path: path.clone(),
                            message: format!("expected 32 bytes, found {}", bytes.len()),
                        })?;
                Ok(StaticSecret::from(array))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = Zeroizing::new([0u8; 32]);
                OsRng.fill_bytes(&mut *bytes);
                self.write_private(KEY_FILE, &*bytes)?;
                Ok(StaticSecret::from(*bytes))
            }
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    /// The stored credential, `None` when the node never logged in (or logged out).
    pub fn credential(&self) -> Result<Option<StoredCredential>, StateError> {
        let path = self.dir.join(CREDENTIAL_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        let corrupt = |message: String| StateError::Corrupt {
            path: path.clone(),
            message,
        };
        let file: CredentialFile =
            serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        let bytes = hex::decode(&file.credential).map_err(|e| corrupt(e.to_string()))?;
        let credential = SignedCredential::parse(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let domain = Fqdn::new(&file.domain).map_err(|e| corrupt(e.to_string()))?;
        Ok(Some(StoredCredential {
            credential,
            domain,
            device_id: file.device_id,
            obtained_at: UnixTime(file.obtained_at),
            renew_after_secs: file.renew_after_secs,
        }))
    }

    pub fn store_credential(&self, stored: &StoredCredential) -> Result<(), StateError> {
        let file = CredentialFile {
            credential: hex::encode(stored.credential.as_bytes()),
            domain: stored.domain.as_str().to_owned(),
            device_id: stored.device_id.clone(),
            obtained_at: stored.obtained_at.0,
            renew_after_secs: stored.renew_after_secs,
        };
        let text = serde_json::to_string_pretty(&file).map_err(|e| StateError::Corrupt {
            path: self.dir.join(CREDENTIAL_FILE),
            message: e.to_string(),
        })?;
        self.write_private(CREDENTIAL_FILE, text.as_bytes())
    }

    /// Forgets the credential (logout). The node key stays: it names no one without a
    /// credential.
    pub fn remove_credential(&self) -> Result<bool, StateError> {
        let path = self.dir.join(CREDENTIAL_FILE);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    fn ensure_dir(&self) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: self.dir.clone(),
            source,
        };
        #[cfg(unix)]
        {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .map_err(io)?;
            fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700)).map_err(io)
        }
        // The protected DACL is inherited by every file created inside, the temporary
        // file of `write_private` included, so no file is ever readable by other users.
        #[cfg(windows)]
        {
            crate::windows::acl::create_private_dir(&self.dir).map_err(io)
        }
    }

    fn write_private(&self, name: &str, bytes: &[u8]) -> Result<(), StateError> {
        self.ensure_dir()?;
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        let _ = fs::remove_file(&tmp);
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        options.mode(0o600);
        let mut f = options.open(&tmp).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, &path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cyphonic_proto::credential::{CloudKeyId, Credential};
    use cyphonic_proto::wire::NodeId;
    use ed25519_dalek::SigningKey;

    #[cfg(unix)]
    #[test]
    fn key_is_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(&dir.path().join("state"));
        let a = state.node_key().unwrap();
        let b = state.node_key().unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
        let mode = fs::metadata(state.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = fs::metadata(state.path()).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
    }

    #[test]
    fn credential_round_trips_and_corruption_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        assert!(state.credential().unwrap().is_none());
        let cloud = SigningKey::from_bytes(&[7; 32]);
        let credential = Credential {
            cloud_key_id: CloudKeyId::of(&cloud.verifying_key()),
            node_id: NodeId([1; 16]),
            not_before: UnixTime(1000),
            not_after: UnixTime(5000),
            static_public: [9; 32],
            vip4: "100.64.0.2".parse().unwrap(),
            vip6: "fd00::2".parse().unwrap(),
            fqdn: Fqdn::new("a.cyphonic").unwrap(),
        }
        .sign(&cloud);
        let stored = StoredCredential {
            credential,
            domain: Fqdn::new("cyphonic").unwrap(),
            device_id: "a".into(),
            obtained_at: UnixTime(1000),
            renew_after_secs: 1800,
        };
        state.store_credential(&stored).unwrap();
        let back = state.credential().unwrap().unwrap();
        assert_eq!(back.credential.as_bytes(), stored.credential.as_bytes());
        assert_eq!(back.renew_at(), 2800);
        fs::write(state.path().join(CREDENTIAL_FILE), "{").unwrap();
        assert!(matches!(
            state.credential(),
            Err(StateError::Corrupt { .. })
        ));
        assert!(state.remove_credential().unwrap());
        assert!(!state.remove_credential().unwrap());
    }
}
