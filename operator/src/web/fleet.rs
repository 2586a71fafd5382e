//! The fleet web view's own watches of Machines, Subnets and Deployments: a reflector
//! store each, and one broadcast of what changed for the open pages. They run on every
//! replica (the leader's controller watches exist only while it leads, and the view is
//! served by the standby too), and only when the view is on.

use std::fmt::Debug;

use futures::StreamExt;
use ironpool_crds::{Deployment, Machine, Subnet};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Changes buffered per open page before it falls behind (it then gets a new snapshot).
const CHANGE_BUFFER: usize = 4096;

/// One change the open pages hear of.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Change {
    /// A Machine (`namespace/name`) was added or changed.
    Machine(String),
    /// A Machine is gone.
    MachineGone(String),
    /// A Subnet was added, changed or deleted.
    Subnet(String),
    /// The Deployment holding this Machine (`namespace/name` of the Machine) changed.
    Deployment(String),
    /// A watch listed again: every page reloads its data.
    Resync,
}

/// The stores and the change broadcast.
#[derive(Clone)]
pub struct Fleet {
    /// Every Machine the operator may see.
    pub machines: Store<Machine>,
    /// Every Subnet.
    pub subnets: Store<Subnet>,
    /// Every Deployment.
    pub deployments: Store<Deployment>,
    changes: broadcast::Sender<Change>,
}

impl Fleet {
    /// Starts the three watches (until `stop`) and returns their stores.
    pub fn start(client: &Client, namespace: Option<&str>, stop: CancellationToken) -> Fleet {
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        let (machines, mw) = reflector::store();
        let (subnets, sw) = reflector::store();
        let (deployments, dw) = reflector::store();
        let tx = changes.clone();
        tokio::spawn(watch(
            ironpool_runtime::scoped_api::<Machine>(client, namespace),
            mw,
            tx.clone(),
            stop.clone(),
            |m, gone| {
                let key = super::view::key(m);
                if gone {
                    Change::MachineGone(key)
                } else {
                    Change::Machine(key)
                }
            },
        ));
        tokio::spawn(watch(
            ironpool_runtime::scoped_api::<Subnet>(client, namespace),
            sw,
            tx.clone(),
            stop.clone(),
            |s, _| Change::Subnet(super::view::key(s)),
        ));
        tokio::spawn(watch(
            ironpool_runtime::scoped_api::<Deployment>(client, namespace),
            dw,
            tx,
            stop,
            |d, _| {
                let machine = d
                    .status
                    .as_ref()
                    .and_then(|s| s.machine_ref.as_ref())
                    .map(|m| m.name.clone())
                    .unwrap_or_default();
                Change::Deployment(format!("{}/{machine}", d.namespace().unwrap_or_default()))
            },
        ));
        Fleet {
            machines,
            subnets,
            deployments,
            changes,
        }
    }

    /// A receiver of every change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Waits (at most `limit`) until all three stores hold their first full list.
    pub async fn ready(&self, limit: std::time::Duration) -> bool {
        let all = async {
            self.machines.wait_until_ready().await.is_ok()
                && self.subnets.wait_until_ready().await.is_ok()
                && self.deployments.wait_until_ready().await.is_ok()
        };
        tokio::time::timeout(limit, all).await.unwrap_or(false)
    }
}

async fn watch<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    tx: broadcast::Sender<Change>,
    stop: CancellationToken,
    change: fn(&K, bool) -> Change,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let kind = K::kind(&()).to_string();
    let events = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|o| o.meta_mut().managed_fields = None)
        .reflect(writer)
        .for_each(|ev| {
            // A send fails only when no page is open; nothing to do then.
            let _ = match ev {
                Ok(watcher::Event::Apply(o)) => tx.send(change(&o, false)),
                Ok(watcher::Event::Delete(o)) => tx.send(change(&o, true)),
                // The store swaps in the new list at InitDone: pages reload then.
                Ok(watcher::Event::InitDone) => tx.send(Change::Resync),
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => Ok(0),
                Err(e) => {
                    tracing::warn!(kind, error = %e, "web view watch failed; retrying");
                    Ok(0)
                }
            };
            futures::future::ready(())
        });
    tokio::select! {
        () = events => {}
        () = stop.cancelled() => {}
    }
}
