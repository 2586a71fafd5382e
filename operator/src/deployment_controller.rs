//! The Deployment controller: allocates one machine per Deployment (never one machine to
//! two Deployments), mirrors its progress, allocates a static address, and releases the
//! machine through a finalizer when the Deployment is deleted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ironpool_crds::conditions::{self, READY, Status};
use ironpool_crds::deployment::DeploymentPhase;
use ironpool_crds::machine::{MachinePhase, MachineStatus};
use ironpool_crds::{
    Deployment, LocalObjectRef, Machine, MachineInventory, RootDeviceHints, Subnet,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::context::{Context, MANAGER, key};
use crate::error::Error;
use crate::lifecycle::{self, Decision};
use crate::metrics::PhaseLabel;
use crate::{blocker, deployment_status, ipam, machine_controller, machine_status, selection};

const NAME: &str = "deployment";
/// Finalizer that releases the machine before a Deployment goes away.
pub const FINALIZER: &str = "metal.ironpool.dev/release";

fn machines_in(ctx: &Context, ns: &str) -> Vec<Arc<Machine>> {
    ctx.machines
        .state()
        .into_iter()
        .filter(|m| m.metadata.namespace.as_deref() == Some(ns))
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
        // Our own claim, made before the store caught up with it.
        if let Some(m) = ctx.claim_of(&key(d))
            && m.name_any() == r.name
        {
            return Ok(Some(m));
        }
        if let Some(m) = api.get_opt(&r.name).await?
            && holder(&m) == Some(name.as_str())
        {
            return Ok(Some(m));
        }
    }
    if let Some(m) = ctx.claim_of(&key(d)) {
        return Ok(Some(m));
    }
    // A claim the store shows but the Deployment's status does not name yet (our status
    // write is on its way, or a crash came between the claim and that write).
    if let Some(m) = machines_in(ctx, &ns)
        .into_iter()
        .find(|m| holder(m) == Some(name.as_str()))
    {
        return Ok(Some((*m).clone()));
    }
    Ok(None)
}

/// The operator's status of `m` once claimed for `d`, and the lifecycle's decision in it:
/// Allocated to `d`, then what the Machine controller decides for an Allocated machine.
pub fn claimed_status(
    m: &Machine,
    d: &Deployment,
    policy: &lifecycle::Policy,
    now: Timestamp,
) -> (MachineStatus, Decision) {
    let mut s: MachineStatus = machine_status::operator_fields(m.status.as_ref());
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
        Time(now),
    );
    let mut allocated = m.clone();
    allocated.status = Some(MachineStatus {
        phase: s.phase,
        deployment_ref: s.deployment_ref,
        conditions: s.conditions,
        ..m.status.clone().unwrap_or_default()
    });
    let view = machine_controller::view_for(d, &m.name_any());
    let decision = lifecycle::decide(
        &machine_controller::observation(&allocated, Some(view), now),
        policy,
    );
    (
        machine_status::next_status(&allocated, &decision, now),
        decision,
    )
}

/// Claims machine `m` for `d`: one status write with `m`'s resourceVersion as precondition,
/// so of several Deployments racing for `m`, exactly one wins. The write carries what the
/// lifecycle decides for the machine once it is Allocated (normally: Deploying, with the
/// ramdisk boot intent), exactly as the Machine controller would write it next, so that
/// controller finds nothing left to write and an allocation costs one Machine write.
async fn claim(
    ctx: &Context,
    api: &Api<Machine>,
    m: &Machine,
    d: &Deployment,
) -> Result<Option<(Machine, Decision)>, Error> {
    let (next, decision) = claimed_status(m, d, &ctx.policy, Timestamp::now());
    match machine_status::apply(api, m, &next).await {
        Ok(claimed) => {
            ctx.wrote(machine_controller::NAME);
            ctx.claimed(&key(m), m.resource_version(), claimed.clone());
            ctx.wrote_over(
                format!("Machine/{}", key(m)),
                m.resource_version(),
                claimed.resource_version(),
            );
            Ok(Some((claimed, decision)))
        }
        // Someone changed the machine since the store saw it: keep the reservation, so
        // this process leaves it alone until the store has caught up.
        Err(Error::Conflict(_)) => Ok(None),
        Err(e) => {
            ctx.unreserve(&key(m));
            Err(e)
        }
    }
}

/// Tries the machines that fit `d` until one claim succeeds; Err explains why none did.
async fn allocate(
    ctx: &Context,
    api: &Api<Machine>,
    d: &Deployment,
) -> Result<Result<(Machine, Decision), String>, Error> {
    let ns = d.namespace().unwrap_or_default();
    let all = machines_in(ctx, &ns);
    let refs: Vec<&Machine> = all.iter().map(|m| &**m).collect();
    let hints = d
        .spec
        .storage
        .as_ref()
        .and_then(|s| s.root_device_hints.as_ref());
    let fitting = match (&d.spec.machine_ref, &d.spec.machine_selector) {
        (Some(r), _) => match refs.iter().find(|m| m.name_any() == r.name) {
            Some(m) if selection::is_free(m) => {
                if let Some(why) = disk_mismatch(ctx, m, hints).await? {
                    return Ok(Err(format!(
                        "machine {} has no disk matching the root-device hints ({why}); \
                         correct spec.storage.rootDeviceHints or name another machine",
                        r.name
                    )));
                }
                vec![*m]
            }
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
    // Machines reserved moments ago may still look free in the store; skip them.
    let me = key(d);
    let order = selection::recently_remediated_last(
        selection::spread(fitting, &d.name_any()),
        Timestamp::now(),
    );
    let pinned = d.spec.machine_ref.is_some();
    let mut rejected = Vec::new();
    for m in order {
        if !ctx.reserve(&key(m), &me) {
            continue;
        }
        if !pinned {
            match disk_mismatch(ctx, m, hints).await {
                Ok(None) => {}
                Ok(Some(why)) => {
                    ctx.unreserve(&key(m));
                    rejected.push(format!("{}: {why}", m.name_any()));
                    continue;
                }
                Err(e) => {
                    ctx.unreserve(&key(m));
                    return Err(e);
                }
            }
        }
        if let Some(claimed) = claim(ctx, api, m, d).await? {
            return Ok(Ok(claimed));
        }
    }
    if !rejected.is_empty() && rejected.len() == n {
        return Ok(Err(selection::no_matching_disk(n, &rejected)));
    }
    Ok(Err(format!(
        "all {n} fitting machines were taken by other Deployments just now; retrying"
    )))
}

/// Why `m` has no disk that can take the image under the root-device hints that apply
/// (`hints`, the Deployment's, else the Machine's own), or `None` when one can or nothing
/// says (the ramdisk checks again when it writes). The summary in Machine status rules
/// out what it can; the disks themselves are read from the Machine's MachineInventory.
async fn disk_mismatch(
    ctx: &Context,
    m: &Machine,
    hints: Option<&RootDeviceHints>,
) -> Result<Option<String>, Error> {
    let Some(hints) = selection::hints_for(m, hints) else {
        return Ok(None);
    };
    if let Some(why) = selection::summary_disk_mismatch(m, hints) {
        return Ok(Some(why));
    }
    let Some(summary) = m.status.as_ref().and_then(|s| s.inventory.as_ref()) else {
        return Ok(None);
    };
    let key = selection::DiskVerdicts::key(m, hints);
    if let Some(verdict) = key
        .as_deref()
        .and_then(|k| ctx.disk_verdicts.get(k, Instant::now()))
    {
        return Ok(verdict);
    }
    let api: Api<MachineInventory> =
        Api::namespaced(ctx.client.clone(), &m.namespace().unwrap_or_default());
    let Some(inv) = api.get_opt(&summary.inventory_ref.name).await? else {
        return Ok(None);
    };
    let verdict = selection::root_disk_mismatch(&inv.spec.hardware.disks, hints);
    if let Some(key) = key {
        ctx.disk_verdicts.put(key, verdict.clone(), Instant::now());
    }
    Ok(verdict)
}

/// The one Event of an allocation, on the Deployment with the machine as its related
/// object: which machine, and what the lifecycle did with it in the same write (the
/// Machine controller, which would have said so on the Machine, had nothing left to do).
fn allocated_event(ctx: &Context, d: &Deployment, m: &Machine, decision: &Decision) {
    let phase = decision.phase;
    if phase != MachinePhase::Allocated {
        ctx.metrics
            .transitions
            .get_or_create(&PhaseLabel {
                phase: phase.as_str(),
            })
            .inc();
    }
    let mut note = format!("allocated machine {}", m.name_any());
    if phase != MachinePhase::Allocated {
        note = format!("{note}; {}", decision.report.message);
    }
    if let (Some(i), Some(b)) = (
        decision.intent,
        m.status.as_ref().and_then(|s| s.boot_intent.as_ref()),
    ) {
        note = format!(
            "{note} (boot intent #{}: {:?} for {:?})",
            b.attempt, i.target, i.purpose
        );
    }
    tracing::info!(deployment = %key(d), machine = %key(m), phase = phase.as_str(), "{note}");
    ctx.event_related(d, m, false, "Allocated", "Allocate", note);
}

async fn addresses(ctx: &Context, ns: &str, d: &Deployment) -> Result<Vec<String>, Error> {
    let Some(subnet) = &d.spec.subnet_ref else {
        return Ok(Vec::new());
    };
    let api: Api<Subnet> = Api::namespaced(ctx.client.clone(), ns);
    let ip = ipam::claim(&api, &subnet.name, &d.name_any()).await?;
    Ok(vec![ip.to_string()])
}

/// Allocates a machine to `d` (if it has none) and writes its status. `finalize`: the
/// release finalizer is not on `d` yet; it is added in the same round trip as the claim.
async fn apply(d: Arc<Deployment>, ctx: &Context, finalize: bool) -> Result<Action, Error> {
    let ns = d
        .namespace()
        .ok_or_else(|| Error::Malformed(format!("Deployment {} has no namespace", d.name_any())))?;
    let machines: Api<Machine> = Api::namespaced(ctx.client.clone(), &ns);
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let found = find_machine(ctx, &machines, &d).await?;
    // The finalizer and the claim go out together: the claim need not wait for it, because
    // a machine claimed for a Deployment that vanished before its finalizer landed is freed
    // by the Machine controller (the Deployment's delete event wakes it, and a claim whose
    // Deployment is gone returns the machine to Ready). The status write below waits for
    // both, and uses the object the finalizer write returned.
    let (d, outcome) = match (found, finalize) {
        (Some(m), false) => (d, Ok((m, None))),
        (Some(m), true) => (Arc::new(add_finalizer(ctx, &api, &d).await?), Ok((m, None))),
        (None, false) => {
            let outcome = allocate(ctx, &machines, &d).await?;
            (d, outcome.map(|(m, decision)| (m, Some(decision))))
        }
        (None, true) => {
            let (fin, outcome) =
                tokio::join!(add_finalizer(ctx, &api, &d), allocate(ctx, &machines, &d));
            (
                Arc::new(fin?),
                outcome?.map(|(m, decision)| (m, Some(decision))),
            )
        }
    };
    let machine = match outcome {
        Ok((m, fresh)) => {
            if let Some(decision) = fresh {
                if let Some(created) = d.metadata.creation_timestamp.as_ref() {
                    let waited = Timestamp::now()
                        .duration_since(created.0)
                        .as_secs_f64()
                        .max(0.0);
                    ctx.metrics.allocation_seconds.observe(waited);
                }
                allocated_event(ctx, &d, &m, &decision);
            }
            m
        }
        Err(why) => {
            let was_pending =
                d.status.as_ref().and_then(|s| s.phase) == Some(DeploymentPhase::Pending);
            if write_status(
                ctx,
                &api,
                &d,
                deployment_status::pending(&d, &why, Timestamp::now()),
            )
            .await?
                && !was_pending
            {
                ctx.event(&*d, true, "NoMachineAvailable", "Allocate", why.clone());
            }
            let retry = why.ends_with("retrying");
            return Ok(if retry {
                Action::requeue(Duration::from_millis(500))
            } else {
                Action::await_change()
            });
        }
    };
    let addresses = addresses(ctx, &ns, &d).await?;
    let now = Timestamp::now();
    write_status(
        ctx,
        &api,
        &d,
        deployment_status::allocated(&d, &machine, addresses, now, &ctx.policy),
    )
    .await?;
    // A boot that stalls changes nothing the watches see: look again when its deadline
    // passes, so the status says so within one reconcile.
    Ok(
        match blocker::check(&machine, now, &ctx.policy).recheck_after {
            Some(after) => Action::requeue(after),
            None => Action::await_change(),
        },
    )
}

/// Writes `status` if it differs, remembering the write so a reconcile on a lagging store
/// does not repeat it. True if it wrote.
async fn write_status(
    ctx: &Context,
    api: &Api<Deployment>,
    d: &Deployment,
    status: ironpool_crds::deployment::DeploymentStatus,
) -> Result<bool, Error> {
    let Some(written) = deployment_status::write(api, d, status).await? else {
        return Ok(false);
    };
    ctx.wrote(NAME);
    ctx.wrote_over(
        format!("Deployment/{}", key(d)),
        d.resource_version(),
        written.resource_version(),
    );
    Ok(true)
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
        write_status(
            ctx,
            &api,
            &d,
            deployment_status::allocated(&d, &m, addresses, Timestamp::now(), &ctx.policy),
        )
        .await?;
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
    if !ctx.synced() {
        // The caches are still filling; their events bring this object back too.
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    if ctx.behind(
        &format!("Deployment/{}", key(&*d)),
        d.metadata.resource_version.as_deref(),
    ) {
        // Our own last write is on its way to the store; its event brings us back.
        return Ok(Action::await_change());
    }
    let ns = d.namespace().unwrap_or_default();
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    if crate::restore::restore(&api, &*d).await? {
        return Ok(Action::await_change());
    }
    let ours = d.finalizers().iter().any(|f| f == FINALIZER);
    let result = match (d.metadata.deletion_timestamp.is_some(), ours) {
        (true, false) => Ok(Action::await_change()),
        (true, true) => match cleanup(d.clone(), &ctx).await {
            Ok(action) => remove_finalizer(&api, &d).await.map(|()| action),
            Err(e) => Err(e),
        },
        // The finalizer goes on in the same reconcile as the allocation (see `apply`).
        (false, false) => apply(d.clone(), &ctx, true).await,
        (false, true) => apply(d.clone(), &ctx, false).await,
    };
    ctx.observe(NAME, started.elapsed());
    let action = result?;
    ctx.succeeded(&key(&*d));
    Ok(action)
}

/// Adds the release finalizer by server-side apply: the API server merges it into the
/// set of finalizers, so a stale copy can neither fail the write nor drop another's.
async fn add_finalizer(
    ctx: &Context,
    api: &Api<Deployment>,
    d: &Deployment,
) -> Result<Deployment, Error> {
    let patch = serde_json::json!({
        "apiVersion": "metal.ironpool.dev/v1alpha1",
        "kind": "Deployment",
        "metadata": { "name": d.name_any(), "finalizers": [FINALIZER] },
    });
    let written = api
        .patch(
            &d.name_any(),
            &PatchParams::apply(MANAGER),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|e| Error::Finalizer(format!("could not add {FINALIZER}: {e}")))?;
    ctx.wrote_over(
        format!("Deployment/{}", key(d)),
        d.resource_version(),
        written.resource_version(),
    );
    Ok(written)
}

/// Removes the release finalizer with a JSON patch that first tests it is still at the
/// index we saw (whoever added it, and however).
async fn remove_finalizer(api: &Api<Deployment>, d: &Deployment) -> Result<(), Error> {
    remove_finalizer_of(api, d, FINALIZER).await
}

/// Removes `finalizer` from `obj` with a JSON patch that first tests it is still at the
/// index we saw; gone already is fine, a changed list is a [`Error::Conflict`].
pub async fn remove_finalizer_of<K>(api: &Api<K>, obj: &K, finalizer: &str) -> Result<(), Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Some(i) = obj.finalizers().iter().position(|f| f == finalizer) else {
        return Ok(());
    };
    let path = format!("/metadata/finalizers/{i}");
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        { "op": "test", "path": path, "value": finalizer },
        { "op": "remove", "path": path },
    ]))
    .map_err(|e| Error::Finalizer(e.to_string()))?;
    let what = format!("{} {}", K::kind(&()), obj.name_any());
    match api
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Gone already: the finalizer was the last thing holding it.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        // The list changed under us: read it again.
        Err(kube::Error::Api(s)) if s.code == 422 => {
            Err(Error::Conflict(format!("finalizers of {what}")))
        }
        Err(e) => Err(Error::Finalizer(format!(
            "could not remove {finalizer} from {what}: {e}"
        ))),
    }
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
    // While the caches fill, every Deployment is reconciled anyway (and waits for them):
    // waking all Pending ones for each of thousands of listed machines would only burn CPU.
    let free = selection::is_free(m) && ctx.synced();
    for d in ctx.deployments.state() {
        if d.metadata.namespace.as_deref() != Some(ns.as_str()) {
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
    machines: impl futures::Stream<Item = Arc<Machine>> + Send + 'static,
    ctx: Arc<Context>,
    concurrency: u16,
    stop: CancellationToken,
) {
    let mapper_ctx = ctx.clone();
    controller
        .watches_shared_stream(machines, move |m| deployments_of(&mapper_ctx, &m))
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod claim_tests;
