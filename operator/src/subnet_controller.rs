//! The Subnet controller: pool sizes and usage in status, overlap detection, and the Nodes
//! whose labels match `spec.agentSelector` (`status.candidateNodes`, what the agents read
//! instead of Nodes).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use futures::StreamExt;
use ironpool_crds::Subnet;
use ironpool_crds::conditions::{self, READY, Status};
use ironpool_crds::subnet::SubnetStatus;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::core::{PartialObjectMeta, Selector, SelectorExt};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::context::{Context, MANAGER, key};
use crate::error::Error;
use crate::ipam;

const NAME: &str = "subnet";

/// At most this many names in `status.candidateNodes` (the schema's limit): one agent
/// serves, the rest stand by, and a thousand standbys are already more than any network has.
const MAX_CANDIDATES: usize = 1024;

/// A Node's name and labels, as the Subnet controller sees it.
pub type NodeLabels<'a> = (&'a str, &'a BTreeMap<String, String>);

/// Which Nodes may serve `s`: `Ok(None)` without an agentSelector (every agent may),
/// `Ok(Some(names))` sorted and capped at [`MAX_CANDIDATES`], `Err(message)` when the
/// selector does not parse.
pub fn candidates(s: &Subnet, nodes: &[NodeLabels<'_>]) -> Result<Option<Vec<String>>, String> {
    let Some(selector) = s.spec.agent_selector.clone() else {
        return Ok(None);
    };
    let selector = Selector::try_from(selector).map_err(|e| e.to_string())?;
    if selector.selects_all() {
        return Ok(None);
    }
    let mut names: Vec<String> = nodes
        .iter()
        .filter(|(_, labels)| selector.matches(labels))
        .map(|(name, _)| (*name).to_string())
        .collect();
    names.sort();
    names.truncate(MAX_CANDIDATES);
    Ok(Some(names))
}

/// The operator's status of `s`, given the other Subnets of its namespace and, once the
/// Node watch has listed them, the Nodes (`None` keeps `candidateNodes` as it is, so an
/// operator that has not seen the Nodes yet never takes a Subnet from its agents).
pub fn status_of(
    s: &Subnet,
    neighbours: &[Arc<Subnet>],
    nodes: Option<&[NodeLabels<'_>]>,
    now: Timestamp,
) -> SubnetStatus {
    let current = s.status.clone().unwrap_or_default();
    let mut out = SubnetStatus {
        conditions: current
            .conditions
            .iter()
            .filter(|c| c.type_ == READY)
            .cloned()
            .collect(),
        candidate_nodes: current.candidate_nodes.clone(),
        ..SubnetStatus::default()
    };
    let agents = nodes.map(|nodes| candidates(s, nodes));
    if let Some(agents) = &agents {
        out.candidate_nodes = agents.clone().ok().flatten().unwrap_or_default();
    }
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
            if let Some(Err(e)) = &agents {
                (
                    Status::False,
                    "InvalidAgentSelector",
                    format!(
                        "agentSelector does not parse ({e}); no agent serves this Subnet until it is fixed"
                    ),
                )
            } else if matches!(&agents, Some(Ok(Some(names))) if names.is_empty()) {
                (
                    Status::False,
                    "NoCandidateNode",
                    "no Node's labels match agentSelector, so no agent serves this Subnet; \
                     label the provisioning node(s) to match it (kubectl label node <name> <key>=<value>)"
                        .to_string(),
                )
            } else if overlaps.is_empty() {
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

/// What the reconciler reads besides the Subnet.
struct Shared {
    ctx: Arc<Context>,
    subnets: Store<Subnet>,
    /// Node metadata, from a metadata-only watch.
    nodes: Store<PartialObjectMeta<Node>>,
    /// Whether the Node watch has listed every Node once.
    nodes_listed: Arc<AtomicBool>,
}

async fn reconcile(s: Arc<Subnet>, shared: Arc<Shared>) -> Result<Action, Error> {
    let (ctx, store) = (&shared.ctx, &shared.subnets);
    let started = Instant::now();
    let ns = s.namespace().unwrap_or_default();
    let neighbours: Vec<Arc<Subnet>> = store
        .state()
        .into_iter()
        .filter(|n| n.namespace().as_deref() == Some(ns.as_str()))
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .collect();
    let node_objects = shared.nodes.state();
    let labels: Vec<NodeLabels<'_>> = node_objects
        .iter()
        .map(|n| (n.metadata.name.as_deref().unwrap_or(""), n.labels()))
        .collect();
    let nodes = shared
        .nodes_listed
        .load(Ordering::Acquire)
        .then_some(labels.as_slice());
    let next = status_of(&s, &neighbours, nodes, Timestamp::now());
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

fn error_policy(s: Arc<Subnet>, e: &Error, shared: Arc<Shared>) -> Action {
    let wait = shared.ctx.failed(NAME, &key(&*s), e);
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
    let (nodes, relabelled, nodes_listed) = watch_node_labels(&ctx);
    controller
        .reconcile_all_on(relabelled)
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
        .run(
            reconcile,
            error_policy,
            Arc::new(Shared {
                ctx,
                subnets: store,
                nodes,
                nodes_listed,
            }),
        )
        .for_each(|_| async {})
        .await;
}

/// A metadata-only watch of every Node: the store, a stream that fires when a Node's labels
/// change, a Node appears or goes, or the watch has (re)listed them all, and a flag set
/// after the first complete list. Nodes are cluster-scoped, so this needs list and watch
/// on nodes cluster-wide; without them the operator logs the refusal and leaves every
/// Subnet's candidateNodes as it is.
fn watch_node_labels(
    ctx: &Context,
) -> (
    Store<PartialObjectMeta<Node>>,
    impl futures::Stream<Item = ()> + Send + 'static,
    Arc<AtomicBool>,
) {
    let (store, writer) = reflector::store();
    let listed = Arc::new(AtomicBool::new(false));
    let flag = listed.clone();
    let api: Api<PartialObjectMeta<Node>> = Api::all(ctx.client.clone());
    let mut seen: HashMap<String, BTreeMap<String, String>> = HashMap::new();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .filter_map(move |event| {
            let changed = match event {
                Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => {
                    let labels = n.labels().clone();
                    seen.insert(n.name_any(), labels.clone()) != Some(labels)
                }
                Ok(watcher::Event::Delete(n)) => seen.remove(&n.name_any()).is_some(),
                Ok(watcher::Event::Init) => false,
                // A (re)list is complete: the store now holds exactly the Nodes that exist.
                Ok(watcher::Event::InitDone) => {
                    flag.store(true, Ordering::Release);
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watching Node labels (grant list and watch on nodes); Subnet candidateNodes are not updated");
                    false
                }
            };
            std::future::ready(changed.then_some(()))
        });
    (store, stream, listed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn subnet(selector: Option<serde_json::Value>) -> Subnet {
        let mut spec = serde_json::json!({"cidr": "10.0.0.0/24", "leaseTime": "1h"});
        if let Some(selector) = selector {
            spec["agentSelector"] = selector;
        }
        Subnet::new("s", serde_json::from_value(spec).unwrap())
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    #[test]
    fn candidates_are_the_matching_nodes_sorted() {
        let prov = labels(&[("ironpool.dev/provisioning", "true")]);
        let plain = labels(&[]);
        let nodes: Vec<NodeLabels<'_>> = vec![("n3", &prov), ("n1", &plain), ("n2", &prov)];
        let want = subnet(Some(
            serde_json::json!({"matchLabels": {"ironpool.dev/provisioning": "true"}}),
        ));
        assert_eq!(
            candidates(&want, &nodes),
            Ok(Some(vec!["n2".to_string(), "n3".to_string()]))
        );
        assert_eq!(candidates(&subnet(None), &nodes), Ok(None));
        assert_eq!(
            candidates(&subnet(Some(serde_json::json!({}))), &nodes),
            Ok(None)
        );
        let bad = subnet(Some(serde_json::json!({"matchExpressions": [
            {"key": "rack", "operator": "Sometimes", "values": ["r1"]}]})));
        assert!(candidates(&bad, &nodes).is_err());
    }

    #[test]
    fn no_matching_node_is_not_ready_and_says_what_to_do() {
        let plain = labels(&[]);
        let nodes: Vec<NodeLabels<'_>> = vec![("n1", &plain)];
        let s = subnet(Some(serde_json::json!({"matchLabels": {"rack": "r1"}})));
        let status = status_of(&s, &[], Some(&nodes), Timestamp::now());
        let ready = conditions::get(&status.conditions, READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "NoCandidateNode")
        );
        assert!(
            ready.message.contains("kubectl label node"),
            "{}",
            ready.message
        );
        assert!(status.candidate_nodes.is_empty());
    }

    #[test]
    fn unlisted_nodes_keep_the_candidates_written_before() {
        let mut s = subnet(Some(serde_json::json!({"matchLabels": {"rack": "r1"}})));
        s.status = Some(SubnetStatus {
            candidate_nodes: vec!["n1".to_string()],
            ..SubnetStatus::default()
        });
        let status = status_of(&s, &[], None, Timestamp::now());
        assert_eq!(status.candidate_nodes, vec!["n1".to_string()]);
        let ready = conditions::get(&status.conditions, READY).unwrap();
        assert_eq!(ready.reason, "Ready");
    }
}
