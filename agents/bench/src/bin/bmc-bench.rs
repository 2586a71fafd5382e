//! bmc-bench: power-state sweeps of many emulated Redfish BMCs (sushy-emulator processes
//! on loopback), with the python `sushy` client (OpenStack Ironic's library) measured in
//! the same run as a peer.
//!
//! Two phases per concurrency:
//! - **saturated**: the emulators answer as fast as they can. On a small machine the
//!   Python emulators are the bottleneck, so this shows client CPU cost, not a BMC limit.
//! - **latency**: every emulator request first sleeps L (a real BMC answers a Redfish GET
//!   in 0.2-2 s; the sleep costs a thread, not CPU). L is chosen so that the call rate the
//!   limit needs (concurrency / L) stays well under what the emulators reached in the
//!   saturated phase, so the sweep measures the client's concurrency, not the emulators.
//!   The limit is single-call latency (measured sequentially in the same run) x calls /
//!   concurrency; the goal is wall time within 1/0.8 of it (ratio >= 0.8).
//!
//! Prints ops/s, latency percentiles, CPU per call, the ratio to the limit, and this
//! process's RSS with all drivers built.
//!
//!     cargo run --release -p ironpool-agents --bin bmc-bench -- [emulators] [systems-per] [concurrency,...] [latency-ms,...]
//!
//! Environment: `BMC_BENCH_CLIENT_CPUS` pins this process and the python peer (taskset
//! list, e.g. `0`); `BMC_BENCH_EMU_CPUS` pins the emulators (e.g. `1` or `0-1`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use ironpool_agents::bmc::{
    self, BmcAddress, BootDevice, BootMode, BootOverride, Credentials, DriverConfig, Persistence,
    PowerDriver,
};

const LATENCY_WRAPPER: &str = include_str!("bmc_bench/sushy_latency.py");
const PEER: &str = include_str!("bmc_bench/sushy_peer.py");

struct Emulators(Vec<Child>, Vec<tempfile::TempDir>);

impl Drop for Emulators {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn venv_bin() -> Result<PathBuf> {
    if let Some(b) = std::env::var_os("IRONPOOL_BMC_VENV_BIN") {
        return Ok(b.into());
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../e2e/scripts/install-bmc-emulators.sh");
    let out = Command::new("bash")
        .arg(script)
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("install-bmc-emulators.sh failed");
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn uuid(e: usize, s: usize) -> String {
    format!("00000000-0000-4000-8000-{e:04x}{s:08x}")
}

/// A command, under `taskset -c cpus` when asked.
fn pinned(cpus: Option<&str>, program: &Path) -> Command {
    match cpus {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", c]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

fn start(bin: &Path, emulators: usize, per: usize) -> Result<(Emulators, Vec<u16>)> {
    let cpus = std::env::var("BMC_BENCH_EMU_CPUS").ok();
    let mut procs = Emulators(Vec::new(), Vec::new());
    let mut ports = Vec::new();
    for e in 0..emulators {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut conf = format!(
            "SUSHY_EMULATOR_STATE_DIR = '{}'\nSUSHY_EMULATOR_FAKE_DRIVER = True\nSUSHY_EMULATOR_FAKE_SYSTEMS = [\n",
            dir.path().display()
        );
        for s in 0..per {
            conf.push_str(&format!(
                "  {{'uuid': '{}', 'name': 'n{e}-{s}', 'power_state': 'On', 'nics': []}},\n",
                uuid(e, s)
            ));
        }
        conf.push_str("]\n");
        let path = dir.path().join("conf");
        std::fs::write(&path, conf)?;
        let wrapper = dir.path().join("sushy_latency.py");
        std::fs::write(&wrapper, LATENCY_WRAPPER)?;
        let child = pinned(cpus.as_deref(), &bin.join("python"))
            .arg(&wrapper)
            .arg("--config")
            .arg(&path)
            .args(["-i", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("sushy-emulator")?;
        procs.0.push(child);
        procs.1.push(dir);
        ports.push(port);
    }
    for p in &ports {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", *p)).is_err() {
            if Instant::now() > deadline {
                bail!("emulator on {p} did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok((procs, ports))
}

/// Sets the injected latency of every emulator.
fn set_latency(ports: &[u16], ms: u64) -> Result<()> {
    for p in ports {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", *p))?;
        write!(
            s,
            "PUT /ironpool-latency?ms={ms} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
        )?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        if !answer.starts_with("HTTP/1.1 204") && !answer.starts_with("HTTP/1.0 204") {
            bail!("emulator on {p} refused the latency setting: {answer}");
        }
    }
    Ok(())
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn proc_status(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(field)).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU seconds (user + system) this process has used.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = after
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // After the command come state (not numeric, dropped), ppid, pgrp, session, tty_nr,
    // tpgid, flags, minflt, cminflt, majflt, cmajflt, utime, stime: utime and stime are
    // the 11th and 12th numbers. Units are clock ticks (100 per second on Linux).
    (f.get(10).copied().unwrap_or(0.0) + f.get(11).copied().unwrap_or(0.0)) / 100.0
}

struct Sweep {
    wall: Duration,
    lat: Vec<Duration>,
    errors: usize,
    cpu: f64,
}

async fn sweep(drivers: &[Box<dyn PowerDriver>], concurrency: usize, boot: bool) -> Sweep {
    let cpu0 = cpu_seconds();
    let started = Instant::now();
    let over = BootOverride {
        device: BootDevice::Pxe,
        persistence: Persistence::Once,
        mode: BootMode::Uefi,
    };
    let results: Vec<_> = futures::stream::iter(drivers.iter())
        .map(|d| async move {
            let t = Instant::now();
            let r = if boot {
                d.set_boot_device(over).await
            } else {
                d.power_state().await.map(drop)
            };
            if let Err(e) = &r {
                eprintln!("error: {e}");
            }
            (t.elapsed(), r.is_ok())
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let wall = started.elapsed();
    let errors = results.iter().filter(|r| !r.1).count();
    let mut lat: Vec<Duration> = results.into_iter().map(|r| r.0).collect();
    lat.sort();
    Sweep {
        wall,
        lat,
        errors,
        cpu: cpu_seconds() - cpu0,
    }
}

/// Mean latency of `n` sequential power-state reads.
async fn single(drivers: &[Box<dyn PowerDriver>], n: usize) -> Result<Duration> {
    let mut total = Duration::ZERO;
    for d in drivers.iter().cycle().skip(17).take(n) {
        let t = Instant::now();
        d.power_state().await?;
        total += t.elapsed();
    }
    Ok(total / n as u32)
}

#[allow(clippy::too_many_arguments)]
fn row(
    tool: &str,
    op: &str,
    c: usize,
    lat_ms: u64,
    n: usize,
    wall: f64,
    single_ms: f64,
    p50: f64,
    p99: f64,
    cpu_ms: f64,
    errors: usize,
) -> f64 {
    let limit = single_ms / 1000.0 * n as f64 / c as f64;
    let ratio = limit / wall;
    println!(
        "{tool:<9} {op:<11} {lat_ms:>6} {c:>4} {wall:>7.2} {:>6.0} {single_ms:>8.1} {p50:>8.1} {p99:>8.1} {limit:>7.2} {ratio:>6.2} {cpu_ms:>7.2} {errors:>5}",
        n as f64 / wall
    );
    ratio
}

struct Run<'a> {
    bin: &'a Path,
    ports: &'a [u16],
    per: usize,
    drivers: &'a [Box<dyn PowerDriver>],
}

impl Run<'_> {
    /// Our driver: single-call latency, then the sweep; returns (ratio, ops/s).
    async fn ours(&self, c: usize, lat_ms: u64, boot: bool, singles: usize) -> Result<(f64, f64)> {
        let n = self.drivers.len();
        let one = single(self.drivers, singles).await?;
        let s = sweep(self.drivers, c, boot).await;
        let wall = s.wall.as_secs_f64();
        let ratio = row(
            "ironpool",
            if boot { "boot-pxe" } else { "power-state" },
            c,
            lat_ms,
            n,
            wall,
            one.as_secs_f64() * 1000.0,
            pct(&s.lat, 0.5),
            pct(&s.lat, 0.99),
            s.cpu * 1000.0 / n as f64,
            s.errors,
        );
        Ok((ratio, n as f64 / wall))
    }

    /// python sushy, the same sweep in a child process.
    fn peer(&self, c: usize, lat_ms: u64, singles: usize) -> Result<()> {
        let n = self.drivers.len();
        let ports_arg = self
            .ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let out = Command::new(self.bin.join("python"))
            .args([
                "-c",
                PEER,
                &ports_arg,
                &self.per.to_string(),
                &c.to_string(),
                &singles.to_string(),
            ])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let f: Vec<f64> = text
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        match f.as_slice() {
            [wall, single_ms, p50, p99, cpu_s, errors] => {
                row(
                    "py-sushy",
                    "power-state",
                    c,
                    lat_ms,
                    n,
                    *wall,
                    *single_ms,
                    *p50,
                    *p99,
                    cpu_s * 1000.0 / n as f64,
                    *errors as usize,
                );
            }
            _ => println!("py-sushy failed: {}", String::from_utf8_lossy(&out.stderr)),
        }
        Ok(())
    }
}

/// Latency to inject at concurrency `c`: the limit then needs `c / L` calls/s, kept at
/// 40 % of what the emulators reached saturated, within 0.2-2 s, rounded up to 50 ms.
fn auto_latency_ms(c: usize, saturated_ops: f64) -> u64 {
    let secs = (c as f64 / (0.4 * saturated_ops)).clamp(0.2, 2.0);
    ((secs * 1000.0 / 50.0).ceil() as u64) * 50
}

fn pin_self() -> Result<()> {
    if let Ok(cpus) = std::env::var("BMC_BENCH_CLIENT_CPUS") {
        let ok = Command::new("taskset")
            .args(["-a", "-p", "-c", &cpus, &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status()?
            .success();
        if !ok {
            bail!("taskset -c {cpus} failed");
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let emulators: usize = args.get(1).map_or(Ok(4), |a| a.parse())?;
    let per: usize = args.get(2).map_or(Ok(250), |a| a.parse())?;
    let list = |i: usize, default: &str| -> Result<Vec<u64>> {
        Ok(args
            .get(i)
            .map_or(default, String::as_str)
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()?)
    };
    let concurrencies = list(3, "8,64")?;
    let latencies = list(4, "")?;
    if !latencies.is_empty() && latencies.len() != concurrencies.len() {
        bail!("give one latency (ms) per concurrency, or none for automatic");
    }
    pin_self()?;
    let bin = venv_bin()?;
    let (_procs, ports) = start(&bin, emulators, per)?;
    let rss0 = proc_status("VmRSS:");
    let mut drivers = Vec::new();
    for (e, port) in ports.iter().enumerate() {
        for s in 0..per {
            let a = BmcAddress::parse(&format!(
                "redfish+http://127.0.0.1:{port}/redfish/v1/Systems/{}",
                uuid(e, s)
            ))?;
            let creds = Credentials {
                username: "u".into(),
                password: "p".into(),
            };
            let mut cfg = DriverConfig::new(a, creds);
            cfg.timeout = Duration::from_secs(60);
            drivers.push(bmc::connect(cfg)?);
        }
    }
    let n = drivers.len();
    println!(
        "{n} emulated BMCs in {emulators} sushy-emulator processes (emulator CPUs {}, client CPUs {}); {} online CPUs; load average {}",
        std::env::var("BMC_BENCH_EMU_CPUS").unwrap_or_else(|_| "all".into()),
        std::env::var("BMC_BENCH_CLIENT_CPUS").unwrap_or_else(|_| "all".into()),
        std::thread::available_parallelism().map_or(0, |p| p.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let s = sweep(&drivers, 8, false).await;
    println!(
        "warm-up sweep (service root + first read per BMC): {:.2}s, errors {}; RSS before drivers {rss0:.1} MiB, after warm-up {:.1} MiB",
        s.wall.as_secs_f64(),
        s.errors,
        proc_status("VmRSS:")
    );
    println!(
        "tool      op          lat_ms conc  wall_s  ops/s single_ms   p50_ms   p99_ms limit_s  ratio cpu_ms/call errors"
    );
    let run = Run {
        bin: &bin,
        ports: &ports,
        per,
        drivers: &drivers,
    };
    let mut verdicts = Vec::new();
    for (i, &c) in concurrencies.iter().enumerate() {
        let c = c as usize;
        set_latency(&ports, 0)?;
        let (_, saturated) = run.ours(c, 0, false, 30).await?;
        run.ours(c, 0, true, 30).await?;
        run.peer(c, 0, 30)?;
        let lat = latencies
            .get(i)
            .copied()
            .unwrap_or_else(|| auto_latency_ms(c, saturated));
        set_latency(&ports, lat)?;
        let (ratio, _) = run.ours(c, lat, false, 10).await?;
        run.peer(c, lat, 10)?;
        verdicts.push((c, lat, ratio));
    }
    set_latency(&ports, 0)?;
    for (c, lat, ratio) in verdicts {
        println!(
            "goal (ratio >= 0.8 of the limit) at concurrency {c}, {lat} ms per call: {ratio:.2} {}",
            if ratio >= 0.8 { "met" } else { "NOT met" }
        );
    }
    println!(
        "RSS of this process with {n} drivers after the sweeps: {:.1} MiB (peak {:.1} MiB)",
        proc_status("VmRSS:"),
        proc_status("VmHWM:")
    );
    Ok(())
}
