//! Who a request comes from. The TCP peer, unless the peer is a proxy this
//! process was told to trust (`TRUSTED_PROXIES`, empty by default): then the
//! address that proxy says it forwarded for (in the one header the proxies are
//! said to write, `X-Forwarded-For` or `Forwarded`, read from the right, skipping
//! trusted hops). A header from anyone else is ignored, since any client can
//! write one.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address block in CIDR form (`10.0.0.0/8`, `::1/128`, or a bare address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    base: IpAddr,
    prefix: u8,
}

impl FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix) = text.split_once('/').unwrap_or((text, ""));
        let base: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
        let bits = if base.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            bits
        } else {
            prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("{text:?} has a prefix length outside 0..={bits}"))?
        };
        Ok(Self {
            base: base.to_canonical(),
            prefix,
        })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.base, ip.to_canonical()) {
            (IpAddr::V4(base), IpAddr::V4(ip)) => {
                masked(u128::from(u32::from(base)), 32, self.prefix)
                    == masked(u128::from(u32::from(ip)), 32, self.prefix)
            }
            (IpAddr::V6(base), IpAddr::V6(ip)) => {
                masked(u128::from(base), 128, self.prefix)
                    == masked(u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// The top `prefix` bits of a `bits`-wide address.
fn masked(value: u128, bits: u8, prefix: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let shift = u32::from(bits - prefix);
    (value >> shift) << shift
}

/// A list of networks, as a setting gives it: comma-separated, empty for none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Networks(Vec<Network>);

impl Networks {
    /// Parses `list`; the error names the entry that is not a network.
    pub fn parse(list: &str) -> Result<Self, String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Network::from_str)
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// Loopback, v4 and v6.
    pub fn loopback() -> Self {
        Self(vec![
            Network {
                base: IpAddr::from([127, 0, 0, 0]),
                prefix: 8,
            },
            Network {
                base: IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
                prefix: 128,
            },
        ])
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The client behind `peer`: `peer` itself unless it is trusted; then the
    /// right-most forwarded address that is not trusted (each trusted proxy
    /// appends the address it received from). `forwarded` is every
    /// `X-Forwarded-For` value in order, or the `for=` values of `Forwarded`.
    pub fn client(&self, peer: IpAddr, forwarded: &[IpAddr]) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        forwarded
            .iter()
            .rev()
            .map(|ip| ip.to_canonical())
            .find(|ip| !self.contains(*ip))
            .or_else(|| forwarded.first().map(|ip| ip.to_canonical()))
            .unwrap_or(peer)
    }
}

/// Which header the trusted proxies write. Only that one is read: a proxy passes
/// the other through as the client sent it, so falling back to it would let the
/// client name its own address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, …` (nginx, ingress-nginx, most load balancers).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

impl ForwardedHeader {
    pub fn name(self) -> &'static str {
        match self {
            Self::XForwardedFor => "x-forwarded-for",
            Self::Forwarded => "forwarded",
        }
    }
}

/// The addresses a request says it was forwarded for, from every value of the
/// `header` it carries, in order. An entry that is not an address (`unknown`, an
/// obfuscated name) ends the list there, since nothing to its left can be told
/// apart from a forgery.
pub fn forwarded_for<'a>(
    header: ForwardedHeader,
    values: impl Iterator<Item = &'a str>,
) -> Vec<IpAddr> {
    let elements = values.flat_map(|v| v.split(','));
    let entries: Vec<String> = match header {
        ForwardedHeader::XForwardedFor => elements.map(|v| v.trim().to_owned()).collect(),
        ForwardedHeader::Forwarded => elements
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (key, value) = pair.trim().split_once('=')?;
                    key.eq_ignore_ascii_case("for")
                        .then(|| value.trim_matches('"').to_owned())
                })
            })
            .collect(),
    };
    let mut addresses = Vec::new();
    for entry in entries.iter().rev() {
        match parse_node(entry) {
            Some(ip) => addresses.push(ip),
            None => break,
        }
    }
    addresses.reverse();
    addresses
}

/// `1.2.3.4`, `1.2.3.4:80`, `[::1]`, `[::1]:80` or `::1`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    node.rsplit_once(':')?.0.parse().ok()
}

/// The client of a gRPC call: its TCP peer, or the `x-forwarded-for` metadata
/// when the peer is in `trusted` (the gateway forwards the address it resolved).
pub fn of_call<T>(request: &tonic::Request<T>, trusted: &Networks) -> IpAddr {
    let peer = request
        .remote_addr()
        .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    if !trusted.contains(peer) {
        return peer.to_canonical();
    }
    let values: Vec<&str> = request
        .metadata()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    trusted.client(
        peer,
        &forwarded_for(ForwardedHeader::XForwardedFor, values.into_iter()),
    )
}

/// The key a client's limits are kept under: its IPv4 address, or the /64 its
/// IPv6 address is in (one host commonly holds a whole /64).
pub fn bucket(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn networks_parse_and_match() {
        let nets = Networks::parse("10.0.0.0/8, 192.168.1.7, fd00::/8").expect("parse");
        assert!(nets.contains(ip("10.200.3.4")));
        assert!(nets.contains(ip("192.168.1.7")));
        assert!(!nets.contains(ip("192.168.1.8")));
        assert!(nets.contains(ip("fd12::1")));
        assert!(nets.contains(ip("::ffff:10.1.1.1")), "v4-mapped v6 is v4");
        assert!(!nets.contains(ip("2001:db8::1")));
        assert!(Networks::parse("").expect("empty").is_empty());
        let err = Networks::parse("10.0.0.0/33").expect_err("bad prefix");
        assert!(err.contains("10.0.0.0/33"), "{err}");
        assert!(Networks::parse("ingress").is_err());
    }

    #[test]
    fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
        let trusted = Networks::parse("10.0.0.0/8").expect("parse");
        let claimed = forwarded_for(
            ForwardedHeader::XForwardedFor,
            ["6.6.6.6, 203.0.113.9"].into_iter(),
        );
        // From a trusted proxy: the right-most untrusted hop.
        assert_eq!(trusted.client(ip("10.0.0.2"), &claimed), ip("203.0.113.9"));
        // From anyone else: the peer, whatever the header says.
        assert_eq!(
            trusted.client(ip("198.51.100.1"), &claimed),
            ip("198.51.100.1")
        );
        // Nothing trusted by default.
        assert_eq!(
            Networks::default().client(ip("10.0.0.2"), &claimed),
            ip("10.0.0.2")
        );
        // A chain of trusted proxies is skipped.
        let chain = forwarded_for(
            ForwardedHeader::XForwardedFor,
            ["203.0.113.9", "10.1.1.1"].into_iter(),
        );
        assert_eq!(trusted.client(ip("10.0.0.2"), &chain), ip("203.0.113.9"));
    }

    #[test]
    fn only_the_configured_header_counts_and_garbage_ends_the_list() {
        let parsed = forwarded_for(
            ForwardedHeader::Forwarded,
            [r#"for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711""#].into_iter(),
        );
        assert_eq!(parsed, vec![ip("192.0.2.60"), ip("2001:db8:cafe::17")]);
        let parsed = forwarded_for(
            ForwardedHeader::XForwardedFor,
            ["1.1.1.1, unknown, 2.2.2.2:80"].into_iter(),
        );
        assert_eq!(parsed, vec![ip("2.2.2.2")]);
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64() {
        assert_eq!(
            bucket(ip("2001:db8:1:2:aaaa::1")),
            bucket(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(bucket(ip("2001:db8:1:2::1")), bucket(ip("2001:db8:1:3::1")));
        assert_eq!(bucket(ip("::ffff:192.0.2.1")), "192.0.2.1");
    }
}
