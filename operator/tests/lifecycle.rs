//! The Machine lifecycle against a real kube-apiserver, with the real operator binary and
//! the agent's part simulated by status patches: the full walk, each failure branch, and
//! a restart in the middle of a transition.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::sim_agent::SimAgent;
use common::*;
use ironpool_crds::deployment::{DeploymentPhase, ErasePolicy};
use ironpool_crds::machine::{BootPurpose, BootTarget, MachinePhase as P, OperationResult};
use ironpool_crds::{Deployment, Machine};
use kube::Api;
use kube::api::{Patch, PatchParams};

const T: Duration = Duration::from_secs(30);

fn intent(m: &Machine) -> (BootTarget, BootPurpose, i64) {
    let i = m.status.as_ref().unwrap().boot_intent.as_ref().unwrap();
    (i.target, i.purpose, i.attempt)
}

fn ready_reason(m: &Machine) -> String {
    let c = m
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    format!("{}: {}", c.reason, c.message)
}

#[tokio::test]
async fn full_lifecycle_walk() {
    let cp = cluster();
    let ns = cp.create_namespace("walk").await.unwrap();
    let c = client(cp).await;
    let machines: Api<Machine> = Api::namespaced(c.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), &ns);
    let op = Operator::start(cp, &ns, "op-walk", &[]);
    create(&machines, &machine("m1", 1, "gpu")).await;

    // New -> Commissioning: the operator asks for the ramdisk.
    let m = wait_phase(&machines, "m1", P::Commissioning, T).await;
    assert_eq!(
        intent(&m),
        (BootTarget::Ramdisk, BootPurpose::Commission, 1)
    );
    let agent = SimAgent::start(machines.clone(), Duration::from_millis(200));
    agent.script.lock().unwrap().progress = true;

    // Commissioning -> Ready once the inventory arrives; powered off.
    let m = wait_phase(&machines, "m1", P::Ready, T).await;
    assert_eq!(intent(&m).0, BootTarget::Off);
    assert!(
        ready_reason(&m).starts_with("Ready"),
        "{}",
        ready_reason(&m)
    );

    // The commissioning's duration is in its histogram, once.
    let metrics = op.metrics();
    assert!(
        metrics.contains(
            "ironpool_operation_duration_seconds_count{operation=\"Commission\",result=\"Succeeded\"} 1\n"
        ),
        "no finished commissioning in ironpool_operation_duration_seconds:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("operation_duration"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Ready -> Allocated -> Deploying -> Deployed.
    create(
        &deployments,
        &deployment("web", "gpu", "os-v1.raw", ErasePolicy::Quick),
    )
    .await;
    let d = eventually(T, "deployment progress", || async {
        let d = deployments.get("web").await.ok()?;
        let p = d.status.as_ref()?.progress.as_ref()?;
        (p.step == "WritingImage").then_some(d)
    })
    .await;
    let p = d.status.as_ref().unwrap().progress.clone().unwrap();
    assert_eq!(
        (p.percent, p.summary.as_deref()),
        (Some(30), Some("WritingImage 30% (0.6 of 2.0 GiB)"))
    );
    let m = wait_phase(&machines, "m1", P::Deployed, T).await;
    assert_eq!(
        m.status
            .as_ref()
            .unwrap()
            .deployment_ref
            .as_ref()
            .unwrap()
            .name,
        "web"
    );
    let d = eventually(T, "deployment Deployed", || async {
        let d = deployments.get("web").await.ok()?;
        (d.status.as_ref()?.phase == Some(DeploymentPhase::Deployed)).then_some(d)
    })
    .await;
    assert_eq!(
        d.status
            .as_ref()
            .unwrap()
            .machine_ref
            .as_ref()
            .unwrap()
            .name,
        "m1"
    );

    // Changing the image redeploys.
    let patch = serde_json::json!({"spec": {"image": {"url": "http://images.test/os-v2.raw"}}});
    deployments
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually(T, "redeploy of v2", || async {
        let m = machines.get("m1").await.ok()?;
        let op = m.status.as_ref()?.last_operation.as_ref()?;
        (phase(&m) == Some(P::Deployed) && op.image.as_deref()?.contains("os-v2")).then_some(())
    })
    .await;

    // Deleting the Deployment releases and erases, then the machine is Ready again.
    delete(&deployments, "web").await;
    let m = wait_phase(&machines, "m1", P::Ready, T).await;
    assert!(m.status.as_ref().unwrap().deployment_ref.is_none());
    eventually(T, "deployment gone", || async {
        deployments
            .get_opt("web")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;

    // Exactly one intent per step: nothing was carried out twice. (Off intents may be
    // superseded before the agent gets to them, which is right: an agent applies the
    // newest intent only.)
    let steps: Vec<(String, String)> = agent
        .by_machine()
        .remove("m1")
        .unwrap()
        .into_iter()
        .filter(|(t, _)| t != "Off")
        .collect();
    let expected = [
        ("Ramdisk", "Commission"),
        ("Ramdisk", "Deploy"),
        ("Disk", "Run"),
        ("Ramdisk", "Deploy"),
        ("Disk", "Run"),
        ("Ramdisk", "Erase"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(steps, expected);
    let attempts: Vec<i64> = agent
        .applied
        .lock()
        .unwrap()
        .iter()
        .map(|a| a.attempt)
        .collect();
    assert!(
        attempts.windows(2).all(|w| w[0] < w[1]),
        "an attempt was applied twice: {attempts:?}"
    );
    agent.stop.cancel();
}

#[tokio::test]
async fn failure_branches() {
    let cp = cluster();
    let ns = cp.create_namespace("fail").await.unwrap();
    let c = client(cp).await;
    let machines: Api<Machine> = Api::namespaced(c.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), &ns);
    let _op = Operator::start(
        cp,
        &ns,
        "op-fail",
        &["--retries", "1", "--boot-timeout", "2s"],
    );
    let agent = SimAgent::start(machines.clone(), Duration::from_millis(150));

    // Commissioning fails twice (one retry): FailedCommissioning, reason names the cause.
    agent
        .script
        .lock()
        .unwrap()
        .fail
        .insert("Commission".into());
    create(&machines, &machine("bad", 2, "x")).await;
    let m = wait_phase(&machines, "bad", P::FailedCommissioning, T).await;
    assert!(
        ready_reason(&m).contains("disk /dev/vda not found"),
        "{}",
        ready_reason(&m)
    );
    assert!(
        ready_reason(&m).contains("toggle spec.maintenance"),
        "{}",
        ready_reason(&m)
    );
    assert_eq!(
        m.status
            .as_ref()
            .unwrap()
            .last_operation
            .as_ref()
            .unwrap()
            .result,
        OperationResult::Failed
    );
    // Fixing the cause and editing the spec recommissions it.
    agent.script.lock().unwrap().fail.clear();
    let patch = serde_json::json!({"spec": {"description": "replaced the disk"}});
    machines
        .patch("bad", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_phase(&machines, "bad", P::Ready, T).await;

    // The OS never checks in after the image is written: boot timeout, retry, fail.
    agent.script.lock().unwrap().silent.insert("Run".into());
    create(
        &deployments,
        &deployment("d1", "x", "os.raw", ErasePolicy::None),
    )
    .await;
    let m = wait_phase(&machines, "bad", P::FailedDeployment, T).await;
    assert!(
        ready_reason(&m).contains("did not check in"),
        "{}",
        ready_reason(&m)
    );
    let d = eventually(T, "deployment Failed", || async {
        let d = deployments.get("d1").await.ok()?;
        (d.status.as_ref()?.phase == Some(DeploymentPhase::Failed)).then_some(d)
    })
    .await;
    let cond = d
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .clone();
    assert!(cond.message.contains("machine bad"), "{cond:?}");

    // Deleting a failed deployment releases the machine (erase None: power off only).
    delete(&deployments, "d1").await;
    wait_phase(&machines, "bad", P::Ready, T).await;

    // Maintenance holds a machine; clearing it resumes.
    let hold = serde_json::json!({"spec": {"maintenance": true}});
    machines
        .patch("bad", &PatchParams::default(), &Patch::Merge(&hold))
        .await
        .unwrap();
    wait_phase(&machines, "bad", P::Maintenance, T).await;
    let free = serde_json::json!({"spec": {"maintenance": false}});
    machines
        .patch("bad", &PatchParams::default(), &Patch::Merge(&free))
        .await
        .unwrap();
    wait_phase(&machines, "bad", P::Ready, T).await;
    agent.stop.cancel();
}

#[tokio::test]
async fn restart_mid_transition_resumes_without_repeating() {
    let cp = cluster();
    let ns = cp.create_namespace("restart").await.unwrap();
    let c = client(cp).await;
    let machines: Api<Machine> = Api::namespaced(c.clone(), &ns);
    let mut op = Operator::start_fast(cp, &ns, "op-r1", &[]);
    create(&machines, &machine("r1", 3, "x")).await;
    let m = wait_phase(&machines, "r1", P::Commissioning, T).await;
    assert_eq!(intent(&m).2, 1);
    // The operator dies while the machine commissions; the ramdisk reports meanwhile.
    op.kill();
    let agent = SimAgent::start(machines.clone(), Duration::from_millis(150));
    eventually(T, "agent applied attempt 1", || async {
        let m = machines.get("r1").await.ok()?;
        (m.status.as_ref()?.provisioning.as_ref()?.attempt == 1).then_some(())
    })
    .await;
    assert_eq!(
        phase(&machines.get("r1").await.unwrap()),
        Some(P::Commissioning),
        "nobody acts while the operator is down"
    );
    // A new operator picks up where the old one stopped: Ready, with no second commission.
    let _op2 = Operator::start_fast(cp, &ns, "op-r2", &[]);
    let m = wait_phase(&machines, "r1", P::Ready, Duration::from_secs(45)).await;
    assert_eq!(intent(&m), (BootTarget::Off, BootPurpose::Idle, 2));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let steps = agent.by_machine().remove("r1").unwrap();
    assert_eq!(
        steps,
        vec![
            ("Ramdisk".to_string(), "Commission".to_string()),
            ("Off".to_string(), "Idle".to_string())
        ]
    );
    agent.stop.cancel();
}

/// A person's power on a Deployed machine (`spec.power`, `spec.powerCycleRequest`, what
/// `kubectl ironpool power` writes): off and staying off, on again, one cycle per request,
/// and the Deployment saying so.
#[tokio::test]
async fn deployed_machine_follows_a_persons_power() {
    let cp = cluster();
    let ns = cp.create_namespace("power").await.unwrap();
    let c = client(cp).await;
    let machines: Api<Machine> = Api::namespaced(c.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), &ns);
    let _op = Operator::start(cp, &ns, "op-power", &[]);
    let agent = SimAgent::start(machines.clone(), Duration::from_millis(200));
    create(&machines, &machine("p1", 71, "pw")).await;
    wait_phase(&machines, "p1", P::Ready, T).await;
    create(
        &deployments,
        &deployment("app", "pw", "os-v1.raw", ErasePolicy::Quick),
    )
    .await;
    let m = wait_phase(&machines, "p1", P::Deployed, T).await;
    let run_attempt = intent(&m).2;
    let spec = |v: serde_json::Value| {
        let machines = machines.clone();
        async move {
            machines
                .patch("p1", &PatchParams::default(), &Patch::Merge(&v))
                .await
                .unwrap();
        }
    };
    let deployment_reason = || async {
        let d = deployments.get("app").await.ok()?;
        let c = d
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")?
            .clone();
        Some((c.status, c.reason))
    };

    // Off: an Off intent for Stop, carried out; the machine stays Deployed and says why.
    spec(serde_json::json!({"spec": {"power": "Off"}})).await;
    let m = eventually(T, "powered off as asked", || async {
        let m = machines.get("p1").await.ok()?;
        let st = m.status.as_ref()?;
        (st.power.as_ref()?.state == ironpool_crds::machine::PowerState::Off
            && ready_reason(&m).starts_with("PoweredOff"))
        .then_some(m)
    })
    .await;
    assert_eq!(
        intent(&m),
        (BootTarget::Off, BootPurpose::Stop, run_attempt + 1)
    );
    assert_eq!(phase(&m), Some(P::Deployed));
    eventually(T, "the Deployment names the power-off", || async {
        (deployment_reason().await? == ("True".into(), "PoweredOff".into())).then_some(())
    })
    .await;

    // A cycle request while off does not cycle (the plugin refuses it; the operator waits,
    // unrecorded).
    spec(serde_json::json!({"spec": {"powerCycleRequest": "while-off"}})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = machines.get("p1").await.unwrap();
    assert_eq!(intent(&m).2, run_attempt + 1, "cycled while off");
    assert_eq!(m.status.as_ref().unwrap().power_cycle_handled, None);

    // On: the deployed OS boots again, and that boot answers the pending request: one
    // boot, not two.
    spec(serde_json::json!({"spec": {"power": "On"}})).await;
    let m = eventually(T, "booted again", || async {
        let m = machines.get("p1").await.ok()?;
        (intent(&m) == (BootTarget::Disk, BootPurpose::Run, run_attempt + 2)
            && ready_reason(&m).starts_with("Deployed"))
        .then_some(m)
    })
    .await;
    assert_eq!(phase(&m), Some(P::Deployed));
    assert_eq!(
        m.status.as_ref().unwrap().power_cycle_handled.as_deref(),
        Some("while-off")
    );

    // Cycle: one new Disk/Run attempt per request value, recorded; the same value again
    // does nothing.
    spec(serde_json::json!({"spec": {"powerCycleRequest": "2026-12-07T11:00:00Z"}})).await;
    let m = eventually(T, "cycled once", || async {
        let m = machines.get("p1").await.ok()?;
        (m.status.as_ref()?.power_cycle_handled.as_deref() == Some("2026-12-07T11:00:00Z")
            && ready_reason(&m).starts_with("Deployed"))
        .then_some(m)
    })
    .await;
    assert_eq!(
        intent(&m),
        (BootTarget::Disk, BootPurpose::Run, run_attempt + 3)
    );
    spec(serde_json::json!({"spec": {"description": "touched"}})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = machines.get("p1").await.unwrap();
    assert_eq!(
        intent(&m).2,
        run_attempt + 3,
        "the same request cycled twice"
    );
    assert_eq!(
        deployment_reason().await,
        Some(("True".into(), "Deployed".into()))
    );
    let cycles = agent
        .applied
        .lock()
        .unwrap()
        .iter()
        .filter(|a| a.machine == "p1" && a.attempt > run_attempt)
        .map(|a| format!("{}/{}", a.target, a.purpose))
        .collect::<Vec<_>>();
    assert_eq!(cycles, ["Off/Stop", "Disk/Run", "Disk/Run"]);
    agent.stop.cancel();
}
