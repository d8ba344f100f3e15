//! Presence and directions at the Node Management Service, over one persistent
//! channel that also carries the NMS's pushes.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

use cyphonic_proto::channel::{ChannelClient, Established, Purpose, Service, Signaling};
use cyphonic_proto::credential::SignedCredential;
use cyphonic_proto::wire::Fqdn;
use cyphonic_proto::wire::signal::{PeerRoute, RegistrationResponse, SignalMessage};
use cyphonic_proto::wire::status::StatusCode;
use ed25519_dalek::VerifyingKey;
use tokio::sync::{mpsc, oneshot};
use x25519_dalek::StaticSecret;

use super::driver::{self, Link, Outgoing, Setup};
use super::{ClientConfig, CloudSocket, SharedPort, SignalingError, connected_socket};

/// Events queued for the consumer before new ones are dropped (and logged).
const EVENT_QUEUE: usize = 256;

/// What the NMS connection reports on its own.
#[derive(Debug)]
pub enum NmsEvent {
    /// Another node wants to talk to this one. Answer with [`NmsClient::confirm`]
    /// (`SUCCESS` to accept) before the NMS's confirmation timeout.
    RouteDirectionToResponder {
        direction_id: [u8; 16],
        peer: Box<PeerRoute>,
    },
    /// No channel could be re-established; the client keeps trying with backoff.
    ChannelLost,
    /// A new channel replaced the previous one (a rekey, or after a loss). The NMS may
    /// have forgotten this node's presence (e.g. it restarted): register again.
    Reconnected(Established),
}

/// The answer to a keepalive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAliveAck {
    pub sequence: u64,
    /// This node's address as the NMS sees it; a change means a NAT rebinding.
    pub observed: SocketAddr,
}

/// A connection to an NMS. Methods take `&self`; requests may run concurrently.
pub struct NmsClient {
    link: Link,
    nms_addr: SocketAddr,
    local_addr: SocketAddr,
    sequence: AtomicU64,
    events: Option<mpsc::Receiver<NmsEvent>>,
}

impl fmt::Debug for NmsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NmsClient")
            .field("nms_addr", &self.nms_addr)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl NmsClient {
    /// Opens the channel (presenting `credential`) and returns once it is up.
    pub async fn connect(
        nms_addr: SocketAddr,
        cloud_public: &VerifyingKey,
        node_static: &StaticSecret,
        credential: SignedCredential,
    ) -> Result<Self, SignalingError> {
        Self::connect_with(
            ClientConfig::default(),
            nms_addr,
            cloud_public,
            node_static,
            credential,
        )
        .await
    }

    /// [`Self::connect`] with explicit timers and socket options.
    pub async fn connect_with(
        config: ClientConfig,
        nms_addr: SocketAddr,
        cloud_public: &VerifyingKey,
        node_static: &StaticSecret,
        credential: SignedCredential,
    ) -> Result<Self, SignalingError> {
        let socket =
            CloudSocket::Own(connected_socket(nms_addr, config.bind, config.share_port).await?);
        Self::connect_on(
            socket,
            config,
            nms_addr,
            cloud_public,
            node_static,
            credential,
        )
        .await
    }

    /// [`Self::connect_with`] over a share of the tunnel socket (see [`SharedPort`]);
    /// `config.bind` and `config.share_port` do not apply.
    pub async fn connect_shared(
        port: SharedPort,
        config: ClientConfig,
        nms_addr: SocketAddr,
        cloud_public: &VerifyingKey,
        node_static: &StaticSecret,
        credential: SignedCredential,
    ) -> Result<Self, SignalingError> {
        let socket = CloudSocket::Shared(port);
        Self::connect_on(
            socket,
            config,
            nms_addr,
            cloud_public,
            node_static,
            credential,
        )
        .await
    }

    async fn connect_on(
        socket: CloudSocket,
        config: ClientConfig,
        nms_addr: SocketAddr,
        cloud_public: &VerifyingKey,
        node_static: &StaticSecret,
        credential: SignedCredential,
    ) -> Result<Self, SignalingError> {
        let local_addr = socket.local_addr()?;
        let channel = ChannelClient::new(
            cloud_public,
            node_static,
            Service::NodeManagement,
            Purpose::Credential(credential.clone()),
        );
        let mut signaling_config = config.signaling.clone();
        signaling_config.persistent = true;
        let (ready, connected) = oneshot::channel();
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let link = driver::spawn(Setup {
            credential: Some(credential),
            ready: Some(ready),
            events: Some(events_tx),
            ..Setup::new(socket, Signaling::new(channel, signaling_config), config)
        });
        connected.await.map_err(|_| SignalingError::Closed)??;
        Ok(Self {
            link,
            nms_addr,
            local_addr,
            sequence: AtomicU64::new(0),
            events: Some(events),
        })
    }

    /// The pushes and channel changes of this connection. The first call takes the
    /// receiver; later calls get `None`.
    pub fn events(&mut self) -> Option<mpsc::Receiver<NmsEvent>> {
        self.events.take()
    }

    /// The local address of the connection's socket (the NMS observes it, or its NAT
    /// mapping, as this node's address).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Announces this node as online at `endpoints` (its real addresses; the NMS adds
    /// the address it observes).
    pub async fn register(
        &self,
        endpoints: Vec<SocketAddr>,
    ) -> Result<RegistrationResponse, SignalingError> {
        match self
            .link
            .request(Outgoing::Registration { endpoints })
            .await?
        {
            SignalMessage::RegistrationResponse(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    pub async fn keepalive(&self) -> Result<KeepAliveAck, SignalingError> {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        match self
            .link
            .request(Outgoing::Message(SignalMessage::KeepAlive { sequence }))
            .await?
        {
            SignalMessage::KeepAliveAck { sequence, observed } => {
                Ok(KeepAliveAck { sequence, observed })
            }
            other => Err(unexpected(other)),
        }
    }

    /// Asks for a route to `target`. A refusal (unknown, offline, forbidden, refused by
    /// the responder) is `SignalingError::Status`.
    pub async fn direction(&self, target: Fqdn) -> Result<([u8; 16], PeerRoute), SignalingError> {
        match self
            .link
            .request(Outgoing::Message(SignalMessage::DirectionRequest {
                target,
            }))
            .await?
        {
            SignalMessage::RouteDirectionToInitiator { direction_id, peer } => {
                Ok((direction_id, *peer))
            }
            other => Err(unexpected(other)),
        }
    }

    /// Asks for a route to the node whose virtual address is `target` (IPv4 or IPv6),
    /// for a packet to an overlay address that came without a name lookup first. Only
    /// online nodes are found by address: an unknown address and an offline node's
    /// both come back as `SignalingError::Status` with `NOT_FOUND`; other refusals as
    /// for [`Self::direction`].
    pub async fn direction_by_address(
        &self,
        target: IpAddr,
    ) -> Result<([u8; 16], PeerRoute), SignalingError> {
        match self
            .link
            .request(Outgoing::Message(
                SignalMessage::DirectionRequestByAddress { target },
            ))
            .await?
        {
            SignalMessage::RouteDirectionToInitiator { direction_id, peer } => {
                Ok((direction_id, *peer))
            }
            other => Err(unexpected(other)),
        }
    }

    /// Answers a [`NmsEvent::RouteDirectionToResponder`]: `SUCCESS` accepts, any other
    /// status refuses. Sent once; repeated pushes get the same answer again.
    pub async fn confirm(
        &self,
        direction_id: [u8; 16],
        status: StatusCode,
    ) -> Result<(), SignalingError> {
        self.link.confirm(direction_id, status).await
    }

    /// Tells the NMS this node moved; returns the address the NMS now observes.
    pub async fn address_update(
        &self,
        endpoints: Vec<SocketAddr>,
    ) -> Result<Option<SocketAddr>, SignalingError> {
        match self
            .link
            .request(Outgoing::Message(SignalMessage::AddressUpdate {
                endpoints,
            }))
            .await?
        {
            SignalMessage::AddressUpdateAck { observed } => Ok(observed),
            other => Err(unexpected(other)),
        }
    }

    /// Presents a renewed credential from now on (next handshake and registrations).
    pub async fn update_credential(
        &self,
        credential: SignedCredential,
    ) -> Result<(), SignalingError> {
        self.link.set_credential(credential).await
    }

    /// Logs out: the NMS drops this node's presence and channel. The connection ends
    /// once the NMS has answered.
    pub async fn finalize(&self) -> Result<(), SignalingError> {
        match self.link.request(Outgoing::Finalization).await? {
            SignalMessage::FinalizationResponse => Ok(()),
            SignalMessage::Status(report) if report.status.is_success() => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(message: SignalMessage) -> SignalingError {
    match message {
        SignalMessage::Status(report) => SignalingError::Status(report),
        _ => SignalingError::Protocol("unexpected reply type"),
    }
}
