//! Password hashing: Argon2id with a random salt, stored as a PHC string, so a leaked
//! database does not log anyone in (the original CYPHONIC stored the same unsalted
//! SHA-512 that clients sent). Hashing is deliberately slow: callers run it on a
//! blocking thread, never on an async worker.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::config::Argon2Settings;

/// The most bytes a password may have (the login message allows 1024).
pub const MAX_PASSWORD_LEN: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("password must be 1..={MAX_PASSWORD_LEN} bytes")]
    BadLength,
    #[error("argon2 parameters: {0}")]
    Params(String),
    #[error("hashing failed: {0}")]
    Hash(String),
}

/// Hashes `password` with Argon2id and the configured cost.
pub fn hash(password: &[u8], settings: &Argon2Settings) -> Result<String, PasswordError> {
    if password.is_empty() || password.len() > MAX_PASSWORD_LEN {
        return Err(PasswordError::BadLength);
    }
    let params = Params::new(
        settings.memory_kib,
        settings.iterations,
        settings.parallelism,
        None,
    )
    .map_err(|e| PasswordError::Params(e.to_string()))?;
    let salt = SaltString::generate(&mut OsRng);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Checks `password` against a stored PHC string, with the parameters recorded in it.
/// A corrupt stored hash never matches.
pub fn verify(password: &[u8], stored: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    Argon2::default().verify_password(password, &parsed).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> Argon2Settings {
        Argon2Settings {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        }
    }

    #[test]
    fn hash_verifies_only_the_right_password() {
        let stored = hash(b"correct horse", &cheap()).unwrap();
        assert!(stored.starts_with("$argon2id$"));
        assert!(verify(b"correct horse", &stored));
        assert!(!verify(b"correct horsf", &stored));
        assert!(!verify(b"correct horse", "not a hash"));
        // Salted: the same password hashes differently each time.
        assert_ne!(stored, hash(b"correct horse", &cheap()).unwrap());
        assert!(matches!(hash(b"", &cheap()), Err(PasswordError::BadLength)));
    }
}
