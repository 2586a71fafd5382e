//! IPv4 address management for Subnets: which addresses a Subnet hands out statically, the
//! lowest free one, address counts and overlap checks (pure), and claiming and releasing
//! addresses in `Subnet.status.allocations` against the apiserver ([`claim`], [`release`]).
//!
//! The static pool of a Subnet is every usable host address of its cidr (network and
//! broadcast excluded for prefixes below /31) except the gateway, the reservedRanges and the
//! dynamicRange. `status.allocations` is the only record of which static address belongs to
//! which Deployment; nothing is kept in memory.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ironpool_crds::IpRange;
use ironpool_crds::subnet::{AddressCounts, SubnetSpec};

mod claims;
#[cfg(test)]
mod tests;

pub use claims::{FIELD_MANAGER, claim, release};

/// What went wrong in address management; each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// `spec.cidr` does not parse as an IPv4 network.
    #[error(
        "Subnet cidr {cidr:?} is not an IPv4 network in CIDR notation; write it like 10.20.0.0/22"
    )]
    InvalidCidr {
        /// The cidr as written.
        cidr: String,
    },
    /// `spec.cidr` has bits set after the prefix.
    #[error("Subnet cidr {cidr} has host bits set; write the network address {network}/{prefix}")]
    HostBitsSet {
        /// The cidr as written.
        cidr: String,
        /// The network address it probably means.
        network: Ipv4Addr,
        /// Its prefix length.
        prefix: u8,
    },
    /// An address field does not parse as IPv4.
    #[error("Subnet {field} {value:?} is not an IPv4 address; write it like 10.20.0.1")]
    InvalidAddress {
        /// The field, e.g. `gateway` or `reservedRanges[2].start`.
        field: String,
        /// The value as written.
        value: String,
    },
    /// A range whose start comes after its end.
    #[error("Subnet {field} {start}-{end} starts after it ends; swap start and end")]
    RangeReversed {
        /// The field, e.g. `dynamicRange`.
        field: String,
        /// First address as written.
        start: Ipv4Addr,
        /// Last address as written.
        end: Ipv4Addr,
    },
    /// A range that is not entirely inside the cidr.
    #[error(
        "Subnet {field} {start}-{end} lies outside cidr {cidr}; move it inside the network or widen cidr"
    )]
    RangeOutsideCidr {
        /// The field, e.g. `reservedRanges[0]`.
        field: String,
        /// First address of the range.
        start: Ipv4Addr,
        /// Last address of the range.
        end: Ipv4Addr,
        /// The Subnet's cidr.
        cidr: String,
    },
    /// The gateway is not a usable host address of the cidr.
    #[error(
        "Subnet gateway {gateway} is not a host address of cidr {cidr}; pick an address inside it (not the network or broadcast address)"
    )]
    GatewayOutsideCidr {
        /// The gateway.
        gateway: Ipv4Addr,
        /// The Subnet's cidr.
        cidr: String,
    },
    /// The gateway lies inside the dynamic range, which would hand it out to a machine.
    #[error(
        "Subnet gateway {gateway} lies inside dynamicRange {start}-{end}; the range would hand it out to a machine, so move one of them"
    )]
    GatewayInDynamicRange {
        /// The gateway.
        gateway: Ipv4Addr,
        /// First address of the dynamic range.
        start: Ipv4Addr,
        /// Last address of the dynamic range.
        end: Ipv4Addr,
    },
    /// The dynamic range and a reserved range share addresses.
    #[error("Subnet dynamicRange {start}-{end} overlaps {field}; make them disjoint")]
    DynamicOverlapsReserved {
        /// First address of the dynamic range.
        start: Ipv4Addr,
        /// Last address of the dynamic range.
        end: Ipv4Addr,
        /// The reserved range, e.g. `reservedRanges[1]`.
        field: String,
    },
    /// Every static candidate address is allocated.
    #[error(
        "Subnet {subnet} has no free static address: {in_use} of {capacity} in use; widen cidr or shrink dynamicRange/reservedRanges"
    )]
    Exhausted {
        /// Name of the Subnet.
        subnet: String,
        /// Static addresses allocated.
        in_use: u64,
        /// Size of the static pool.
        capacity: u64,
    },
    /// The Subnet does not exist.
    #[error(
        "Subnet {subnet} not found in namespace {namespace}; create it or fix the Deployment's subnetRef"
    )]
    SubnetNotFound {
        /// Name of the Subnet.
        subnet: String,
        /// Its namespace.
        namespace: String,
    },
    /// The Subnet's spec does not describe a usable pool.
    #[error("Subnet {subnet} in namespace {namespace}: {source}")]
    InvalidSubnet {
        /// Name of the Subnet.
        subnet: String,
        /// Its namespace.
        namespace: String,
        /// What is wrong with the spec.
        #[source]
        source: Box<IpamError>,
    },
    /// An entry of `status.allocations` holds something that is not an IPv4 address.
    #[error(
        "Subnet {subnet} lists address {address:?} for Deployment {deployment} in status.allocations, which is not an IPv4 address; fix or remove the entry (kubectl edit --subresource=status)"
    )]
    CorruptAllocation {
        /// Name of the Subnet.
        subnet: String,
        /// The address as stored.
        address: String,
        /// The Deployment it names.
        deployment: String,
    },
    /// Other writers kept changing the Subnet between our read and our write.
    #[error(
        "Subnet {subnet}: gave up after {attempts} conflicting writes to status.allocations; other writers are busy, retry later"
    )]
    Contention {
        /// Name of the Subnet.
        subnet: String,
        /// Writes attempted.
        attempts: u32,
    },
    /// The release was applied but the entry is still there.
    #[error(
        "Subnet {subnet}: the entry of Deployment {deployment} is still in status.allocations after release, so another field manager also owns it; remove it by hand (kubectl edit --subresource=status) and write allocations only as {FIELD_MANAGER}"
    )]
    ReleaseBlocked {
        /// Name of the Subnet.
        subnet: String,
        /// The Deployment whose entry stayed.
        deployment: String,
    },
    /// A request to the apiserver failed.
    #[error(
        "Subnet {subnet}: {action} failed: {source}; check that the apiserver is reachable and that the operator may get subnets and patch subnets/status"
    )]
    Api {
        /// Name of the Subnet.
        subnet: String,
        /// What was being done, e.g. `reading the Subnet`.
        action: &'static str,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

/// An inclusive range of addresses as integers, `(first, last)`.
type Span = (u32, u32);

/// The address plan of one Subnet, validated: which addresses are usable hosts, which are
/// kept out of static allocation, and which remain static candidates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    cidr: String,
    network: Ipv4Addr,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
    dynamic: Option<Span>,
    /// Usable hosts, `(first, last)`.
    hosts: Span,
    /// Reserved ranges plus the gateway, merged and clipped to `hosts`.
    reserved: Vec<Span>,
    /// `reserved` plus the dynamic range, merged and clipped to `hosts`.
    excluded: Vec<Span>,
}

impl Pool {
    /// Validates a Subnet's addressing and builds its pool. The apiserver's CEL rules check
    /// the same things; this repeats them so a bad object still fails with a clear message.
    pub fn from_spec(spec: &SubnetSpec) -> Result<Pool, IpamError> {
        let (network, prefix) = parse_cidr(&spec.cidr)?;
        let cidr = spec.cidr.clone();
        let net = u32::from(network);
        let broadcast = net | host_mask(prefix);
        let hosts = match prefix {
            32 => (net, net),
            31 => (net, broadcast),
            _ => (net + 1, broadcast - 1),
        };
        let inside = |field: String, (start, end): Span| {
            if start < net || end > broadcast {
                Err(IpamError::RangeOutsideCidr {
                    field,
                    start: start.into(),
                    end: end.into(),
                    cidr: cidr.clone(),
                })
            } else {
                Ok((start, end))
            }
        };
        let gateway = match &spec.gateway {
            None => None,
            Some(g) => {
                let g = parse_ip("gateway", g)?;
                if !within(u32::from(g), hosts) {
                    return Err(IpamError::GatewayOutsideCidr {
                        gateway: g,
                        cidr: cidr.clone(),
                    });
                }
                Some(g)
            }
        };
        let dynamic = match &spec.dynamic_range {
            None => None,
            Some(r) => Some(inside(
                "dynamicRange".into(),
                parse_range("dynamicRange", r)?,
            )?),
        };
        let mut reserved_ranges = Vec::with_capacity(spec.reserved_ranges.len());
        for (i, r) in spec.reserved_ranges.iter().enumerate() {
            let field = format!("reservedRanges[{i}]");
            let span = inside(field.clone(), parse_range(&field, r)?)?;
            if let Some(d) = dynamic.filter(|d| d.0 <= span.1 && span.0 <= d.1) {
                return Err(IpamError::DynamicOverlapsReserved {
                    start: d.0.into(),
                    end: d.1.into(),
                    field: format!("{field} {}-{}", r.start, r.end),
                });
            }
            reserved_ranges.push(span);
        }
        if let (Some(g), Some(d)) = (gateway, dynamic)
            && within(u32::from(g), d)
        {
            return Err(IpamError::GatewayInDynamicRange {
                gateway: g,
                start: d.0.into(),
                end: d.1.into(),
            });
        }
        reserved_ranges.extend(gateway.map(|g| (u32::from(g), u32::from(g))));
        let reserved = merge(reserved_ranges.clone(), hosts);
        reserved_ranges.extend(dynamic);
        let excluded = merge(reserved_ranges, hosts);
        Ok(Pool {
            cidr,
            network,
            prefix,
            gateway,
            dynamic,
            hosts,
            reserved,
            excluded,
        })
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length, 0-32.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The gateway, if the Subnet has one.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.gateway
    }

    /// The dynamic range, first and last address, if the Subnet has one.
    pub fn dynamic_range(&self) -> Option<(Ipv4Addr, Ipv4Addr)> {
        self.dynamic.map(|(s, e)| (s.into(), e.into()))
    }

    /// Whether `ip` lies inside the cidr (any address, network and broadcast included).
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & !host_mask(self.prefix) == u32::from(self.network)
    }

    /// Whether `ip` may be handed out as a static address: a host address of the cidr, not
    /// the gateway, not in a reserved range and not in the dynamic range.
    pub fn is_static_candidate(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        within(ip, self.hosts) && !self.excluded.iter().any(|&span| within(ip, span))
    }

    /// The lowest static candidate not in `taken`, or None when every one is taken.
    pub fn next_free(&self, taken: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let (first, last) = self.hosts;
        let mut next = Some(first);
        let mut excluded = self.excluded.iter().peekable();
        while let Some(ip) = next.filter(|&ip| ip <= last) {
            if let Some(&&(start, end)) = excluded.peek()
                && start <= ip
            {
                // Spans are sorted and clipped to hosts, so ip never passes a span unseen.
                excluded.next();
                next = end.checked_add(1);
                continue;
            }
            if !taken.contains(&Ipv4Addr::from(ip)) {
                return Some(ip.into());
            }
            next = ip.checked_add(1);
        }
        None
    }

    /// Number of usable host addresses in the cidr.
    pub fn total_hosts(&self) -> u64 {
        span_len(self.hosts)
    }

    /// Number of addresses that may be allocated statically.
    pub fn static_capacity(&self) -> u64 {
        self.total_hosts() - self.excluded.iter().copied().map(span_len).sum::<u64>()
    }

    /// Address counts for `Subnet.status.addresses`, given the number of static allocations
    /// and of active dynamic leases.
    pub fn counts(&self, static_allocated: usize, dynamic_in_use: usize) -> AddressCounts {
        let reserved = self.reserved.iter().copied().map(span_len).sum::<u64>();
        let dynamic = self.dynamic.map_or(0, |d| {
            merge(vec![d], self.hosts)
                .into_iter()
                .map(span_len)
                .sum::<u64>()
        });
        let allocated = static_allocated as u64 + dynamic_in_use as u64;
        let free = self
            .static_capacity()
            .saturating_sub(static_allocated as u64);
        AddressCounts {
            total: to_i64(self.total_hosts()),
            reserved: to_i64(reserved),
            dynamic: to_i64(dynamic),
            allocated: to_i64(allocated),
            free: to_i64(free),
        }
    }

    /// The cidr as written in the spec.
    pub fn cidr(&self) -> &str {
        &self.cidr
    }
}

/// Whether two Subnets' cidrs share any address. Specs whose cidr does not parse overlap
/// nothing (they fail validation on their own).
pub fn overlaps(a: &SubnetSpec, b: &SubnetSpec) -> bool {
    match (parse_cidr(&a.cidr), parse_cidr(&b.cidr)) {
        (Ok((na, pa)), Ok((nb, pb))) => {
            let mask = !host_mask(pa.min(pb));
            u32::from(na) & mask == u32::from(nb) & mask
        }
        _ => false,
    }
}

/// For Subnets of one namespace, given as `(name, spec)`: each Subnet whose cidr overlaps
/// another's, mapped to the sorted names of the Subnets it overlaps. Subnets that overlap
/// nothing are absent.
pub fn find_overlaps(subnets: &[(&str, &SubnetSpec)]) -> BTreeMap<String, Vec<String>> {
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (i, (name_a, a)) in subnets.iter().enumerate() {
        for (name_b, b) in &subnets[i + 1..] {
            if overlaps(a, b) {
                found
                    .entry(name_a.to_string())
                    .or_default()
                    .push(name_b.to_string());
                found
                    .entry(name_b.to_string())
                    .or_default()
                    .push(name_a.to_string());
            }
        }
    }
    for names in found.values_mut() {
        names.sort();
        names.dedup();
    }
    found
}

/// Parses `a.b.c.d/n`, requiring zero host bits.
fn parse_cidr(cidr: &str) -> Result<(Ipv4Addr, u8), IpamError> {
    let invalid = || IpamError::InvalidCidr { cidr: cidr.into() };
    let (addr, prefix) = cidr.split_once('/').ok_or_else(invalid)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| invalid())?;
    let prefix: u8 = match prefix.parse() {
        Ok(p) if p <= 32 && !prefix.starts_with('+') => p,
        _ => return Err(invalid()),
    };
    let network = Ipv4Addr::from(u32::from(addr) & !host_mask(prefix));
    if network != addr {
        return Err(IpamError::HostBitsSet {
            cidr: cidr.into(),
            network,
            prefix,
        });
    }
    Ok((network, prefix))
}

fn parse_ip(field: &str, value: &str) -> Result<Ipv4Addr, IpamError> {
    value.parse().map_err(|_| IpamError::InvalidAddress {
        field: field.into(),
        value: value.into(),
    })
}

fn parse_range(field: &str, range: &IpRange) -> Result<Span, IpamError> {
    let start = parse_ip(&format!("{field}.start"), &range.start)?;
    let end = parse_ip(&format!("{field}.end"), &range.end)?;
    if start > end {
        return Err(IpamError::RangeReversed {
            field: field.into(),
            start,
            end,
        });
    }
    Ok((start.into(), end.into()))
}

/// The host bits of a prefix: `/24` -> `0.0.0.255`.
fn host_mask(prefix: u8) -> u32 {
    u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0)
}

fn within(ip: u32, (start, end): Span) -> bool {
    start <= ip && ip <= end
}

fn span_len((start, end): Span) -> u64 {
    u64::from(end) - u64::from(start) + 1
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Clips spans to `bounds`, sorts them and merges overlapping or adjacent ones.
fn merge(mut spans: Vec<Span>, (low, high): Span) -> Vec<Span> {
    spans.retain(|&(s, e)| s <= high && e >= low);
    spans
        .iter_mut()
        .for_each(|s| *s = (s.0.max(low), s.1.min(high)));
    spans.sort_unstable();
    let mut merged: Vec<Span> = Vec::with_capacity(spans.len());
    for (s, e) in spans {
        match merged.last_mut() {
            Some(last) if u64::from(s) <= u64::from(last.1) + 1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}
