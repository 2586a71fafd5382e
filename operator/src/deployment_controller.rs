//! The Deployment controller: allocates one machine per Deployment (never one machine to
//! two Deployments), mirrors its progress, allocates a static address, and releases the
//! machine through a finalizer when the Deployment is deleted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ironpool_crds::conditions::{self, READY, Status};
use ironpool_crds::deployment::DeploymentPhase;
use ironpool_crds::machine::{MachinePhase, MachineStatus};
use ironpool_crds::{Deployment, LocalObjectRef, Machine, Subnet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::context::{Context, key};
use crate::error::Error;
use crate::{deployment_status, ipam, machine_status, selection};

const NAME: &str = "deployment";
/// Finalizer that releases the machine before a Deployment goes away.
pub const FINALIZER: &str = "metal.ironpool.dev/release";

fn machines_in(ctx: &Context, ns: &str) -> Vec<Arc<Machine>> {
    ctx.machines
        .state()
        .into_iter()
        .filter(|m| m.namespace().as_deref() == Some(ns))
        .collect()
}

fn holder(m: &Machine) -> Option<&str> {
    m.status
        .as_ref()?
        .deployment_ref
        .as_ref()
        .map(|r| r.name.as_str())
}

/// The machine allocated to `d`: its status.machineRef if that machine agrees, else a
/// machine whose deploymentRef names `d` (a claim made just before a crash).
async fn find_machine(
    ctx: &Context,
    api: &Api<Machine>,
    d: &Deployment,
) -> Result<Option<Machine>, Error> {
    let name = d.name_any();
    let ns = d.namespace().unwrap_or_default();
    if let Some(r) = d.status.as_ref().and_then(|s| s.machine_ref.as_ref()) {
        // The store is current enough for a machine we hold: our own claim put it there.
        if let Some(m) = ctx.machines.get(&ObjectRef::new(&r.name).within(&ns))
            && holder(&m) == Some(name.as_str())
        {
            return Ok(Some((*m).clone()));
        }
        if let Some(m) = api.get_opt(&r.name).await?
            && holder(&m) == Some(name.as_str())
        {
            return Ok(Some(m));
        }
    }
    for m in machines_in(ctx, &ns) {
        if holder(&m) == Some(name.as_str())
            && let Some(fresh) = api.get_opt(&m.name_any()).await?
            && holder(&fresh) == Some(name.as_str())
        {
            return Ok(Some(fresh));
        }
    }
    Ok(None)
}

/// Claims machine `m` for `d`: one status write with `m`'s resourceVersion as precondition,
/// so of several Deployments racing for `m`, exactly one wins.
async fn claim(
    ctx: &Context,
    api: &Api<Machine>,
    m: &Machine,
    d: &Deployment,
) -> Result<Option<Machine>, Error> {
    let mut s: MachineStatus = machine_status::operator_fields(m.status.as_ref());
    let now = Time(Timestamp::now());
    s.phase = Some(MachinePhase::Allocated);
    s.deployment_ref = Some(LocalObjectRef::new(d.name_any()));
    let message = format!("allocated to Deployment {}", d.name_any());
    conditions::set(
        &mut s.conditions,
        READY,
        Status::False,
        "Allocated",
        &message,
        m.metadata.generation,
        now,
    );
    let result = machine_status::apply(api, m, &s).await;
    if matches!(result, Ok(_) | Err(Error::Conflict(_))) {
        ctx.mark_claimed(&key(m));
    }
    match result {
        Ok(m) => Ok(Some(m)),
        Err(Error::Conflict(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Tries the machines that fit `d` until one claim succeeds; Err explains why none did.
async fn allocate(
    ctx: &Context,
    api: &Api<Machine>,
    d: &Deployment,
) -> Result<Result<Machine, String>, Error> {
    let ns = d.namespace().unwrap_or_default();
    let all = machines_in(ctx, &ns);
    let refs: Vec<&Machine> = all.iter().map(|m| &**m).collect();
    let fitting = match (&d.spec.machine_ref, &d.spec.machine_selector) {
        (Some(r), _) => match refs.iter().find(|m| m.name_any() == r.name) {
            Some(m) if selection::is_free(m) => vec![*m],
            Some(m) => {
                let phase = m
                    .status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .map_or("New", |p| p.as_str());
                return Ok(Err(format!(
                    "machine {} is {phase}, not a free Ready machine",
                    r.name
                )));
            }
            None => {
                return Ok(Err(format!(
                    "machine {} does not exist in namespace {ns}",
                    r.name
                )));
            }
        },
        (None, Some(sel)) => match selection::candidates(sel, &refs) {
            Ok(c) => c,
            Err(why) => return Ok(Err(why)),
        },
        (None, None) => return Ok(Err("set machineSelector or machineRef".into())),
    };
    let n = fitting.len();
    // Machines claimed moments ago still look free in the store; try them last.
    let (fresh, recent): (Vec<&Machine>, Vec<&Machine>) = selection::spread(fitting, &d.name_any())
        .into_iter()
        .partition(|m| !ctx.recently_claimed(&key(*m)));
    for m in fresh.into_iter().chain(recent) {
        if let Some(claimed) = claim(ctx, api, m, d).await? {
            return Ok(Ok(claimed));
        }
    }
    Ok(Err(format!(
        "all {n} fitting machines were taken by other Deployments just now; retrying"
    )))
}

async fn addresses(ctx: &Context, ns: &str, d: &Deployment) -> Result<Vec<String>, Error> {
    let Some(subnet) = &d.spec.subnet_ref else {
        return Ok(Vec::new());
    };
    let api: Api<Subnet> = Api::namespaced(ctx.client.clone(), ns);
    let ip = ipam::claim(&api, &subnet.name, &d.name_any()).await?;
    Ok(vec![ip.to_string()])
}

async fn apply(d: Arc<Deployment>, ctx: &Context) -> Result<Action, Error> {
    let ns = d
        .namespace()
        .ok_or_else(|| Error::Malformed(format!("Deployment {} has no namespace", d.name_any())))?;
    let machines: Api<Machine> = Api::namespaced(ctx.client.clone(), &ns);
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let machine = match find_machine(ctx, &machines, &d).await? {
        Some(m) => m,
        None => match allocate(ctx, &machines, &d).await? {
            Ok(m) => {
                if let Some(created) = d.metadata.creation_timestamp.as_ref() {
                    let waited = Timestamp::now()
                        .duration_since(created.0)
                        .as_secs_f64()
                        .max(0.0);
                    ctx.metrics.allocation_seconds.observe(waited);
                }
                ctx.event(
                    &*d,
                    false,
                    "Allocated",
                    "Allocate",
                    format!("allocated machine {}", m.name_any()),
                );
                m
            }
            Err(why) => {
                let was_pending =
                    d.status.as_ref().and_then(|s| s.phase) == Some(DeploymentPhase::Pending);
                if deployment_status::write(
                    &api,
                    &d,
                    deployment_status::pending(&d, &why, Timestamp::now()),
                )
                .await?
                {
                    ctx.wrote(NAME);
                    if !was_pending {
                        ctx.event(&*d, true, "NoMachineAvailable", "Allocate", why.clone());
                    }
                }
                let retry = why.ends_with("retrying");
                return Ok(if retry {
                    Action::requeue(Duration::from_millis(500))
                } else {
                    Action::await_change()
                });
            }
        },
    };
    let addresses = addresses(ctx, &ns, &d).await?;
    if deployment_status::write(
        &api,
        &d,
        deployment_status::allocated(&d, &machine, addresses, Timestamp::now()),
    )
    .await?
    {
        ctx.wrote(NAME);
    }
    Ok(Action::await_change())
}

async fn cleanup(d: Arc<Deployment>, ctx: &Context) -> Result<Action, Error> {
    let ns = d.namespace().unwrap_or_default();
    let machines: Api<Machine> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some(m) = find_machine(ctx, &machines, &d).await? {
        // The Machine controller sees the deletion and releases the machine; show progress.
        let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
        let addresses = d
            .status
            .as_ref()
            .map(|s| s.addresses.clone())
            .unwrap_or_default();
        if deployment_status::write(
            &api,
            &d,
            deployment_status::allocated(&d, &m, addresses, Timestamp::now()),
        )
        .await?
        {
            ctx.wrote(NAME);
        }
        // Not done: an error keeps the finalizer (kube's helper removes it on any Ok).
        return Err(Error::Releasing(format!(
            "waiting for machine {} to be released",
            m.name_any()
        )));
    }
    if let Some(subnet) = &d.spec.subnet_ref {
        let api: Api<Subnet> = Api::namespaced(ctx.client.clone(), &ns);
        ipam::release(&api, &subnet.name, &d.name_any()).await?;
    }
    ctx.event(
        &*d,
        false,
        "Released",
        "Release",
        "machine released; removing the finalizer".into(),
    );
    Ok(Action::await_change())
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = d.namespace().unwrap_or_default();
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, d.clone(), |event| async {
        match event {
            Finalizer::Apply(d) => apply(d, &ctx).await,
            Finalizer::Cleanup(d) => cleanup(d, &ctx).await,
        }
    })
    .await;
    ctx.observe(NAME, started.elapsed());
    let action = result.map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    })?;
    ctx.succeeded(&key(&*d));
    Ok(action)
}

fn error_policy(d: Arc<Deployment>, e: &Error, ctx: Arc<Context>) -> Action {
    let wait = ctx.failed(NAME, &key(&*d), e);
    if !matches!(e, Error::Conflict(_) | Error::Releasing(_)) {
        tracing::warn!(deployment = %key(&*d), error = %e, retry_in = ?wait, "reconcile failed");
    }
    Action::requeue(wait)
}

/// A machine change concerns the Deployment it holds, any Deployment whose status still
/// names it, and, when it is free, every Pending Deployment of its namespace (one of them
/// may fit now).
fn deployments_of(ctx: &Context, m: &Machine) -> Vec<ObjectRef<Deployment>> {
    let ns = m.namespace().unwrap_or_default();
    let mut out: Vec<ObjectRef<Deployment>> = holder(m)
        .map(|n| ObjectRef::new(n).within(&ns))
        .into_iter()
        .collect();
    let name = m.name_any();
    let free = selection::is_free(m);
    for d in ctx.deployments.state() {
        if d.namespace().as_deref() != Some(ns.as_str()) {
            continue;
        }
        let status = d.status.as_ref();
        // A Deployment that still names this machine (e.g. one being deleted, waiting for
        // the release) must learn at once that the machine moved on.
        let names_it = status
            .and_then(|s| s.machine_ref.as_ref())
            .is_some_and(|r| r.name == name);
        let pending = status.is_none_or(|s| s.phase == Some(DeploymentPhase::Pending));
        if names_it || (free && pending) {
            out.push(ObjectRef::from_obj(&*d));
        }
    }
    out
}

/// Runs the Deployment controller until `stop` fires.
pub async fn run(
    controller: Controller<Deployment>,
    machines: Api<Machine>,
    ctx: Arc<Context>,
    concurrency: u16,
    stop: CancellationToken,
) {
    let mapper_ctx = ctx.clone();
    controller
        .watches(
            machines,
            watcher::Config::default().any_semantic(),
            move |m| deployments_of(&mapper_ctx, &m),
        )
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}
