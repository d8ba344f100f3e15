//! Logging this device in at the AS and storing the credential it issues: what
//! `cyphonic login` and the daemon's starter page share. The caller then tells the
//! daemon (`Request::CredentialChanged`), which comes up with the new credential.
//!
//! The password is only ever held in [`Zeroizing`] buffers and never formatted.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::SystemTime;

use cyphonic_proto::time::UnixTime;
use zeroize::Zeroizing;

use crate::config::NodeConfig;
use crate::signaling::{AuthClient, SignalingError};
use crate::state::{StateDir, StateError, StoredCredential};

/// Who this device is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedIn {
    pub fqdn: String,
    pub vip4: Ipv4Addr,
    pub vip6: Ipv6Addr,
    /// The AS that issued the credential.
    pub auth: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("the device ID is empty")]
    EmptyDeviceId,
    #[error("the password is empty")]
    EmptyPassword,
    #[error("cloud.key: {0}")]
    CloudKey(String),
    #[error("reading the node key: {0}")]
    NodeKey(StateError),
    #[error("resolving the AS {addr}: {error}")]
    Resolve { addr: String, error: std::io::Error },
    /// The AS refused (wrong device ID or password, disabled device) or did not answer.
    #[error("logging in at the AS {auth}: {error}")]
    Auth {
        auth: SocketAddr,
        error: SignalingError,
    },
    #[error("storing the credential: {0}")]
    Store(StateError),
}

/// Logs `device_id` in at the configured AS with `password` and stores the credential
/// (and the node key, on first use) in the state directory.
pub async fn login(
    config: &NodeConfig,
    device_id: &str,
    password: Zeroizing<Vec<u8>>,
) -> Result<LoggedIn, LoginError> {
    let device_id = device_id.trim();
    if device_id.is_empty() {
        return Err(LoginError::EmptyDeviceId);
    }
    if password.is_empty() {
        return Err(LoginError::EmptyPassword);
    }
    let cloud_key = config.cloud_key().map_err(LoginError::CloudKey)?;
    let state = StateDir::new(&config.state_dir);
    let static_secret = state.node_key().map_err(LoginError::NodeKey)?;
    let resolve_error = |error| LoginError::Resolve {
        addr: config.cloud.auth.clone(),
        error,
    };
    let auth = tokio::net::lookup_host(config.cloud.auth.as_str())
        .await
        .map_err(resolve_error)?
        .next()
        .ok_or_else(|| {
            resolve_error(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no address",
            ))
        })?;
    let outcome = AuthClient::default()
        .login(auth, &cloud_key, &static_secret, device_id, password)
        .await
        .map_err(|error| LoginError::Auth { auth, error })?;
    let c = outcome.credential.credential();
    let logged_in = LoggedIn {
        fqdn: c.fqdn.to_string(),
        vip4: c.vip4,
        vip6: c.vip6,
        auth,
    };
    state
        .store_credential(&StoredCredential {
            credential: outcome.credential.clone(),
            domain: outcome.domain,
            device_id: device_id.to_owned(),
            obtained_at: UnixTime::from_system_time(SystemTime::now()),
            renew_after_secs: outcome.renew_after.as_secs(),
        })
        .map_err(LoginError::Store)?;
    Ok(logged_in)
}
