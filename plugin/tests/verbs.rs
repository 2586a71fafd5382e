//! Every verb of `kubectl ironpool` against a real kube-apiserver with Ironpool's CRDs, run
//! as kubectl runs a plugin (the binary, KUBECONFIG), including bad input: an unknown
//! machine, the wrong phase for the verb, an invalid MAC, a server enlisted twice.
//! No operator runs: the test writes the statuses the operator and agent would.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::Write;
use std::process::{Command, Stdio};

use ironpool_crds::{Deployment, Machine, MachineInventory};
use ironpool_e2e::ControlPlane;
use k8s_openapi::api::core::v1::{Event, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

fn cluster() -> &'static ControlPlane {
    static READY: std::sync::OnceLock<&'static ControlPlane> = std::sync::OnceLock::new();
    READY.get_or_init(|| {
        let cp = ControlPlane::shared().expect("control plane");
        ironpool_e2e::cluster::install_crds(cp).expect("CRDs");
        cp
    })
}

/// Runs `kubectl-ironpool -n NS ARGS` with `stdin`; (exit code, stdout, stderr).
fn plugin(ns: &str, args: &[&str], stdin: &str) -> (i32, String, String) {
    // `timeout`: a verb that hangs fails the test with exit code 124 instead of stalling it.
    let mut child = Command::new("timeout")
        .arg("60")
        .arg(env!("CARGO_BIN_EXE_kubectl-ironpool"))
        .env("KUBECONFIG", cluster().kubeconfig_path())
        .args(["-n", ns])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(ns: &str, args: &[&str]) -> String {
    let (code, out, err) = plugin(ns, args, "");
    assert_eq!(code, 0, "kubectl ironpool {args:?} failed:\n{err}\n{out}");
    out
}

fn fails(ns: &str, args: &[&str], stdin: &str, says: &[&str]) -> String {
    let (code, out, err) = plugin(ns, args, stdin);
    assert_eq!(
        code, 1,
        "kubectl ironpool {args:?} should fail:\n{out}{err}"
    );
    for s in says {
        assert!(
            err.contains(s),
            "kubectl ironpool {args:?}: {s:?} not in:\n{err}"
        );
    }
    err
}

async fn set_status(api: &Api<Machine>, name: &str, status: Value) {
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": status })),
    )
    .await
    .unwrap();
}

fn ready(status: &str, reason: &str, message: &str) -> Value {
    json!([{"type": "Ready", "status": status, "reason": reason, "message": message,
            "lastTransitionTime": Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()}])
}

#[tokio::test]
async fn every_verb_against_a_real_apiserver() {
    let cp = cluster();
    let ns = cp.create_namespace("plugin").await.unwrap();
    let client: Client = cp.client().await.unwrap();
    let machines: Api<Machine> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);

    // enlist: a new server with its BMC; the password comes on stdin into a new Secret.
    let (code, out, err) = plugin(
        &ns,
        &[
            "enlist",
            "--mac",
            "52:54:00:AA:BB:01",
            "--bmc",
            "redfish+http://10.0.0.7/redfish/v1/Systems/1",
            "--bmc-username",
            "admin",
            "-l",
            "rack=r1",
        ],
        "s3cret\n",
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "machine enlisted-52-54-00-aa-bb-01 enlisted; the operator commissions it now"
        ),
        "{out}"
    );
    let m = machines.get("enlisted-52-54-00-aa-bb-01").await.unwrap();
    let bmc = m.spec.bmc.as_ref().unwrap();
    assert_eq!(
        bmc.credentials_secret_ref.name,
        "enlisted-52-54-00-aa-bb-01-bmc"
    );
    assert_eq!(m.metadata.labels.as_ref().unwrap()["rack"], "r1");
    let secret = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("enlisted-52-54-00-aa-bb-01-bmc")
        .await
        .unwrap();
    assert_eq!(secret.data.unwrap()["password"].0, b"s3cret");
    // The same server again, under another name: refused, naming the Machine it is.
    fails(
        &ns,
        &["enlist", "--mac", "52:54:00:aa:bb:01", "--name", "again"],
        "",
        &[
            "MAC 52:54:00:aa:bb:01 is Machine enlisted-52-54-00-aa-bb-01 already",
            "kubectl edit bmm",
        ],
    );
    // A bad MAC: the apiserver's own message says what is wrong.
    fails(
        &ns,
        &["enlist", "--mac", "52:54:00:zz", "--name", "bad-mac"],
        "",
        &["cannot create Machine bad-mac", "bootMACAddress"],
    );
    // A BMC without credentials.
    fails(
        &ns,
        &[
            "enlist",
            "--mac",
            "52:54:00:aa:bb:09",
            "--bmc",
            "ipmi://10.0.0.9",
        ],
        "",
        &["--bmc needs credentials"],
    );
    // The agent enlisted a server (no BMC); enlist completes it with the BMC.
    let mut agent_made = Machine::new(
        "enlisted-52-54-00-aa-bb-02",
        ironpool_crds::machine::MachineSpec::for_boot_mac("52:54:00:aa:bb:02"),
    );
    agent_made.metadata.namespace = Some(ns.clone());
    machines
        .create(&PostParams::default(), &agent_made)
        .await
        .unwrap();
    let out = ok(
        &ns,
        &[
            "enlist",
            "--mac",
            "52:54:00:aa:bb:02",
            "--bmc",
            "ipmi://10.0.0.8",
            "--bmc-secret",
            "bmc-8",
        ],
    );
    assert!(
        out.contains("machine enlisted-52-54-00-aa-bb-02: BMC set"),
        "{out}"
    );
    let m = machines.get("enlisted-52-54-00-aa-bb-02").await.unwrap();
    assert_eq!(m.spec.bmc.unwrap().address, "ipmi://10.0.0.8");

    // A small fleet in several states, as the operator and agent would have written it.
    let mk = |name: &str, mac: &str| {
        let mut m = Machine::new(name, ironpool_crds::machine::MachineSpec::for_boot_mac(mac));
        m.metadata.namespace = Some(ns.clone());
        m
    };
    for (name, mac) in [
        ("r1-u01", "52:54:00:00:00:01"),
        ("r1-u02", "52:54:00:00:00:02"),
        ("r1-u03", "52:54:00:00:00:03"),
        ("r1-u04", "52:54:00:00:00:04"),
    ] {
        machines
            .create(&PostParams::default(), &mk(name, mac))
            .await
            .unwrap();
    }
    let now = Timestamp::now();
    let t = |s: i64| (now - std::time::Duration::from_secs(s as u64)).to_string();
    set_status(&machines, "r1-u01", json!({"phase": "Ready", "power": {"state": "Off"}, "conditions": ready("True", "Ready", "commissioned")})).await;
    set_status(&machines, "r1-u02", json!({"phase": "FailedDeployment", "power": {"state": "On"}, "deploymentRef": {"name": "db"},
        "conditions": ready("False", "ChecksumMismatch", "the image's sha256 is not the Deployment's checksum: correct spec.image.checksum"),
        "boot": [{"step": "DHCPDiscover", "at": t(60)}, {"step": "DHCPAck", "detail": "10.20.0.17", "at": t(59)},
                 {"step": "TFTPRead", "detail": "ipxe.efi", "at": t(58)}, {"step": "RamdiskCheckIn", "at": t(40)}]})).await;
    set_status(&machines, "r1-u03", json!({"phase": "Deploying", "power": {"state": "On"}, "deploymentRef": {"name": "web"},
        "bootIntent": {"target": "Ramdisk", "purpose": "Deploy", "attempt": 2},
        "provisioning": {"attempt": 2, "step": "WritingImage", "bytesWritten": 300 << 20, "bytesTotal": 1000 << 20, "updatedAt": t(1)},
        "conditions": ready("False", "Deploying", "writing the image")})).await;
    let web = json!({"apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"machineRef": {"name": "r1-u03"}, "erase": "Quick",
                 "image": {"url": "http://images.test/os.raw", "format": "raw", "checksum": format!("sha256:{}", "a".repeat(64))}}});
    deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(web.clone()).unwrap(),
        )
        .await
        .unwrap();
    let mut capi = web.clone();
    capi["metadata"] = json!({"name": "db", "ownerReferences": [{"apiVersion": "infrastructure.cluster.x-k8s.io/v1beta2",
        "kind": "IronpoolMachine", "name": "c1-md-0-x", "uid": "00000000-0000-0000-0000-000000000001"}]});
    capi["spec"]["machineRef"]["name"] = json!("r1-u02");
    deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(capi).unwrap(),
        )
        .await
        .unwrap();
    deployments
        .patch_status("db", &PatchParams::default(), &Patch::Merge(&json!({"status": {"phase": "Failed",
            "machineRef": {"name": "r1-u02"}, "conditions": ready("False", "ChecksumMismatch", "machine r1-u02: the image's sha256 differs")}})))
        .await
        .unwrap();
    let inventory: MachineInventory = serde_json::from_value(json!({"apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "MachineInventory",
        "metadata": {"name": "r1-u02"}, "spec": {"collectedAt": t(3600), "hardware": {
            "cpu": {"model": "AMD EPYC 7543", "cores": 32, "threads": 64, "sockets": 1, "architecture": "x86_64"},
            "memory": "256Gi", "disks": [{"name": "nvme0n1", "sizeBytes": 3840755982336i64, "type": "NVMe", "model": "SAMSUNG MZQL23T8", "serialNumber": "S64H1"}],
            "nics": [{"name": "ens1f0", "mac": "52:54:00:00:00:02", "link": true, "speedMbps": 25000}],
            "system": {"manufacturer": "Supermicro", "product": "AS-1124US", "serialNumber": "A123"}}}})).unwrap();
    Api::<MachineInventory>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &inventory)
        .await
        .unwrap();
    let event: Event = serde_json::from_value(json!({"metadata": {"name": "r1-u02.deploy-failed"},
        "involvedObject": {"apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Machine", "name": "r1-u02", "namespace": ns},
        "reason": "ChecksumMismatch", "message": "deploy failed: checksum mismatch", "type": "Warning",
        "lastTimestamp": t(30), "firstTimestamp": t(30), "count": 1, "source": {"component": "ironpool-operator"}})).unwrap();
    Api::<Event>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &event)
        .await
        .unwrap();

    // status: phases, power, and what needs a person with its own reason and message.
    let out = ok(&ns, &["status"]);
    assert!(
        out.contains(&format!("6 Machines in namespace {ns}")),
        "{out}"
    );
    for want in [
        "FailedDeployment",
        "machine/r1-u02",
        "ChecksumMismatch",
        "correct spec.image.checksum",
        "deployment/db",
        "Deploying",
    ] {
        assert!(out.contains(want), "{want} not in:\n{out}");
    }
    let summary: Value = serde_json::from_str(&ok(&ns, &["status", "-o", "json"])).unwrap();
    assert_eq!(summary["machines"], 6);
    assert_eq!(summary["phases"]["Ready"], 1);
    assert_eq!(summary["phases"]["New"], 3, "{summary}");
    assert_eq!(summary["deployments"]["Failed"], 1);
    assert_eq!(
        summary["attention"][0]["name"], "db",
        "failures first: {summary}"
    );
    let yaml: Value = serde_saphyr::from_str(&ok(&ns, &["status", "-o", "yaml"])).unwrap();
    assert_eq!(yaml, summary);

    // describe: the story of one machine.
    let out = ok(&ns, &["describe", "r1-u02"]);
    for want in [
        "Phase:        FailedDeployment (since",
        "ChecksumMismatch: the image's sha256",
        "Deployment:   db",
        "+0.000s",
        "DhcpAck",
        "10.20.0.17",
        "+20.000s",
        "RamdiskCheckIn",
        "MachineInventory r1-u02 (collected 60m ago)",
        "AMD EPYC 7543",
        "nvme0n1",
        "3.5 TiB",
        "ens1f0",
        "25000 Mb/s",
        "deploy failed: checksum mismatch",
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }
    let described: Value =
        serde_json::from_str(&ok(&ns, &["describe", "r1-u02", "-o", "json"])).unwrap();
    assert_eq!(described["machine"]["metadata"]["name"], "r1-u02");
    assert_eq!(
        described["inventory"]["spec"]["hardware"]["cpu"]["cores"],
        32
    );
    assert_eq!(described["events"][0]["reason"], "ChecksumMismatch");
    fails(
        &ns,
        &["describe", "r9-u99"],
        "",
        &["machine r9-u99 not found in namespace", "kubectl get bmm"],
    );

    // watch: the machine writing its image, with its progress.
    let out = ok(&ns, &["watch", "--once"]);
    assert!(
        out.contains("r1-u03")
            && out.contains("WritingImage")
            && out.contains(" 30% 300.0 MiB of 1000.0 MiB"),
        "{out}"
    );
    assert!(
        !out.contains("r1-u01"),
        "a Ready machine is not in a long step:\n{out}"
    );
    let out = ok(&ns, &["watch", "--once", "--all"]);
    assert!(out.contains("r1-u01"), "{out}");

    // release: the wrong phase, Cluster API's Deployment, then a release that goes through.
    fails(
        &ns,
        &["release", "r1-u01"],
        "",
        &["machine r1-u01 is Ready: no Deployment holds it, so there is nothing to release"],
    );
    fails(&ns, &["release", "nope"], "", &["machine nope not found"]);
    fails(
        &ns,
        &["release", "r1-u02"],
        "",
        &[
            "Cluster API's IronpoolMachine c1-md-0-x",
            "scale its MachineDeployment down",
        ],
    );
    let out = ok(&ns, &["release", "r1-u03"]);
    assert!(
        out.contains("machine r1-u03: releasing (Deployment web deleted; erase Quick)"),
        "{out}"
    );
    assert!(
        deployments.get_opt("web").await.unwrap().is_none(),
        "Deployment web still there"
    );
    let released: Value =
        serde_json::from_str(&ok(&ns, &["release", "r1-u02", "--force", "-o", "json"])).unwrap();
    assert_eq!(
        released,
        json!({"machine": "r1-u02", "deployment": "db", "erase": "Quick"})
    );

    // power: written into the spec; refused where it does not apply, saying what to do.
    machines
        .patch(
            "r1-u04",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"bmc": {"address": "ipmi://10.0.0.4", "credentialsSecretRef": {"name": "bmc-4"}}}})),
        )
        .await
        .unwrap();
    set_status(
        &machines,
        "r1-u04",
        json!({"phase": "Deployed", "power": {"state": "On"}, "deploymentRef": {"name": "api"},
        "conditions": ready("True", "Deployed", "the deployed OS runs from disk")}),
    )
    .await;
    fails(
        &ns,
        &["power", "off", "nope"],
        "",
        &["machine nope not found"],
    );
    fails(
        &ns,
        &["power", "on", "r1-u01"],
        "",
        &["machine r1-u01 has no BMC", "add spec.bmc"],
    );
    fails(
        &ns,
        &["power", "cycle", "enlisted-52-54-00-aa-bb-02"],
        "",
        &["is New: the lifecycle decides its power until it is Deployed"],
    );
    let out = ok(&ns, &["power", "off", "r1-u04"]);
    assert!(out.contains("machine r1-u04: powering off"), "{out}");
    let spec = |m: Machine| serde_json::to_value(m.spec).unwrap();
    assert_eq!(spec(machines.get("r1-u04").await.unwrap())["power"], "Off");
    fails(
        &ns,
        &["power", "cycle", "r1-u04"],
        "",
        &["powered off as asked", "kubectl ironpool power on r1-u04"],
    );
    ok(&ns, &["power", "on", "r1-u04"]);
    assert_eq!(spec(machines.get("r1-u04").await.unwrap())["power"], "On");
    let cycled: Value =
        serde_json::from_str(&ok(&ns, &["power", "cycle", "r1-u04", "-o", "json"])).unwrap();
    let request = spec(machines.get("r1-u04").await.unwrap())["powerCycleRequest"].clone();
    assert!(request.is_string(), "no powerCycleRequest: {request}");
    assert_eq!(
        cycled,
        json!({"machine": "r1-u04", "action": "cycle", "patch": {"spec": {"powerCycleRequest": request}}})
    );
    // Bad command line: clap's usage error, exit 2.
    let (code, _, err) = plugin(&ns, &["power", "sideways", "r1-u04"], "");
    assert_eq!(code, 2, "{err}");

    // rescue: the public key into spec.rescue, which the apiserver's schema accepts;
    // refused where it does not apply; --exit takes it out again.
    let keys = tempfile::tempdir().unwrap();
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKq4 ops@jump";
    let public = keys.path().join("id_ed25519.pub");
    std::fs::write(&public, format!("{key}\n")).unwrap();
    let private = keys.path().join("id_ed25519");
    std::fs::write(&private, "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n").unwrap();
    let (public, private) = (public.to_str().unwrap(), private.to_str().unwrap());
    fails(
        &ns,
        &["rescue", "r1-u04", "--ssh-key", private],
        "",
        &["is a private key", "pass the public one"],
    );
    fails(
        &ns,
        &["rescue", "r1-u01", "--ssh-key", public],
        "",
        &["machine r1-u01 has no BMC"],
    );
    fails(
        &ns,
        &["rescue", "nope", "--ssh-key", public],
        "",
        &["machine nope not found"],
    );
    let out = ok(&ns, &["rescue", "r1-u04", "--ssh-key", public]);
    assert!(
        out.contains("machine r1-u04: booting into rescue mode with 1 SSH key"),
        "{out}"
    );
    assert_eq!(
        spec(machines.get("r1-u04").await.unwrap())["rescue"],
        json!({"sshAuthorizedKeys": [key]})
    );
    let described = ok(&ns, &["describe", "r1-u04"]);
    assert!(
        described.contains(
            "Rescue:       asked (spec.rescue, 1 SSH key), the rescue ramdisk has not reported yet"
        ),
        "{described}"
    );
    fails(
        &ns,
        &["rescue", "r1-u04", "--ssh-key", public],
        "",
        &[
            "in rescue mode already",
            "kubectl ironpool rescue --exit r1-u04",
        ],
    );
    let left: Value =
        serde_json::from_str(&ok(&ns, &["rescue", "--exit", "r1-u04", "-o", "json"])).unwrap();
    assert_eq!(
        left,
        json!({"machine": "r1-u04", "action": "exit-rescue", "patch": {"spec": {"rescue": null}}})
    );
    assert!(
        spec(machines.get("r1-u04").await.unwrap())
            .get("rescue")
            .is_none()
    );
    fails(
        &ns,
        &["rescue", "--exit", "r1-u04"],
        "",
        &["is not in rescue mode"],
    );
    let (code, _, err) = plugin(
        &ns,
        &["rescue", "r1-u04", "--exit", "--ssh-key", public],
        "",
    );
    assert_eq!(code, 2, "--exit with keys is a usage error: {err}");
}
