//! Shared set-up of the cyphonic benchmarks: the crypto suites as the host uses them
//! (statically linked plugin headers behind the plugin ABI's safe wrappers) and
//! workloads that seal and open one packet size without allocating per operation.

pub mod handshake;

use cyphonic_plugin_abi::{CryptoKey, CryptoOp, CryptoSuitePlugin, NONCE_LEN, Plugin, PluginError};

/// The packet sizes measured: a small control message, a packet under a 1500-byte MTU,
/// a jumbo frame.
pub const PACKET_SIZES: [usize; 3] = [64, 1400, 9000];
/// Operations per batch call in the batch measurements.
pub const BATCH: usize = 32;
/// Associated data per packet, about the size of a data-packet header.
pub const AAD_LEN: usize = 24;

/// A crypto suite under measurement.
#[derive(Debug, Clone)]
pub struct Suite {
    /// The plugin's name (`aes-gcm`, ...).
    pub name: &'static str,
    pub plugin: CryptoSuitePlugin,
}

/// Every in-tree crypto suite, most preferred first.
pub fn suites() -> Result<Vec<Suite>, PluginError> {
    let headers = [
        ("aes-gcm", cyphonic_aes_gcm_suite::plugin_header()),
        (
            "chacha20-poly1305",
            cyphonic_chacha20_poly1305_suite::plugin_header(),
        ),
        ("ctr-hmac", cyphonic_ctr_hmac_suite::plugin_header()),
    ];
    headers
        .into_iter()
        .map(|(name, header)| {
            let plugin = Plugin::from_static(header, name).map_err(|e| {
                PluginError::new(cyphonic_plugin_abi::Status::INTERNAL, e.to_string())
            })?;
            Ok(Suite {
                name,
                plugin: CryptoSuitePlugin::new(plugin)?,
            })
        })
        .collect()
}

/// Packets of one size under one key: `seal` seals fresh plaintext under a new nonce
/// each time; `open` restores a sealed packet (a `BATCH`-sized memcpy at most) and
/// opens it, so every open verifies a genuine tag.
#[derive(Debug)]
pub struct Workload {
    key: CryptoKey,
    size: usize,
    tag_len: usize,
    aad: [u8; AAD_LEN],
    counter: u64,
    /// Working buffers, `size + tag_len` bytes each.
    bufs: Vec<Vec<u8>>,
    /// `bufs` sealed, to restore before each open.
    sealed: Vec<Vec<u8>>,
    sealed_nonces: Vec<[u8; NONCE_LEN]>,
}

impl Workload {
    pub fn new(suite: &Suite, size: usize) -> Result<Self, PluginError> {
        let key = suite.plugin.key_new(&[0x5c; 32])?;
        let tag_len = key.tag_len();
        let mut workload = Self {
            key,
            size,
            tag_len,
            aad: [0xa7; AAD_LEN],
            counter: 0,
            bufs: vec![vec![0x42; size + tag_len]; BATCH],
            sealed: Vec::new(),
            sealed_nonces: Vec::new(),
        };
        workload.seal_batch()?;
        workload.sealed = workload.bufs.clone();
        workload.sealed_nonces = (0..BATCH as u64).map(nonce).collect();
        Ok(workload)
    }

    /// Payload bytes one `seal`/`open` call processes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Seals one packet in place.
    pub fn seal(&mut self) -> Result<usize, PluginError> {
        let nonce = self.next_nonce();
        let size = self.size;
        self.key
            .seal_in_place(&nonce, &self.aad, &mut self.bufs[0], size)
    }

    /// Restores one sealed packet and opens it in place.
    pub fn open(&mut self) -> Result<usize, PluginError> {
        self.bufs[0].copy_from_slice(&self.sealed[0]);
        self.key
            .open_in_place(&self.sealed_nonces[0], &self.aad, &mut self.bufs[0])
    }

    /// Seals `BATCH` packets in one call.
    pub fn seal_batch(&mut self) -> Result<(), PluginError> {
        let first = self.counter;
        self.counter += BATCH as u64;
        let size = self.size;
        let nonces: [[u8; NONCE_LEN]; BATCH] = std::array::from_fn(|i| nonce(first + i as u64));
        let mut bufs = self.bufs.iter_mut();
        let mut ops: [CryptoOp<'_>; BATCH] = std::array::from_fn(|i| {
            let buf = bufs.next().expect("BATCH buffers");
            CryptoOp::new(&nonces[i], &self.aad, buf, size).expect("size fits the buffer")
        });
        self.key.seal_batch(&mut ops)?;
        check_ops(&ops, size + self.tag_len)
    }

    /// Restores `BATCH` sealed packets and opens them in one call.
    pub fn open_batch(&mut self) -> Result<(), PluginError> {
        for (buf, sealed) in self.bufs.iter_mut().zip(&self.sealed) {
            buf.copy_from_slice(sealed);
        }
        let len = self.size + self.tag_len;
        let mut bufs = self.bufs.iter_mut();
        let mut ops: [CryptoOp<'_>; BATCH] = std::array::from_fn(|i| {
            let buf = bufs.next().expect("BATCH buffers");
            CryptoOp::new(&self.sealed_nonces[i], &self.aad, buf, len).expect("len is the buffer")
        });
        self.key.open_batch(&mut ops)?;
        check_ops(&ops, self.size)
    }

    fn next_nonce(&mut self) -> [u8; NONCE_LEN] {
        self.counter += 1;
        nonce(self.counter)
    }
}

/// The nonce the data path uses for a packet counter.
fn nonce(counter: u64) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n
}

fn check_ops(ops: &[CryptoOp<'_>], expected: usize) -> Result<(), PluginError> {
    for op in ops {
        match op.result() {
            Ok(len) if len == expected => {}
            Ok(len) => {
                return Err(PluginError::new(
                    cyphonic_plugin_abi::Status::INTERNAL,
                    format!("op returned {len} bytes, expected {expected}"),
                ));
            }
            Err(status) => return Err(PluginError::new(status, "batch op failed")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_workload_operation_succeeds() {
        for suite in suites().unwrap() {
            for size in PACKET_SIZES {
                let mut w = Workload::new(&suite, size).unwrap();
                assert_eq!(w.seal().unwrap(), size + 16);
                assert_eq!(w.open().unwrap(), size);
                w.seal_batch().unwrap();
                w.open_batch().unwrap();
                // Opens stay valid after seals reuse the buffers.
                assert_eq!(w.open().unwrap(), size);
            }
        }
    }
}
