//! The boot flight recorder: every step a known MAC takes (DHCP, TFTP, HTTP) is appended
//! to its Machine's `status.boot` (the last [`BOOT_RECORD_LIMIT`] steps) by server-side
//! apply as `ironpool-agent-boot`, batched to at most one write per Machine per debounce
//! interval, and the milestones (DHCPAck, ScriptFetched, RamdiskCheckIn, OSBooted) become
//! rate-limited Events, so `kubectl describe bmm` shows where a boot stopped.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ironpool_crds::Machine;
use ironpool_crds::machine::{BOOT_RECORD_LIMIT, BootRecord, BootStep};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::MANAGER_BOOT;
use super::stores::Stores;
use crate::dhcp::MacAddr;

/// At most one Event per Machine and step within this interval.
const EVENT_INTERVAL: Duration = Duration::from_secs(30);
/// How often due writes are checked.
const TICK: Duration = Duration::from_millis(100);

/// One step a MAC took.
#[derive(Clone, Debug)]
pub struct Step {
    /// The boot MAC.
    pub mac: MacAddr,
    /// What happened.
    pub step: BootStep,
    /// Details.
    pub detail: String,
}

/// Handle to the recorder task; cheap to clone.
#[derive(Clone, Debug)]
pub struct FlightRecorder {
    tx: mpsc::Sender<Step>,
}

impl FlightRecorder {
    /// Records a step without waiting (a full queue drops it).
    pub fn record(&self, mac: MacAddr, step: BootStep, detail: impl Into<String>) {
        let detail = detail.into();
        if self.tx.try_send(Step { mac, step, detail }).is_err() {
            tracing::debug!(%mac, ?step, "flight recorder queue full; step dropped");
        }
    }
}

/// Whether a step is a milestone worth an Event, and its reason.
pub fn event_reason(step: BootStep) -> Option<&'static str> {
    match step {
        BootStep::DhcpAck => Some("DHCPAck"),
        BootStep::ScriptFetched => Some("ScriptFetched"),
        BootStep::RamdiskCheckIn => Some("RamdiskCheckIn"),
        BootStep::OsBooted => Some("OSBooted"),
        _ => None,
    }
}

/// `base` plus `new`, keeping the newest [`BOOT_RECORD_LIMIT`].
pub fn merged(base: &[BootRecord], new: &[BootRecord]) -> Vec<BootRecord> {
    let mut all: Vec<BootRecord> = base.iter().chain(new).cloned().collect();
    let excess = all.len().saturating_sub(BOOT_RECORD_LIMIT);
    all.drain(..excess);
    all
}

type Key = (String, String);

struct Task {
    client: Client,
    stores: Stores,
    events: Recorder,
    debounce: Duration,
    pending: HashMap<Key, Vec<BootRecord>>,
    history: HashMap<Key, Vec<BootRecord>>,
    last_write: HashMap<Key, Instant>,
    last_event: HashMap<(Key, &'static str), Instant>,
}

/// Starts the recorder; it flushes what is pending and stops when `cancel` fires.
pub fn spawn(
    client: Client,
    stores: Stores,
    node: &str,
    debounce: Duration,
    cancel: CancellationToken,
) -> (FlightRecorder, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(4096);
    let reporter = Reporter {
        controller: "ironpool-agent".into(),
        instance: Some(node.to_string()),
    };
    let task = Task {
        events: Recorder::new(client.clone(), reporter),
        client,
        stores,
        debounce,
        pending: HashMap::new(),
        history: HashMap::new(),
        last_write: HashMap::new(),
        last_event: HashMap::new(),
    };
    (FlightRecorder { tx }, tokio::spawn(task.run(rx, cancel)))
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Step>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                step = rx.recv() => match step {
                    Some(s) => self.accept(s),
                    None => break,
                },
                _ = tick.tick() => self.flush(false).await,
            }
        }
        while let Ok(s) = rx.try_recv() {
            self.accept(s);
        }
        self.flush(true).await;
    }

    fn accept(&mut self, s: Step) {
        let Some(machine) = self.stores.machine_by_mac(&s.mac) else {
            return;
        };
        let key = (machine.namespace().unwrap_or_default(), machine.name_any());
        let detail = (!s.detail.is_empty()).then(|| s.detail.chars().take(512).collect::<String>());
        let record = BootRecord {
            step: s.step,
            detail: detail.clone(),
            at: MicroTime(k8s_openapi::jiff::Timestamp::now()),
        };
        self.pending.entry(key.clone()).or_default().push(record);
        if let Some(reason) = event_reason(s.step) {
            let now = Instant::now();
            let due = self
                .last_event
                .get(&(key.clone(), reason))
                .is_none_or(|at| now.duration_since(*at) >= EVENT_INTERVAL);
            if due {
                self.last_event.insert((key, reason), now);
                self.publish(
                    &machine,
                    reason,
                    detail.unwrap_or_else(|| reason.to_string()),
                );
            }
        }
    }

    fn publish(&self, machine: &Machine, reason: &'static str, note: String) {
        let ev = Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note),
            action: "Boot".into(),
            secondary: None,
        };
        let recorder = self.events.clone();
        let reference = machine.object_ref(&());
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&ev, &reference).await {
                tracing::warn!(error = %e, reason, "could not record boot event");
            }
        });
    }

    async fn flush(&mut self, all: bool) {
        let now = Instant::now();
        let due: Vec<Key> = self
            .pending
            .keys()
            .filter(|k| {
                all || self
                    .last_write
                    .get(*k)
                    .is_none_or(|at| now.duration_since(*at) >= self.debounce)
            })
            .cloned()
            .collect();
        for key in due {
            let Some(new) = self.pending.remove(&key) else {
                continue;
            };
            let base = self.history.get(&key).cloned().unwrap_or_else(|| {
                self.stores
                    .machines
                    .get(&kube::runtime::reflector::ObjectRef::new(&key.1).within(&key.0))
                    .and_then(|m| m.status.as_ref().map(|s| s.boot.clone()))
                    .unwrap_or_default()
            });
            let list = merged(&base, &new);
            self.last_write.insert(key.clone(), now);
            match self.write(&key, &list).await {
                Ok(()) => {
                    self.history.insert(key, list);
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    self.history.remove(&key);
                }
                Err(e) => {
                    tracing::warn!(machine = %key.1, error = %e, "writing status.boot; will retry");
                    self.pending.insert(key, new);
                }
            }
        }
    }

    async fn write(&self, key: &Key, list: &[BootRecord]) -> Result<(), kube::Error> {
        let api: Api<Machine> = Api::namespaced(self.client.clone(), &key.0);
        let patch = json!({
            "apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Machine",
            "status": {"boot": list},
        });
        let pp = PatchParams::apply(MANAGER_BOOT).force();
        api.patch_status(&key.1, &pp, &Patch::Apply(&patch))
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rec(n: i64) -> BootRecord {
        BootRecord {
            step: BootStep::DhcpOffer,
            detail: Some(n.to_string()),
            at: MicroTime(k8s_openapi::jiff::Timestamp::from_second(n).unwrap()),
        }
    }

    #[test]
    fn keeps_the_newest_steps() {
        let base: Vec<_> = (0..18).map(rec).collect();
        let new: Vec<_> = (18..25).map(rec).collect();
        let out = merged(&base, &new);
        assert_eq!(out.len(), BOOT_RECORD_LIMIT);
        assert_eq!(out[0].detail.as_deref(), Some("5"));
        assert_eq!(out.last().unwrap().detail.as_deref(), Some("24"));
    }

    #[test]
    fn milestones_have_event_reasons() {
        assert_eq!(event_reason(BootStep::DhcpAck), Some("DHCPAck"));
        assert_eq!(event_reason(BootStep::DhcpDiscover), None);
    }
}
