//! Reflectors for Subnets, Machines and Deployments, and the lookups the agent makes in
//! them (Machine by MAC, a Machine's Deployment). Every change bumps a `watch` counter so
//! that reservations and elections follow the API without polling.

use std::sync::Arc;

use futures::StreamExt;
use ironpool_crds::{Deployment, Machine, Subnet};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::dhcp::MacAddr;

/// The agent's in-memory view of the API.
#[derive(Clone)]
pub struct Stores {
    /// All Subnets (in the watched namespace).
    pub subnets: Store<Subnet>,
    /// All Machines.
    pub machines: Store<Machine>,
    /// All Deployments.
    pub deployments: Store<Deployment>,
    changed: watch::Receiver<u64>,
}

fn spawn_reflector<K>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    tx: Arc<watch::Sender<u64>>,
    cancel: CancellationToken,
) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            // Nothing in the agent reads managedFields; the stores keep every object.
            .modify(|o| o.meta_mut().managed_fields = None),
    );
    tasks.spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                next = stream.next() => match next {
                    Some(Ok(_)) => tx.send_modify(|n| *n = n.wrapping_add(1)),
                    Some(Err(e)) => tracing::warn!(kind = K::kind(&()).as_ref(), error = %e, "watch failed; retrying"),
                    None => break,
                },
            }
        }
    });
    reader
}

impl Stores {
    /// Starts the reflectors in `tasks`; they stop when `cancel` fires.
    pub fn start(
        client: &Client,
        namespace: Option<&str>,
        tasks: &mut JoinSet<()>,
        cancel: &CancellationToken,
    ) -> Stores {
        let (tx, changed) = watch::channel(0u64);
        let tx = Arc::new(tx);
        Stores {
            subnets: spawn_reflector(
                tasks,
                ironpool_runtime::scoped_api(client, namespace),
                tx.clone(),
                cancel.clone(),
            ),
            machines: spawn_reflector(
                tasks,
                ironpool_runtime::scoped_api(client, namespace),
                tx.clone(),
                cancel.clone(),
            ),
            deployments: spawn_reflector(
                tasks,
                ironpool_runtime::scoped_api(client, namespace),
                tx,
                cancel.clone(),
            ),
            changed,
        }
    }

    /// Waits until every store has its first full list.
    pub async fn ready(&self) -> bool {
        self.subnets.wait_until_ready().await.is_ok()
            && self.machines.wait_until_ready().await.is_ok()
            && self.deployments.wait_until_ready().await.is_ok()
    }

    /// A receiver that changes whenever any store changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.clone()
    }

    /// The Machine whose `spec.bootMACAddress` is `mac`, if any.
    pub fn machine_by_mac(&self, mac: &MacAddr) -> Option<Arc<Machine>> {
        self.machines.find(|m| {
            m.spec
                .boot_mac_address
                .parse::<MacAddr>()
                .is_ok_and(|x| x == *mac)
        })
    }

    /// The Deployment a Machine is allocated to (`status.deploymentRef`), if in the store.
    pub fn deployment_of(&self, machine: &Machine) -> Option<Arc<Deployment>> {
        let name = &machine.status.as_ref()?.deployment_ref.as_ref()?.name;
        let ns = machine.meta().namespace.as_deref()?;
        self.deployments
            .get(&ObjectRef::<Deployment>::new(name).within(ns))
    }

    /// The Subnet `namespace/name`, if in the store.
    pub fn subnet(&self, namespace: &str, name: &str) -> Option<Arc<Subnet>> {
        self.subnets
            .get(&ObjectRef::<Subnet>::new(name).within(namespace))
    }
}
