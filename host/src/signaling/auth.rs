//! Login and credential renewal at the Authentication Service.
//!
//! Each call opens a short-lived channel (purpose `Login` for a login, the current
//! credential for a renewal), sends one request, checks the answer and lets the channel
//! lapse. The issued credential is verified before it is returned: signed by the pinned
//! cloud key, valid now, and naming this node's static key.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use cyphonic_proto::channel::{ChannelClient, Purpose, Service, Signaling};
use cyphonic_proto::credential::SignedCredential;
use cyphonic_proto::wire::Fqdn;
use cyphonic_proto::wire::signal::{LoginRequest, SignalMessage};
use ed25519_dalek::VerifyingKey;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::driver::{self, Outgoing, Setup};
use super::{ClientConfig, CloudSocket, SignalingError, connected_socket, unix_now};

/// What the node software reports in `LoginRequest.client`.
const CLIENT_NAME: &str = concat!("cyphonicd ", env!("CARGO_PKG_VERSION"));

/// Talks to an AS. Cheap to create; every call uses its own channel.
#[derive(Debug, Clone, Default)]
pub struct AuthClient {
    config: ClientConfig,
}

/// A credential just issued by the AS.
#[derive(Clone)]
pub struct LoginOutcome {
    /// Verified against the pinned cloud key and this node's static key.
    pub credential: SignedCredential,
    /// Renew this long after receipt.
    pub renew_after: Duration,
    /// The overlay domain; names under it resolve through the cloud.
    pub domain: Fqdn,
}

impl fmt::Debug for LoginOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.credential.credential();
        f.debug_struct("LoginOutcome")
            .field("node_id", &c.node_id)
            .field("fqdn", &c.fqdn)
            .field("not_after", &c.not_after)
            .field("renew_after", &self.renew_after)
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl AuthClient {
    pub fn new(config: ClientConfig) -> Self {
        Self { config }
    }

    /// Logs in with device id and password and returns the issued credential. The
    /// password travels only inside the forward-secret channel and is wiped afterwards.
    pub async fn login(
        &self,
        as_addr: SocketAddr,
        cloud_public: &VerifyingKey,
        node_static: &StaticSecret,
        device_id: &str,
        password: Zeroizing<Vec<u8>>,
    ) -> Result<LoginOutcome, SignalingError> {
        let request = SignalMessage::LoginRequest(LoginRequest {
            device_id: device_id.to_owned(),
            password,
            static_public: PublicKey::from(node_static).to_bytes(),
            client: CLIENT_NAME.to_owned(),
        });
        self.exchange(as_addr, cloud_public, node_static, Purpose::Login, request)
            .await
    }

    /// Exchanges a still-valid credential for a fresh one, without the password.
    pub async fn renew(
        &self,
        as_addr: SocketAddr,
        cloud_public: &VerifyingKey,
        node_static: &StaticSecret,
        credential: &SignedCredential,
    ) -> Result<LoginOutcome, SignalingError> {
        self.exchange(
            as_addr,
            cloud_public,
            node_static,
            Purpose::Credential(credential.clone()),
            SignalMessage::RenewRequest,
        )
        .await
    }

    async fn exchange(
        &self,
        as_addr: SocketAddr,
        cloud_public: &VerifyingKey,
        node_static: &StaticSecret,
        purpose: Purpose,
        request: SignalMessage,
    ) -> Result<LoginOutcome, SignalingError> {
        let socket = CloudSocket::Own(
            connected_socket(as_addr, self.config.bind, self.config.share_port).await?,
        );
        let channel = ChannelClient::new(cloud_public, node_static, Service::Auth, purpose);
        let mut signaling_config = self.config.signaling.clone();
        signaling_config.persistent = false;
        let link = driver::spawn(Setup::new(
            socket,
            Signaling::new(channel, signaling_config),
            self.config.clone(),
        ));
        let reply = link.request(Outgoing::Message(request)).await?;
        // Dropping the link ends the task (and with it the socket).
        drop(link);
        let response = match reply {
            SignalMessage::LoginResponse(response) => response,
            SignalMessage::Status(report) => return Err(SignalingError::Status(report)),
            _ => return Err(SignalingError::Protocol("unexpected reply to a login")),
        };
        response.credential.verify_for_key(
            std::slice::from_ref(cloud_public),
            unix_now(),
            PublicKey::from(node_static).as_bytes(),
        )?;
        Ok(LoginOutcome {
            credential: response.credential,
            renew_after: Duration::from_secs(u64::from(response.renew_after_secs)),
            domain: response.domain,
        })
    }
}
