//! power-scale: the agent's power controller with many Machines (default 1,000) whose
//! BMCs are systems of sushy-emulator processes, against a real kube-apiserver. Prints the
//! time until every Machine reports `BMCReachable=True` with a power state, the status
//! writes and BMC calls that took, the writes during a quiet period in which every
//! machine is synced again (0 expected: status is written only on change), and this
//! process's RSS before and with the controller holding all machines.
//!
//!     cargo bench -p ironpool-agents --bench power_scale -- [machines] [emulators] [quiet-seconds]

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use anyhow::Result;
use futures::StreamExt;
use ironpool_agents::power::{self, Config};
use ironpool_crds::Machine;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use support::{SushyOptions, start_sushy};
use tokio_util::sync::CancellationToken;

fn mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn uuid(e: usize, s: usize) -> String {
    format!("00000000-0000-4000-8000-{e:04x}{s:08x}")
}

async fn ready(api: &Api<Machine>) -> usize {
    let Ok(list) = api.list(&ListParams::default()).await else {
        return 0;
    };
    list.items
        .iter()
        .filter(|m| {
            m.status.as_ref().is_some_and(|s| {
                s.power.is_some()
                    && s.conditions
                        .iter()
                        .any(|c| c.type_ == "BMCReachable" && c.status == "True")
            })
        })
        .count()
}

async fn create_machines(client: &Client, ns: &str, ports: &[u16], per: usize) -> Result<()> {
    let api: Api<Machine> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bmc"},
        "stringData": {"username": "admin", "password": "password"}});
    secrets
        .patch(
            "bmc",
            &PatchParams::apply("bench").force(),
            &Patch::Apply(s),
        )
        .await?;
    let specs: Vec<(String, String)> = ports
        .iter()
        .enumerate()
        .flat_map(|(e, port)| {
            (0..per).map(move |s| {
                (
                    format!("m-{e}-{s}"),
                    format!(
                        "redfish+http://127.0.0.1:{port}/redfish/v1/Systems/{}",
                        uuid(e, s)
                    ),
                )
            })
        })
        .collect();
    let results: Vec<_> = futures::stream::iter(specs.into_iter().enumerate())
        .map(|(i, (name, address))| {
            let api = api.clone();
            async move {
                let m: Machine = serde_json::from_value(json!({
                    "apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Machine",
                    "metadata": {"name": name},
                    "spec": {"bootMACAddress": format!("52:54:{:02x}:{:02x}:{:02x}:01", i >> 16 & 255, i >> 8 & 255, i & 255),
                             "bmc": {"address": address, "credentialsSecretRef": {"name": "bmc"}}}
                }))?;
                api.create(&PostParams::default(), &m).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<_>>>()?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let machines: usize = args.first().map_or(Ok(1000), |a| a.parse())?;
    let emulators: usize = args.get(1).map_or(Ok(4), |a| a.parse())?;
    let quiet: u64 = args.get(2).map_or(Ok(75), |a| a.parse())?;
    let per = machines.div_ceil(emulators);

    let cp = ironpool_e2e::ControlPlane::start()?;
    ironpool_e2e::cluster::install_crds(&cp)?;
    let ns = cp.create_namespace("power-scale").await?;
    let client = cp.client().await?;
    let mut emus = Vec::new();
    for e in 0..emulators {
        let systems = (0..per)
            .map(|s| (uuid(e, s), format!("m-{e}-{s}"), "On".to_string()))
            .collect();
        emus.push(start_sushy(&SushyOptions {
            systems,
            ..Default::default()
        })?);
    }
    let ports: Vec<u16> = emus.iter().map(|e| e.port).collect();
    create_machines(&client, &ns, &ports, per).await?;
    let n = machines.min(per * emulators);
    let rss_before = mib("VmRSS:");
    println!(
        "{n} Machines, BMCs in {emulators} sushy-emulator processes; RSS before the controller: {rss_before:.1} MiB; load average {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );

    let metrics = power::Metrics::default();
    let sync = Duration::from_secs(60);
    let config = Config {
        namespace: Some(ns.clone()),
        sync_interval: sync,
        metrics: metrics.clone(),
        ..Config::default()
    };
    let cancel = CancellationToken::new();
    let task = tokio::spawn(power::run(client.clone(), config, cancel.clone()));
    let api: Api<Machine> = Api::namespaced(client.clone(), &ns);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(900);
    let mut done = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        done = ready(&api).await;
        if done >= n {
            break;
        }
    }
    let took = started.elapsed();
    let writes = metrics.status_writes.get();
    println!(
        "all reachable: {done}/{n} in {:.1}s; status writes {writes} ({:.2} per machine); RSS {:.1} MiB (+{:.1} MiB), peak {:.1} MiB",
        took.as_secs_f64(),
        writes as f64 / n as f64,
        mib("VmRSS:"),
        mib("VmRSS:") - rss_before,
        mib("VmHWM:")
    );
    let syncs = |m: &power::Metrics| {
        m.power_syncs
            .get_or_create(&power::metrics::ReasonLabels { reason: "ok" })
            .get()
    };
    let syncs0 = syncs(&metrics);
    tokio::time::sleep(Duration::from_secs(quiet)).await;
    println!(
        "quiet {quiet}s (sync every {}s ±10%): {} power syncs, {} status writes; RSS {:.1} MiB (+{:.1} MiB), peak {:.1} MiB",
        sync.as_secs(),
        syncs(&metrics) - syncs0,
        metrics.status_writes.get() - writes,
        mib("VmRSS:"),
        mib("VmRSS:") - rss_before,
        mib("VmHWM:")
    );
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    Ok(())
}
