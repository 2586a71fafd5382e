//! Validated configuration of the DHCP server: a served network built by a pure
//! `TryFrom<&SubnetSpec>`, reservations, server-wide settings and PXE boot settings.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ironpool_crds::subnet::SubnetSpec;

use super::{DhcpError, MacAddr};

/// One served IPv4 network, validated. Built from a Subnet's spec with `TryFrom`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetConfig {
    /// Name of the Subnet (for logs, metrics and events); empty until [`SubnetConfig::named`].
    pub name: String,
    /// Network address.
    pub network: Ipv4Addr,
    /// Prefix length, 0-32.
    pub prefix: u8,
    /// Default router (option 3).
    pub gateway: Option<Ipv4Addr>,
    /// DNS resolvers (option 6).
    pub dns: Vec<Ipv4Addr>,
    /// DNS domain (option 15).
    pub domain: Option<String>,
    /// Interface MTU (option 26).
    pub mtu: Option<u16>,
    /// Lease time in seconds (option 51); T1 = 1/2, T2 = 7/8 of it.
    pub lease_secs: u32,
    /// The dynamic range (inclusive), for MACs without a reservation.
    pub dynamic: Option<(Ipv4Addr, Ipv4Addr)>,
    /// Ranges never handed out.
    pub reserved: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// Whether network boot is served on this network.
    pub pxe: bool,
}

impl SubnetConfig {
    /// The same config with a name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The subnet mask (option 1).
    pub fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask_bits(self.prefix))
    }

    /// Whether `ip` lies inside the network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let m = mask_bits(self.prefix);
        u32::from(ip) & m == u32::from(self.network) & m
    }

    /// Whether `ip` lies in the dynamic range and outside every reserved range.
    pub fn in_dynamic(&self, ip: Ipv4Addr) -> bool {
        let inside = |(s, e): &(Ipv4Addr, Ipv4Addr)| *s <= ip && ip <= *e;
        self.dynamic.as_ref().is_some_and(inside) && !self.reserved.iter().any(inside)
    }

    /// Whether `ip` may be given to a client at all: inside the network, not the network or
    /// broadcast address, not the gateway, not reserved.
    pub fn assignable(&self, ip: Ipv4Addr) -> bool {
        let m = mask_bits(self.prefix);
        let host = u32::from(ip) & !m;
        let edge = self.prefix < 31 && (host == 0 || host == !m);
        self.contains(ip)
            && !edge
            && Some(ip) != self.gateway
            && !self.reserved.iter().any(|(s, e)| *s <= ip && ip <= *e)
    }
}

fn mask_bits(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

fn ip(field: &str, value: &str) -> Result<Ipv4Addr, DhcpError> {
    value.parse().map_err(|_| {
        DhcpError::Config(format!(
            "{field} '{value}' is not an IPv4 address; write it like 10.20.0.1"
        ))
    })
}

/// Parses a lease time like `1h`, `30m`, `1h30m`, `90s` into seconds.
pub fn parse_duration(text: &str) -> Result<u32, DhcpError> {
    let bad = || {
        DhcpError::Config(format!(
            "leaseTime '{text}' is not a duration; write it like 1h, 30m or 1h30m"
        ))
    };
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = total.saturating_add(n.saturating_mul(unit));
        digits.clear();
    }
    if !digits.is_empty() || total == 0 {
        return Err(bad());
    }
    u32::try_from(total).map_err(|_| bad())
}

impl TryFrom<&SubnetSpec> for SubnetConfig {
    type Error = DhcpError;

    fn try_from(spec: &SubnetSpec) -> Result<Self, Self::Error> {
        let (addr, len) = spec
            .cidr
            .split_once('/')
            .ok_or_else(|| DhcpError::Config(format!("cidr '{}' lacks a /prefix", spec.cidr)))?;
        let network = ip("cidr", addr)?;
        let prefix: u8 =
            len.parse().ok().filter(|p| *p <= 32).ok_or_else(|| {
                DhcpError::Config(format!("cidr '{}' has a bad prefix", spec.cidr))
            })?;
        let mut cfg = SubnetConfig {
            name: String::new(),
            network,
            prefix,
            gateway: spec
                .gateway
                .as_deref()
                .map(|g| ip("gateway", g))
                .transpose()?,
            dns: spec
                .dns_servers
                .iter()
                .map(|d| ip("dnsServers", d))
                .collect::<Result<_, _>>()?,
            domain: spec.domain.clone(),
            mtu: spec
                .mtu
                .map(|m| {
                    u16::try_from(m)
                        .ok()
                        .filter(|m| (576..=9216).contains(m))
                        .ok_or_else(|| {
                            DhcpError::Config(format!("mtu {m} must lie between 576 and 9216"))
                        })
                })
                .transpose()?,
            lease_secs: parse_duration(&spec.lease_time)?,
            dynamic: None,
            reserved: Vec::new(),
            pxe: spec.pxe,
        };
        if u32::from(network) & !mask_bits(prefix) != 0 {
            return Err(DhcpError::Config(format!(
                "cidr '{}' has host bits set; write the network address",
                spec.cidr
            )));
        }
        if let Some(g) = cfg.gateway.filter(|g| !cfg.contains(*g)) {
            return Err(DhcpError::Config(format!(
                "gateway {g} lies outside cidr {}",
                spec.cidr
            )));
        }
        for r in &spec.reserved_ranges {
            let range = (
                ip("reservedRanges start", &r.start)?,
                ip("reservedRanges end", &r.end)?,
            );
            check_range(&cfg, "reservedRanges entry", range)?;
            cfg.reserved.push(range);
        }
        if let Some(r) = &spec.dynamic_range {
            let range = (
                ip("dynamicRange start", &r.start)?,
                ip("dynamicRange end", &r.end)?,
            );
            check_range(&cfg, "dynamicRange", range)?;
            if cfg
                .reserved
                .iter()
                .any(|(s, e)| *s <= range.1 && range.0 <= *e)
            {
                return Err(DhcpError::Config(format!(
                    "dynamicRange {}-{} overlaps a reservedRanges entry; make them disjoint",
                    range.0, range.1
                )));
            }
            cfg.dynamic = Some(range);
        }
        Ok(cfg)
    }
}

fn check_range(
    cfg: &SubnetConfig,
    what: &str,
    (s, e): (Ipv4Addr, Ipv4Addr),
) -> Result<(), DhcpError> {
    if s > e || !cfg.contains(s) || !cfg.contains(e) {
        return Err(DhcpError::Config(format!(
            "{what} {s}-{e} must be ordered and lie inside {}/{}",
            cfg.network, cfg.prefix
        )));
    }
    Ok(())
}

/// A fixed address (and optional hostname) for one MAC, e.g. a known Machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The address the MAC always gets.
    pub ip: Ipv4Addr,
    /// Hostname handed out in option 12.
    pub hostname: Option<String>,
}

/// Reservations keyed by MAC.
pub type Reservations = HashMap<MacAddr, Reservation>;

/// Network boot settings: where the agent's TFTP and HTTP servers are and what files to hand
/// to each kind of firmware.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootConfig {
    /// Base URL of the agent's HTTP server, e.g. `http://10.20.0.5:8080` (no trailing slash).
    pub http_base: String,
    /// TFTP file for legacy BIOS PXE (arch 0).
    pub bios_file: String,
    /// TFTP file for x86-64 UEFI PXE (arch 7 and 9), `ipxe.efi` or `snponly.efi`.
    pub uefi_x64_file: String,
    /// TFTP file for arm64 UEFI PXE (arch 11).
    pub uefi_arm64_file: String,
}

impl BootConfig {
    /// Debian's `ipxe` file names, served from `http_base`.
    pub fn new(http_base: impl Into<String>) -> Self {
        BootConfig {
            http_base: http_base.into().trim_end_matches('/').to_string(),
            bios_file: "undionly.kpxe".into(),
            uefi_x64_file: "ipxe.efi".into(),
            uefi_arm64_file: "ipxe-arm64.efi".into(),
        }
    }
}

/// Server-wide settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// The server identifier (option 54) and next-server (siaddr): the agent's address on
    /// the provisioning network.
    pub server_ip: Ipv4Addr,
    /// How long an offered address is held for the client that was offered it, seconds.
    pub offer_secs: u32,
    /// How long a declined address stays out of the pool, seconds.
    pub quarantine_secs: u32,
    /// UDP port replies to relay agents go to (67; other values only for tests on loopback).
    pub relay_port: u16,
    /// UDP port replies to clients go to (68).
    pub client_port: u16,
    /// Network boot settings; `None` serves no boot options anywhere.
    pub boot: Option<BootConfig>,
}

impl ServerConfig {
    /// Defaults: offers held 30 s, declined addresses quarantined 10 min, standard ports.
    pub fn new(server_ip: Ipv4Addr) -> Self {
        ServerConfig {
            server_ip,
            offer_secs: 30,
            quarantine_secs: 600,
            relay_port: 67,
            client_port: 68,
            boot: None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::type_complexity)]
mod tests {
    use super::*;
    use ironpool_crds::common::IpRange;

    fn spec() -> SubnetSpec {
        serde_json::from_value(serde_json::json!({
            "cidr": "10.20.0.0/22", "gateway": "10.20.0.1", "dnsServers": ["10.20.0.2"],
            "domain": "rack1.example.internal", "mtu": 9000, "leaseTime": "1h30m",
            "dynamicRange": {"start": "10.20.3.0", "end": "10.20.3.250"},
            "reservedRanges": [{"start": "10.20.0.1", "end": "10.20.0.20"}]
        }))
        .unwrap()
    }

    #[test]
    fn converts_a_full_spec() {
        let c = SubnetConfig::try_from(&spec()).unwrap();
        assert_eq!(c.mask(), Ipv4Addr::new(255, 255, 252, 0));
        assert_eq!(c.lease_secs, 5400);
        assert_eq!(c.mtu, Some(9000));
        assert!(c.in_dynamic(Ipv4Addr::new(10, 20, 3, 7)));
        assert!(!c.in_dynamic(Ipv4Addr::new(10, 20, 3, 251)));
        assert!(!c.assignable(Ipv4Addr::new(10, 20, 0, 5)));
        assert!(c.assignable(Ipv4Addr::new(10, 20, 1, 5)));
        assert!(!c.assignable(Ipv4Addr::new(10, 20, 3, 255)));
    }

    #[test]
    fn rejects_bad_specs() {
        let cases: Vec<(&str, Box<dyn Fn(&mut SubnetSpec)>)> = vec![
            ("host bits", Box::new(|s| s.cidr = "10.20.0.5/22".into())),
            ("bad cidr", Box::new(|s| s.cidr = "10.20.0.0".into())),
            (
                "gateway outside",
                Box::new(|s| s.gateway = Some("10.9.0.1".into())),
            ),
            ("lease", Box::new(|s| s.lease_time = "1d".into())),
            ("mtu", Box::new(|s| s.mtu = Some(100))),
            (
                "overlap",
                Box::new(|s| {
                    s.reserved_ranges.push(IpRange {
                        start: "10.20.3.5".into(),
                        end: "10.20.3.6".into(),
                    })
                }),
            ),
            (
                "range outside",
                Box::new(|s| {
                    s.dynamic_range = Some(IpRange {
                        start: "10.20.3.0".into(),
                        end: "10.20.9.0".into(),
                    })
                }),
            ),
        ];
        for (name, mutate) in cases {
            let mut s = spec();
            mutate(&mut s);
            assert!(SubnetConfig::try_from(&s).is_err(), "{name} accepted");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h").unwrap(), 3600);
        assert_eq!(parse_duration("2m30s").unwrap(), 150);
        assert!(parse_duration("").is_err());
        assert!(parse_duration("10").is_err());
    }
}
