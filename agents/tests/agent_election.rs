//! Two real agent processes against the real kube-apiserver contend for a Subnet's Lease:
//! exactly one serves it and names itself in `status.servedBy` (leaving the operator's
//! status fields alone); SIGKILL of the holder hands the Subnet to the standby within the
//! lease duration; SIGTERM clears servedBy and releases the Lease.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "agent_support.rs"]
mod agent_support;
#[path = "dhcp_support.rs"]
mod support;

use std::time::{Duration, Instant};

use agent_support::{TestNs, eventually};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use support::Proc;

async fn holder(ns: &TestNs, lease: &str) -> Option<String> {
    let api: Api<Lease> = Api::namespaced(ns.client.clone(), &ns.name);
    api.get_opt(lease)
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agent_serves_a_subnet_and_the_standby_takes_over() {
    let ns = TestNs::new("agent-lease").await;
    ns.subnet("prov", "10.88.0").await;
    // A field another writer owns must survive the agent's servedBy writes.
    ns.subnet_status_as(
        "prov",
        "ironpool-operator",
        serde_json::json!({"addresses": {"total": 254, "reserved": 0, "dynamic": 51, "allocated": 0, "free": 203}}),
    )
    .await;
    let (a, b) = (format!("{}-a", ns.name), format!("{}-b", ns.name));
    let mut procs = [
        (a.clone(), Some(Proc::spawn(ns.agent(&a, &["--no-dhcp"])))),
        (b.clone(), Some(Proc::spawn(ns.agent(&b, &["--no-dhcp"])))),
    ];

    let first = eventually(Duration::from_secs(30), "servedBy set", || {
        ns.served_by("prov")
    })
    .await;
    assert!(first == a || first == b, "servedBy names {first}");
    assert_eq!(
        holder(&ns, "ironpool-subnet-prov").await.as_deref(),
        Some(first.as_str())
    );
    // Exactly one: it stays with the first holder while both run.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(ns.served_by("prov").await.as_deref(), Some(first.as_str()));
        assert_eq!(
            holder(&ns, "ironpool-subnet-prov").await.as_deref(),
            Some(first.as_str())
        );
    }
    let status = ns.subnets().get("prov").await.unwrap().status.unwrap();
    assert_eq!(
        status.addresses.unwrap().total,
        254,
        "operator-owned status was kept"
    );

    // SIGKILL the holder: the standby takes over within the lease duration (4 s) plus its
    // retry period and the observation of one unchanged record.
    let idx = procs.iter().position(|(n, _)| *n == first).unwrap();
    let killed = Instant::now();
    drop(procs[idx].1.take());
    let second = eventually(Duration::from_secs(20), "standby takes over", || async {
        ns.served_by("prov").await.filter(|h| *h != first)
    })
    .await;
    let took = killed.elapsed();
    eprintln!("standby {second} took over {took:?} after SIGKILL");
    assert!(took < Duration::from_secs(4 + 4), "takeover took {took:?}");
    assert_eq!(
        holder(&ns, "ironpool-subnet-prov").await.as_deref(),
        Some(second.as_str())
    );

    // SIGTERM the survivor: it stops, clears servedBy and releases the Lease.
    let survivor = procs[1 - idx].1.as_mut().unwrap();
    survivor.signal("TERM");
    let stopped = Instant::now();
    let status = loop {
        if let Some(s) = survivor.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "agent did not exit on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "agent exit status {status}");
    eprintln!("agent exited {:?} after SIGTERM", stopped.elapsed());
    assert_eq!(
        ns.served_by("prov").await,
        None,
        "servedBy cleared on shutdown"
    );
    assert_eq!(
        holder(&ns, "ironpool-subnet-prov").await,
        None,
        "Lease released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_loses_its_lease_stops_serving_at_once_and_contends_again() {
    let ns = TestNs::new("agent-steal").await;
    ns.subnet("prov", "10.87.0").await;
    let node = format!("{}-a", ns.name);
    let agent = Proc::spawn(ns.agent(&node, &["--no-dhcp"]));
    let line = agent.expect_line("metrics listening", Duration::from_secs(30));
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap()
        .to_string();
    let get = |path: &str| {
        let out = std::process::Command::new("curl")
            .args(["-s", "--max-time", "5", &format!("http://{addr}{path}")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(get("/healthz"), "ok");
    eventually(Duration::from_secs(30), "servedBy set", || async {
        ns.served_by("prov").await.filter(|h| *h == node)
    })
    .await;
    eventually(Duration::from_secs(10), "/readyz ok", || async {
        (get("/readyz") == "ok").then_some(())
    })
    .await;
    let metrics = get("/metrics");
    assert!(metrics.contains("ironpool_agent_enlisted"), "{metrics}");
    // Another identity takes the Lease (as a partitioned peer would after expiry).
    let api: Api<Lease> = Api::namespaced(ns.client.clone(), &ns.name);
    let mut lease = api.get("ironpool-subnet-prov").await.unwrap();
    let spec = lease.spec.as_mut().unwrap();
    spec.holder_identity = Some("thief".into());
    spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    api.replace("ironpool-subnet-prov", &Default::default(), &lease)
        .await
        .unwrap();
    let stolen = Instant::now();
    agent.expect_line("lost the Subnet Lease", Duration::from_secs(5));
    eprintln!("loss noticed {:?} after the steal", stolen.elapsed());
    // The thief never renews: the agent takes the Subnet back after the lease duration.
    agent.expect_line("holding the Subnet Lease", Duration::from_secs(15));
    assert_eq!(
        holder(&ns, "ironpool-subnet-prov").await.as_deref(),
        Some(node.as_str())
    );
}
