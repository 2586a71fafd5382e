//! The boot-storm benchmark: many simulated servers power on at once on one provisioning
//! network and boot over the real protocols (DHCP, TFTP, HTTP, the machine API) against
//! the real `ironpool-agent`, each becoming a Machine that the real `ironpool-operator`
//! commissions to Ready; beside it, the serving half alone against Ironpool and against
//! dnsmasq + nginx.
//!
//! The fleet (every simulated server and its simulated BMC) is one process, this crate's
//! `boot-storm fleet`, run inside the fleet's network namespace ([`fleet_main`]); the
//! orchestration ([`bench`]) starts the control plane, the network, Ironpool or its peers,
//! and reads the fleet's JSON lines.

pub mod bench;
pub mod dhcp;
pub mod env;
mod fleet_proc;
pub mod http;
mod metrics;
pub mod peers;
pub mod redfish;
pub mod report;
pub mod server;
pub mod tftp;

use std::collections::HashSet;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;
use tokio::io::AsyncBufReadExt;

use server::Server;

/// What the fleet does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Boot to the end of the ramdisk's work, and again whenever the BMC is told to.
    Full,
    /// The serving half: DHCP, TFTP, DHCP, script, kernel, initrd; once.
    Serve,
}

/// The fleet's settings, from its command line.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// Index of the first server (MACs `02:1b:<index>`).
    pub first: u32,
    /// How many servers.
    pub count: u32,
    /// Full or serving half.
    pub mode: Mode,
    /// The fleet's interface.
    pub iface: String,
    /// Address the BMCs listen on (Full).
    pub bmc_ip: Ipv4Addr,
    /// BMC of server i listens on `bmc_port + i`.
    pub bmc_port: u16,
    /// File holding `user:password` of the BMCs (Full).
    pub bmc_credentials: Option<std::path::PathBuf>,
}

impl FleetConfig {
    /// The command-line form, for [`FleetConfig::parse`].
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "--first".into(),
            self.first.to_string(),
            "--count".into(),
            self.count.to_string(),
            "--mode".into(),
            if self.mode == Mode::Full {
                "full"
            } else {
                "serve"
            }
            .into(),
            "--iface".into(),
            self.iface.clone(),
            "--bmc-ip".into(),
            self.bmc_ip.to_string(),
            "--bmc-port".into(),
            self.bmc_port.to_string(),
        ];
        if let Some(p) = &self.bmc_credentials {
            a.push("--bmc-credentials".into());
            a.push(p.display().to_string());
        }
        a
    }

    /// Parses what [`FleetConfig::args`] wrote.
    pub fn parse(args: &[String]) -> Result<FleetConfig> {
        let get = |k: &str| {
            args.iter()
                .position(|a| a == k)
                .and_then(|i| args.get(i + 1))
                .cloned()
                .with_context(|| format!("fleet: {k} is missing"))
        };
        Ok(FleetConfig {
            first: get("--first")?.parse()?,
            count: get("--count")?.parse()?,
            mode: match get("--mode")?.as_str() {
                "full" => Mode::Full,
                "serve" => Mode::Serve,
                other => bail!("fleet: --mode {other} is not full or serve"),
            },
            iface: get("--iface")?,
            bmc_ip: get("--bmc-ip")?.parse()?,
            bmc_port: get("--bmc-port")?.parse()?,
            bmc_credentials: get("--bmc-credentials").ok().map(Into::into),
        })
    }
}

/// What every simulated server shares.
pub struct Fleet {
    hub: Arc<dhcp::Hub>,
    tftp: tftp::Counters,
    mode: Mode,
    iface: String,
    added: tokio::sync::Mutex<HashSet<Ipv4Addr>>,
    finished: AtomicU64,
    failed: AtomicU64,
    t0: std::sync::OnceLock<std::time::Instant>,
}

/// Prints one JSON line on stdout (the orchestrator reads them).
pub fn emit(v: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

impl Fleet {
    /// A lease arrived: the simulated OS configures the address (once) so that its TFTP
    /// and HTTP sockets can use it.
    async fn lease_seen(&self, s: &Server, ip: Ipv4Addr, _prefix: u8) -> Result<()> {
        let mut added = self.added.lock().await;
        if added.insert(ip) {
            let out = tokio::process::Command::new("ip")
                .args(["addr", "add", &format!("{ip}/32"), "dev", &self.iface])
                .output()
                .await?;
            if !out.status.success() {
                bail!(
                    "ip addr add {ip}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        emit(&json!({"event": "lease", "mac": s.mac(), "ip": ip.to_string()}));
        Ok(())
    }

    /// Records that `s` reached `step` in its current boot (seconds since power-on).
    fn step(&self, s: &Server, step: &str) {
        let t = self.t0.get().map_or(0.0, |t| t.elapsed().as_secs_f64());
        let boot = s.boots.load(Ordering::Relaxed);
        emit(&json!({"event": "step", "mac": s.mac(), "boot": boot, "step": step, "t": t}));
    }

    fn report(&self, s: &Server, took: Duration, outcome: Result<String>) {
        let (ok, detail) = match outcome {
            Ok(d) => (true, d),
            Err(e) => (false, format!("{e:#}")),
        };
        if ok {
            self.finished.fetch_add(1, Ordering::SeqCst);
        } else {
            self.failed.fetch_add(1, Ordering::SeqCst);
        }
        emit(&json!({"event": "boot", "mac": s.mac(), "ok": ok,
                     "secs": took.as_secs_f64(), "detail": detail}));
    }

    fn stats(&self, servers: &[Arc<Server>]) -> serde_json::Value {
        let c = &self.hub.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({"event": "stats",
               "dhcpRetransmits": l(&c.retransmits), "dhcpAcks": l(&c.acks), "dhcpNaks": l(&c.naks),
               "tftpTimeouts": l(&self.tftp.timeouts), "tftpGaps": l(&self.tftp.gaps),
               "tftpTransfers": l(&self.tftp.transfers),
               "boots": servers.iter().map(|s| l(&s.boots)).sum::<u64>(),
               "finished": l(&self.finished), "failed": l(&self.failed)})
    }
}

struct Bmc(Arc<Server>);

impl redfish::Machine for Bmc {
    fn is_on(&self) -> bool {
        self.0.is_on()
    }
    fn power(&self, what: redfish::Power) {
        self.0.set_power(what);
    }
}

/// The fleet process: binds the DHCP socket (and in Full mode every BMC), prints
/// `{"event":"ready"}`, waits for a line on stdin, powers every server on at once
/// (`{"event":"powered"}`), then in Serve mode exits after the last boot and in Full mode
/// when stdin closes, printing `{"event":"stats",...}` last.
pub async fn fleet_main(cfg: FleetConfig) -> Result<()> {
    let fleet = Arc::new(Fleet {
        hub: dhcp::Hub::bind().await.context("binding 0.0.0.0:68")?,
        tftp: tftp::Counters::default(),
        mode: cfg.mode,
        iface: cfg.iface.clone(),
        added: tokio::sync::Mutex::default(),
        finished: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        t0: std::sync::OnceLock::new(),
    });
    let servers: Vec<Arc<Server>> = (0..cfg.count)
        .map(|i| {
            let index = cfg.first + i;
            Server::new(index, if index.is_multiple_of(2) { 0 } else { 7 }, &fleet)
        })
        .collect();
    let mut bmcs = Vec::new();
    if cfg.mode == Mode::Full {
        let creds = cfg
            .bmc_credentials
            .as_ref()
            .context("fleet: full mode needs --bmc-credentials")?;
        let text = std::fs::read_to_string(creds)?;
        let (user, password) = text.trim().split_once(':').context("user:password")?;
        let auth = Arc::new(redfish::basic(user, password));
        for s in &servers {
            let port = cfg.bmc_port + s.index as u16;
            let addr = SocketAddr::V4(SocketAddrV4::new(cfg.bmc_ip, port));
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the BMC on {addr}"))?;
            let m: Arc<dyn redfish::Machine> = Arc::new(Bmc(s.clone()));
            bmcs.push(tokio::spawn(redfish::serve(l, m, auth.clone())));
        }
    }
    emit(&json!({"event": "ready"}));
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    stdin.next_line().await?;
    let _ = fleet.t0.set(std::time::Instant::now());
    for s in &servers {
        s.set_power(redfish::Power::On);
    }
    emit(&json!({"event": "powered"}));
    match cfg.mode {
        Mode::Serve => {
            let n = u64::from(cfg.count);
            while fleet.finished.load(Ordering::SeqCst) + fleet.failed.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Mode::Full => while stdin.next_line().await?.is_some() {},
    }
    for s in &servers {
        s.set_power(redfish::Power::Off);
    }
    for b in bmcs {
        b.abort();
    }
    emit(&fleet.stats(&servers));
    Ok(())
}
