//! The NMS end to end over loopback: real sockets, the service task, and nodes driving
//! proto's `Signaling` (what `cyphonicd` uses).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use cyphonic_proto::channel::{
    ChannelClient, Event, MAX_DATAGRAM_LEN, Purpose, Service, Signaling, SignalingConfig,
};
use cyphonic_proto::credential::{CloudKeyId, Credential, SignedCredential};
use cyphonic_proto::relay::{RelayKey, bind_key, verify_ticket};
use cyphonic_proto::time::UnixTime;
use cyphonic_proto::wire::signal::{
    PathPlan, PeerRoute, RegistrationRequest, RegistrationResponse, SignalMessage, SignalPacket,
    SignalRepr, StatusReport,
};
use cyphonic_proto::wire::status::StatusCode;
use cyphonic_proto::wire::{Fqdn, NodeId};
use ed25519_dalek::SigningKey;
use ipnet::{Ipv4Net, Ipv6Net};
use rand_core::{OsRng, RngCore};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use x25519_dalek::{PublicKey, StaticSecret};

use super::{NmsError, run};
use crate::config::{CloudConfig, Policy, PolicyAction, PolicyRule, RelaySite};
use crate::context::{CloudContext, CloudKeys, Revoked};
use crate::metrics::Metrics;
use crate::net;
use crate::store::{Device, NewDevice, Revocations, Store, StoreError};

const CLOUD_SEED: [u8; 32] = [0x42; 32];
const RELAY_KEY: [u8; 32] = [0x17; 32];

// ---------------------------------------------------------------------------------
// A store double: devices in a vector.

#[derive(Debug, Default)]
struct MemStore {
    devices: Mutex<Vec<Device>>,
    revoked: Mutex<Vec<NodeId>>,
    settings: Mutex<HashMap<String, String>>,
}

impl MemStore {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, node: NodeId, fqdn: &str) {
        Self::lock(&self.devices).push(Device {
            device_id: fqdn.to_owned(),
            node_id: node,
            fqdn: Fqdn::new(fqdn).unwrap(),
            password_hash: String::new(),
            vip4: None,
            vip6: None,
            created_at: UnixTime(0),
            last_login: None,
        });
    }
}

#[async_trait::async_trait]
impl Store for MemStore {
    async fn add_device(&self, d: NewDevice) -> Result<Device, StoreError> {
        let mut devices = Self::lock(&self.devices);
        if devices.iter().any(|x| x.device_id == d.device_id) {
            return Err(StoreError::DuplicateDevice(d.device_id));
        }
        if devices.iter().any(|x| x.fqdn == d.fqdn) {
            return Err(StoreError::DuplicateName(d.fqdn.to_string()));
        }
        let device = Device {
            device_id: d.device_id,
            node_id: d.node_id,
            fqdn: d.fqdn,
            password_hash: d.password_hash,
            vip4: None,
            vip6: None,
            created_at: d.created_at,
            last_login: None,
        };
        devices.push(device.clone());
        Ok(device)
    }

    async fn device(&self, device_id: &str) -> Result<Option<Device>, StoreError> {
        Ok(Self::lock(&self.devices)
            .iter()
            .find(|d| d.device_id == device_id)
            .cloned())
    }

    async fn device_by_node(&self, node_id: &NodeId) -> Result<Option<Device>, StoreError> {
        Ok(Self::lock(&self.devices)
            .iter()
            .find(|d| d.node_id == *node_id)
            .cloned())
    }

    async fn device_by_fqdn(&self, fqdn: &Fqdn) -> Result<Option<Device>, StoreError> {
        Ok(Self::lock(&self.devices)
            .iter()
            .find(|d| d.fqdn == *fqdn)
            .cloned())
    }

    async fn devices(&self) -> Result<Vec<Device>, StoreError> {
        let mut all = Self::lock(&self.devices).clone();
        all.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        Ok(all)
    }

    async fn remove_device(&self, device_id: &str) -> Result<bool, StoreError> {
        let mut devices = Self::lock(&self.devices);
        let Some(pos) = devices.iter().position(|d| d.device_id == device_id) else {
            return Ok(false);
        };
        let removed = devices.remove(pos);
        Self::lock(&self.revoked).push(removed.node_id);
        Ok(true)
    }

    async fn set_password_hash(&self, device_id: &str, hash: &str) -> Result<bool, StoreError> {
        let mut devices = Self::lock(&self.devices);
        match devices.iter_mut().find(|d| d.device_id == device_id) {
            Some(d) => {
                d.password_hash = hash.to_owned();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn assign_addresses(
        &self,
        device_id: &str,
        ipv4_pool: Ipv4Net,
        ipv6_pool: Ipv6Net,
    ) -> Result<(Ipv4Addr, Ipv6Addr), StoreError> {
        let mut devices = Self::lock(&self.devices);
        let pos = devices
            .iter()
            .position(|d| d.device_id == device_id)
            .ok_or_else(|| StoreError::NoSuchDevice(device_id.to_owned()))?;
        let v4 = ipv4_pool
            .hosts()
            .nth(pos)
            .ok_or_else(|| StoreError::PoolExhausted(ipv4_pool.to_string()))?;
        let v6 = ipv6_pool
            .hosts()
            .nth(pos + 1)
            .ok_or_else(|| StoreError::PoolExhausted(ipv6_pool.to_string()))?;
        let d = &mut devices[pos];
        Ok((*d.vip4.get_or_insert(v4), *d.vip6.get_or_insert(v6)))
    }

    async fn record_login(&self, device_id: &str, at: UnixTime) -> Result<(), StoreError> {
        if let Some(d) = Self::lock(&self.devices)
            .iter_mut()
            .find(|d| d.device_id == device_id)
        {
            d.last_login = Some(at);
        }
        Ok(())
    }

    async fn revocations_since(&self, cursor: i64) -> Result<Revocations, StoreError> {
        let revoked = Self::lock(&self.revoked);
        let from = usize::try_from(cursor).unwrap_or(0).min(revoked.len());
        Ok(Revocations {
            cursor: revoked.len() as i64,
            node_ids: revoked[from..].to_vec(),
        })
    }

    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(Self::lock(&self.settings).get(key).cloned())
    }

    async fn setting_or_insert(&self, key: &str, value: &str) -> Result<String, StoreError> {
        Ok(Self::lock(&self.settings)
            .entry(key.to_owned())
            .or_insert_with(|| value.to_owned())
            .clone())
    }
}

// ---------------------------------------------------------------------------------
// The service under test.

struct Cloud {
    ctx: Arc<CloudContext>,
    store: Arc<MemStore>,
    v4: SocketAddr,
    v6: Option<SocketAddr>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), NmsError>>>,
}

impl Drop for Cloud {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn cloud_key() -> SigningKey {
    SigningKey::from_bytes(&CLOUD_SEED)
}

fn relay_key() -> RelayKey {
    RelayKey::from_bytes(RELAY_KEY)
}

fn unix_now() -> UnixTime {
    UnixTime::from_system_time(SystemTime::now())
}

fn config() -> CloudConfig {
    let mut c = CloudConfig {
        relays: vec![RelaySite {
            name: "trs1.test".into(),
            endpoints: vec![
                "127.0.0.1:7303".parse().unwrap(),
                "[::1]:7303".parse().unwrap(),
            ],
        }],
        ..CloudConfig::default()
    };
    c.services.trs.enabled = false;
    c.services.nms.keepalive_secs = 1;
    c.services.nms.presence_ttl_secs = 30;
    c.services.nms.confirm_timeout_ms = 300;
    c
}

impl Cloud {
    async fn start(config: CloudConfig) -> Self {
        Self::start_on(config, false).await
    }

    async fn start_on(config: CloudConfig, with_v6: bool) -> Self {
        let store = Arc::new(MemStore::default());
        let key = cloud_key();
        let ctx = Arc::new(CloudContext {
            config,
            keys: CloudKeys {
                trusted: vec![key.verifying_key()],
                signing: Some(key),
                relay: relay_key(),
            },
            store: Arc::clone(&store) as Arc<dyn Store>,
            metrics: Metrics::new(),
            revoked: Revoked::new(),
            ipv6_pool: "fd00:1::/48".parse().unwrap(),
        });
        let mut sockets = vec![Arc::new(
            net::bind_udp("127.0.0.1:0".parse().unwrap()).unwrap(),
        )];
        if with_v6 {
            sockets.push(Arc::new(net::bind_udp("[::1]:0".parse().unwrap()).unwrap()));
        }
        let v4 = sockets[0].local_addr().unwrap();
        let v6 = sockets.get(1).map(|s| s.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(Arc::clone(&ctx), sockets, shutdown.clone()));
        Self {
            ctx,
            store,
            v4,
            v6,
            shutdown,
            task: Some(task),
        }
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.ctx.metrics.counter(name, labels, "").value()
    }

    fn dropped(&self, reason: &str) -> u64 {
        self.counter("cyphonic_nms_dropped_total", &[("reason", reason)])
    }

    fn directions(&self, result: &str) -> u64 {
        self.counter("cyphonic_nms_directions_total", &[("result", result)])
    }

    fn nodes(&self) -> i64 {
        self.ctx
            .metrics
            .gauge("cyphonic_nms_nodes", &[], "")
            .value()
    }

    async fn wait_for(&self, what: &str, mut done: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("the NMS stops when told")
            .unwrap()
            .unwrap();
    }
}

// ---------------------------------------------------------------------------------
// A node: proto's Signaling over a loopback socket.

fn credential_for(
    signer: &SigningKey,
    node: NodeId,
    static_public: [u8; 32],
    fqdn: &str,
    not_after_secs: u64,
) -> SignedCredential {
    let (vip4, vip6) = virtual_addresses(node.0[0]);
    credential_with(
        signer,
        node,
        static_public,
        fqdn,
        not_after_secs,
        (vip4, vip6),
    )
}

/// The virtual addresses `credential_for` gives node `seed`: 100.64.0.seed, fd00::seed.
fn virtual_addresses(seed: u8) -> (Ipv4Addr, Ipv6Addr) {
    (
        Ipv4Addr::new(100, 64, 0, seed),
        Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(seed)),
    )
}

fn credential_with(
    signer: &SigningKey,
    node: NodeId,
    static_public: [u8; 32],
    fqdn: &str,
    not_after_secs: u64,
    (vip4, vip6): (Ipv4Addr, Ipv6Addr),
) -> SignedCredential {
    let now = unix_now();
    Credential {
        cloud_key_id: CloudKeyId::of(&signer.verifying_key()),
        node_id: node,
        not_before: UnixTime(now.0 - 10),
        not_after: UnixTime(now.0 + not_after_secs),
        static_public,
        vip4,
        vip6,
        fqdn: Fqdn::new(fqdn).unwrap(),
    }
    .sign(signer)
}

struct Node {
    id: NodeId,
    name: Fqdn,
    secret: StaticSecret,
    credential: SignedCredential,
    sig: Signaling,
    socket: UdpSocket,
    nms: SocketAddr,
    next_id: u32,
    replies: HashMap<u32, Vec<u8>>,
    pushes: VecDeque<Vec<u8>>,
    failed: Vec<u32>,
    /// Every datagram sent, for replay tests.
    sent: Vec<Vec<u8>>,
}

impl Node {
    async fn new(nms: SocketAddr, seed: u8, name: &str) -> Self {
        let secret = StaticSecret::from([seed; 32]);
        let id = NodeId([seed; 16]);
        let credential = credential_for(
            &cloud_key(),
            id,
            PublicKey::from(&secret).to_bytes(),
            name,
            3600,
        );
        Self::with(nms, secret, id, credential).await
    }

    async fn with(
        nms: SocketAddr,
        secret: StaticSecret,
        id: NodeId,
        credential: SignedCredential,
    ) -> Self {
        let local: SocketAddr = if nms.is_ipv4() {
            "127.0.0.1:0".parse().unwrap()
        } else {
            "[::1]:0".parse().unwrap()
        };
        let channel = ChannelClient::new(
            &cloud_key().verifying_key(),
            &secret,
            Service::NodeManagement,
            Purpose::Credential(credential.clone()),
        );
        let sig = Signaling::new(
            channel,
            SignalingConfig {
                initial_rto: Duration::from_millis(100),
                max_rto: Duration::from_millis(400),
                request_timeout: Duration::from_secs(5),
                handshake_timeout: Duration::from_secs(5),
                persistent: true,
                ..SignalingConfig::default()
            },
        );
        Self {
            id,
            name: credential.credential().fqdn.clone(),
            secret,
            credential,
            sig,
            socket: UdpSocket::bind(local).await.unwrap(),
            nms,
            next_id: 1,
            replies: HashMap::new(),
            pushes: VecDeque::new(),
            failed: Vec::new(),
            sent: Vec::new(),
        }
    }

    /// Another channel of the same node (same key and credential) to `nms`.
    async fn twin(&self, nms: SocketAddr) -> Self {
        Self::with(nms, self.secret.clone(), self.id, self.credential.clone()).await
    }

    fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    async fn request(&mut self, message: SignalMessage) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        self.request_with_id(id, message).await;
        id
    }

    async fn request_with_id(&mut self, request_id: u32, message: SignalMessage) {
        let bytes = encode(request_id, message);
        self.sig
            .send_request(Instant::now(), unix_now(), &mut OsRng, &bytes)
            .unwrap();
        self.flush().await;
    }

    async fn oneway(&mut self, request_id: u32, message: SignalMessage) {
        let bytes = encode(request_id, message);
        self.sig
            .send_oneway(Instant::now(), unix_now(), &mut OsRng, &bytes)
            .unwrap();
        self.flush().await;
    }

    async fn flush(&mut self) {
        let mut out = vec![0u8; MAX_DATAGRAM_LEN];
        while let Some(len) = self.sig.poll_transmit(Instant::now(), &mut out).unwrap() {
            self.socket.send_to(&out[..len], self.nms).await.unwrap();
            self.sent.push(out[..len].to_vec());
        }
    }

    fn collect(&mut self) {
        while let Some(event) = self.sig.poll_event() {
            match event {
                Event::Reply {
                    request_id,
                    message,
                } => {
                    self.replies.insert(request_id, message);
                }
                Event::Push(message) => self.pushes.push_back(message),
                Event::RequestFailed { request_id } => self.failed.push(request_id),
                Event::Connected(_) | Event::ChannelLost => {}
            }
        }
    }

    /// Handles one datagram or timer; false once `until` has passed.
    async fn step(&mut self, until: Instant) -> bool {
        self.flush().await;
        self.collect();
        let now = Instant::now();
        if now >= until {
            return false;
        }
        let wake = self
            .sig
            .poll_timeout()
            .map_or(until, |t| t.min(until))
            .max(now);
        let mut buf = vec![0u8; 4096];
        tokio::select! {
            r = self.socket.recv_from(&mut buf) => {
                let (len, _) = r.unwrap();
                let _ = self.sig.handle_datagram(Instant::now(), unix_now(), &mut buf[..len]);
            }
            () = tokio::time::sleep_until(wake.into()) => {
                self.sig.handle_timeout(Instant::now(), unix_now(), &mut OsRng).unwrap();
            }
        }
        self.collect();
        self.flush().await;
        true
    }

    async fn pump_for(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while self.step(until).await {}
    }

    async fn reply_raw(&mut self, id: u32, within: Duration) -> Option<Vec<u8>> {
        let until = Instant::now() + within;
        loop {
            if let Some(m) = self.replies.remove(&id) {
                return Some(m);
            }
            if self.failed.contains(&id) || !self.step(until).await {
                return None;
            }
        }
    }

    async fn reply(&mut self, id: u32) -> SignalMessage {
        let raw = self
            .reply_raw(id, Duration::from_secs(3))
            .await
            .unwrap_or_else(|| panic!("{}: no reply to request {id}", self.name));
        parse(&raw).message
    }

    async fn push(&mut self, within: Duration) -> Option<SignalRepr> {
        let until = Instant::now() + within;
        loop {
            if let Some(m) = self.pushes.pop_front() {
                return Some(parse(&m));
            }
            if !self.step(until).await {
                return None;
            }
        }
    }

    async fn register(&mut self) -> RegistrationResponse {
        let endpoints = vec![self.addr()];
        self.register_with(self.credential.clone(), endpoints).await
    }

    async fn register_with(
        &mut self,
        credential: SignedCredential,
        endpoints: Vec<SocketAddr>,
    ) -> RegistrationResponse {
        let id = self
            .request(SignalMessage::RegistrationRequest(RegistrationRequest {
                credential,
                endpoints,
            }))
            .await;
        match self.reply(id).await {
            SignalMessage::RegistrationResponse(r) => r,
            other => panic!("{}: registration answered with {other:?}", self.name),
        }
    }

    async fn keepalive(&mut self, sequence: u64) -> SignalMessage {
        let id = self.request(SignalMessage::KeepAlive { sequence }).await;
        self.reply(id).await
    }

    async fn direction(&mut self, target: &str) -> u32 {
        self.request(SignalMessage::DirectionRequest {
            target: Fqdn::new(target).unwrap(),
        })
        .await
    }

    async fn direction_by_address(&mut self, target: impl Into<IpAddr>) -> u32 {
        self.request(SignalMessage::DirectionRequestByAddress {
            target: target.into(),
        })
        .await
    }

    fn vip4(&self) -> Ipv4Addr {
        self.credential.credential().vip4
    }

    fn vip6(&self) -> Ipv6Addr {
        self.credential.credential().vip6
    }
}

fn encode(request_id: u32, message: SignalMessage) -> Vec<u8> {
    let repr = SignalRepr {
        request_id,
        message,
    };
    let mut bytes = vec![0u8; repr.buffer_len()];
    repr.emit(&mut bytes).unwrap();
    bytes
}

fn parse(bytes: &[u8]) -> SignalRepr {
    SignalRepr::parse(&SignalPacket::new_checked(bytes).unwrap()).unwrap()
}

fn status_of(message: &SignalMessage) -> StatusCode {
    match message {
        SignalMessage::Status(StatusReport { status, .. }) => *status,
        other => panic!("expected a Status, got {other:?}"),
    }
}

fn route_to_responder(push: &SignalRepr) -> ([u8; 16], &PeerRoute) {
    match &push.message {
        SignalMessage::RouteDirectionToResponder { direction_id, peer } => (*direction_id, peer),
        other => panic!("expected RouteDirectionToResponder, got {other:?}"),
    }
}

/// The responder's side: wait for the push and confirm it (echoing the push id, as the
/// protocol specifies).
async fn confirm(node: &mut Node, status: StatusCode) -> SignalRepr {
    let push = node
        .push(Duration::from_secs(2))
        .await
        .unwrap_or_else(|| panic!("{}: no RouteDirectionToResponder", node.name));
    let (direction_id, _) = route_to_responder(&push);
    node.oneway(
        push.request_id,
        SignalMessage::RouteDirectionConfirmation {
            direction_id,
            status,
        },
    )
    .await;
    push
}

async fn registered_pair(cloud: &Cloud) -> (Node, Node) {
    let mut a = Node::new(cloud.v4, 1, "a.test.cyphonic").await;
    let mut b = Node::new(cloud.v4, 2, "b.test.cyphonic").await;
    a.register().await;
    b.register().await;
    (a, b)
}

// ---------------------------------------------------------------------------------

#[tokio::test]
async fn registration_keepalive_and_a_confirmed_direction() {
    let cloud = Cloud::start(config()).await;
    let mut a = Node::new(cloud.v4, 1, "a.test.cyphonic").await;
    let mut b = Node::new(cloud.v4, 2, "b.test.cyphonic").await;

    let r = a.register().await;
    assert_eq!(r.observed, Some(a.addr()), "observed = the datagram source");
    assert_eq!((r.keepalive_secs, r.presence_ttl_secs), (1, 30));
    b.register().await;
    assert_eq!(cloud.nodes(), 2);
    assert_eq!(
        a.keepalive(7).await,
        SignalMessage::KeepAliveAck {
            sequence: 7,
            observed: a.addr()
        }
    );

    let id = a.direction("b.test.cyphonic").await;
    let push = confirm(&mut b, StatusCode::SUCCESS).await;
    assert!(
        push.request_id & 0x8000_0000 != 0,
        "pushes use the cloud's id space"
    );
    let (push_direction, for_b) = route_to_responder(&push);
    let SignalMessage::RouteDirectionToInitiator {
        direction_id,
        peer: for_a,
    } = a.reply(id).await
    else {
        panic!("expected RouteDirectionToInitiator");
    };
    assert_eq!(direction_id, push_direction);

    // Each side learns the other's credential and endpoints.
    assert_eq!(for_a.credential, b.credential);
    assert_eq!(for_a.real, vec![b.addr()]);
    assert_eq!(for_a.observed, vec![b.addr()]);
    assert_eq!(for_b.credential, a.credential);
    assert_eq!(for_b.real, vec![a.addr()]);
    // Both on loopback without NAT.
    assert_eq!(for_a.plan, PathPlan::Direct);
    assert_eq!(for_b.plan, PathPlan::Direct);
    assert_eq!(*for_a.punch_key, *for_b.punch_key);

    // The relay offer: one ticket for the pair, a bind key per side.
    let key = relay_key();
    let offer_a = for_a.relay.as_ref().expect("a relay offer as fallback");
    let offer_b = for_b.relay.as_ref().expect("a relay offer as fallback");
    assert_eq!(offer_a.trs_name.as_str(), "trs1.test");
    assert_eq!(offer_a.trs_endpoints.len(), 2);
    assert_eq!(offer_a.ticket, offer_b.ticket);
    verify_ticket(&key, &offer_a.ticket, unix_now()).unwrap();
    assert_eq!((offer_a.ticket.node_a, offer_a.ticket.node_b), (a.id, b.id));
    assert_eq!(*offer_a.bind_key, *bind_key(&key, &offer_a.ticket, &a.id));
    assert_eq!(*offer_b.bind_key, *bind_key(&key, &offer_b.ticket, &b.id));
    assert_ne!(*offer_a.bind_key, *offer_b.bind_key);

    // Retransmissions (a slow machine) count again.
    assert!(cloud.counter("cyphonic_nms_registrations_total", &[]) >= 2);
    assert!(cloud.counter("cyphonic_nms_keepalives_total", &[]) >= 1);
    assert_eq!(cloud.directions("ok"), 1);
    cloud.stop().await;
}

#[tokio::test]
async fn unknown_and_offline_names_are_answered_fast() {
    let cloud = Cloud::start(config()).await;
    cloud.store.add(NodeId([9; 16]), "c.test.cyphonic");
    let (mut a, _b) = registered_pair(&cloud).await;

    let started = Instant::now();
    let id = a.direction("nobody.test.cyphonic").await;
    assert_eq!(status_of(&a.reply(id).await), StatusCode::NOT_FOUND);
    let id = a.direction("c.test.cyphonic").await;
    assert_eq!(status_of(&a.reply(id).await), StatusCode::OFFLINE);
    // Answered again from the name cache.
    let id = a.direction("c.test.cyphonic").await;
    assert_eq!(status_of(&a.reply(id).await), StatusCode::OFFLINE);
    assert!(started.elapsed() < Duration::from_millis(500));

    // Itself: refused with a clear code.
    let id = a.direction("a.test.cyphonic").await;
    assert_eq!(status_of(&a.reply(id).await), StatusCode::FORBIDDEN);

    assert_eq!(cloud.directions("not_found"), 1);
    assert_eq!(cloud.directions("offline"), 2);
    assert_eq!(cloud.directions("forbidden"), 1);

    // A node that did not register may not ask.
    let mut c = Node::new(cloud.v4, 3, "d.test.cyphonic").await;
    let id = c.direction("a.test.cyphonic").await;
    assert_eq!(status_of(&c.reply(id).await), StatusCode::FORBIDDEN);
    assert!(
        matches!(c.keepalive(1).await, SignalMessage::Status(s) if s.status == StatusCode::OFFLINE)
    );
}

#[tokio::test]
async fn silent_responder_means_offline_within_the_timeout() {
    let cloud = Cloud::start(config()).await;
    let (mut a, _b) = registered_pair(&cloud).await;
    // b never reads its socket.
    let started = Instant::now();
    let id = a.direction("b.test.cyphonic").await;
    assert_eq!(status_of(&a.reply(id).await), StatusCode::OFFLINE);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(900),
        "answered after {took:?}"
    );
    assert_eq!(cloud.directions("timeout"), 1);
}

#[tokio::test]
async fn responder_refusal_is_passed_on() {
    let cloud = Cloud::start(config()).await;
    let (mut a, mut b) = registered_pair(&cloud).await;
    let id = a.direction("b.test.cyphonic").await;
    let push = b.push(Duration::from_secs(2)).await.unwrap();
    let (direction_id, _) = route_to_responder(&push);
    // This node sends its confirmation as a request of its own: it is answered.
    let own = b
        .request(SignalMessage::RouteDirectionConfirmation {
            direction_id,
            status: StatusCode::FORBIDDEN,
        })
        .await;
    assert_eq!(status_of(&b.reply(own).await), StatusCode::SUCCESS);
    assert_eq!(status_of(&a.reply(id).await), StatusCode::FORBIDDEN);
    assert_eq!(cloud.directions("refused"), 1);
    // A confirmation for no pending direction is dropped.
    b.oneway(
        push.request_id,
        SignalMessage::RouteDirectionConfirmation {
            direction_id,
            status: StatusCode::SUCCESS,
        },
    )
    .await;
    cloud
        .wait_for("stale confirmation", |c| {
            c.dropped("stale_confirmation") == 1
        })
        .await;
}

#[tokio::test]
async fn policy_can_deny() {
    let mut config = config();
    config.policy = Policy {
        default: PolicyAction::Allow,
        rules: vec![
            PolicyRule {
                from: "a.test.cyphonic".into(),
                to: "b.test.cyphonic".into(),
                action: PolicyAction::Deny,
            },
            PolicyRule {
                from: "*".into(),
                to: "*.test.cyphonic".into(),
                action: PolicyAction::Allow,
            },
        ],
    };
    let cloud = Cloud::start(config).await;
    let (mut a, mut b) = registered_pair(&cloud).await;
    let id = a.direction("b.test.cyphonic").await;
    assert_eq!(status_of(&a.reply(id).await), StatusCode::FORBIDDEN);
    // By address, the rule for b's name applies just the same.
    let id = a.direction_by_address(b.vip4()).await;
    assert_eq!(status_of(&a.reply(id).await), StatusCode::FORBIDDEN);
    let id = a.direction_by_address(b.vip6()).await;
    assert_eq!(status_of(&a.reply(id).await), StatusCode::FORBIDDEN);
    assert!(
        b.push(Duration::from_millis(200)).await.is_none(),
        "no push"
    );
    assert_eq!(cloud.directions("forbidden"), 3);
    // The other way is allowed by the second rule.
    let id = b.direction("a.test.cyphonic").await;
    confirm(&mut a, StatusCode::SUCCESS).await;
    assert!(matches!(
        b.reply(id).await,
        SignalMessage::RouteDirectionToInitiator { .. }
    ));
    let id = b.direction_by_address(a.vip4()).await;
    confirm(&mut a, StatusCode::SUCCESS).await;
    assert!(matches!(
        b.reply(id).await,
        SignalMessage::RouteDirectionToInitiator { .. }
    ));
}

#[tokio::test]
async fn retransmitted_direction_requests_start_one_direction() {
    let mut config = config();
    config.services.nms.confirm_timeout_ms = 800;
    let cloud = Cloud::start(config).await;
    let (mut a, mut b) = registered_pair(&cloud).await;

    let before = a.sent.len();
    a.request_with_id(
        77,
        SignalMessage::DirectionRequest {
            target: b.name.clone(),
        },
    )
    .await;
    // a retransmits (after 100 ms, then 200 ms more) while b holds back its
    // confirmation.
    tokio::join!(
        a.pump_for(Duration::from_millis(450)),
        b.pump_for(Duration::from_millis(450))
    );
    assert!(a.sent.len() - before >= 3, "a retransmitted its request");
    let pushes: Vec<SignalRepr> = b.pushes.drain(..).map(|m| parse(&m)).collect();
    assert!(!pushes.is_empty());
    let (first, _) = route_to_responder(&pushes[0]);
    for p in &pushes {
        assert_eq!(route_to_responder(p).0, first, "only one direction started");
        assert_eq!(p.request_id, pushes[0].request_id);
    }
    b.oneway(
        pushes[0].request_id,
        SignalMessage::RouteDirectionConfirmation {
            direction_id: first,
            status: StatusCode::SUCCESS,
        },
    )
    .await;
    let answer = a.reply_raw(77, Duration::from_secs(2)).await.unwrap();
    assert!(matches!(
        parse(&answer).message,
        SignalMessage::RouteDirectionToInitiator { direction_id, .. } if direction_id == first
    ));

    // After completion, the same request gets the same answer and no new push.
    a.request_with_id(
        77,
        SignalMessage::DirectionRequest {
            target: b.name.clone(),
        },
    )
    .await;
    let again = a.reply_raw(77, Duration::from_secs(2)).await.unwrap();
    assert_eq!(again, answer);
    b.pump_for(Duration::from_millis(300)).await;
    assert!(
        b.pushes
            .iter()
            .all(|m| route_to_responder(&parse(m)).0 == first),
        "no second direction"
    );
    b.pushes.clear();
    assert_eq!(cloud.directions("ok"), 1);

    // a restarts (same key and credential, ids from the start again): its request 77
    // is a new one.
    let mut restarted = a.twin(cloud.v4).await;
    restarted.register().await;
    restarted
        .request_with_id(
            77,
            SignalMessage::DirectionRequest {
                target: b.name.clone(),
            },
        )
        .await;
    let push = confirm(&mut b, StatusCode::SUCCESS).await;
    let (second, _) = route_to_responder(&push);
    assert_ne!(second, first);
    let answer = restarted
        .reply_raw(77, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(matches!(
        parse(&answer).message,
        SignalMessage::RouteDirectionToInitiator { direction_id, .. } if direction_id == second
    ));
    assert_eq!(cloud.directions("ok"), 2);
}

#[tokio::test]
async fn presence_expires_without_keepalives() {
    let mut config = config();
    config.services.nms.presence_ttl_secs = 2;
    let cloud = Cloud::start(config).await;
    cloud.store.add(NodeId([1; 16]), "a.test.cyphonic");
    let (mut a, mut b) = registered_pair(&cloud).await;
    // b keeps alive, a goes quiet.
    for seq in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(matches!(
            b.keepalive(seq).await,
            SignalMessage::KeepAliveAck { .. }
        ));
    }
    cloud
        .wait_for("a's presence to expire", |c| {
            c.counter("cyphonic_nms_expired_total", &[]) == 1
        })
        .await;
    assert_eq!(cloud.nodes(), 1);
    let id = b.direction("a.test.cyphonic").await;
    assert_eq!(status_of(&b.reply(id).await), StatusCode::OFFLINE);
    // a is told to register again, and can.
    assert_eq!(status_of(&a.keepalive(1).await), StatusCode::OFFLINE);
    a.register().await;
    assert_eq!(cloud.nodes(), 2);
}

#[tokio::test]
async fn revocation_cuts_a_node_off_at_once() {
    let cloud = Cloud::start(config()).await;
    let (mut a, mut b) = registered_pair(&cloud).await;
    cloud.ctx.revoked.extend([a.id]);
    cloud.wait_for("a dropped", |c| c.nodes() == 1).await;
    assert_eq!(cloud.dropped("revoked"), 1);

    // Its channel is gone: nothing answers, also not a new channel.
    let id = a.request(SignalMessage::KeepAlive { sequence: 1 }).await;
    assert!(a.reply_raw(id, Duration::from_millis(500)).await.is_none());
    let mut fresh = a.twin(cloud.v4).await;
    let id = fresh
        .request(SignalMessage::KeepAlive { sequence: 1 })
        .await;
    assert!(
        fresh
            .reply_raw(id, Duration::from_millis(300))
            .await
            .is_none()
    );
    assert!(cloud.dropped("revoked") >= 2, "refused hellos are counted");

    // Nobody reaches it any more.
    let id = b.direction("a.test.cyphonic").await;
    assert_eq!(status_of(&b.reply(id).await), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn revocation_answers_pending_directions() {
    let mut config = config();
    config.services.nms.confirm_timeout_ms = 3_000;
    let cloud = Cloud::start(config).await;
    let (mut a, mut b) = registered_pair(&cloud).await;
    let started = Instant::now();
    let id = a.direction("b.test.cyphonic").await;
    assert!(b.push(Duration::from_secs(1)).await.is_some());
    cloud.ctx.revoked.extend([b.id]);
    assert_eq!(status_of(&a.reply(id).await), StatusCode::OFFLINE);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "not left to time out"
    );
}

#[tokio::test]
async fn another_nodes_credential_is_falsification() {
    let cloud = Cloud::start(config()).await;
    let (a, _b) = registered_pair(&cloud).await;
    let mut c = Node::new(cloud.v4, 3, "c.test.cyphonic").await;
    let id = c
        .request(SignalMessage::RegistrationRequest(RegistrationRequest {
            credential: a.credential.clone(),
            endpoints: vec![c.addr()],
        }))
        .await;
    assert_eq!(
        status_of(&c.reply(id).await),
        StatusCode::FALSIFICATION_DETECTED
    );
    // Same node and key, but signed by someone else.
    let rogue = SigningKey::from_bytes(&[0x66; 32]);
    let forged = credential_for(
        &rogue,
        c.id,
        c.credential.credential().static_public,
        "a.test.cyphonic",
        3600,
    );
    let id = c
        .request(SignalMessage::RegistrationRequest(RegistrationRequest {
            credential: forged,
            endpoints: vec![],
        }))
        .await;
    assert_eq!(
        status_of(&c.reply(id).await),
        StatusCode::FALSIFICATION_DETECTED
    );
    assert!(cloud.dropped("falsification") >= 2);
    assert_eq!(cloud.nodes(), 2);
}

#[tokio::test]
async fn a_renewed_credential_replaces_the_old_one() {
    let cloud = Cloud::start(config()).await;
    let (mut a, mut b) = registered_pair(&cloud).await;
    let renewed = credential_for(
        &cloud_key(),
        a.id,
        a.credential.credential().static_public,
        "a.test.cyphonic",
        7200,
    );
    assert_ne!(renewed, a.credential);
    a.register_with(renewed.clone(), vec![a.addr()]).await;
    // Later requests on the channel opened with the old credential keep the new one.
    a.keepalive(1).await;
    let id = b.direction("a.test.cyphonic").await;
    let push = confirm(&mut a, StatusCode::SUCCESS).await;
    let (_, for_a) = route_to_responder(&push);
    assert_eq!(for_a.credential, b.credential);
    let SignalMessage::RouteDirectionToInitiator { peer, .. } = b.reply(id).await else {
        panic!("expected a route");
    };
    assert_eq!(peer.credential, renewed);
}

#[tokio::test]
async fn address_update_and_finalization() {
    let cloud = Cloud::start(config()).await;
    let (mut a, mut b) = registered_pair(&cloud).await;
    let moved: SocketAddr = "192.0.2.10:4500".parse().unwrap();
    let id = a
        .request(SignalMessage::AddressUpdate {
            endpoints: vec![moved, "[2001:db8::10]:4500".parse().unwrap()],
        })
        .await;
    assert_eq!(
        a.reply(id).await,
        SignalMessage::AddressUpdateAck {
            observed: Some(a.addr())
        }
    );
    assert!(cloud.counter("cyphonic_nms_address_updates_total", &[]) >= 1);
    let id = b.direction("a.test.cyphonic").await;
    confirm(&mut a, StatusCode::SUCCESS).await;
    let SignalMessage::RouteDirectionToInitiator { peer, .. } = b.reply(id).await else {
        panic!("expected a route");
    };
    assert_eq!(peer.real[0], moved);
    // Observed 127.0.0.1 is not among the new real endpoints: a is behind NAT now,
    // b is not; direct (a reaches out).
    assert_eq!(peer.plan, PathPlan::Direct);

    let id = a.request(SignalMessage::FinalizationRequest).await;
    assert_eq!(a.reply(id).await, SignalMessage::FinalizationResponse);
    assert_eq!(cloud.nodes(), 1);
    // A retransmitted finalization within the grace period is still answered.
    a.request_with_id(id, SignalMessage::FinalizationRequest)
        .await;
    assert_eq!(a.reply(id).await, SignalMessage::FinalizationResponse);
    let id = b.direction("a.test.cyphonic").await;
    assert_eq!(status_of(&b.reply(id).await), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn dual_stack_and_relay_plans() {
    let cloud = Cloud::start_on(config(), true).await;
    let v6 = cloud.v6.unwrap();
    // a: IPv4 only. b: IPv6 only. c: both, registered over both sockets.
    let mut a = Node::new(cloud.v4, 1, "a.test.cyphonic").await;
    let mut b = Node::new(v6, 2, "b.test.cyphonic").await;
    let mut c4 = Node::new(cloud.v4, 3, "c.test.cyphonic").await;
    let mut c6 = c4.twin(v6).await;
    a.register().await;
    let r = b.register().await;
    assert!(r.observed.unwrap().is_ipv6());
    let both = vec![c4.addr(), c6.addr()];
    c4.register_with(c4.credential.clone(), both.clone()).await;
    c6.register_with(c6.credential.clone(), both).await;
    assert_eq!(cloud.nodes(), 3);

    // a -> b: no family in common; the TRS bridges.
    let id = a.direction("b.test.cyphonic").await;
    let push = confirm(&mut b, StatusCode::SUCCESS).await;
    let (_, for_b) = route_to_responder(&push);
    assert_eq!(for_b.plan, PathPlan::Relay);
    assert!(for_b.relay.is_some());
    let SignalMessage::RouteDirectionToInitiator { peer, .. } = a.reply(id).await else {
        panic!("expected a route");
    };
    assert_eq!(peer.plan, PathPlan::Relay);

    // a -> c: c is observed in both families (pushed through its latest channel).
    let id = a.direction("c.test.cyphonic").await;
    confirm(&mut c6, StatusCode::SUCCESS).await;
    let SignalMessage::RouteDirectionToInitiator { peer, .. } = a.reply(id).await else {
        panic!("expected a route");
    };
    assert_eq!(peer.plan, PathPlan::Direct);
    assert_eq!(peer.observed, vec![c4.addr(), c6.addr()]);
}

#[tokio::test]
async fn relay_plan_without_a_relay_is_unavailable() {
    let mut config = config();
    config.relays.clear();
    let cloud = Cloud::start_on(config, true).await;
    let mut a = Node::new(cloud.v4, 1, "a.test.cyphonic").await;
    let mut b = Node::new(cloud.v6.unwrap(), 2, "b.test.cyphonic").await;
    a.register().await;
    b.register().await;
    let id = a.direction("b.test.cyphonic").await;
    assert_eq!(status_of(&a.reply(id).await), StatusCode::UNAVAILABLE);
    assert!(b.push(Duration::from_millis(200)).await.is_none());
    // Same family: no relay needed, none offered.
    let mut c = Node::new(cloud.v4, 3, "c.test.cyphonic").await;
    c.register().await;
    let id = a.direction("c.test.cyphonic").await;
    let push = confirm(&mut c, StatusCode::SUCCESS).await;
    assert!(route_to_responder(&push).1.relay.is_none());
    assert!(matches!(
        a.reply(id).await,
        SignalMessage::RouteDirectionToInitiator { .. }
    ));
}

#[tokio::test]
async fn bad_datagrams_are_counted_and_good_clients_unaffected() {
    let cloud = Cloud::start(config()).await;
    let mut a = Node::new(cloud.v4, 1, "a.test.cyphonic").await;
    a.register().await;
    let id = a.request(SignalMessage::KeepAlive { sequence: 1 }).await;
    a.reply(id).await;
    let keepalive = a.sent.last().unwrap().clone();

    let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut junk = vec![0u8; 200];
    OsRng.fill_bytes(&mut junk);
    let mut forged = keepalive.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let mut truncated_hello = vec![1u8, 0x01];
    truncated_hello.extend_from_slice(&[0; 30]);
    let datagrams: Vec<Vec<u8>> = vec![
        junk,
        vec![],
        vec![1],
        vec![9, 0x01, 0, 0],
        truncated_hello,
        vec![1, 0x03, 0, 0, 0, 0],
        vec![0xaa; 3000],
        forged,
    ];
    for d in &datagrams {
        attacker.send_to(d, cloud.v4).await.unwrap();
    }
    // Replayed from the node's own address: the replay window refuses it.
    a.socket.send_to(&keepalive, cloud.v4).await.unwrap();

    let total = |c: &Cloud| {
        cyphonic_proto::channel::DropReason::ALL
            .iter()
            .map(|r| c.dropped(r.name()))
            .sum::<u64>()
    };
    let expected = datagrams.len() as u64 + 1;
    cloud
        .wait_for("drops counted", |c| total(c) == expected)
        .await;
    // The forged copy reuses a seen counter: refused as a replay or as a forgery.
    assert!(cloud.dropped("replay") >= 1);
    assert_eq!(cloud.dropped("replay") + cloud.dropped("decrypt_failed"), 2);

    // Nothing was answered.
    let mut buf = [0u8; 2048];
    let answered =
        tokio::time::timeout(Duration::from_millis(200), attacker.recv_from(&mut buf)).await;
    assert!(answered.is_err(), "garbage got an answer");

    // The good client goes on.
    assert!(matches!(
        a.keepalive(2).await,
        SignalMessage::KeepAliveAck { sequence: 2, .. }
    ));
    let mut b = Node::new(cloud.v4, 2, "b.test.cyphonic").await;
    b.register().await;
    assert_eq!(cloud.nodes(), 2);
}

#[tokio::test]
async fn bad_requests_inside_a_channel_get_a_status() {
    let cloud = Cloud::start(config()).await;
    let mut a = Node::new(cloud.v4, 1, "a.test.cyphonic").await;
    a.register().await;
    // Unknown signal type.
    a.sig
        .send_request(Instant::now(), unix_now(), &mut OsRng, &[0x55, 0, 0, 0, 90])
        .unwrap();
    assert_eq!(
        status_of(&a.reply(90).await),
        StatusCode::UNSUPPORTED_VERSION
    );
    // A known type with trailing bytes.
    a.sig
        .send_request(
            Instant::now(),
            unix_now(),
            &mut OsRng,
            &[0x12, 0, 0, 0, 91, 0, 0, 0, 0, 0, 0, 0, 1, 9],
        )
        .unwrap();
    assert_eq!(status_of(&a.reply(91).await), StatusCode::MALFORMED);
    // An AS request.
    let id = a.request(SignalMessage::RenewRequest).await;
    assert_eq!(status_of(&a.reply(id).await), StatusCode::MALFORMED);
    // (At least: a slow reply makes the node retransmit, which counts again.)
    assert!(cloud.dropped("bad_signal") >= 2);
    assert!(cloud.dropped("unexpected_signal") >= 1);
    // Registration is unharmed.
    assert!(matches!(
        a.keepalive(3).await,
        SignalMessage::KeepAliveAck { .. }
    ));
}

#[tokio::test]
async fn nat_rebinding_updates_the_observed_endpoint() {
    let cloud = Cloud::start(config()).await;
    let (mut a, mut b) = registered_pair(&cloud).await;
    // a's NAT gives it a new port: same channel, new source.
    let rebound = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let new_addr = rebound.local_addr().unwrap();
    a.socket = rebound;
    assert_eq!(
        a.keepalive(5).await,
        SignalMessage::KeepAliveAck {
            sequence: 5,
            observed: new_addr
        }
    );
    let id = b.direction("a.test.cyphonic").await;
    confirm(&mut a, StatusCode::SUCCESS).await;
    let SignalMessage::RouteDirectionToInitiator { peer, .. } = b.reply(id).await else {
        panic!("expected a route");
    };
    assert_eq!(peer.observed, vec![new_addr]);
}

#[tokio::test]
async fn directions_by_virtual_address() {
    let cloud = Cloud::start(config()).await;
    cloud.store.add(NodeId([9; 16]), "c.test.cyphonic");
    let (mut a, mut b) = registered_pair(&cloud).await;

    // By IPv4 and by IPv6 address: answered on both sides like a request by name.
    for target in [IpAddr::V4(b.vip4()), IpAddr::V6(b.vip6())] {
        let id = a.direction_by_address(target).await;
        let push = confirm(&mut b, StatusCode::SUCCESS).await;
        let (push_direction, for_b) = route_to_responder(&push);
        assert_eq!(for_b.credential, a.credential);
        assert_eq!(for_b.real, vec![a.addr()]);
        let SignalMessage::RouteDirectionToInitiator {
            direction_id,
            peer: for_a,
        } = a.reply(id).await
        else {
            panic!("expected RouteDirectionToInitiator for {target}");
        };
        assert_eq!(direction_id, push_direction);
        assert_eq!(for_a.credential, b.credential);
        assert_eq!(for_a.real, vec![b.addr()]);
        assert_eq!(*for_a.punch_key, *for_b.punch_key);
    }
    assert_eq!(cloud.directions("ok"), 2);

    // A retransmission after the answer gets the same bytes and starts nothing.
    a.request_with_id(
        500,
        SignalMessage::DirectionRequestByAddress {
            target: IpAddr::V4(b.vip4()),
        },
    )
    .await;
    confirm(&mut b, StatusCode::SUCCESS).await;
    let answer = a.reply_raw(500, Duration::from_secs(2)).await.unwrap();
    a.request_with_id(
        500,
        SignalMessage::DirectionRequestByAddress {
            target: IpAddr::V4(b.vip4()),
        },
    )
    .await;
    assert_eq!(
        a.reply_raw(500, Duration::from_secs(2)).await.unwrap(),
        answer
    );
    assert!(
        b.push(Duration::from_millis(200)).await.is_none(),
        "no second push"
    );
    assert_eq!(cloud.directions("ok"), 3);

    // Nobody online has it: NOT_FOUND, also for a device the store knows but that is
    // offline (c would have 100.64.0.9), and fast (no store lookup).
    let started = Instant::now();
    for target in [
        IpAddr::V4(Ipv4Addr::new(100, 64, 0, 200)),
        IpAddr::V4(virtual_addresses(9).0),
        IpAddr::V6(virtual_addresses(9).1),
    ] {
        let id = a.direction_by_address(target).await;
        let SignalMessage::Status(report) = a.reply(id).await else {
            panic!("expected a status for {target}");
        };
        assert_eq!(report.status, StatusCode::NOT_FOUND);
        assert_eq!(report.message, "no online node has this address");
    }
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(cloud.directions("not_found"), 3);

    // Its own addresses: refused like its own name.
    for target in [IpAddr::V4(a.vip4()), IpAddr::V6(a.vip6())] {
        let id = a.direction_by_address(target).await;
        assert_eq!(status_of(&a.reply(id).await), StatusCode::FORBIDDEN);
    }
    // A node that did not register may not ask, whatever the address.
    let mut d = Node::new(cloud.v4, 4, "d.test.cyphonic").await;
    let id = d.direction_by_address(b.vip4()).await;
    assert_eq!(status_of(&d.reply(id).await), StatusCode::FORBIDDEN);
    assert_eq!(cloud.directions("forbidden"), 3);
    assert!(b.push(Duration::from_millis(200)).await.is_none());
}

#[tokio::test]
async fn the_address_index_follows_registration_and_removal() {
    let cloud = Cloud::start(config()).await;
    let (mut a, mut b) = registered_pair(&cloud).await;
    let (old4, old6) = (b.vip4(), b.vip6());

    // b registers again with a credential carrying other addresses.
    let new4 = Ipv4Addr::new(100, 64, 1, 2);
    let new6: Ipv6Addr = "fd00::1:2".parse().unwrap();
    let renewed = credential_with(
        &cloud_key(),
        b.id,
        b.credential.credential().static_public,
        "b.test.cyphonic",
        7200,
        (new4, new6),
    );
    b.register_with(renewed.clone(), vec![b.addr()]).await;
    for old in [IpAddr::V4(old4), IpAddr::V6(old6)] {
        let id = a.direction_by_address(old).await;
        assert_eq!(status_of(&a.reply(id).await), StatusCode::NOT_FOUND);
    }
    for new in [IpAddr::V4(new4), IpAddr::V6(new6)] {
        let id = a.direction_by_address(new).await;
        confirm(&mut b, StatusCode::SUCCESS).await;
        let SignalMessage::RouteDirectionToInitiator { peer, .. } = a.reply(id).await else {
            panic!("expected a route to {new}");
        };
        assert_eq!(peer.credential, renewed);
    }

    // A newer node registering under b's name takes the name and the addresses of b
    // with it: the new node's are found, b's are not.
    let mut b2 = Node::new(cloud.v4, 5, "b.test.cyphonic").await;
    b2.register().await;
    assert_eq!(cloud.nodes(), 2);
    let id = a.direction_by_address(new4).await;
    assert_eq!(status_of(&a.reply(id).await), StatusCode::NOT_FOUND);
    let id = a.direction_by_address(b2.vip4()).await;
    confirm(&mut b2, StatusCode::SUCCESS).await;
    assert!(matches!(
        a.reply(id).await,
        SignalMessage::RouteDirectionToInitiator { .. }
    ));

    // Finalization removes the node from the index.
    let id = b2.request(SignalMessage::FinalizationRequest).await;
    assert_eq!(b2.reply(id).await, SignalMessage::FinalizationResponse);
    let id = a.direction_by_address(b2.vip6()).await;
    assert_eq!(status_of(&a.reply(id).await), StatusCode::NOT_FOUND);

    // So does revocation.
    let mut c = Node::new(cloud.v4, 3, "c.test.cyphonic").await;
    c.register().await;
    cloud.ctx.revoked.extend([c.id]);
    cloud.wait_for("c dropped", |cl| cl.nodes() == 1).await;
    let id = a.direction_by_address(c.vip4()).await;
    assert_eq!(status_of(&a.reply(id).await), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn expired_presences_leave_the_address_index() {
    let mut config = config();
    config.services.nms.presence_ttl_secs = 1;
    let cloud = Cloud::start(config).await;
    let (mut a, b) = registered_pair(&cloud).await;
    // a keeps alive, b goes quiet.
    for seq in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(matches!(
            a.keepalive(seq).await,
            SignalMessage::KeepAliveAck { .. }
        ));
    }
    cloud
        .wait_for("b's presence to expire", |c| {
            c.counter("cyphonic_nms_expired_total", &[]) == 1
        })
        .await;
    assert_eq!(cloud.nodes(), 1);
    let id = a.direction_by_address(b.vip4()).await;
    assert_eq!(status_of(&a.reply(id).await), StatusCode::NOT_FOUND);
}
