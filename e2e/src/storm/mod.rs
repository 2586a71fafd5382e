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
pub mod fleet;
mod fleet_proc;
pub mod http;
mod metrics;
pub mod peers;
pub mod redfish;
pub mod report;
pub mod server;
pub mod tftp;

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;
use tokio::io::AsyncBufReadExt;

pub use fleet::{Fleet, FleetConfig, Mode, emit};
use server::Server;

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
    let boots = servers
        .iter()
        .map(|s| s.boots.load(Ordering::Relaxed))
        .sum();
    emit(&fleet.stats(boots));
    Ok(())
}
