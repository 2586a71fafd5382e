//! Ironpool as users install it: `helm install` of the chart onto a real node (containerd
//! and kubelet built from their Go modules, see `ironpool_e2e::node`), the images imported
//! from `e2e/scripts/build-images.sh` with no registry, and only the chart's RBAC.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use ironpool_e2e::{
    ControlPlane, chart,
    cluster::kubectl_ok,
    node::{Cluster, Images},
    prometheus::{Prometheus, ScrapeJob},
};

const NAMESPACE: &str = "ironpool-system";
const RELEASE: &str = "ironpool";
const OPERATOR: &str = "ironpool-operator";
const AGENT: &str = "ironpool-agent";

fn kubectl(cp: &ControlPlane, args: &[&str]) -> String {
    kubectl_ok(cp.kubectl().args(args))
        .unwrap_or_else(|error| panic!("kubectl {args:?}: {error:#}"))
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `timeout` with `what`.
fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for a rollout; on a timeout, panics with what the pods, events and kubelet say.
fn rollout(cluster: &Cluster, what: &str) {
    let cp = &cluster.control_plane;
    let status = kubectl_ok(cp.kubectl().args([
        "-n",
        NAMESPACE,
        "rollout",
        "status",
        what,
        "--timeout=240s",
    ]));
    if let Err(error) = status {
        let pods = kubectl_ok(cp.kubectl().args(["-n", NAMESPACE, "describe", "pods"]))
            .unwrap_or_default();
        let events =
            kubectl_ok(
                cp.kubectl()
                    .args(["get", "events", "-A", "--sort-by=.lastTimestamp"]),
            )
            .unwrap_or_default();
        let kubelet = std::fs::read_to_string(cluster.node.kubelet_log()).unwrap_or_default();
        let tail: Vec<&str> = kubelet.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "{what}: {error:#}\n--- pods ---\n{pods}\n--- events ---\n{events}\n--- kubelet ---\n{}",
            tail.join("\n")
        );
    }
}

fn operator_pods(cp: &ControlPlane) -> Vec<(String, String)> {
    kubectl(
        cp,
        &[
            "-n",
            NAMESPACE,
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/component=operator",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type==\"Ready\")].status} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
        ],
    )
    .lines()
    .filter_map(|line| {
        let mut fields = line.split_whitespace();
        Some((fields.next()?.to_owned(), fields.next()?.to_owned()))
    })
    .collect()
}

fn leader(cp: &ControlPlane) -> String {
    kubectl(
        cp,
        &[
            "-n",
            NAMESPACE,
            "get",
            "lease",
            OPERATOR,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
    )
}

/// Sockets listening in the node's network namespace: `(protocol, port, process)`.
fn listening(cluster: &Cluster) -> Vec<(String, u16, String)> {
    let out = cluster
        .node
        .netns()
        .exec(&["ss", "-H", "-l", "-n", "-u", "-t", "-p"])
        .unwrap();
    out.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = fields.get(4)?.rsplit(':').next()?.parse().ok()?;
            let process = line.split("((\"").nth(1)?.split('"').next()?.to_owned();
            Some((fields[0].to_owned(), port, process))
        })
        .collect()
}

fn curl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn helm_install_runs_the_operator_and_the_agent_on_a_real_node() {
    let images = Images::ensure().unwrap();
    let cluster = Cluster::start("node-a", &[("ironpool.dev/provisioning", "true")]).unwrap();
    let node = &cluster.node;
    let cp = &cluster.control_plane;
    node.import_images(&images).unwrap();
    // The agent's hostPath volumes stay inside the node's directory.
    let journal = format!(
        "agent.journalHostPath={}",
        node.host_path("journal").unwrap().display()
    );
    let cache = format!(
        "agent.imageCache.hostPath={}",
        node.host_path("image-cache").unwrap().display()
    );
    let started = Instant::now();
    chart::install(cp, RELEASE, NAMESPACE, &[&journal, &cache]).unwrap();
    rollout(&cluster, &format!("deployment/{OPERATOR}"));
    rollout(&cluster, &format!("daemonset/{AGENT}"));
    eprintln!(
        "helm install -> every pod Ready in {:.1?}",
        started.elapsed()
    );

    // Two operator replicas Ready (their /readyz), exactly one holding the Lease.
    let pods = operator_pods(cp);
    assert_eq!(pods.len(), 2, "{pods:?}");
    assert!(pods.iter().all(|(_, ready)| ready == "True"), "{pods:?}");
    let first = wait_for("a leader", Duration::from_secs(60), || {
        let holder = leader(cp);
        pods.iter()
            .any(|(name, _)| *name == holder)
            .then_some(holder)
    });

    // A real Prometheus scrapes every pod's /metrics at its pod address (the agent's is
    // the node's: hostNetwork), and Ironpool's series arrive from each of them.
    let operator_targets: Vec<String> = kubectl(
        cp,
        &[
            "-n",
            NAMESPACE,
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/component=operator",
            "-o",
            "jsonpath={range .items[*]}{.status.podIP}{\"\\n\"}{end}",
        ],
    )
    .lines()
    .map(|ip| format!("{ip}:8080"))
    .collect();
    assert_eq!(operator_targets.len(), 2, "{operator_targets:?}");
    let agent_target = format!("{}:9090", node.ip());
    let targets: Vec<&str> = operator_targets.iter().map(String::as_str).collect();
    let prometheus = Prometheus::start(
        node.dir(),
        &[
            ScrapeJob::new("ironpool-operator", &targets),
            ScrapeJob::new("ironpool-agent", &[&agent_target]),
        ],
    )
    .unwrap();
    prometheus
        .wait_for_targets(Duration::from_secs(60))
        .unwrap();
    let per_instance = wait_for(
        "ironpool_* series from every pod",
        Duration::from_secs(60),
        || {
            let data = prometheus
                .query("count by (job, instance) ({__name__=~\"ironpool_.+\"})")
                .ok()?;
            let rows = data["result"].as_array()?.clone();
            (rows.len() == 3).then_some(rows)
        },
    );
    let names = prometheus.series_names("ironpool_").unwrap();
    for expected in ["ironpool_leader", "ironpool_machines"] {
        assert!(names.contains(expected), "{expected} in {names:?}");
    }
    eprintln!(
        "Prometheus scraped {} ironpool_* metric names from {} pods",
        names.len(),
        per_instance.len()
    );
    // The chart's Grafana dashboard: every query is one this Prometheus accepts, and every
    // metric it reads is a family the pods' /metrics really export (with its type's suffix).
    let mut families = std::collections::BTreeMap::new();
    for target in targets.iter().copied().chain([agent_target.as_str()]) {
        let text = String::from_utf8(curl(&[&format!("http://{target}/metrics")])).unwrap();
        families.extend(ironpool_e2e::dashboard::families(&text));
    }
    let dashboard = ironpool_e2e::dashboard::load().unwrap();
    let missing = ironpool_e2e::dashboard::unexported(&dashboard, &families);
    assert!(
        missing.is_empty(),
        "dashboard queries read metrics no pod exports:\n{}",
        missing.join("\n")
    );
    let queries = ironpool_e2e::dashboard::queries(&dashboard);
    for (title, expr) in &queries {
        if let Err(e) = prometheus.query(&ironpool_e2e::dashboard::for_prometheus(expr)) {
            panic!("dashboard panel {title:?}: Prometheus refuses {expr}: {e:#}");
        }
    }
    eprintln!(
        "dashboard: {} queries, all accepted by Prometheus, over {} exported families",
        queries.len(),
        families.len()
    );
    drop(prometheus);

    // The agent (hostNetwork) binds DHCP and TFTP, HTTP boot and metrics on the node, and
    // serves iPXE from the boot-assets image volume.
    let sockets = listening(&cluster);
    for (protocol, port) in [("udp", 67), ("udp", 69), ("tcp", 8080), ("tcp", 9090)] {
        assert!(
            sockets
                .iter()
                .any(|(p, n, process)| p == protocol && *n == port && process == AGENT),
            "the agent does not listen on {port}/{protocol}: {sockets:?}"
        );
    }
    let ip = node.ip().to_string();
    let ipxe = curl(&[&format!("tftp://{ip}/undionly.kpxe")]);
    assert_eq!(
        ipxe,
        std::fs::read("/usr/lib/ipxe/undionly.kpxe").unwrap(),
        "TFTP undionly.kpxe"
    );
    let metrics = String::from_utf8(curl(&[&format!("http://{ip}:9090/metrics")])).unwrap();
    assert!(metrics.contains("ironpool_"), "agent /metrics: {metrics}");

    // A Subnet for agents on provisioning nodes: the operator pod names this node a
    // candidate from its labels, and the agent pod (which may read no Node at all) serves it.
    let subnet = serde_json::json!({
        "apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Subnet",
        "metadata": {"name": "prov", "namespace": "default"},
        "spec": {"cidr": "10.99.0.0/24", "leaseTime": "1h",
                 "dynamicRange": {"start": "10.99.0.100", "end": "10.99.0.200"},
                 "agentSelector": {"matchLabels": {"ironpool.dev/provisioning": "true"}}},
    });
    let subnet_file = node.dir().join("subnet.json");
    std::fs::write(&subnet_file, subnet.to_string()).unwrap();
    kubectl_ok(cp.kubectl().args(["apply", "-f"]).arg(&subnet_file)).unwrap();
    wait_for(
        "the agent pod to serve the Subnet",
        Duration::from_secs(60),
        || {
            let out = kubectl(
                cp,
                &["get", "subnet", "prov", "-n", "default", "-o", "json"],
            );
            let s: serde_json::Value = serde_json::from_str(&out).unwrap();
            (s["status"]["candidateNodes"] == serde_json::json!([node.name()])
                && s["status"]["servedBy"]["agent"] == node.name())
            .then_some(())
        },
    );
    let agent_sa = format!("system:serviceaccount:{NAMESPACE}:{AGENT}");
    for verb in ["get", "list", "watch"] {
        let target = if verb == "get" {
            format!("nodes/{}", node.name())
        } else {
            "nodes".to_owned()
        };
        let out = cp
            .kubectl()
            .args(["auth", "can-i", verb, &target, "--as", &agent_sa])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "no",
            "the agent may not {verb} {target}"
        );
    }
    kubectl(cp, &["delete", "subnet", "prov", "-n", "default"]);

    // Delete the leader: it releases the Lease on SIGTERM, and another replica takes it
    // (usually the standby; the Deployment's replacement pod may win the race).
    let deleted = Instant::now();
    kubectl(
        cp,
        &["-n", NAMESPACE, "delete", "pod", &first, "--wait=false"],
    );
    let next = wait_for(
        "another replica to take the Lease",
        Duration::from_secs(90),
        || {
            let holder = leader(cp);
            (!holder.is_empty() && holder != first).then_some(holder)
        },
    );
    let standby = pods.iter().any(|(name, _)| *name == next);
    eprintln!(
        "operator failover (delete the leader pod -> {} holds the Lease): {:.1?}",
        if standby {
            "the standby"
        } else {
            "the replacement pod"
        },
        deleted.elapsed()
    );
    rollout(&cluster, &format!("deployment/{OPERATOR}"));

    // helm upgrade with a changed value rolls the operator pods.
    let before: Vec<String> = operator_pods(cp)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let mut upgrade = chart::helm(cp).unwrap();
    upgrade
        .args(["upgrade", RELEASE])
        .arg(chart::chart_dir())
        .args([
            "-n",
            NAMESPACE,
            "--reuse-values",
            "--set",
            "operator.concurrency=8",
        ]);
    kubectl_ok(&mut upgrade).unwrap();
    rollout(&cluster, &format!("deployment/{OPERATOR}"));
    let after = wait_for(
        "the old operator pods to go",
        Duration::from_secs(60),
        || {
            let pods = operator_pods(cp);
            (pods.len() == 2).then_some(pods)
        },
    );
    assert!(
        after.iter().all(|(name, _)| !before.contains(name)),
        "{before:?} -> {after:?}"
    );
    let args = kubectl(
        cp,
        &[
            "-n",
            NAMESPACE,
            "get",
            "deployment",
            OPERATOR,
            "-o",
            "jsonpath={.spec.template.spec.containers[0].args}",
        ],
    );
    assert!(args.contains("--concurrency=8"), "{args}");

    // helm uninstall removes every Ironpool pod; the CRDs stay, as Helm does with crds/.
    let mut uninstall = chart::helm(cp).unwrap();
    uninstall.args([
        "uninstall",
        RELEASE,
        "-n",
        NAMESPACE,
        "--wait",
        "--timeout=120s",
    ]);
    kubectl_ok(&mut uninstall).unwrap();
    wait_for("no Ironpool pods", Duration::from_secs(120), || {
        kubectl(cp, &["-n", NAMESPACE, "get", "pods", "-o", "name"])
            .trim()
            .is_empty()
            .then_some(())
    });
    let crds = kubectl(cp, &["get", "crd", "-o", "name"]);
    for crd in ["machines", "subnets", "deployments"] {
        assert!(
            crds.contains(&format!("{crd}.metal.ironpool.dev")),
            "{crds}"
        );
    }
}
