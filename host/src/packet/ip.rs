//! Just enough of IPv4 and IPv6 for the packet hook: the addresses of an inner packet,
//! and ICMP "unreachable" answers for destinations no node owns.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The destination address of an IP packet, `None` when it is neither a whole IPv4 nor
/// IPv6 header.
pub(crate) fn destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let b: [u8; 4] = packet[16..20].try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        6 if packet.len() >= 40 => {
            let b: [u8; 16] = packet[24..40].try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

pub(crate) fn source(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let b: [u8; 4] = packet[12..16].try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        6 if packet.len() >= 40 => {
            let b: [u8; 16] = packet[8..24].try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// Room an ICMP error needs at most: IPv6 header + ICMPv6 header + the quoted packet,
/// kept within the IPv6 minimum MTU.
pub(crate) const MAX_ICMP_ERROR: usize = 1280;

/// Writes into `out` the ICMP "destination unreachable" (IPv4: host unreachable,
/// IPv6: address unreachable) answering `packet`, sent from `router` (an address of
/// the packet's family). Returns its length, or `None` when no error may be
/// sent: the packet is itself an ICMP error, a fragment that is not the first, or not
/// from a unicast source.
pub(crate) fn unreachable(packet: &[u8], router: IpAddr, out: &mut [u8]) -> Option<usize> {
    match (packet.first()? >> 4, router) {
        (4, IpAddr::V4(router)) => unreachable_v4(packet, router, out),
        (6, IpAddr::V6(router)) => unreachable_v6(packet, router, out),
        _ => None,
    }
}

fn unreachable_v4(packet: &[u8], router: Ipv4Addr, out: &mut [u8]) -> Option<usize> {
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    if ihl < 20 || packet.len() < ihl {
        return None;
    }
    let fragment_offset = u16::from_be_bytes([packet[6], packet[7]]) & 0x1fff;
    let src = Ipv4Addr::from(<[u8; 4]>::try_from(&packet[12..16]).ok()?);
    if fragment_offset != 0 || src.is_unspecified() || src.is_broadcast() || src.is_multicast() {
        return None;
    }
    if packet[9] == 1 {
        // Never answer an ICMP error with an error; echo requests do get one.
        let icmp_type = *packet.get(ihl)?;
        if !matches!(icmp_type, 0 | 8 | 13 | 14) {
            return None;
        }
    }
    let quoted = packet.len().min(ihl + 8);
    let total = 20 + 8 + quoted;
    let out = out.get_mut(..total)?;
    out.fill(0);
    out[0] = 0x45;
    out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    out[8] = 64;
    out[9] = 1;
    out[12..16].copy_from_slice(&router.octets());
    out[16..20].copy_from_slice(&src.octets());
    let header_sum = checksum(&[&out[..20]]);
    out[10..12].copy_from_slice(&header_sum.to_be_bytes());
    out[20] = 3; // destination unreachable
    out[21] = 1; // host unreachable
    out[28..28 + quoted].copy_from_slice(&packet[..quoted]);
    let icmp_sum = checksum(&[&out[20..total]]);
    out[22..24].copy_from_slice(&icmp_sum.to_be_bytes());
    Some(total)
}

fn unreachable_v6(packet: &[u8], router: Ipv6Addr, out: &mut [u8]) -> Option<usize> {
    if packet.len() < 40 {
        return None;
    }
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&packet[8..24]).ok()?);
    if src.is_unspecified() || src.is_multicast() {
        return None;
    }
    if packet[6] == 58 && packet.get(40).is_some_and(|t| *t < 128) {
        return None;
    }
    let quoted = packet.len().min(MAX_ICMP_ERROR - 48);
    let payload = 8 + quoted;
    let total = 40 + payload;
    let out = out.get_mut(..total)?;
    out.fill(0);
    out[0] = 0x60;
    out[4..6].copy_from_slice(&(payload as u16).to_be_bytes());
    out[6] = 58;
    out[7] = 64;
    out[8..24].copy_from_slice(&router.octets());
    out[24..40].copy_from_slice(&src.octets());
    out[40] = 1; // destination unreachable
    out[41] = 3; // address unreachable
    out[48..48 + quoted].copy_from_slice(&packet[..quoted]);
    let len_be = (payload as u32).to_be_bytes();
    let pseudo_tail = [0, 0, 0, 58];
    let sum = checksum(&[
        &router.octets(),
        &src.octets(),
        &len_be,
        &pseudo_tail,
        &out[40..total],
    ]);
    out[42..44].copy_from_slice(&sum.to_be_bytes());
    Some(total)
}

/// The Internet checksum of the concatenation of `parts` (each of even length but the
/// last).
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for c in &mut chunks {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_v4(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&28u16.to_be_bytes());
        p[8] = 64;
        p[9] = 1;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        let s = checksum(&[&p[..20]]);
        p[10..12].copy_from_slice(&s.to_be_bytes());
        p[20] = 8;
        p
    }

    #[test]
    fn addresses_of_both_families() {
        let p = echo_v4([100, 64, 0, 1], [100, 64, 0, 9]);
        assert_eq!(destination(&p), Some("100.64.0.9".parse().unwrap()));
        assert_eq!(source(&p), Some("100.64.0.1".parse().unwrap()));
        let mut v6 = vec![0u8; 40];
        v6[0] = 0x60;
        v6[23] = 1;
        v6[39] = 2;
        assert_eq!(destination(&v6), Some("::2".parse().unwrap()));
        assert_eq!(source(&v6), Some("::1".parse().unwrap()));
        assert_eq!(destination(&[0x45; 10]), None);
        assert_eq!(destination(&[]), None);
    }

    #[test]
    fn v4_unreachable_is_well_formed_and_never_answers_errors() {
        let p = echo_v4([100, 64, 0, 1], [100, 64, 0, 9]);
        let mut out = [0u8; MAX_ICMP_ERROR];
        let n = unreachable(&p, "100.64.0.1".parse().unwrap(), &mut out).unwrap();
        assert_eq!(n, 20 + 8 + 28);
        assert_eq!(checksum(&[&out[..20]]), 0);
        assert_eq!(checksum(&[&out[20..n]]), 0);
        assert_eq!((out[20], out[21]), (3, 1));
        assert_eq!(&out[16..20], &[100, 64, 0, 1]);
        // The answer is an ICMP error itself: no error about it.
        assert_eq!(
            unreachable(&out[..n], "100.64.0.1".parse().unwrap(), &mut [0; 1280]),
            None
        );
    }

    #[test]
    fn v6_unreachable_checksum_verifies() {
        let mut p = vec![0u8; 48];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&8u16.to_be_bytes());
        p[6] = 58;
        p[8] = 0xfd;
        p[23] = 1;
        p[24] = 0xfd;
        p[39] = 9;
        p[40] = 128; // echo request
        let router: Ipv6Addr = "fd00::1".parse().unwrap();
        let mut out = [0u8; MAX_ICMP_ERROR];
        let n = unreachable(&p, IpAddr::V6(router), &mut out).unwrap();
        let src: [u8; 16] = out[8..24].try_into().unwrap();
        let dst: [u8; 16] = out[24..40].try_into().unwrap();
        let len = ((n - 40) as u32).to_be_bytes();
        assert_eq!(
            checksum(&[&src, &dst, &len, &[0, 0, 0, 58], &out[40..n]]),
            0
        );
        assert_eq!((out[40], out[41]), (1, 3));
    }
}
