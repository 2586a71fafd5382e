//! Table tests of the pure address plan: validation, candidates, next free, counts, overlaps.

#![allow(clippy::unwrap_used)]

use super::*;

fn spec(cidr: &str) -> SubnetSpec {
    SubnetSpec {
        cidr: cidr.into(),
        gateway: None,
        dns_servers: vec![],
        domain: None,
        vlan: None,
        mtu: None,
        dynamic_range: None,
        reserved_ranges: vec![],
        lease_time: "1h".into(),
        pxe: true,
        agent_selector: None,
        interface: None,
    }
}

fn range(start: &str, end: &str) -> IpRange {
    IpRange {
        start: start.into(),
        end: end.into(),
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// 10.0.1.0/24, gateway .1, reserved .1-.9, dynamic .200-.250: static candidates are
/// .10-.199 and .251-.254.
fn lab() -> SubnetSpec {
    SubnetSpec {
        gateway: Some("10.0.1.1".into()),
        dynamic_range: Some(range("10.0.1.200", "10.0.1.250")),
        reserved_ranges: vec![range("10.0.1.1", "10.0.1.9")],
        ..spec("10.0.1.0/24")
    }
}

#[test]
fn invalid_specs_fail_with_messages_that_say_what_to_fix() {
    let cases: Vec<(SubnetSpec, &str)> = vec![
        (spec("10.0.1.0"), "is not an IPv4 network in CIDR notation"),
        (spec("10.0.1.0/33"), "is not an IPv4 network"),
        (spec("10.0.1.0/+24"), "is not an IPv4 network"),
        (spec("fd00::/64"), "is not an IPv4 network"),
        (
            spec("10.0.1.5/24"),
            "has host bits set; write the network address 10.0.1.0/24",
        ),
        (
            SubnetSpec {
                gateway: Some("10.0.1".into()),
                ..spec("10.0.1.0/24")
            },
            "Subnet gateway \"10.0.1\" is not an IPv4 address",
        ),
        (
            SubnetSpec {
                gateway: Some("10.0.2.1".into()),
                ..spec("10.0.1.0/24")
            },
            "gateway 10.0.2.1 is not a host address of cidr 10.0.1.0/24",
        ),
        (
            SubnetSpec {
                gateway: Some("10.0.1.255".into()),
                ..spec("10.0.1.0/24")
            },
            "gateway 10.0.1.255 is not a host address",
        ),
        (
            SubnetSpec {
                dynamic_range: Some(range("10.0.1.10", "10.0.2.5")),
                ..spec("10.0.1.0/24")
            },
            "Subnet dynamicRange 10.0.1.10-10.0.2.5 lies outside cidr 10.0.1.0/24",
        ),
        (
            SubnetSpec {
                reserved_ranges: vec![
                    range("10.0.1.1", "10.0.1.2"),
                    range("10.0.0.250", "10.0.1.3"),
                ],
                ..spec("10.0.1.0/24")
            },
            "reservedRanges[1] 10.0.0.250-10.0.1.3 lies outside cidr",
        ),
        (
            SubnetSpec {
                dynamic_range: Some(range("10.0.1.9", "10.0.1.3")),
                ..spec("10.0.1.0/24")
            },
            "dynamicRange 10.0.1.9-10.0.1.3 starts after it ends; swap start and end",
        ),
        (
            SubnetSpec {
                reserved_ranges: vec![range("10.0.1.x", "10.0.1.3")],
                ..spec("10.0.1.0/24")
            },
            "reservedRanges[0].start \"10.0.1.x\" is not an IPv4 address",
        ),
        (
            SubnetSpec {
                gateway: Some("10.0.1.100".into()),
                dynamic_range: Some(range("10.0.1.100", "10.0.1.200")),
                ..spec("10.0.1.0/24")
            },
            "gateway 10.0.1.100 lies inside dynamicRange 10.0.1.100-10.0.1.200",
        ),
        (
            SubnetSpec {
                dynamic_range: Some(range("10.0.1.100", "10.0.1.200")),
                reserved_ranges: vec![range("10.0.1.200", "10.0.1.210")],
                ..spec("10.0.1.0/24")
            },
            "dynamicRange 10.0.1.100-10.0.1.200 overlaps reservedRanges[0] 10.0.1.200-10.0.1.210; make them disjoint",
        ),
    ];
    for (spec, expected) in cases {
        let message = Pool::from_spec(&spec).unwrap_err().to_string();
        assert!(
            message.contains(expected),
            "{spec:?}: {message:?} lacks {expected:?}"
        );
    }
}

#[test]
fn static_candidates_exclude_network_broadcast_gateway_reserved_and_dynamic() {
    let pool = Pool::from_spec(&lab()).unwrap();
    let cases = [
        ("10.0.1.0", false),   // network
        ("10.0.1.1", false),   // gateway (also reserved)
        ("10.0.1.9", false),   // reserved
        ("10.0.1.10", true),   // first static
        ("10.0.1.199", true),  // last before dynamic
        ("10.0.1.200", false), // dynamic
        ("10.0.1.250", false), // dynamic
        ("10.0.1.251", true),
        ("10.0.1.254", true),
        ("10.0.1.255", false), // broadcast
        ("10.0.2.10", false),  // outside
        ("10.0.0.10", false),
    ];
    for (addr, expected) in cases {
        assert_eq!(pool.is_static_candidate(ip(addr)), expected, "{addr}");
    }
    assert!(pool.contains(ip("10.0.1.255")) && !pool.contains(ip("10.0.2.0")));
}

#[test]
fn gateway_outside_reserved_ranges_is_still_excluded() {
    let pool = Pool::from_spec(&SubnetSpec {
        gateway: Some("10.0.1.254".into()),
        ..spec("10.0.1.0/24")
    })
    .unwrap();
    assert!(!pool.is_static_candidate(ip("10.0.1.254")));
    assert_eq!(pool.static_capacity(), 253);
}

#[test]
fn tiny_prefixes_use_every_address() {
    let cases = [
        ("10.0.0.0/32", vec!["10.0.0.0"]),
        ("10.0.0.0/31", vec!["10.0.0.0", "10.0.0.1"]),
        ("10.0.0.0/30", vec!["10.0.0.1", "10.0.0.2"]),
    ];
    for (cidr, hosts) in cases {
        let pool = Pool::from_spec(&spec(cidr)).unwrap();
        let mut taken = BTreeSet::new();
        while let Some(next) = pool.next_free(&taken) {
            taken.insert(next);
        }
        let expected: BTreeSet<_> = hosts.iter().map(|h| ip(h)).collect();
        assert_eq!(taken, expected, "{cidr}");
        assert_eq!(pool.total_hosts(), hosts.len() as u64, "{cidr}");
    }
}

#[test]
fn next_free_is_the_lowest_untaken_candidate() {
    let pool = Pool::from_spec(&lab()).unwrap();
    let set = |v: &[&str]| v.iter().map(|s| ip(s)).collect::<BTreeSet<_>>();
    let all_low: Vec<String> = (10..=199).map(|i| format!("10.0.1.{i}")).collect();
    let all_low: Vec<&str> = all_low.iter().map(String::as_str).collect();
    let mut everything = all_low.clone();
    everything.extend(["10.0.1.251", "10.0.1.252", "10.0.1.253", "10.0.1.254"]);
    let cases: Vec<(Vec<&str>, Option<&str>)> = vec![
        (vec![], Some("10.0.1.10")),
        (vec!["10.0.1.10"], Some("10.0.1.11")),
        (vec!["10.0.1.10", "10.0.1.12"], Some("10.0.1.11")),
        (vec!["10.0.1.11", "10.0.1.99"], Some("10.0.1.10")),
        // Entries outside the pool do not matter.
        (
            vec!["10.0.1.1", "10.0.1.200", "192.168.0.1"],
            Some("10.0.1.10"),
        ),
        (all_low, Some("10.0.1.251")),
        (everything, None),
    ];
    for (taken, expected) in cases {
        assert_eq!(pool.next_free(&set(&taken)), expected.map(ip), "{taken:?}");
    }
}

#[test]
fn next_free_skips_ranges_at_the_edges_and_overlapping_reservations() {
    let spec = SubnetSpec {
        reserved_ranges: vec![
            range("10.0.0.1", "10.0.0.3"),
            range("10.0.0.2", "10.0.0.5"),
            range("10.0.0.6", "10.0.0.6"),
            range("10.0.0.0", "10.0.0.0"),
        ],
        dynamic_range: Some(range("10.0.0.9", "10.0.0.15")),
        ..spec("10.0.0.0/28")
    };
    let pool = Pool::from_spec(&spec).unwrap();
    let mut taken = BTreeSet::new();
    while let Some(next) = pool.next_free(&taken) {
        assert!(pool.is_static_candidate(next));
        taken.insert(next);
    }
    assert_eq!(taken, [ip("10.0.0.7"), ip("10.0.0.8")].into());
    assert_eq!(pool.static_capacity(), 2);
}

#[test]
fn counts_add_up() {
    let pool = Pool::from_spec(&lab()).unwrap();
    let counts = pool.counts(5, 7);
    assert_eq!(
        counts,
        AddressCounts {
            total: 254,
            reserved: 9,
            dynamic: 51,
            allocated: 12,
            free: 194 - 5
        }
    );
    assert_eq!(
        counts.total,
        counts.reserved + counts.dynamic + pool.static_capacity() as i64
    );
    // More allocations than capacity (e.g. after the spec shrank) never goes negative.
    assert_eq!(pool.counts(1000, 0).free, 0);

    let cases: Vec<(SubnetSpec, AddressCounts)> = vec![
        (
            spec("10.20.0.0/22"),
            AddressCounts {
                total: 1022,
                reserved: 0,
                dynamic: 0,
                allocated: 0,
                free: 1022,
            },
        ),
        (
            // The example Subnet of DESIGN.md: 1022 hosts, 20 reserved, 251 dynamic.
            SubnetSpec {
                gateway: Some("10.20.0.1".into()),
                dynamic_range: Some(range("10.20.3.0", "10.20.3.250")),
                reserved_ranges: vec![range("10.20.0.1", "10.20.0.20")],
                ..spec("10.20.0.0/22")
            },
            AddressCounts {
                total: 1022,
                reserved: 20,
                dynamic: 251,
                allocated: 0,
                free: 751,
            },
        ),
        (
            // A dynamic range that covers the network address counts only its hosts.
            SubnetSpec {
                dynamic_range: Some(range("10.0.0.0", "10.0.0.9")),
                ..spec("10.0.0.0/24")
            },
            AddressCounts {
                total: 254,
                reserved: 0,
                dynamic: 9,
                allocated: 0,
                free: 245,
            },
        ),
        (
            spec("0.0.0.0/0"),
            AddressCounts {
                total: (1 << 32) - 2,
                reserved: 0,
                dynamic: 0,
                allocated: 0,
                free: (1 << 32) - 2,
            },
        ),
    ];
    for (spec, expected) in cases {
        assert_eq!(
            Pool::from_spec(&spec).unwrap().counts(0, 0),
            expected,
            "{}",
            spec.cidr
        );
    }
}

#[test]
fn pool_accessors() {
    let pool = Pool::from_spec(&lab()).unwrap();
    assert_eq!(pool.network(), ip("10.0.1.0"));
    assert_eq!(pool.prefix(), 24);
    assert_eq!(pool.gateway(), Some(ip("10.0.1.1")));
    assert_eq!(
        pool.dynamic_range(),
        Some((ip("10.0.1.200"), ip("10.0.1.250")))
    );
    assert_eq!(pool.cidr(), "10.0.1.0/24");
}

#[test]
fn overlap_is_any_shared_address() {
    let cases = [
        ("10.0.0.0/24", "10.0.0.0/24", true),
        ("10.0.0.0/16", "10.0.5.0/24", true),
        ("10.0.5.0/24", "10.0.0.0/16", true),
        ("10.0.0.0/24", "10.0.1.0/24", false),
        ("10.0.0.0/23", "10.0.1.0/24", true),
        ("10.0.0.0/31", "10.0.0.2/31", false),
        ("0.0.0.0/0", "192.168.1.0/24", true),
        ("10.0.0.0/24", "not-a-cidr", false),
    ];
    for (a, b, expected) in cases {
        assert_eq!(overlaps(&spec(a), &spec(b)), expected, "{a} vs {b}");
    }
}

#[test]
fn find_overlaps_names_every_other_subnet() {
    let specs = [
        ("a", spec("10.0.0.0/16")),
        ("b", spec("10.0.1.0/24")),
        ("c", spec("10.0.2.0/24")),
        ("d", spec("192.168.0.0/24")),
        ("e", spec("10.0.1.128/25")),
    ];
    let input: Vec<(&str, &SubnetSpec)> = specs.iter().map(|(n, s)| (*n, s)).collect();
    let found = find_overlaps(&input);
    let expected: BTreeMap<String, Vec<String>> = [
        ("a", vec!["b", "c", "e"]),
        ("b", vec!["a", "e"]),
        ("c", vec!["a"]),
        ("e", vec!["a", "b"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(found, expected);
    assert!(find_overlaps(&[]).is_empty());
}
