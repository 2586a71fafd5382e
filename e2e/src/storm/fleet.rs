//! What the simulated servers of a boot storm share: the fleet's settings, its DHCP hub,
//! TFTP counters and the JSON lines it prints for the orchestrator. Below `server`, which
//! boots one server through it, and `mod.rs`'s `fleet_main`, which runs them all.

use std::collections::HashSet;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::{dhcp, tftp};

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
    pub(super) hub: Arc<dhcp::Hub>,
    pub(super) tftp: tftp::Counters,
    pub(super) mode: Mode,
    pub(super) iface: String,
    pub(super) added: tokio::sync::Mutex<HashSet<Ipv4Addr>>,
    pub(super) finished: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) t0: std::sync::OnceLock<std::time::Instant>,
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
    pub(super) async fn lease_seen(&self, mac: &str, ip: Ipv4Addr) -> Result<()> {
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
        emit(&json!({"event": "lease", "mac": mac, "ip": ip.to_string()}));
        Ok(())
    }

    /// Records that server `mac` reached `step` in its boot number `boot` (seconds since
    /// power-on).
    pub(super) fn step(&self, mac: &str, boot: u64, step: &str) {
        let t = self.t0.get().map_or(0.0, |t| t.elapsed().as_secs_f64());
        emit(&json!({"event": "step", "mac": mac, "boot": boot, "step": step, "t": t}));
    }

    /// Records how a boot of server `mac` ended.
    pub(super) fn report(&self, mac: &str, took: Duration, outcome: Result<String>) {
        let (ok, detail) = match outcome {
            Ok(d) => (true, d),
            Err(e) => (false, format!("{e:#}")),
        };
        if ok {
            self.finished.fetch_add(1, Ordering::SeqCst);
        } else {
            self.failed.fetch_add(1, Ordering::SeqCst);
        }
        emit(&json!({"event": "boot", "mac": mac, "ok": ok,
                     "secs": took.as_secs_f64(), "detail": detail}));
    }

    /// The fleet's counters, `boots` being the boots of all its servers.
    pub(super) fn stats(&self, boots: u64) -> serde_json::Value {
        let c = &self.hub.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({"event": "stats",
               "dhcpRetransmits": l(&c.retransmits), "dhcpAcks": l(&c.acks), "dhcpNaks": l(&c.naks),
               "tftpTimeouts": l(&self.tftp.timeouts), "tftpGaps": l(&self.tftp.gaps),
               "tftpTransfers": l(&self.tftp.transfers),
               "boots": boots,
               "finished": l(&self.finished), "failed": l(&self.failed)})
    }
}
