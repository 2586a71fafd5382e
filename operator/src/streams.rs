//! One watch per kind, shared by every controller that needs it. The Machine controller
//! reconciles Machines and is woken by Deployments; the Deployment controller the other
//! way round. With a watch each (kube's `Controller::new` plus `watches`), every Machine
//! would be listed and decoded twice at start and on every change; at 5,000 Machines
//! that doubles the operator's CPU and the apiserver's list work. Here one watcher feeds
//! one reflector store and fans each changed (or deleted) object out to its subscribers
//! as the same `Arc`.

use std::fmt::Debug;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::Api;
use kube::Resource;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A shared watch of one kind: its store, its subscribers and the task that drives it.
pub struct SharedWatch<K: Resource<DynamicType = ()> + Clone + 'static> {
    /// The reflector store, read by reconcilers and by kube's controller runtime.
    pub store: Store<K>,
    subscribers: Vec<mpsc::UnboundedSender<Arc<K>>>,
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
}

impl<K> SharedWatch<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// A watch of `api` with `config`; nothing runs until [`SharedWatch::run`].
    pub fn new(api: Api<K>, config: watcher::Config) -> Self {
        let (store, writer) = reflector::store();
        Self {
            store,
            subscribers: Vec::new(),
            api,
            config,
            writer,
        }
    }

    /// A stream of every object the watch lists, changes or deletes (deleted objects are
    /// gone from the store by the time the subscriber sees them).
    pub fn subscribe(&mut self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.subscribers.push(tx);
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    /// Drives the watch until `stop` fires: list, then watch, retrying with kube's
    /// default backoff after errors.
    pub async fn run(self, stop: CancellationToken) {
        let subscribers = self.subscribers;
        let kind = K::kind(&()).to_string();
        let events = watcher(self.api, self.config)
            .default_backoff()
            // Nothing here reads managedFields, and on a Machine they are a third of the
            // object: the store keeps every object, so it keeps them without (None, not an
            // empty list, which an update would send as "reset them").
            .modify(|o| o.meta_mut().managed_fields = None)
            .reflect(self.writer)
            .touched_objects()
            .for_each(|ev| {
                match ev {
                    Ok(obj) => {
                        let obj = Arc::new(obj);
                        for s in &subscribers {
                            // A subscriber that is gone (its controller stopped) is skipped.
                            let _ = s.send(obj.clone());
                        }
                    }
                    Err(e) => tracing::warn!(kind, error = %e, "watch failed; retrying"),
                }
                futures::future::ready(())
            });
        tokio::select! {
            () = events => {}
            () = stop.cancelled() => {}
        }
    }
}
