//! The Machine controller: observe, ask [`lifecycle::decide`], write the decision, emit the
//! event. It never picks a phase itself.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use ironpool_crds::deployment::Image;
use ironpool_crds::machine::{BootStep, MachinePhase, Operation, OperationKind, OperationResult};
use ironpool_crds::{Deployment, Machine};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::context::{Context, key};
use crate::error::Error;
use crate::lifecycle::{self, DeploymentView, Observation};
use crate::machine_status;
use crate::metrics::PhaseLabel;

/// The controller's name in metrics.
pub const NAME: &str = "machine";

/// `<url or oci>@<checksum>`: how a Deploy operation names its image.
pub fn image_key(image: &Image) -> String {
    let what = image.url.as_deref().or(image.oci.as_deref()).unwrap_or("");
    format!("{what}@{}", image.checksum.as_deref().unwrap_or(""))
}

/// The Deployment as machine `me` sees it. A Deployment whose status names another machine
/// does not want this one (a claim left over from a failed write): release it.
pub fn view_for(d: &Deployment, me: &str) -> DeploymentView {
    let other = d
        .status
        .as_ref()
        .and_then(|s| s.machine_ref.as_ref())
        .is_some_and(|r| r.name != me);
    if other || d.metadata.deletion_timestamp.is_some() {
        DeploymentView::Releasing {
            erase: d.spec.erase,
        }
    } else {
        DeploymentView::Active {
            image: image_key(&d.spec.image),
        }
    }
}

/// The Deployment a machine is allocated to: from the store, or, when the store does not
/// have it, from the API (a store that lags would make a fresh claim look abandoned).
async fn deployment_view(
    ctx: &Context,
    ns: &str,
    m: &Machine,
) -> Result<Option<DeploymentView>, Error> {
    let Some(r) = m.status.as_ref().and_then(|s| s.deployment_ref.as_ref()) else {
        return Ok(None);
    };
    let me = m.name_any();
    if let Some(d) = ctx.deployments.get(&ObjectRef::new(&r.name).within(ns)) {
        return Ok(Some(view_for(&d, &me)));
    }
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    Ok(api.get_opt(&r.name).await?.map(|d| view_for(&d, &me)))
}

/// What the lifecycle sees of machine `m`.
pub fn observation(m: &Machine, deployment: Option<DeploymentView>, now: Timestamp) -> Observation {
    let st = m.status.as_ref();
    Observation {
        now,
        phase: st.and_then(|s| s.phase),
        maintenance: m.spec.maintenance == Some(true),
        broken: m.spec.broken == Some(true),
        wants_off: m.spec.wants_off(),
        wants_rescue: m.spec.wants_rescue(),
        power_cycle: m
            .spec
            .power_cycle_request
            .clone()
            .filter(|r| st.and_then(|s| s.power_cycle_handled.as_ref()) != Some(r)),
        spec_changed: st
            .and_then(|s| s.observed_generation)
            .is_some_and(|g| Some(g) != m.metadata.generation),
        intent: st.and_then(|s| s.boot_intent.clone()),
        applied_attempt: st.and_then(|s| s.boot_applied.as_ref()).map(|a| a.attempt),
        report: st.and_then(|s| s.provisioning.clone()),
        rescue_report: st.and_then(|s| s.rescue.clone()),
        os_booted_at: st
            .and_then(|s| s.boot.iter().rev().find(|b| b.step == BootStep::OsBooted))
            .map(|b| b.at.0),
        has_hardware: st.and_then(|s| s.inventory.as_ref()).is_some(),
        operation: st.and_then(|s| s.last_operation.clone()),
        deployment,
    }
}

async fn reconcile(m: Arc<Machine>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    if !ctx.synced() {
        // The caches are still filling; their events bring this object back too.
        return Ok(Action::requeue(std::time::Duration::from_millis(500)));
    }
    if ctx.behind(
        &format!("Machine/{}", key(&*m)),
        m.metadata.resource_version.as_deref(),
    ) {
        // Our own last write is on its way to the store; its event brings us back.
        return Ok(Action::await_change());
    }
    let ns = m
        .namespace()
        .ok_or_else(|| Error::Malformed(format!("Machine {} has no namespace", m.name_any())))?;
    let machines = Api::<Machine>::namespaced(ctx.client.clone(), &ns);
    if crate::restore::restore(&machines, &*m).await? {
        return Ok(Action::await_change());
    }
    if crate::inventory::migrate(&ctx.client, &machines, &m).await? {
        return Ok(Action::await_change());
    }
    let deployment = deployment_view(&ctx, &ns, &m).await?;
    let now = Timestamp::now();
    let obs = observation(&m, deployment, now);
    let decision = lifecycle::decide(&obs, &ctx.policy);
    let next = machine_status::next_status(&m, &decision, now);
    if next != machine_status::operator_fields(m.status.as_ref()) {
        let api: Api<Machine> = Api::namespaced(ctx.client.clone(), &ns);
        let written = match machine_status::apply(&api, &m, &next).await {
            Ok(w) => w,
            Err(e @ Error::Conflict(_)) => {
                // The Machine changed since the store's copy (an agent wrote): a retry from
                // that copy meets the same precondition. Wait for the newer version, whose
                // watch event brings this Machine back, instead of writing again.
                ctx.stale(format!("Machine/{}", key(&*m)), m.resource_version());
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        ctx.wrote(NAME);
        ctx.wrote_over(
            format!("Machine/{}", key(&*m)),
            m.resource_version(),
            written.resource_version(),
        );
        if let (lifecycle::OperationChange::Finish(result, _), Some(op)) = (
            &decision.operation,
            m.status.as_ref().and_then(|s| s.last_operation.as_ref()),
        ) {
            observe_operation(&ctx, op, *result, now);
        }
        let changed_phase = obs.phase != Some(decision.phase);
        if changed_phase {
            ctx.metrics
                .transitions
                .get_or_create(&PhaseLabel {
                    phase: decision.phase.as_str(),
                })
                .inc();
        }
        if changed_phase
            || decision.intent.is_some()
            || decision.operation != lifecycle::OperationChange::Keep
        {
            let mut note = decision.report.message.clone();
            if let (Some(i), Some(b)) = (decision.intent, next.boot_intent.as_ref()) {
                note = format!(
                    "{note} (boot intent #{}: {:?} for {:?})",
                    b.attempt, i.target, i.purpose
                );
            }
            if let lifecycle::OperationChange::Finish(_, done) = &decision.operation {
                note = format!("{done}; {note}");
            }
            let warning = decision.report.severity == lifecycle::Severity::Warning;
            tracing::info!(machine = %key(&*m), phase = decision.phase.as_str(), reason = decision.report.reason, "{note}");
            ctx.event(
                &*m,
                warning,
                decision.report.reason,
                decision.phase.as_str(),
                note,
            );
        }
    }
    ctx.observe(NAME, started.elapsed());
    ctx.succeeded(&key(&*m));
    Ok(decision
        .requeue_after
        .map_or_else(Action::await_change, Action::requeue))
}

/// Records a finished operation's duration (`ironpool_operation_duration_seconds`), from
/// its `started` to `now`, retries included.
fn observe_operation(ctx: &Context, op: &Operation, result: OperationResult, now: Timestamp) {
    let result = match result {
        OperationResult::Succeeded => "Succeeded",
        OperationResult::Failed => "Failed",
        OperationResult::Running => return,
    };
    let operation = match op.kind {
        OperationKind::Enlist => "Enlist",
        OperationKind::Commission => "Commission",
        OperationKind::Deploy => "Deploy",
        OperationKind::Release => "Release",
    };
    let seconds = now.duration_since(op.started.0).as_secs_f64().max(0.0);
    ctx.metrics
        .operation_seconds
        .get_or_create(&crate::metrics::OperationLabels { operation, result })
        .observe(seconds);
}

fn error_policy(m: Arc<Machine>, e: &Error, ctx: Arc<Context>) -> Action {
    let wait = ctx.failed(NAME, &key(&*m), e);
    if !matches!(e, Error::Conflict(_)) {
        tracing::warn!(machine = %key(&*m), error = %e, retry_in = ?wait, "reconcile failed");
    }
    Action::requeue(wait)
}

/// Deployments map to the machine they hold: its status.machineRef, and any machine whose
/// deploymentRef names it (a claim whose Deployment status is not written yet).
fn machines_of(ctx: &Context, d: &Deployment) -> Vec<ObjectRef<Machine>> {
    let ns = d.namespace().unwrap_or_default();
    let name = d.name_any();
    let mut out: Vec<ObjectRef<Machine>> = d
        .status
        .as_ref()
        .and_then(|s| s.machine_ref.as_ref())
        .map(|r| ObjectRef::new(&r.name).within(&ns))
        .into_iter()
        .collect();
    for m in ctx.machines.state() {
        let holds = m
            .status
            .as_ref()
            .and_then(|s| s.deployment_ref.as_ref())
            .is_some_and(|r| r.name == name);
        if holds && m.namespace().as_deref() == Some(ns.as_str()) {
            out.push(ObjectRef::from_obj(&*m));
        }
    }
    out
}

/// Keeps `ironpool_machines{phase}` current from the store.
pub async fn count_phases(ctx: Arc<Context>, stop: CancellationToken) {
    loop {
        let mut counts: std::collections::HashMap<&'static str, i64> =
            std::collections::HashMap::new();
        for m in ctx.machines.state() {
            let p = m
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .unwrap_or(MachinePhase::New);
            *counts.entry(p.as_str()).or_default() += 1;
        }
        for p in [
            "New",
            "Commissioning",
            "Ready",
            "Allocated",
            "Deploying",
            "Deployed",
            "Releasing",
            "FailedCommissioning",
            "FailedDeployment",
            "Broken",
            "Maintenance",
        ] {
            ctx.metrics
                .machines
                .get_or_create(&PhaseLabel { phase: p })
                .set(counts.get(p).copied().unwrap_or(0));
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
        }
    }
}

/// Runs the Machine controller until `stop` fires.
pub async fn run(
    controller: Controller<Machine>,
    deployments: impl futures::Stream<Item = Arc<Deployment>> + Send + 'static,
    ctx: Arc<Context>,
    concurrency: u16,
    stop: CancellationToken,
) {
    let mapper_ctx = ctx.clone();
    controller
        .watches_shared_stream(deployments, move |d| machines_of(&mapper_ctx, &d))
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironpool_crds::deployment::ImageFormat;

    #[test]
    fn a_deployment_holding_another_machine_releases_this_one() {
        use ironpool_crds::deployment::{DeploymentSpec, DeploymentStatus, ErasePolicy};
        let mut d = Deployment::new(
            "web",
            DeploymentSpec {
                machine_selector: None,
                machine_ref: Some(ironpool_crds::LocalObjectRef::new("m1")),
                image: Image {
                    url: Some("http://i/os.raw".into()),
                    checksum: Some("sha256:ab".into()),
                    format: Some(ImageFormat::Raw),
                    oci: None,
                },
                user_data_secret_ref: None,
                network_data_secret_ref: None,
                storage: None,
                hostname: None,
                subnet_ref: None,
                erase: ErasePolicy::Full,
            },
        );
        assert_eq!(
            view_for(&d, "m1"),
            DeploymentView::Active {
                image: "http://i/os.raw@sha256:ab".into()
            }
        );
        d.status = Some(DeploymentStatus {
            machine_ref: Some(ironpool_crds::LocalObjectRef::new("m1")),
            ..Default::default()
        });
        assert!(matches!(view_for(&d, "m1"), DeploymentView::Active { .. }));
        assert_eq!(
            view_for(&d, "m2"),
            DeploymentView::Releasing {
                erase: ErasePolicy::Full
            }
        );
    }

    #[test]
    fn image_key_names_source_and_checksum() {
        let img = Image {
            url: Some("http://i/os.raw".into()),
            checksum: Some("sha256:ab".into()),
            format: Some(ImageFormat::Raw),
            oci: None,
        };
        assert_eq!(image_key(&img), "http://i/os.raw@sha256:ab");
        let oci = Image {
            oci: Some("reg/os:1".into()),
            ..Default::default()
        };
        assert_eq!(image_key(&oci), "reg/os:1@");
    }
}
