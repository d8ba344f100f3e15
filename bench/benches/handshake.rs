//! Complete node-to-node handshakes per second through the public tunnel API: four
//! X25519 operations and one credential signature check on each side, plus the Noise
//! transcript and key derivation.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use cyphonic_bench::handshake::HandshakePair;

fn handshakes(c: &mut Criterion) {
    let mut pair = HandshakePair::new().expect("handshake pair");
    let mut group = c.benchmark_group("tunnel");
    group.throughput(Throughput::Elements(1));
    group.bench_function("full_handshake", |b| {
        b.iter(|| pair.handshake().expect("handshake"));
    });
    group.finish();
}

criterion_group!(benches, handshakes);
criterion_main!(benches);
