//! The edge's IP allowlist: a set of IPv4 and IPv6 CIDR prefixes, the mode
//! it runs in, and the decision for one client address.
//!
//! Prefixes are merged into sorted, disjoint integer ranges once; a lookup is
//! one binary search, whatever the number of prefixes (the Azure AD tag has
//! hundreds). IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) and prefixes are
//! treated as the IPv4 they carry, so one rule covers both spellings.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::{Error, echo, json_error};

/// One CIDR prefix, normalised (host bits cleared, IPv4-mapped IPv6 as IPv4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr(IpNet);

impl Cidr {
    pub fn net(&self) -> IpNet {
        self.0
    }

    /// The same test as [`Allowlist::contains`], for one prefix.
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.0.contains(&canonical(addr))
    }
}

impl FromStr for Cidr {
    type Err = Error;

    /// Parses `addr/len`; a bare address is a single-host prefix.
    fn from_str(input: &str) -> Result<Self, Error> {
        let fail = |reason: &str| Error::InvalidCidr {
            input: echo(input, MAX_ECHO),
            reason: reason.into(),
        };
        let text = input.trim();
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| fail("not an IPv4 or IPv6 address before the `/`"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => {
                let len: u8 = l
                    .parse()
                    .map_err(|_| fail("the prefix length after `/` is not a number"))?;
                if len > max {
                    return Err(fail(&format!(
                        "prefix length {len} exceeds {max}, the maximum for {}",
                        if addr.is_ipv4() { "IPv4" } else { "IPv6" }
                    )));
                }
                len
            }
        };
        let net = IpNet::new(addr, len).map_err(|_| fail("invalid prefix length"))?;
        Ok(Self(canonical_net(net.trunc())))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.network().to_ipv4_mapped()
    {
        let v4 = Ipv4Net::new(v4, v6.prefix_len() - 96).expect("96..=128 maps to 0..=32");
        return IpNet::V4(v4);
    }
    net
}

/// Sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct RangeSet<T> {
    ranges: Vec<(T, T)>,
}

impl<T: Copy + Ord + Bounded> RangeSet<T> {
    fn build(mut ranges: Vec<(T, T)>) -> Self {
        ranges.sort_unstable();
        let mut merged: Vec<(T, T)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if last.1 == T::MAX || start <= last.1.succ() => {
                    if end > last.1 {
                        last.1 = end;
                    }
                }
                _ => merged.push((start, end)),
            }
        }
        Self { ranges: merged }
    }

    fn contains(&self, x: T) -> bool {
        let after = self.ranges.partition_point(|r| r.0 <= x);
        after > 0 && x <= self.ranges[after - 1].1
    }
}

trait Bounded {
    const MAX: Self;
    fn succ(self) -> Self;
}
impl Bounded for u32 {
    const MAX: Self = u32::MAX;
    fn succ(self) -> Self {
        self + 1
    }
}
impl Bounded for u128 {
    const MAX: Self = u128::MAX;
    fn succ(self) -> Self {
        self + 1
    }
}

fn v4_range(net: &Ipv4Net) -> (u32, u32) {
    (u32::from(net.network()), u32::from(net.broadcast()))
}

fn v6_range(net: &Ipv6Net) -> (u128, u128) {
    (u128::from(net.network()), u128::from(net.broadcast()))
}

/// A set of prefixes with O(log n) containment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowlist {
    v4: RangeSet<u32>,
    v6: RangeSet<u128>,
    prefixes: usize,
}

impl Allowlist {
    pub fn new<'a>(prefixes: impl IntoIterator<Item = &'a Cidr>) -> Self {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        let mut count = 0;
        for cidr in prefixes {
            count += 1;
            match &cidr.0 {
                IpNet::V4(n) => v4.push(v4_range(n)),
                IpNet::V6(n) => v6.push(v6_range(n)),
            }
        }
        Self {
            v4: RangeSet::build(v4),
            v6: RangeSet::build(v6),
            prefixes: count,
        }
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        match canonical(addr) {
            IpAddr::V4(a) => self.v4.contains(u32::from(a)),
            IpAddr::V6(a) => self.v6.contains(u128::from(a)),
        }
    }

    /// How many prefixes went in (before merging).
    pub fn prefix_count(&self) -> usize {
        self.prefixes
    }

    pub fn is_empty(&self) -> bool {
        self.v4.ranges.is_empty() && self.v6.ranges.is_empty()
    }

    /// The decision for a client address as the edge received it (the
    /// `CF-Connecting-IP` header value, if any).
    pub fn decide(&self, mode: AllowlistMode, client: Option<&str>) -> Decision {
        if mode == AllowlistMode::Off {
            return Decision::Allow;
        }
        let listed = client
            .and_then(parse_client_address)
            .is_some_and(|addr| self.contains(addr));
        match (listed, mode) {
            (true, _) | (_, AllowlistMode::Off) => Decision::Allow,
            (false, AllowlistMode::Monitor) => Decision::MonitorDeny,
            (false, AllowlistMode::Enforce) => Decision::Deny,
        }
    }
}

/// Parses a client address header value; `None` for anything that is not
/// exactly one IP address (a list, a port, garbage).
pub fn parse_client_address(value: &str) -> Option<IpAddr> {
    value.trim().parse::<IpAddr>().ok()
}

/// How the edge applies the allowlist.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllowlistMode {
    /// No check.
    Off,
    /// Log what `enforce` would deny, allow everything (the default: Microsoft
    /// documents no egress range for federation, a wrong list must not break
    /// every exchange).
    #[default]
    Monitor,
    /// Answer 403 to addresses outside the list, and to missing or
    /// unparsable addresses.
    Enforce,
}

impl FromStr for AllowlistMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim() {
            "off" => Ok(Self::Off),
            "monitor" => Ok(Self::Monitor),
            "enforce" => Ok(Self::Enforce),
            other => Err(Error::InvalidAllowlistMode(echo(other, MAX_ECHO))),
        }
    }
}

impl AllowlistMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Monitor => "monitor",
            Self::Enforce => "enforce",
        }
    }
}

/// The outcome of the allowlist for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Outside the list in `monitor` mode: allowed, and logged.
    MonitorDeny,
    Deny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::MonitorDeny => "monitor-deny",
            Self::Deny => "deny",
        }
    }
}

/// Longest `source` of an allowlist document.
pub const MAX_SOURCE_LEN: usize = 128;

/// How much of a refused prefix or mode an error echoes.
const MAX_ECHO: usize = 80;

/// The allowlist as published for the edge (and written by
/// `aws2azure allowlist`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllowlistDocument {
    /// Where the prefixes came from, e.g. the service tag name.
    pub source: String,
    /// The Service Tags change number, to tell versions apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_number: Option<u64>,
    pub prefixes: Vec<Cidr>,
}

impl AllowlistDocument {
    pub fn from_json(json: &[u8]) -> Result<Self, Error> {
        let doc: Self = serde_json::from_slice(json).map_err(|e| {
            Error::InvalidAllowlist(format!(
                "expected {{\"source\", \"changeNumber\"?, \"prefixes\": [CIDR, ...]}} ({})",
                json_error(&e)
            ))
        })?;
        if doc.prefixes.is_empty() {
            return Err(Error::InvalidAllowlist(
                "it has no prefixes; an empty list would deny everyone in enforce mode".into(),
            ));
        }
        // The edge logs the source on every request: keep it a short label.
        if doc.source.chars().count() > MAX_SOURCE_LEN || doc.source.chars().any(char::is_control) {
            return Err(Error::InvalidAllowlist(format!(
                "`source` must be at most {MAX_SOURCE_LEN} printable characters, e.g. the \
                 service tag name; it is logged with every request"
            )));
        }
        Ok(doc)
    }

    pub fn allowlist(&self) -> Allowlist {
        Allowlist::new(&self.prefixes)
    }

    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("allowlist serialises")
    }
}

/// Convenience for tests and tools: the last address of a prefix.
pub fn last_address(cidr: &Cidr) -> IpAddr {
    match cidr.0 {
        IpNet::V4(n) => IpAddr::V4(n.broadcast()),
        IpNet::V6(n) => IpAddr::V6(n.broadcast()),
    }
}

/// Adds `delta` (±1) to an address, `None` at the ends of the space.
pub fn step_address(addr: IpAddr, delta: i8) -> Option<IpAddr> {
    match addr {
        IpAddr::V4(a) => {
            let x = u32::from(a);
            let y = if delta >= 0 {
                x.checked_add(1)?
            } else {
                x.checked_sub(1)?
            };
            Some(IpAddr::V4(Ipv4Addr::from(y)))
        }
        IpAddr::V6(a) => {
            let x = u128::from(a);
            let y = if delta >= 0 {
                x.checked_add(1)?
            } else {
                x.checked_sub(1)?
            };
            Some(IpAddr::V6(Ipv6Addr::from(y)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn parses_and_normalises() {
        assert_eq!(
            "10.1.2.3/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!("1.2.3.4".parse::<Cidr>().unwrap().to_string(), "1.2.3.4/32");
        assert_eq!(
            "2001:db8::1/32".parse::<Cidr>().unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!(
            "::ffff:1.2.3.0/120".parse::<Cidr>().unwrap().to_string(),
            "1.2.3.0/24"
        );
        assert_eq!(
            "0.0.0.0/0".parse::<Cidr>().unwrap().to_string(),
            "0.0.0.0/0"
        );
    }

    #[test]
    fn refuses_bad_prefixes_with_clear_messages() {
        let cases = [
            (
                "10.0.0.0/33",
                "prefix length 33 exceeds 32, the maximum for IPv4",
            ),
            (
                "::ffff:1.2.3.4/200",
                "prefix length 200 exceeds 128, the maximum for IPv6",
            ),
            ("10.0.0/8", "not an IPv4 or IPv6 address"),
            ("10.0.0.0/x", "not a number"),
            ("10.0.0.0/-1", "not a number"),
            ("", "not an IPv4 or IPv6 address"),
        ];
        for (input, expect) in cases {
            let err = input.parse::<Cidr>().unwrap_err();
            assert!(err.to_string().contains(expect), "{input}: {err}");
            assert!(err.to_string().contains(&format!("`{input}`")), "{err}");
        }
    }

    #[test]
    fn contains_handles_both_families_and_mapped_addresses() {
        let list = Allowlist::new(&cidrs(&[
            "20.190.128.0/18",
            "2603:1006:2000::/48",
            "1.2.3.4/32",
        ]));
        let yes = [
            "20.190.128.0",
            "20.190.191.255",
            "::ffff:20.190.130.1",
            "2603:1006:2000::1",
            "1.2.3.4",
        ];
        let no = [
            "20.190.127.255",
            "20.190.192.0",
            "::ffff:20.190.192.0",
            "2603:1006:2001::",
            "1.2.3.5",
            "::1",
        ];
        for a in yes {
            assert!(list.contains(a.parse().unwrap()), "{a}");
        }
        for a in no {
            assert!(!list.contains(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn decisions_per_mode() {
        let list = Allowlist::new(&cidrs(&["20.190.128.0/18"]));
        let inside = Some("20.190.130.1");
        let outside = Some("8.8.8.8");
        for (mode, addr, want) in [
            (AllowlistMode::Off, outside, Decision::Allow),
            (AllowlistMode::Off, Some("garbage"), Decision::Allow),
            (AllowlistMode::Monitor, inside, Decision::Allow),
            (AllowlistMode::Monitor, outside, Decision::MonitorDeny),
            (AllowlistMode::Monitor, None, Decision::MonitorDeny),
            (AllowlistMode::Enforce, inside, Decision::Allow),
            (
                AllowlistMode::Enforce,
                Some(" 20.190.130.1 "),
                Decision::Allow,
            ),
            (AllowlistMode::Enforce, outside, Decision::Deny),
            (AllowlistMode::Enforce, None, Decision::Deny),
            (
                AllowlistMode::Enforce,
                Some("20.190.130.1, 8.8.8.8"),
                Decision::Deny,
            ),
            (AllowlistMode::Enforce, Some("not-an-ip"), Decision::Deny),
        ] {
            assert_eq!(list.decide(mode, addr), want, "{mode:?} {addr:?}");
        }
        assert_eq!(
            "enforce".parse::<AllowlistMode>().unwrap(),
            AllowlistMode::Enforce
        );
        assert!("Enforce".parse::<AllowlistMode>().is_err());
        assert_eq!(AllowlistMode::default(), AllowlistMode::Monitor);
    }

    #[test]
    fn allowlist_document_round_trips_and_refuses_empty() {
        let doc = AllowlistDocument {
            source: "AzureActiveDirectory".into(),
            change_number: Some(24),
            prefixes: cidrs(&["20.190.128.0/18", "2603:1006:2000::/48"]),
        };
        let json = doc.to_json_pretty();
        assert_eq!(AllowlistDocument::from_json(json.as_bytes()).unwrap(), doc);
        let err = AllowlistDocument::from_json(br#"{"source":"x","prefixes":[]}"#).unwrap_err();
        assert!(err.to_string().contains("no prefixes"), "{err}");
        let err = AllowlistDocument::from_json(br#"{"source":"x","prefixes":["10.0.0.0/33"]}"#)
            .unwrap_err();
        assert!(err.to_string().contains("exceeds 32"), "{err}");
    }

    /// Found by the edge's property tests: the source became part of the
    /// label logged with every request, at any length.
    #[test]
    fn the_source_is_a_short_printable_label() {
        let doc = |source: &str| {
            serde_json::json!({"source": source, "prefixes": ["10.0.0.0/8"]}).to_string()
        };
        let longest = "s".repeat(MAX_SOURCE_LEN);
        assert!(AllowlistDocument::from_json(doc(&longest).as_bytes()).is_ok());
        for bad in [
            format!("{longest}s"),
            "x".repeat(1 << 20),
            "a\nforged".into(),
        ] {
            let err = AllowlistDocument::from_json(doc(&bad).as_bytes()).unwrap_err();
            assert!(
                err.to_string().contains("`source` must be at most"),
                "{err}"
            );
            assert!(err.to_string().len() < 200, "{err}");
        }
    }

    fn arb_v4_cidr() -> impl Strategy<Value = Cidr> {
        // Addresses drawn from a small region so that prefixes overlap often.
        (0u32..4096, 16u8..=32).prop_map(|(x, len)| {
            let addr = Ipv4Addr::from(0x0a00_0000 | (x << 8) | (x & 0xff));
            Cidr(IpNet::V4(Ipv4Net::new(addr, len).unwrap().trunc()))
        })
    }

    fn arb_v6_cidr() -> impl Strategy<Value = Cidr> {
        (0u128..4096, 100u8..=128).prop_map(|(x, len)| {
            let addr = Ipv6Addr::from((0x2001_0db8u128 << 96) | (x << 20) | x);
            Cidr(IpNet::V6(Ipv6Net::new(addr, len).unwrap().trunc()))
        })
    }

    fn arb_addr() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            (0u32..(4096 << 8)).prop_map(|x| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | x))),
            (0u128..(4096 << 20))
                .prop_map(|x| IpAddr::V6(Ipv6Addr::from((0x2001_0db8u128 << 96) | x))),
            (0u32..(4096 << 8))
                .prop_map(|x| IpAddr::V6(Ipv4Addr::from(0x0a00_0000 | x).to_ipv6_mapped())),
            any::<u32>().prop_map(|x| IpAddr::V4(Ipv4Addr::from(x))),
            any::<u128>().prop_map(|x| IpAddr::V6(Ipv6Addr::from(x))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn containment_matches_a_linear_scan(
            list in proptest::collection::vec(prop_oneof![arb_v4_cidr(), arb_v6_cidr()], 0..64),
            probes in proptest::collection::vec(arb_addr(), 1..64),
        ) {
            let allow = Allowlist::new(&list);
            for addr in probes {
                // The reference: ipnet's own containment, prefix by prefix.
                let naive = list.iter().any(|c| c.0.contains(&canonical(addr)));
                prop_assert_eq!(allow.contains(addr), naive, "{}", addr);
            }
            for c in &list {
                prop_assert!(allow.contains(c.0.network()));
                prop_assert!(allow.contains(last_address(c)));
            }
        }

        #[test]
        fn cidr_parsing_never_panics(s in "\\PC{0,40}") {
            let _ = s.parse::<Cidr>();
        }
    }

    #[test]
    fn merges_adjacent_and_full_ranges() {
        let list = Allowlist::new(&cidrs(&["0.0.0.0/1", "128.0.0.0/1", "::/0"]));
        assert!(list.contains("255.255.255.255".parse().unwrap()));
        assert!(list.contains("0.0.0.0".parse().unwrap()));
        assert!(list.contains("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe".parse().unwrap()));
        assert_eq!(list.v4.ranges, vec![(0, u32::MAX)]);
        assert!(Allowlist::new(&[]).is_empty());
        assert!(!Allowlist::new(&[]).contains("1.1.1.1".parse().unwrap()));
    }
}
