//! Ironpool as a Cluster API infrastructure provider, driven by the real Cluster API: the
//! core manager and the kubeadm bootstrap provider (CABPK) built from their Go module,
//! installed with `clusterctl init` from a local provider repository (see
//! `ironpool_e2e::capi` for what differs from a production install). The workload cluster
//! is a second real kube-apiserver whose CA is the cluster's `<cluster>-ca` Secret; no
//! kubelet runs, so the test registers each Node (with the Machine's providerID) as a
//! kubelet would after kubeadm join. The agent's part is played by the simulated agent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use common::sim_agent::SimAgent;
use common::*;
use ironpool_crds::capi::IronpoolMachine;
use ironpool_crds::machine::MachinePhase;
use ironpool_crds::{Deployment, Machine};
use ironpool_e2e::ControlPlane;
use ironpool_e2e::capi::Capi;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

const CLUSTER: &str = "c1";
const LONG: Duration = Duration::from_secs(180);

fn capi_api(client: &Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    let (group, version) = match kind {
        "KubeadmConfig" => ("bootstrap.cluster.x-k8s.io", "v1beta2"),
        _ => ("cluster.x-k8s.io", "v1beta2"),
    };
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// Renders `examples/capi/<file>` with clusterctl's own variable processing.
fn render(capi: &Capi, file: &str, vars: &BTreeMap<&str, String>) -> String {
    let path = ironpool_e2e::repo_dir().join("examples/capi").join(file);
    let mut cmd = capi.clusterctl();
    cmd.args(["generate", "yaml", "--from"]).arg(&path);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = cmd.stderr(Stdio::inherit()).output().unwrap();
    assert!(
        out.status.success(),
        "clusterctl generate yaml --from {file}"
    );
    String::from_utf8(out.stdout).unwrap()
}

fn kubectl_apply(cp: &ControlPlane, ns: &str, yaml: &str) {
    kubectl_apply_with(cp, &["-n", ns], yaml);
}

/// `kubectl apply --server-side <args> -f -` of `yaml`, asserting success.
fn kubectl_apply_with(cp: &ControlPlane, args: &[&str], yaml: &str) {
    use std::io::Write;
    let mut child = cp
        .kubectl()
        .args(["apply", "--server-side"])
        .args(args)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn str_at<'a>(v: &'a serde_json::Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// The CAPI Machines of the cluster: name -> (phase, bootstrap secret, is control plane).
async fn capi_machines(
    api: &Api<DynamicObject>,
) -> BTreeMap<String, (String, Option<String>, bool)> {
    let list = api.list(&ListParams::default()).await.unwrap();
    list.items
        .into_iter()
        .filter(|m| m.metadata.deletion_timestamp.is_none())
        .map(|m| {
            let phase = str_at(&m.data, &["status", "phase"])
                .unwrap_or("")
                .to_string();
            let secret =
                str_at(&m.data, &["spec", "bootstrap", "dataSecretName"]).map(String::from);
            let cp = m.labels().contains_key("cluster.x-k8s.io/control-plane");
            (m.name_any(), (phase, secret, cp))
        })
        .collect()
}

/// Registers (as the kubelet would) a Ready Node for every provisioned IronpoolMachine
/// that has none yet; returns the server of each IronpoolMachine.
async fn register_nodes(
    ims: &Api<IronpoolMachine>,
    deployments: &Api<Deployment>,
    nodes: &Api<Node>,
) -> BTreeMap<String, String> {
    let mut servers = BTreeMap::new();
    for im in ims.list(&ListParams::default()).await.unwrap() {
        let st = im.status.clone().unwrap_or_default();
        let provisioned = st.initialization.and_then(|i| i.provisioned) == Some(true);
        let (Some(id), true) = (im.spec.provider_id.clone(), provisioned) else {
            continue;
        };
        if im.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let d = deployments.get(&im.name_any()).await.unwrap();
        let node_name = d.spec.hostname.clone().unwrap();
        servers.insert(im.name_any(), st.machine_ref.unwrap().name);
        if nodes.get_opt(&node_name).await.unwrap().is_some() {
            continue;
        }
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": node_name},
            "spec": {"providerID": id},
        }))
        .unwrap();
        nodes.create(&PostParams::default(), &node).await.unwrap();
        set_node_ready(nodes, &node_name, true).await;
    }
    servers
}

async fn set_node_ready(nodes: &Api<Node>, name: &str, ready: bool) {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let (status, reason) = if ready {
        ("True", "KubeletReady")
    } else {
        ("False", "KubeletNotReady")
    };
    let body = json!({"status": {"conditions": [{"type": "Ready", "status": status, "reason": reason,
        "message": "set by the test", "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(&body))
        .await
        .unwrap();
}

async fn ready_servers(machines: &Api<Machine>) -> BTreeSet<String> {
    machines
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|m| phase(m) == Some(MachinePhase::Ready))
        .map(|m| m.name_any())
        .collect()
}

/// Creates the cluster of `examples/capi/` (`cluster.yaml` and `workers.yaml` with
/// `workers` workers) in `ns`, with the workload control plane's CA as the cluster's CA
/// (Cluster API signs its kubeconfig with it).
async fn create_cluster(
    capi: &Capi,
    cp: &ControlPlane,
    client: &Client,
    ns: &str,
    workload: &ControlPlane,
    workers: u32,
) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let ca: Secret = serde_json::from_value(json!({
        "metadata": {"name": format!("{CLUSTER}-ca"), "labels": {"cluster.x-k8s.io/cluster-name": CLUSTER}},
        "type": "cluster.x-k8s.io/secret",
        "stringData": {
            "tls.crt": std::fs::read_to_string(workload.ca_cert_path()).unwrap(),
            "tls.key": std::fs::read_to_string(workload.ca_key_path()).unwrap(),
        },
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &ca).await.unwrap();
    let port = workload
        .server_url()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let vars = BTreeMap::from([
        ("CLUSTER_NAME", CLUSTER.to_string()),
        ("NAMESPACE", ns.to_string()),
        ("CONTROL_PLANE_ENDPOINT_HOST", "127.0.0.1".to_string()),
        ("CONTROL_PLANE_ENDPOINT_PORT", port),
        ("KUBERNETES_VERSION", "v1.37.2".to_string()),
        ("WORKER_MACHINE_COUNT", workers.to_string()),
        (
            "IRONPOOL_IMAGE_URL",
            "http://images.test/os.qcow2".to_string(),
        ),
        (
            "IRONPOOL_IMAGE_CHECKSUM",
            format!("sha256:{}", "ab".repeat(32)),
        ),
        ("IRONPOOL_IMAGE_FORMAT", "qcow2".to_string()),
    ]);
    let manifests = format!(
        "{}\n---\n{}",
        render(capi, "cluster.yaml", &vars),
        render(capi, "workers.yaml", &vars)
    );
    kubectl_apply(cp, ns, &manifests);
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_api_scales_remediates_and_deletes_on_ironpool_servers() {
    let cp = cluster();
    let capi = tokio::task::spawn_blocking(move || Capi::shared(cp))
        .await
        .unwrap()
        .expect("Cluster API installs");
    let workload = tokio::task::spawn_blocking(ControlPlane::start)
        .await
        .unwrap()
        .expect("workload control plane");
    let ns = cp.create_namespace("capi").await.unwrap();
    let client = client(cp).await;
    let machines: Api<Machine> = Api::namespaced(client.clone(), &ns);
    let servers = [
        ("cp-1", "control-plane", "rack1"),
        ("w-1", "worker", "rack1"),
        ("w-2", "worker", "rack2"),
        ("w-3", "worker", "rack2"),
    ];
    for (i, (name, pool, zone)) in servers.iter().enumerate() {
        let mut m = machine(name, 40 + i as u8, pool);
        m.labels_mut()
            .insert("ironpool.dev/pool".into(), (*pool).into());
        m.labels_mut()
            .insert("topology.kubernetes.io/zone".into(), (*zone).into());
        create(&machines, &m).await;
    }
    let agent = SimAgent::start(machines.clone(), Duration::from_millis(200));
    // The operator runs as the ServiceAccount clusterctl installed, with the RBAC of
    // infrastructure-components.yaml and nothing else.
    let token =
        ironpool_e2e::chart::service_account_token(&client, "ironpool-system", "ironpool-operator")
            .await
            .unwrap();
    let kubeconfig = cp.dir().join(format!("{ns}-operator.kubeconfig"));
    ironpool_e2e::chart::write_token_kubeconfig(cp, &kubeconfig, &token).unwrap();
    let _op = Operator::start_as(
        cp,
        &kubeconfig,
        "ironpool-system",
        &ns,
        "capi-operator",
        &["--capi", "--lease-name", "ironpool-operator"],
    );
    for (name, ..) in servers {
        wait_phase(&machines, name, MachinePhase::Ready, LONG).await;
    }

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    create_cluster(capi, cp, &client, &ns, &workload, 2).await;

    let clusters = capi_api(&client, &ns, "Cluster");
    eventually(LONG, "Cluster infrastructure provisioned", || async {
        let c = clusters.get(CLUSTER).await.ok()?;
        (c.data["status"]["initialization"]["infrastructureProvisioned"] == json!(true))
            .then_some(())
    })
    .await;

    let ims: Api<IronpoolMachine> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let wclient = workload.client().await.unwrap();
    let nodes: Api<Node> = Api::all(wclient.clone());
    let capi_machine_api = capi_api(&client, &ns, "Machine");
    let bound = eventually(
        LONG * 2,
        "three Machines Running on three servers",
        || async {
            let servers = register_nodes(&ims, &deployments, &nodes).await;
            let ms = capi_machines(&capi_machine_api).await;
            (ms.len() == 3 && ms.values().all(|(p, ..)| p == "Running") && servers.len() == 3)
                .then_some(servers)
        },
    )
    .await;
    let distinct: BTreeSet<&String> = bound.values().collect();
    assert_eq!(
        distinct.len(),
        3,
        "each Machine on its own server: {bound:?}"
    );

    // Each Deployment's user data is the bootstrap Secret CABPK generated for its Machine.
    for (name, (_, secret, is_cp)) in capi_machines(&capi_machine_api).await {
        let secret = secret.expect("bootstrap data");
        let im = ims
            .list(&ListParams::default())
            .await
            .unwrap()
            .into_iter()
            .find(|im| im.owner_references().iter().any(|o| o.name == name))
            .expect("an IronpoolMachine per Machine");
        let d = deployments.get(&im.name_any()).await.unwrap();
        let ud = d.spec.user_data_secret_ref.clone().unwrap();
        assert_eq!(
            (ud.name.as_str(), ud.key.as_deref()),
            (secret.as_str(), Some("value"))
        );
        let s = secrets.get(&secret).await.unwrap();
        let value = String::from_utf8(s.data.unwrap()["value"].0.clone()).unwrap();
        let expected = if is_cp {
            "kubeadm init"
        } else {
            "kubeadm join"
        };
        assert!(value.contains(expected), "{secret}: {value}");
        assert!(
            value.contains("provider-id"),
            "{secret} passes the provider ID"
        );
        assert_eq!(
            im.spec.provider_id.as_deref(),
            Some(format!("ironpool://{ns}/{}", bound[&im.name_any()]).as_str())
        );
    }

    // Scale 2 -> 1: exactly one server is released and erased back to Ready.
    let mds = capi_api(&client, &ns, "MachineDeployment");
    let md = format!("{CLUSTER}-md-0");
    let before = ready_servers(&machines).await;
    assert_eq!(before.len(), 1, "one spare server: {before:?}");
    mds.patch(
        &md,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    let after = eventually(LONG, "one worker released", || async {
        let ms = capi_machines(&capi_machine_api).await;
        let n = deployments
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .len();
        let ready = ready_servers(&machines).await;
        (ms.len() == 2 && n == 2 && ready.len() == 2).then_some(ready)
    })
    .await;
    let released: Vec<_> = after.difference(&before).collect();
    assert_eq!(released.len(), 1, "{after:?} vs {before:?}");
    let erases = agent
        .by_machine()
        .get(released[0].as_str())
        .map(|v| v.iter().filter(|(_, p)| p == "Erase").count());
    assert_eq!(erases, Some(1), "the released server was erased once");

    // Remediation: the remaining worker's Node goes NotReady; the MachineHealthCheck has
    // its Machine replaced, on another server.
    let worker = capi_machines(&capi_machine_api)
        .await
        .into_iter()
        .find(|(_, (_, _, cp))| !cp)
        .unwrap()
        .0;
    let worker_im = ims
        .list(&ListParams::default())
        .await
        .unwrap()
        .into_iter()
        .find(|im| im.owner_references().iter().any(|o| o.name == worker))
        .unwrap();
    let sick_server = worker_im.status.clone().unwrap().machine_ref.unwrap().name;
    let sick_node = deployments
        .get(&worker_im.name_any())
        .await
        .unwrap()
        .spec
        .hostname
        .unwrap();
    set_node_ready(&nodes, &sick_node, false).await;
    let replaced = eventually(
        LONG * 2,
        "the unhealthy worker replaced and Running",
        || async {
            let servers = register_nodes(&ims, &deployments, &nodes).await;
            let ms = capi_machines(&capi_machine_api).await;
            let running = ms.values().filter(|(p, ..)| p == "Running").count();
            (!ms.contains_key(&worker) && ms.len() == 2 && running == 2).then_some(servers)
        },
    )
    .await;
    let new_im = replaced
        .keys()
        .find(|k| **k != worker_im.name_any() && !bound.contains_key(*k));
    let new_server = &replaced[new_im.expect("a new IronpoolMachine")];
    assert_ne!(new_server, &sick_server, "replaced on a different server");
    let sick = machines.get(&sick_server).await.unwrap();
    let note = sick
        .annotations()
        .get(ironpool_crds::capi::REMEDIATED_ANNOTATION);
    assert!(
        note.is_some_and(|n| n.contains(&format!("{ns}/{worker}"))),
        "the remediated server is marked: {note:?}"
    );

    // Paused: the annotation on an IronpoolMachine, then the whole Cluster; each shows
    // in its Paused condition and lifts again.
    let paused = |im: &IronpoolMachine| {
        im.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Paused"))
            .map(|c| (c.status.clone(), c.message.clone()))
    };
    let target = replaced.keys().next().unwrap().clone();
    let annotate =
        |v: serde_json::Value| json!({"metadata": {"annotations": {"cluster.x-k8s.io/paused": v}}});
    ims.patch(
        &target,
        &PatchParams::default(),
        &Patch::Merge(&annotate(json!(""))),
    )
    .await
    .unwrap();
    eventually(LONG, "Paused by the annotation", || async {
        let (s, m) = paused(&ims.get(&target).await.ok()?)?;
        (s == "True" && m.contains("annotation")).then_some(())
    })
    .await;
    ims.patch(
        &target,
        &PatchParams::default(),
        &Patch::Merge(&annotate(serde_json::Value::Null)),
    )
    .await
    .unwrap();
    clusters
        .patch(
            CLUSTER,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"paused": true}})),
        )
        .await
        .unwrap();
    eventually(LONG, "Paused by the Cluster", || async {
        let (s, m) = paused(&ims.get(&target).await.ok()?)?;
        (s == "True" && m.contains(&format!("Cluster {CLUSTER} is paused"))).then_some(())
    })
    .await;
    clusters
        .patch(
            CLUSTER,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"paused": false}})),
        )
        .await
        .unwrap();
    eventually(LONG, "unpaused", || async {
        (paused(&ims.get(&target).await.ok()?)?.0 == "False").then_some(())
    })
    .await;

    // Deleting the Cluster returns every server to the pool.
    clusters
        .delete(CLUSTER, &DeleteParams::background())
        .await
        .unwrap();
    eventually(LONG * 2, "every server Ready and nothing left", || async {
        let ready = ready_servers(&machines).await;
        let left = ims.list(&ListParams::default()).await.ok()?.items.len()
            + deployments
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .len();
        (ready.len() == 4 && left == 0).then_some(())
    })
    .await;
    agent.stop.cancel();
}

/// `clusterctl generate cluster` renders the provider repository's default template (a
/// KubeadmControlPlane cluster) with every variable filled, and all but the
/// KubeadmControlPlane (its provider is not installed here) pass the apiserver's and
/// Cluster API's webhooks in a server-side dry run.
#[tokio::test(flavor = "multi_thread")]
async fn clusterctl_generates_the_default_cluster() {
    let cp = cluster();
    let capi = tokio::task::spawn_blocking(move || Capi::shared(cp))
        .await
        .unwrap()
        .expect("Cluster API installs");
    let ns = cp.create_namespace("capi-template").await.unwrap();
    let out = capi
        .clusterctl()
        .args([
            "generate",
            "cluster",
            "web",
            "--infrastructure",
            "ironpool:v0.1.0",
        ])
        .args(["--target-namespace", &ns, "--kubernetes-version", "v1.37.2"])
        .args([
            "--control-plane-machine-count",
            "3",
            "--worker-machine-count",
            "2",
        ])
        .arg(capi.kubeconfig_arg())
        .env("CONTROL_PLANE_ENDPOINT_HOST", "10.20.0.5")
        .env("IRONPOOL_IMAGE_URL", "http://images.example/ubuntu.qcow2")
        .env(
            "IRONPOOL_IMAGE_CHECKSUM",
            format!("sha256:{}", "ab".repeat(32)),
        )
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "clusterctl generate cluster");
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(!yaml.contains("${"), "every variable filled:\n{yaml}");
    let docs: Vec<&str> = yaml.split("\n---\n").collect();
    let kinds: Vec<String> = docs
        .iter()
        .filter_map(|d| {
            d.lines()
                .find_map(|l| l.strip_prefix("kind: "))
                .map(String::from)
        })
        .collect();
    for kind in [
        "Cluster",
        "IronpoolCluster",
        "KubeadmControlPlane",
        "IronpoolMachineTemplate",
        "MachineDeployment",
        "KubeadmConfigTemplate",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
    let without_kcp: Vec<&str> = docs
        .into_iter()
        .filter(|d| !d.contains("kind: KubeadmControlPlane\n"))
        .collect();
    kubectl_apply_with(cp, &["--dry-run=server"], &without_kcp.join("\n---\n"));
}

/// `clusterctl move` to a second management cluster keeps the deployed servers deployed:
/// the move pauses the Cluster, Ironpool backs up the status of each Deployment and its
/// server (clusterctl copies objects, never status) before it lets the move go on
/// (`block-move`), the servers travel with the Cluster (`move-hierarchy` on the Machine
/// CRD), and the operator on the target restores their status instead of commissioning
/// them: no boot intent is issued there, and every CAPI Machine is Running again.
#[tokio::test(flavor = "multi_thread")]
async fn clusterctl_move_keeps_deployed_servers_deployed() {
    let cp = cluster();
    let capi = tokio::task::spawn_blocking(move || Capi::shared(cp))
        .await
        .unwrap()
        .expect("Cluster API installs");
    let (workload, target) = tokio::task::spawn_blocking(|| {
        let w = ControlPlane::start().expect("workload control plane");
        let t = ControlPlane::start().expect("target management cluster");
        (w, t)
    })
    .await
    .unwrap();
    let target = Box::leak(Box::new(target));
    let target_capi = tokio::task::spawn_blocking(|| Capi::install(target))
        .await
        .unwrap()
        .expect("Cluster API on the target");
    let ns = cp.create_namespace("capi-move").await.unwrap();
    let client = client(cp).await;
    let machines: Api<Machine> = Api::namespaced(client.clone(), &ns);
    for (i, (name, pool)) in [("m-cp", "control-plane"), ("m-w", "worker")]
        .iter()
        .enumerate()
    {
        let mut m = machine(name, 60 + i as u8, pool);
        m.labels_mut()
            .insert("ironpool.dev/pool".into(), (*pool).into());
        create(&machines, &m).await;
    }
    let agent = SimAgent::start(machines.clone(), Duration::from_millis(200));
    let mut source_op = Operator::start(cp, &ns, "move-source", &["--capi"]);
    for name in ["m-cp", "m-w"] {
        wait_phase(&machines, name, MachinePhase::Ready, LONG).await;
    }
    create_cluster(capi, cp, &client, &ns, &workload, 1).await;
    let ims: Api<IronpoolMachine> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let nodes: Api<Node> = Api::all(workload.client().await.unwrap());
    let capi_machine_api = capi_api(&client, &ns, "Machine");
    let bound = eventually(LONG * 2, "both Machines Running", || async {
        let servers = register_nodes(&ims, &deployments, &nodes).await;
        let ms = capi_machines(&capi_machine_api).await;
        (ms.len() == 2 && ms.values().all(|(p, ..)| p == "Running") && servers.len() == 2)
            .then_some(servers)
    })
    .await;
    eventually(LONG, "every IronpoolMachine armed for a move", || async {
        let list = ims.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .all(|im| {
                im.annotations()
                    .contains_key(ironpool_crds::capi::BLOCK_MOVE_ANNOTATION)
            })
            .then_some(())
    })
    .await;
    let attempts = |list: &[Machine]| -> BTreeMap<String, i64> {
        list.iter()
            .map(|m| {
                let a = m
                    .status
                    .as_ref()
                    .and_then(|s| s.boot_intent.as_ref())
                    .map_or(0, |i| i.attempt);
                (m.name_any(), a)
            })
            .collect()
    };
    let before = attempts(&machines.list(&ListParams::default()).await.unwrap().items);

    target
        .kubectl()
        .args(["create", "namespace", &ns])
        .output()
        .unwrap();
    let out = capi
        .clusterctl()
        .args(["move", "-n", &ns])
        .arg(capi.kubeconfig_arg())
        .arg(format!(
            "--to-kubeconfig={}",
            target.kubeconfig_path().display()
        ))
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "clusterctl move");
    agent.stop.cancel();
    source_op.terminate();
    let _ = &target_capi;

    // The target: its own operator and agent, and the moved objects.
    let tclient = target.client().await.unwrap();
    let tmachines: Api<Machine> = Api::namespaced(tclient.clone(), &ns);
    let tagent = SimAgent::start(tmachines.clone(), Duration::from_millis(200));
    let _target_op = Operator::start(target, &ns, "move-target", &["--capi"]);
    let tims: Api<IronpoolMachine> = Api::namespaced(tclient.clone(), &ns);
    let tdeployments: Api<Deployment> = Api::namespaced(tclient.clone(), &ns);
    let tcapi = capi_api(&tclient, &ns, "Machine");
    eventually(
        LONG * 2,
        "the moved cluster Running on the same servers",
        || async {
            let ms = capi_machines(&tcapi).await;
            let running = ms.len() == 2 && ms.values().all(|(p, ..)| p == "Running");
            let servers: BTreeMap<String, String> = tims
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .filter_map(|im| Some((im.name_any(), im.status?.machine_ref?.name)))
                .collect();
            let deployed = tmachines
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .iter()
                .all(|m| phase(m) == Some(MachinePhase::Deployed));
            (running && deployed && servers == bound).then_some(())
        },
    )
    .await;
    for d in tdeployments.list(&ListParams::default()).await.unwrap() {
        let st = d.status.clone().unwrap();
        assert_eq!(
            st.phase,
            Some(ironpool_crds::deployment::DeploymentPhase::Deployed),
            "{}",
            d.name_any()
        );
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = attempts(&tmachines.list(&ListParams::default()).await.unwrap().items);
    assert_eq!(after, before, "no boot intent issued on the target");
    assert!(
        tagent.applied.lock().unwrap().is_empty(),
        "no power action on the target: {:?}",
        tagent.applied.lock().unwrap()
    );
    tagent.stop.cancel();
}
