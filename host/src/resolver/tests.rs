use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::*;
use crate::lua::{Sandbox, Script};

const DEFAULT_FILTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/dns_filter.lua");
/// How long a test waits for any answer; every deadline under test is far shorter.
const PATIENCE: Duration = Duration::from_secs(5);

// ---- the shipped filter ----------------------------------------------------------

fn default_filter() -> Sandbox {
    Sandbox::with_script(
        Default::default(),
        &Script::from_file(Path::new(DEFAULT_FILTER)).unwrap(),
    )
    .unwrap()
}

fn decide(sb: &mut Sandbox, name: &str, qtype: &str) -> String {
    let ctx = sb
        .run(|lua| {
            let ctx = lua.create_table()?;
            ctx.set("domain", "cyphonic")?;
            ctx.set("client", "127.0.0.1")?;
            Ok(ctx)
        })
        .unwrap();
    sb.call("filter", (name, qtype, ctx)).unwrap()
}

#[test]
fn default_filter_decisions() {
    let mut sb = default_filter();
    assert_eq!(decide(&mut sb, "node-b.cyphonic", "A"), "overlay");
    assert_eq!(decide(&mut sb, "laptop.alice.cyphonic", "AAAA"), "overlay");
    assert_eq!(decide(&mut sb, "cyphonic", "SOA"), "overlay");
    assert_eq!(decide(&mut sb, "notcyphonic", "A"), "forward");
    assert_eq!(decide(&mut sb, "example.com", "A"), "forward");
    assert_eq!(decide(&mut sb, ".", "NS"), "forward");
    sb.self_check().unwrap();

    // The lists at the top of the script, as an operator would fill them.
    sb.load(&Script::new(
        "lists.lua",
        "DENY = {'*.ads.example', 'tracker.example.com', '*.cyphonic'}\n\
         ALLOW = {'ok.ads.example'}\nDENY_TYPES = {'ANY'}",
    ))
    .unwrap();
    assert_eq!(decide(&mut sb, "x.ads.example", "A"), "block");
    assert_eq!(decide(&mut sb, "a.b.ads.example", "A"), "block");
    assert_eq!(
        decide(&mut sb, "ads.example", "A"),
        "forward",
        "wildcards need a label"
    );
    assert_eq!(
        decide(&mut sb, "ok.ads.example", "A"),
        "forward",
        "ALLOW wins"
    );
    assert_eq!(decide(&mut sb, "tracker.example.com", "AAAA"), "block");
    assert_eq!(decide(&mut sb, "sub.tracker.example.com", "A"), "forward");
    assert_eq!(decide(&mut sb, "example.com", "ANY"), "block");
    assert_eq!(
        decide(&mut sb, "node-b.cyphonic", "A"),
        "overlay",
        "overlay first"
    );
    let self_check: bool = sb.call("self_check", ()).unwrap();
    assert!(self_check);

    sb.load(&Script::new("bad.lua", "DENY = {'ads*.example'}"))
        .unwrap();
    let err = sb.self_check().unwrap_err();
    assert!(
        matches!(&err, ScriptError::SelfCheck { message, .. } if message.contains("ads*.example")),
        "{err:?}"
    );
    sb.load(&Script::new(
        "odd.lua",
        "function self_check() return 1 end",
    ))
    .unwrap();
    assert!(matches!(
        sb.self_check(),
        Err(ScriptError::BadReturn { .. })
    ));
}

#[test]
fn documented_wrapper_example_works() {
    let source = std::fs::read_to_string(DEFAULT_FILTER).unwrap()
        + "\nDENY = {'*.ads.example'}\nlocal shipped = filter\n\
           function filter(name, qtype, ctx)\n\
             local decision = shipped(name, qtype, ctx)\n\
             if decision == 'block' then print('blocked', name, qtype, 'for', ctx.client) end\n\
             return decision\n\
           end\n";
    let mut sb =
        Sandbox::with_script(Default::default(), &Script::new("wrapped.lua", source)).unwrap();
    assert_eq!(decide(&mut sb, "x.ads.example", "A"), "block");
    assert_eq!(decide(&mut sb, "node-b.cyphonic", "A"), "overlay");
    assert_eq!(decide(&mut sb, "example.com", "A"), "forward");
}

// ---- fakes -------------------------------------------------------------------------

/// Knows a few names; `hang.cyphonic` never returns and `broken.cyphonic` fails.
struct FakeOverlay {
    names: HashMap<&'static str, OverlayAddrs>,
    calls: AtomicUsize,
}

impl FakeOverlay {
    fn new() -> Arc<Self> {
        let mut names = HashMap::new();
        names.insert(
            "node-b.cyphonic",
            OverlayAddrs {
                ipv4: Some(Ipv4Addr::new(100, 64, 0, 2)),
                ipv6: Some("fd00:1::2".parse().unwrap()),
            },
        );
        names.insert(
            "v4only.cyphonic",
            OverlayAddrs {
                ipv4: Some(Ipv4Addr::new(100, 64, 0, 3)),
                ipv6: None,
            },
        );
        Arc::new(Self {
            names,
            calls: AtomicUsize::new(0),
        })
    }
}

impl OverlayResolver for FakeOverlay {
    fn resolve(
        &self,
        name: Fqdn,
    ) -> Pin<Box<dyn Future<Output = Result<Option<OverlayAddrs>, OverlayError>> + Send>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let known = self.names.get(name.as_str()).copied();
        Box::pin(async move {
            match name.as_str() {
                "hang.cyphonic" => std::future::pending().await,
                "broken.cyphonic" => Err(OverlayError::Unavailable(String::from("no channel"))),
                _ => Ok(known),
            }
        })
    }
}

/// An upstream that answers every UDP and TCP query with fixed bytes (after the
/// query's id) and records what it received.
struct FakeUpstream {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl FakeUpstream {
    async fn start(udp_answer: Vec<u8>, tcp_answer: Vec<u8>) -> Self {
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&received);
        let udp_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            loop {
                let (len, from) = udp.recv_from(&mut buf).await.unwrap();
                log.lock().unwrap().push(buf[..len].to_vec());
                let mut answer = udp_answer.clone();
                answer[..2].copy_from_slice(&buf[..2]);
                udp.send_to(&answer, from).await.unwrap();
            }
        });
        let log = Arc::clone(&received);
        let tcp_task = tokio::spawn(async move {
            loop {
                let (mut stream, _) = tcp.accept().await.unwrap();
                let len = stream.read_u16().await.unwrap();
                let mut query = vec![0u8; usize::from(len)];
                stream.read_exact(&mut query).await.unwrap();
                log.lock().unwrap().push(query.clone());
                let mut answer = tcp_answer.clone();
                answer[..2].copy_from_slice(&query[..2]);
                let mut framed = u16::try_from(answer.len()).unwrap().to_be_bytes().to_vec();
                framed.extend_from_slice(&answer);
                stream.write_all(&framed).await.unwrap();
            }
        });
        Self {
            addr,
            received,
            _tasks: vec![udp_task, tcp_task],
        }
    }

    fn received(&self) -> Vec<Vec<u8>> {
        self.received.lock().unwrap().clone()
    }
}

/// A canned upstream answer: any bytes with a response header will do, the resolver
/// must not look inside.
fn canned_answer(flags: u8, filler: u8, len: usize) -> Vec<u8> {
    let mut answer = vec![0, 0, 0x80 | flags, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
    answer.resize(len, filler);
    answer
}

// ---- harness -----------------------------------------------------------------------

struct Harness {
    handle: ResolverHandle,
    overlay: Arc<FakeOverlay>,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start(filter_source: &str, adjust: impl FnOnce(&mut ResolverConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let filter = write_filter(dir.path(), filter_source);
        let mut config = ResolverConfig::new(Fqdn::new("cyphonic").unwrap(), filter);
        config.listen = vec!["127.0.0.1:0".parse().unwrap()];
        config.overlay_timeout = Duration::from_millis(300);
        config.upstream_timeout = Duration::from_millis(300);
        config.script_timeout = Duration::from_millis(500);
        config.own = Some(OwnName {
            name: Fqdn::new("me.cyphonic").unwrap(),
            addrs: OverlayAddrs {
                ipv4: Some(Ipv4Addr::new(100, 64, 0, 1)),
                ipv6: None,
            },
        });
        adjust(&mut config);
        let overlay = FakeOverlay::new();
        let handle = Resolver::start(config, Arc::clone(&overlay) as Arc<dyn OverlayResolver>)
            .await
            .unwrap();
        Self {
            handle,
            overlay,
            _dir: dir,
        }
    }

    async fn default(adjust: impl FnOnce(&mut ResolverConfig)) -> Self {
        let source =
            std::fs::read_to_string(DEFAULT_FILTER).unwrap() + "\nDENY = {'*.ads.example'}\n";
        Self::start(&source, adjust).await
    }

    fn addr(&self) -> SocketAddr {
        self.handle.local_addrs()[0]
    }

    async fn udp(&self, query: &[u8]) -> Option<Vec<u8>> {
        udp_exchange(self.addr(), query).await
    }

    async fn tcp(&self, query: &[u8]) -> Vec<u8> {
        tcp_exchange(self.addr(), query).await
    }

    async fn ask(&self, name: &str, qtype: RecordType) -> Message {
        let answer = self
            .udp(&query(0x1234, name, qtype))
            .await
            .expect("an answer");
        let message = Message::from_vec(&answer).unwrap();
        assert_eq!(message.id(), 0x1234);
        assert_eq!(message.message_type(), MessageType::Response);
        message
    }
}

fn write_filter(dir: &Path, source: &str) -> PathBuf {
    let path = dir.join("dns_filter.lua");
    std::fs::write(&path, source).unwrap();
    path
}

fn query(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
    let mut message = Message::new();
    message
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    message.to_vec().unwrap()
}

async fn udp_exchange(server: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let local = if server.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    };
    let socket = UdpSocket::bind(local).await.unwrap();
    socket.send_to(query, server).await.unwrap();
    let mut buf = vec![0u8; 65_535];
    match tokio::time::timeout(PATIENCE, socket.recv(&mut buf)).await {
        Ok(len) => {
            buf.truncate(len.unwrap());
            Some(buf)
        }
        Err(_) => None,
    }
}

async fn tcp_exchange(server: SocketAddr, query: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(server).await.unwrap();
    let mut framed = u16::try_from(query.len()).unwrap().to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    stream.write_all(&framed).await.unwrap();
    let exchange = async {
        let len = stream.read_u16().await.unwrap();
        let mut answer = vec![0u8; usize::from(len)];
        stream.read_exact(&mut answer).await.unwrap();
        answer
    };
    tokio::time::timeout(PATIENCE, exchange)
        .await
        .expect("a TCP answer")
}

fn addresses(message: &Message) -> Vec<String> {
    message
        .answers()
        .iter()
        .map(|record| {
            assert_eq!(record.ttl(), 5);
            match record.data() {
                RData::A(a) => a.0.to_string(),
                RData::AAAA(aaaa) => aaaa.0.to_string(),
                other => panic!("unexpected record {other:?}"),
            }
        })
        .collect()
}

// ---- overlay -----------------------------------------------------------------------

#[tokio::test]
async fn overlay_names_are_answered_with_virtual_addresses() {
    let h = Harness::default(|_| {}).await;

    let a = h.ask("node-b.cyphonic.", RecordType::A).await;
    assert_eq!(a.response_code(), ResponseCode::NoError);
    assert!(a.authoritative());
    assert_eq!(a.queries()[0].name().to_ascii(), "node-b.cyphonic.");
    assert_eq!(addresses(&a), ["100.64.0.2"]);

    let aaaa = h.ask("Node-B.Cyphonic.", RecordType::AAAA).await;
    assert_eq!(aaaa.response_code(), ResponseCode::NoError);
    assert_eq!(addresses(&aaaa), ["fd00:1::2"]);

    let any = h.ask("node-b.cyphonic.", RecordType::ANY).await;
    assert_eq!(addresses(&any), ["100.64.0.2", "fd00:1::2"]);

    // The other family: the name exists, no record of that type.
    let none = h.ask("v4only.cyphonic.", RecordType::AAAA).await;
    assert_eq!(none.response_code(), ResponseCode::NoError);
    assert!(none.answers().is_empty());

    let calls = h.overlay.calls.load(Ordering::SeqCst);
    assert_eq!(calls, 4);
    // Other types never reach the NMS.
    let txt = h.ask("node-b.cyphonic.", RecordType::HTTPS).await;
    assert_eq!(txt.response_code(), ResponseCode::NoError);
    assert!(txt.answers().is_empty());
    // The node's own name is answered locally.
    let own = h.ask("me.cyphonic.", RecordType::A).await;
    assert_eq!(addresses(&own), ["100.64.0.1"]);
    assert_eq!(h.overlay.calls.load(Ordering::SeqCst), calls);

    // Over TCP too.
    let answer = h.tcp(&query(7, "node-b.cyphonic.", RecordType::A)).await;
    let tcp = Message::from_vec(&answer).unwrap();
    assert_eq!(
        (tcp.id(), addresses(&tcp)),
        (7, vec![String::from("100.64.0.2")])
    );

    let stats = h.handle.stats();
    assert_eq!(stats.overlay, 7);
    assert_eq!(stats.own_name, 1);
    assert_eq!(stats.noerror, 7);
    assert_eq!(h.handle.stats_handle().snapshot(), stats);
}

#[tokio::test]
async fn unknown_failing_and_hanging_overlay_names() {
    let h = Harness::default(|_| {}).await;
    let unknown = h.ask("nobody.cyphonic.", RecordType::A).await;
    assert_eq!(unknown.response_code(), ResponseCode::NXDomain);
    assert!(unknown.answers().is_empty() && unknown.name_servers().is_empty());

    let broken = h.ask("broken.cyphonic.", RecordType::A).await;
    assert_eq!(broken.response_code(), ResponseCode::ServFail);
    // Both answered at once, not at the deadline.
    assert_eq!(h.handle.stats().overlay_timeouts, 0);

    // Never answers: SERVFAIL at the 300 ms deadline.
    let start = Instant::now();
    let hang = h.ask("hang.cyphonic.", RecordType::AAAA).await;
    let waited = start.elapsed();
    assert_eq!(hang.response_code(), ResponseCode::ServFail);
    assert!(
        waited >= Duration::from_millis(290) && waited < Duration::from_secs(3),
        "{waited:?}"
    );

    // Not a name a node can have.
    let odd = h.ask("_srv._tcp.cyphonic.", RecordType::A).await;
    assert_eq!(odd.response_code(), ResponseCode::NXDomain);

    let stats = h.handle.stats();
    assert_eq!((stats.overlay_errors, stats.overlay_timeouts), (1, 1));
    assert_eq!((stats.nxdomain, stats.servfail), (2, 2));
}

// ---- forwarding --------------------------------------------------------------------

#[tokio::test]
async fn forwarded_queries_are_relayed_unchanged_over_udp_and_tcp() {
    let udp_answer = canned_answer(0, 0xaa, 300);
    let tcp_answer = canned_answer(0, 0xbb, 3000);
    let upstream = FakeUpstream::start(udp_answer.clone(), tcp_answer.clone()).await;
    let h = Harness::default(|c| c.upstreams = vec![upstream.addr]).await;

    let sent = query(0x4242, "www.example.com.", RecordType::A);
    let answer = h.udp(&sent).await.unwrap();
    assert_eq!(answer[..2], [0x42, 0x42]);
    assert_eq!(answer[2..], udp_answer[2..]);
    let received = upstream.received();
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0][2..],
        sent[2..],
        "query bytes unchanged but the id"
    );

    let sent = query(0x0101, "www.example.com.", RecordType::AAAA);
    let answer = h.tcp(&sent).await;
    assert_eq!(answer[..2], [0x01, 0x01]);
    assert_eq!(answer[2..], tcp_answer[2..]);
    let received = upstream.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[1][2..], sent[2..]);

    let stats = h.handle.stats();
    assert_eq!(
        (stats.forwarded, stats.noerror, stats.upstream_failures),
        (2, 2, 0)
    );
}

#[tokio::test]
async fn truncated_udp_answers_are_retried_over_tcp() {
    let truncated = canned_answer(0x02, 0xaa, 100);
    let full = canned_answer(0, 0xbb, 400);
    let upstream = FakeUpstream::start(truncated.clone(), full.clone()).await;
    let h = Harness::default(|c| c.upstreams = vec![upstream.addr]).await;

    let answer = h
        .udp(&query(9, "big.example.com.", RecordType::TXT))
        .await
        .unwrap();
    assert_eq!(answer[2..], full[2..]);
    assert_eq!(upstream.received().len(), 2);

    // Too big for a plain 512-byte client: it gets the truncated one and uses TCP.
    let upstream = FakeUpstream::start(truncated.clone(), canned_answer(0, 0xcc, 2000)).await;
    let h = Harness::default(|c| c.upstreams = vec![upstream.addr]).await;
    let answer = h
        .udp(&query(9, "big.example.com.", RecordType::TXT))
        .await
        .unwrap();
    assert_eq!(answer[2..], truncated[2..]);
}

#[tokio::test]
async fn a_silent_upstream_is_skipped() {
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let answer = canned_answer(0, 0xaa, 40);
    let upstream = FakeUpstream::start(answer.clone(), answer.clone()).await;
    let h =
        Harness::default(|c| c.upstreams = vec![silent.local_addr().unwrap(), upstream.addr]).await;
    let start = Instant::now();
    let relayed = h
        .udp(&query(3, "example.org.", RecordType::A))
        .await
        .unwrap();
    assert_eq!(relayed[2..], answer[2..]);
    assert!(
        start.elapsed() >= Duration::from_millis(290),
        "{:?}",
        start.elapsed()
    );

    // No upstream answers at all: SERVFAIL.
    let h = Harness::default(|c| c.upstreams = vec![silent.local_addr().unwrap()]).await;
    let failed = h.ask("example.org.", RecordType::A).await;
    assert_eq!(failed.response_code(), ResponseCode::ServFail);
    assert_eq!(h.handle.stats().upstream_failures, 1);
}

// ---- blocking and script failures ------------------------------------------------------

#[tokio::test]
async fn blocked_names_get_nxdomain_or_refused() {
    let h = Harness::default(|_| {}).await;
    let blocked = h.ask("x.ads.example.", RecordType::A).await;
    assert_eq!(blocked.response_code(), ResponseCode::NXDomain);
    assert!(blocked.answers().is_empty());
    assert_eq!(h.handle.stats().blocked, 1);

    let h = Harness::default(|c| c.block_response = BlockResponse::Refused).await;
    let blocked = h.ask("x.ads.example.", RecordType::AAAA).await;
    assert_eq!(blocked.response_code(), ResponseCode::Refused);
    assert_eq!(h.handle.stats().refused, 1);
}

#[tokio::test]
async fn a_looping_or_broken_filter_gives_servfail_and_the_next_query_works() {
    let source = "function filter(name, qtype, ctx)\n\
                    if name == 'loop.example' then while true do end end\n\
                    if name == 'error.example' then error('no such list') end\n\
                    if name == 'weird.example' then return 'maybe' end\n\
                    return 'block'\n\
                  end";
    let h = Harness::start(source, |c| c.lua.instructions = 100_000).await;
    for name in ["loop.example.", "error.example.", "weird.example."] {
        let failed = h.ask(name, RecordType::A).await;
        assert_eq!(failed.response_code(), ResponseCode::ServFail, "{name}");
        let next = h.ask("fine.example.", RecordType::A).await;
        assert_eq!(next.response_code(), ResponseCode::NXDomain, "after {name}");
    }
    let stats = h.handle.stats();
    assert_eq!(
        (stats.script_errors, stats.servfail, stats.blocked),
        (3, 3, 3)
    );
}

#[tokio::test]
async fn malformed_messages_are_counted_and_survived() {
    let h = Harness::default(|_| {}).await;
    // Too short for a header: no answer at all.
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(&[1, 2, 3], h.addr()).await.unwrap();
    // A query header promising a question that is not there: FORMERR.
    let garbage = [
        0xbe, 0xef, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0xff, 0xff,
    ];
    let answer = h.udp(&garbage).await.unwrap();
    assert_eq!(answer[..4], [0xbe, 0xef, 0x81, 0x01]);
    // A response sent to us is never answered (no reflection loops).
    let mut response = query(5, "example.com.", RecordType::A);
    response[2] |= 0x80;
    socket.send_to(&response, h.addr()).await.unwrap();
    // Two questions: FORMERR.
    let mut two = Message::new();
    two.set_id(6)
        .add_query(Query::query(
            Name::from_ascii("a.cyphonic.").unwrap(),
            RecordType::A,
        ))
        .add_query(Query::query(
            Name::from_ascii("b.cyphonic.").unwrap(),
            RecordType::A,
        ));
    let answer = h.udp(&two.to_vec().unwrap()).await.unwrap();
    assert_eq!(
        Message::from_vec(&answer).unwrap().response_code(),
        ResponseCode::FormErr
    );
    // Another opcode: NOTIMP.
    let mut notify = Message::from_vec(&query(8, "cyphonic.", RecordType::SOA)).unwrap();
    notify.set_op_code(OpCode::Notify);
    let answer = h.udp(&notify.to_vec().unwrap()).await.unwrap();
    assert_eq!(
        Message::from_vec(&answer).unwrap().response_code(),
        ResponseCode::NotImp
    );
    // Garbage over TCP closes nothing but that connection's query.
    let answer = h.tcp(&garbage).await;
    assert_eq!(answer[..4], [0xbe, 0xef, 0x81, 0x01]);

    let ok = h.ask("node-b.cyphonic.", RecordType::A).await;
    assert_eq!(addresses(&ok), ["100.64.0.2"]);
    let stats = h.handle.stats();
    assert_eq!(stats.malformed, 5);
    assert_eq!((stats.formerr, stats.notimp), (3, 1));
    assert_eq!(stats.received, 7);
}

// ---- lifecycle -------------------------------------------------------------------------

#[tokio::test]
async fn start_errors_and_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let domain = Fqdn::new("cyphonic").unwrap();
    let overlay = FakeOverlay::new() as Arc<dyn OverlayResolver>;

    let mut config = ResolverConfig::new(domain.clone(), write_filter(dir.path(), "x = 1"));
    assert!(matches!(
        Resolver::start(config.clone(), Arc::clone(&overlay)).await,
        Err(ResolverError::NoListen)
    ));
    config.listen = vec!["127.0.0.1:0".parse().unwrap()];
    let err = Resolver::start(config.clone(), Arc::clone(&overlay))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ResolverError::Script(ScriptError::MissingFunction { .. })
        ),
        "{err}"
    );
    config.filter = write_filter(
        dir.path(),
        "function filter() return 'forward' end\nfunction self_check() return 'list 2 is bad' end",
    );
    let err = Resolver::start(config.clone(), Arc::clone(&overlay))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("list 2 is bad"), "{err}");
    config.filter = write_filter(dir.path(), "function filter( end");
    let err = Resolver::start(config.clone(), Arc::clone(&overlay))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ResolverError::Script(ScriptError::Syntax { .. })),
        "{err}"
    );

    config.filter = PathBuf::from(DEFAULT_FILTER);
    config.listen = vec!["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()];
    let handle = match Resolver::start(config.clone(), Arc::clone(&overlay)).await {
        Ok(handle) => handle,
        // No IPv6 loopback in this sandbox.
        Err(ResolverError::Bind { .. }) => {
            config.listen.pop();
            Resolver::start(config.clone(), Arc::clone(&overlay))
                .await
                .unwrap()
        }
        Err(e) => panic!("{e}"),
    };
    let addrs = handle.local_addrs().to_vec();
    for addr in &addrs {
        let answer = udp_exchange(*addr, &query(1, "cyphonic.", RecordType::TXT))
            .await
            .unwrap();
        assert_eq!(
            Message::from_vec(&answer).unwrap().response_code(),
            ResponseCode::NoError
        );
    }
    // The port is busy while running, and free again after the shutdown.
    assert!(UdpSocket::bind(addrs[0]).await.is_err());
    handle.shutdown().await;
    UdpSocket::bind(addrs[0]).await.unwrap();
    TcpListener::bind(addrs[0]).await.unwrap();
}
