//! Tests of the AS over real loopback sockets, with the node side of `cyphonic-proto`
//! (`ChannelClient` for precise control, `Signaling` for the real request layer) and an
//! in-memory store.

mod memory_store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cyphonic_proto::channel::{
    ChannelClient, Event, MAX_DATAGRAM_LEN, Purpose, Signaling, SignalingConfig,
};
use cyphonic_proto::relay::RelayKey;
use cyphonic_proto::wire::channel::{HELLO_MAX_LEN, Service};
use cyphonic_proto::wire::signal::{
    LoginRequest, LoginResponse, SignalMessage, SignalPacket, SignalRepr, StatusReport,
};
use cyphonic_proto::wire::status::StatusCode;
use cyphonic_proto::wire::{Fqdn, MessageType, NodeId, classify};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::{OsRng, RngCore};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use super::{AuthError, AuthOptions, run, run_with, unix_now};
use crate::config::{Argon2Settings, CloudConfig, LoginLimits};
use crate::context::{CloudContext, CloudKeys, Revoked};
use crate::metrics::Metrics;
use crate::net;
use crate::password;
use crate::store::{Device, NewDevice, Store};
use memory_store::InMemoryStore;

/// Generous: debug-build Argon2 on a shared 2-core machine.
const REPLY_WAIT: Duration = Duration::from_secs(10);
/// How long to wait before concluding that no answer comes.
const SILENCE: Duration = Duration::from_millis(300);

fn cheap() -> Argon2Settings {
    Argon2Settings {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    }
}

struct Setup {
    limits: LoginLimits,
    options: AuthOptions,
    listen: Vec<SocketAddr>,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            limits: LoginLimits {
                per_device_failures: 5,
                per_source_failures: 20,
                window_secs: 300,
            },
            options: AuthOptions::default(),
            listen: vec!["127.0.0.1:0".parse().unwrap()],
        }
    }
}

/// A running AS with its context.
struct Cloud {
    ctx: Arc<CloudContext>,
    store: Arc<InMemoryStore>,
    addrs: Vec<SocketAddr>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), AuthError>>,
}

fn context(
    store: Arc<InMemoryStore>,
    limits: LoginLimits,
    signing: Option<SigningKey>,
) -> CloudContext {
    let config = CloudConfig {
        argon2: cheap(),
        login_limits: limits,
        ..CloudConfig::default()
    };
    let trusted = signing.iter().map(SigningKey::verifying_key).collect();
    CloudContext {
        config,
        keys: CloudKeys {
            signing,
            trusted,
            relay: RelayKey::from_bytes([9; 32]),
        },
        store,
        metrics: Metrics::new(),
        revoked: Revoked::new(),
        ipv6_pool: "fd00:c2::/48".parse().unwrap(),
    }
}

impl Cloud {
    async fn start() -> Self {
        Self::start_with(Setup::default()).await
    }

    async fn start_with(setup: Setup) -> Self {
        let store = Arc::new(InMemoryStore::default());
        let signing = SigningKey::from_bytes(&[0x42; 32]);
        let ctx = Arc::new(context(Arc::clone(&store), setup.limits, Some(signing)));
        let sockets: Vec<Arc<UdpSocket>> = setup
            .listen
            .iter()
            .map(|a| Arc::new(net::bind_udp(*a).unwrap()))
            .collect();
        let addrs = sockets.iter().map(|s| s.local_addr().unwrap()).collect();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_with(
            Arc::clone(&ctx),
            sockets,
            shutdown.clone(),
            setup.options,
        ));
        Self {
            ctx,
            store,
            addrs,
            shutdown,
            task,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    fn public(&self) -> VerifyingKey {
        self.ctx.keys.trusted[0]
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.ctx.metrics.counter(name, labels, "").value()
    }

    fn logins(&self, result: &str) -> u64 {
        self.counter("cyphonic_as_logins_total", &[("result", result)])
    }

    fn renewals(&self, result: &str) -> u64 {
        self.counter("cyphonic_as_renewals_total", &[("result", result)])
    }

    fn dropped(&self, reason: &str) -> u64 {
        self.counter("cyphonic_as_dropped_total", &[("reason", reason)])
    }

    fn verifications(&self) -> u64 {
        self.counter("cyphonic_as_password_verifications_total", &[])
    }

    async fn add_device(&self, id: &str, fqdn: &str, password: &str) -> Device {
        self.add_device_with(id, fqdn, password, &cheap()).await
    }

    async fn add_device_with(
        &self,
        id: &str,
        fqdn: &str,
        password: &str,
        cost: &Argon2Settings,
    ) -> Device {
        let password_hash = password::hash(password.as_bytes(), cost).unwrap();
        self.store
            .add_device(NewDevice {
                device_id: id.into(),
                node_id: NodeId::random(&mut OsRng),
                fqdn: Fqdn::new(fqdn).unwrap(),
                password_hash,
                created_at: unix_now(),
            })
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(REPLY_WAIT, self.task)
            .await
            .expect("the service stops when asked")
            .expect("the service task does not panic");
        assert!(result.is_ok(), "{result:?}");
    }
}

/// A node talking to the AS through a `ChannelClient`, recording every datagram in
/// both directions as it was on the wire.
struct Node {
    socket: UdpSocket,
    cloud: SocketAddr,
    client: ChannelClient,
    captured: Vec<Vec<u8>>,
    next_id: u32,
}

impl Node {
    async fn new(cloud: &Cloud, seed: u8) -> Self {
        Self::bind(cloud, cloud.addr(), "127.0.0.1:0", seed).await
    }

    async fn bind(cloud: &Cloud, target: SocketAddr, local: &str, seed: u8) -> Self {
        let key = StaticSecret::from([seed; 32]);
        Self {
            socket: UdpSocket::bind(local).await.unwrap(),
            cloud: target,
            client: ChannelClient::new(&cloud.public(), &key, Service::Auth, Purpose::Login),
            captured: Vec::new(),
            next_id: 1,
        }
    }

    fn public(&self) -> [u8; 32] {
        self.client.node_public()
    }

    fn fresh_id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.captured.push(bytes.to_vec());
        self.socket.send_to(bytes, self.cloud).await.unwrap();
    }

    async fn recv_raw(&mut self, wait: Duration) -> Option<Vec<u8>> {
        let mut buf = [0u8; 4096];
        let (len, _) = tokio::time::timeout(wait, self.socket.recv_from(&mut buf))
            .await
            .ok()?
            .unwrap();
        self.captured.push(buf[..len].to_vec());
        Some(buf[..len].to_vec())
    }

    /// Opens a channel presenting `purpose`, taking a cookie first if the AS asks.
    async fn connect(&mut self, purpose: Purpose) {
        self.client.set_purpose(purpose);
        for _ in 0..4 {
            let mut hello = [0u8; HELLO_MAX_LEN];
            let len = self
                .client
                .start(Instant::now(), unix_now(), &mut OsRng, &mut hello)
                .unwrap();
            self.send_raw(&hello[..len]).await;
            let mut answer = self.recv_raw(REPLY_WAIT).await.expect("hello answered");
            match classify(&answer).unwrap() {
                MessageType::ChannelAccept => {
                    self.client
                        .handle_accept(Instant::now(), unix_now(), &mut answer)
                        .unwrap();
                    return;
                }
                MessageType::CookieReply => {
                    self.client.handle_cookie(Instant::now(), &answer).unwrap();
                }
                other => panic!("unexpected answer to a hello: {other:?}"),
            }
        }
        panic!("no channel after four hellos");
    }

    async fn send(&mut self, inner: &[u8]) {
        let mut buf = [0u8; MAX_DATAGRAM_LEN];
        let len = self.client.seal(Instant::now(), inner, &mut buf).unwrap();
        self.send_raw(&buf[..len]).await;
    }

    /// The next inner message from the AS, if one arrives within `wait`.
    async fn recv(&mut self, wait: Duration) -> Option<Vec<u8>> {
        let mut datagram = self.recv_raw(wait).await?;
        let range = self
            .client
            .open(Instant::now(), &mut datagram)
            .expect("the AS's datagram opens");
        Some(datagram[range].to_vec())
    }

    async fn ask(&mut self, message: SignalMessage) -> SignalRepr {
        let id = self.fresh_id();
        self.send(&encode(id, message)).await;
        let reply = decode(&self.recv(REPLY_WAIT).await.expect("a reply"));
        assert_eq!(reply.request_id, id);
        reply
    }

    async fn login(&mut self, device: &str, password: &str) -> SignalRepr {
        let message = login_message(device, password, self.public());
        self.ask(message).await
    }

    /// A new login channel and a login on it.
    async fn connect_and_login(&mut self, device: &str, password: &str) -> SignalRepr {
        self.connect(Purpose::Login).await;
        self.login(device, password).await
    }
}

fn encode(request_id: u32, message: SignalMessage) -> Vec<u8> {
    let repr = SignalRepr {
        request_id,
        message,
    };
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut buf).unwrap();
    buf
}

fn decode(inner: &[u8]) -> SignalRepr {
    SignalRepr::parse(&SignalPacket::new_checked(inner).unwrap()).unwrap()
}

fn login_message(device: &str, password: &str, static_public: [u8; 32]) -> SignalMessage {
    SignalMessage::LoginRequest(LoginRequest {
        device_id: device.into(),
        password: Zeroizing::new(password.as_bytes().to_vec()),
        static_public,
        client: "auth-tests".into(),
    })
}

fn status(repr: &SignalRepr) -> &StatusReport {
    match &repr.message {
        SignalMessage::Status(report) => report,
        other => panic!("expected a status, got {other:?}"),
    }
}

fn response(repr: &SignalRepr) -> &LoginResponse {
    match &repr.message {
        SignalMessage::LoginResponse(response) => response,
        other => panic!("expected a login response, got {other:?}"),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn login_issues_a_verifiable_credential_with_stable_addresses() {
    let cloud = Cloud::start().await;
    let device = cloud
        .add_device("laptop-1", "laptop.alice.cyphonic", "s3cret pass")
        .await;
    let mut node = Node::new(&cloud, 1).await;
    let first = node.connect_and_login("laptop-1", "s3cret pass").await;
    let first = response(&first).clone();

    let trusted = [cloud.public()];
    let c = first
        .credential
        .verify_for_key(&trusted, unix_now(), &node.public())
        .expect("credential verifies with the cloud key for the node's key")
        .clone();
    assert_eq!(c.node_id, device.node_id);
    assert_eq!(c.fqdn.as_str(), "laptop.alice.cyphonic");
    assert!(cloud.ctx.config.pools.ipv4.contains(&c.vip4), "{}", c.vip4);
    assert!(cloud.ctx.ipv6_pool.contains(&c.vip6), "{}", c.vip6);
    let lifetime = u64::from(cloud.ctx.config.credentials.lifetime_secs);
    assert_eq!(c.not_after.0 - c.not_before.0, lifetime + 60);
    assert!(c.not_before.0 <= unix_now().0 - 59);
    assert_eq!(
        first.renew_after_secs,
        cloud.ctx.config.credentials.renew_after_secs
    );
    assert_eq!(first.domain, cloud.ctx.config.domain);

    let stored = cloud.store.device("laptop-1").await.unwrap().unwrap();
    assert_eq!((stored.vip4, stored.vip6), (Some(c.vip4), Some(c.vip6)));
    assert!(stored.last_login.is_some());

    // A second login (new channel) keeps the addresses.
    let second = node.connect_and_login("laptop-1", "s3cret pass").await;
    let again = response(&second).credential.credential().clone();
    assert_eq!((again.vip4, again.vip6), (c.vip4, c.vip6));

    // Another device gets other addresses.
    cloud
        .add_device("phone-1", "phone.alice.cyphonic", "pw2")
        .await;
    let mut phone = Node::new(&cloud, 2).await;
    let other = phone.connect_and_login("phone-1", "pw2").await;
    let other = response(&other).credential.credential().clone();
    assert_ne!(other.vip4, c.vip4);
    assert_ne!(other.vip6, c.vip6);
    assert_eq!(cloud.logins("ok"), 3);
    assert_eq!(cloud.verifications(), 3);
    assert!(
        cloud
            .ctx
            .metrics
            .gauge("cyphonic_as_channels", &[], "")
            .value()
            >= 2
    );
    cloud.stop().await;
}

#[tokio::test]
async fn wrong_password_and_unknown_device_get_the_same_answer() {
    let cloud = Cloud::start().await;
    cloud.add_device("dev-a", "a.cyphonic", "right").await;
    let mut node = Node::new(&cloud, 3).await;
    node.connect(Purpose::Login).await;
    let wrong = node.login("dev-a", "wrong").await;
    let unknown = node.login("no-such-device", "right").await;
    assert_eq!(status(&wrong).status, StatusCode::AUTHENTICATION_FAILED);
    assert_eq!(status(&wrong), status(&unknown));
    // The unknown id was verified too (against the dummy hash): same work, same time.
    assert_eq!(cloud.verifications(), 2);
    assert_eq!(cloud.logins("failed"), 2);
    // A removed device answers the same.
    cloud.store.remove_device("dev-a").await.unwrap();
    let removed = node.login("dev-a", "right").await;
    assert_eq!(status(&removed), status(&wrong));
    cloud.stop().await;
}

#[tokio::test]
async fn failed_logins_are_limited_per_device() {
    let cloud = Cloud::start_with(Setup {
        limits: LoginLimits {
            per_device_failures: 2,
            per_source_failures: 100,
            window_secs: 300,
        },
        ..Setup::default()
    })
    .await;
    cloud.add_device("dev-a", "a.cyphonic", "right").await;
    cloud.add_device("dev-b", "b.cyphonic", "right").await;
    let mut node = Node::new(&cloud, 4).await;
    node.connect(Purpose::Login).await;
    for _ in 0..2 {
        let r = node.login("dev-a", "wrong").await;
        assert_eq!(status(&r).status, StatusCode::AUTHENTICATION_FAILED);
    }
    // Even the right password is refused now, without running Argon2.
    let limited = node.login("dev-a", "right").await;
    let report = status(&limited);
    assert_eq!(report.status, StatusCode::RATE_LIMITED);
    assert!(
        (290..=300).contains(&report.retry_after_secs),
        "{}",
        report.retry_after_secs
    );
    assert_eq!(cloud.verifications(), 2);
    assert_eq!(cloud.logins("rate_limited"), 1);
    // Another device from the same source is not affected.
    let other = node.login("dev-b", "right").await;
    response(&other);
    cloud.stop().await;
}

#[tokio::test]
async fn failed_logins_are_limited_per_source() {
    let cloud = Cloud::start_with(Setup {
        limits: LoginLimits {
            per_device_failures: 100,
            per_source_failures: 3,
            window_secs: 120,
        },
        ..Setup::default()
    })
    .await;
    cloud.add_device("dev-a", "a.cyphonic", "right").await;
    let mut node = Node::new(&cloud, 5).await;
    node.connect(Purpose::Login).await;
    for id in ["x1", "x2", "x3"] {
        let r = node.login(id, "guess").await;
        assert_eq!(status(&r).status, StatusCode::AUTHENTICATION_FAILED);
    }
    let limited = node.login("dev-a", "right").await;
    let report = status(&limited);
    assert_eq!(report.status, StatusCode::RATE_LIMITED);
    assert!((1..=120).contains(&report.retry_after_secs));
    // Another source address logs in fine.
    let mut elsewhere = Node::bind(&cloud, cloud.addr(), "127.0.0.2:0", 6).await;
    let ok = elsewhere.connect_and_login("dev-a", "right").await;
    response(&ok);
    cloud.stop().await;
}

#[tokio::test]
async fn a_successful_login_clears_the_device_count() {
    let cloud = Cloud::start_with(Setup {
        limits: LoginLimits {
            per_device_failures: 3,
            per_source_failures: 100,
            window_secs: 300,
        },
        ..Setup::default()
    })
    .await;
    cloud.add_device("dev-a", "a.cyphonic", "right").await;
    let mut node = Node::new(&cloud, 7).await;
    node.connect(Purpose::Login).await;
    for _ in 0..3 {
        for _ in 0..2 {
            let r = node.login("dev-a", "wrong").await;
            assert_eq!(status(&r).status, StatusCode::AUTHENTICATION_FAILED);
        }
        response(&node.login("dev-a", "right").await);
    }
    assert_eq!(cloud.logins("rate_limited"), 0);
    assert_eq!(cloud.logins("ok"), 3);
    cloud.stop().await;
}

#[tokio::test]
async fn renewal_reissues_for_the_same_key_until_the_device_is_removed() {
    let cloud = Cloud::start().await;
    let device = cloud.add_device("dev-a", "a.cyphonic", "right").await;
    let mut node = Node::new(&cloud, 8).await;
    let login = node.connect_and_login("dev-a", "right").await;
    let issued = response(&login).credential.clone();

    // Renewing on a login channel is refused; logging in on a credential channel too.
    let wrong_channel = node.ask(SignalMessage::RenewRequest).await;
    assert_eq!(status(&wrong_channel).status, StatusCode::FORBIDDEN);

    node.connect(Purpose::Credential(issued.clone())).await;
    let relogin = node.login("dev-a", "right").await;
    assert_eq!(status(&relogin).status, StatusCode::FORBIDDEN);

    let renewed = node.ask(SignalMessage::RenewRequest).await;
    let renewed = response(&renewed).credential.clone();
    let c = renewed
        .verify_for_key(&[cloud.public()], unix_now(), &node.public())
        .unwrap();
    let old = issued.credential();
    assert_eq!(c.node_id, device.node_id);
    assert_eq!((c.vip4, c.vip6, &c.fqdn), (old.vip4, old.vip6, &old.fqdn));
    assert_eq!(c.static_public, old.static_public);
    assert!(c.not_after >= old.not_after);
    assert_eq!(cloud.renewals("ok"), 1);
    // No password, no Argon2.
    assert_eq!(cloud.verifications(), 1);

    // Removed from the store: the next renewal on the same channel is refused.
    cloud.store.remove_device("dev-a").await.unwrap();
    let refused = node.ask(SignalMessage::RenewRequest).await;
    assert_eq!(status(&refused).status, StatusCode::REVOKED);
    assert_eq!(cloud.renewals("revoked"), 1);
    cloud.stop().await;
}

#[tokio::test]
async fn a_revoked_node_cannot_renew_or_log_in() {
    let cloud = Cloud::start().await;
    let device = cloud.add_device("dev-a", "a.cyphonic", "right").await;
    let mut node = Node::new(&cloud, 9).await;
    let login = node.connect_and_login("dev-a", "right").await;
    let issued = response(&login).credential.clone();
    node.connect(Purpose::Credential(issued)).await;
    // Revoked (e.g. by another instance) while the device is still in this store.
    cloud.ctx.revoked.extend([device.node_id]);
    let refused = node.ask(SignalMessage::RenewRequest).await;
    assert_eq!(status(&refused).status, StatusCode::REVOKED);
    let again = node.connect_and_login("dev-a", "right").await;
    assert_eq!(status(&again).status, StatusCode::AUTHENTICATION_FAILED);
    cloud.stop().await;
}

#[tokio::test]
async fn a_login_for_another_static_key_is_falsification() {
    let cloud = Cloud::start().await;
    cloud.add_device("dev-a", "a.cyphonic", "right").await;
    let mut node = Node::new(&cloud, 10).await;
    node.connect(Purpose::Login).await;
    let r = node.ask(login_message("dev-a", "right", [0x55; 32])).await;
    assert_eq!(status(&r).status, StatusCode::FALSIFICATION_DETECTED);
    assert_eq!(cloud.verifications(), 0);
    cloud.stop().await;
}

#[tokio::test]
async fn a_repeated_request_id_gets_the_same_reply_without_a_second_verification() {
    let cloud = Cloud::start_with(Setup {
        limits: LoginLimits {
            per_device_failures: 2,
            per_source_failures: 100,
            window_secs: 300,
        },
        ..Setup::default()
    })
    .await;
    cloud.add_device("dev-a", "a.cyphonic", "right").await;
    let mut node = Node::new(&cloud, 11).await;
    node.connect(Purpose::Login).await;

    // Two transmissions of one request back to back: the second arrives while the
    // first is verified (dropped) or after it (answered from the cache).
    let login = encode(100, login_message("dev-a", "right", node.public()));
    node.send(&login).await;
    node.send(&login).await;
    let first = node.recv(REPLY_WAIT).await.expect("a reply");
    let mut replies = vec![first.clone()];
    while let Some(r) = node.recv(SILENCE).await {
        replies.push(r);
    }
    assert!(replies.iter().all(|r| *r == first), "replies differ");
    response(&decode(&first));
    // Later retransmission: the identical bytes, still one verification.
    node.send(&login).await;
    assert_eq!(node.recv(REPLY_WAIT).await.unwrap(), first);
    assert_eq!(cloud.verifications(), 1);
    assert_eq!(cloud.logins("ok"), 1);
    assert!(cloud.counter("cyphonic_as_repeated_requests_total", &[]) >= 1);

    // A repeated failure counts once: two distinct failures would lock the device.
    let wrong = encode(101, login_message("dev-a", "wrong", node.public()));
    node.send(&wrong).await;
    let failed = node.recv(REPLY_WAIT).await.unwrap();
    node.send(&wrong).await;
    assert_eq!(node.recv(REPLY_WAIT).await.unwrap(), failed);
    assert_eq!(
        status(&decode(&failed)).status,
        StatusCode::AUTHENTICATION_FAILED
    );
    assert_eq!(cloud.logins("failed"), 1);
    let single = node.login("dev-a", "wrong").await;
    assert_eq!(status(&single).status, StatusCode::AUTHENTICATION_FAILED);
    // Now two failures: locked.
    let locked = node.login("dev-a", "right").await;
    assert_eq!(status(&locked).status, StatusCode::RATE_LIMITED);
    assert_eq!(cloud.verifications(), 3);
    cloud.stop().await;
}

/// The real request layer of a node, over a real socket, recording every datagram.
async fn signaling_request(
    cloud: &Cloud,
    signaling: &mut Signaling,
    socket: &UdpSocket,
    inner: &[u8],
    captured: &mut Vec<Vec<u8>>,
) -> Vec<u8> {
    let id = signaling
        .send_request(Instant::now(), unix_now(), &mut OsRng, inner)
        .unwrap();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + REPLY_WAIT;
    loop {
        let now = Instant::now();
        assert!(now < deadline, "no reply in time");
        while let Some(len) = signaling.poll_transmit(now, &mut buf).unwrap() {
            captured.push(buf[..len].to_vec());
            socket.send_to(&buf[..len], cloud.addr()).await.unwrap();
        }
        while let Some(event) = signaling.poll_event() {
            match event {
                Event::Reply {
                    request_id,
                    message,
                } if request_id == id => return message,
                Event::RequestFailed { .. } | Event::ChannelLost => panic!("{event:?}"),
                _ => {}
            }
        }
        let wake = signaling
            .poll_timeout()
            .unwrap_or(deadline)
            .min(deadline)
            .saturating_duration_since(now);
        match tokio::time::timeout(wake, socket.recv_from(&mut buf)).await {
            Ok(received) => {
                let (len, _) = received.unwrap();
                captured.push(buf[..len].to_vec());
                let _ = signaling.handle_datagram(Instant::now(), unix_now(), &mut buf[..len]);
            }
            Err(_) => signaling
                .handle_timeout(Instant::now(), unix_now(), &mut OsRng)
                .unwrap(),
        }
    }
}

#[tokio::test]
async fn the_password_never_appears_on_the_wire() {
    let cloud = Cloud::start().await;
    let password = "correct horse battery staple";
    cloud.add_device("dev-a", "a.cyphonic", password).await;
    let key = StaticSecret::from([12; 32]);
    let client = ChannelClient::new(&cloud.public(), &key, Service::Auth, Purpose::Login);
    let mut signaling = Signaling::new(client, SignalingConfig::default());
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut captured = Vec::new();
    let public = signaling.channel().node_public();
    let reply = signaling_request(
        &cloud,
        &mut signaling,
        &socket,
        &encode(1, login_message("dev-a", password, public)),
        &mut captured,
    )
    .await;
    let reply = decode(&reply);
    response(&reply);
    // Both directions: hello, accept, the sealed request and the sealed reply.
    assert!(captured.len() >= 4, "{}", captured.len());
    let kinds: Vec<MessageType> = captured.iter().map(|d| classify(d).unwrap()).collect();
    assert!(kinds.contains(&MessageType::ChannelHello));
    assert!(kinds.contains(&MessageType::ChannelAccept));
    assert!(kinds.iter().filter(|k| **k == MessageType::Signal).count() >= 2);
    for datagram in &captured {
        assert!(!contains(datagram, password.as_bytes()));
        assert!(!contains(datagram, b"horse"));
    }
    cloud.stop().await;
}

#[tokio::test]
async fn garbage_is_dropped_counted_and_unanswered_while_a_node_logs_in() {
    let cloud = Cloud::start().await;
    cloud.add_device("dev-a", "a.cyphonic", "right").await;
    let target = cloud.addr();

    // A hello for another cloud key fails mac1; a replayed signal fails the window.
    let wrong_cloud = SigningKey::from_bytes(&[0x17; 32]).verifying_key();
    let mut stranger = ChannelClient::new(
        &wrong_cloud,
        &StaticSecret::from([13; 32]),
        Service::Auth,
        Purpose::Login,
    );
    let mut foreign_hello = [0u8; HELLO_MAX_LEN];
    let len = stranger
        .start(Instant::now(), unix_now(), &mut OsRng, &mut foreign_hello)
        .unwrap();
    let foreign_hello = foreign_hello[..len].to_vec();

    let garbage = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let attacker = tokio::spawn(async move {
        let mut rng = OsRng;
        for i in 0..300u32 {
            let datagram: Vec<u8> = match i % 6 {
                0 => Vec::new(),
                1 => vec![2, 1, 0, 0],
                2 => vec![1, 0x99, 0, 0],
                3 => foreign_hello.clone(),
                4 => {
                    let mut d = vec![1, 3, 0, 0, 0xde, 0xad, 0xbe, 0xef];
                    d.extend_from_slice(&[0u8; 40]);
                    d
                }
                _ => {
                    let mut d = vec![0u8; 1 + (rng.next_u32() % 3000) as usize];
                    rng.fill_bytes(&mut d);
                    d
                }
            };
            garbage.send_to(&datagram, target).await.unwrap();
            if i % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        garbage
    });

    let mut node = Node::new(&cloud, 14).await;
    let ok = node.connect_and_login("dev-a", "right").await;
    response(&ok);
    let garbage = attacker.await.unwrap();
    // A replay of the node's sealed login request.
    let replayed = node
        .captured
        .iter()
        .find(|d| classify(d) == Ok(MessageType::Signal) && d.len() > 60)
        .unwrap()
        .clone();
    garbage.send_to(&replayed, target).await.unwrap();

    // Nothing ever answers the garbage.
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(SILENCE, garbage.recv_from(&mut buf))
            .await
            .is_err()
    );
    // The node still works after the flood.
    response(&node.login("dev-a", "right").await);
    for reason in [
        "malformed",
        "unknown_version",
        "unexpected_type",
        "bad_mac1",
        "unknown_channel",
        "replay",
    ] {
        assert!(
            cloud.dropped(reason) >= 1,
            "{reason}: {}",
            cloud.ctx.metrics.render()
        );
    }
    cloud.stop().await;
}

#[tokio::test]
async fn unknown_malformed_and_foreign_requests_get_a_status() {
    let cloud = Cloud::start().await;
    let mut node = Node::new(&cloud, 15).await;
    node.connect(Purpose::Login).await;

    node.send(&[0x55, 0, 0, 0, 7, 1, 2, 3]).await;
    let unknown = decode(&node.recv(REPLY_WAIT).await.unwrap());
    assert_eq!(unknown.request_id, 7);
    assert_eq!(status(&unknown).status, StatusCode::UNSUPPORTED_VERSION);

    // A login request cut short.
    node.send(&[0x01, 0, 0, 0, 8, 5, b'd']).await;
    let malformed = decode(&node.recv(REPLY_WAIT).await.unwrap());
    assert_eq!(malformed.request_id, 8);
    assert_eq!(status(&malformed).status, StatusCode::MALFORMED);

    let keepalive = node.ask(SignalMessage::KeepAlive { sequence: 1 }).await;
    assert_eq!(status(&keepalive).status, StatusCode::FORBIDDEN);

    // No request id: nothing to answer to.
    node.send(&[0x01, 0, 0]).await;
    assert!(node.recv(SILENCE).await.is_none());
    assert_eq!(cloud.dropped("short_request"), 1);
    cloud.stop().await;
}

#[tokio::test]
async fn logout_answers_and_closes_the_channel() {
    let cloud = Cloud::start().await;
    cloud.add_device("dev-a", "a.cyphonic", "right").await;
    let mut node = Node::new(&cloud, 16).await;
    response(&node.connect_and_login("dev-a", "right").await);
    let bye = node.ask(SignalMessage::FinalizationRequest).await;
    assert_eq!(bye.message, SignalMessage::FinalizationResponse);
    let before = cloud.dropped("unknown_channel");
    node.send(&encode(99, SignalMessage::RenewRequest)).await;
    assert!(node.recv(SILENCE).await.is_none());
    assert_eq!(cloud.dropped("unknown_channel"), before + 1);
    cloud.stop().await;
}

#[tokio::test]
async fn a_full_queue_answers_unavailable_and_the_loop_keeps_serving() {
    let cloud = Cloud::start_with(Setup {
        options: AuthOptions {
            max_concurrent_verifies: 1,
            max_pending_logins: 1,
            ..AuthOptions::default()
        },
        ..Setup::default()
    })
    .await;
    // A costly hash keeps the one verification slot busy for a while.
    let slow = Argon2Settings {
        memory_kib: 16 * 1024,
        iterations: 2,
        parallelism: 1,
    };
    cloud
        .add_device_with("slow", "slow.cyphonic", "right", &slow)
        .await;
    cloud.add_device("fast", "fast.cyphonic", "right").await;
    let mut a = Node::new(&cloud, 17).await;
    let mut b = Node::new(&cloud, 18).await;
    a.connect(Purpose::Login).await;
    b.connect(Purpose::Login).await;

    let started = Instant::now();
    a.send(&encode(1, login_message("slow", "right", a.public())))
        .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let refused = b.login("fast", "right").await;
    let answered_b = started.elapsed();
    let report = status(&refused);
    assert_eq!(report.status, StatusCode::UNAVAILABLE);
    assert!(report.retry_after_secs >= 1);
    let ok = decode(&a.recv(REPLY_WAIT).await.unwrap());
    let answered_a = started.elapsed();
    response(&ok);
    assert!(
        answered_b < answered_a,
        "the loop answered B ({answered_b:?}) only after A's verification ({answered_a:?})"
    );
    assert_eq!(cloud.logins("unavailable"), 1);
    // With the queue drained, B gets in.
    response(&b.login("fast", "right").await);
    cloud.stop().await;
}

#[tokio::test]
async fn under_load_hellos_need_a_cookie() {
    let cloud = Cloud::start_with(Setup {
        options: AuthOptions {
            under_load_at: 0,
            ..AuthOptions::default()
        },
        ..Setup::default()
    })
    .await;
    cloud.add_device("dev-a", "a.cyphonic", "right").await;
    let mut node = Node::new(&cloud, 19).await;
    response(&node.connect_and_login("dev-a", "right").await);
    let cookies = node
        .captured
        .iter()
        .filter(|d| classify(d) == Ok(MessageType::CookieReply))
        .count();
    assert_eq!(cookies, 1);
    cloud.stop().await;
}

#[tokio::test]
async fn every_socket_serves_both_families() {
    let cloud = Cloud::start_with(Setup {
        listen: vec!["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()],
        ..Setup::default()
    })
    .await;
    cloud.add_device("v4", "v4.cyphonic", "right").await;
    cloud.add_device("v6", "v6.cyphonic", "right").await;
    let mut v4 = Node::bind(&cloud, cloud.addrs[0], "127.0.0.1:0", 20).await;
    let mut v6 = Node::bind(&cloud, cloud.addrs[1], "[::1]:0", 21).await;
    response(&v4.connect_and_login("v4", "right").await);
    response(&v6.connect_and_login("v6", "right").await);
    cloud.stop().await;
}

#[tokio::test]
async fn the_as_requires_the_signing_key_and_a_socket() {
    let store = Arc::new(InMemoryStore::default());
    let ctx = Arc::new(context(Arc::clone(&store), LoginLimits::default(), None));
    let socket = Arc::new(net::bind_udp("127.0.0.1:0".parse().unwrap()).unwrap());
    let result = run(ctx, vec![socket], CancellationToken::new()).await;
    assert!(matches!(result, Err(AuthError::NoSigningKey)), "{result:?}");

    let ctx = Arc::new(context(
        store,
        LoginLimits::default(),
        Some(SigningKey::from_bytes(&[1; 32])),
    ));
    let result = run(ctx, Vec::new(), CancellationToken::new()).await;
    assert!(matches!(result, Err(AuthError::NoSockets)), "{result:?}");
}
