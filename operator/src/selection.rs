//! Which machines fit a Deployment, and, when none does, a sentence saying why.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ironpool_crds::capi::REMEDIATED_ANNOTATION;
use ironpool_crds::deployment::{HardwareConstraints, MachineSelector};
use ironpool_crds::machine::{Disk, MachinePhase};
use ironpool_crds::{Machine, RootDeviceHints};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

/// Parses a Kubernetes quantity (`64Gi`, `500G`, `1.5Ti`, `1024`) into bytes.
pub fn parse_quantity(q: &str) -> Option<i64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let value: f64 = number.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    let bytes = value * factor;
    (bytes.is_finite() && bytes >= 0.0 && bytes < i64::MAX as f64).then_some(bytes as i64)
}

/// Whether a machine is free to allocate: Ready, unallocated, not held by a person.
pub fn is_free(m: &Machine) -> bool {
    let st = m.status.as_ref();
    st.and_then(|s| s.phase) == Some(MachinePhase::Ready)
        && st.and_then(|s| s.deployment_ref.as_ref()).is_none()
        && m.spec.maintenance != Some(true)
        && m.spec.broken != Some(true)
}

fn matches_expression(labels: &BTreeMap<String, String>, e: &LabelSelectorRequirement) -> bool {
    let value = labels.get(&e.key);
    let values = e.values.as_deref().unwrap_or_default();
    match e.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

/// One filter of the selection, with the words used when it leaves nothing.
struct Filter<'a> {
    words: String,
    keep: Box<dyn Fn(&Machine) -> bool + 'a>,
}

fn filters(sel: &MachineSelector) -> Vec<Filter<'_>> {
    let mut out: Vec<Filter<'_>> = Vec::new();
    if !sel.match_labels.is_empty() {
        let wanted: Vec<String> = sel
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        out.push(Filter {
            words: format!("have labels {}", wanted.join(",")),
            keep: Box::new(move |m| {
                let labels = m.metadata.labels.as_ref();
                sel.match_labels
                    .iter()
                    .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            }),
        });
    }
    for e in &sel.match_expressions {
        out.push(Filter {
            words: format!(
                "match {} {} {:?}",
                e.key,
                e.operator,
                e.values.as_deref().unwrap_or_default()
            ),
            keep: Box::new(move |m| match &m.metadata.labels {
                Some(labels) => matches_expression(labels, e),
                None => matches_expression(&BTreeMap::new(), e),
            }),
        });
    }
    if let Some(hw) = &sel.hardware {
        out.extend(hardware_filters(hw));
    }
    out
}

fn hardware_filters(hw: &HardwareConstraints) -> Vec<Filter<'_>> {
    let mut out: Vec<Filter<'_>> = Vec::new();
    if let Some(arch) = hw.architecture {
        out.push(Filter {
            words: format!("are {}", arch.as_str()),
            keep: Box::new(move |m| m.spec.architecture == arch),
        });
    }
    if let Some(min) = hw.min_cores {
        out.push(Filter {
            words: format!("have >= {min} cores"),
            keep: Box::new(move |m| cpu_cores(m).is_some_and(|c| c >= min)),
        });
    }
    if let Some(q) = &hw.min_memory {
        let min = parse_quantity(q).unwrap_or(i64::MAX);
        out.push(Filter {
            words: format!("have >= {q} memory"),
            keep: Box::new(move |m| memory(m).is_some_and(|b| b >= min)),
        });
    }
    if let Some(q) = &hw.min_disk {
        let min = parse_quantity(q).unwrap_or(i64::MAX);
        out.push(Filter {
            words: format!("have a disk of >= {q}"),
            keep: Box::new(move |m| largest_disk(m).is_some_and(|b| b >= min)),
        });
    }
    out
}

fn cpu_cores(m: &Machine) -> Option<i32> {
    m.status.as_ref()?.inventory.as_ref()?.cores
}

fn memory(m: &Machine) -> Option<i64> {
    m.status.as_ref()?.inventory.as_ref()?.memory_bytes
}

fn largest_disk(m: &Machine) -> Option<i64> {
    m.status.as_ref()?.inventory.as_ref()?.largest_disk_bytes
}

/// The root-device hints a Deployment with `hints` applies on `m`: its own, else the
/// Machine's.
pub fn hints_for<'a>(
    m: &'a Machine,
    hints: Option<&'a RootDeviceHints>,
) -> Option<&'a RootDeviceHints> {
    hints.or(m.spec.root_device_hints.as_ref())
}

/// Why `m` cannot take the image under `hints` from its status summary alone (no disks, or
/// none large enough), without reading its MachineInventory; `None` when the summary does
/// not rule it out (or does not say: the ramdisk checks again when it writes).
pub fn summary_disk_mismatch(m: &Machine, hints: &RootDeviceHints) -> Option<String> {
    let inv = m.status.as_ref()?.inventory.as_ref()?;
    if inv.disk_count == 0 {
        return Some("commissioning found no disks".into());
    }
    let (min, largest) = (hints.min_size_gigabytes?, inv.largest_disk_bytes?);
    (largest < min.saturating_mul(1_000_000_000)).then(|| {
        format!(
            "the largest of its {} disks has {largest} bytes, below {min} GB",
            inv.disk_count
        )
    })
}

/// Why none of `disks` (a Machine's commissioned disks, from its MachineInventory) can take
/// the image under `hints`, or `None` when one can.
pub fn root_disk_mismatch(disks: &[Disk], hints: &RootDeviceHints) -> Option<String> {
    if disks.is_empty() {
        return Some("commissioning found no disks".into());
    }
    let why: Vec<String> = disks
        .iter()
        .map(|d| d.mismatch(hints).map(|r| format!("{}: {r}", d.name)))
        .collect::<Option<_>>()?;
    Some(why.join(", "))
}

/// How long a verdict of the root-device-hint check that read a MachineInventory is
/// remembered (see [`DiskVerdicts`]).
pub const VERDICT_TTL: Duration = Duration::from_secs(300);
/// Verdicts remembered at most; beyond it the expired go, then all.
const VERDICTS_MAX: usize = 100_000;

/// Verdicts of the root-device-hint check that needed a MachineInventory read, by machine
/// (UID), its inventory summary and the hints, for [`VERDICT_TTL`]: a Deployment no server
/// fits is retried whenever a machine becomes free, and would otherwise read every
/// candidate's inventory again each time. A new commissioning that changes the disks changes
/// the summary, hence the key; one that keeps counts and sizes but swaps a model is caught
/// by the ramdisk, which checks the hints again before it writes.
#[derive(Default)]
pub struct DiskVerdicts(Mutex<HashMap<String, (Instant, Option<String>)>>);

impl DiskVerdicts {
    /// The key of `m` under `hints`; None when `m` has no UID or summary.
    pub fn key(m: &Machine, hints: &RootDeviceHints) -> Option<String> {
        let uid = m.uid()?;
        let summary = serde_json::to_string(m.status.as_ref()?.inventory.as_ref()?).ok()?;
        let hints = serde_json::to_string(hints).ok()?;
        Some(format!("{uid}\n{summary}\n{hints}"))
    }

    /// The verdict remembered for `key` at `now`, if still fresh.
    pub fn get(&self, key: &str, now: Instant) -> Option<Option<String>> {
        let map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(key)
            .filter(|(at, _)| now.saturating_duration_since(*at) < VERDICT_TTL)
            .map(|(_, verdict)| verdict.clone())
    }

    /// Remembers `verdict` for `key` at `now`.
    pub fn put(&self, key: String, verdict: Option<String>, now: Instant) {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= VERDICTS_MAX {
            map.retain(|_, (at, _)| now.saturating_duration_since(*at) < VERDICT_TTL);
            if map.len() >= VERDICTS_MAX {
                map.clear();
            }
        }
        map.insert(key, (now, verdict));
    }
}

/// The sentence when every one of the `n` fitting machines was rejected for its disks;
/// `rejected` holds "machine: why" for each.
pub fn no_matching_disk(n: usize, rejected: &[String]) -> String {
    let shown: Vec<&str> = rejected.iter().take(3).map(String::as_str).collect();
    let more = rejected.len().saturating_sub(shown.len());
    let more = if more > 0 {
        format!("; {more} more")
    } else {
        String::new()
    };
    format!(
        "0 of {n} Ready {} have a disk matching the root-device hints ({}{more}); \
         {} rejected for their disks: correct spec.storage.rootDeviceHints, or commission \
         servers with such a disk",
        if n == 1 { "machine" } else { "machines" },
        shown.join("; "),
        rejected.len(),
    )
}

/// The free machines that fit `sel`, or why there are none. Root-device hints are checked
/// by the caller, against each candidate's MachineInventory, as it tries them.
pub fn candidates<'a>(
    sel: &MachineSelector,
    machines: &[&'a Machine],
) -> Result<Vec<&'a Machine>, String> {
    let mut left: Vec<&Machine> = machines.iter().copied().filter(|m| is_free(m)).collect();
    if left.is_empty() {
        return Err(no_free_machine(machines));
    }
    let noun = |n: usize| if n == 1 { "machine" } else { "machines" };
    for f in filters(sel) {
        let before = left.len();
        left.retain(|m| (f.keep)(m));
        if left.is_empty() {
            return Err(format!("0 of {before} Ready {} {}", noun(before), f.words));
        }
    }
    Ok(left)
}

fn no_free_machine(machines: &[&Machine]) -> String {
    if machines.is_empty() {
        return "no Machines exist in this namespace; create some (see examples/)".into();
    }
    let mut by_phase: BTreeMap<&str, usize> = BTreeMap::new();
    for m in machines {
        let phase = m
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .map_or("New", |p| p.as_str());
        *by_phase.entry(phase).or_default() += 1;
    }
    let parts: Vec<String> = by_phase.iter().map(|(p, n)| format!("{n} {p}")).collect();
    format!(
        "no Ready machine is free ({} machines: {})",
        machines.len(),
        parts.join(", ")
    )
}

/// `candidates` rotated by a stable hash of `key`, so that many Deployments allocating at
/// once start from different machines instead of all racing for the first.
pub fn spread<'a>(mut list: Vec<&'a Machine>, key: &str) -> Vec<&'a Machine> {
    list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    if !list.is_empty() {
        let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let n = (h % list.len() as u64) as usize;
        list.rotate_left(n);
    }
    list
}

/// How long a server whose Cluster API Machine was remediated stays the last choice.
pub const REMEDIATION_COOLDOWN_SECS: i64 = 3600;

/// `list` with the servers remediated less than [`REMEDIATION_COOLDOWN_SECS`] ago (see
/// `REMEDIATED_ANNOTATION`) moved to the end, in their order: a replacement goes to other
/// hardware when any fits, and to the failed server only when nothing else does.
pub fn recently_remediated_last(list: Vec<&Machine>, now: Timestamp) -> Vec<&Machine> {
    let recent = |m: &Machine| {
        m.annotations()
            .get(REMEDIATED_ANNOTATION)
            .and_then(|v| v.split_whitespace().next()?.parse::<Timestamp>().ok())
            .is_some_and(|at| now.as_second() - at.as_second() < REMEDIATION_COOLDOWN_SECS)
    };
    let (last, first): (Vec<&Machine>, Vec<&Machine>) = list.into_iter().partition(|m| recent(m));
    first.into_iter().chain(last).collect()
}

#[cfg(test)]
mod tests;
