//! `cyphonic-cloud bench` end to end with tiny numbers: the real binary as the child
//! cloud, every phase run, every operation answered. (The full benchmark is not a
//! test; see `cloud/bench.sh`.)

// The cloud is a Unix service: its process tests check Unix file modes and signals.
#![cfg(unix)]

use clap::Parser as _;
use cyphonic_cloud::bench::{self, BenchArgs};

#[test]
fn bench_runs_every_phase_against_the_real_binary() {
    let args = BenchArgs::try_parse_from([
        "bench",
        "--nodes",
        "24",
        "--directions",
        "12",
        "--relay-seconds",
        "0.3",
        "--relay-mbit",
        "50",
        "--sockets",
        "3",
        "--cloud-bin",
        env!("CARGO_BIN_EXE_cyphonic-cloud"),
    ])
    .unwrap();
    let mut out = Vec::new();
    let report = bench::run(&args, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();

    for phase in [&report.handshake, &report.registration, &report.keepalive] {
        assert_eq!(
            (phase.attempted, phase.ok),
            (24, 24),
            "{}\n{text}",
            phase.name
        );
    }
    assert_eq!(report.registered, 24, "{text}");
    assert_eq!(report.nms_nodes_gauge, Some(24.0), "{text}");
    assert_eq!(
        (report.direction.attempted, report.direction.ok),
        (12, 12),
        "{text}"
    );
    assert!(report.direction.pushes_confirmed >= 12, "{text}");
    let relay = report.relay.as_ref().expect("the relay phase ran");
    assert!(relay.sent > 0 && relay.received > 0, "{text}");
    assert!(report.rss_after_kib > 0, "{text}");
    // 24 nodes are far below the bar.
    assert!(!report.passed());
    assert!(text.contains("RESULT: FAIL"), "{text}");
}
