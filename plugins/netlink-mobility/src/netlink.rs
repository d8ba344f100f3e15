//! rtnetlink as this detector needs it: what a notification on the event socket is about
//! ([`Event`]), and the dumps (links, addresses) made on a short-lived query socket
//! ([`Query`]). Message and attribute parsing is bounds-checked throughout: a malformed
//! message ends the parse of its datagram, it never panics.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, OwnedFd};

use cyphonic_plugin_abi::{
    ADDR_FLAG_DEPRECATED, ADDR_FLAG_TEMPORARY, ADDR_FLAG_TENTATIVE, AddrEntry,
};

use crate::sys;

// From <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_link.h>, <linux/if_addr.h>,
// <linux/if.h>; spelled out because the `libc` crate types them inconsistently.
pub(crate) const RTMGRP_LINK: u32 = 0x1;
pub(crate) const RTMGRP_IPV4_IFADDR: u32 = 0x10;
pub(crate) const RTMGRP_IPV4_ROUTE: u32 = 0x40;
pub(crate) const RTMGRP_IPV6_IFADDR: u32 = 0x100;
pub(crate) const RTMGRP_IPV6_ROUTE: u32 = 0x400;

pub(crate) const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_MULTI: u16 = 0x2;
/// On a dump part: the table changed while it was being dumped; start over.
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_DUMP: u16 = 0x300;
/// In an `NLMSG_ERROR` reply: only the request's header is echoed.
const NLM_F_CAPPED: u16 = 0x100;
/// In an `NLMSG_ERROR` reply: extended-ack attributes follow.
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;

const IFLA_IFNAME: u16 = 3;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;

const IFA_F_TEMPORARY: u32 = 0x01;
const IFA_F_DADFAILED: u32 = 0x08;
const IFA_F_DEPRECATED: u32 = 0x20;
const IFA_F_TENTATIVE: u32 = 0x40;
/// `dev_get_flags` sets it exactly when the link is administratively up and
/// operationally up (`IF_OPER_UP`, or `IF_OPER_UNKNOWN` for drivers without carrier).
const IFF_RUNNING: u32 = 0x40;
/// `rtmsg::rtm_flags`: an IPv6 route cache clone, not a configured route.
const RTM_F_CLONED: u32 = 0x200;

const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const RT_TABLE_MAIN: u32 = 254;

/// Dumps the kernel interrupts (the table changed meanwhile) are retried this often.
const DUMP_ATTEMPTS: usize = 4;
/// Dump replies fill at most 32 KiB per datagram; room to spare.
const QUERY_BUF: usize = 64 * 1024;

/// A failed rtnetlink request or a reply we could not read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NetlinkError {
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    /// The kernel refused the request with `-errno`, and maybe said why.
    #[error("{}{}", io::Error::from_raw_os_error(*.errno), detail_suffix(.detail.as_deref()))]
    Kernel { errno: i32, detail: Option<String> },
    #[error("malformed netlink reply: {0}")]
    Malformed(&'static str),
    #[error("the kernel kept interrupting the dump (the table changes too fast)")]
    Interrupted,
}

impl NetlinkError {
    /// The errno behind the failure, if the kernel or a system call gave one.
    pub(crate) fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Io(e) => e.raw_os_error(),
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            NetlinkError::Malformed(_) | NetlinkError::Interrupted => None,
        }
    }
}

fn detail_suffix(detail: Option<&str>) -> String {
    detail.map_or_else(String::new, |d| format!(" ({d})"))
}

/// What one notification on the event socket is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event<'a> {
    /// An address appeared, changed or went away (`RTM_NEWADDR` / `RTM_DELADDR`).
    Address {
        index: u32,
        ipv4: bool,
        deleted: bool,
    },
    /// A default route (destination length 0) of the main table appeared, changed or
    /// went away; `oif` is its output interface, if it has a single one.
    DefaultRoute { oif: Option<u32> },
    /// A link's state (`RTM_NEWLINK`): new, or changed in any way.
    Link(LinkInfo<'a>),
    /// A link went away (`RTM_DELLINK`).
    LinkGone { index: u32 },
    /// Anything else: other routes, other tables and families, bridge port messages.
    Other,
}

impl<'a> Event<'a> {
    /// Classifies one message (`ty` and the payload after its header). A message too
    /// short for its fixed part is `None`: malformed.
    pub(crate) fn parse(ty: u16, payload: &'a [u8]) -> Option<Self> {
        Some(match ty {
            RTM_NEWADDR | RTM_DELADDR => {
                let fixed = payload.get(..8)?;
                Event::Address {
                    index: u32_at(fixed, 4),
                    ipv4: fixed[0] == AF_INET,
                    deleted: ty == RTM_DELADDR,
                }
            }
            RTM_NEWROUTE | RTM_DELROUTE => {
                let fixed = payload.get(..12)?;
                let (family, dst_len, flags) = (fixed[0], fixed[1], u32_at(fixed, 8));
                if !matches!(family, AF_INET | AF_INET6)
                    || dst_len != 0
                    || flags & RTM_F_CLONED != 0
                {
                    return Some(Event::Other);
                }
                // `rtm_table` holds only 8 bits; RTA_TABLE has the full id when present.
                let mut table = u32::from(fixed[4]);
                let mut oif = None;
                for (ty, data) in attrs(&payload[12..]) {
                    match ty {
                        RTA_TABLE => table = u32_of(data).unwrap_or(table),
                        RTA_OIF => oif = u32_of(data),
                        _ => {}
                    }
                }
                if table != RT_TABLE_MAIN {
                    return Some(Event::Other);
                }
                Event::DefaultRoute { oif }
            }
            RTM_NEWLINK | RTM_DELLINK => {
                // Bridge port messages (family AF_BRIDGE) share the types but describe
                // the port, not the link; a bridge DELLINK does not remove the link.
                if payload.get(..16)?[0] != AF_UNSPEC {
                    return Some(Event::Other);
                }
                let link = LinkInfo::parse(payload)?;
                if ty == RTM_DELLINK {
                    Event::LinkGone { index: link.index }
                } else {
                    Event::Link(link)
                }
            }
            _ => Event::Other,
        })
    }
}

/// A link as an `RTM_NEWLINK` message describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LinkInfo<'a> {
    pub(crate) index: u32,
    /// `None` only if the kernel left `IFLA_IFNAME` out (it never does).
    pub(crate) name: Option<&'a str>,
    /// Operationally up: `IFF_RUNNING`.
    pub(crate) running: bool,
}

impl<'a> LinkInfo<'a> {
    /// `struct ifinfomsg { u8 family, pad; u16 type; i32 index; u32 flags, change; }`
    /// followed by attributes.
    fn parse(payload: &'a [u8]) -> Option<Self> {
        let fixed = payload.get(..16)?;
        let name = attrs(&payload[16..])
            .find(|&(ty, _)| ty == IFLA_IFNAME)
            .and_then(|(_, data)| {
                let data = data.split(|&b| b == 0).next().unwrap_or_default();
                std::str::from_utf8(data).ok()
            });
        Some(Self {
            index: u32_at(fixed, 4),
            name,
            running: u32_at(fixed, 8) & IFF_RUNNING != 0,
        })
    }
}

/// One local address as an `RTM_NEWADDR` message describes it; `None` for families other
/// than IPv4 and IPv6 and for messages without an address.
///
/// `struct ifaddrmsg { u8 family, prefixlen, flags, scope; u32 index; }` then attributes.
/// `IFA_LOCAL` is the local address; `IFA_ADDRESS` is the same, except on point-to-point
/// links where it is the peer's, so it is only the fallback.
pub(crate) fn parse_address(payload: &[u8]) -> Option<AddrEntry> {
    let fixed = payload.get(..8)?;
    let (family, prefix_len, index) = (fixed[0], fixed[1], u32_at(fixed, 4));
    let mut kernel_flags = u32::from(fixed[2]);
    let (mut local, mut address) = (None, None);
    for (ty, data) in attrs(&payload[8..]) {
        match ty {
            IFA_LOCAL => local = Some(data),
            IFA_ADDRESS => address = Some(data),
            // The full 32-bit flags; the header has only the low 8.
            IFA_FLAGS => kernel_flags = u32_of(data).unwrap_or(kernel_flags),
            _ => {}
        }
    }
    let bytes = local.or(address)?;
    let addr = match family {
        AF_INET => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        AF_INET6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    let max_len = if family == AF_INET { 32 } else { 128 };
    if prefix_len > max_len {
        return None;
    }
    Some(AddrEntry::new(
        addr,
        prefix_len,
        addr_flags(kernel_flags),
        index,
    ))
}

/// `IFA_F_*` to `ADDR_FLAG_*`. An address whose duplicate address detection failed is
/// as unusable as one still being checked, so it is reported tentative too.
fn addr_flags(kernel: u32) -> u16 {
    let mut flags = 0;
    if kernel & IFA_F_TEMPORARY != 0 {
        flags |= ADDR_FLAG_TEMPORARY;
    }
    if kernel & IFA_F_DEPRECATED != 0 {
        flags |= ADDR_FLAG_DEPRECATED;
    }
    if kernel & (IFA_F_TENTATIVE | IFA_F_DADFAILED) != 0 {
        flags |= ADDR_FLAG_TENTATIVE;
    }
    flags
}

/// A request socket in the network namespace of the calling thread, for dumps. Kept
/// apart from the event socket so dump replies never mix with notifications.
#[derive(Debug)]
pub(crate) struct Query {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

/// An owned [`LinkInfo`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    pub(crate) index: u32,
    pub(crate) name: String,
    pub(crate) running: bool,
}

impl Query {
    pub(crate) fn open() -> Result<Self, NetlinkError> {
        Ok(Self {
            fd: sys::netlink_query_socket()?,
            seq: 0,
            buf: vec![0; QUERY_BUF],
        })
    }

    /// Every link of the namespace.
    pub(crate) fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        // struct ifinfomsg, all zero: family AF_UNSPEC, every link.
        self.dump(RTM_GETLINK, &[0; 16], |ty, payload, out: &mut Vec<Link>| {
            if ty != RTM_NEWLINK {
                return;
            }
            if let Some(link) = LinkInfo::parse(payload) {
                out.push(Link {
                    index: link.index,
                    name: link.name.unwrap_or_default().to_owned(),
                    running: link.running,
                });
            }
        })
    }

    /// Every IPv4 and IPv6 address of the namespace.
    pub(crate) fn addresses(&mut self) -> Result<Vec<AddrEntry>, NetlinkError> {
        // struct ifaddrmsg, all zero: family AF_UNSPEC, every address.
        self.dump(
            RTM_GETADDR,
            &[0; 8],
            |ty, payload, out: &mut Vec<AddrEntry>| {
                if ty == RTM_NEWADDR {
                    out.extend(parse_address(payload));
                }
            },
        )
    }

    /// Runs a dump request of type `ty` (`fixed` is its family header), collecting with
    /// `collect(type, payload, out)`; starts over when the kernel marks the dump
    /// interrupted.
    fn dump<T>(
        &mut self,
        ty: u16,
        fixed: &[u8],
        mut collect: impl FnMut(u16, &[u8], &mut Vec<T>),
    ) -> Result<Vec<T>, NetlinkError> {
        let mut out = Vec::new();
        for _ in 0..DUMP_ATTEMPTS {
            out.clear();
            if !self.dump_once(ty, fixed, |ty, payload| collect(ty, payload, &mut out))? {
                return Ok(out);
            }
        }
        Err(NetlinkError::Interrupted)
    }

    /// One dump; `Ok(true)` if the kernel says it was interrupted.
    fn dump_once(
        &mut self,
        ty: u16,
        fixed: &[u8],
        mut on_reply: impl FnMut(u16, &[u8]),
    ) -> Result<bool, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let len = NLMSG_HDRLEN + fixed.len();
        let mut req = Vec::with_capacity(len);
        req.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
        req.extend_from_slice(&ty.to_ne_bytes());
        req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req.extend_from_slice(&seq.to_ne_bytes());
        req.extend_from_slice(&0u32.to_ne_bytes());
        req.extend_from_slice(fixed);
        sys::netlink_send(self.fd.as_fd(), &req)?;
        let mut interrupted = false;
        loop {
            let got = sys::netlink_recv(self.fd.as_fd(), &mut self.buf)?;
            if got.truncated {
                return Err(NetlinkError::Malformed(
                    "dump reply larger than the receive buffer",
                ));
            }
            if !got.from_kernel {
                continue;
            }
            for msg in Messages::new(&self.buf[..got.len]) {
                let (header, payload) = msg?;
                if header.seq != seq {
                    continue;
                }
                interrupted |= header.flags & NLM_F_DUMP_INTR != 0;
                match header.ty {
                    NLMSG_DONE => return Ok(interrupted),
                    NLMSG_ERROR => {
                        parse_error(header.flags, payload)?;
                        // An error code of 0 is an ack, which a dump does not send.
                        return Ok(interrupted);
                    }
                    ty => on_reply(ty, payload),
                }
                if header.flags & NLM_F_MULTI == 0 {
                    return Ok(interrupted);
                }
            }
        }
    }
}

/// A message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) len: usize,
    pub(crate) ty: u16,
    pub(crate) flags: u16,
    pub(crate) seq: u32,
}

/// The messages of one datagram as (header, payload); a malformed header ends the
/// iteration with one error.
#[derive(Debug)]
pub(crate) struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Messages<'a> {
    pub(crate) fn new(datagram: &'a [u8]) -> Self {
        Self { rest: datagram }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<(Header, &'a [u8]), NetlinkError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let buf = self.rest;
        if buf.len() < NLMSG_HDRLEN {
            self.rest = &[];
            return Some(Err(NetlinkError::Malformed("truncated message header")));
        }
        let len = u32_at(buf, 0) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            self.rest = &[];
            return Some(Err(NetlinkError::Malformed("message length out of bounds")));
        }
        let header = Header {
            len,
            ty: u16_at(buf, 4),
            flags: u16_at(buf, 6),
            seq: u32_at(buf, 8),
        };
        self.rest = &buf[align4(len).min(buf.len())..];
        Some(Ok((header, &buf[NLMSG_HDRLEN..len])))
    }
}

/// `struct nlmsgerr { int error; struct nlmsghdr msg; }` then, with `NLM_F_ACK_TLVS`,
/// attributes; `msg` is followed by the rest of the request unless `NLM_F_CAPPED`.
fn parse_error(flags: u16, payload: &[u8]) -> Result<(), NetlinkError> {
    let code = payload
        .get(..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(NetlinkError::Malformed("truncated error message"))?;
    if code == 0 {
        return Ok(());
    }
    let detail = (flags & NLM_F_ACK_TLVS != 0)
        .then(|| {
            let echoed = payload.get(4..)?;
            let skip = if flags & NLM_F_CAPPED != 0 {
                NLMSG_HDRLEN
            } else {
                align4(echoed.get(..4).map(|_| u32_at(echoed, 0))? as usize)
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

fn u32_of(data: &[u8]) -> Option<u32> {
    data.get(..4).map(|_| u32_at(data, 0))
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

    fn attr(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
        buf.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(data);
        buf.resize(align4(buf.len()), 0);
    }

    fn rtmsg(family: u8, dst_len: u8, table: u8, flags: u32) -> Vec<u8> {
        let mut msg = vec![family, dst_len, 0, 0, table, 3, 0, 1];
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg
    }

    fn ifaddrmsg(family: u8, prefix_len: u8, flags: u8, index: u32) -> Vec<u8> {
        let mut msg = vec![family, prefix_len, flags, 0];
        msg.extend_from_slice(&index.to_ne_bytes());
        msg
    }

    fn ifinfomsg(family: u8, index: u32, flags: u32) -> Vec<u8> {
        let mut msg = vec![family, 0, 1, 0];
        msg.extend_from_slice(&index.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg
    }

    #[test]
    fn only_main_table_default_routes_are_default_routes() {
        let mut main = rtmsg(AF_INET, 0, 254, 0);
        attr(&mut main, RTA_OIF, &7u32.to_ne_bytes());
        assert_eq!(
            Event::parse(RTM_NEWROUTE, &main),
            Some(Event::DefaultRoute { oif: Some(7) })
        );
        assert_eq!(
            Event::parse(RTM_DELROUTE, &rtmsg(AF_INET6, 0, 254, 0)),
            Some(Event::DefaultRoute { oif: None })
        );
        // A prefix route, another table, RT_TABLE_COMPAT with a non-main RTA_TABLE, an
        // IPv6 cache clone, another family.
        let mut compat = rtmsg(AF_INET, 0, 252, 0);
        attr(&mut compat, RTA_TABLE, &1000u32.to_ne_bytes());
        for other in [
            rtmsg(AF_INET, 24, 254, 0),
            rtmsg(AF_INET, 0, 100, 0),
            compat,
            rtmsg(AF_INET6, 0, 254, RTM_F_CLONED),
            rtmsg(28, 0, 254, 0),
        ] {
            assert_eq!(Event::parse(RTM_NEWROUTE, &other), Some(Event::Other));
        }
        // RTA_TABLE wins over the 8-bit field.
        let mut big_main = rtmsg(AF_INET6, 0, 252, 0);
        attr(&mut big_main, RTA_TABLE, &254u32.to_ne_bytes());
        assert_eq!(
            Event::parse(RTM_NEWROUTE, &big_main),
            Some(Event::DefaultRoute { oif: None })
        );
        assert_eq!(Event::parse(RTM_NEWROUTE, &[0; 11]), None);
    }

    #[test]
    fn address_and_link_events_carry_index_and_state() {
        assert_eq!(
            Event::parse(RTM_DELADDR, &ifaddrmsg(AF_INET, 24, 0, 3)),
            Some(Event::Address {
                index: 3,
                ipv4: true,
                deleted: true
            })
        );
        let mut link = ifinfomsg(AF_UNSPEC, 5, IFF_RUNNING | 1);
        attr(&mut link, IFLA_IFNAME, b"d0\0");
        assert_eq!(
            Event::parse(RTM_NEWLINK, &link),
            Some(Event::Link(LinkInfo {
                index: 5,
                name: Some("d0"),
                running: true
            }))
        );
        assert_eq!(
            Event::parse(RTM_DELLINK, &link),
            Some(Event::LinkGone { index: 5 })
        );
        // A bridge port message is not about the link itself.
        assert_eq!(
            Event::parse(RTM_DELLINK, &ifinfomsg(7, 5, 0)),
            Some(Event::Other)
        );
        assert_eq!(Event::parse(NLMSG_DONE, &[]), Some(Event::Other));
    }

    #[test]
    fn addresses_prefer_local_and_map_flags() {
        // A point-to-point IPv4 address: IFA_ADDRESS is the peer.
        let mut v4 = ifaddrmsg(AF_INET, 32, 0, 4);
        attr(&mut v4, IFA_ADDRESS, &[198, 51, 100, 1]);
        attr(&mut v4, IFA_LOCAL, &[198, 51, 100, 7]);
        assert_eq!(
            parse_address(&v4),
            Some(AddrEntry::new("198.51.100.7".parse().unwrap(), 32, 0, 4))
        );
        let mut v6 = ifaddrmsg(AF_INET6, 64, IFA_F_TENTATIVE as u8, 9);
        attr(
            &mut v6,
            IFA_ADDRESS,
            &"2001:db8:7::7".parse::<Ipv6Addr>().unwrap().octets(),
        );
        // IFA_FLAGS replaces the 8-bit field.
        attr(
            &mut v6,
            IFA_FLAGS,
            &(IFA_F_TEMPORARY | IFA_F_DEPRECATED | 0x100).to_ne_bytes(),
        );
        assert_eq!(
            parse_address(&v6),
            Some(AddrEntry::new(
                "2001:db8:7::7".parse().unwrap(),
                64,
                ADDR_FLAG_TEMPORARY | ADDR_FLAG_DEPRECATED,
                9
            ))
        );
        assert_eq!(addr_flags(IFA_F_DADFAILED), ADDR_FLAG_TENTATIVE);
        // Wrong address length, bad prefix, unknown family, no address.
        let mut short = ifaddrmsg(AF_INET6, 64, 0, 1);
        attr(&mut short, IFA_ADDRESS, &[1, 2, 3, 4]);
        let mut long_prefix = ifaddrmsg(AF_INET, 33, 0, 1);
        attr(&mut long_prefix, IFA_LOCAL, &[198, 51, 100, 7]);
        let mut other = ifaddrmsg(17, 0, 0, 1);
        attr(&mut other, IFA_ADDRESS, &[1, 2, 3, 4, 5, 6]);
        for bad in [short, long_prefix, other, ifaddrmsg(AF_INET, 24, 0, 1)] {
            assert_eq!(parse_address(&bad), None);
        }
    }

    #[test]
    fn messages_split_datagrams_and_stop_at_garbage() {
        let mut datagram = Vec::new();
        for (ty, payload) in [(RTM_NEWADDR, &[1u8, 2, 3][..]), (NLMSG_DONE, &[][..])] {
            datagram.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
            datagram.extend_from_slice(&ty.to_ne_bytes());
            datagram.extend_from_slice(&NLM_F_MULTI.to_ne_bytes());
            datagram.extend_from_slice(&9u32.to_ne_bytes());
            datagram.extend_from_slice(&0u32.to_ne_bytes());
            datagram.extend_from_slice(payload);
            datagram.resize(align4(datagram.len()), 0);
        }
        let parsed: Vec<_> = Messages::new(&datagram).map(Result::unwrap).collect();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].0.ty, RTM_NEWADDR);
        assert_eq!(parsed[0].1, &[1, 2, 3]);
        assert_eq!((parsed[1].0.ty, parsed[1].0.seq), (NLMSG_DONE, 9));

        datagram.extend_from_slice(&[0xff; 20]);
        let all: Vec<_> = Messages::new(&datagram).collect();
        assert_eq!(all.len(), 3);
        assert!(all[2].is_err());
    }

    #[test]
    fn error_replies_carry_errno_and_extended_text() {
        let mut payload = Vec::new();
        payload.extend_from_slice(&(-libc::EPERM).to_ne_bytes());
        payload.extend_from_slice(&[0u8; NLMSG_HDRLEN]);
        attr(&mut payload, NLMSGERR_ATTR_MSG, b"nope\0");
        let err = parse_error(NLM_F_CAPPED | NLM_F_ACK_TLVS, &payload).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EPERM));
        assert!(err.to_string().contains("(nope)"), "{err}");
        assert!(parse_error(0, &0i32.to_ne_bytes()).is_ok());
        assert!(parse_error(0, &[0, 0]).is_err());
    }
}
