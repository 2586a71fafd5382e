//! bmc-bench: power-state sweeps and boot-override sweeps of many emulated Redfish BMCs
//! (sushy-emulator processes on loopback), with the python `sushy` client measured in the
//! same run as a peer. Prints ops/s, latency percentiles, the ratio to the ideal wall time
//! (single-call latency x calls / concurrency), and this process's RSS.
//!
//!     cargo run --release -p ironpool-agents --bin bmc-bench -- [emulators] [systems-per] [concurrency,...]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use ironpool_agents::bmc::{
    self, BmcAddress, BootDevice, BootMode, BootOverride, Credentials, DriverConfig, Persistence,
    PowerDriver,
};

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
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../e2e/scripts/install-bmc-emulators.sh");
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

fn start(bin: &std::path::Path, emulators: usize, per: usize) -> Result<(Emulators, Vec<u16>)> {
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
        let child = Command::new(bin.join("sushy-emulator"))
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

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn sweep(
    drivers: &[Box<dyn PowerDriver>],
    concurrency: usize,
    boot: bool,
) -> (Duration, Vec<Duration>, usize) {
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
            let ok = r.is_ok();
            (t.elapsed(), ok)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let wall = started.elapsed();
    let errors = results.iter().filter(|r| !r.1).count();
    let mut lat: Vec<Duration> = results.into_iter().map(|r| r.0).collect();
    lat.sort();
    (wall, lat, errors)
}

const PEER: &str = r#"
import sys, time, concurrent.futures as cf, sushy
from sushy import auth
ports = [int(p) for p in sys.argv[1].split(',')]; per = int(sys.argv[2]); conc = int(sys.argv[3])
clients = {p: sushy.Sushy(f'http://127.0.0.1:{p}/redfish/v1', auth=auth.BasicAuth('u', 'p')) for p in ports}
ids = [(p, f'/redfish/v1/Systems/00000000-0000-4000-8000-{e:04x}{s:08x}') for e, p in enumerate(ports) for s in range(per)]
def one(x):
    t = time.perf_counter(); clients[x[0]].get_system(x[1]).power_state; return time.perf_counter() - t
one(ids[0])
single = sum(one(ids[i % len(ids)]) for i in range(30)) / 30
t = time.perf_counter()
with cf.ThreadPoolExecutor(conc) as ex: lat = sorted(ex.map(one, ids))
wall = time.perf_counter() - t
print(f"{wall:.3f} {single*1000:.2f} {lat[len(lat)//2]*1000:.2f} {lat[int(len(lat)*0.99)]*1000:.2f}")
"#;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let emulators: usize = args.get(1).map_or(Ok(4), |a| a.parse())?;
    let per: usize = args.get(2).map_or(Ok(250), |a| a.parse())?;
    let concurrencies: Vec<usize> = args
        .get(3)
        .map_or("8,64", String::as_str)
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let bin = venv_bin()?;
    let (_procs, ports) = start(&bin, emulators, per)?;
    let rss0 = rss_mib();
    let mut drivers = Vec::new();
    for (e, port) in ports.iter().enumerate() {
        for s in 0..per {
            let a = BmcAddress::parse(&format!(
                "redfish+http://127.0.0.1:{port}/redfish/v1/Systems/{}",
                uuid(e, s)
            ))?;
            let mut cfg = DriverConfig::new(
                a,
                Credentials {
                    username: "u".into(),
                    password: "p".into(),
                },
            );
            cfg.timeout = Duration::from_secs(60);
            drivers.push(bmc::connect(cfg)?);
        }
    }
    let n = drivers.len();
    println!(
        "{n} emulated BMCs in {emulators} sushy-emulator processes; RSS before drivers {rss0:.1} MiB"
    );
    // Warm-up: first call logs in (service root) and opens a connection per driver.
    let (w, _, err) = sweep(&drivers, 8, false).await;
    println!(
        "warm-up sweep (login + first read): {:.2}s, errors {err}",
        w.as_secs_f64()
    );
    let mut single = Duration::ZERO;
    for d in drivers.iter().take(30) {
        let t = Instant::now();
        d.power_state().await?;
        single += t.elapsed();
    }
    let single = single / 30;
    println!(
        "single-call power_state latency (sequential): {:.2} ms",
        single.as_secs_f64() * 1000.0
    );
    println!(
        "tool        op           conc   wall_s   ops/s   p50_ms   p99_ms   ideal_s  ideal/wall  errors"
    );
    for &c in &concurrencies {
        for boot in [false, true] {
            let (wall, lat, errors) = sweep(&drivers, c, boot).await;
            let ideal = single.as_secs_f64() * n as f64 / c as f64;
            println!(
                "ironpool    {:<12} {c:>4} {:>8.2} {:>7.0} {:>8.2} {:>8.2} {:>9.2} {:>10.2} {errors:>7}",
                if boot { "boot-pxe" } else { "power-state" },
                wall.as_secs_f64(),
                n as f64 / wall.as_secs_f64(),
                pct(&lat, 0.5),
                pct(&lat, 0.99),
                ideal,
                ideal / wall.as_secs_f64()
            );
        }
        let ports_arg = ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let out = Command::new(bin.join("python"))
            .args(["-c", PEER, &ports_arg, &per.to_string(), &c.to_string()])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let f: Vec<f64> = text
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if let [wall, single_ms, p50, p99] = f.as_slice() {
            let ideal = single_ms / 1000.0 * n as f64 / c as f64;
            println!(
                "py-sushy    power-state  {c:>4} {wall:>8.2} {:>7.0} {p50:>8.2} {p99:>8.2} {ideal:>9.2} {:>10.2}       - (single {single_ms:.2} ms)",
                n as f64 / wall,
                ideal / wall
            );
        } else {
            println!("py-sushy failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    println!(
        "agent RSS with {n} drivers after the sweeps: {:.1} MiB",
        rss_mib()
    );
    Ok(())
}
