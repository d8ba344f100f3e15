//! Prints the seal and open throughput of every crypto suite at the given packet sizes,
//! one `RESULT <suite> <bytes> <op> <MB/s>` line each (MB = 10^6 bytes), for
//! `bench/crypto-vs-openssl.sh`. Ops: `seal`, `open` (one packet per call, compared with
//! `openssl speed`) and `seal-batch32`, `open-batch32`.
//!
//! Also prints `RESULT handshake - full <handshakes/s>`: complete node-to-node handshakes
//! through the public tunnel API.
//!
//! Usage: crypto-throughput [--seconds S] [--sizes 64,1400,9000]

// Printing the results is this program's job.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use cyphonic_bench::handshake::HandshakePair;
use cyphonic_bench::{BATCH, PACKET_SIZES, Workload, suites};
use cyphonic_plugin_abi::PluginError;

/// One measured operation: a call on the workload.
type Op = fn(&mut Workload) -> Result<(), PluginError>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut seconds = 2.0f64;
    let mut sizes = PACKET_SIZES.to_vec();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--seconds" => seconds = value()?.parse()?,
            "--sizes" => {
                sizes = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            _ => return Err(format!(
                "unknown argument {arg}; usage: crypto-throughput [--seconds S] [--sizes 64,1400]"
            )
            .into()),
        }
    }
    let duration = Duration::from_secs_f64(seconds);
    for suite in suites()? {
        for &size in &sizes {
            let mut w = Workload::new(&suite, size)?;
            let ops: [(&str, usize, Op); 4] = [
                ("seal", 1, |w| w.seal().map(drop)),
                ("open", 1, |w| w.open().map(drop)),
                ("seal-batch32", BATCH, Workload::seal_batch),
                ("open-batch32", BATCH, Workload::open_batch),
            ];
            for (op, packets, f) in ops {
                let mbps = measure(&mut w, f, packets, duration)?;
                println!("RESULT {} {size} {op} {mbps:.1}", suite.name);
            }
        }
    }
    println!(
        "RESULT handshake - full {:.0}",
        handshakes_per_second(duration)?
    );
    Ok(())
}

fn handshakes_per_second(duration: Duration) -> Result<f64, Box<dyn std::error::Error>> {
    let mut pair = HandshakePair::new()?;
    let warm_up = Instant::now();
    while warm_up.elapsed() < duration / 10 {
        pair.handshake()?;
    }
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < duration {
        pair.handshake()?;
        count += 1;
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

/// Runs `f` for a tenth of `duration` to warm up, then for `duration`; returns the
/// payload throughput in MB/s.
fn measure(
    w: &mut Workload,
    f: Op,
    packets_per_call: usize,
    duration: Duration,
) -> Result<f64, PluginError> {
    let run = |w: &mut Workload, duration: Duration| -> Result<(u64, Duration), PluginError> {
        let start = Instant::now();
        let mut calls = 0u64;
        loop {
            // Check the clock every few calls only.
            for _ in 0..16 {
                f(w)?;
            }
            calls += 16;
            let elapsed = start.elapsed();
            if elapsed >= duration {
                return Ok((calls, elapsed));
            }
        }
    };
    run(w, duration / 10)?;
    let (calls, elapsed) = run(w, duration)?;
    let bytes = calls as f64 * (packets_per_call * w.size()) as f64;
    Ok(bytes / elapsed.as_secs_f64() / 1e6)
}
