//! The adapter's IP configuration through IP Helper, keyed by its LUID: MTU for both
//! families, the unicast addresses, the routes; and the removal of what an earlier life
//! of the same adapter left (the GUID is stable, so Windows keeps its persistent
//! addresses and routes across runs).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use cyphonic_plugin_abi::PluginFailure;
use windows_sys::Win32::NetworkManagement::IpHelper::{
    CreateIpForwardEntry2, CreateUnicastIpAddressEntry, DeleteIpForwardEntry2,
    DeleteUnicastIpAddressEntry, FreeMibTable, GetIpForwardTable2, GetIpInterfaceEntry,
    GetUnicastIpAddressTable, IP_ADDRESS_PREFIX, InitializeIpForwardEntry,
    InitializeUnicastIpAddressEntry, MIB_IPFORWARD_ROW2, MIB_IPFORWARD_TABLE2, MIB_IPINTERFACE_ROW,
    MIB_UNICASTIPADDRESS_ROW, MIB_UNICASTIPADDRESS_TABLE, SetIpInterfaceEntry,
};
use windows_sys::Win32::NetworkManagement::Ndis::NET_LUID_LH;
use windows_sys::Win32::Networking::WinSock::{
    ADDRESS_FAMILY, AF_INET, AF_INET6, AF_UNSPEC, IN_ADDR, IN_ADDR_0, IN6_ADDR, IN6_ADDR_0,
    IpDadStatePreferred, MIB_IPPROTO_NETMGMT, SOCKADDR_IN, SOCKADDR_IN6, SOCKADDR_INET,
};

use crate::config::{IPV6_MIN_MTU, Plan};
use crate::errors::{Step, code, win32_failure};
use crate::sys::win32_text;

/// Configures the adapter `luid` as `plan` says; returns the IPv4 MTU now in effect.
/// The first failure stops it (the caller removes the adapter).
pub(crate) fn configure(luid: NET_LUID_LH, plan: &Plan) -> Result<u32, PluginFailure> {
    let name = plan.name.as_str();
    let fail = |context: String, code: u32| {
        win32_failure(Step::Configure, &context, code, &win32_text(code))
    };
    flush_leftovers(luid, name);
    let mtu = match plan.mtu {
        Some(mtu) => {
            set_mtu(luid, AF_INET, mtu)
                .map_err(|c| fail(format!("setting the IPv4 MTU of `{name}` to {mtu}"), c))?;
            if mtu >= IPV6_MIN_MTU {
                match set_mtu(luid, AF_INET6, mtu) {
                    Ok(()) => {}
                    // IPv6 unbound from the adapter: fine unless it needs an IPv6 address.
                    Err(code::ERROR_NOT_FOUND) if plan.ipv6.is_none() => {
                        tracing::debug!(name, "wintun: no IPv6 on the adapter; IPv6 MTU not set");
                    }
                    Err(c) => {
                        return Err(fail(
                            format!("setting the IPv6 MTU of `{name}` to {mtu}"),
                            c,
                        ));
                    }
                }
            }
            mtu
        }
        None => current_mtu(luid, AF_INET)
            .map_err(|c| fail(format!("reading the MTU of `{name}`"), c))?,
    };
    let addresses = [
        plan.ipv4.map(|(a, p)| (IpAddr::V4(a), p)),
        plan.ipv6.map(|(a, p)| (IpAddr::V6(a), p)),
    ];
    for (addr, prefix_len) in addresses.into_iter().flatten() {
        let row = address_row(luid, addr, prefix_len);
        // SAFETY: `row` is a fully initialised row that outlives the call.
        match unsafe { CreateUnicastIpAddressEntry(&row) } {
            0 | code::ERROR_OBJECT_ALREADY_EXISTS => {}
            c => return Err(fail(format!("adding {addr}/{prefix_len} to `{name}`"), c)),
        }
    }
    for &(dst, prefix_len) in &plan.routes {
        let row = route_row(luid, dst, prefix_len);
        // SAFETY: as above.
        match unsafe { CreateIpForwardEntry2(&row) } {
            0 | code::ERROR_OBJECT_ALREADY_EXISTS => {}
            c => {
                return Err(fail(
                    format!("adding route {dst}/{prefix_len} via `{name}`"),
                    c,
                ));
            }
        }
    }
    Ok(mtu)
}

/// A unicast address row for `addr/prefix_len` on `luid`: the system's defaults
/// (`InitializeUnicastIpAddressEntry`), then [`fill_address_row`].
fn address_row(luid: NET_LUID_LH, addr: IpAddr, prefix_len: u8) -> MIB_UNICASTIPADDRESS_ROW {
    let mut row = MIB_UNICASTIPADDRESS_ROW::default();
    // SAFETY: `row` is writable; the call fills in defaults (lifetimes, origins).
    unsafe { InitializeUnicastIpAddressEntry(&mut row) };
    fill_address_row(&mut row, luid, addr, prefix_len);
    row
}

/// Sets what names the address, marked preferred so it is usable at once (nobody else
/// is on a point-to-point tunnel: no duplicate detection).
pub(crate) fn fill_address_row(
    row: &mut MIB_UNICASTIPADDRESS_ROW,
    luid: NET_LUID_LH,
    addr: IpAddr,
    prefix_len: u8,
) {
    row.InterfaceLuid = luid;
    row.Address = sockaddr_inet(addr);
    row.OnLinkPrefixLength = prefix_len;
    row.DadState = IpDadStatePreferred;
}

/// A route row for `dst/prefix_len` through `luid`: the system's defaults
/// (`InitializeIpForwardEntry`), then [`fill_route_row`].
fn route_row(luid: NET_LUID_LH, dst: IpAddr, prefix_len: u8) -> MIB_IPFORWARD_ROW2 {
    let mut row = MIB_IPFORWARD_ROW2::default();
    // SAFETY: `row` is writable; the call fills in defaults (lifetimes, origin).
    unsafe { InitializeIpForwardEntry(&mut row) };
    fill_route_row(&mut row, luid, dst, prefix_len);
    row
}

/// Sets what makes the row an on-link route (next hop: the unspecified address of the
/// family) through `luid`, metric 0 on top of the interface metric, as a static route
/// (`MIB_IPPROTO_NETMGMT`, what `route add` makes), which `flush_leftovers` knows to
/// remove.
pub(crate) fn fill_route_row(
    row: &mut MIB_IPFORWARD_ROW2,
    luid: NET_LUID_LH,
    dst: IpAddr,
    prefix_len: u8,
) {
    row.InterfaceLuid = luid;
    row.DestinationPrefix = IP_ADDRESS_PREFIX {
        Prefix: sockaddr_inet(dst),
        PrefixLength: prefix_len,
    };
    row.NextHop = sockaddr_inet(match dst {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    });
    row.Metric = 0;
    row.Protocol = MIB_IPPROTO_NETMGMT;
}

/// `addr` as a `SOCKADDR_INET` (port 0, no scope).
pub(crate) fn sockaddr_inet(addr: IpAddr) -> SOCKADDR_INET {
    match addr {
        IpAddr::V4(a) => SOCKADDR_INET {
            Ipv4: SOCKADDR_IN {
                sin_family: AF_INET,
                sin_port: 0,
                // Network byte order in memory, whatever the host order.
                sin_addr: IN_ADDR {
                    S_un: IN_ADDR_0 {
                        S_addr: u32::from_ne_bytes(a.octets()),
                    },
                },
                sin_zero: [0; 8],
            },
        },
        IpAddr::V6(a) => SOCKADDR_INET {
            Ipv6: SOCKADDR_IN6 {
                sin6_family: AF_INET6,
                sin6_addr: IN6_ADDR {
                    u: IN6_ADDR_0 { Byte: a.octets() },
                },
                ..SOCKADDR_IN6::default()
            },
        },
    }
}

/// The address in `sa`, if it is IPv4 or IPv6.
pub(crate) fn ip_of(sa: &SOCKADDR_INET) -> Option<IpAddr> {
    // SAFETY: `si_family` overlays the family field of both variants; the variant read
    // next is the one the family names. All fields are plain integers.
    unsafe {
        match sa.si_family {
            AF_INET => Some(IpAddr::V4(Ipv4Addr::from(
                sa.Ipv4.sin_addr.S_un.S_addr.to_ne_bytes(),
            ))),
            AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(sa.Ipv6.sin6_addr.u.Byte))),
            _ => None,
        }
    }
}

fn interface_row(luid: NET_LUID_LH, family: ADDRESS_FAMILY) -> Result<MIB_IPINTERFACE_ROW, u32> {
    // Get reads only the key (family and LUID) and fills in every other field, so no
    // InitializeIpInterfaceEntry is needed (nor available under Wine 8).
    let mut row = MIB_IPINTERFACE_ROW {
        Family: family,
        InterfaceLuid: luid,
        ..MIB_IPINTERFACE_ROW::default()
    };
    // SAFETY: `row` is initialised and names the interface by family and LUID.
    match unsafe { GetIpInterfaceEntry(&mut row) } {
        0 => Ok(row),
        c => Err(c),
    }
}

fn set_mtu(luid: NET_LUID_LH, family: ADDRESS_FAMILY, mtu: u32) -> Result<(), u32> {
    let mut row = interface_row(luid, family)?;
    row.NlMtu = mtu;
    if family == AF_INET {
        // SetIpInterfaceEntry rejects an IPv4 row whose SitePrefixLength (an IPv6
        // notion that Get fills in) is not 0.
        row.SitePrefixLength = 0;
    }
    // SAFETY: `row` came from GetIpInterfaceEntry and outlives the call.
    match unsafe { SetIpInterfaceEntry(&mut row) } {
        0 => Ok(()),
        c => Err(c),
    }
}

fn current_mtu(luid: NET_LUID_LH, family: ADDRESS_FAMILY) -> Result<u32, u32> {
    interface_row(luid, family).map(|row| row.NlMtu)
}

/// Removes the addresses (but link-local ones, which Windows manages) and the static
/// routes an earlier run left on this adapter. Best effort: a failure is logged, and the
/// configuration that follows reports what really matters.
fn flush_leftovers(luid: NET_LUID_LH, name: &str) {
    let mut addresses: *mut MIB_UNICASTIPADDRESS_TABLE = std::ptr::null_mut();
    // SAFETY: `addresses` is a writable out-pointer; on success the table is ours to
    // free with FreeMibTable.
    match unsafe { GetUnicastIpAddressTable(AF_UNSPEC, &mut addresses) } {
        0 => {
            // SAFETY: on success the table holds `NumEntries` rows; it is freed below and
            // not used after.
            let rows = unsafe { mib_rows(&raw const (*addresses).Table, (*addresses).NumEntries) };
            for row in rows.iter().filter(|r| same(r.InterfaceLuid, luid)) {
                if ip_of(&row.Address).is_some_and(is_link_local) {
                    continue;
                }
                // SAFETY: `row` is a complete row returned by the system.
                let c = unsafe { DeleteUnicastIpAddressEntry(row) };
                tracing::debug!(name, address = ?ip_of(&row.Address), status = c, "wintun: removed a leftover address");
            }
            // SAFETY: allocated by GetUnicastIpAddressTable; `rows` is dead.
            unsafe { FreeMibTable(addresses.cast()) };
        }
        c => tracing::warn!(
            name,
            status = c,
            "wintun: cannot list addresses to remove leftovers"
        ),
    }
    let mut routes: *mut MIB_IPFORWARD_TABLE2 = std::ptr::null_mut();
    // SAFETY: as above.
    match unsafe { GetIpForwardTable2(AF_UNSPEC, &mut routes) } {
        0 => {
            // SAFETY: as above.
            let rows = unsafe { mib_rows(&raw const (*routes).Table, (*routes).NumEntries) };
            for row in rows
                .iter()
                .filter(|r| same(r.InterfaceLuid, luid) && r.Protocol == MIB_IPPROTO_NETMGMT)
            {
                // SAFETY: `row` is a complete row returned by the system.
                let c = unsafe { DeleteIpForwardEntry2(row) };
                tracing::debug!(name, status = c, "wintun: removed a leftover route");
            }
            // SAFETY: allocated by GetIpForwardTable2; `rows` is dead.
            unsafe { FreeMibTable(routes.cast()) };
        }
        c => tracing::warn!(
            name,
            status = c,
            "wintun: cannot list routes to remove leftovers"
        ),
    }
}

/// The rows of an IP Helper table (a count followed by a variable-length array).
///
/// # Safety
/// `first` points at the table's first row and `count` rows follow it, valid for `'a`.
unsafe fn mib_rows<'a, T>(first: *const [T; 1], count: u32) -> &'a [T] {
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts(first.cast::<T>(), count as usize) }
}

fn same(a: NET_LUID_LH, b: NET_LUID_LH) -> bool {
    // SAFETY: a LUID is a 64-bit integer viewed as a union; `Value` is all of it.
    unsafe { a.Value == b.Value }
}

fn is_link_local(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => a.is_unicast_link_local(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LUID: NET_LUID_LH = NET_LUID_LH {
        Value: 0x0035_0000_0100_0000,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn sockaddrs_round_trip_in_network_order() {
        for a in [
            "100.64.7.1",
            "0.0.0.0",
            "255.1.2.3",
            "fd00:7::1",
            "::",
            "fe80::1:2",
        ] {
            assert_eq!(ip_of(&sockaddr_inet(ip(a))), Some(ip(a)), "{a}");
        }
        let sa = sockaddr_inet(ip("100.64.7.1"));
        // SAFETY: reading the bytes of a plain-integer union in a test.
        let bytes: [u8; 8] = unsafe { std::mem::transmute_copy(&sa) };
        // family 2 (LE), port 0, then the address as on the wire.
        assert_eq!(bytes, [2, 0, 0, 0, 100, 64, 7, 1]);
        let unknown = SOCKADDR_INET { si_family: 99 };
        assert_eq!(ip_of(&unknown), None);
    }

    // The Initialize* functions are not in Wine 8's iphlpapi (calling one aborts the
    // process), so the tests fill zeroed rows.
    #[test]
    fn address_rows_carry_luid_prefix_and_preferred_state() {
        let mut row = MIB_UNICASTIPADDRESS_ROW::default();
        fill_address_row(&mut row, LUID, ip("fd00:7::1"), 64);
        assert!(same(row.InterfaceLuid, LUID));
        assert_eq!(ip_of(&row.Address), Some(ip("fd00:7::1")));
        assert_eq!(row.OnLinkPrefixLength, 64);
        assert_eq!(row.DadState, IpDadStatePreferred);
    }

    #[test]
    fn route_rows_are_on_link_static_routes() {
        let mut row = MIB_IPFORWARD_ROW2::default();
        fill_route_row(&mut row, LUID, ip("100.64.8.0"), 24);
        assert!(same(row.InterfaceLuid, LUID));
        assert_eq!(ip_of(&row.DestinationPrefix.Prefix), Some(ip("100.64.8.0")));
        assert_eq!(row.DestinationPrefix.PrefixLength, 24);
        assert_eq!(ip_of(&row.NextHop), Some(ip("0.0.0.0")));
        assert_eq!(row.Protocol, MIB_IPPROTO_NETMGMT);
        assert_eq!(row.Metric, 0);
        fill_route_row(&mut row, LUID, ip("fd00:8::"), 48);
        assert_eq!(ip_of(&row.NextHop), Some(ip("::")));
        assert_eq!(ip_of(&row.DestinationPrefix.Prefix), Some(ip("fd00:8::")));
    }

    #[test]
    fn link_local_addresses_are_left_alone() {
        assert!(is_link_local(ip("169.254.1.1")));
        assert!(is_link_local(ip("fe80::1")));
        assert!(!is_link_local(ip("100.64.0.1")));
        assert!(!is_link_local(ip("fd00::1")));
    }
}
