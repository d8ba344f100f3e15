//! Helpers shared by the NMS unit tests.

use std::sync::OnceLock;
use std::time::Instant;

use cyphonic_proto::channel::{
    ChannelClient, ChannelHandle, ChannelServer, Purpose, ServerConfig, ServerEvent, Service,
};
use cyphonic_proto::time::UnixTime;
use ed25519_dalek::SigningKey;
use rand_core::OsRng;
use x25519_dalek::StaticSecret;

/// A real channel handle (they have no public constructor), from one in-process
/// handshake done once per test binary. Tables only store handles, so one will do.
pub(super) fn some_handle() -> ChannelHandle {
    static HANDLE: OnceLock<ChannelHandle> = OnceLock::new();
    *HANDLE.get_or_init(|| {
        let cloud = SigningKey::from_bytes(&[3; 32]);
        let mut server = ChannelServer::new(&cloud, vec![], ServerConfig::new(Service::Auth));
        let node = StaticSecret::from([4; 32]);
        let mut client =
            ChannelClient::new(&cloud.verifying_key(), &node, Service::Auth, Purpose::Login);
        let now = Instant::now();
        let unix = UnixTime::from_system_time(std::time::SystemTime::now());
        let mut hello = vec![0u8; 1024];
        let len = client.start(now, unix, &mut OsRng, &mut hello).unwrap();
        let mut out = vec![0u8; 1024];
        match server
            .handle_datagram(
                now,
                unix,
                "127.0.0.1:1".parse().unwrap(),
                &mut hello[..len],
                &mut OsRng,
                &mut out,
            )
            .unwrap()
        {
            ServerEvent::Accept { channel, .. } => channel,
            other => panic!("handshake failed: {other:?}"),
        }
    })
}
