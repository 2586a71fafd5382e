//! The IronpoolMachine controller: gathers what `machine_rules::decide` needs (the CAPI
//! Machine and Cluster from their stores, the bootstrap Secret by one GET, the Deployment
//! and its server from the operator's stores), carries out the one action decided, and
//! writes the status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ironpool_crds::capi::{
    BLOCK_MOVE_ANNOTATION, CLUSTER_NAME_LABEL, IronpoolMachine, IronpoolMachineStatus,
    STATUS_BACKUP_ANNOTATION,
};
use ironpool_crds::{Deployment, Machine};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::machine_rules::{
    Act, BOOTSTRAP_VALUE_KEY, BootstrapData, Carrier, FINALIZER, Observed, decide,
};
use super::types::{CapiCluster, CapiMachine};
use super::{CapiContext, failure_domain_label, owner_named};
use crate::context::{MANAGER, key};
use crate::error::{Error, conflict_as};

const NAME: &str = "ironpoolmachine";

/// The Deployment named like `im`, and whether `im` owns it.
fn carrier<'a>(im: &IronpoolMachine, d: Option<&'a Deployment>) -> Carrier<'a> {
    match d {
        None => Carrier::Absent,
        Some(d) => {
            let uid = im.uid();
            let ours = d
                .owner_references()
                .iter()
                .any(|o| o.kind == "IronpoolMachine" && Some(&o.uid) == uid.as_ref());
            if ours {
                Carrier::Ours(d)
            } else {
                Carrier::NotOurs
            }
        }
    }
}

/// Reads the bootstrap Secret `name` and says what it holds.
async fn read_bootstrap(api: &Api<Secret>, name: &str) -> Result<BootstrapData, Error> {
    let Some(s) = api.get_opt(name).await? else {
        return Ok(BootstrapData::Missing(name.into()));
    };
    let data = s.data.unwrap_or_default();
    let format = data
        .get("format")
        .map(|b| String::from_utf8_lossy(&b.0).trim().to_string());
    if !data.contains_key(BOOTSTRAP_VALUE_KEY) {
        return Ok(BootstrapData::NoValue(name.into()));
    }
    Ok(match format.as_deref() {
        Some("ignition") => BootstrapData::Ignition(name.into()),
        _ => BootstrapData::Ready(name.into()),
    })
}

async fn reconcile(im: Arc<IronpoolMachine>, ctx: Arc<CapiContext>) -> Result<Action, Error> {
    let started = Instant::now();
    if !ctx.base.synced() {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let ns = im.namespace().ok_or_else(|| {
        Error::Malformed(format!(
            "IronpoolMachine {} has no namespace",
            im.name_any()
        ))
    })?;
    let owner = owner_named(&*im, "Machine").and_then(|n| {
        ctx.machines
            .get(&ObjectRef::<CapiMachine>::new(&n).within(&ns))
    });
    let cluster_name = owner
        .as_ref()
        .map(|m| m.spec.cluster_name.clone())
        .or_else(|| im.labels().get(CLUSTER_NAME_LABEL).cloned());
    let cluster = cluster_name.and_then(|n| {
        ctx.clusters
            .get(&ObjectRef::<CapiCluster>::new(&n).within(&ns))
    });
    let label = failure_domain_label(&ctx, cluster.as_deref());
    let deployment = ctx
        .base
        .deployments
        .get(&ObjectRef::<Deployment>::new(&im.name_any()).within(&ns));
    let carrier = carrier(&im, deployment.as_deref());
    let server = deployment
        .as_ref()
        .and_then(|d| d.status.as_ref()?.machine_ref.clone())
        .and_then(|r| ctx.base.machines.get(&ObjectRef::new(&r.name).within(&ns)));
    let wants_bootstrap = matches!(carrier, Carrier::Absent)
        && im.meta().deletion_timestamp.is_none()
        && cluster
            .as_ref()
            .is_some_and(|c| c.infrastructure_provisioned() && !c.paused());
    let bootstrap = match owner
        .as_ref()
        .and_then(|m| m.spec.bootstrap.data_secret_name.clone())
    {
        Some(secret) if wants_bootstrap => {
            read_bootstrap(&Api::namespaced(ctx.base.client.clone(), &ns), &secret).await?
        }
        _ => BootstrapData::NotRead,
    };
    let decision = decide(&Observed {
        im: &im,
        owner: owner.as_deref(),
        cluster: cluster.as_deref(),
        bootstrap,
        deployment: carrier,
        server: server.as_deref(),
        failure_domain_label: &label,
        now: Time(Timestamp::now()),
    });
    let action = act(&ctx, &im, &ns, decision.act).await?;
    write_status(&ctx, &im, decision.status).await?;
    ctx.base.observe(NAME, started.elapsed());
    ctx.base.succeeded(&key(&*im));
    Ok(action)
}

async fn act(ctx: &CapiContext, im: &IronpoolMachine, ns: &str, act: Act) -> Result<Action, Error> {
    let api: Api<IronpoolMachine> = Api::namespaced(ctx.base.client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(ctx.base.client.clone(), ns);
    let name = im.name_any();
    match act {
        Act::Nothing => {}
        Act::AddFinalizer => {
            let patch = serde_json::json!({
                "apiVersion": IronpoolMachine::api_version(&()),
                "kind": "IronpoolMachine",
                "metadata": { "name": name, "finalizers": [FINALIZER] },
            });
            api.patch(
                &name,
                &PatchParams::apply(super::FINALIZER_MANAGER),
                &Patch::Apply(&patch),
            )
            .await?;
        }
        Act::CreateDeployment(d) => {
            match deployments.create(&PostParams::default(), &d).await {
                Ok(_) => ctx.base.event(
                    im,
                    false,
                    "DeploymentCreated",
                    "Provision",
                    format!("created Deployment {name} with the Machine's bootstrap data"),
                ),
                // Made a moment ago; the store has not seen it yet.
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    return Ok(Action::requeue(Duration::from_secs(1)));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Act::SetProviderId(id) => {
            let patch = serde_json::json!({ "spec": { "providerID": id } });
            api.patch(&name, &PatchParams::apply(MANAGER), &Patch::Merge(&patch))
                .await
                .map_err(|e| conflict_as(e, || format!("IronpoolMachine {name}")))?;
            ctx.base.event(
                im,
                false,
                "ServerBound",
                "Provision",
                format!("bound to server {id}"),
            );
        }
        Act::MarkRemediated { server, note } => {
            let servers: Api<ironpool_crds::Machine> = Api::namespaced(ctx.base.client.clone(), ns);
            let patch = serde_json::json!({
                "metadata": { "annotations": { ironpool_crds::capi::REMEDIATED_ANNOTATION: note } }
            });
            servers
                .patch(&server, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            ctx.base.event(
                im,
                true,
                "ServerRemediated",
                "Release",
                format!(
                    "a MachineHealthCheck replaces this Machine; server {server} is marked so \
                     that for an hour the allocator picks it only when no other server fits"
                ),
            );
            return Ok(Action::requeue(Duration::from_millis(200)));
        }
        Act::ArmMove => {
            for target in backup_targets(ctx, im, ns) {
                if has_backup(ctx, ns, &target) {
                    set_annotation(ctx, ns, &target, STATUS_BACKUP_ANNOTATION, None).await?;
                }
            }
            let patch =
                serde_json::json!({"metadata": {"annotations": {BLOCK_MOVE_ANNOTATION: ""}}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        Act::PrepareMove => {
            for target in backup_targets(ctx, im, ns) {
                let value = match &target {
                    Target::Deployment(n) => deployments
                        .get_opt(n)
                        .await?
                        .and_then(|d| crate::restore::backup_value(&d)),
                    Target::Server(n) => Api::<Machine>::namespaced(ctx.base.client.clone(), ns)
                        .get_opt(n)
                        .await?
                        .and_then(|m| crate::restore::backup_value(&m)),
                };
                set_annotation(ctx, ns, &target, STATUS_BACKUP_ANNOTATION, value).await?;
            }
            let patch =
                serde_json::json!({"metadata": {"annotations": {BLOCK_MOVE_ANNOTATION: null}}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            ctx.base.event(
                im,
                false,
                "ReadyForMove",
                "Move",
                "paused: the status of the Deployment and its server is backed up for \
                 clusterctl move"
                    .into(),
            );
        }
        Act::DeleteDeployment => {
            // A released server must not keep a backup that would restore it as deployed.
            for target in backup_targets(ctx, im, ns) {
                if matches!(target, Target::Server(_)) && has_backup(ctx, ns, &target) {
                    set_annotation(ctx, ns, &target, STATUS_BACKUP_ANNOTATION, None).await?;
                }
            }
            match deployments.delete(&name, &DeleteParams::background()).await {
                Ok(_) => ctx.base.event(
                    im,
                    false,
                    "Releasing",
                    "Release",
                    format!("deleted Deployment {name}: its server is released and erased"),
                ),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(Action::requeue(Duration::from_secs(5)));
        }
        Act::RemoveFinalizer => {
            crate::deployment_controller::remove_finalizer_of(&api, im, FINALIZER).await?;
        }
    }
    Ok(if im.meta().deletion_timestamp.is_some() {
        // The Deployment's own deletion wakes us too; this is the safety net.
        Action::requeue(Duration::from_secs(10))
    } else {
        Action::await_change()
    })
}

/// An object a move backup goes on.
enum Target {
    Deployment(String),
    Server(String),
}

/// The Deployment (same name as `im`) and the server its status names.
fn backup_targets(ctx: &CapiContext, im: &IronpoolMachine, ns: &str) -> Vec<Target> {
    let name = im.name_any();
    let server = ctx
        .base
        .deployments
        .get(&ObjectRef::<Deployment>::new(&name).within(ns))
        .and_then(|d| d.status.as_ref()?.machine_ref.clone())
        .or_else(|| im.status.as_ref()?.machine_ref.clone());
    std::iter::once(Target::Deployment(name))
        .chain(server.map(|s| Target::Server(s.name)))
        .collect()
}

/// Whether the stores show a status backup on `target`.
fn has_backup(ctx: &CapiContext, ns: &str, target: &Target) -> bool {
    let annotated =
        |a: &std::collections::BTreeMap<String, String>| a.contains_key(STATUS_BACKUP_ANNOTATION);
    match target {
        Target::Deployment(n) => ctx
            .base
            .deployments
            .get(&ObjectRef::new(n).within(ns))
            .is_some_and(|d| annotated(d.annotations())),
        Target::Server(n) => ctx
            .base
            .machines
            .get(&ObjectRef::new(n).within(ns))
            .is_some_and(|m| annotated(m.annotations())),
    }
}

/// Sets (or, with `None`, removes) annotation `key` on `target`; a missing object is fine.
async fn set_annotation(
    ctx: &CapiContext,
    ns: &str,
    target: &Target,
    key: &str,
    value: Option<String>,
) -> Result<(), Error> {
    let patch = serde_json::json!({"metadata": {"annotations": {key: value}}});
    let pp = PatchParams::default();
    let result = match target {
        Target::Deployment(n) => Api::<Deployment>::namespaced(ctx.base.client.clone(), ns)
            .patch(n, &pp, &Patch::Merge(&patch))
            .await
            .map(|_| ()),
        Target::Server(n) => Api::<Machine>::namespaced(ctx.base.client.clone(), ns)
            .patch(n, &pp, &Patch::Merge(&patch))
            .await
            .map(|_| ()),
    };
    match result {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Applies `status` unless it is what the object shows already.
async fn write_status(
    ctx: &CapiContext,
    im: &IronpoolMachine,
    status: IronpoolMachineStatus,
) -> Result<(), Error> {
    if im.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<IronpoolMachine> =
        Api::namespaced(ctx.base.client.clone(), &im.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": IronpoolMachine::api_version(&()),
        "kind": "IronpoolMachine",
        "metadata": { "name": im.name_any() },
        "status": status,
    });
    match api
        .patch_status(
            &im.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => {
            ctx.base.wrote(NAME);
            Ok(())
        }
        // Deleted while we decided (its finalizer was the last thing holding it).
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn error_policy(im: Arc<IronpoolMachine>, e: &Error, ctx: Arc<CapiContext>) -> Action {
    let wait = ctx.base.failed(NAME, &key(&*im), e);
    if !matches!(e, Error::Conflict(_)) {
        tracing::warn!(ironpool_machine = %key(&*im), error = %e, retry_in = ?wait, "reconcile failed");
    }
    Action::requeue(wait)
}

/// Runs the IronpoolMachine controller until `stop` fires. It is woken by its own objects,
/// by the Deployments they own, by their CAPI Machines (bootstrap data appears) and by
/// their Clusters (pause, infrastructure provisioned).
pub async fn run(
    controller: Controller<IronpoolMachine>,
    deployments: impl futures::Stream<Item = Arc<Deployment>> + Send + 'static,
    capi_machines: impl futures::Stream<Item = Arc<CapiMachine>> + Send + 'static,
    capi_clusters: impl futures::Stream<Item = Arc<CapiCluster>> + Send + 'static,
    ctx: Arc<CapiContext>,
    stop: CancellationToken,
) {
    let of_cluster = ctx.clone();
    controller
        .watches_shared_stream(deployments, |d| {
            owner_named(&*d, "IronpoolMachine")
                .map(|n| ObjectRef::new(&n).within(&d.namespace().unwrap_or_default()))
        })
        .watches_shared_stream(capi_machines, |m| {
            let r = &m.spec.infrastructure_ref;
            (r.kind == "IronpoolMachine" && !r.name.is_empty())
                .then(|| ObjectRef::new(&r.name).within(&m.namespace().unwrap_or_default()))
        })
        .watches_shared_stream(capi_clusters, move |c| {
            let ns = c.namespace().unwrap_or_default();
            let name = c.name_any();
            of_cluster
                .ironpool_machines
                .state()
                .into_iter()
                .filter(|im| {
                    im.namespace().as_deref() == Some(ns.as_str())
                        && im.labels().get(CLUSTER_NAME_LABEL) == Some(&name)
                })
                .map(|im| ObjectRef::from_obj(&*im))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}
