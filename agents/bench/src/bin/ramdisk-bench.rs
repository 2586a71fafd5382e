//! Benchmark of the machine agent's image write beside `wget | dd` of the same image onto
//! the same virtual disk, in the same boot ramdisk, in one VM.
//!
//! `ramdisk-bench [image_mib] [rounds]` (defaults 256, 3). Builds the real boot ramdisk
//! (`boot-images/build.sh`, release agent unless `IRONPOOL_RAMDISK_PROFILE` says otherwise),
//! serves it the real HTTP boot server on loopback (QEMU user-mode network: the guest's
//! 10.0.2.2 is the host's 127.0.0.1), and boots it once under QEMU (TCG, 2 vCPUs, 512 MiB,
//! a virtio-blk disk backed by a raw file with `cache=writeback`) with
//! `ironpool.debug=shell`. In that shell, each round runs, on the same disk, fetching from
//! the same agent cache (order reversed every other round):
//!
//!   agent raw:   `ironpool-machine-agent --cmdline F` with a Deploy plan for the raw image
//!                (stream, verify while writing, sync; the cache's `Repr-Digest` lets the agent
//!                verify with SHA-512 where that is cheaper than the declared SHA-256, and the
//!                bench prints which it used). Three times are kept: the agent's
//!                own (first byte to the final sync, from its log), the server's (first
//!                WritingImage report to the WritingConfig report: wipe, write, sync and one
//!                report round trip) and the process wall time (`time`, includes inventory,
//!                plan and the cloud-init seed).
//!   agent qcow2: the same with a QCOW2 file of the same content (`qemu-img convert`).
//!   dd:          `wget -q -O - <image> | dd of=/dev/vda bs=4M conv=fsync` under `time`.
//!   dd + sha256: the same stream also through `tee` to busybox `sha256sum` (via a FIFO),
//!                the digest checked: what dd costs when it verifies like the agent does.
//!
//! It prints MiB/s per run, the medians, the median ratio agent/dd (issue 6's criterion:
//! >= 0.9) and the conditions (load average before and after, QEMU version).
//!
//! `IRONPOOL_BENCH_CPU=max` (any `-cpu` model) changes the guest CPU for both.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::future::BoxFuture;
use ironpool_agents::http::{
    CacheKey, HttpError, HttpMetrics, HttpServer, ImageCache, MacAddr, MachineView,
    MemoryBootSource, ReportSink, ScriptConfig, ServerConfig, TokenKey,
};
use ironpool_crds::deployment::ImageFormat;
use ironpool_crds::machine::{
    BootPurpose, BootTarget, Hardware, ProvisioningReport, ProvisioningStep,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x65, 0x43, 0x21]);
const MEMORY_MIB: u32 = 512;
const CPUS: u32 = 2;
/// Longest a single command in the guest may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(900);

/// A report sink that remembers when each provisioning report arrived.
#[derive(Default)]
struct Stamped {
    reports: Mutex<Vec<(Instant, ProvisioningReport)>>,
}

impl Stamped {
    fn since(&self, from: usize) -> Vec<(Instant, ProvisioningReport)> {
        let r = self.reports.lock().unwrap_or_else(PoisonError::into_inner);
        r.get(from..).unwrap_or_default().to_vec()
    }
    fn len(&self) -> usize {
        self.reports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl ReportSink for Stamped {
    fn inventory<'a>(
        &'a self,
        _mac: MacAddr,
        _machine: Option<&'a MachineView>,
        _hardware: Hardware,
    ) -> BoxFuture<'a, Result<(), HttpError>> {
        Box::pin(async { Ok(()) })
    }

    fn provisioning<'a>(
        &'a self,
        _machine: &'a MachineView,
        report: ProvisioningReport,
    ) -> BoxFuture<'a, Result<(), HttpError>> {
        self.reports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((Instant::now(), report));
        Box::pin(async { Ok(()) })
    }

    fn rescue<'a>(
        &'a self,
        _machine: &'a MachineView,
        _report: ProvisioningReport,
    ) -> BoxFuture<'a, Result<(), HttpError>> {
        Box::pin(async { Ok(()) })
    }
}

fn build_ramdisk() -> Result<PathBuf> {
    // agents/bench -> the repository root.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .context("repository root")?;
    let out = Command::new(repo.join("boot-images/build.sh"))
        .stderr(Stdio::inherit())
        .output()
        .context("run boot-images/build.sh")?;
    if !out.status.success() {
        bail!("boot-images/build.sh failed");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ramdisk: "))
        .context("no 'ramdisk:' line from build.sh")?;
    Ok(PathBuf::from(dir))
}

/// The VM: its serial console (stdin/stdout of QEMU) as a shell.
struct Vm {
    child: Child,
    stdin: ChildStdin,
    console: Arc<Mutex<String>>,
    commands: usize,
}

impl Vm {
    fn boot(ramdisk: &Path, disk: &Path, port: u16) -> Result<Self> {
        let args = format!(
            "console=ttyS0 quiet ironpool.mac={MAC} ironpool.url=http://10.0.2.2:{port} \
             ironpool.debug=shell"
        );
        let mut qemu = Command::new("qemu-system-x86_64");
        if let Ok(cpu) = std::env::var("IRONPOOL_BENCH_CPU") {
            qemu.args(["-cpu", &cpu]);
        }
        let mut child = qemu
            .args(["-accel", "tcg", "-smp", &CPUS.to_string()])
            .args(["-m", &MEMORY_MIB.to_string()])
            .args(["-nodefaults", "-no-reboot", "-display", "none"])
            .args(["-monitor", "none", "-serial", "stdio"])
            .arg("-kernel")
            .arg(ramdisk.join("vmlinuz"))
            .arg("-initrd")
            .arg(ramdisk.join("initramfs"))
            .args(["-append", &args])
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=none,id=root,cache=writeback",
                disk.display()
            ))
            .args(["-device", "virtio-blk-pci,drive=root,serial=bench-root"])
            .args([
                "-nic",
                &format!("user,model=virtio-net-pci,mac={MAC},restrict=off"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start qemu-system-x86_64 (e2e/scripts/install-boot-image-tools.sh)")?;
        let stdin = child.stdin.take().context("qemu stdin")?;
        let mut stdout = child.stdout.take().context("qemu stdout")?;
        let console = Arc::new(Mutex::new(String::new()));
        let sink = console.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut vm = Self {
            child,
            stdin,
            console,
            commands: 0,
        };
        vm.wait_for("shell follows", 0, Duration::from_secs(300))?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(vm)
    }

    fn text(&self) -> String {
        self.console
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until `needle` appears after byte `from` of the console; returns the offset
    /// just past it.
    fn wait_for(&mut self, needle: &str, from: usize, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text();
            if let Some(i) = text.get(from..).and_then(|t| t.find(needle)) {
                return Ok(from + i + needle.len());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("QEMU exited ({status}) before '{needle}'; console:\n{text}");
            }
            if text.contains("ironpool-ramdisk: FAILED") {
                bail!("the ramdisk failed; console:\n{text}");
            }
            if Instant::now() > deadline {
                bail!("no '{needle}' within {timeout:?}; console:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `cmd` in the guest shell; returns its console output and exit status. The end
    /// marker is spelled with an empty quote pair so the echoed command line never matches.
    fn run(&mut self, cmd: &str) -> Result<(String, i32)> {
        self.commands += 1;
        let n = self.commands;
        let from = self.text().len();
        writeln!(self.stdin, "{cmd}; echo BENCH\"\"END-{n} rc=$?")?;
        self.stdin.flush()?;
        let marker = format!("BENCHEND-{n} rc=");
        let end = self.wait_for(&marker, from, COMMAND_TIMEOUT)?;
        let eol = self.wait_for("\n", end, Duration::from_secs(10))?;
        let text = self.text();
        let status = text.get(end..eol).unwrap_or_default().trim();
        let status = status
            .parse()
            .with_context(|| format!("exit status '{status}' after {cmd}"))?;
        Ok((text.get(from..end).unwrap_or_default().to_string(), status))
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Seconds from busybox `time` ("real\t0m 3.21s").
fn busybox_real(out: &str) -> Option<f64> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("real"))?;
    let t = line.trim_start().strip_prefix("real")?.trim();
    let (m, s) = t.split_once('m')?;
    Some(
        m.trim().parse::<f64>().ok()? * 60.0
            + s.trim().trim_end_matches('s').parse::<f64>().ok()?,
    )
}

/// The agent's own time from its log line "image written, verified and synced ... elapsed_ms=N".
fn agent_ms(out: &str) -> Option<f64> {
    let line = out
        .lines()
        .find(|l| l.contains("image written, verified and synced"))?;
    let v = line.split("elapsed_ms=").nth(1)?;
    let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
    Some(digits.parse::<f64>().ok()? / 1000.0)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_string())
}

fn sha256_hex(data: &[u8]) -> String {
    ironpool_agents::http::fetch::hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// One measured run.
#[derive(Default, Clone)]
struct Run {
    /// Seconds: the agent's own / the server's / the process or pipeline wall time.
    own: Option<f64>,
    server: Option<f64>,
    wall: f64,
}

struct Bench {
    vm: Vm,
    port: u16,
    keys: TokenKey,
    source: Arc<MemoryBootSource>,
    sink: Arc<Stamped>,
    attempt: i64,
    /// What the last agent run verified the image with (from its result message).
    verified: Option<String>,
}

impl Bench {
    fn agent(&mut self, file: &str, checksum: &str, format: ImageFormat) -> Result<Run> {
        self.attempt += 1;
        let attempt = self.attempt;
        let upstream = format!("http://127.0.0.1:{}/assets/{file}", self.port);
        let mut m = MachineView::example("bench", MAC)
            .with_intent(BootTarget::Ramdisk, BootPurpose::Deploy, attempt)
            .with_image(&upstream, checksum);
        if let Some(d) = m.deploy.as_mut() {
            d.image.format = format;
        }
        self.source.put(m);
        let line = format!(
            "ironpool.url=http://10.0.2.2:{} ironpool.token={} ironpool.mac={MAC} \
             ironpool.purpose=Deploy ironpool.attempt={attempt}",
            self.port,
            self.keys.derive(&MAC, attempt)
        );
        let seen = self.sink.len();
        let (out, rc) = self.vm.run(&format!(
            "echo '{line}' > /tmp/cmdline; time /bin/ironpool-machine-agent --cmdline /tmp/cmdline"
        ))?;
        if rc != 0 {
            bail!("the agent failed ({rc}):\n{out}");
        }
        let reports = self.sink.since(seen);
        let first = reports
            .iter()
            .find(|(_, r)| r.step == ProvisioningStep::WritingImage)
            .map(|(t, _)| *t);
        let written = reports
            .iter()
            .find(|(_, r)| r.step == ProvisioningStep::WritingConfig)
            .map(|(t, _)| *t);
        let server = first.zip(written).map(|(a, b)| (b - a).as_secs_f64());
        self.verified = reports
            .iter()
            .filter(|(_, r)| r.step == ProvisioningStep::Succeeded)
            .find_map(|(_, r)| {
                let m = r.message.as_deref()?;
                let from = m.find("verified with ")? + "verified with ".len();
                let rest = &m[from..];
                Some(rest[..rest.find("; ").unwrap_or(rest.len())].to_string())
            });
        Ok(Run {
            own: Some(agent_ms(&out).with_context(|| format!("no agent timing in:\n{out}"))?),
            server,
            wall: busybox_real(&out).with_context(|| format!("no time in:\n{out}"))?,
        })
    }

    fn dd(&mut self, url: &str, verify: Option<&str>) -> Result<Run> {
        let cmd = match verify {
            None => format!(
                "time sh -c 'wget -q -O - {url} | dd of=/dev/vda bs=4M conv=fsync 2>/dev/null'"
            ),
            Some(_) => format!(
                "rm -f /tmp/f /tmp/sum; mkfifo /tmp/f; time sh -c '(sha256sum < /tmp/f > /tmp/sum &) ; \
                 wget -q -O - {url} | tee /tmp/f | dd of=/dev/vda bs=4M conv=fsync 2>/dev/null; \
                 while ! grep -q . /tmp/sum 2>/dev/null; do usleep 10000; done'; cat /tmp/sum"
            ),
        };
        let (out, rc) = self.vm.run(&cmd)?;
        if rc != 0 {
            bail!("wget | dd failed ({rc}):\n{out}");
        }
        if let Some(hex) = verify
            && !out.contains(hex)
        {
            bail!("sha256sum did not print {hex}:\n{out}");
        }
        Ok(Run {
            own: None,
            server: None,
            wall: busybox_real(&out).with_context(|| format!("no time in:\n{out}"))?,
        })
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let mut argv = std::env::args().skip(1);
    let mib: u64 = argv
        .next()
        .map_or(Ok(256), |a| a.parse())
        .context("image_mib")?;
    let rounds: usize = argv.next().map_or(Ok(3), |a| a.parse()).context("rounds")?;
    if mib == 0 || rounds == 0 {
        bail!("usage: ramdisk-bench [image_mib >= 1] [rounds >= 1]");
    }
    let load_before = loadavg();
    eprintln!("building the ramdisk");
    let ramdisk = tokio::task::spawn_blocking(build_ramdisk).await??;

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let assets = tempfile::tempdir()?;
    let cache_dir = tempfile::tempdir()?;
    let work = tempfile::tempdir()?;
    let metrics = HttpMetrics::new();
    let source = Arc::new(MemoryBootSource::new());
    let sink = Arc::new(Stamped::default());
    let (tx, mut events) = mpsc::channel(1024);
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let keys = TokenKey::new(&[9; 32])?;
    let server = HttpServer {
        config: ServerConfig::new(
            ScriptConfig::new(&format!("http://10.0.2.2:{port}"), "")?,
            assets.path().into(),
        ),
        keys: keys.clone(),
        source: source.clone(),
        sink: sink.clone(),
        cache: ImageCache::open(cache_dir.path(), 8 << 30, metrics.clone())?,
        metrics,
        events: tx,
    };
    let cancel = CancellationToken::new();
    tokio::spawn(server.serve(listener, cancel.clone()));

    // Incompressible content with an empty MBR (room for the seed partition).
    let mut rng = fastrand::Rng::with_seed(1);
    let mut image: Vec<u8> = (0..mib << 20).map(|_| rng.u8(..)).collect();
    image[..1 << 20].fill(0);
    image[510] = 0x55;
    image[511] = 0xaa;
    let raw = assets.path().join("bench.raw");
    std::fs::write(&raw, &image)?;
    let raw_sum = sha256_hex(&image);
    drop(image);
    let q = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(assets.path().join("bench.qcow2"))
        .output()
        .context("qemu-img")?;
    if !q.status.success() {
        bail!("qemu-img convert: {}", String::from_utf8_lossy(&q.stderr));
    }
    let qcow = std::fs::read(assets.path().join("bench.qcow2"))?;
    let qcow_sum = sha256_hex(&qcow);
    let qcow_mib = qcow.len() as f64 / f64::from(1 << 20);
    drop(qcow);
    let raw_checksum = format!("sha256:{raw_sum}");
    let qcow_checksum = format!("sha256:{qcow_sum}");
    let image_url = format!(
        "http://10.0.2.2:{port}/images/{}",
        CacheKey::from_checksum(&raw_checksum)?.file_name()
    );
    let disk = work.path().join("disk.raw");
    std::fs::File::create(&disk)?.set_len((mib + 64) << 20)?;
    let qemu_version = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_default();

    eprintln!("booting the ramdisk (debug shell)");
    let vm = tokio::task::block_in_place(|| Vm::boot(&ramdisk, &disk, port))?;
    let mut b = Bench {
        vm,
        port,
        keys,
        source,
        sink,
        attempt: 0,
        verified: None,
    };
    let (raw_ck, qcow_ck) = (raw_checksum.clone(), qcow_checksum.clone());
    tokio::task::block_in_place(|| -> Result<()> {
        // Warm-up: the first deploys fill the agent's cache from upstream.
        eprintln!("warm-up: filling the agent's image cache");
        b.agent("bench.raw", &raw_ck, ImageFormat::Raw)?;
        b.agent("bench.qcow2", &qcow_ck, ImageFormat::Qcow2)?;
        b.dd(&image_url, None)?;
        Ok(())
    })?;

    let names = [
        "agent raw",
        "agent qcow2",
        "wget | dd",
        "wget | tee sha256sum | dd",
    ];
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); names.len()];
    for round in 1..=rounds {
        let mut order: Vec<usize> = (0..names.len()).collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for i in order {
            let r = tokio::task::block_in_place(|| match i {
                0 => b.agent("bench.raw", &raw_checksum, ImageFormat::Raw),
                1 => b.agent("bench.qcow2", &qcow_checksum, ImageFormat::Qcow2),
                2 => b.dd(&image_url, None),
                _ => b.dd(&image_url, Some(&raw_sum)),
            })?;
            eprintln!(
                "round {round}: {:<26} wall {:>6.2}s own {} server {}",
                names[i],
                r.wall,
                r.own.map_or("-".into(), |s| format!("{s:.2}s")),
                r.server.map_or("-".into(), |s| format!("{s:.2}s")),
            );
            runs[i].push(r);
        }
    }
    cancel.cancel();
    let load_after = loadavg();

    let mibps = |s: f64| mib as f64 / s;
    let list = |v: &[f64]| {
        v.iter()
            .map(|s| format!("{:.1}", mibps(*s)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let cpu_model = std::env::var("IRONPOOL_BENCH_CPU").unwrap_or_else(|_| "default qemu64".into());
    println!(
        "image {mib} MiB (raw; QCOW2 file {qcow_mib:.1} MiB of the same content), {rounds} rounds, \
         one VM: QEMU TCG ({qemu_version}), {CPUS} vCPUs ({cpu_model} CPU model), \
         {MEMORY_MIB} MiB, virtio-blk on a raw file with cache=writeback, user-mode network \
         to the agent on loopback; load average before {load_before}, after {load_after}"
    );
    println!("MiB/s = image MiB (disk content) / seconds; each round's value, then the median");
    println!("| writer | timing | MiB/s per round | median MiB/s |");
    println!("|---|---|---|---|");
    for (i, name) in names.iter().enumerate() {
        let rows: Vec<(&str, Vec<f64>)> = if i < 2 {
            vec![
                (
                    "own: first byte to sync",
                    runs[i].iter().filter_map(|r| r.own).collect(),
                ),
                (
                    "server: WritingImage to WritingConfig",
                    runs[i].iter().filter_map(|r| r.server).collect(),
                ),
                (
                    "process wall (time)",
                    runs[i].iter().map(|r| r.wall).collect(),
                ),
            ]
        } else {
            vec![(
                "pipeline wall (time)",
                runs[i].iter().map(|r| r.wall).collect(),
            )]
        };
        for (timing, v) in rows {
            println!(
                "| {} | {timing} | {} | {:.1} |",
                name.replace('|', "\\|"),
                list(&v),
                mibps(median(&v))
            );
        }
    }
    let ratio = |a: &[Run], own: bool, d: &[Run]| -> f64 {
        let r: Vec<f64> = a
            .iter()
            .zip(d)
            .filter_map(|(a, d)| {
                let t = if own { a.own? } else { a.server? };
                Some(d.wall / t)
            })
            .collect();
        median(&r)
    };
    println!(
        "median ratio of throughput agent/dd per round (>= 0.9 is issue 6's goal): \
         raw own {:.2}, raw server {:.2}, qcow2 own {:.2}, qcow2 server {:.2}; \
         against dd + sha256sum: raw own {:.2}, qcow2 own {:.2}",
        ratio(&runs[0], true, &runs[2]),
        ratio(&runs[0], false, &runs[2]),
        ratio(&runs[1], true, &runs[2]),
        ratio(&runs[1], false, &runs[2]),
        ratio(&runs[0], true, &runs[3]),
        ratio(&runs[1], true, &runs[3]),
    );
    println!(
        "the agent verified with {}",
        b.verified.as_deref().unwrap_or("(no result message seen)")
    );
    let _ = b.vm.run("poweroff -f");
    Ok(())
}
