//! The rtnetlink requests that configure the interface (link settings, addresses,
//! routes), over a raw `NETLINK_ROUTE` socket: request encoding, ack and reply parsing,
//! and the kernel's extended-ack error text. Only `open` uses it, so it allocates freely.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};

use crate::sys;

// From <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_link.h>, <linux/if_addr.h>;
// spelled out here because the `libc` crate types them inconsistently across targets.
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
/// In an `NLMSG_ERROR` reply: only the request's header is echoed.
const NLM_F_CAPPED: u16 = 0x100;
/// In an `NLMSG_ERROR` reply: extended-ack attributes follow.
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;

const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_TXQLEN: u16 = 13;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const IFA_F_NODAD: u32 = 0x02;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;

const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IFF_UP: u32 = 0x1;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;

/// A failed rtnetlink request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NetlinkError {
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    /// The kernel refused the request with `-errno`, and maybe said why.
    #[error("{}{}", io::Error::from_raw_os_error(*.errno), detail_suffix(.detail.as_deref()))]
    Kernel { errno: i32, detail: Option<String> },
    #[error("malformed netlink reply: {0}")]
    Malformed(&'static str),
}

impl NetlinkError {
    /// The errno behind the failure, if the kernel or a system call gave one.
    pub(crate) fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Io(e) => e.raw_os_error(),
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            NetlinkError::Malformed(_) => None,
        }
    }
}

fn detail_suffix(detail: Option<&str>) -> String {
    detail.map_or_else(String::new, |d| format!(" ({d})"))
}

/// A link's identity and the settings `open` looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Link {
    pub(crate) index: u32,
    pub(crate) mtu: u32,
    pub(crate) txqlen: u32,
}

/// An rtnetlink socket in the network namespace of the thread that opened it.
#[derive(Debug)]
pub(crate) struct Rtnetlink {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnetlink {
    pub(crate) fn open() -> Result<Self, NetlinkError> {
        Ok(Self {
            fd: sys::netlink_route_socket()?,
            seq: 0,
            // Link replies carry statistics and per-family blocks: a few KiB.
            buf: vec![0; 32 * 1024],
        })
    }

    /// Looks a link up by name.
    pub(crate) fn link(&mut self, name: &str) -> Result<Link, NetlinkError> {
        let mut req = Request::new(RTM_GETLINK, 0);
        req.push(&ifinfomsg(0, 0, 0));
        let mut ifname = name.as_bytes().to_vec();
        ifname.push(0);
        req.attr(IFLA_IFNAME, &ifname);
        let mut link = None;
        self.request(&mut req, |ty, payload| {
            if ty == RTM_NEWLINK {
                link = parse_link(payload);
            }
        })?;
        link.ok_or(NetlinkError::Malformed("no link in the RTM_GETLINK reply"))
    }

    /// Sets the MTU and transmit queue length (those given) and brings the link up.
    pub(crate) fn set_link_up(
        &mut self,
        index: u32,
        mtu: Option<u32>,
        txqlen: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let mut req = Request::new(RTM_SETLINK, 0);
        req.push(&ifinfomsg(index, IFF_UP, IFF_UP));
        if let Some(mtu) = mtu {
            req.attr(IFLA_MTU, &mtu.to_ne_bytes());
        }
        if let Some(txqlen) = txqlen {
            req.attr(IFLA_TXQLEN, &txqlen.to_ne_bytes());
        }
        self.request(&mut req, |_, _| {})
    }

    /// Adds (or replaces) an address; IPv6 addresses skip duplicate address detection
    /// so they are usable at once.
    pub(crate) fn add_address(
        &mut self,
        index: u32,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        let mut req = Request::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE);
        let (family, flags) = match addr {
            IpAddr::V4(_) => (AF_INET, 0),
            IpAddr::V6(_) => (AF_INET6, IFA_F_NODAD),
        };
        // struct ifaddrmsg { family, prefixlen, flags (low 8 bits), scope; u32 index }
        let mut ifa = [
            family,
            prefix_len,
            flags as u8,
            RT_SCOPE_UNIVERSE,
            0,
            0,
            0,
            0,
        ];
        ifa[4..].copy_from_slice(&index.to_ne_bytes());
        req.push(&ifa);
        let bytes = ip_bytes(&addr);
        req.attr(IFA_LOCAL, &bytes);
        req.attr(IFA_ADDRESS, &bytes);
        if flags != 0 {
            req.attr(IFA_FLAGS, &flags.to_ne_bytes());
        }
        self.request(&mut req, |_, _| {})
    }

    /// Adds a route to `dst/prefix_len` (host bits must be clear) through the link, in
    /// the main table. Returns `false` if that route existed already.
    pub(crate) fn add_route(
        &mut self,
        index: u32,
        dst: IpAddr,
        prefix_len: u8,
    ) -> Result<bool, NetlinkError> {
        let mut req = Request::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL);
        // A direct route out of a point-to-point device: link scope for IPv4 (IPv6
        // ignores the scope of unicast routes).
        let (family, scope) = match dst {
            IpAddr::V4(_) => (AF_INET, RT_SCOPE_LINK),
            IpAddr::V6(_) => (AF_INET6, RT_SCOPE_UNIVERSE),
        };
        // struct rtmsg { family, dst_len, src_len, tos, table, protocol, scope, type;
        //                u32 flags }
        req.push(&[
            family,
            prefix_len,
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_STATIC,
            scope,
            RTN_UNICAST,
            0,
            0,
            0,
            0,
        ]);
        if prefix_len > 0 {
            req.attr(RTA_DST, &ip_bytes(&dst));
        }
        req.attr(RTA_OIF, &index.to_ne_bytes());
        match self.request(&mut req, |_, _| {}) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sends `req` and waits for its ack, handing every other reply to it to `on_reply`
    /// as (message type, payload).
    fn request(
        &mut self,
        req: &mut Request,
        mut on_reply: impl FnMut(u16, &[u8]),
    ) -> Result<(), NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        sys::netlink_send(self.fd.as_fd(), req.finish(seq))?;
        loop {
            let n = sys::netlink_recv(self.fd.as_fd(), &mut self.buf)?;
            let mut rest = &self.buf[..n];
            while !rest.is_empty() {
                let header = Header::parse(rest)?;
                let payload = &rest[NLMSG_HDRLEN..header.len];
                // Other sequence numbers are stale replies (none expected) or
                // notifications (we join no groups); skip them.
                if header.seq == seq {
                    match header.ty {
                        NLMSG_ERROR => return parse_ack(header.flags, payload),
                        NLMSG_DONE => return Ok(()),
                        ty => on_reply(ty, payload),
                    }
                }
                rest = &rest[align4(header.len).min(rest.len())..];
            }
        }
    }
}

/// A request being built: header, fixed part, attributes; all 4-byte aligned.
#[derive(Debug)]
struct Request {
    buf: Vec<u8>,
}

impl Request {
    fn new(ty: u16, flags: u16) -> Self {
        let mut buf = vec![0u8; NLMSG_HDRLEN];
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        Self { buf }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    fn attr(&mut self, ty: u16, data: &[u8]) {
        let len = u16::try_from(4 + data.len()).expect("attributes here are a few bytes");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.push(data);
    }

    /// Stamps length and sequence number; the bytes to send.
    fn finish(&mut self, seq: u32) -> &[u8] {
        let len = u32::try_from(self.buf.len()).expect("requests here are small");
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        &self.buf
    }
}

#[derive(Debug, Clone, Copy)]
struct Header {
    len: usize,
    ty: u16,
    flags: u16,
    seq: u32,
}

impl Header {
    fn parse(buf: &[u8]) -> Result<Self, NetlinkError> {
        if buf.len() < NLMSG_HDRLEN {
            return Err(NetlinkError::Malformed("truncated message header"));
        }
        let len = u32_at(buf, 0) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(NetlinkError::Malformed("message length out of bounds"));
        }
        Ok(Self {
            len,
            ty: u16_at(buf, 4),
            flags: u16_at(buf, 6),
            seq: u32_at(buf, 8),
        })
    }
}

/// `struct nlmsgerr { int error; struct nlmsghdr msg; }` then, with `NLM_F_ACK_TLVS`,
/// attributes; `msg` is followed by the rest of the request unless `NLM_F_CAPPED`.
fn parse_ack(flags: u16, payload: &[u8]) -> Result<(), NetlinkError> {
    if payload.len() < 4 {
        return Err(NetlinkError::Malformed("truncated error message"));
    }
    let code = i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
    if code == 0 {
        return Ok(());
    }
    let detail = (flags & NLM_F_ACK_TLVS != 0)
        .then(|| {
            let echoed = payload.get(4..)?;
            let skip = if flags & NLM_F_CAPPED != 0 {
                NLMSG_HDRLEN
            } else {
                align4(Header::parse(echoed).ok()?.len)
            };
            attrs(echoed.get(skip..)?)
                .find(|&(ty, _)| ty == NLMSGERR_ATTR_MSG)
                .map(|(_, text)| {
                    let text = text.split(|&b| b == 0).next().unwrap_or_default();
                    String::from_utf8_lossy(text).into_owned()
                })
        })
        .flatten();
    Err(NetlinkError::Kernel {
        errno: code.checked_neg().unwrap_or(libc::EIO),
        detail,
    })
}

/// `struct ifinfomsg { u8 family, pad; u16 type; i32 index; u32 flags, change; }`
fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut msg = [0u8; 16];
    msg[0] = AF_UNSPEC;
    msg[4..8].copy_from_slice(&index.to_ne_bytes());
    msg[8..12].copy_from_slice(&flags.to_ne_bytes());
    msg[12..16].copy_from_slice(&change.to_ne_bytes());
    msg
}

fn parse_link(payload: &[u8]) -> Option<Link> {
    let fixed = payload.get(..16)?;
    let index = u32_at(fixed, 4);
    let (mut mtu, mut txqlen) = (None, None);
    for (ty, data) in attrs(&payload[16..]) {
        let value = || data.get(..4).map(|_| u32_at(data, 0));
        match ty {
            IFLA_MTU => mtu = value(),
            IFLA_TXQLEN => txqlen = value(),
            _ => {}
        }
    }
    Some(Link {
        index,
        mtu: mtu?,
        txqlen: txqlen?,
    })
}

/// The `(type, data)` attributes in `buf`, stopping at the first malformed one.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = usize::from(u16_at(buf, 0));
        if len < 4 || len > buf.len() {
            return None;
        }
        // The top two bits are the nested / byte-order flags.
        let ty = u16_at(buf, 2) & 0x3fff;
        let data = &buf[4..len];
        buf = &buf[align4(len).min(buf.len())..];
        Some((ty, data))
    })
}

fn ip_bytes(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

const fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// Callers have checked `buf.len() >= at + 4`.
fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// Callers have checked `buf.len() >= at + 2`.
fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([buf[at], buf[at + 1]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_encoding_is_aligned_and_stamped() {
        let mut req = Request::new(RTM_NEWADDR, NLM_F_CREATE);
        req.push(&[1, 2, 3]);
        req.attr(IFA_LOCAL, &[100, 64, 7, 1]);
        req.attr(IFLA_IFNAME, b"tun0\0");
        let bytes = req.finish(7).to_vec();
        // header 16 + fixed 3 (padded to 4) + attr 8 + attr 4+5 (padded to 12)
        assert_eq!(bytes.len(), 16 + 4 + 8 + 12);
        assert_eq!(u32_at(&bytes, 0) as usize, bytes.len());
        assert_eq!(u16_at(&bytes, 4), RTM_NEWADDR);
        assert_eq!(u16_at(&bytes, 6), NLM_F_CREATE | NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(u32_at(&bytes, 8), 7);
        assert_eq!(&bytes[16..20], &[1, 2, 3, 0]);
        let parsed: Vec<_> = attrs(&bytes[20..]).collect();
        assert_eq!(
            parsed,
            vec![
                (IFA_LOCAL, &[100u8, 64, 7, 1][..]),
                (IFLA_IFNAME, &b"tun0\0"[..])
            ]
        );
    }

    #[test]
    fn attrs_stop_at_malformed_lengths() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&8u16.to_ne_bytes());
        buf.extend_from_slice(&IFLA_MTU.to_ne_bytes());
        buf.extend_from_slice(&1420u32.to_ne_bytes());
        // Claims 64 bytes, has 4.
        buf.extend_from_slice(&64u16.to_ne_bytes());
        buf.extend_from_slice(&IFLA_TXQLEN.to_ne_bytes());
        let parsed: Vec<_> = attrs(&buf).collect();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].0, IFLA_MTU);
    }

    #[test]
    fn error_ack_carries_errno_and_extended_text() {
        // Capped ack: error, echoed header, then NLMSGERR_ATTR_MSG.
        let mut payload = Vec::new();
        payload.extend_from_slice(&(-libc::EEXIST).to_ne_bytes());
        payload.extend_from_slice(&[0u8; NLMSG_HDRLEN]);
        let text = b"File exists\0";
        payload.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
        payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend_from_slice(text);
        let err = parse_ack(NLM_F_CAPPED | NLM_F_ACK_TLVS, &payload).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EEXIST));
        assert!(err.to_string().contains("(File exists)"), "{err}");
        assert!(parse_ack(0, &0i32.to_ne_bytes()).is_ok());
        assert!(parse_ack(0, &[0, 0]).is_err());
    }

    #[test]
    fn link_reply_parses_index_mtu_and_queue_length() {
        let mut payload = ifinfomsg(42, IFF_UP, 0).to_vec();
        let mut attr = |ty: u16, v: u32| {
            payload.extend_from_slice(&8u16.to_ne_bytes());
            payload.extend_from_slice(&ty.to_ne_bytes());
            payload.extend_from_slice(&v.to_ne_bytes());
        };
        attr(IFLA_MTU, 1420);
        attr(IFLA_TXQLEN, 500);
        assert_eq!(
            parse_link(&payload),
            Some(Link {
                index: 42,
                mtu: 1420,
                txqlen: 500
            })
        );
        assert_eq!(parse_link(&payload[..16]), None);
    }
}
