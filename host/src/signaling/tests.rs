//! The clients against in-process fake services built on `proto::channel::ChannelServer`
//! over loopback sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cyphonic_proto::channel::{
    ChannelServer, DropReason, PeerIdentity, ServerConfig, ServerEvent, Service,
};
use cyphonic_proto::credential::{CloudKeyId, Credential, CredentialError, SignedCredential};
use cyphonic_proto::relay::{RelayKey, bind_key, mint_ticket, verify_bind};
use cyphonic_proto::wire::relay::{RelayBindAckRepr, RelayBindPacket, RelayBindRepr};
use cyphonic_proto::wire::signal::{
    LoginResponse, PathPlan, PeerRoute, RegistrationResponse, SignalMessage, SignalPacket,
    SignalRepr, StatusReport,
};
use cyphonic_proto::wire::status::StatusCode;
use cyphonic_proto::wire::{Fqdn, NodeId};
use ed25519_dalek::SigningKey;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::*;

const DEADLINE: Duration = Duration::from_secs(20);

type Handler = Box<dyn FnMut(&PeerIdentity, SocketAddr, &SignalRepr) -> Vec<SignalRepr> + Send>;

/// A fake cloud service: a `ChannelServer` whose requests go to `handler`; every
/// message the handler returns is sealed back on the same channel. Every request it
/// receives is also reported on the returned channel.
async fn fake_service(
    service: Service,
    cloud: SigningKey,
    mut handler: Handler,
) -> (SocketAddr, mpsc::UnboundedReceiver<SignalRepr>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let (seen_tx, seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut server = ChannelServer::new(&cloud, vec![], ServerConfig::new(service));
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let mut buf = vec![0u8; 65_536];
        let mut out = vec![0u8; 2048];
        loop {
            let Ok((n, src)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let now = Instant::now();
            let unix = super::unix_now();
            let event = server
                .handle_datagram(now, unix, src, &mut buf[..n], &mut rng, &mut out)
                .unwrap();
            match event {
                ServerEvent::Accept { len, .. } | ServerEvent::CookieReply { len } => {
                    socket.send_to(&out[..len], src).await.unwrap();
                }
                ServerEvent::Request {
                    channel,
                    peer,
                    src,
                    inner,
                } => {
                    let packet = SignalPacket::new_checked(&buf[inner]).unwrap();
                    let repr = SignalRepr::parse(&packet).unwrap();
                    let replies = handler(&peer, src, &repr);
                    let _ = seen_tx.send(repr);
                    for reply in replies {
                        let mut bytes = vec![0u8; reply.buffer_len()];
                        reply.emit(&mut bytes).unwrap();
                        let (len, to) = server.seal_to(now, channel, &bytes, &mut out).unwrap();
                        socket.send_to(&out[..len], to).await.unwrap();
                    }
                }
                // Hellos may repeat after a retransmission; the client copes.
                ServerEvent::Dropped(reason) => assert_eq!(reason, DropReason::Replay),
            }
        }
    });
    (addr, seen)
}

fn cloud_key() -> SigningKey {
    SigningKey::from_bytes(&[0x42; 32])
}

fn node_key(seed: u8) -> StaticSecret {
    StaticSecret::from([seed; 32])
}

fn credential_for(cloud: &SigningKey, static_public: [u8; 32], name: &str) -> SignedCredential {
    let now = super::unix_now();
    Credential {
        cloud_key_id: CloudKeyId::of(&cloud.verifying_key()),
        node_id: NodeId([static_public[0]; 16]),
        not_before: now,
        not_after: now.saturating_add(Duration::from_secs(3600)),
        static_public,
        vip4: "100.64.0.9".parse().unwrap(),
        vip6: "fd00:1::9".parse().unwrap(),
        fqdn: Fqdn::new(name).unwrap(),
    }
    .sign(cloud)
}

fn reply(to: &SignalRepr, message: SignalMessage) -> SignalRepr {
    SignalRepr {
        request_id: to.request_id,
        message,
    }
}

fn status(code: StatusCode) -> SignalMessage {
    SignalMessage::Status(StatusReport {
        status: code,
        retry_after_secs: 0,
        message: "refused".into(),
    })
}

fn fake_as(cloud: SigningKey, key_for_credential: Option<[u8; 32]>) -> Handler {
    Box::new(move |peer, _src, request| {
        assert_eq!(
            request.request_id & PUSH_ID_BIT,
            0,
            "node ids have the top bit clear"
        );
        match &request.message {
            SignalMessage::LoginRequest(login) => {
                if login.device_id != "laptop" || login.password.as_slice() != b"hunter2" {
                    return vec![reply(request, status(StatusCode::AUTHENTICATION_FAILED))];
                }
                assert_eq!(login.static_public, peer.static_public);
                let key = key_for_credential.unwrap_or(login.static_public);
                vec![reply(
                    request,
                    SignalMessage::LoginResponse(LoginResponse {
                        credential: credential_for(&cloud, key, "laptop.alice.cyphonic"),
                        renew_after_secs: 1800,
                        domain: Fqdn::new("cyphonic").unwrap(),
                    }),
                )]
            }
            SignalMessage::RenewRequest => {
                assert!(peer.credential.is_some(), "renewal presents a credential");
                vec![reply(
                    request,
                    SignalMessage::LoginResponse(LoginResponse {
                        credential: credential_for(
                            &cloud,
                            peer.static_public,
                            "laptop.alice.cyphonic",
                        ),
                        renew_after_secs: 900,
                        domain: Fqdn::new("cyphonic").unwrap(),
                    }),
                )]
            }
            _ => vec![reply(request, status(StatusCode::MALFORMED))],
        }
    })
}

#[tokio::test]
async fn login_returns_a_verified_credential_and_renewal_works() {
    let cloud = cloud_key();
    let (as_addr, mut seen) =
        fake_service(Service::Auth, cloud.clone(), fake_as(cloud.clone(), None)).await;
    let node = node_key(1);
    let client = AuthClient::default();
    let outcome = tokio::time::timeout(
        DEADLINE,
        client.login(
            as_addr,
            &cloud.verifying_key(),
            &node,
            "laptop",
            Zeroizing::new(b"hunter2".to_vec()),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let statement = outcome
        .credential
        .verify_for_key(
            &[cloud.verifying_key()],
            super::unix_now(),
            PublicKey::from(&node).as_bytes(),
        )
        .unwrap();
    assert_eq!(statement.fqdn.as_str(), "laptop.alice.cyphonic");
    assert_eq!(outcome.renew_after, Duration::from_secs(1800));
    assert_eq!(outcome.domain.as_str(), "cyphonic");
    assert!(matches!(
        seen.recv().await.unwrap().message,
        SignalMessage::LoginRequest(_)
    ));
    let shown = format!("{outcome:?}");
    assert!(
        shown.contains("laptop.alice.cyphonic") && !shown.contains("static_public"),
        "{shown}"
    );

    let renewed = tokio::time::timeout(
        DEADLINE,
        client.renew(as_addr, &cloud.verifying_key(), &node, &outcome.credential),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(renewed.renew_after, Duration::from_secs(900));
    assert!(matches!(
        seen.recv().await.unwrap().message,
        SignalMessage::RenewRequest
    ));
}

#[tokio::test]
async fn refusals_and_bad_credentials_are_errors() {
    let cloud = cloud_key();
    let (as_addr, _seen) =
        fake_service(Service::Auth, cloud.clone(), fake_as(cloud.clone(), None)).await;
    let node = node_key(2);
    let err = AuthClient::default()
        .login(
            as_addr,
            &cloud.verifying_key(),
            &node,
            "laptop",
            Zeroizing::new(b"wrong".to_vec()),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.status(),
        Some(StatusCode::AUTHENTICATION_FAILED),
        "{err}"
    );
    assert!(!format!("{err:?} {err}").contains("wrong"));

    // An AS that certifies another key: the client refuses the credential.
    let (as_addr, _seen) = fake_service(
        Service::Auth,
        cloud.clone(),
        fake_as(cloud.clone(), Some([9; 32])),
    )
    .await;
    let err = AuthClient::default()
        .login(
            as_addr,
            &cloud.verifying_key(),
            &node,
            "laptop",
            Zeroizing::new(b"hunter2".to_vec()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SignalingError::Credential(CredentialError::KeyMismatch)
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_silent_cloud_gives_channel_lost_not_a_hang() {
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let mut config = ClientConfig::default();
    config.signaling.initial_rto = Duration::from_millis(100);
    config.signaling.handshake_timeout = Duration::from_millis(800);
    config.signaling.request_timeout = Duration::from_secs(5);
    let cloud = cloud_key();
    let node = node_key(3);
    let started = Instant::now();
    let err = AuthClient::new(config.clone())
        .login(
            addr,
            &cloud.verifying_key(),
            &node,
            "laptop",
            Zeroizing::new(b"pw".to_vec()),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, SignalingError::ChannelLost), "{err:?}");
    let credential = credential_for(&cloud, PublicKey::from(&node).to_bytes(), "a.cyphonic");
    let err = NmsClient::connect_with(config, addr, &cloud.verifying_key(), &node, credential)
        .await
        .unwrap_err();
    assert!(matches!(err, SignalingError::ChannelLost), "{err:?}");
    assert!(started.elapsed() < DEADLINE);
    // The silent socket got hellos, so the clients really tried.
    let mut buf = [0u8; 2048];
    let (n, _) = silent.recv_from(&mut buf).await.unwrap();
    assert_eq!(&buf[..2], &[1, 0x01], "a ChannelHello ({n} bytes)");
}

const PUSH_ID: u32 = PUSH_ID_BIT | 7;

fn route_to(cloud: &SigningKey, name: &str) -> Box<PeerRoute> {
    Box::new(PeerRoute {
        credential: credential_for(cloud, [0x77; 32], name),
        real: vec!["192.0.2.1:4500".parse().unwrap()],
        observed: vec![],
        plan: PathPlan::Direct,
        punch_key: Zeroizing::new([0x5a; 32]),
        relay: None,
    })
}

#[tokio::test]
async fn nms_requests_pushes_and_confirmations() {
    let cloud = cloud_key();
    let confirmations = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&confirmations);
    let push_cloud = cloud.clone();
    let handler: Handler = Box::new(move |peer, src, request| {
        assert!(peer.credential.is_some());
        let push = SignalRepr {
            request_id: PUSH_ID,
            message: SignalMessage::RouteDirectionToResponder {
                direction_id: [3; 16],
                peer: route_to(&push_cloud, "phone.bob.cyphonic"),
            },
        };
        match &request.message {
            SignalMessage::RegistrationRequest(reg) => {
                assert_eq!(
                    reg.endpoints,
                    vec!["10.0.0.5:4500".parse::<SocketAddr>().unwrap()]
                );
                // Reply, then push the same direction twice (a retransmission).
                vec![
                    reply(
                        request,
                        SignalMessage::RegistrationResponse(RegistrationResponse {
                            observed: Some(src),
                            keepalive_secs: 20,
                            presence_ttl_secs: 75,
                        }),
                    ),
                    push.clone(),
                    push,
                ]
            }
            SignalMessage::KeepAlive { sequence } => vec![reply(
                request,
                SignalMessage::KeepAliveAck {
                    sequence: *sequence,
                    observed: src,
                },
            )],
            SignalMessage::DirectionRequest { target } if target.as_str() == "nobody.cyphonic" => {
                vec![reply(request, status(StatusCode::NOT_FOUND))]
            }
            SignalMessage::DirectionRequest { .. } => vec![reply(
                request,
                SignalMessage::RouteDirectionToInitiator {
                    direction_id: [4; 16],
                    peer: route_to(&push_cloud, "nas.bob.cyphonic"),
                },
            )],
            SignalMessage::DirectionRequestByAddress { target }
                if *target == "100.64.0.7".parse::<std::net::IpAddr>().unwrap() =>
            {
                vec![reply(
                    request,
                    SignalMessage::RouteDirectionToInitiator {
                        direction_id: [5; 16],
                        peer: route_to(&push_cloud, "tv.bob.cyphonic"),
                    },
                )]
            }
            SignalMessage::DirectionRequestByAddress { .. } => {
                vec![reply(request, status(StatusCode::NOT_FOUND))]
            }
            SignalMessage::RouteDirectionConfirmation { .. } => {
                // Pretend the first confirmation was lost: push again, once.
                if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                    vec![push]
                } else {
                    vec![]
                }
            }
            SignalMessage::FinalizationRequest => {
                vec![reply(request, SignalMessage::FinalizationResponse)]
            }
            _ => vec![reply(request, status(StatusCode::MALFORMED))],
        }
    });
    let (nms_addr, mut seen) = fake_service(Service::NodeManagement, cloud.clone(), handler).await;
    let node = node_key(4);
    let credential = credential_for(
        &cloud,
        PublicKey::from(&node).to_bytes(),
        "laptop.alice.cyphonic",
    );
    let run = async {
        let mut nms = NmsClient::connect(nms_addr, &cloud.verifying_key(), &node, credential)
            .await
            .unwrap();
        let mut events = nms.events().unwrap();
        assert!(nms.events().is_none());
        let registered = nms
            .register(vec!["10.0.0.5:4500".parse().unwrap()])
            .await
            .unwrap();
        assert_eq!(registered.observed, Some(nms.local_addr()));
        let ack = nms.keepalive().await.unwrap();
        assert_eq!((ack.sequence, ack.observed), (1, nms.local_addr()));

        let NmsEvent::RouteDirectionToResponder { direction_id, peer } =
            events.recv().await.unwrap()
        else {
            panic!("expected a route direction");
        };
        assert_eq!(direction_id, [3; 16]);
        assert_eq!(
            peer.credential.credential().fqdn.as_str(),
            "phone.bob.cyphonic"
        );
        assert!(!format!("{peer:?}").contains("90, 90"), "punch key printed");
        nms.confirm(direction_id, StatusCode::SUCCESS)
            .await
            .unwrap();
        assert!(nms.confirm([8; 16], StatusCode::SUCCESS).await.is_err());

        let err = nms
            .direction(Fqdn::new("nobody.cyphonic").unwrap())
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));
        let (id, route) = nms
            .direction(Fqdn::new("nas.bob.cyphonic").unwrap())
            .await
            .unwrap();
        assert_eq!(id, [4; 16]);
        assert_eq!(route.plan, PathPlan::Direct);

        let (id, route) = nms
            .direction_by_address("100.64.0.7".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(id, [5; 16]);
        assert_eq!(
            route.credential.credential().fqdn.as_str(),
            "tv.bob.cyphonic"
        );
        let err = nms
            .direction_by_address("fd00::99".parse().unwrap())
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));
        nms.finalize().await.unwrap();
        assert!(matches!(nms.keepalive().await, Err(SignalingError::Closed)));
        // The repeated pushes produced one event only.
        assert!(events.try_recv().is_err());
    };
    tokio::time::timeout(DEADLINE, run).await.unwrap();

    // Both confirmations (the original and the answer to the repeated push) carried
    // the push's request id and the direction id.
    let mut confirmation_ids = Vec::new();
    while let Ok(repr) = seen.try_recv() {
        if let SignalMessage::RouteDirectionConfirmation {
            direction_id,
            status,
        } = repr.message
        {
            assert_eq!((direction_id, status), ([3; 16], StatusCode::SUCCESS));
            confirmation_ids.push(repr.request_id);
        } else {
            assert_eq!(repr.request_id & PUSH_ID_BIT, 0);
        }
    }
    assert_eq!(confirmation_ids, vec![PUSH_ID, PUSH_ID]);
    assert_eq!(confirmations.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn relay_bind_accepts_only_the_genuine_ack() {
    let key = RelayKey::derive(b"a test cloud secret, 32 bytes or more");
    let me = NodeId([1; 16]);
    let ticket = mint_ticket(
        &key,
        [5; 16],
        me,
        NodeId([2; 16]),
        super::unix_now().saturating_add(Duration::from_secs(600)),
    );
    let trs = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let trs_addr = trs.local_addr().unwrap();
    let trs_key = key.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        let (n, src) = trs.recv_from(&mut buf).await.unwrap();
        let packet = RelayBindPacket::new_checked(&buf[..n]).unwrap();
        let bind = RelayBindRepr::parse(&packet).unwrap();
        let bk = verify_bind(&trs_key, &bind, super::unix_now()).unwrap();
        let mut ack = RelayBindAckRepr {
            ticket_id: bind.ticket.ticket_id,
            status: StatusCode::SUCCESS,
            timestamp_millis: bind.timestamp_millis,
            peer_bound: false,
            observed: src,
            mac: [0; 16],
        };
        let mut out = [0u8; RelayBindAckRepr::MAX_LEN];
        // A forged ack (wrong key) and a stale one (unknown timestamp) come first.
        let mut forged = ack;
        forged.peer_bound = true;
        forged.seal(&[0; 32]);
        let len = forged.emit(&mut out).unwrap();
        trs.send_to(&out[..len], src).await.unwrap();
        let mut stale = ack;
        stale.timestamp_millis -= 5;
        stale.seal(&bk);
        let len = stale.emit(&mut out).unwrap();
        trs.send_to(&out[..len], src).await.unwrap();
        ack.seal(&bk);
        let len = ack.emit(&mut out).unwrap();
        trs.send_to(&out[..len], src).await.unwrap();
    });
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let bk = bind_key(&key, &ticket, &me);
    let ack = tokio::time::timeout(DEADLINE, relay_bind(trs_addr, &ticket, &bk, me, &socket))
        .await
        .unwrap()
        .unwrap();
    assert!(!ack.peer_bound, "the forged ack was taken");
    assert_eq!(ack.observed, socket.local_addr().unwrap());

    // Timestamps only go up, even when the clock does not.
    let mut binder = RelayBinder::new(ticket, &bk, me);
    let mut a = [0u8; 200];
    let mut b = [0u8; 200];
    let la = binder.bind(1_000, &mut a).unwrap();
    let lb = binder.bind(1_000, &mut b).unwrap();
    let ta = RelayBindPacket::new_checked(&a[..la])
        .unwrap()
        .timestamp_millis();
    let tb = RelayBindPacket::new_checked(&b[..lb])
        .unwrap()
        .timestamp_millis();
    assert!(tb > ta);
    assert!(!format!("{binder:?}").contains(&format!("{:?}", *bk)));
}
