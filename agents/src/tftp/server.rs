//! The TFTP socket side: a listener on the well-known port hands each read request to a
//! thread with its own ephemeral socket, which drives a [`Session`] with ACKs and timeouts
//! ([`super::transfer`]). Write requests and paths outside the root are answered with
//! ERROR packets.

use std::fs::File;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::TftpError;
use super::metrics::TftpMetrics;
use super::packet::{self, Packet, code};
use super::root::resolve;
use super::session::{Limits, Session, negotiate};
use super::transfer::{End, Transfer};

/// Stack of a transfer thread (the data loop keeps its buffers on the heap).
const TRANSFER_STACK: usize = 256 * 1024;

/// One step of a transfer, reported to the agent's flight recorder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TftpEvent {
    /// The client's address (the agent maps it to a MAC through the DHCP leases).
    pub peer: IpAddr,
    /// The requested file name, as sent.
    pub file: String,
    /// What happened.
    pub kind: TftpEventKind,
}

/// Kinds of [`TftpEvent`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TftpEventKind {
    /// The file was opened and the transfer begins.
    Started {
        /// File size in bytes.
        size: u64,
        /// Negotiated block size.
        blksize: usize,
        /// Negotiated window size.
        windowsize: u16,
    },
    /// The last block was acknowledged.
    Completed {
        /// Bytes sent.
        size: u64,
        /// Time from request to the last ACK.
        elapsed: std::time::Duration,
    },
    /// The client ended the transfer after the option acknowledgement with error 8, as
    /// EDK2 does to learn a file's size (`tsize`) before fetching it for real.
    SizeQuery {
        /// File size in bytes.
        size: u64,
    },
    /// The request was refused or the transfer gave up.
    Failed {
        /// Why (file not found, access violation, timeout, client error).
        reason: String,
    },
}

impl TftpEvent {
    /// One line for `status.boot`: `undionly.kpxe: sent 70733 bytes in 0.41 s`.
    pub fn detail(&self) -> String {
        match &self.kind {
            TftpEventKind::Started {
                size,
                blksize,
                windowsize,
            } => format!(
                "{}: started, {size} bytes (blksize {blksize}, windowsize {windowsize})",
                self.file
            ),
            TftpEventKind::Completed { size, elapsed } => format!(
                "{}: sent {size} bytes in {:.2} s",
                self.file,
                elapsed.as_secs_f64()
            ),
            TftpEventKind::SizeQuery { size } => {
                format!("{}: size query answered ({size} bytes)", self.file)
            }
            TftpEventKind::Failed { reason } => format!("{}: failed: {reason}", self.file),
        }
    }
}

/// A read-only TFTP server over a root directory.
#[derive(Clone, Debug)]
pub struct TftpServer {
    root: PathBuf,
    limits: Limits,
    metrics: TftpMetrics,
    max_transfers: usize,
    events: Option<mpsc::Sender<TftpEvent>>,
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
            events: None,
        })
    }

    /// Sends a [`TftpEvent`] for every transfer start, completion and failure to `tx`
    /// (never blocks: a full channel drops the event).
    pub fn with_events(mut self, tx: mpsc::Sender<TftpEvent>) -> Self {
        self.events = Some(tx);
        self
    }

    fn emit(&self, peer: SocketAddr, file: &str, kind: TftpEventKind) {
        if let Some(tx) = &self.events {
            let _ = tx.try_send(TftpEvent {
                peer: peer.ip(),
                file: file.to_string(),
                kind,
            });
        }
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
        socket: tokio::net::UdpSocket,
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
            let (done_tx, done_rx) = oneshot::channel::<()>();
            let thread_stop = stop.clone();
            let spawned = std::thread::Builder::new()
                .name("tftp-transfer".into())
                .stack_size(TRANSFER_STACK)
                .spawn(move || {
                    this.transfer(local_ip, peer, &filename, &options, &thread_stop);
                    let _ = done_tx.send(());
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no thread for a TFTP transfer");
                let _ = socket
                    .send_to(&packet::error(code::UNDEFINED, "server busy"), peer)
                    .await;
                continue;
            }
            // The task holds the transfer's slot until its thread is done (or shutdown).
            transfers.spawn(async move {
                let _permit = permit;
                tokio::select! {
                    () = stop.cancelled() => {}
                    _ = done_rx => {}
                }
            });
        }
        transfers.shutdown().await;
        Ok(())
    }

    /// One transfer on the calling (dedicated) thread: open the file, negotiate, then the
    /// blocking data loop of [`Transfer::run`].
    fn transfer(
        &self,
        local_ip: IpAddr,
        peer: SocketAddr,
        filename: &str,
        options: &[(String, String)],
        stop: &CancellationToken,
    ) {
        let started = std::time::Instant::now();
        let Ok(sock) = UdpSocket::bind(SocketAddr::new(local_ip, 0)) else {
            return;
        };
        if sock.connect(peer).is_err() {
            return;
        }
        let opened = resolve(&self.root, filename).and_then(|p| {
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
                let _ = sock.send(&packet::error(c, &e.to_string()));
                let reason = e.to_string();
                self.emit(peer, filename, TftpEventKind::Failed { reason });
                return;
            }
        };
        let neg = negotiate(options, len, &self.limits);
        let mut session = Session::new(&neg, len, &self.limits);
        let kind = TftpEventKind::Started {
            size: len,
            blksize: neg.blksize,
            windowsize: neg.windowsize,
        };
        self.emit(peer, filename, kind);
        let transfer = Transfer {
            sock: &sock,
            file: &file,
            oack: &neg.oack,
            timeout: neg.timeout,
            blksize: neg.blksize,
            metrics: &self.metrics,
            stop,
        };
        match transfer.run(&mut session) {
            Ok(()) => {
                self.metrics.count("completed");
                let elapsed = started.elapsed();
                let kind = TftpEventKind::Completed { size: len, elapsed };
                self.emit(peer, filename, kind);
            }
            Err(End::SizeQuery) => {
                self.metrics.count("size_query");
                self.emit(peer, filename, TftpEventKind::SizeQuery { size: len });
            }
            Err(End::Failed(why)) => {
                tracing::info!(%peer, file = %filename, %why, "TFTP transfer failed");
                self.metrics.count("failed");
                self.emit(peer, filename, TftpEventKind::Failed { reason: why });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_details_name_the_file_and_size() {
        let ev = |kind| TftpEvent {
            peer: IpAddr::from([10, 0, 0, 5]),
            file: "ipxe.efi".into(),
            kind,
        };
        let cases = [
            (
                TftpEventKind::Started {
                    size: 1000,
                    blksize: 1468,
                    windowsize: 4,
                },
                "ipxe.efi: started, 1000 bytes (blksize 1468, windowsize 4)",
            ),
            (
                TftpEventKind::Completed {
                    size: 1000,
                    elapsed: std::time::Duration::from_millis(420),
                },
                "ipxe.efi: sent 1000 bytes in 0.42 s",
            ),
            (
                TftpEventKind::SizeQuery { size: 1000 },
                "ipxe.efi: size query answered (1000 bytes)",
            ),
            (
                TftpEventKind::Failed {
                    reason: "file not found: ipxe.efi".into(),
                },
                "ipxe.efi: failed: file not found: ipxe.efi",
            ),
        ];
        for (kind, want) in cases {
            assert_eq!(ev(kind).detail(), want);
        }
    }
}
