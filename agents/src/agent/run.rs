//! Wiring of the agent under one cancellation tree: reflectors, Subnet elections, the DHCP,
//! TFTP and HTTP servers, the power controller, the flight recorder, enlistment and the
//! metrics endpoint. SIGTERM (the root token) stops them all within a bounded drain.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ironpool_crds::machine::BootStep;
use kube::Client;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::adapter::{ApiReportSink, StoreBootSource};
use super::config::{AgentConfig, DhcpSettings, HttpSettings, TokenSecret};
use super::election::Election;
use super::enlist::Enlister;
use super::recorder::{self, FlightRecorder};
use super::serving::Serving;
use super::stores::Stores;
use super::{AgentError, health};
use crate::dhcp::journal::Journal;
use crate::dhcp::metrics::DhcpMetrics;
use crate::dhcp::{BootConfig, DhcpEvent, DhcpEventKind, DhcpServer, ServerConfig, ServerState};
use crate::http::{self, BootEvent, HttpMetrics, HttpServer, ImageCache, ScriptConfig, TokenKey};
use crate::tftp::TftpMetrics;
use crate::tftp::{TftpEvent, TftpServer};

/// How long a Machine's first unwritten boot step waits for the steps after it (so a boot
/// is one or two `status.boot` writes; an `OSBooted` step goes at once).
const BOOT_WINDOW: Duration = Duration::from_secs(2);

/// Runs the agent until `root` is cancelled, then drains for at most `config.drain`.
pub async fn run(
    config: AgentConfig,
    client: Client,
    root: CancellationToken,
) -> Result<(), AgentError> {
    let mut registry = Registry::default();
    let mut tasks: JoinSet<()> = JoinSet::new();
    let stores = Stores::start(&client, config.namespace.as_deref(), &mut tasks, &root);
    let ready = Arc::new(AtomicBool::new(false));
    {
        let (stores, ready) = (stores.clone(), ready.clone());
        tasks.spawn(async move {
            if stores.ready().await {
                ready.store(true, Ordering::Relaxed);
                tracing::info!("stores synced");
            }
        });
    }

    let (dhcp_tx, dhcp_rx) = mpsc::channel(4096);
    let boot = config
        .http
        .as_ref()
        .map(|h| BootConfig::new(h.base_url.clone()));
    let (dhcp, journal) = match &config.dhcp {
        Some(d) => {
            let (server, journal) = start_dhcp(d, boot, dhcp_tx, &mut registry, &mut tasks, &root)?;
            (Some(server), Some(journal))
        }
        None => (None, None),
    };
    let serving = Serving::new(dhcp, stores.clone());
    tasks.spawn(follow_stores(serving.clone(), stores.clone(), root.clone()));

    let (lease_duration, renew_deadline, retry_period) = config.lease;
    let election = Arc::new(Election {
        client: client.clone(),
        node: config.node_name.clone(),
        timing: (lease_duration, renew_deadline, retry_period),
        serving: serving.clone(),
        stores: stores.clone(),
    });
    tasks.spawn(election.supervise(root.clone()));

    let (flight, recorder_task) = recorder::spawn(
        client.clone(),
        stores.clone(),
        &config.node_name,
        BOOT_WINDOW,
        root.clone(),
    );
    tasks.spawn(async move {
        let _ = recorder_task.await;
    });
    let enlister = Enlister::new(client.clone(), stores.clone(), config.enlist_per_minute);
    registry.register(
        "ironpool_agent_enlisted",
        "Machines created for unknown MACs",
        enlister.created.clone(),
    );
    registry.register(
        "ironpool_agent_enlist_rate_limited",
        "Enlistments postponed by the rate limit",
        enlister.limited.clone(),
    );

    let (tftp_tx, tftp_rx) = mpsc::channel(1024);
    if let Some((addr, dir)) = &config.tftp {
        let metrics = TftpMetrics::default();
        metrics.register(&mut registry);
        let server = TftpServer::new(dir.clone(), metrics)?.with_events(tftp_tx);
        let socket = tokio::net::UdpSocket::bind(addr)
            .await
            .map_err(|source| AgentError::Io {
                what: format!("bind TFTP on {addr}"),
                source,
            })?;
        tracing::info!(addr = %socket.local_addr().map_err(|source| AgentError::Io { what: "TFTP address".into(), source })?, root = %dir.display(), "TFTP listening");
        let token = root.clone();
        tasks.spawn(async move {
            if let Err(e) = server.serve(socket, token).await {
                tracing::error!(error = %e, "TFTP server stopped");
            }
        });
    }

    let (http_tx, http_rx) = mpsc::channel(4096);
    if let Some(h) = &config.http {
        start_http(
            h,
            &client,
            &stores,
            http_tx,
            &mut registry,
            &mut tasks,
            &root,
        )
        .await?;
    }

    let metrics = crate::power::Metrics::default();
    if let Some(power) = config.power_config(metrics.clone()) {
        metrics.register(&mut registry);
        let (client, token) = (client.clone(), root.clone());
        tasks.spawn(async move {
            if let Err(e) = crate::power::run(client, power, token).await {
                tracing::error!(error = %e, "power controller stopped");
            }
        });
    }

    let pump = Pump {
        flight,
        enlister,
        serving,
        ready: ready.clone(),
    };
    tasks.spawn(pump.run(dhcp_rx, http_rx, tftp_rx, root.clone()));

    let (addr, health_task) =
        health::serve(config.metrics_listen, registry, ready, root.clone()).await?;
    tracing::info!(%addr, node = %config.node_name, "agent started; metrics listening");

    root.cancelled().await;
    tracing::info!(drain = ?config.drain, "shutting down");
    let drained = tokio::time::timeout(config.drain, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "drain deadline passed; abandoning tasks"
        );
        tasks.abort_all();
    }
    let _ = health_task.await;
    if let Some(j) = journal {
        j.close();
    }
    tracing::info!("agent stopped");
    Ok(())
}

fn start_dhcp(
    d: &DhcpSettings,
    boot: Option<BootConfig>,
    tx: mpsc::Sender<DhcpEvent>,
    registry: &mut Registry,
    tasks: &mut JoinSet<()>,
    root: &CancellationToken,
) -> Result<(DhcpServer, Journal), AgentError> {
    let metrics = DhcpMetrics::new();
    metrics.register(registry);
    if let Some(dir) = d.journal.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| AgentError::Io {
            what: format!("create {}", dir.display()),
            source,
        })?;
    }
    let (journal, leases) = Journal::open(&d.journal, metrics.clone())?;
    let mut config = ServerConfig::new(d.server_ip);
    config.boot = boot;
    let mut state = ServerState::new(config, Vec::new());
    for l in leases {
        state.leases.insert(l);
    }
    let mut server = DhcpServer::new(state, Some(journal.handle()), metrics).with_events(tx);
    if let Some(timeout) = d.probe {
        server = server.with_prober(crate::dhcp::probe::Prober::new(timeout));
    }
    let socket = crate::dhcp::server::bind_socket(d.listen, d.interface.as_deref())?;
    tracing::info!(listen = %d.listen, interface = ?d.interface, server_ip = %d.server_ip, "DHCP listening");
    let (s, ip, token) = (server.clone(), d.server_ip, root.clone());
    tasks.spawn(async move {
        if let Err(e) = s.serve(socket, ip, token).await {
            tracing::error!(error = %e, "DHCP server stopped");
        }
    });
    Ok((server, journal))
}

async fn start_http(
    h: &HttpSettings,
    client: &Client,
    stores: &Stores,
    tx: mpsc::Sender<BootEvent>,
    registry: &mut Registry,
    tasks: &mut JoinSet<()>,
    root: &CancellationToken,
) -> Result<(), AgentError> {
    let secret = match &h.token_secret {
        TokenSecret::Inline(s) => s.as_bytes().to_vec(),
        TokenSecret::File(p) => std::fs::read(p).map_err(|source| AgentError::Io {
            what: format!("read token secret {}", p.display()),
            source,
        })?,
    };
    let metrics = HttpMetrics::new();
    metrics.register(registry);
    let mut config = http::ServerConfig::new(
        ScriptConfig::new(&h.base_url, &h.kernel_args)?,
        h.assets_dir.clone(),
    );
    config.boot_files_dir = Some(h.boot_files_dir.clone());
    let server = HttpServer {
        config,
        keys: TokenKey::new(&secret)?,
        source: Arc::new(StoreBootSource {
            stores: stores.clone(),
            client: client.clone(),
        }),
        sink: Arc::new(ApiReportSink {
            client: client.clone(),
        }),
        cache: ImageCache::open(&h.cache.0, h.cache.1, metrics.clone())?,
        metrics,
        events: tx,
    };
    let listener = tokio::net::TcpListener::bind(h.listen)
        .await
        .map_err(|source| AgentError::Io {
            what: format!("bind HTTP on {}", h.listen),
            source,
        })?;
    let token = root.clone();
    tasks.spawn(async move {
        if let Err(e) = server.serve(listener, token).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok(())
}

/// Keeps the DHCP server's subnets and reservations in step with the stores.
async fn follow_stores(serving: Serving, stores: Stores, cancel: CancellationToken) {
    let mut changes = stores.changes();
    loop {
        serving.sync();
        tokio::select! {
            () = cancel.cancelled() => return,
            r = changes.changed() => if r.is_err() { return },
        }
    }
}

/// Routes DHCP and HTTP events to the flight recorder (known MACs) and enlistment
/// (unknown MACs).
struct Pump {
    flight: FlightRecorder,
    enlister: Arc<Enlister>,
    serving: Serving,
    ready: Arc<AtomicBool>,
}

fn dhcp_step(kind: DhcpEventKind) -> Option<BootStep> {
    match kind {
        DhcpEventKind::Discover => Some(BootStep::DhcpDiscover),
        DhcpEventKind::Offer => Some(BootStep::DhcpOffer),
        DhcpEventKind::Ack => Some(BootStep::DhcpAck),
        DhcpEventKind::Nak => Some(BootStep::DhcpNak),
        DhcpEventKind::Decline | DhcpEventKind::Release => None,
    }
}

impl Pump {
    async fn run(
        self,
        mut dhcp: mpsc::Receiver<DhcpEvent>,
        mut http: mpsc::Receiver<BootEvent>,
        mut tftp: mpsc::Receiver<TftpEvent>,
        cancel: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                Some(e) = dhcp.recv() => self.dhcp(e),
                Some(e) = http.recv() => self.http(e),
                Some(e) = tftp.recv() => self.tftp(e),
                else => return,
            }
        }
    }

    fn dhcp(&self, e: DhcpEvent) {
        let Some(step) = dhcp_step(e.kind) else {
            return;
        };
        let detail = match (e.ip, e.detail.is_empty()) {
            (Some(ip), false) => format!("{ip}, {}", e.detail),
            (Some(ip), true) => ip.to_string(),
            (None, _) => e.detail.clone(),
        };
        // The pipeline reports one event per request: an answered DISCOVER arrives as its
        // Offer, so the DISCOVER step is recorded here.
        if e.kind == DhcpEventKind::Offer {
            self.flight
                .record(e.mac, BootStep::DhcpDiscover, String::new());
        }
        self.flight.record(e.mac, step, detail);
        if !e.known {
            self.enlist(e.mac, e.ip, e.arch);
        }
    }

    fn http(&self, e: BootEvent) {
        self.flight.record(e.mac, e.step, e.detail);
        if !e.known && e.step == BootStep::ScriptFetched {
            self.enlist(e.mac, None, None);
        }
    }

    /// TFTP transfers carry only the client's address: the DHCP lease or reservation of
    /// that address names the MAC (a transfer from an unknown address is not recorded).
    fn tftp(&self, e: TftpEvent) {
        match self.serving.mac_of(e.peer) {
            Some(mac) => self.flight.record(mac, BootStep::TftpRead, e.detail()),
            None => tracing::debug!(peer = %e.peer, file = %e.file, "TFTP client without a lease"),
        }
    }

    /// Enlists `mac` (firmware `arch`, if known) on the served Subnet holding `ip`, or on
    /// the only served Subnet.
    fn enlist(
        &self,
        mac: crate::dhcp::MacAddr,
        ip: Option<Ipv4Addr>,
        arch: Option<crate::dhcp::pxe::Arch>,
    ) {
        if !self.ready.load(Ordering::Relaxed) {
            return;
        }
        let served = self.serving.served();
        let subnet = match ip {
            Some(ip) => served.iter().find(|s| s.config.contains(ip)),
            None if served.len() == 1 => served.first(),
            None => None,
        };
        if let Some(s) = subnet {
            self.enlister
                .report(mac, &s.namespace, &s.config.name, arch);
        }
    }
}
