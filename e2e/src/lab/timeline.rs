//! What the lab saw happen to each Machine, and when: a sampler reads every Machine's
//! status every 250 ms and keeps the first sighting of each boot intent, applied intent,
//! ramdisk report step, flight-recorder step and phase. From that, [`Timeline::report`]
//! splits a deployment into phases and tells how much of it was our own software
//! (operator and agent reaction times) rather than firmware, kernels and disks.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;

/// One sighting.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    /// Seconds since the sampler started.
    pub at: f64,
    /// What: `intent <attempt> <target>/<purpose>`, `applied <attempt>`,
    /// `report <attempt> <step>`, `boot <step>`, `phase <phase>`.
    pub what: String,
}

/// Sightings per Machine name.
#[derive(Debug, Default)]
pub struct Timeline {
    /// Per Machine, in order of sighting.
    pub machines: BTreeMap<String, Vec<Seen>>,
    keys: HashSet<(String, String)>,
}

impl Timeline {
    fn see(&mut self, machine: &str, key: String, what: String, at: f64) {
        if self.keys.insert((machine.to_string(), key)) {
            self.machines
                .entry(machine.to_string())
                .or_default()
                .push(Seen { at, what });
        }
    }

    /// Records what `list` (a MachineList as JSON) shows at time `at`.
    pub fn observe(&mut self, list: &Value, at: f64) {
        for m in list["items"].as_array().into_iter().flatten() {
            let Some(name) = m.pointer("/metadata/name").and_then(Value::as_str) else {
                continue;
            };
            let st = &m["status"];
            if let Some(i) = st.get("bootIntent") {
                let what = format!(
                    "intent {} {}/{}",
                    i["attempt"],
                    i["target"].as_str().unwrap_or("?"),
                    i["purpose"].as_str().unwrap_or("?")
                );
                self.see(name, what.clone(), what, at);
            }
            if let Some(a) = st.pointer("/bootApplied/attempt") {
                let what = format!("applied {a}");
                self.see(name, what.clone(), what, at);
            }
            if let Some(r) = st.get("provisioning") {
                let what = format!(
                    "report {} {}",
                    r["attempt"],
                    r["step"].as_str().unwrap_or("?")
                );
                self.see(name, what.clone(), what, at);
            }
            for b in st["boot"].as_array().into_iter().flatten() {
                let step = b["step"].as_str().unwrap_or("?");
                let key = format!("boot {step} {} {}", b["at"], b["detail"]);
                self.see(name, key, format!("boot {step}"), at);
            }
            if let Some(p) = st.get("phase").and_then(Value::as_str) {
                let what = format!("phase {p}");
                // A phase can come back (Ready after release): key it by its predecessor.
                let n = self.machines.get(name).map_or(0, Vec::len);
                let last_phase = self
                    .machines
                    .get(name)
                    .and_then(|v| v.iter().rev().find(|s| s.what.starts_with("phase ")))
                    .map(|s| s.what.clone());
                if last_phase.as_deref() != Some(what.as_str()) {
                    self.see(name, format!("{what} #{n}"), what, at);
                }
            }
        }
    }

    fn first(&self, machine: &str, what: &str, after: f64) -> Option<f64> {
        self.machines
            .get(machine)?
            .iter()
            .find(|s| s.at >= after && s.what == what)
            .map(|s| s.at)
    }

    /// The phases of `machine`'s last deployment (Deploy intent to Deployed), or why they
    /// cannot be told.
    pub fn deploy_phases(&self, machine: &str) -> Result<Phases, String> {
        let seen = self
            .machines
            .get(machine)
            .ok_or_else(|| format!("nothing seen of {machine}"))?;
        let (issue, attempt) = seen
            .iter()
            .rev()
            .find_map(|s| {
                let rest = s.what.strip_prefix("intent ")?;
                let (attempt, kind) = rest.split_once(' ')?;
                (kind == "Ramdisk/Deploy").then(|| (s.at, attempt.parse::<i64>().ok()))
            })
            .ok_or("no Deploy intent seen")?;
        let attempt = attempt.ok_or("unreadable attempt")?;
        let need = |what: &str, after: f64| {
            self.first(machine, what, after)
                .ok_or_else(|| format!("{machine}: '{what}' not seen after {after:.1}s"))
        };
        let applied = need(&format!("applied {attempt}"), issue)?;
        let script = need("boot ScriptFetched", applied)?;
        let write_start = need(&format!("report {attempt} WritingImage"), issue)?;
        // Flight-recorder steps reach the status in rate-limited batches, ramdisk reports
        // at once: the write start can be sighted before the check-in that preceded it.
        // Its sighting bounds the check-in (else "plan" read -0.3 s).
        let checkin = need("boot RamdiskCheckIn", script)?.min(write_start);
        let written = need(&format!("report {attempt} Succeeded"), write_start)?;
        let disk = need(&format!("intent {} Disk/Run", attempt + 1), issue)?;
        let disk_applied = need(&format!("applied {}", attempt + 1), disk)?;
        let os = need("boot OSBooted", disk_applied)?;
        let deployed = need("phase Deployed", os)?;
        Ok(Phases {
            rows: vec![
                (
                    "agent: Deploy intent -> BMC power on",
                    applied - issue,
                    true,
                ),
                (
                    "firmware, DHCP, iPXE to the boot script",
                    script - applied,
                    false,
                ),
                (
                    "ramdisk download and boot to first call",
                    checkin - script,
                    false,
                ),
                ("plan, image fetch start", write_start - checkin, false),
                (
                    "image write (stream, verify, seed, sync)",
                    written - write_start,
                    false,
                ),
                (
                    "operator: written -> boot-from-disk intent",
                    disk - written,
                    true,
                ),
                (
                    "agent: disk intent -> BMC power cycle",
                    disk_applied - disk,
                    true,
                ),
                (
                    "firmware, iPXE exit, OS boot to check-in",
                    os - disk_applied,
                    false,
                ),
                ("operator: check-in -> Deployed", deployed - os, true),
            ],
        })
    }
}

/// A deployment split into phases: (what, seconds, ours).
#[derive(Debug)]
pub struct Phases {
    /// Rows in order.
    pub rows: Vec<(&'static str, f64, bool)>,
}

impl Phases {
    /// Total seconds.
    pub fn total(&self) -> f64 {
        self.rows.iter().map(|r| r.1).sum()
    }

    /// Seconds spent in our own software.
    pub fn ours(&self) -> f64 {
        self.rows.iter().filter(|r| r.2).map(|r| r.1).sum()
    }
}

/// Formats the phases of several machines side by side.
pub fn table(columns: &[(String, Phases)]) -> String {
    let mut s = String::new();
    let _ = write!(s, "{:<46}", "phase (s)");
    for (name, _) in columns {
        let _ = write!(s, " {name:>10}");
    }
    s.push('\n');
    let Some((_, first)) = columns.first() else {
        return s;
    };
    for (i, (what, _, ours)) in first.rows.iter().enumerate() {
        let label = if *ours {
            format!("* {what}")
        } else {
            format!("  {what}")
        };
        let _ = write!(s, "{label:<46}");
        for (_, p) in columns {
            let _ = write!(s, " {:>10.1}", p.rows[i].1);
        }
        s.push('\n');
    }
    let _ = write!(s, "{:<46}", "  total, Deploy intent to Deployed");
    for (_, p) in columns {
        let _ = write!(s, " {:>10.1}", p.total());
    }
    s.push('\n');
    let _ = write!(s, "{:<46}", "* our share (operator + agent reaction)");
    for (_, p) in columns {
        let _ = write!(s, " {:>9.1}%", 100.0 * p.ours() / p.total().max(0.001));
    }
    s.push('\n');
    s
}

/// A background sampler feeding a [`Timeline`]; stops on drop.
pub struct Sampler {
    /// The timeline it feeds.
    pub timeline: Arc<Mutex<Timeline>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    /// Samples `kubectl get machines -n <namespace> -o json` every 250 ms.
    pub fn start(kubectl: PathBuf, kubeconfig: PathBuf, namespace: &str) -> Sampler {
        let timeline = Arc::new(Mutex::new(Timeline::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, st, ns) = (timeline.clone(), stop.clone(), namespace.to_string());
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            while !st.load(Ordering::Relaxed) {
                let out = Command::new(&kubectl)
                    .arg(format!("--kubeconfig={}", kubeconfig.display()))
                    .args([
                        "get",
                        "machines.metal.ironpool.dev",
                        "-n",
                        &ns,
                        "-o",
                        "json",
                    ])
                    .output();
                let at = start.elapsed().as_secs_f64();
                if let Ok(o) = out
                    && o.status.success()
                    && let Ok(list) = serde_json::from_slice::<Value>(&o.stdout)
                {
                    t.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .observe(&list, at);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        Sampler {
            timeline,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn list(status: Value) -> Value {
        json!({"items": [{"metadata": {"name": "m"}, "status": status}]})
    }

    #[test]
    fn a_deployment_splits_into_phases_with_our_share() {
        let mut t = Timeline::default();
        let steps: Vec<(f64, Value)> = vec![
            (
                0.0,
                json!({"phase": "Deploying", "bootIntent": {"attempt": 3, "target": "Ramdisk", "purpose": "Deploy"}}),
            ),
            (0.5, json!({"bootApplied": {"attempt": 3}})),
            (
                10.0,
                json!({"boot": [{"step": "ScriptFetched", "at": "t1"}]}),
            ),
            (
                20.0,
                json!({"boot": [{"step": "RamdiskCheckIn", "at": "t2"}]}),
            ),
            (
                21.0,
                json!({"provisioning": {"attempt": 3, "step": "WritingImage"}}),
            ),
            (
                31.0,
                json!({"provisioning": {"attempt": 3, "step": "Succeeded"}}),
            ),
            (
                31.5,
                json!({"bootIntent": {"attempt": 4, "target": "Disk", "purpose": "Run"}}),
            ),
            (32.0, json!({"bootApplied": {"attempt": 4}})),
            (50.0, json!({"boot": [{"step": "OSBooted", "at": "t3"}]})),
            (50.5, json!({"phase": "Deployed"})),
        ];
        for (at, s) in steps {
            t.observe(&list(s), at);
        }
        let p = t.deploy_phases("m").unwrap();
        assert_eq!(p.total(), 50.5);
        assert_eq!(p.ours(), 0.5 + 0.5 + 0.5 + 0.5);
        let text = table(&[("m".into(), p)]);
        assert!(text.contains("our share"), "{text}");
        assert!(text.contains("4.0%"), "{text}");
        assert!(t.deploy_phases("other").is_err());
    }

    /// The check-in sighted after the write start (its batch came later): the check-in
    /// is bounded by the write start and no phase is negative.
    #[test]
    fn a_late_sighted_check_in_makes_no_negative_phase() {
        let mut t = Timeline::default();
        let steps: Vec<(f64, Value)> = vec![
            (
                0.0,
                json!({"bootIntent": {"attempt": 1, "target": "Ramdisk", "purpose": "Deploy"}}),
            ),
            (0.5, json!({"bootApplied": {"attempt": 1}})),
            (
                10.0,
                json!({"boot": [{"step": "ScriptFetched", "at": "t1"}]}),
            ),
            (
                20.0,
                json!({"provisioning": {"attempt": 1, "step": "WritingImage"}}),
            ),
            (
                20.25,
                json!({"boot": [{"step": "RamdiskCheckIn", "at": "t2"}]}),
            ),
            (
                30.0,
                json!({"provisioning": {"attempt": 1, "step": "Succeeded"}}),
            ),
            (
                30.5,
                json!({"bootIntent": {"attempt": 2, "target": "Disk", "purpose": "Run"}}),
            ),
            (31.0, json!({"bootApplied": {"attempt": 2}})),
            (50.0, json!({"boot": [{"step": "OSBooted", "at": "t3"}]})),
            (50.5, json!({"phase": "Deployed"})),
        ];
        for (at, s) in steps {
            t.observe(&list(s), at);
        }
        let p = t.deploy_phases("m").unwrap();
        assert!(p.rows.iter().all(|r| r.1 >= 0.0), "{:?}", p.rows);
        let row = |what: &str| p.rows.iter().find(|r| r.0.starts_with(what)).unwrap().1;
        assert_eq!(row("ramdisk download"), 10.0);
        assert_eq!(row("plan, image fetch start"), 0.0);
        assert_eq!(p.total(), 50.5);
    }

    #[test]
    fn a_missing_step_is_named() {
        let mut t = Timeline::default();
        t.observe(
            &list(json!({"bootIntent": {"attempt": 1, "target": "Ramdisk", "purpose": "Deploy"}})),
            0.0,
        );
        let err = t.deploy_phases("m").unwrap_err();
        assert!(err.contains("'applied 1' not seen"), "{err}");
    }
}
