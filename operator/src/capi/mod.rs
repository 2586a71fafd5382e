//! The Cluster API infrastructure provider (contract v1beta2): controllers for
//! IronpoolCluster and IronpoolMachine. They run in the operator when it is started with
//! `--capi`, under the same leader election, and reuse its stores: an IronpoolMachine
//! becomes one Ironpool Deployment, so allocation, image writing and release are the
//! Deployment controller's, with no second allocator.

pub mod cluster_controller;
pub mod machine_controller;
pub mod machine_rules;
pub mod types;

use std::sync::Arc;

use ironpool_crds::capi::{IronpoolCluster, IronpoolMachine, ZONE_LABEL};
use ironpool_crds::{Deployment, Machine};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Client, Resource};
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::streams::SharedWatch;
use types::{CapiCluster, CapiMachine};

/// Field manager of the IronpoolMachine finalizer (kept apart from the status manager so
/// that neither apply drops the other's fields).
pub const FINALIZER_MANAGER: &str = "ironpool-operator-capi";

/// What the two controllers share: the operator's context and the stores of the Cluster
/// API kinds.
pub struct CapiContext {
    /// The operator's context: client, Machine and Deployment stores, events, metrics.
    pub base: Arc<Context>,
    /// Cluster API Machines.
    pub machines: Store<CapiMachine>,
    /// Cluster API Clusters.
    pub clusters: Store<CapiCluster>,
    /// IronpoolClusters.
    pub ironpool_clusters: Store<IronpoolCluster>,
    /// IronpoolMachines.
    pub ironpool_machines: Store<IronpoolMachine>,
}

/// The name of `obj`'s owner of `kind` in a Cluster API or infrastructure group.
pub fn owner_named<K: Resource>(obj: &K, kind: &str) -> Option<String> {
    obj.meta()
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| {
            o.kind == kind
                && (o.api_version.starts_with("cluster.x-k8s.io/")
                    || o.api_version
                        .starts_with("infrastructure.cluster.x-k8s.io/"))
        })
        .map(|o| o.name.clone())
}

/// The failure-domain label of `cluster`'s IronpoolCluster, or the zone label.
pub fn failure_domain_label(ctx: &CapiContext, cluster: Option<&CapiCluster>) -> String {
    cluster
        .and_then(|c| {
            let r = c.spec.infrastructure_ref.as_ref()?;
            let ns = kube::ResourceExt::namespace(c)?;
            let ic = ctx
                .ironpool_clusters
                .get(&ObjectRef::new(&r.name).within(&ns))?;
            ic.spec.failure_domain_label.clone()
        })
        .unwrap_or_else(|| ZONE_LABEL.to_string())
}

/// The shared watches the provider needs, made before anything runs so that the
/// operator's Machine and Deployment watches can subscribe it.
pub struct Watches {
    machines: SharedWatch<CapiMachine>,
    clusters: SharedWatch<CapiCluster>,
    ironpool_clusters: SharedWatch<IronpoolCluster>,
    ironpool_machines: SharedWatch<IronpoolMachine>,
}

impl Watches {
    /// Watches of the four kinds, in `namespace` or everywhere.
    pub fn new(client: &Client, namespace: Option<&str>, config: watcher::Config) -> Watches {
        use ironpool_runtime::scoped_api as api;
        Watches {
            machines: SharedWatch::new(api(client, namespace), config.clone()),
            clusters: SharedWatch::new(api(client, namespace), config.clone()),
            ironpool_clusters: SharedWatch::new(api(client, namespace), config.clone()),
            ironpool_machines: SharedWatch::new(api(client, namespace), config),
        }
    }

    /// Runs both controllers and their watches until `stop` fires. `machines` and
    /// `deployments` are subscriptions of the operator's own watches.
    pub async fn run(
        mut self,
        base: Arc<Context>,
        machines: impl futures::Stream<Item = Arc<Machine>> + Send + 'static,
        deployments: impl futures::Stream<Item = Arc<Deployment>> + Send + 'static,
        stop: CancellationToken,
    ) {
        let ctx = Arc::new(CapiContext {
            base,
            machines: self.machines.store.clone(),
            clusters: self.clusters.store.clone(),
            ironpool_clusters: self.ironpool_clusters.store.clone(),
            ironpool_machines: self.ironpool_machines.store.clone(),
        });
        let im_controller = Controller::for_shared_stream(
            self.ironpool_machines.subscribe(),
            self.ironpool_machines.store.clone(),
        );
        let ic_controller = Controller::for_shared_stream(
            self.ironpool_clusters.subscribe(),
            self.ironpool_clusters.store.clone(),
        );
        let capi_machines = self.machines.subscribe();
        let clusters_for_machines = self.clusters.subscribe();
        let clusters_for_clusters = self.clusters.subscribe();
        tokio::join!(
            self.machines.run(stop.clone()),
            self.clusters.run(stop.clone()),
            self.ironpool_clusters.run(stop.clone()),
            self.ironpool_machines.run(stop.clone()),
            machine_controller::run(
                im_controller,
                deployments,
                capi_machines,
                clusters_for_machines,
                ctx.clone(),
                stop.clone(),
            ),
            cluster_controller::run(
                ic_controller,
                clusters_for_clusters,
                machines,
                ctx.clone(),
                stop.clone(),
            ),
        );
    }
}

/// A server (Ironpool Machine) for unit tests, with a zone label when `zone` is given.
#[cfg(test)]
pub(crate) fn test_server(name: &str, zone: Option<&str>) -> Machine {
    use ironpool_crds::machine::{Architecture, MachineSpec};
    let mut m = Machine::new(
        name,
        MachineSpec {
            bmc: None,
            architecture: Architecture::X86_64,
            ..MachineSpec::for_boot_mac("52:54:00:00:00:01")
        },
    );
    if let Some(z) = zone {
        kube::ResourceExt::labels_mut(&mut m).insert(ZONE_LABEL.into(), z.into());
    }
    m
}
