//! The IronpoolCluster controller: reports the control-plane endpoint and the failure
//! domains (the values of the failure-domain label on the namespace's Ironpool Machines),
//! and marks the cluster infrastructure provisioned. The status is a pure function
//! ([`status_for`]); the reconciler only gathers inputs and writes it when it changed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ironpool_crds::Machine;
use ironpool_crds::capi::{
    FailureDomain, Initialization, IronpoolCluster, IronpoolClusterStatus, MANAGED_BY_LABEL,
    PAUSED_ANNOTATION, ZONE_LABEL, condition::PAUSED,
};
use ironpool_crds::conditions::{self, READY, Status};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::types::CapiCluster;
use super::{CapiContext, owner_named};
use crate::context::{MANAGER, key};
use crate::error::Error;

const NAME: &str = "ironpoolcluster";

/// The failure domains: each distinct value of `label` among `machines`, with how many
/// machines carry it; `control_plane` lists the domains that may host control planes
/// (empty: all).
pub fn failure_domains<'a>(
    machines: impl IntoIterator<Item = &'a Machine>,
    label: &str,
    control_plane: &[String],
) -> Vec<FailureDomain> {
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for m in machines {
        if let Some(v) = m.labels().get(label) {
            *count.entry(v.clone()).or_default() += 1;
        }
    }
    count
        .into_iter()
        .map(|(name, n)| FailureDomain {
            control_plane: Some(control_plane.is_empty() || control_plane.contains(&name)),
            attributes: BTreeMap::from([("machines".to_string(), n.to_string())]),
            name,
        })
        .collect()
}

/// The status `ic` should show, given its Cluster and the namespace's Machines.
pub fn status_for<'a>(
    ic: &IronpoolCluster,
    cluster: Option<&CapiCluster>,
    machines: impl IntoIterator<Item = &'a Machine>,
    now: Time,
) -> IronpoolClusterStatus {
    let old = ic.status.clone().unwrap_or_default();
    let gen_ = ic.metadata.generation;
    let mut st = IronpoolClusterStatus {
        initialization: old.initialization.filter(|i| i.provisioned == Some(true)),
        failure_domains: old.failure_domains,
        conditions: old.conditions,
        observed_generation: gen_,
    };
    let paused = if ic.annotations().contains_key(PAUSED_ANNOTATION) {
        Some(format!(
            "annotation {PAUSED_ANNOTATION} is set on this IronpoolCluster; remove it to resume"
        ))
    } else {
        cluster.filter(|c| c.paused()).map(|c| {
            format!(
                "Cluster {} is paused (spec.paused); Ironpool changes nothing until it is \
                 unpaused",
                c.name_any()
            )
        })
    };
    let mut set = |t: &str, s: Status, reason: &str, msg: &str| {
        conditions::set(&mut st.conditions, t, s, reason, msg, gen_, now.clone());
    };
    if let Some(why) = paused {
        set(PAUSED, Status::True, "Paused", &why);
        return st;
    }
    set(PAUSED, Status::False, "NotPaused", "");
    let Some(cluster) = cluster else {
        set(
            READY,
            Status::False,
            "WaitingForClusterOwner",
            "waiting for Cluster API to set a Cluster as owner: name this IronpoolCluster in \
             a Cluster's spec.infrastructureRef",
        );
        return st;
    };
    let label = ic
        .spec
        .failure_domain_label
        .as_deref()
        .unwrap_or(ZONE_LABEL);
    let endpoint = ic
        .spec
        .control_plane_endpoint
        .as_ref()
        .map(|e| (e.host.clone(), e.port))
        .or_else(|| {
            cluster
                .spec
                .control_plane_endpoint
                .as_ref()
                .filter(|e| !e.host.is_empty() && e.port > 0)
                .map(|e| (e.host.clone(), e.port))
        });
    let Some((host, port)) = endpoint else {
        set(
            READY,
            Status::False,
            "MissingControlPlaneEndpoint",
            "set spec.controlPlaneEndpoint (host and port of a virtual IP or load balancer in \
             front of the control-plane servers) on this IronpoolCluster or on the Cluster",
        );
        return st;
    };
    st.failure_domains = failure_domains(machines, label, &ic.spec.control_plane_failure_domains);
    st.initialization = Some(Initialization {
        provisioned: Some(true),
    });
    let domains = if st.failure_domains.is_empty() {
        format!("no Machine has label {label}, so there are no failure domains")
    } else {
        format!(
            "{} failure domains from label {label}",
            st.failure_domains.len()
        )
    };
    set(
        READY,
        Status::True,
        "Provisioned",
        &format!(
            "control-plane endpoint {host}:{port}; {domains}; Cluster {} may create Machines",
            cluster.name_any()
        ),
    );
    st
}

async fn reconcile(ic: Arc<IronpoolCluster>, ctx: Arc<CapiContext>) -> Result<Action, Error> {
    let started = Instant::now();
    if ic.labels().contains_key(MANAGED_BY_LABEL) {
        // Externally managed infrastructure: the contract says leave it alone.
        return Ok(Action::await_change());
    }
    if !ctx.base.synced() {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let ns = ic.namespace().unwrap_or_default();
    let cluster = owner_named(&*ic, "Cluster").and_then(|n| {
        ctx.clusters
            .get(&ObjectRef::<CapiCluster>::new(&n).within(&ns))
    });
    let machines = ctx.base.machines.state();
    let in_ns = machines
        .iter()
        .filter(|m| m.namespace().as_deref() == Some(ns.as_str()))
        .map(|m| &**m);
    let status = status_for(&ic, cluster.as_deref(), in_ns, Time(Timestamp::now()));
    if ic.status.as_ref() != Some(&status) {
        let api: Api<IronpoolCluster> = Api::namespaced(ctx.base.client.clone(), &ns);
        let patch = serde_json::json!({
            "apiVersion": IronpoolCluster::api_version(&()),
            "kind": "IronpoolCluster",
            "metadata": { "name": ic.name_any() },
            "status": status,
        });
        api.patch_status(
            &ic.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        ctx.base.wrote(NAME);
    }
    ctx.base.observe(NAME, started.elapsed());
    ctx.base.succeeded(&key(&*ic));
    Ok(Action::await_change())
}

fn error_policy(ic: Arc<IronpoolCluster>, e: &Error, ctx: Arc<CapiContext>) -> Action {
    let wait = ctx.base.failed(NAME, &key(&*ic), e);
    tracing::warn!(ironpool_cluster = %key(&*ic), error = %e, retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

/// Runs the IronpoolCluster controller until `stop` fires; woken by its objects, by their
/// Clusters and by Ironpool Machines of their namespace (failure domains).
pub async fn run(
    controller: Controller<IronpoolCluster>,
    capi_clusters: impl futures::Stream<Item = Arc<CapiCluster>> + Send + 'static,
    machines: impl futures::Stream<Item = Arc<Machine>> + Send + 'static,
    ctx: Arc<CapiContext>,
    stop: CancellationToken,
) {
    let of_ns = ctx.clone();
    controller
        .watches_shared_stream(capi_clusters, |c| {
            let r = c.spec.infrastructure_ref.as_ref()?;
            (r.kind == "IronpoolCluster" && !r.name.is_empty())
                .then(|| ObjectRef::new(&r.name).within(&c.namespace().unwrap_or_default()))
        })
        .watches_shared_stream(machines, move |m| {
            let ns = m.namespace().unwrap_or_default();
            of_ns
                .ironpool_clusters
                .state()
                .into_iter()
                .filter(|ic| ic.namespace().as_deref() == Some(ns.as_str()))
                .map(|ic| ObjectRef::from_obj(&*ic))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironpool_crds::capi::{ApiEndpoint, IronpoolClusterSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use crate::capi::test_server as machine;

    fn cluster(paused: bool) -> CapiCluster {
        let mut c = CapiCluster::new("c1", Default::default());
        c.spec.paused = Some(paused);
        c
    }

    fn ic(endpoint: bool) -> IronpoolCluster {
        let mut ic = IronpoolCluster::new(
            "c1",
            IronpoolClusterSpec {
                control_plane_endpoint: endpoint.then(|| ApiEndpoint {
                    host: "10.0.0.5".into(),
                    port: 6443,
                }),
                ..Default::default()
            },
        );
        ic.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "cluster.x-k8s.io/v1beta2".into(),
            kind: "Cluster".into(),
            name: "c1".into(),
            uid: "u".into(),
            ..Default::default()
        }]);
        ic
    }

    fn now() -> Time {
        Time(Timestamp::UNIX_EPOCH)
    }

    fn cond<'a>(
        s: &'a IronpoolClusterStatus,
        t: &str,
    ) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        conditions::get(&s.conditions, t).unwrap()
    }

    #[test]
    fn failure_domains_count_machines_per_zone() {
        let ms = [
            machine("a", Some("rack1")),
            machine("b", Some("rack2")),
            machine("c", Some("rack1")),
            machine("d", None),
        ];
        let fds = failure_domains(ms.iter(), ZONE_LABEL, &["rack2".into()]);
        assert_eq!(fds.len(), 2);
        assert_eq!(fds[0].name, "rack1");
        assert_eq!(fds[0].attributes["machines"], "2");
        assert_eq!(fds[0].control_plane, Some(false));
        assert_eq!(fds[1].control_plane, Some(true));
        let all = failure_domains(ms.iter(), ZONE_LABEL, &[]);
        assert!(all.iter().all(|f| f.control_plane == Some(true)));
    }

    #[test]
    fn provisioned_with_an_endpoint_and_domains() {
        let ms = [machine("a", Some("rack1"))];
        let st = status_for(&ic(true), Some(&cluster(false)), ms.iter(), now());
        assert_eq!(st.initialization.as_ref().unwrap().provisioned, Some(true));
        assert_eq!(st.failure_domains.len(), 1);
        let ready = cond(&st, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Provisioned")
        );
        assert!(ready.message.contains("10.0.0.5:6443"), "{}", ready.message);
        assert_eq!(cond(&st, PAUSED).status, "False");
    }

    #[test]
    fn the_clusters_endpoint_serves_when_ours_is_unset() {
        let mut c = cluster(false);
        c.spec.control_plane_endpoint = Some(super::super::types::Endpoint {
            host: "vip".into(),
            port: 443,
        });
        let st = status_for(&ic(false), Some(&c), std::iter::empty(), now());
        assert!(cond(&st, READY).message.contains("vip:443"));
        assert!(cond(&st, READY).message.contains("no Machine has label"));
    }

    #[test]
    fn without_an_endpoint_it_says_where_to_set_one() {
        let st = status_for(&ic(false), Some(&cluster(false)), std::iter::empty(), now());
        let ready = cond(&st, READY);
        assert_eq!(ready.reason, "MissingControlPlaneEndpoint");
        assert!(ready.message.contains("spec.controlPlaneEndpoint"));
        assert!(st.initialization.is_none());
    }

    #[test]
    fn paused_changes_nothing_else() {
        let st = status_for(&ic(true), Some(&cluster(true)), std::iter::empty(), now());
        assert_eq!(cond(&st, PAUSED).status, "True");
        assert!(conditions::get(&st.conditions, READY).is_none());
        assert!(st.initialization.is_none());
        let mut annotated = ic(true);
        annotated
            .annotations_mut()
            .insert(PAUSED_ANNOTATION.into(), String::new());
        let st = status_for(&annotated, Some(&cluster(false)), std::iter::empty(), now());
        assert!(cond(&st, PAUSED).message.contains("annotation"));
    }

    #[test]
    fn no_owner_waits_for_cluster_api() {
        let st = status_for(&ic(true), None, std::iter::empty(), now());
        assert_eq!(cond(&st, READY).reason, "WaitingForClusterOwner");
    }
}
