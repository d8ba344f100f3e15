//! Seal and open throughput of every crypto suite through the plugin ABI (statically
//! linked headers, the safe wrappers the host uses), at 64, 1400 and 9000 bytes, one
//! packet per call and `BATCH` per call. Open includes restoring the sealed packet.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use cyphonic_bench::{BATCH, PACKET_SIZES, Workload, suites};

type Op = fn(&mut Workload);

fn crypto_suites(c: &mut Criterion) {
    let suites = suites().expect("the in-tree suites load");
    let ops: [(&str, usize, Op); 4] = [
        ("seal", 1, |w| {
            w.seal().expect("seal");
        }),
        ("open", 1, |w| {
            w.open().expect("open");
        }),
        ("seal_batch32", BATCH, |w| {
            w.seal_batch().expect("seal batch")
        }),
        ("open_batch32", BATCH, |w| {
            w.open_batch().expect("open batch")
        }),
    ];
    for (group_name, per_call, op) in ops {
        let mut group = c.benchmark_group(group_name);
        for suite in &suites {
            for size in PACKET_SIZES {
                let mut w = Workload::new(suite, size).expect("workload");
                group.throughput(Throughput::Bytes((size * per_call) as u64));
                group.bench_function(BenchmarkId::new(suite.name, size), |b| {
                    b.iter(|| op(&mut w));
                });
            }
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = crypto_suites
}
criterion_main!(benches);
