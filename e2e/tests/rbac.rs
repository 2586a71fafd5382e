//! The chart's RBAC against the real kube-apiserver: a `kubectl auth can-i` matrix for the
//! operator's and the agent's ServiceAccounts (each can do what the code needs and nothing
//! more), the spec guard, and the real operator and agent binaries running with their
//! ServiceAccount tokens: they reconcile `examples/` with no Forbidden answer, and
//! afterwards `kubectl diff --server-side -f examples/` is empty (no drift for GitOps).
//!
//! The binaries are taken from the target directory this test runs from
//! (`cargo build -p ironpool-operator -p ironpool-agents --bins`; `e2e/run test` builds them
//! as part of `cargo test --workspace`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod argocd;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ironpool_e2e::ControlPlane;
use ironpool_e2e::chart::{install, service_account_token, write_token_kubeconfig};
use ironpool_e2e::cluster::kubectl_ok;

/// Namespace of the cluster-wide release, and its ServiceAccounts.
const SYSTEM: &str = "ironpool-system";
const OPERATOR: &str = "system:serviceaccount:ironpool-system:rb-ironpool-operator";
const AGENT: &str = "system:serviceaccount:ironpool-system:rb-ironpool-agent";

/// The shared control plane with the chart installed as release `rb` (all namespaces).
fn cp() -> &'static ControlPlane {
    static READY: OnceLock<&'static ControlPlane> = OnceLock::new();
    READY.get_or_init(|| {
        let cp = ControlPlane::shared().expect("control plane");
        install(cp, "rb", SYSTEM, &[]).expect("helm install");
        for crd in ["machines", "subnets", "deployments"] {
            kubectl_ok(cp.kubectl().args([
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                &format!("crd/{crd}.metal.ironpool.dev"),
            ]))
            .unwrap();
        }
        cp
    })
}

/// Runs `kubectl auth can-i <args> --as=<user>` for each `(expected, args)` row and returns
/// the rows whose answer differs.
fn can_i_mismatches(cp: &ControlPlane, user: &str, rows: &[(&str, &str)]) -> Vec<String> {
    let mut wrong = Vec::new();
    for (want, args) in rows {
        let out = cp
            .kubectl()
            .args(["auth", "can-i"])
            .args(args.split_whitespace())
            .arg(format!("--as={user}"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if got != *want {
            wrong.push(format!(
                "can-i {args}: want {want}, got {got:?} {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    wrong
}

const M: &str = "machines.metal.ironpool.dev";
const S: &str = "subnets.metal.ironpool.dev";
const D: &str = "deployments.metal.ironpool.dev";
const I: &str = "machineinventories.metal.ironpool.dev";

fn rows<'a>(template: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    template.iter().map(|(w, a)| (*w, a.as_str())).collect()
}

#[test]
fn operator_can_do_what_it_needs_and_no_more() {
    let cp = cp();
    let t: Vec<(&str, String)> = vec![
        // Watches, cluster-wide.
        ("yes", format!("list {M} -A")),
        ("yes", format!("watch {S} -A")),
        ("yes", format!("get {D} -n dc-a")),
        // Status by server-side apply.
        ("yes", format!("patch {M} --subresource=status -n dc-a")),
        ("yes", format!("patch {S} --subresource=status -n dc-a")),
        ("yes", format!("patch {D} --subresource=status -n dc-a")),
        // The Deployment finalizer.
        ("yes", format!("patch {D} -n dc-a")),
        // Reading a candidate's disks for root-device hints (one get, no list or watch);
        // moving an old status inventory into its MachineInventory; never deleting one.
        ("yes", format!("get {I} -n dc-a")),
        ("no", format!("list {I} -n dc-a")),
        ("no", format!("watch {I} -A")),
        ("yes", format!("create {I} -n dc-a")),
        ("yes", format!("patch {I} -n dc-a")),
        ("no", format!("delete {I} -n dc-a")),
        ("yes", "create events.events.k8s.io -n dc-a".into()),
        ("yes", "patch events.events.k8s.io -n dc-a".into()),
        // Its own Lease only.
        (
            "yes",
            format!("create leases.coordination.k8s.io -n {SYSTEM}"),
        ),
        (
            "yes",
            format!("update leases.coordination.k8s.io/ironpool-operator -n {SYSTEM}"),
        ),
        (
            "yes",
            format!("get leases.coordination.k8s.io/ironpool-operator -n {SYSTEM}"),
        ),
        (
            "no",
            format!("get leases.coordination.k8s.io/kube-scheduler -n {SYSTEM}"),
        ),
        (
            "no",
            format!("delete leases.coordination.k8s.io/ironpool-operator -n {SYSTEM}"),
        ),
        ("no", "create leases.coordination.k8s.io -n dc-a".into()),
        (
            "no",
            "update leases.coordination.k8s.io/ironpool-subnet-prov -n dc-a".into(),
        ),
        // Never spec, never create or delete what people own.
        ("no", format!("patch {M} -n dc-a")),
        ("no", format!("update {M} -n dc-a")),
        ("no", format!("create {M} -n dc-a")),
        ("no", format!("delete {M} -n dc-a")),
        ("no", format!("patch {S} -n dc-a")),
        ("no", format!("update {D} -n dc-a")),
        ("no", format!("delete {D} -n dc-a")),
        ("no", format!("update {D} --subresource=status -n dc-a")),
        // No Secrets at all: the operator never reads BMC credentials or cloud-init.
        ("no", "get secrets -n dc-a".into()),
        ("no", "list secrets -A".into()),
        // Node labels for the Subnets' candidateNodes, never a change to a Node.
        ("yes", "list nodes".into()),
        ("yes", "watch nodes".into()),
        ("no", "patch nodes/worker-1".into()),
        ("no", "create pods -n dc-a".into()),
        ("no", "create events -n dc-a".into()),
        ("no", "get configmaps -n dc-a".into()),
    ];
    let wrong = can_i_mismatches(cp, OPERATOR, &rows(&t));
    assert!(wrong.is_empty(), "operator RBAC:\n{}", wrong.join("\n"));
}

#[test]
fn agent_can_do_what_it_needs_and_no_more() {
    let cp = cp();
    let t: Vec<(&str, String)> = vec![
        ("yes", format!("list {M} -A")),
        ("yes", format!("watch {S} -A")),
        ("yes", format!("watch {D} -A")),
        // Enlistment, and the attempt annotation before a power action.
        ("yes", format!("create {M} -n dc-a")),
        ("yes", format!("patch {M} -n dc-a")),
        ("yes", format!("patch {M} --subresource=status -n dc-a")),
        ("yes", format!("patch {S} --subresource=status -n dc-a")),
        // Each commissioning's MachineInventory; never deleting one (the Machine owns it).
        ("yes", format!("create {I} -n dc-a")),
        ("yes", format!("patch {I} -n dc-a")),
        ("no", format!("delete {I} -n dc-a")),
        // BMC credentials, watched in every namespace it serves (see the chart README).
        ("yes", "get secrets -n dc-a".into()),
        ("yes", "watch secrets -A".into()),
        // Subnet Leases live in each Subnet's namespace.
        ("yes", "create leases.coordination.k8s.io -n dc-a".into()),
        (
            "yes",
            "update leases.coordination.k8s.io/ironpool-subnet-prov -n dc-a".into(),
        ),
        ("yes", "create events.events.k8s.io -n dc-a".into()),
        // Never delete Machines, never write Deployments or a Subnet's spec, never
        // change Secrets.
        ("no", format!("delete {M} -n dc-a")),
        ("no", format!("deletecollection {M} -n dc-a")),
        ("no", format!("update {M} -n dc-a")),
        ("no", format!("patch {D} -n dc-a")),
        ("no", format!("patch {D} --subresource=status -n dc-a")),
        ("no", format!("create {D} -n dc-a")),
        ("no", format!("patch {S} -n dc-a")),
        ("no", format!("create {S} -n dc-a")),
        ("no", "create secrets -n dc-a".into()),
        ("no", "update secrets -n dc-a".into()),
        ("no", "delete secrets -n dc-a".into()),
        ("no", "delete leases.coordination.k8s.io -n dc-a".into()),
        // No Node at all, not even its own: the operator names the candidate Nodes
        // in each Subnet's status.
        ("no", "get nodes/worker-1".into()),
        ("no", "get nodes/prov-node-1".into()),
        ("no", "list nodes".into()),
        ("no", "patch nodes/worker-1".into()),
        ("no", "create pods -n dc-a".into()),
        ("no", "get configmaps -n dc-a".into()),
    ];
    let wrong = can_i_mismatches(cp, AGENT, &rows(&t));
    assert!(wrong.is_empty(), "agent RBAC:\n{}", wrong.join("\n"));
}

/// With `watchNamespace`, both accounts get Roles there and nothing in other namespaces.
#[test]
fn a_namespaced_install_grants_nothing_elsewhere() {
    let cp = cp();
    // The watched namespace must exist first: its Roles live there.
    kubectl_ok(cp.kubectl().args(["create", "namespace", "dc-scoped"])).unwrap();
    install(cp, "nsd", "ironpool-nsd", &["watchNamespace=dc-scoped"]).unwrap();
    let op = "system:serviceaccount:ironpool-nsd:nsd-ironpool-operator";
    let agent = "system:serviceaccount:ironpool-nsd:nsd-ironpool-agent";
    let operator_rows = [
        ("yes", "list machines.metal.ironpool.dev -n dc-scoped"),
        (
            "yes",
            "patch deployments.metal.ironpool.dev --subresource=status -n dc-scoped",
        ),
        (
            "yes",
            "update leases.coordination.k8s.io/ironpool-operator -n ironpool-nsd",
        ),
        ("yes", "watch nodes"),
        ("no", "list machines.metal.ironpool.dev -n dc-other"),
        ("no", "list machines.metal.ironpool.dev -A"),
        ("no", "create events.events.k8s.io -n dc-other"),
    ];
    let agent_rows = [
        ("yes", "get secrets -n dc-scoped"),
        ("yes", "create leases.coordination.k8s.io -n dc-scoped"),
        ("no", "get nodes/worker-1"),
        ("no", "get secrets -n dc-other"),
        ("no", "list secrets -A"),
        ("no", "create machines.metal.ironpool.dev -n dc-other"),
    ];
    let mut wrong = can_i_mismatches(cp, op, &operator_rows);
    wrong.extend(can_i_mismatches(cp, agent, &agent_rows));
    assert!(wrong.is_empty(), "namespaced RBAC:\n{}", wrong.join("\n"));
}

/// A binary of this workspace, from the target directory this test runs from.
fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p ironpool-operator -p ironpool-agents --bins` first",
        path.display()
    );
    path
}

/// A child process killed on drop, its output in `log`.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(command: &mut Command, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .env("RUST_LOG", "info,kube=warn")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Proc { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_no_forbidden(&mut self, what: &str) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "{what} exited:\n{}",
            self.log()
        );
        let log = self.log();
        let lower = log.to_lowercase();
        assert!(
            !lower.contains("forbidden"),
            "{what} was refused something:\n{log}"
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kubectl_json(cp: &ControlPlane, args: &[&str]) -> serde_json::Value {
    let out = kubectl_ok(cp.kubectl().args(args).args(["-o", "json"])).unwrap();
    serde_json::from_str(&out).unwrap()
}

/// Polls `check` every 250 ms until it is true, or fails with `what` and the logs.
fn wait_for(what: &str, timeout: Duration, procs: &[&Proc], mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() > deadline {
            let logs: Vec<String> = procs.iter().map(|p| p.log()).collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                logs.join("\n---\n")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A kubeconfig file with a fresh token of ServiceAccount `ironpool-system/<name>`.
fn kubeconfig_for(cp: &ControlPlane, rt: &tokio::runtime::Runtime, name: &str) -> PathBuf {
    let token = rt.block_on(async {
        let admin = cp.client().await.unwrap();
        service_account_token(&admin, SYSTEM, name).await.unwrap()
    });
    let path = cp.dir().join(format!("kubeconfig-{name}"));
    write_token_kubeconfig(cp, &path, &token).unwrap();
    path
}

#[test]
fn the_real_binaries_reconcile_examples_as_their_service_accounts() {
    let cp = cp();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ns = rt.block_on(cp.create_namespace("examples")).unwrap();
    let power_ns = rt.block_on(cp.create_namespace("power")).unwrap();
    let examples = ironpool_e2e::repo_dir().join("examples");
    kubectl_ok(
        cp.kubectl()
            .args(["apply", "--server-side", "-n", &ns, "-f"])
            .arg(&examples),
    )
    .unwrap();
    // The Node the agent runs on, labelled as the examples' Subnet agentSelector asks.
    let node = serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "prov-node-1", "labels": {"ironpool.dev/provisioning": "true"}},
    });
    let node_file = cp.dir().join("node.json");
    std::fs::write(&node_file, node.to_string()).unwrap();
    kubectl_ok(cp.kubectl().args(["apply", "-f"]).arg(&node_file)).unwrap();

    let operator_kc = kubeconfig_for(cp, &rt, "rb-ironpool-operator");
    let agent_kc = kubeconfig_for(cp, &rt, "rb-ironpool-agent");
    let mut operator = Proc::start(
        Command::new(workspace_binary("ironpool-operator"))
            .env("KUBECONFIG", &operator_kc)
            // As the chart runs it: all namespaces, the Lease in the release namespace.
            .args(["--lease-namespace", SYSTEM, "--identity", "rbac-test"])
            .args(["--listen", "127.0.0.1:0"]),
        cp.dir().join("rbac-operator.log"),
    );
    // The examples' agent: election, servedBy, Node labels, events. No servers and no
    // power: the examples' BMC addresses are not ours to contact.
    let mut agent = Proc::start(
        Command::new(workspace_binary("ironpool-agent"))
            .env("KUBECONFIG", &agent_kc)
            .env("NODE_NAME", "prov-node-1")
            .args([
                "--namespace",
                &ns,
                "--no-dhcp",
                "--no-tftp",
                "--no-http",
                "--no-power",
            ])
            .args(["--metrics-listen", "127.0.0.1:0"]),
        cp.dir().join("rbac-agent.log"),
    );

    // A Machine whose BMC is a closed loopback port, for the power controller: it reads
    // the credentials Secret and records that the BMC does not answer.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let power_objects = format!(
        r#"{{"apiVersion": "v1", "kind": "List", "items": [
  {{"apiVersion": "v1", "kind": "Secret", "metadata": {{"name": "bmc"}},
    "stringData": {{"username": "admin", "password": "pw"}}}},
  {{"apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Machine", "metadata": {{"name": "loop-1"}},
    "spec": {{"bmc": {{"address": "redfish+http://127.0.0.1:{closed_port}/redfish/v1/Systems/1",
                      "credentialsSecretRef": {{"name": "bmc"}}}},
             "bootMACAddress": "52:54:00:aa:bb:01"}}}}]}}"#
    );
    let power_file = cp.dir().join("power.json");
    std::fs::write(&power_file, power_objects).unwrap();
    kubectl_ok(
        cp.kubectl()
            .args(["apply", "--server-side", "-n", &power_ns, "-f"])
            .arg(&power_file),
    )
    .unwrap();
    let mut power_agent = Proc::start(
        Command::new(workspace_binary("ironpool-agent"))
            .env("KUBECONFIG", &agent_kc)
            .env("NODE_NAME", "prov-node-2")
            .args([
                "--namespace",
                &power_ns,
                "--no-dhcp",
                "--no-tftp",
                "--no-http",
            ])
            .args(["--metrics-listen", "127.0.0.1:0"]),
        cp.dir().join("rbac-power-agent.log"),
    );

    let procs = [&operator, &agent, &power_agent];
    // Generous: CI shares two cores with other test binaries' control planes.
    let timeout = Duration::from_secs(120);
    wait_for("the operator to lead", timeout, &procs, || {
        let lease = kubectl_json(cp, &["get", "lease", "ironpool-operator", "-n", SYSTEM]);
        lease["spec"]["holderIdentity"] == "rbac-test"
    });
    wait_for(
        "both example Machines to have a phase",
        timeout,
        &procs,
        || {
            let list = kubectl_json(cp, &["get", M, "-n", &ns]);
            let items = list["items"].as_array().cloned().unwrap_or_default();
            items.len() == 2 && items.iter().all(|m| m["status"]["phase"].is_string())
        },
    );
    wait_for(
        "the Deployment's status and finalizer",
        timeout,
        &procs,
        || {
            let d = kubectl_json(cp, &["get", D, "web-1", "-n", &ns]);
            d["status"]["phase"].is_string() && d["metadata"]["finalizers"].as_array().is_some()
        },
    );
    wait_for(
        "the operator to name the labelled Node a candidate",
        timeout,
        &procs,
        || {
            let s = kubectl_json(cp, &["get", S, "prov", "-n", &ns]);
            s["status"]["candidateNodes"] == serde_json::json!(["prov-node-1"])
        },
    );
    wait_for("the Subnet served by the agent", timeout, &procs, || {
        let s = kubectl_json(cp, &["get", S, "prov", "-n", &ns]);
        s["status"]["servedBy"]["agent"] == "prov-node-1"
    });
    wait_for("the agent's Subnet Lease", timeout, &procs, || {
        let lease = kubectl_json(cp, &["get", "lease", "ironpool-subnet-prov", "-n", &ns]);
        lease["spec"]["holderIdentity"] == "prov-node-1"
    });
    wait_for(
        "BMCReachable=False from the power controller",
        timeout,
        &procs,
        || {
            let m = kubectl_json(cp, &["get", M, "loop-1", "-n", &power_ns]);
            m["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "BMCReachable" && c["status"] == "False")
            })
        },
    );
    wait_for("the operator's Events", timeout, &procs, || {
        let events = kubectl_json(cp, &["get", "events.events.k8s.io", "-n", &ns]);
        events["items"].as_array().is_some_and(|e| {
            e.iter()
                .any(|e| e["reportingController"] == "ironpool-operator")
        })
    });
    // Let retries and status writes settle, then nothing may have been refused.
    std::thread::sleep(Duration::from_secs(3));
    operator.assert_no_forbidden("the operator");
    agent.assert_no_forbidden("the agent");
    power_agent.assert_no_forbidden("the agent's power controller");

    // The spec guard: the controllers' own tokens cannot change spec, even where RBAC
    // lets them patch the object.
    for (kc, kind, name, patch) in [
        (&agent_kc, M, "r1-u07", r#"{"spec":{"maintenance":true}}"#),
        (&operator_kc, D, "web-1", r#"{"spec":{"hostname":"drift"}}"#),
    ] {
        let out = Command::new(ironpool_e2e::Binaries::ensure().unwrap().kubectl)
            .arg(format!("--kubeconfig={}", kc.display()))
            .args(["patch", kind, name, "-n", &ns, "--type=merge", "-p", patch])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("may not change the spec"),
            "a spec patch of {kind}/{name} by a controller account was not refused: {err}"
        );
    }
    // ... while metadata still passes (the agent's attempt annotation).
    let out = Command::new(ironpool_e2e::Binaries::ensure().unwrap().kubectl)
        .arg(format!("--kubeconfig={}", agent_kc.display()))
        .args([
            "annotate",
            M,
            "loop-1",
            "-n",
            &power_ns,
            "rbac-test/probe=1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Argo CD's view of them, through the README's health checks.
    let machine = kubectl_json(cp, &["get", M, "r1-u07", "-n", &ns]);
    assert_eq!(
        argocd::health("Machine", &machine).0,
        "Progressing",
        "{machine}"
    );
    let deployment = kubectl_json(cp, &["get", D, "web-1", "-n", &ns]);
    let (status, message) = argocd::health("Deployment", &deployment);
    let reason = deployment["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap();
    assert_eq!((status.as_str(), message.as_str()), ("Progressing", reason));
    let subnet = kubectl_json(cp, &["get", S, "prov", "-n", &ns]);
    assert_eq!(argocd::health("Subnet", &subnet).0, "Healthy", "{subnet}");

    // GitOps: what the controllers wrote does not show as drift of the applied manifests.
    let diff = cp
        .kubectl()
        .args(["diff", "--server-side", "-n", &ns, "-f"])
        .arg(&examples)
        .output()
        .unwrap();
    assert!(
        diff.status.success() && diff.stdout.is_empty(),
        "kubectl diff --server-side -f examples/ is not empty after reconciling:\n{}{}",
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );
}

/// The health checks on the states the live test does not reach.
#[test]
fn argocd_health_checks_read_every_state() {
    use serde_json::json;
    let machine = |phase: &str, generation: i64, observed: i64| {
        json!({"metadata": {"generation": generation}, "status": {"phase": phase,
            "observedGeneration": observed,
            "conditions": [{"type": "Ready", "status": "False", "reason": "R", "message": "why"}]}})
    };
    for (phase, want) in [
        ("Ready", "Healthy"),
        ("Deployed", "Healthy"),
        ("Commissioning", "Progressing"),
        ("FailedDeployment", "Degraded"),
        ("FailedCommissioning", "Degraded"),
        ("Broken", "Degraded"),
        ("Maintenance", "Suspended"),
    ] {
        let (status, message) = argocd::health("Machine", &machine(phase, 2, 2));
        assert_eq!(
            (status.as_str(), message.as_str()),
            (want, "why"),
            "{phase}"
        );
    }
    // Not yet observed: Progressing whatever the phase says.
    assert_eq!(
        argocd::health("Machine", &machine("Deployed", 3, 2)).0,
        "Progressing"
    );
    assert_eq!(
        argocd::health("Machine", &json!({"metadata": {}})).0,
        "Progressing"
    );
    for (phase, want) in [
        ("Deployed", "Healthy"),
        ("Failed", "Degraded"),
        ("Pending", "Progressing"),
    ] {
        assert_eq!(
            argocd::health("Deployment", &machine(phase, 1, 1)).0,
            want,
            "{phase}"
        );
    }
    let subnet = |status: &str| json!({"status": {"conditions": [{"type": "Ready", "status": status, "reason": "Overlaps", "message": "m"}]}});
    assert_eq!(argocd::health("Subnet", &subnet("True")).0, "Healthy");
    assert_eq!(
        argocd::health("Subnet", &subnet("False")),
        ("Degraded".into(), "m".into())
    );
    assert_eq!(
        argocd::health("Subnet", &json!({"spec": {}})).0,
        "Progressing"
    );
}

/// Every flag the chart passes is one the binaries have, with a value they accept: clap
/// checks the arguments in order, so appending `--help` prints help only when all of them
/// parse (a renamed flag would otherwise crash-loop the pods).
#[test]
fn the_binaries_accept_the_flags_the_chart_renders() {
    let cp = cp();
    for (template, binary, set) in [
        ("operator-deployment.yaml", "ironpool-operator", &[][..]),
        (
            "operator-deployment.yaml",
            "ironpool-operator",
            &["watchNamespace=dc-a", "operator.autoCommission=false"][..],
        ),
        (
            "operator-deployment.yaml",
            "ironpool-operator",
            &["operator.web.enabled=true"][..],
        ),
        ("agent-daemonset.yaml", "ironpool-agent", &[][..]),
        (
            "agent-daemonset.yaml",
            "ironpool-agent",
            &[
                "agent.dhcp.enabled=false",
                "agent.tftp.enabled=false",
                "agent.http.enabled=false",
                "agent.power.enabled=false",
                "agent.dhcpInterface=eno2",
            ][..],
        ),
    ] {
        let mut helm = ironpool_e2e::chart::helm(cp).unwrap();
        helm.args(["template", "f"])
            .arg(ironpool_e2e::chart::chart_dir())
            .args(["--show-only", &format!("templates/{template}")]);
        for value in set {
            helm.args(["--set", value]);
        }
        let rendered = kubectl_ok(&mut helm).unwrap();
        let workload = rendered
            .split("\n---")
            .map(|doc| serde_saphyr::from_str::<serde_json::Value>(doc).unwrap())
            .find(|doc| doc["kind"] == "Deployment" || doc["kind"] == "DaemonSet")
            .unwrap();
        let args: Vec<String> = workload["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        assert!(args.len() >= 3, "{args:?}");
        let out = Command::new(workspace_binary(binary))
            .args(&args)
            .arg("--help")
            .env_clear()
            .output()
            .unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{binary} {args:?} was refused: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
