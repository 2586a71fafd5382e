//! The boot flight recorder: every step a known MAC takes (DHCP, TFTP, HTTP) is appended
//! to its Machine's `status.boot` (the last [`BOOT_RECORD_LIMIT`] steps) by server-side
//! apply as `ironpool-agent-boot`, so `kubectl describe bmm` shows where a boot stopped,
//! and the check-ins (RamdiskCheckIn, OSBooted) become rate-limited Events.
//!
//! Batching: a Machine's steps wait until the oldest of them is one window old and then go
//! in one write, so a whole boot (a dozen steps in a second or two) is one or two writes,
//! not one per step; an `OSBooted` step, which the operator reads to call a deployment
//! done, is written at once with whatever waits beside it. Up to [`IN_FLIGHT`] writes run
//! at once (one per Machine at a time, so each extends the list the last one wrote) while
//! steps keep being accepted: a slow apiserver makes batches bigger, it does not stop the
//! recorder reading its queue. A step is diagnostics, not
//! state: an agent killed (SIGKILL) loses the steps of the last window that were not yet
//! written (SIGTERM writes them first); nothing reads them to decide anything but
//! `OSBooted`, which the OS's check-in retries until it is acknowledged.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use ironpool_crds::Machine;
use ironpool_crds::machine::{BOOT_RECORD_LIMIT, BootRecord, BootStep};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::MANAGER_BOOT;
use super::stores::Stores;
use crate::dhcp::MacAddr;

/// At most one Event per Machine and step within this interval.
const EVENT_INTERVAL: Duration = Duration::from_secs(30);
/// How often due writes are checked.
const TICK: Duration = Duration::from_millis(100);
/// `status.boot` writes in flight at once.
const IN_FLIGHT: usize = 8;

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

/// Whether a step is a milestone worth an Event, and its reason: the two moments a
/// machine reaches Ironpool's own software (the ramdisk, the deployed OS). The network
/// steps before them (DHCPAck, ScriptFetched, ...) are in `status.boot` only: an Event
/// each repeated what the flight recorder already shows, at one write per boot step.
pub fn event_reason(step: BootStep) -> Option<&'static str> {
    match step {
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

/// Whether a step is written without waiting for its window: the operator reads
/// `OSBooted` to move a Machine to Deployed.
pub fn urgent(step: BootStep) -> bool {
    step == BootStep::OsBooted
}

/// Steps of one Machine waiting to be written.
#[derive(Default)]
struct Pending {
    /// When the oldest of them was recorded.
    since: Option<Instant>,
    /// Whether one of them is [`urgent`].
    urgent: bool,
    records: Vec<BootRecord>,
}

/// Whether steps waiting since `since` are due at `now`: the window is over, one of them
/// is urgent, or everything is being flushed.
pub fn due(since: Instant, urgent: bool, all: bool, now: Instant, window: Duration) -> bool {
    all || urgent || now.duration_since(since) >= window
}

struct Task {
    client: Client,
    stores: Stores,
    events: Recorder,
    window: Duration,
    pending: HashMap<Key, Pending>,
    history: HashMap<Key, Vec<BootRecord>>,
    last_event: HashMap<(Key, &'static str), Instant>,
    writing: HashSet<Key>,
}

/// A finished write: the Machine, the list written, the steps it carried, the result.
type Written = (Key, Vec<BootRecord>, Pending, Result<(), kube::Error>);

/// Starts the recorder; it flushes what is pending and stops when `cancel` fires.
/// `window` is how long a Machine's first unwritten step waits for the steps after it.
pub fn spawn(
    client: Client,
    stores: Stores,
    node: &str,
    window: Duration,
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
        window,
        pending: HashMap::new(),
        history: HashMap::new(),
        last_event: HashMap::new(),
        writing: HashSet::new(),
    };
    (FlightRecorder { tx }, tokio::spawn(task.run(rx, cancel)))
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Step>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        let mut writes: JoinSet<Written> = JoinSet::new();
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                step = rx.recv() => match step {
                    Some(s) => self.accept(s),
                    None => break,
                },
                Some(done) = writes.join_next() => {
                    if let Ok(w) = done {
                        self.finished(w);
                    }
                }
                _ = tick.tick() => self.start_due(&mut writes, false),
            }
        }
        while let Ok(s) = rx.try_recv() {
            self.accept(s);
        }
        // Shutdown: what is in flight, then everything left.
        while let Some(done) = writes.join_next().await {
            if let Ok(w) = done {
                self.finished(w);
            }
        }
        self.start_due(&mut writes, true);
        while let Some(done) = writes.join_next().await {
            if let Ok(w) = done {
                self.finished(w);
            }
        }
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
        let p = self.pending.entry(key.clone()).or_default();
        p.since.get_or_insert_with(Instant::now);
        p.urgent |= urgent(s.step);
        p.records.push(record);
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

    /// Starts the writes that are due, urgent ones first, up to [`IN_FLIGHT`] (all of
    /// them when `all`), never two at once for one Machine.
    fn start_due(&mut self, writes: &mut JoinSet<Written>, all: bool) {
        let now = Instant::now();
        let mut due: Vec<(bool, Instant, Key)> = self
            .pending
            .iter()
            .filter(|(k, _)| !self.writing.contains(*k))
            .filter_map(|(k, p)| {
                let since = p.since?;
                due(since, p.urgent, all, now, self.window).then(|| (!p.urgent, since, k.clone()))
            })
            .collect();
        due.sort();
        for (_, _, key) in due {
            if !all && writes.len() >= IN_FLIGHT {
                break;
            }
            let Some(p) = self.pending.remove(&key) else {
                continue;
            };
            let base = self.history.get(&key).cloned().unwrap_or_else(|| {
                self.stores
                    .machines
                    .get(&kube::runtime::reflector::ObjectRef::new(&key.1).within(&key.0))
                    .and_then(|m| m.status.as_ref().map(|s| s.boot.clone()))
                    .unwrap_or_default()
            });
            let list = merged(&base, &p.records);
            let client = self.client.clone();
            self.writing.insert(key.clone());
            writes.spawn(async move {
                let r = write(client, &key, &list).await;
                (key, list, p, r)
            });
        }
    }

    fn finished(&mut self, (key, list, p, result): Written) {
        self.writing.remove(&key);
        match result {
            Ok(()) => {
                self.history.insert(key, list);
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {
                self.history.remove(&key);
            }
            Err(e) => {
                tracing::warn!(machine = %key.1, error = %e, "writing status.boot; will retry");
                // Back in front of whatever arrived meanwhile, due again in a window.
                let mut back = Pending {
                    since: Some(Instant::now()),
                    urgent: p.urgent,
                    records: p.records,
                };
                if let Some(newer) = self.pending.remove(&key) {
                    back.urgent |= newer.urgent;
                    back.records.extend(newer.records);
                }
                self.pending.insert(key, back);
            }
        }
    }
}

async fn write(client: Client, key: &Key, list: &[BootRecord]) -> Result<(), kube::Error> {
    let api: Api<Machine> = Api::namespaced(client, &key.0);
    let patch = json!({
        "apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Machine",
        "status": {"boot": list},
    });
    let pp = PatchParams::apply(MANAGER_BOOT).force();
    api.patch_status(&key.1, &pp, &Patch::Apply(&patch))
        .await
        .map(|_| ())
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
    fn steps_wait_for_their_window_unless_urgent() {
        let t0 = Instant::now();
        let w = Duration::from_secs(2);
        assert!(!due(t0, false, false, t0 + Duration::from_millis(1999), w));
        assert!(due(t0, false, false, t0 + w, w));
        assert!(due(t0, true, false, t0, w), "OSBooted goes at once");
        assert!(due(t0, false, true, t0, w), "a flush at shutdown takes all");
        assert!(urgent(BootStep::OsBooted));
        assert!(!urgent(BootStep::RamdiskCheckIn));
    }

    #[test]
    fn milestones_have_event_reasons() {
        assert_eq!(
            event_reason(BootStep::RamdiskCheckIn),
            Some("RamdiskCheckIn")
        );
        assert_eq!(event_reason(BootStep::OsBooted), Some("OSBooted"));
        for step in [
            BootStep::DhcpDiscover,
            BootStep::DhcpAck,
            BootStep::TftpRead,
            BootStep::ScriptFetched,
            BootStep::AssetFetched,
        ] {
            assert_eq!(event_reason(step), None, "{step:?} is in status.boot only");
        }
    }
}
