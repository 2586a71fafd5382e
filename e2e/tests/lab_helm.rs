//! The lab on Helm (`ironpool_e2e::lab::Runtime::Helm`): a real node (kubelet and
//! containerd built from their Go modules) runs the chart's pods, and a QEMU machine on the
//! node's provisioning bridge, behind an IPMI BMC, goes through the whole lifecycle served
//! by the agent pod: it PXE-boots unknown and is enlisted, commissioned and deployed. The
//! agent pod powers it with the ipmitool its image carries, serves DHCP, TFTP, the iPXE
//! script, the ramdisk from the boot-assets image and the OS image from its cache.
//!
//! Mid-deployment, `helm upgrade` changes a value that rolls both the operator's replicas
//! and the agent's pod; the deployment still ends Deployed, with no repeated power action.
//!
//! Real Argo CD (`ironpool_e2e::argocd`) manages the Deployment from a git repository: its
//! health, by the chart README's Lua check, is Healthy once the machine is Deployed, and
//! the Application stays Synced while the operator writes status.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use ironpool_e2e::argocd::ArgoCd;
use ironpool_e2e::lab::{Artifacts, BmcKind, HELM_NAMESPACE, Lab, LabMachine, NAMESPACE, Runtime};
use ironpool_e2e::qemu::Firmware;

const MIN: Duration = Duration::from_secs(60);

/// Power actions (not boot-device settings) the BMC emulators logged for `vm`.
fn power_events(lab: &Lab, vm: &str) -> Vec<String> {
    lab.bmc_events()
        .into_iter()
        .filter(|e| {
            let mut words = e.split_whitespace();
            words.next() == Some(vm) && words.next().is_some_and(|w| !w.starts_with("boot"))
        })
        .collect()
}

/// Names of the release's pods of `component` that are not terminating.
fn pods(lab: &Lab, component: &str) -> Vec<String> {
    let out = lab
        .cp
        .kubectl()
        .args(["-n", HELM_NAMESPACE, "get", "pods", "-o", "json"])
        .arg(format!("-lapp.kubernetes.io/component={component}"))
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pod| pod["metadata"]["deletionTimestamp"].is_null())
        .map(|pod| pod["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_agent_pod_enlists_commissions_and_deploys_a_vm() {
    let dir = tempfile::tempdir().unwrap();
    let artifacts = Artifacts::build().unwrap();
    let machine = LabMachine {
        vm: "bios-1".into(),
        mac: "52:54:00:77:00:02".into(),
        firmware: Firmware::Bios,
        bmc: BmcKind::Ipmi,
        memory_mib: 512,
        disk_mib: 256,
    };
    let started = Instant::now();
    let lab = Lab::start_as(dir.path(), artifacts, vec![machine], Runtime::Helm).unwrap();
    let mut lab = lab;
    let up = started.elapsed();

    lab.adopt_enlisted(10 * MIN).unwrap();
    let ready = lab.wait_all("Ready", 20 * MIN).unwrap();
    eprintln!(
        "commissioned by the agent pod: Ready {:.0?} after the lab was up",
        ready
    );

    let argocd = ArgoCd::start(&lab.cp, dir.path()).unwrap();
    let deploy_started = Instant::now();
    lab.deploy(0, "os.raw", None).unwrap();
    // The same manifest (Secret and Deployment), from git, as an Argo CD Application.
    let manifest =
        std::fs::read_to_string(dir.path().join("manifests/deployment-bios-1.yaml")).unwrap();
    argocd
        .commit_file("lab/deployment-bios-1.yaml", &manifest)
        .unwrap();
    argocd
        .apply_application("lab-bios-1", "lab", NAMESPACE, None)
        .unwrap();
    lab.wait_for("the machine is Deploying", 5 * MIN, |l| {
        Ok(l.phase(0)?.as_deref() == Some("Deploying"))
    })
    .unwrap();
    let before = power_events(&lab, "bios-1").len();

    // A value both pod templates read: every operator replica and the agent pod roll.
    let old_operators = pods(&lab, "operator");
    let old_agents = pods(&lab, "agent");
    lab.helm_upgrade(&["logFormat=json"]).unwrap();
    let new_operators = pods(&lab, "operator");
    let new_agents = pods(&lab, "agent");
    assert!(
        new_operators.iter().all(|p| !old_operators.contains(p)),
        "the operator pods rolled: {old_operators:?} -> {new_operators:?}"
    );
    assert!(
        new_agents.iter().all(|p| !old_agents.contains(p)),
        "the agent pod rolled: {old_agents:?} -> {new_agents:?}"
    );

    lab.wait_for("the machine is Deployed", 25 * MIN, |l| {
        Ok(l.phase(0)?.as_deref() == Some("Deployed"))
    })
    .unwrap();
    let deployed = deploy_started.elapsed();
    // Argo CD reads the Deployment as Healthy, and nothing the operator wrote is drift.
    let health = (0..240)
        .find_map(|_| {
            let _ = argocd.refresh("lab-bios-1");
            let h = argocd
                .resource_health(
                    "lab-bios-1",
                    "metal.ironpool.dev",
                    "Deployment",
                    NAMESPACE,
                    "bios-1",
                )
                .ok()
                .flatten();
            if h.as_ref().is_some_and(|(status, _)| status == "Healthy") {
                return h;
            }
            std::thread::sleep(Duration::from_millis(500));
            None
        })
        .unwrap_or_else(|| {
            panic!(
                "Argo CD never read Deployment bios-1 as Healthy\n{}",
                argocd.log_tails()
            )
        });
    eprintln!("Argo CD: Deployment bios-1 {} ({})", health.0, health.1);
    argocd
        .wait_app("lab-bios-1", "Synced", "Healthy", 2 * MIN)
        .unwrap();
    let booted = lab.boot_step(0, "OSBooted").unwrap().unwrap();
    assert!(booted.contains("proof-of-user-data bios-1"), "{booted}");
    let during = power_events(&lab, "bios-1")[before..].to_vec();
    assert!(
        during.len() <= 2,
        "at most the ramdisk boot and the disk boot across the upgrade, got {during:?}"
    );
    eprintln!("{}", lab.table().unwrap());
    if let Ok(table) = lab.phases_table() {
        eprintln!("{table}");
    }
    eprintln!(
        "lab on Helm: up (node, helm install, pods Ready) in {:.0?}; enlist + commission {:.0?}; \
         deploy (Deployment created -> Deployed, across a helm upgrade) {:.0?}",
        up, ready, deployed
    );
}
