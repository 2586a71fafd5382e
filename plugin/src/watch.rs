//! `kubectl ironpool watch`: the machines in long steps (commissioning, deploying, releasing
//! and erasing), one line each with a progress bar, bytes/s and ETA for an image write or an
//! erase, redrawn as their status changes (one watch on Machines). A step whose ramdisk has
//! reported nothing for two minutes says so instead of showing a rate: progress never reads
//! as moving when it has stopped.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use futures::StreamExt;
use ironpool_crds::Machine;
use ironpool_crds::machine::MachinePhase;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, ResourceExt};

use crate::output::{bytes, duration, table};

/// `watch` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print the current view once and exit.
    #[arg(long)]
    pub once: bool,
    /// Stop after this many seconds (default: until interrupted).
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Also list machines that are not in a long step (Ready, Deployed...).
    #[arg(long)]
    pub all: bool,
}

/// A reported amount of work at a time, to derive the rate from two of them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Bytes written (or erased) so far.
    pub done: i64,
    /// When the ramdisk reported it.
    pub at: Timestamp,
}

/// After this long without a report, a step reads as stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(120);

fn long_step(p: MachinePhase) -> bool {
    matches!(
        p,
        MachinePhase::Commissioning
            | MachinePhase::Allocated
            | MachinePhase::Deploying
            | MachinePhase::Releasing
    )
}

/// A bar of `width` cells for `pct` percent.
pub fn bar(pct: i64, width: usize) -> String {
    let filled = (pct.clamp(0, 100) as usize * width) / 100;
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

/// One machine's line: name, phase, step, progress, rate and ETA. `prev` is the sample seen
/// before this one (for the rate); the new sample is returned for next time.
pub fn line(
    m: &Machine,
    prev: Option<Sample>,
    now: Timestamp,
    all: bool,
) -> Option<(Vec<String>, Option<Sample>)> {
    let st = m.status.as_ref();
    let phase = st.and_then(|s| s.phase).unwrap_or(MachinePhase::New);
    if !all && !long_step(phase) {
        return None;
    }
    let p = st.and_then(|s| s.provisioning.as_ref());
    let current = st.and_then(|s| s.boot_intent.as_ref()).map(|i| i.attempt);
    // A report of an earlier attempt is not this step's progress.
    let p = p.filter(|p| Some(p.attempt) == current || current.is_none());
    let step = p.map_or_else(
        || {
            st.and_then(|s| s.boot.last())
                .map_or("waiting for the machine to boot".into(), |b| {
                    format!("booting: {:?}", b.step)
                })
        },
        |p| format!("{:?}", p.step),
    );
    let (progress, rate, eta, sample) =
        match p.and_then(|p| Some((p.bytes_written?, p.bytes_total?, p.updated_at.as_ref()?.0))) {
            Some((done, total, at)) => {
                let pct = if total > 0 { 100 * done / total } else { 0 };
                let sample = Sample { done, at };
                let quiet = now.duration_since(at).as_secs() as u64;
                let (rate, eta) = if quiet >= STALL_AFTER.as_secs() {
                    (
                        format!("stalled: no report for {}", duration(quiet as i64)),
                        "-".to_string(),
                    )
                } else {
                    match prev.filter(|s| s.at < at && s.done <= done) {
                        Some(s) => {
                            let secs = at.duration_since(s.at).as_secs_f64().max(0.001);
                            let per_s = (done - s.done) as f64 / secs;
                            let eta = if per_s > 0.0 {
                                duration(((total - done) as f64 / per_s) as i64)
                            } else {
                                "-".into()
                            };
                            (format!("{}/s", bytes(per_s as i64)), eta)
                        }
                        None => ("-".into(), "-".into()),
                    }
                };
                (
                    format!(
                        "{} {pct:>3}% {} of {}",
                        bar(pct, 20),
                        bytes(done),
                        bytes(total)
                    ),
                    rate,
                    eta,
                    Some(sample),
                )
            }
            None => ("-".into(), "-".into(), "-".into(), prev),
        };
    let name = match m.namespace() {
        Some(ns) => format!("{ns}/{}", m.name_any()),
        None => m.name_any(),
    };
    Some((
        vec![name, phase.as_str().into(), step, progress, rate, eta],
        sample,
    ))
}

/// The whole view.
pub fn frame(
    machines: &[std::sync::Arc<Machine>],
    samples: &mut BTreeMap<String, Sample>,
    now: Timestamp,
    all: bool,
) -> String {
    let mut sorted: Vec<&Machine> = machines.iter().map(|m| &**m).collect();
    sorted.sort_by_key(|m| (m.namespace(), m.name_any()));
    let mut rows = Vec::new();
    for m in sorted {
        let key = format!("{}/{}", m.namespace().unwrap_or_default(), m.name_any());
        let prev = samples.get(&key).copied();
        if let Some((row, sample)) = line(m, prev, now, all) {
            rows.push(row);
            if let Some(s) = sample {
                samples.insert(key, s);
            }
        }
    }
    if rows.is_empty() {
        return format!("{} machines, none in a long step\n", machines.len());
    }
    table(
        &["MACHINE", "PHASE", "STEP", "PROGRESS", "RATE", "ETA"],
        &rows,
    )
}

/// Watches Machines and redraws (clears the screen on a terminal, else prints each new
/// view after a blank line).
pub async fn run(
    client: &Client,
    namespace: Option<&str>,
    args: &Args,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let api: Api<Machine> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let tty = std::io::stdout().is_terminal();
    let mut samples = BTreeMap::new();
    let mut last = String::new();
    let mut ready = false;
    let deadline = args
        .timeout
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    // Redraw at least every 5 s, so the stall note and ages move even with no events.
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        let until = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            next = stream.next() => match next {
                Some(Ok(watcher::Event::InitDone)) => ready = true,
                Some(Ok(_)) => {}
                Some(Err(e)) => anyhow::bail!("watching Machines failed: {e} (may you watch machines.metal.ironpool.dev?)"),
                None => return Ok(()),
            },
            _ = tick.tick() => {}
            () = until => return Ok(()),
        }
        // Nothing to show before the first full list.
        if !ready {
            continue;
        }
        let view = frame(&reader.state(), &mut samples, Timestamp::now(), args.all);
        if view != last {
            if tty {
                write!(out, "\x1b[H\x1b[2J")?;
            } else if !last.is_empty() {
                writeln!(out)?;
            }
            out.write_all(view.as_bytes())?;
            out.flush()?;
            last = view;
        }
        if args.once {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironpool_crds::machine::{
        BootIntent, BootPurpose, BootTarget, MachineSpec, MachineStatus, ProvisioningReport,
        ProvisioningStep,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn writing(done: i64, at: Timestamp) -> Machine {
        let mut m = Machine::new("m1", MachineSpec::for_boot_mac("52:54:00:00:00:01"));
        m.metadata.namespace = Some("lab".into());
        m.status = Some(MachineStatus {
            phase: Some(MachinePhase::Deploying),
            boot_intent: Some(BootIntent {
                target: BootTarget::Ramdisk,
                purpose: BootPurpose::Deploy,
                attempt: 3,
                issued_at: None,
            }),
            provisioning: Some(ProvisioningReport {
                attempt: 3,
                step: ProvisioningStep::WritingImage,
                bytes_written: Some(done),
                bytes_total: Some(1000 << 20),
                message: None,
                reason: None,
                updated_at: Some(Time(at)),
            }),
            ..Default::default()
        });
        m
    }

    #[test]
    fn rate_and_eta_come_from_two_reports() {
        let t0: Timestamp = "2026-12-07T10:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-12-07T10:00:10Z".parse().unwrap();
        let (row, s) = line(&writing(100 << 20, t0), None, t0, false).unwrap();
        assert_eq!(row[4], "-", "no rate from one report");
        let (row, _) = line(&writing(300 << 20, t1), s, t1, false).unwrap();
        assert_eq!(row[0], "lab/m1");
        assert_eq!(row[2], "WritingImage");
        assert!(
            row[3].contains(" 30% 300.0 MiB of 1000.0 MiB"),
            "{}",
            row[3]
        );
        assert_eq!(row[4], "20.0 MiB/s");
        assert_eq!(row[5], "35s");
    }

    #[test]
    fn a_silent_ramdisk_reads_as_stalled_not_moving() {
        let t0: Timestamp = "2026-12-07T10:00:00Z".parse().unwrap();
        let later: Timestamp = "2026-12-07T10:05:00Z".parse().unwrap();
        let (_, s) = line(&writing(100 << 20, t0), None, t0, false).unwrap();
        let (row, _) = line(&writing(100 << 20, t0), s, later, false).unwrap();
        assert_eq!(row[4], "stalled: no report for 5m");
        assert_eq!(row[5], "-");
    }

    #[test]
    fn only_long_steps_unless_asked() {
        let t0: Timestamp = "2026-12-07T10:00:00Z".parse().unwrap();
        let mut m = writing(0, t0);
        m.status.as_mut().unwrap().phase = Some(MachinePhase::Ready);
        assert!(line(&m, None, t0, false).is_none());
        assert!(line(&m, None, t0, true).is_some());
        assert_eq!(bar(50, 10), "[#####-----]");
    }
}
