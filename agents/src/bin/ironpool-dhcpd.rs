//! Standalone development DHCP server: serves the Subnets of a JSON config file with the
//! agent's DHCP pipeline and lease journal, prints each event as a line on stdout, and the
//! metrics on SIGTERM/SIGINT. Used by the crash tests and the benchmarks.
//!
//! Usage: `ironpool-dhcpd CONFIG.json`. Prints `listening on ADDR` once bound.

use std::collections::HashMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use anyhow::Context;
use ironpool_agents::dhcp::journal::Journal;
use ironpool_agents::dhcp::metrics::DhcpMetrics;
use ironpool_agents::dhcp::{
    BootConfig, DhcpServer, MacAddr, Reservation, ServerConfig, ServerState, SubnetConfig,
};
use ironpool_crds::subnet::SubnetSpec;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// The config file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileConfig {
    listen: SocketAddrV4,
    interface: Option<String>,
    server_ip: Ipv4Addr,
    journal: Option<PathBuf>,
    #[serde(default)]
    relay_port: Option<u16>,
    #[serde(default)]
    client_port: Option<u16>,
    subnets: Vec<FileSubnet>,
    #[serde(default)]
    reservations: Vec<FileReservation>,
    boot_http_base: Option<String>,
    #[serde(default)]
    quiet: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSubnet {
    name: String,
    spec: SubnetSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileReservation {
    mac: String,
    ip: Ipv4Addr,
    hostname: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .context("usage: ironpool-dhcpd CONFIG.json")?;
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let file: FileConfig =
        serde_json::from_str(&text).with_context(|| format!("parsing {path}"))?;

    let mut config = ServerConfig::new(file.server_ip);
    config.relay_port = file.relay_port.unwrap_or(67);
    config.client_port = file.client_port.unwrap_or(68);
    config.boot = file.boot_http_base.map(BootConfig::new);
    let subnets = file
        .subnets
        .iter()
        .map(|s| SubnetConfig::try_from(&s.spec).map(|c| c.named(&s.name)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut state = ServerState::new(config, subnets);
    let mut reservations = HashMap::new();
    for r in file.reservations {
        let mac: MacAddr = r.mac.parse()?;
        reservations.insert(
            mac,
            Reservation {
                ip: r.ip,
                hostname: r.hostname,
            },
        );
    }
    state.set_reservations(reservations);

    let metrics = DhcpMetrics::new();
    let journal = match &file.journal {
        Some(p) => {
            let (j, leases) = Journal::open(p, metrics.clone())?;
            for l in leases {
                state.leases.insert(l);
            }
            Some(j)
        }
        None => None,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
    let mut server = DhcpServer::new(
        state,
        journal.as_ref().map(Journal::handle),
        metrics.clone(),
    );
    if !file.quiet {
        server = server.with_events(tx);
    }
    let socket =
        ironpool_agents::dhcp::server::bind_socket(file.listen, file.interface.as_deref())?;
    println!("listening on {}", socket.local_addr()?);
    std::io::stdout().flush()?;

    let token = CancellationToken::new();
    let events = tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            let ip = e.ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into());
            println!("event {:?} {} {} {}", e.kind, e.mac, ip, e.detail);
        }
    });
    let stop = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        stop.cancel();
    });
    // On a runtime worker, not in `block_on`: the worker that polls the socket then runs
    // the loop itself, with no wake-up of the main thread per packet (as in the agent).
    let ip = file.server_ip;
    tokio::spawn(async move { server.serve(socket, ip, token).await }).await??;
    events.abort();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    println!("{out}");
    if let Some(j) = journal {
        j.close();
    }
    Ok(())
}
