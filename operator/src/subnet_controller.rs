//! The Subnet controller: pool sizes and usage in status, overlap detection.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use ironpool_crds::Subnet;
use ironpool_crds::conditions::{self, READY, Status};
use ironpool_crds::subnet::SubnetStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::context::{Context, MANAGER, key};
use crate::error::Error;
use crate::ipam;

const NAME: &str = "subnet";

/// The operator's status of `s`, given the other Subnets of its namespace.
pub fn status_of(s: &Subnet, neighbours: &[Arc<Subnet>], now: Timestamp) -> SubnetStatus {
    let current = s.status.clone().unwrap_or_default();
    let mut out = SubnetStatus {
        conditions: current
            .conditions
            .iter()
            .filter(|c| c.type_ == READY)
            .cloned()
            .collect(),
        ..SubnetStatus::default()
    };
    let name = s.name_any();
    let specs: Vec<(String, &ironpool_crds::SubnetSpec)> =
        neighbours.iter().map(|n| (n.name_any(), &n.spec)).collect();
    let named: Vec<(&str, &ironpool_crds::SubnetSpec)> =
        specs.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    let overlaps = ipam::find_overlaps(&named)
        .remove(&name)
        .unwrap_or_default();
    let (status, reason, message) = match ipam::Pool::from_spec(&s.spec) {
        Err(e) => (Status::False, "Invalid", e.to_string()),
        Ok(pool) => {
            out.addresses = Some(pool.counts(current.allocations.len(), 0));
            if overlaps.is_empty() {
                (
                    Status::True,
                    "Ready",
                    format!(
                        "{} static addresses free",
                        pool.counts(current.allocations.len(), 0).free
                    ),
                )
            } else {
                (
                    Status::False,
                    "Overlaps",
                    format!(
                        "cidr {} overlaps Subnet(s) {}; give each network its own range",
                        s.spec.cidr,
                        overlaps.join(", ")
                    ),
                )
            }
        }
    };
    conditions::set(
        &mut out.conditions,
        READY,
        status,
        reason,
        &message,
        s.metadata.generation,
        Time(now),
    );
    out.observed_generation = s.metadata.generation;
    out
}

async fn reconcile(
    s: Arc<Subnet>,
    ctx: Arc<(Arc<Context>, Store<Subnet>)>,
) -> Result<Action, Error> {
    let (ctx, store) = (&ctx.0, &ctx.1);
    let started = Instant::now();
    let ns = s.namespace().unwrap_or_default();
    let neighbours: Vec<Arc<Subnet>> = store
        .state()
        .into_iter()
        .filter(|n| n.namespace().as_deref() == Some(ns.as_str()))
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .collect();
    let next = status_of(&s, &neighbours, Timestamp::now());
    let overlapping =
        conditions::get(&next.conditions, READY).is_some_and(|c| c.reason == "Overlaps");
    let current = s.status.clone().unwrap_or_default();
    let mine = SubnetStatus {
        allocations: Vec::new(),
        served_by: None,
        conditions: current
            .conditions
            .iter()
            .filter(|c| c.type_ == READY)
            .cloned()
            .collect(),
        ..current
    };
    if mine != next {
        let api: Api<Subnet> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = serde_json::json!({
            "apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Subnet",
            "metadata": { "name": s.name_any() }, "status": next,
        });
        api.patch_status(
            &s.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        ctx.wrote(NAME);
        let ready = conditions::get(&next.conditions, READY);
        if let Some(c) = ready.filter(|c| c.reason == "Overlaps") {
            ctx.event(&*s, true, "Overlaps", "Validate", c.message.clone());
        }
    }
    ctx.observe(NAME, started.elapsed());
    ctx.succeeded(&key(&*s));
    // The delete of an overlapping neighbour can reach us before our store drops it: look
    // again shortly while overlapping.
    Ok(if overlapping {
        Action::requeue(std::time::Duration::from_secs(5))
    } else {
        Action::await_change()
    })
}

fn error_policy(s: Arc<Subnet>, e: &Error, ctx: Arc<(Arc<Context>, Store<Subnet>)>) -> Action {
    let wait = ctx.0.failed(NAME, &key(&*s), e);
    tracing::warn!(subnet = %key(&*s), error = %e, retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

/// Runs the Subnet controller until `stop` fires.
/// `subnets` must have the controller's own scope (one namespace or all), so that a
/// namespace-scoped operator never needs cluster-wide list/watch on Subnets.
pub async fn run(
    controller: Controller<Subnet>,
    subnets: Api<Subnet>,
    ctx: Arc<Context>,
    stop: CancellationToken,
) {
    let store = controller.store();
    // A Subnet's neighbours matter for overlap: any change re-checks its whole namespace.
    let neighbours = store.clone();
    controller
        .watches(subnets, Default::default(), move |s: Subnet| {
            let ns = s.namespace().unwrap_or_default();
            neighbours
                .state()
                .into_iter()
                .filter(|n| n.namespace().as_deref() == Some(ns.as_str()))
                .map(|n| ObjectRef::from_obj(&*n))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, Arc::new((ctx, store)))
        .for_each(|_| async {})
        .await;
}
