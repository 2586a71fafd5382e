//! The DHCP server's ICMP address probe against the kernel's own echo replies, in a network
//! namespace this test creates (and removes): one end of a veth pair holds 16 addresses
//! that answer; other addresses of its /24 lead nowhere and stay silent. 96 probes at once (each
//! answering address twice, plus 64 silent ones) must all go through one raw socket,
//! each get its own answer, and a second round must reuse that socket.
//!
//! The prober runs in this test binary, so the binary runs itself inside the namespace
//! (`ip netns exec`) for the half that probes; it fails (never skips) without `ip` or root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ironpool_agents::dhcp::probe::{ProbeResult, Prober};
use ironpool_e2e::netlab::{Netns, require_tools};

/// Set for the half that runs inside the namespace.
const CHILD: &str = "IRONPOOL_PROBE_TEST_CHILD";
const TIMEOUT: Duration = Duration::from_millis(1500);

fn answering() -> impl Iterator<Item = Ipv4Addr> {
    (1..=16).map(|i| Ipv4Addr::new(10, 98, 0, i))
}

fn silent() -> impl Iterator<Item = Ipv4Addr> {
    (100..164).map(|i| Ipv4Addr::new(10, 98, 0, i))
}

#[test]
fn concurrent_probes_share_one_raw_socket_and_get_their_own_answers() {
    require_tools(&["ip"]).unwrap();
    let ns = Netns::new("probe").unwrap();
    // A veth pair inside the namespace: the far end has no address, so nothing answers ARP
    // for the silent addresses and their echo requests go nowhere.
    ns.ip(&[
        "link", "add", "probe0", "type", "veth", "peer", "name", "probe1",
    ])
    .unwrap();
    for dev in ["probe0", "probe1"] {
        ns.ip(&["link", "set", dev, "up"]).unwrap();
    }
    for (i, ip) in answering().enumerate() {
        let cidr = if i == 0 { "24" } else { "32" };
        ns.ip(&["addr", "add", &format!("{ip}/{cidr}"), "dev", "probe0"])
            .unwrap();
    }
    let out = ns
        .cmd(std::env::current_exe().unwrap())
        .args(["--exact", "probes_inside_the_namespace"])
        .args(["--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the probing half failed:\n{log}");
    assert!(
        log.contains("1 passed"),
        "the probing half did not run:\n{log}"
    );
}

/// Inodes of the raw ICMP sockets of this network namespace (`/proc/net/raw`: the
/// "port" of the local address is the protocol, 1 for ICMP).
fn raw_icmp_sockets() -> Vec<String> {
    std::fs::read_to_string("/proc/net/raw")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let protocol = fields.get(1)?.rsplit(':').next()?;
            (protocol == "0001").then(|| fields.get(9).map(|inode| inode.to_string()))?
        })
        .collect()
}

async fn round(prober: &Arc<Prober>) -> Vec<String> {
    let targets: Vec<(Ipv4Addr, ProbeResult)> = answering()
        .chain(answering())
        .map(|ip| (ip, ProbeResult::InUse))
        .chain(silent().map(|ip| (ip, ProbeResult::Free)))
        .collect();
    let started = Instant::now();
    let probes: Vec<_> = targets
        .iter()
        .map(|&(ip, _)| {
            let prober = prober.clone();
            tokio::spawn(async move { prober.probe(ip).await })
        })
        .collect();
    // The silent probes are all still waiting now.
    tokio::time::sleep(TIMEOUT / 3).await;
    let during = raw_icmp_sockets();
    for ((ip, want), probe) in targets.iter().zip(probes) {
        assert_eq!(probe.await.unwrap(), *want, "{ip}");
    }
    let took = started.elapsed();
    assert!(
        took < TIMEOUT * 2,
        "{} probes took {took:?}: they ran one after another",
        targets.len()
    );
    during
}

#[test]
#[ignore = "the half of the test above that runs inside its namespace"]
fn probes_inside_the_namespace() {
    assert!(
        std::env::var_os(CHILD).is_some(),
        "run by concurrent_probes_share_one_raw_socket_and_get_their_own_answers"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        assert_eq!(
            raw_icmp_sockets(),
            Vec::<String>::new(),
            "a fresh namespace"
        );
        let prober = Arc::new(Prober::new(TIMEOUT));
        let first = round(&prober).await;
        assert_eq!(
            first.len(),
            1,
            "raw ICMP sockets during 96 probes: {first:?}"
        );
        let second = round(&prober).await;
        assert_eq!(second, first, "the second round opened another socket");
        drop(prober);
        // The reader task lets go of the socket once the prober is gone.
        let mut left = raw_icmp_sockets();
        for _ in 0..50 {
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            left = raw_icmp_sockets();
        }
        assert_eq!(left, Vec::<String>::new(), "the socket outlived the prober");
    });
}
