//! The TFTP socket side: a listener on the well-known port hands each read request to a
//! task with its own ephemeral socket, which drives a [`Session`] with ACKs and timeouts.
//! Write requests and paths outside the root are answered with ERROR packets.

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::TftpError;
use super::packet::{self, Packet, code};
use super::root::resolve;
use super::session::{Action, Limits, Session, negotiate};

/// Labels of `ironpool_tftp_transfers_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// completed, failed, refused, malformed.
    pub result: String,
}

/// TFTP metrics. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct TftpMetrics {
    /// Transfers and refused/malformed requests by result.
    pub transfers: Family<ResultLabel, Counter>,
    /// DATA packets retransmitted.
    pub retransmits: Counter,
}

impl TftpMetrics {
    /// Registers with the `ironpool_tftp_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("ironpool_tftp");
        sub.register(
            "transfers",
            "TFTP requests by result",
            self.transfers.clone(),
        );
        sub.register(
            "retransmits",
            "TFTP DATA packets sent again after a timeout",
            self.retransmits.clone(),
        );
    }

    /// Counts one request result.
    pub fn count(&self, result: &str) {
        self.transfers
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    /// The count of one result.
    pub fn get(&self, result: &str) -> u64 {
        self.transfers
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .get()
    }
}

/// A read-only TFTP server over a root directory.
#[derive(Clone, Debug)]
pub struct TftpServer {
    root: PathBuf,
    limits: Limits,
    metrics: TftpMetrics,
    max_transfers: usize,
}

impl TftpServer {
    /// A server for `root` (canonicalised here).
    pub fn new(root: impl Into<PathBuf>, metrics: TftpMetrics) -> Result<Self, TftpError> {
        let root = root.into();
        let root = root.canonicalize().map_err(|source| TftpError::Io {
            what: format!("open root {}", root.display()),
            source,
        })?;
        Ok(TftpServer {
            root,
            limits: Limits::default(),
            metrics,
            max_transfers: 512,
        })
    }

    /// Replaces the negotiation limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Serves requests arriving on `socket` (usually port 69) until `token` is cancelled;
    /// running transfers are cancelled too.
    pub async fn serve(
        &self,
        socket: UdpSocket,
        token: CancellationToken,
    ) -> Result<(), TftpError> {
        let local_ip = socket
            .local_addr()
            .map_err(|source| TftpError::Io {
                what: "local address".into(),
                source,
            })?
            .ip();
        let slots = Arc::new(Semaphore::new(self.max_transfers));
        let mut transfers = JoinSet::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let (len, peer) = tokio::select! {
                () = token.cancelled() => break,
                Some(_) = transfers.join_next(), if !transfers.is_empty() => continue,
                r = socket.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(e) => { tracing::warn!(error = %e, "TFTP receive failed"); continue }
                },
            };
            let (filename, options) = match packet::parse(buf.get(..len).unwrap_or(&[])) {
                Ok(Packet::Rrq {
                    filename, options, ..
                }) => (filename, options),
                Ok(Packet::Wrq) => {
                    self.metrics.count("refused");
                    let _ = socket
                        .send_to(&packet::error(code::ACCESS, "read-only server"), peer)
                        .await;
                    continue;
                }
                Ok(_) | Err(_) => {
                    self.metrics.count("malformed");
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                let _ = socket
                    .send_to(&packet::error(code::UNDEFINED, "server busy"), peer)
                    .await;
                continue;
            };
            let this = self.clone();
            let stop = token.child_token();
            transfers.spawn(async move {
                let _permit = permit;
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = this.transfer(local_ip, peer, filename, options) => {}
                }
            });
        }
        transfers.shutdown().await;
        Ok(())
    }

    async fn transfer(
        &self,
        local_ip: IpAddr,
        peer: SocketAddr,
        filename: String,
        options: Vec<(String, String)>,
    ) {
        let Ok(sock) = UdpSocket::bind(SocketAddr::new(local_ip, 0)).await else {
            return;
        };
        if sock.connect(peer).await.is_err() {
            return;
        }
        let opened = resolve(&self.root, &filename).and_then(|p| {
            let f = File::open(&p).map_err(|source| TftpError::Io {
                what: format!("open {}", p.display()),
                source,
            })?;
            let len = f
                .metadata()
                .map_err(|source| TftpError::Io {
                    what: "stat".into(),
                    source,
                })?
                .len();
            Ok((f, len))
        });
        let (file, len) = match opened {
            Ok(x) => x,
            Err(e) => {
                let c = match e {
                    TftpError::NotFound(_) => code::NOT_FOUND,
                    _ => code::ACCESS,
                };
                tracing::info!(%peer, file = %filename, error = %e, "TFTP request refused");
                self.metrics.count("refused");
                let _ = sock.send(&packet::error(c, &e.to_string())).await;
                return;
            }
        };
        let neg = negotiate(&options, len, &self.limits);
        let mut session = Session::new(&neg, len, &self.limits);
        let result = run(
            &sock,
            &file,
            &neg.oack,
            neg.timeout,
            &mut session,
            &self.metrics,
        )
        .await;
        match result {
            Ok(()) => self.metrics.count("completed"),
            Err(why) => {
                tracing::info!(%peer, file = %filename, %why, "TFTP transfer failed");
                self.metrics.count("failed");
            }
        }
    }
}

/// Drives one session over a connected socket.
async fn run(
    sock: &UdpSocket,
    file: &File,
    oack: &[(String, String)],
    timeout: std::time::Duration,
    session: &mut Session,
    metrics: &TftpMetrics,
) -> Result<(), String> {
    let mut action = session.start();
    let mut buf = vec![0u8; 65536];
    let mut out = Vec::with_capacity(65536 + 4);
    let mut highest_sent = 0u64;
    let mut data = Vec::new();
    loop {
        match action {
            Action::Done => return Ok(()),
            Action::Fail(why) => return Err(why),
            Action::SendOack => {
                sock.send(&packet::oack(oack))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Action::SendBlocks(from, to) => {
                for n in from..=to {
                    let (offset, size, wire) = session.block(n);
                    data.resize(size as usize, 0);
                    // Boot files sit in the page cache; a positioned read does not block long.
                    let got = read_full(file, &mut data, offset).map_err(|e| e.to_string())?;
                    out.clear();
                    packet::data(&mut out, wire, data.get(..got).unwrap_or(&[]));
                    sock.send(&out).await.map_err(|e| e.to_string())?;
                    if n <= highest_sent {
                        metrics.retransmits.inc();
                    }
                }
                highest_sent = highest_sent.max(to);
            }
            Action::Wait => {}
        }
        action = match tokio::time::timeout(timeout, sock.recv(&mut buf)).await {
            Err(_) => session.on_timeout(),
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(n)) => match packet::parse(buf.get(..n).unwrap_or(&[])) {
                Ok(Packet::Ack(b)) => session.on_ack(b),
                Ok(Packet::Error(c, m)) => return Err(format!("client error {c}: {m}")),
                _ => Action::Wait,
            },
        };
    }
}

fn read_full(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let n = file.read_at(&mut buf[got..], offset + got as u64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}
