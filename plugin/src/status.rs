//! `kubectl ironpool status`: the fleet at a glance. Machines by phase and power, the
//! Subnets with who serves them and their addresses, and everything that needs a person:
//! failed or broken Machines, unreachable BMCs, failed, stalled or waiting Deployments, each
//! with the reason and message its own status gives.

use std::collections::BTreeMap;
use std::io::Write;

use ironpool_crds::conditions::{self, READY};
use ironpool_crds::deployment::DeploymentPhase;
use ironpool_crds::machine::MachinePhase;
use ironpool_crds::{Deployment, Machine, Subnet};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use serde::Serialize;

use crate::output::{Format, structured, table};

/// The summary, as `-o json|yaml` prints it.
#[derive(Serialize, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// The namespace summed, or none for all of them.
    pub namespace: Option<String>,
    /// Number of Machines.
    pub machines: usize,
    /// Machines per phase (`New` for one the operator has not seen yet).
    pub phases: BTreeMap<String, usize>,
    /// Machines per power state (`Unknown` before the first BMC sync).
    pub power: BTreeMap<String, usize>,
    /// Deployments per phase.
    pub deployments: BTreeMap<String, usize>,
    /// Every Subnet.
    pub subnets: Vec<SubnetRow>,
    /// What needs a person, worst first.
    pub attention: Vec<Attention>,
}

/// One Subnet in the summary.
#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SubnetRow {
    /// Namespace/name.
    pub name: String,
    /// CIDR.
    pub cidr: String,
    /// The agent (node) serving it, if one does.
    pub served_by: Option<String>,
    /// Ready condition reason.
    pub ready: String,
    /// Static addresses allocated to Deployments / free in the dynamic range.
    pub allocated: i64,
    /// Free addresses.
    pub free: i64,
}

/// Something that needs a person.
#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Attention {
    /// Machine or Deployment.
    pub kind: &'static str,
    /// Namespace/name.
    pub name: String,
    /// Its phase.
    pub phase: String,
    /// The reason of its own status.
    pub reason: String,
    /// Its message, which says what to do.
    pub message: String,
}

fn qualified(ns: Option<String>, name: String, all: bool) -> String {
    match (all, ns) {
        (true, Some(ns)) => format!("{ns}/{name}"),
        _ => name,
    }
}

fn ready_of(c: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> (String, String) {
    conditions::get(c, READY)
        .map(|c| (c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

/// Sums up the fleet from the lists (`all`: names are qualified by namespace).
pub fn summarize(
    namespace: Option<&str>,
    machines: &[Machine],
    deployments: &[Deployment],
    subnets: &[Subnet],
) -> Summary {
    let all = namespace.is_none();
    let mut s = Summary {
        namespace: namespace.map(str::to_string),
        machines: machines.len(),
        ..Summary::default()
    };
    for m in machines {
        let st = m.status.as_ref();
        let phase = st.and_then(|s| s.phase).unwrap_or(MachinePhase::New);
        *s.phases.entry(phase.as_str().to_string()).or_default() += 1;
        let power = st
            .and_then(|s| s.power.as_ref())
            .map_or("Unknown".to_string(), |p| format!("{:?}", p.state));
        *s.power.entry(power).or_default() += 1;
        let conds = st.map(|s| s.conditions.as_slice()).unwrap_or_default();
        let name = qualified(m.namespace(), m.name_any(), all);
        if matches!(
            phase,
            MachinePhase::FailedCommissioning
                | MachinePhase::FailedDeployment
                | MachinePhase::Broken
        ) {
            let (reason, message) = ready_of(conds);
            s.attention.push(Attention {
                kind: "Machine",
                name: name.clone(),
                phase: phase.as_str().into(),
                reason,
                message,
            });
        }
        if let Some(c) = conditions::get(conds, "BMCReachable")
            && c.status == "False"
        {
            s.attention.push(Attention {
                kind: "Machine",
                name,
                phase: phase.as_str().into(),
                reason: c.reason.clone(),
                message: c.message.clone(),
            });
        }
    }
    for d in deployments {
        let st = d.status.as_ref();
        let phase = st.and_then(|s| s.phase).unwrap_or(DeploymentPhase::Pending);
        let phase_name = format!("{phase:?}");
        *s.deployments.entry(phase_name.clone()).or_default() += 1;
        let stalled = st
            .and_then(|s| s.progress.as_ref())
            .is_some_and(|p| p.step == "Stalled");
        if matches!(phase, DeploymentPhase::Failed | DeploymentPhase::Pending) || stalled {
            let (reason, message) =
                ready_of(st.map(|s| s.conditions.as_slice()).unwrap_or_default());
            let phase = if stalled {
                format!("{phase_name} (stalled)")
            } else {
                phase_name
            };
            s.attention.push(Attention {
                kind: "Deployment",
                name: qualified(d.namespace(), d.name_any(), all),
                phase,
                reason,
                message,
            });
        }
    }
    // Failures first, then stalls, then what only waits.
    let rank = |a: &Attention| {
        if a.phase.starts_with("Failed") || a.phase == "Broken" {
            0
        } else if a.phase.ends_with("(stalled)") || a.kind == "Machine" {
            1
        } else {
            2
        }
    };
    s.attention
        .sort_by(|a, b| (rank(a), &a.name).cmp(&(rank(b), &b.name)));
    for n in subnets {
        let st = n.status.as_ref();
        let (reason, _) = ready_of(st.map(|s| s.conditions.as_slice()).unwrap_or_default());
        let counts = st.and_then(|s| s.addresses.as_ref());
        s.subnets.push(SubnetRow {
            name: qualified(n.namespace(), n.name_any(), all),
            cidr: n.spec.cidr.clone(),
            served_by: st
                .and_then(|s| s.served_by.as_ref())
                .map(|b| b.agent.clone()),
            ready: reason,
            allocated: counts.map_or(0, |c| c.allocated),
            free: counts.map_or(0, |c| c.free),
        });
    }
    s
}

/// A two-column table of counts by name.
fn counts(headers: &[&str; 2], by: &BTreeMap<String, usize>) -> String {
    let rows: Vec<Vec<String>> = by
        .iter()
        .map(|(k, n)| vec![k.clone(), n.to_string()])
        .collect();
    table(headers, &rows)
}

/// The summary as tables.
pub fn render(s: &Summary) -> String {
    let mut out = String::new();
    let scope = s
        .namespace
        .as_deref()
        .map_or("all namespaces".to_string(), |n| format!("namespace {n}"));
    out.push_str(&format!("{} Machines in {scope}\n\n", s.machines));
    out.push_str(&counts(&["PHASE", "MACHINES"], &s.phases));
    out.push('\n');
    out.push_str(&counts(&["POWER", "MACHINES"], &s.power));
    if !s.deployments.is_empty() {
        out.push('\n');
        out.push_str(&counts(
            &["DEPLOYMENT PHASE", "DEPLOYMENTS"],
            &s.deployments,
        ));
    }
    if !s.subnets.is_empty() {
        let rows: Vec<Vec<String>> = s
            .subnets
            .iter()
            .map(|n| {
                vec![
                    n.name.clone(),
                    n.cidr.clone(),
                    n.served_by.clone().unwrap_or_else(|| "-".into()),
                    n.ready.clone(),
                    n.allocated.to_string(),
                    n.free.to_string(),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(
            &["SUBNET", "CIDR", "SERVED BY", "READY", "ALLOCATED", "FREE"],
            &rows,
        ));
    }
    out.push('\n');
    if s.attention.is_empty() {
        out.push_str("Nothing needs attention.\n");
    } else {
        let rows: Vec<Vec<String>> = s
            .attention
            .iter()
            .map(|a| {
                vec![
                    format!("{}/{}", a.kind.to_lowercase(), a.name),
                    a.phase.clone(),
                    a.reason.clone(),
                    a.message.clone(),
                ]
            })
            .collect();
        out.push_str(&format!("{} need attention:\n", s.attention.len()));
        out.push_str(&table(&["OBJECT", "PHASE", "REASON", "MESSAGE"], &rows));
    }
    out
}

/// Lists, sums up, prints.
pub async fn run(
    client: &Client,
    namespace: Option<&str>,
    format: Format,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let lp = ListParams::default();
    let (machines, deployments, subnets) = match namespace {
        Some(ns) => (
            Api::<Machine>::namespaced(client.clone(), ns)
                .list(&lp)
                .await,
            Api::<Deployment>::namespaced(client.clone(), ns)
                .list(&lp)
                .await,
            Api::<Subnet>::namespaced(client.clone(), ns)
                .list(&lp)
                .await,
        ),
        None => (
            Api::<Machine>::all(client.clone()).list(&lp).await,
            Api::<Deployment>::all(client.clone()).list(&lp).await,
            Api::<Subnet>::all(client.clone()).list(&lp).await,
        ),
    };
    let listed = |what: &str, e: kube::Error| {
        anyhow::anyhow!(
            "cannot list {what}: {e} (are Ironpool's CRDs installed, and may you list them?)"
        )
    };
    let machines = machines.map_err(|e| listed("Machines", e))?.items;
    let deployments = deployments.map_err(|e| listed("Deployments", e))?.items;
    let subnets = subnets.map_err(|e| listed("Subnets", e))?.items;
    let summary = summarize(namespace, &machines, &deployments, &subnets);
    if !structured(format, &summary, out)? {
        out.write_all(render(&summary).as_bytes())?;
    }
    Ok(())
}
