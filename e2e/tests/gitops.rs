//! Ironpool under GitOps: real Argo CD (its application controller and repo server, see
//! `ironpool_e2e::argocd`) syncs the chart onto a real node (as `node.rs` installs it with
//! helm) and then a directory of Ironpool objects, both from a local git repository, and
//! reads their health through the README's health checks.
//!
//! What only real hardware (or the QEMU lab) does is played here once: the commissioning
//! ramdisk's report of a hardware inventory. Everything else is the real operator and
//! agent: the agent cannot reach the Machine's BMC (an unused loopback port), so the deploy
//! that follows times out and the Deployment fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use ironpool_e2e::{
    ControlPlane,
    argocd::ArgoCd,
    cluster::kubectl_ok,
    node::{Cluster, Images},
};
use serde_json::{Value, json};

const NAMESPACE: &str = "ironpool-system";
const APP: &str = "ironpool";
const OPERATOR: &str = "ironpool-operator";
const AGENT: &str = "ironpool-agent";
const TOKEN_SECRET: &str = "ironpool-agent-token";
const DC_APP: &str = "datacenter-a";
const DC_NAMESPACE: &str = "datacenter-a";
const GROUP: &str = "metal.ironpool.dev";
/// How long an Application must stay Synced under repeated refreshes.
const NO_DRIFT_FOR: Duration = Duration::from_secs(30);
/// The operator's deploy timeout (short, so that the failure comes quickly).
const DEPLOY_TIMEOUT: &str = "30s";

fn kubectl(cp: &ControlPlane, args: &[&str]) -> String {
    kubectl_ok(cp.kubectl().args(args))
        .unwrap_or_else(|error| panic!("kubectl {args:?}: {error:#}"))
}

fn get_json(cp: &ControlPlane, args: &[&str]) -> Value {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&kubectl(cp, &all)).unwrap()
}

/// Polls `f` every 250 ms until it returns `Some`, or panics after `timeout` with `what`
/// and whatever `context` says then.
fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = f() {
            return value;
        }
        if started.elapsed() > timeout {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Refreshes `app` every few seconds for [`NO_DRIFT_FOR`] and asserts that every refresh
/// finds it Synced at the same revision (each refresh is waited for: the controller removes
/// the annotation when it has compared again).
fn assert_no_drift(argocd: &ArgoCd, app: &str) {
    // The revision after a first refresh: commits for other paths move `main` too.
    refresh_and_wait(argocd, app);
    let (_, _, status) = argocd.app_status(app).unwrap();
    let revision = status["sync"]["revision"].clone();
    let started = Instant::now();
    let mut refreshes = 0;
    while started.elapsed() < NO_DRIFT_FOR {
        std::thread::sleep(Duration::from_secs(3));
        refresh_and_wait(argocd, app);
        refreshes += 1;
        let (sync, _, status) = argocd.app_status(app).unwrap();
        let drift: Vec<String> = status["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["status"] != "Synced")
            .map(|r| format!("{}/{} {}", r["kind"], r["name"], r["status"]))
            .collect();
        assert_eq!(sync, "Synced", "{app} drifted: {drift:?}\n{status:#}");
        assert_eq!(
            status["sync"]["revision"], revision,
            "{app}: revision changed"
        );
    }
    eprintln!(
        "{app}: Synced through {refreshes} refreshes over {:.0?}",
        started.elapsed()
    );
}

/// Asks for a refresh of `app` and waits until the controller has done it (it removes the
/// annotation when it has compared again).
fn refresh_and_wait(argocd: &ArgoCd, app: &str) {
    argocd.refresh(app).unwrap();
    wait_for(
        &format!("Argo CD to refresh {app}"),
        Duration::from_secs(60),
        || {
            let a = argocd.application(app).ok()?;
            a["metadata"]["annotations"]["argocd.argoproj.io/refresh"]
                .is_null()
                .then_some(())
        },
        || argocd.log_tails(),
    );
}

/// Chart values as `node.rs` passes them (the agent's hostPaths inside the node's
/// directory), plus what GitOps needs: the agent token Secret made outside the chart
/// (Argo CD renders without cluster access, so the chart's generated one would change at
/// every render) and short operator timeouts.
fn chart_values(cluster: &Cluster) -> String {
    let node = &cluster.node;
    let values = json!({
        "agent": {
            "journalHostPath": node.host_path("journal").unwrap(),
            "imageCache": {"hostPath": node.host_path("image-cache").unwrap()},
            "tokenSecret": TOKEN_SECRET,
        },
        "operator": {"extraArgs": [
            format!("--deploy-timeout={DEPLOY_TIMEOUT}"),
            "--retries=0",
        ]},
    });
    // JSON is YAML.
    values.to_string()
}

/// The objects of one small datacenter, as a person would commit them: a provisioning
/// Subnet served by the node's agent, a Machine whose BMC nobody answers for (an unused
/// loopback port in the agent's network namespace), and a Deployment onto it. Defaults
/// (Subnet `pxe`, `leaseTime`; Machine `bootMode`, `architecture`; Deployment `erase`)
/// are left to the apiserver.
const SUBNET: &str = r#"apiVersion: metal.ironpool.dev/v1alpha1
kind: Subnet
metadata:
  name: prov
spec:
  cidr: 10.97.0.0/24
  dynamicRange: {start: 10.97.0.100, end: 10.97.0.200}
  agentSelector:
    matchLabels:
      ironpool.dev/provisioning: "true"
"#;

const MACHINE: &str = r#"apiVersion: v1
kind: Secret
metadata:
  name: m1-bmc
type: Opaque
stringData:
  username: admin
  password: password
---
apiVersion: metal.ironpool.dev/v1alpha1
kind: Machine
metadata:
  name: m1
  labels:
    ironpool.dev/pool: gitops
spec:
  bmc:
    address: redfish+http://127.0.0.1:9/redfish/v1/Systems/1
    credentialsSecretRef: {name: m1-bmc}
  bootMACAddress: "52:54:00:9a:00:01"
"#;

const DEPLOYMENT: &str = r#"apiVersion: metal.ironpool.dev/v1alpha1
kind: Deployment
metadata:
  name: web-1
spec:
  machineRef: {name: m1}
  image:
    url: http://images.example.invalid/os.raw
    checksum: sha256:9f2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccddeeff001
    format: raw
  hostname: web-1
  subnetRef: {name: prov}
"#;

/// Plays the commissioning ramdisk once: the hardware inventory and a Succeeded report for
/// the Machine's current boot intent, written as the agent writes what a ramdisk reports
/// (server-side apply to /status, one field manager per field).
fn report_inventory(cp: &ControlPlane, dir: &std::path::Path, attempt: i64) {
    let now = utc_now();
    let base = |status: Value| {
        json!({"apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Machine",
               "metadata": {"name": "m1", "namespace": DC_NAMESPACE}, "status": status})
    };
    // As the agent writes an inventory: the MachineInventory, then its summary in status.
    let inventory = json!({"apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "MachineInventory",
    "metadata": {"name": "m1", "namespace": DC_NAMESPACE},
    "spec": {"hardware": {
        "cpu": {"cores": 8, "threads": 16, "model": "e2e CPU"},
        "memoryBytes": 34359738368i64, "memory": "32Gi",
        "disks": [{"name": "vda", "sizeBytes": 107374182400i64, "type": "SSD"}],
        "nics": [{"name": "eth0", "mac": "52:54:00:9a:00:01"}],
    }}});
    let file = dir.join("inventory.json");
    std::fs::write(&file, inventory.to_string()).unwrap();
    kubectl_ok(
        cp.kubectl()
            .args([
                "apply",
                "--server-side",
                "--field-manager=ironpool-agent-hardware",
                "-f",
            ])
            .arg(&file),
    )
    .unwrap();
    let hardware = base(json!({"inventory": {
        "inventoryRef": {"name": "m1"}, "cores": 8, "threads": 16,
        "memoryBytes": 34359738368i64, "memory": "32Gi",
        "diskCount": 1, "largestDiskBytes": 107374182400i64,
        "totalDiskBytes": 107374182400i64, "nicCount": 1,
    }}));
    let provisioning = base(json!({"provisioning": {
        "attempt": attempt, "step": "Succeeded", "updatedAt": now,
    }}));
    for (manager, object) in [
        ("ironpool-agent-hardware", hardware),
        ("ironpool-agent-provisioning", provisioning),
    ] {
        let file = dir.join(format!("{manager}.json"));
        std::fs::write(&file, object.to_string()).unwrap();
        kubectl_ok(
            cp.kubectl()
                .args([
                    "apply",
                    "--server-side",
                    "--subresource=status",
                    &format!("--field-manager={manager}"),
                    "-f",
                ])
                .arg(&file),
        )
        .unwrap();
    }
}

/// Now as RFC 3339 (UTC), from `date`.
fn utc_now() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn machine(cp: &ControlPlane) -> Value {
    get_json(
        cp,
        &["machines.metal.ironpool.dev", "m1", "-n", DC_NAMESPACE],
    )
}

fn deployment_phase(cp: &ControlPlane) -> String {
    get_json(
        cp,
        &[
            "deployments.metal.ironpool.dev",
            "web-1",
            "-n",
            DC_NAMESPACE,
        ],
    )["status"]["phase"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn argo_cd_syncs_the_chart_and_reads_ironpool_health() {
    let images = Images::ensure().unwrap();
    let cluster = Cluster::start("node-a", &[("ironpool.dev/provisioning", "true")]).unwrap();
    let cp = &cluster.control_plane;
    cluster.node.import_images(&images).unwrap();
    let work = tempfile::Builder::new()
        .prefix("ironpool-gitops-")
        .tempdir()
        .unwrap();
    let argocd = ArgoCd::start(cp, work.path()).unwrap();

    // The agent token Secret, made once outside Git (README "Argo CD").
    kubectl(cp, &["create", "namespace", NAMESPACE]);
    let token = ironpool_e2e::secret::random_secret(48).unwrap();
    kubectl(
        cp,
        &[
            "-n",
            NAMESPACE,
            "create",
            "secret",
            "generic",
            TOKEN_SECRET,
            &format!("--from-literal=token={token}"),
        ],
    );

    // The chart: Synced and Healthy once the operator Deployment and agent DaemonSet are.
    let started = Instant::now();
    argocd
        .apply_application(
            APP,
            "charts/ironpool",
            NAMESPACE,
            Some(&chart_values(&cluster)),
        )
        .unwrap();
    let synced = wait_for(
        "the chart Application to sync",
        Duration::from_secs(300),
        || {
            let (sync, _, _) = argocd.app_status(APP).ok()?;
            (sync == "Synced").then(Instant::now)
        },
        || argocd.log_tails(),
    );
    argocd
        .wait_app(APP, "Synced", "Healthy", Duration::from_secs(300))
        .unwrap();
    eprintln!(
        "chart Application -> Synced/Healthy in {:.1?} (sync seen after {:.1?})",
        started.elapsed(),
        synced.duration_since(started)
    );
    for (kind, name) in [("Deployment", OPERATOR), ("DaemonSet", AGENT)] {
        let health = argocd
            .resource_health(APP, "apps", kind, NAMESPACE, name)
            .unwrap();
        assert_eq!(
            health.as_ref().map(|(s, _)| s.as_str()),
            Some("Healthy"),
            "{kind} {name}: {health:?}"
        );
    }
    let operator = get_json(cp, &["deployment", OPERATOR, "-n", NAMESPACE]);
    assert_eq!(
        operator["status"]["readyReplicas"], 2,
        "{}",
        operator["status"]
    );
    let agent = get_json(cp, &["daemonset", AGENT, "-n", NAMESPACE]);
    assert_eq!(agent["status"]["numberReady"], 1, "{}", agent["status"]);

    // The operator at work (it holds its Lease) changes nothing Argo CD compares.
    wait_for(
        "the operator to take its Lease",
        Duration::from_secs(60),
        || {
            let lease = get_json(cp, &["lease", OPERATOR, "-n", NAMESPACE]);
            lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
        },
        || argocd.log_tails(),
    );
    assert_no_drift(&argocd, APP);

    // A datacenter's objects from another directory of the repository.
    argocd
        .commit_file("datacenter/subnet.yaml", SUBNET)
        .unwrap();
    argocd
        .commit_file("datacenter/machine.yaml", MACHINE)
        .unwrap();
    argocd
        .commit_file("datacenter/deployment.yaml", DEPLOYMENT)
        .unwrap();
    let started = Instant::now();
    argocd
        .apply_application(DC_APP, "datacenter", DC_NAMESPACE, None)
        .unwrap();
    let health = |kind: &str, name: &str| {
        argocd
            .resource_health(DC_APP, GROUP, kind, DC_NAMESPACE, name)
            .unwrap()
    };
    let waiting = wait_for(
        "the Deployment to read Progressing while its machine commissions",
        Duration::from_secs(120),
        || health("Deployment", "web-1").filter(|(s, _)| s == "Progressing"),
        || {
            format!(
                "{:#}",
                argocd.app_status(DC_APP).map(|s| s.2).unwrap_or_default()
            )
        },
    );
    let (sync, _, _) = argocd.app_status(DC_APP).unwrap();
    assert_eq!(sync, "Synced");
    eprintln!(
        "datacenter Application Synced, Deployment Progressing ({:?}) after {:.1?}",
        waiting.1,
        started.elapsed()
    );
    wait_for(
        "the Subnet to read Healthy",
        Duration::from_secs(60),
        || health("Subnet", "prov").filter(|(s, _)| s == "Healthy"),
        || format!("{:?}", health("Subnet", "prov")),
    );

    // The machine commissions: the agent's power-on fails (BMCReachable False), and the
    // ramdisk's inventory report is played for the current intent.
    let attempt = wait_for(
        "m1 to be Commissioning with a boot intent, its BMC unreachable",
        Duration::from_secs(120),
        || {
            let m = machine(cp);
            let st = &m["status"];
            let unreachable = st["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "BMCReachable" && c["status"] == "False");
            (st["phase"] == "Commissioning" && unreachable)
                .then(|| st["bootIntent"]["attempt"].as_i64())
                .flatten()
        },
        || format!("{:#}", machine(cp)["status"]),
    );
    report_inventory(cp, work.path(), attempt);

    // Ready -> allocated -> Deploying (power fails again) -> FailedDeployment after the
    // deploy timeout: the Deployment reads Progressing, then Degraded.
    // Argo CD's reading of it must be of the provisioning Deployment: Progressing, with the
    // message of its Ready condition then.
    // Argo CD 3 ignores status-only updates that keep a resource's health status (its
    // default `resource.ignoreResourceUpdatesEnabled` with status left out of the hash), so
    // the message it shows can lag until its next periodic comparison; a refresh makes it
    // evaluate the provisioning Deployment now.
    let seen = std::cell::RefCell::new(Vec::<String>::new());
    let (provisioning, message) = wait_for(
        "Argo CD to read the provisioning Deployment as Progressing",
        Duration::from_secs(60),
        || {
            let live = || {
                let d = get_json(
                    cp,
                    &[
                        "deployments.metal.ironpool.dev",
                        "web-1",
                        "-n",
                        DC_NAMESPACE,
                    ],
                );
                let phase = d["status"]["phase"].as_str().unwrap_or_default().to_owned();
                let ready = d["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["type"] == "Ready")
                    .and_then(|c| c["message"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                (phase, ready)
            };
            let (phase, ready) = live();
            if !matches!(phase.as_str(), "Provisioning" | "Allocated") {
                return None;
            }
            refresh_and_wait(&argocd, DC_APP);
            let argo = health("Deployment", "web-1");
            seen.borrow_mut()
                .push(format!("{phase}: {ready:?}; Argo CD: {argo:?}"));
            let (status, message) = argo?;
            // The live object must not have moved on while Argo CD looked.
            (status == "Progressing" && message == ready && live() == (phase.clone(), ready))
                .then_some((phase, message))
        },
        || seen.borrow().join("\n"),
    );
    eprintln!("Deployment {provisioning}: Progressing ({message})");
    let deploying = Instant::now();
    let (_, message) = wait_for(
        "the Deployment to read Degraded",
        Duration::from_secs(180),
        || health("Deployment", "web-1").filter(|(s, _)| s == "Degraded"),
        || {
            format!(
                "deployment phase {}; machine {:#}",
                deployment_phase(cp),
                machine(cp)["status"]
            )
        },
    );
    eprintln!(
        "Deployment Degraded {:.1?} after provisioning began (deploy timeout {DEPLOY_TIMEOUT}): {message}",
        deploying.elapsed()
    );
    assert_eq!(deployment_phase(cp), "Failed");
    assert_eq!(
        health("Machine", "m1").map(|(s, _)| s),
        Some("Degraded".to_owned())
    );
    let (sync, app_health, _) = argocd.app_status(DC_APP).unwrap();
    assert_eq!((sync.as_str(), app_health.as_str()), ("Synced", "Degraded"));

    // Status, the finalizer, the agent's annotation and the apiserver's defaults are not
    // drift.
    assert_no_drift(&argocd, DC_APP);
    assert_no_drift(&argocd, APP);

    // A change in Git reaches the cluster on refresh (automated sync).
    let changed = Instant::now();
    let revision = argocd
        .commit_file(
            "datacenter/subnet.yaml",
            &SUBNET.replace("  cidr:", "  mtu: 1400\n  cidr:"),
        )
        .unwrap();
    argocd.refresh(DC_APP).unwrap();
    wait_for(
        "the Subnet change to be synced",
        Duration::from_secs(60),
        || {
            let subnet = get_json(
                cp,
                &["subnets.metal.ironpool.dev", "prov", "-n", DC_NAMESPACE],
            );
            let (sync, _, status) = argocd.app_status(DC_APP).ok()?;
            (subnet["spec"]["mtu"] == 1400
                && sync == "Synced"
                && status["sync"]["revision"] == revision.as_str())
            .then_some(())
        },
        || argocd.log_tails(),
    );
    eprintln!(
        "commit -> refresh -> synced to the cluster in {:.1?}",
        changed.elapsed()
    );

    drop(argocd);
    drop(work);
}
