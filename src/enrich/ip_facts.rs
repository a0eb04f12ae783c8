//! Classification of client addresses. `std`'s `is_global`, `is_documentation`, … are still
//! unstable, so the IANA special-purpose registries are encoded here as plain range checks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::event::IpFacts;

/// Parses an address and folds IPv4-mapped IPv6 (`::ffff:a.b.c.d`) to IPv4, so one client has
/// one spelling and one set of facts whichever socket family logged it.
pub fn parse_ip(text: &str) -> Option<IpAddr> {
    match text.parse::<IpAddr>().ok()? {
        IpAddr::V6(v6) => Some(match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }),
        v4 => Some(v4),
    }
}

/// Facts about `ip` (pass the result of [`parse_ip`] so mapped addresses count as IPv4).
pub fn ip_facts(ip: IpAddr) -> IpFacts {
    let (version, private, loopback, link_local, multicast, reserved) = match ip {
        IpAddr::V4(a) => v4_facts(a),
        IpAddr::V6(a) => v6_facts(a),
    };
    IpFacts {
        version,
        private,
        loopback,
        link_local,
        multicast,
        reserved,
        global: !(private || loopback || link_local || multicast || reserved),
    }
}

#[inline]
fn in_v4(a: u32, net: u32, prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    a & mask == net
}

#[inline]
fn in_v6(a: u128, net: u128, prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    };
    a & mask == net
}

fn v4_facts(ip: Ipv4Addr) -> (u8, bool, bool, bool, bool, bool) {
    let a = u32::from(ip);
    let private = in_v4(a, 0x0A00_0000, 8) // 10/8
        || in_v4(a, 0xAC10_0000, 12) // 172.16/12
        || in_v4(a, 0xC0A8_0000, 16); // 192.168/16
    let loopback = in_v4(a, 0x7F00_0000, 8);
    let link_local = in_v4(a, 0xA9FE_0000, 16); // 169.254/16
    let multicast = in_v4(a, 0xE000_0000, 4); // 224/4
    let reserved = in_v4(a, 0x0000_0000, 8) // "this network", incl. unspecified
        || in_v4(a, 0x6440_0000, 10) // 100.64/10 shared address space (CGNAT)
        // 192.0.0/24 IETF protocol assignments; .9 and .10 are globally reachable anycast.
        || (in_v4(a, 0xC000_0000, 24) && a != 0xC000_0009 && a != 0xC000_000A)
        || in_v4(a, 0xC000_0200, 24) // 192.0.2/24 TEST-NET-1
        || in_v4(a, 0xC612_0000, 15) // 198.18/15 benchmarking
        || in_v4(a, 0xC633_6400, 24) // 198.51.100/24 TEST-NET-2
        || in_v4(a, 0xCB00_7100, 24) // 203.0.113/24 TEST-NET-3
        || in_v4(a, 0xF000_0000, 4); // 240/4 reserved, incl. 255.255.255.255 broadcast
    (4, private, loopback, link_local, multicast, reserved)
}

fn v6_facts(ip: Ipv6Addr) -> (u8, bool, bool, bool, bool, bool) {
    let a = u128::from(ip);
    let loopback = a == 1;
    let private = in_v6(a, 0xfc00 << 112, 7); // unique local fc00::/7
    let link_local = in_v6(a, 0xfe80 << 112, 10);
    let multicast = in_v6(a, 0xff00 << 112, 8);
    // Exceptions inside 2001::/23 that IANA lists as globally reachable.
    let ietf_global = a == 0x2001_0001_0000_0000_0000_0000_0000_0001 // 2001:1::1 PCP anycast
        || a == 0x2001_0001_0000_0000_0000_0000_0000_0002 // 2001:1::2 TURN anycast
        || in_v6(a, 0x2001_0003 << 96, 32) // AMT
        || in_v6(a, 0x2001_0004_0112 << 80, 48) // AS112-v6
        || in_v6(a, 0x2001_0020 << 96, 28); // ORCHIDv2
    let reserved = (in_v6(a, 0, 96) && !loopback) // unspecified, deprecated IPv4-compatible
        || in_v6(a, 0x0064_ff9b_0001 << 80, 48) // local-use IPv4/IPv6 translation
        || in_v6(a, 0x0100 << 112, 64) // discard-only
        || (in_v6(a, 0x2001 << 112, 23) && !ietf_global) // IETF protocol assignments, incl. Teredo, benchmarking 2001:2::/48
        || in_v6(a, 0x2001_0db8 << 96, 32) // documentation
        || in_v6(a, 0x3fff << 112, 20) // documentation (RFC 9637)
        || in_v6(a, 0x5f00 << 112, 16) // SRv6 SIDs
        || in_v6(a, 0xfec0 << 112, 10); // deprecated site-local
    (6, private, loopback, link_local, multicast, reserved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(s: &str) -> IpFacts {
        ip_facts(parse_ip(s).unwrap())
    }

    fn only(version: u8, flag: &str) -> IpFacts {
        IpFacts {
            version,
            private: flag == "private",
            loopback: flag == "loopback",
            link_local: flag == "link_local",
            multicast: flag == "multicast",
            reserved: flag == "reserved",
            global: flag == "global",
        }
    }

    #[test]
    fn brief_addresses() {
        assert_eq!(facts("10.0.0.1"), only(4, "private"));
        assert_eq!(facts("172.16.0.10"), only(4, "private"));
        assert_eq!(facts("192.168.1.100"), only(4, "private"));
        assert_eq!(facts("127.0.0.1"), only(4, "loopback"));
        assert_eq!(facts("::1"), only(6, "loopback"));
        assert_eq!(facts("fe80::1"), only(6, "link_local"));
        assert_eq!(facts("203.0.113.10"), only(4, "reserved"));
        assert_eq!(facts("8.8.8.8"), only(4, "global"));
        assert_eq!(facts("100.64.0.1"), only(4, "reserved"));
        assert_eq!(facts("fc00::1"), only(6, "private"));
    }

    #[test]
    fn more_ranges() {
        for s in [
            "0.0.0.0",
            "192.0.2.1",
            "198.51.100.7",
            "198.18.0.1",
            "198.19.255.255",
            "240.0.0.1",
            "255.255.255.255",
            "192.0.0.8",
            "::",
            "2001:db8::1",
            "2001:2::1",
            "2001::1",
            "100::1",
            "fec0::1",
            "3fff::1",
            "64:ff9b:1::1",
            "::1.2.3.4",
        ] {
            assert!(facts(s).reserved, "{s}");
            assert!(!facts(s).global, "{s}");
        }
        for s in [
            "1.1.1.1",
            "172.32.0.1",
            "172.15.255.255",
            "100.128.0.1",
            "192.0.0.9",
            "2001:4860:4860::8888",
            "2606:4700::1111",
            "2001:1::1",
            "2001:20::1",
            "64:ff9b::808:808",
            "169.255.0.1",
        ] {
            assert!(facts(s).global, "{s}");
        }
        assert_eq!(facts("169.254.169.254"), only(4, "link_local"));
        assert_eq!(facts("224.0.0.251"), only(4, "multicast"));
        assert_eq!(facts("ff02::1"), only(6, "multicast"));
        assert_eq!(facts("fd12:3456::1"), only(6, "private"));
        assert_eq!(facts("127.255.0.1"), only(4, "loopback"));
    }

    #[test]
    fn mapped_addresses_fold_to_ipv4() {
        assert_eq!(
            parse_ip("::ffff:10.0.0.1"),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(parse_ip("::FFFF:8.8.8.8").unwrap().to_string(), "8.8.8.8");
        assert_eq!(facts("::ffff:192.168.1.1"), only(4, "private"));
        assert_eq!(
            parse_ip("2001:DB8:0:0::1").unwrap().to_string(),
            "2001:db8::1"
        );
        assert_eq!(parse_ip("not-an-ip"), None);
        assert_eq!(parse_ip("010.0.0.1"), None);
        assert_eq!(parse_ip("fe80::1%eth0"), None);
    }
}
