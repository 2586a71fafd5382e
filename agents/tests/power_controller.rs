//! The power controller against a real kube-apiserver and sushy-emulator: intents applied
//! exactly once (also across a restart in the middle of an operation), and the
//! BMCReachable condition for wrong credentials, missing Secrets and dead BMCs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use ironpool_agents::power::{self, Config, status::APPLYING_ATTEMPT};
use ironpool_crds::Machine;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use support::{SlowProxy, SushyOptions, eventually, start_sushy};
use tokio_util::sync::CancellationToken;

const UUID: &str = "11111111-2222-3333-4444-555555555555";

async fn setup() -> (Client, String) {
    let cp = ironpool_e2e::ControlPlane::shared().unwrap();
    ironpool_e2e::cluster::install_crds(cp).unwrap();
    let ns = cp.create_namespace("power").await.unwrap();
    (cp.client().await.unwrap(), ns)
}

async fn secret(client: &Client, ns: &str, name: &str, user: &str, pass: &str) {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
        "stringData": {"username": user, "password": pass}});
    api.patch(name, &PatchParams::apply("test").force(), &Patch::Apply(s))
        .await
        .unwrap();
}

async fn machine(
    client: &Client,
    ns: &str,
    name: &str,
    address: &str,
    secret: &str,
) -> Api<Machine> {
    let api: Api<Machine> = Api::namespaced(client.clone(), ns);
    let m: Machine = serde_json::from_value(json!({
        "apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Machine",
        "metadata": {"name": name},
        "spec": {"bootMACAddress": "52:54:00:12:34:56",
                 "bmc": {"address": address, "credentialsSecretRef": {"name": secret}}}
    }))
    .unwrap();
    api.create(&PostParams::default(), &m).await.unwrap();
    api
}

/// Writes status.bootIntent as the operator would (its own field manager).
async fn intent(api: &Api<Machine>, name: &str, target: &str, attempt: i64) {
    let purpose = match target {
        "Ramdisk" => "Commission",
        "Disk" => "Run",
        _ => "Idle",
    };
    let p = json!({"apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Machine",
        "status": {"bootIntent": {"target": target, "purpose": purpose, "attempt": attempt}}});
    api.patch_status(
        name,
        &PatchParams::apply("test-operator").force(),
        &Patch::Apply(p),
    )
    .await
    .unwrap();
}

fn start(client: &Client, ns: &str) -> tokio::task::JoinHandle<()> {
    start_with(client, ns, power::Metrics::default())
}

fn start_with(client: &Client, ns: &str, metrics: power::Metrics) -> tokio::task::JoinHandle<()> {
    let config = Config {
        metrics,
        namespace: Some(ns.to_string()),
        sync_interval: Duration::from_secs(1),
        backoff_base: Duration::from_millis(300),
        backoff_max: Duration::from_secs(2),
        bmc_timeout: Duration::from_secs(10),
        ..Config::default()
    };
    let client = client.clone();
    tokio::spawn(async move {
        power::run(client, config, CancellationToken::new())
            .await
            .unwrap();
    })
}

async fn applied(api: &Api<Machine>, name: &str) -> i64 {
    let m = api.get(name).await.unwrap();
    m.status
        .and_then(|s| s.boot_applied)
        .map_or(0, |a| a.attempt)
}

async fn wait_applied(api: &Api<Machine>, name: &str, attempt: i64) {
    let ok = eventually(Duration::from_secs(40), || async {
        (applied(api, name).await >= attempt).then_some(())
    })
    .await;
    assert!(
        ok.is_some(),
        "attempt {attempt} never applied: {:?}",
        api.get(name).await.unwrap().status
    );
}

async fn emulator_power(port: u16) -> String {
    let out = tokio::process::Command::new("curl")
        .args([
            "-s",
            &format!("http://127.0.0.1:{port}/redfish/v1/Systems/{UUID}"),
        ])
        .output()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["PowerState"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn intents_apply_exactly_once_even_across_a_restart_mid_operation() {
    let (client, ns) = setup().await;
    let emu = start_sushy(&SushyOptions {
        systems: vec![(UUID.into(), "m1".into(), "On".into())],
        ..Default::default()
    })
    .unwrap();
    let proxy = SlowProxy::start(emu.port, Duration::ZERO).await.unwrap();
    secret(&client, &ns, "m1-bmc", "admin", "password").await;
    let api = machine(
        &client,
        &ns,
        "m1",
        &format!("redfish+http://127.0.0.1:{}", proxy.port),
        "m1-bmc",
    )
    .await;
    let restarts = || proxy.count(r#"{"ResetType":"ForceRestart"}"#);

    intent(&api, "m1", "Ramdisk", 1).await;
    let a = start(&client, &ns);
    wait_applied(&api, "m1", 1).await;
    assert_eq!(restarts(), 1, "a running machine is cycled once");
    assert_eq!(proxy.count(r#""BootSourceOverrideTarget":"Pxe""#), 1);
    tokio::time::sleep(Duration::from_secs(3)).await; // several syncs and watch events
    assert_eq!(restarts(), 1, "no second cycle for the same attempt");
    let m = api.get("m1").await.unwrap();
    let st = m.status.unwrap();
    assert!(st.power.is_some());
    let c = st
        .conditions
        .iter()
        .find(|c| c.type_ == "BMCReachable")
        .unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "Reachable")
    );

    // Attempt 2: the agent dies after the BMC received the reset but before it answered.
    eventually(Duration::from_secs(20), || async {
        (emulator_power(emu.port).await == "On").then_some(())
    })
    .await
    .unwrap();
    *proxy.only.lock().unwrap() = Some("ComputerSystem.Reset".into());
    proxy
        .delay_ms
        .store(4000, std::sync::atomic::Ordering::Relaxed);
    intent(&api, "m1", "Ramdisk", 2).await;
    eventually(Duration::from_secs(20), || async {
        (restarts() == 2).then_some(())
    })
    .await
    .expect("second reset sent");
    a.abort();
    let _ = a.await;
    assert_eq!(
        applying(&api, "m1").await,
        Some(2),
        "the marker precedes the action"
    );
    assert_eq!(applied(&api, "m1").await, 1);
    proxy
        .delay_ms
        .store(0, std::sync::atomic::Ordering::Relaxed);
    let b = start(&client, &ns);
    wait_applied(&api, "m1", 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        restarts(),
        2,
        "the restarted agent must not cycle attempt 2 again"
    );
    assert_eq!(
        applying(&api, "m1").await,
        None,
        "the bootApplied write removes the marker"
    );

    // Attempt 3: off, once (once the machine is on again: an Off machine needs nothing).
    eventually(Duration::from_secs(20), || async {
        (emulator_power(emu.port).await == "On").then_some(())
    })
    .await
    .unwrap();
    intent(&api, "m1", "Off", 3).await;
    wait_applied(&api, "m1", 3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(proxy.count(r#"{"ResetType":"ForceOff"}"#), 1);
    assert_eq!(applying(&api, "m1").await, None, "an off is not marked");

    // Upgrade: an older agent died after recording attempt 4 in the annotation (and the
    // machine is on): the new agent must not cycle it again, and removes the annotation.
    b.abort();
    let _ = b.await;
    // As the older agent wrote it: a metadata apply under the agent's field manager.
    let mark = json!({"apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Machine",
        "metadata": {"name": "m1", "annotations": {APPLYING_ATTEMPT: "4"}}});
    api.patch(
        "m1",
        &PatchParams::apply("ironpool-agent").force(),
        &Patch::Apply(&mark),
    )
    .await
    .unwrap();
    power_on(emu.port).await;
    intent(&api, "m1", "Ramdisk", 4).await;
    let c = start(&client, &ns);
    wait_applied(&api, "m1", 4).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        restarts(),
        2,
        "an annotation from an older agent is honoured"
    );
    let cleared = eventually(Duration::from_secs(10), || async {
        let m = api.get("m1").await.ok()?;
        (!m.metadata
            .annotations
            .unwrap_or_default()
            .contains_key(APPLYING_ATTEMPT))
        .then_some(())
    })
    .await;
    assert!(cleared.is_some(), "the old annotation was not removed");
    c.abort();
}

async fn applying(api: &Api<Machine>, name: &str) -> Option<i64> {
    let m = api.get(name).await.unwrap();
    m.status?.boot_applying.map(|a| a.attempt)
}

/// Powers the emulated system on behind the agent's back, and waits until it reads On.
async fn power_on(port: u16) {
    let out = tokio::process::Command::new("curl")
        .args([
            "-s",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"ResetType":"On"}"#,
            &format!(
                "http://127.0.0.1:{port}/redfish/v1/Systems/{UUID}/Actions/ComputerSystem.Reset"
            ),
        ])
        .status()
        .await
        .unwrap();
    assert!(out.success());
    eventually(Duration::from_secs(20), || async {
        (emulator_power(port).await == "On").then_some(())
    })
    .await
    .expect("the machine never came on");
}

fn condition(m: &Machine) -> Option<(String, String, String)> {
    let c = m
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "BMCReachable")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn wait_reason(api: &Api<Machine>, name: &str, reason: &str) -> (String, String, String) {
    let got = eventually(Duration::from_secs(30), || async {
        condition(&api.get(name).await.ok()?).filter(|c| c.1 == reason)
    })
    .await;
    match got {
        Some(c) => c,
        None => panic!(
            "{name}: never {reason}: {:?}",
            api.get(name).await.unwrap().status
        ),
    }
}

#[tokio::test]
async fn bmc_reachable_condition_says_what_to_fix() {
    let (client, ns) = setup().await;
    let emu = start_sushy(&SushyOptions {
        auth: Some(("admin".into(), "right-pw".into())),
        ..Default::default()
    })
    .unwrap();
    let address = format!("redfish+http://127.0.0.1:{}", emu.port);
    secret(&client, &ns, "bad", "admin", "wrong-pw").await;
    let api = machine(&client, &ns, "auth", &address, "bad").await;
    machine(&client, &ns, "nosecret", &address, "missing").await;
    let dead = support::free_tcp_port().unwrap();
    secret(&client, &ns, "ok", "admin", "right-pw").await;
    machine(
        &client,
        &ns,
        "dead",
        &format!("redfish+http://127.0.0.1:{dead}"),
        "ok",
    )
    .await;
    let task = start(&client, &ns);

    let (status, _, message) = wait_reason(&api, "auth", "AuthenticationFailed").await;
    assert_eq!(status, "False");
    assert!(message.contains("credentialsSecretRef"), "{message}");
    assert!(
        !message.contains("wrong-pw") && !message.contains("right-pw"),
        "{message}"
    );
    let (_, _, message) = wait_reason(&api, "nosecret", "NoCredentials").await;
    assert!(message.contains("missing"), "{message}");
    let (_, _, message) = wait_reason(&api, "dead", "Unreachable").await;
    assert!(message.contains(&dead.to_string()), "{message}");
    let m = api.get("dead").await.unwrap();
    assert_eq!(
        m.status.unwrap().power.unwrap().state,
        ironpool_crds::machine::PowerState::Unknown
    );

    // Fixing the Secret is picked up without restarting the agent.
    secret(&client, &ns, "bad", "admin", "right-pw").await;
    let (status, _, _) = wait_reason(&api, "auth", "Reachable").await;
    assert_eq!(status, "True");
    // The dead BMC comes to life on its port: backoff retries find it.
    let _emu2 = start_sushy(&SushyOptions {
        port: Some(dead),
        ..Default::default()
    })
    .unwrap();
    wait_reason(&api, "dead", "Reachable").await;
    task.abort();
}

/// resourceVersion and the time of the agent's status entry in managedFields.
async fn versions(api: &Api<Machine>, name: &str) -> (String, Option<String>) {
    let m = api.get(name).await.unwrap();
    let agent = m
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .find(|f| {
            f.manager.as_deref() == Some("ironpool-agent")
                && f.subresource.as_deref() == Some("status")
        })
        .and_then(|f| f.time)
        .map(|t| t.0.to_string());
    (m.metadata.resource_version.unwrap(), agent)
}

fn ok_syncs(metrics: &power::Metrics) -> u64 {
    metrics
        .power_syncs
        .get_or_create(&power::metrics::ReasonLabels { reason: "ok" })
        .get()
}

#[tokio::test]
async fn status_is_written_only_on_change_and_deleted_machines_are_forgotten() {
    let (client, ns) = setup().await;
    let emu = start_sushy(&SushyOptions {
        systems: vec![(UUID.into(), "quiet".into(), "On".into())],
        ..Default::default()
    })
    .unwrap();
    secret(&client, &ns, "quiet-bmc", "admin", "password").await;
    let api = machine(
        &client,
        &ns,
        "quiet",
        &format!("redfish+http://127.0.0.1:{}", emu.port),
        "quiet-bmc",
    )
    .await;
    let dead = support::free_tcp_port().unwrap();
    machine(
        &client,
        &ns,
        "dead",
        &format!("redfish+http://127.0.0.1:{dead}"),
        "quiet-bmc",
    )
    .await;
    let metrics = power::Metrics::default();
    let task = start_with(&client, &ns, metrics.clone());
    wait_reason(&api, "quiet", "Reachable").await;
    wait_reason(&api, "dead", "Unreachable").await;
    assert_eq!(metrics.tracked_machines.get(), 2);

    // Syncs every second (and retries of the dead BMC) that see nothing new write nothing.
    let quiet_before = versions(&api, "quiet").await;
    let dead_before = versions(&api, "dead").await;
    let syncs = ok_syncs(&metrics);
    let writes = metrics.status_writes.get();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(ok_syncs(&metrics) >= syncs + 3, "syncs kept running");
    assert_eq!(
        versions(&api, "quiet").await,
        quiet_before,
        "a sync with no change wrote"
    );
    assert_eq!(
        versions(&api, "dead").await,
        dead_before,
        "a retry with the same failure wrote"
    );
    assert_eq!(metrics.status_writes.get(), writes);

    // A change on the BMC side is written once.
    let out = tokio::process::Command::new("curl")
        .args([
            "-s",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"ResetType":"ForceOff"}"#,
            &format!(
                "http://127.0.0.1:{}/redfish/v1/Systems/{UUID}/Actions/ComputerSystem.Reset",
                emu.port
            ),
        ])
        .status()
        .await
        .unwrap();
    assert!(out.success());
    let off = eventually(Duration::from_secs(30), || async {
        let m = api.get("quiet").await.ok()?;
        (m.status?.power?.state == ironpool_crds::machine::PowerState::Off).then_some(())
    })
    .await;
    assert!(off.is_some(), "the power change never reached status");
    let after_change = versions(&api, "quiet").await;
    assert_ne!(after_change, quiet_before);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(versions(&api, "quiet").await, after_change);

    // Metrics: call latency by driver, operation and result; syncs; failures by reason.
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for needle in [
        r#"ironpool_bmc_call_duration_seconds_count{driver="redfish",operation="power_state",result="ok"}"#,
        r#"ironpool_bmc_call_duration_seconds_count{driver="redfish",operation="power_state",result="Unreachable"}"#,
        r#"ironpool_bmc_power_syncs_total{reason="ok"}"#,
        r#"ironpool_bmc_failures_total{reason="Unreachable"}"#,
        "ironpool_bmc_status_writes_total",
        "ironpool_bmc_tracked_machines 2",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }

    // Deleting the machines drops their drivers, backoff and schedules.
    for name in ["quiet", "dead"] {
        api.delete(name, &Default::default()).await.unwrap();
    }
    let forgotten = eventually(Duration::from_secs(15), || async {
        (metrics.tracked_machines.get() == 0).then_some(())
    })
    .await;
    assert!(
        forgotten.is_some(),
        "still holding {} machines",
        metrics.tracked_machines.get()
    );
    task.abort();
}
