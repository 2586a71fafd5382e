//! What every reconcile shares: the client, stores, policy, metrics, events, backoff state.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a claim is remembered: longer than the store takes to catch up.
const CLAIM_MEMORY: Duration = Duration::from_secs(10);

use ironpool_crds::{Deployment, Machine};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};

use crate::error::Error;
use crate::lifecycle::Policy;
use crate::metrics::{ControllerLabel, ErrorLabels, Metrics};

/// Field manager of every status write the operator makes.
pub const MANAGER: &str = "ironpool-operator";

/// Shared state of the controllers.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Lifecycle timeouts and retries.
    pub policy: Policy,
    /// Metrics.
    pub metrics: Metrics,
    /// Event recorder.
    pub recorder: Recorder,
    /// All Machines, kept current by the Machine controller's reflector.
    pub machines: Store<Machine>,
    /// All Deployments, kept current by the Deployment controller's reflector.
    pub deployments: Store<Deployment>,
    /// Consecutive failures per object, for per-object backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Machines reserved or claimed moments ago, by `namespace/name`.
    claimed: Mutex<HashMap<String, Claim>>,
    /// resourceVersions our own writes replaced, by `kind/namespace/name`.
    written: Mutex<HashMap<String, (String, Instant)>>,
    /// Events waiting for the background sender.
    events: tokio::sync::mpsc::Sender<(Event, ObjectReference)>,
    /// Root-device-hint verdicts that read a MachineInventory, remembered a while.
    pub disk_verdicts: crate::selection::DiskVerdicts,
}

/// A machine this process reserved for a Deployment, and the object its claim returned.
struct Claim {
    at: Instant,
    deployment: String,
    /// The claimed object, and the resourceVersion it had before the claim.
    machine: Option<(Machine, Option<String>)>,
}

/// Events sent at once: events are telemetry and must not crowd out the writes that do
/// the work (client-go's broadcaster queues them the same way).
const EVENT_SENDERS: usize = 4;
/// Events queued beyond this are dropped (and logged) rather than held without bound.
const EVENT_QUEUE: usize = 10_000;

impl Context {
    /// A context for the given client and stores.
    pub fn new(
        client: Client,
        identity: &str,
        policy: Policy,
        metrics: Metrics,
        machines: Store<Machine>,
        deployments: Store<Deployment>,
    ) -> Context {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: Some(identity.into()),
        };
        let recorder = Recorder::new(client.clone(), reporter);
        let (events, queue) = tokio::sync::mpsc::channel(EVENT_QUEUE);
        tokio::spawn(send_events(recorder.clone(), queue));
        Context {
            recorder,
            events,
            client,
            policy,
            metrics,
            machines,
            deployments,
            failures: Mutex::new(HashMap::new()),
            claimed: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
            disk_verdicts: Default::default(),
        }
    }

    /// Records an Event on `obj` in the background: events never slow a reconcile down,
    /// and a failure to record one is logged, never fatal.
    pub fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) {
        self.send_event(obj.object_ref(&()), None, warning, reason, action, note);
    }

    /// Like [`Context::event`], naming `related` as the event's related object.
    pub fn event_related<K, R>(
        &self,
        obj: &K,
        related: &R,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) where
        K: Resource<DynamicType = ()>,
        R: Resource<DynamicType = ()>,
    {
        let related = Some(related.object_ref(&()));
        self.send_event(obj.object_ref(&()), related, warning, reason, action, note);
    }

    fn send_event(
        &self,
        regarding: ObjectReference,
        related: Option<ObjectReference>,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: related,
        };
        if let Err(e) = self.events.try_send((ev, regarding)) {
            tracing::warn!(error = %e, reason, "event queue full; event dropped");
        }
    }

    /// Whether both caches hold their full lists: decisions made on a half-filled cache are
    /// wrong ("no Machines exist") and nothing would correct them. Never waits: a reconcile
    /// that blocked here would hold a worker the cache itself needs to fill.
    pub fn synced(&self) -> bool {
        use futures::FutureExt;
        let ready = |w: Option<Result<(), _>>| matches!(w, Some(Ok(())));
        ready(self.machines.wait_until_ready().now_or_never())
            && ready(self.deployments.wait_until_ready().now_or_never())
    }

    /// Remembers that this process moved object `key` from resourceVersion `before` to
    /// `after`, so a reconcile that still sees `before` knows its store lags behind.
    pub fn wrote_over(&self, key: String, before: Option<String>, after: Option<String>) {
        let Some(before) = before else {
            return;
        };
        if after.as_deref() == Some(before.as_str()) {
            return;
        }
        if let Ok(mut w) = self.written.lock() {
            let now = Instant::now();
            w.retain(|_, (_, at)| now.duration_since(*at) < CLAIM_MEMORY);
            w.insert(key, (before, now));
        }
    }

    /// Records that the store's copy of `key` at `version` is known to be stale (a write
    /// preconditioned on it met a 409): [`Context::behind`] holds reconciles of that copy
    /// back until the newer one arrives.
    pub fn stale(&self, key: String, version: Option<String>) {
        self.wrote_over(key, version, None);
    }

    /// Whether the store's copy of `key` at `version` is older than our own last write to it:
    /// acting on it would repeat that write (or fail on its precondition). The watch event
    /// of our write brings the object back soon.
    pub fn behind(&self, key: &str, version: Option<&str>) -> bool {
        self.written.lock().is_ok_and(|w| {
            w.get(key).is_some_and(|(before, at)| {
                at.elapsed() < CLAIM_MEMORY && Some(before.as_str()) == version
            })
        })
    }

    /// Reserves `machine` for `deployment` before claiming it, so that two reconciles of
    /// this process never race for one machine. False if another Deployment holds a
    /// reservation younger than the store's catch-up time.
    pub fn reserve(&self, machine: &str, deployment: &str) -> bool {
        let Ok(mut c) = self.claimed.lock() else {
            return true;
        };
        let now = Instant::now();
        c.retain(|_, r| now.duration_since(r.at) < CLAIM_MEMORY);
        match c.get(machine) {
            Some(r) if r.deployment != deployment => false,
            _ => {
                c.insert(
                    machine.to_string(),
                    Claim {
                        at: now,
                        deployment: deployment.to_string(),
                        machine: None,
                    },
                );
                true
            }
        }
    }

    /// Drops a reservation whose claim failed for a reason other than losing the race.
    pub fn unreserve(&self, machine: &str) {
        if let Ok(mut c) = self.claimed.lock() {
            c.remove(machine);
        }
    }

    /// Keeps the object a successful claim returned, for reconciles that run before the
    /// store has seen the claim.
    pub fn claimed(&self, machine: &str, before: Option<String>, claimed: Machine) {
        if let Ok(mut c) = self.claimed.lock()
            && let Some(r) = c.get_mut(machine)
        {
            r.machine = Some((claimed, before));
        }
    }

    /// The machine this process claimed for `deployment` moments ago, while the store
    /// still holds that machine as it was before the claim (afterwards the store is right).
    pub fn claim_of(&self, deployment: &str) -> Option<Machine> {
        let (claimed, before) = {
            let c = self.claimed.lock().ok()?;
            c.values()
                .find(|r| r.deployment == deployment && r.at.elapsed() < CLAIM_MEMORY)
                .and_then(|r| r.machine.clone())?
        };
        let stored = self.machines.get(&ObjectRef::from_obj(&claimed))?;
        (stored.metadata.resource_version == before).then_some(claimed)
    }

    /// Counts a reconcile and its duration.
    pub fn observe(&self, controller: &'static str, took: Duration) {
        let l = ControllerLabel { controller };
        self.metrics.reconciles.get_or_create(&l).inc();
        self.metrics
            .reconcile_seconds
            .get_or_create(&l)
            .observe(took.as_secs_f64());
    }

    /// Counts a status write.
    pub fn wrote(&self, controller: &'static str) {
        self.metrics
            .writes
            .get_or_create(&ControllerLabel { controller })
            .inc();
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn succeeded(&self, key: &str) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(key);
        }
    }

    /// Records a failure of `key` and returns how long to back off.
    pub fn failed(&self, controller: &'static str, key: &str, error: &Error) -> Duration {
        self.metrics
            .reconcile_errors
            .get_or_create(&ErrorLabels {
                controller,
                error: error.metric_label(),
            })
            .inc();
        let n = match self.failures.lock() {
            Ok(mut f) => {
                let n = f.entry(key.to_string()).or_insert(0);
                *n += 1;
                *n - 1
            }
            Err(_) => 0,
        };
        error.backoff(n)
    }
}

async fn send_events(
    recorder: Recorder,
    queue: tokio::sync::mpsc::Receiver<(Event, ObjectReference)>,
) {
    use futures::StreamExt;
    tokio_stream_from(queue)
        .for_each_concurrent(EVENT_SENDERS, |(ev, reference)| {
            let recorder = recorder.clone();
            async move {
                if let Err(e) = recorder.publish(&ev, &reference).await {
                    tracing::warn!(error = %e, reason = ev.reason, "could not record event");
                }
            }
        })
        .await;
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// `namespace/name` of an object, for logs and backoff keys.
pub fn key<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or(""),
        obj.meta().name.as_deref().unwrap_or("")
    )
}
