//! What every reconcile shares: the client, stores, policy, metrics, events, backoff state.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a claim is remembered: longer than the store takes to catch up.
const CLAIM_MEMORY: Duration = Duration::from_secs(10);

use ironpool_crds::{Deployment, Machine};
use kube::Client;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;

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
    /// Machines claimed moments ago, by `namespace/name`.
    claimed: Mutex<HashMap<String, Instant>>,
}

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
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            policy,
            metrics,
            machines,
            deployments,
            failures: Mutex::new(HashMap::new()),
            claimed: Mutex::new(HashMap::new()),
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
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        let recorder = self.recorder.clone();
        let reference = obj.object_ref(&());
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&ev, &reference).await {
                tracing::warn!(error = %e, reason = ev.reason, "could not record event");
            }
        });
    }

    /// Remembers that this process claimed (or saw someone claim) `machine`, so that
    /// concurrent allocations skip it until the store catches up.
    pub fn mark_claimed(&self, machine: &str) {
        if let Ok(mut c) = self.claimed.lock() {
            let now = Instant::now();
            c.retain(|_, at| now.duration_since(*at) < CLAIM_MEMORY);
            c.insert(machine.to_string(), now);
        }
    }

    /// Whether `machine` was claimed moments ago (see [`Context::mark_claimed`]).
    pub fn recently_claimed(&self, machine: &str) -> bool {
        self.claimed
            .lock()
            .is_ok_and(|c| c.get(machine).is_some_and(|at| at.elapsed() < CLAIM_MEMORY))
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

/// `namespace/name` of an object, for logs and backoff keys.
pub fn key<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or(""),
        obj.meta().name.as_deref().unwrap_or("")
    )
}
