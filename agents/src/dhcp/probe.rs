//! ICMP echo probe before offering a dynamic address (RFC 2131 §4.4.1: "the server SHOULD
//! probe the reused address before allocating the address, e.g., with an ICMP echo
//! request"). This is what keeps two agents from handing one address to two MACs when a
//! standby takes a Subnet over: the dead holder's lease journal is gone with it, but its
//! clients still hold (and answer on) their addresses, so the new holder skips them.
//!
//! One raw ICMP socket through socket2's safe API (needs CAP_NET_RAW, which the agent has
//! anyway for port 67), opened at the first probe and shared by every probe after it: a
//! reader task hands each echo reply to the probe waiting for it, matched by ICMP
//! identifier and sequence number and by the address that answered. A socket that fails
//! is replaced at the next probe. The packet building and reply matching are pure.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

/// What a probe found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeResult {
    /// No echo reply within the timeout: the address may be offered.
    Free,
    /// Something answered: the address is in use by a host this server does not know.
    InUse,
    /// The probe could not be sent (no CAP_NET_RAW, no route): offered unprobed.
    Error,
}

impl ProbeResult {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            ProbeResult::Free => "free",
            ProbeResult::InUse => "in_use",
            ProbeResult::Error => "error",
        }
    }
}

/// Sends ICMP echo requests on one shared raw socket and waits for the matching replies.
#[derive(Debug)]
pub struct Prober {
    timeout: Duration,
    ident: u16,
    seq: AtomicU16,
    socket: tokio::sync::Mutex<Option<Open>>,
}

/// The shared socket and the probes waiting on it, by (probed address, sequence number).
#[derive(Debug)]
struct Icmp {
    sock: UdpSocket,
    ident: u16,
    waiting: Mutex<HashMap<(Ipv4Addr, u16), oneshot::Sender<()>>>,
    failed: AtomicBool,
}

/// An open socket and its reader task, stopped when this is dropped.
#[derive(Debug)]
struct Open {
    icmp: Arc<Icmp>,
    reader: AbortHandle,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A probe's place in [`Icmp::waiting`], removed when the probe ends however it ends.
struct Waiting<'a> {
    icmp: &'a Icmp,
    key: (Ipv4Addr, u16),
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.icmp.waiting().remove(&self.key);
    }
}

impl Icmp {
    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<(Ipv4Addr, u16), oneshot::Sender<()>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands every echo reply to the probe waiting for it until receiving fails; then marks
    /// the socket failed and drops the waiters (their probes end as errors).
    async fn read(self: Arc<Self>) {
        let mut buf = [0u8; 1500];
        loop {
            match self.sock.recv_from(&mut buf).await {
                Ok((n, SocketAddr::V4(from))) => {
                    let packet = buf.get(..n).unwrap_or(&[]);
                    if let Some((ident, seq)) = echo_reply(packet)
                        && ident == self.ident
                        && let Some(waiter) = self.waiting().remove(&(*from.ip(), seq))
                    {
                        let _ = waiter.send(());
                    }
                }
                Ok((_, SocketAddr::V6(_))) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "ICMP probe socket failed; opening another");
                    self.failed.store(true, Ordering::Relaxed);
                    self.waiting().clear();
                    return;
                }
            }
        }
    }
}

impl Prober {
    /// A prober waiting `timeout` for each reply. Opens no socket until the first probe.
    pub fn new(timeout: Duration) -> Self {
        Prober {
            timeout,
            ident: (std::process::id() & 0xffff) as u16,
            seq: AtomicU16::new(fastrand::u16(..)),
            socket: tokio::sync::Mutex::new(None),
        }
    }

    /// Probes `ip` once (one echo request, waiting up to the timeout).
    pub async fn probe(&self, ip: Ipv4Addr) -> ProbeResult {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        match self.try_probe(ip, seq).await {
            Ok(true) => ProbeResult::InUse,
            Ok(false) => ProbeResult::Free,
            Err(e) => {
                tracing::warn!(%ip, error = %e, "ICMP probe failed; offering unprobed");
                ProbeResult::Error
            }
        }
    }

    /// The shared socket, opened (with its reader) when there is none or it failed.
    async fn socket(&self) -> std::io::Result<Arc<Icmp>> {
        let mut open = self.socket.lock().await;
        if let Some(o) = open.as_ref()
            && !o.icmp.failed.load(Ordering::Relaxed)
        {
            return Ok(o.icmp.clone());
        }
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
        s.set_nonblocking(true)?;
        // A raw socket driven through tokio's datagram type: recv_from/send_to are the
        // same system calls (the port of the address is ignored).
        let icmp = Arc::new(Icmp {
            sock: UdpSocket::from_std(std::net::UdpSocket::from(s))?,
            ident: self.ident,
            waiting: Mutex::new(HashMap::new()),
            failed: AtomicBool::new(false),
        });
        let reader = tokio::spawn(icmp.clone().read()).abort_handle();
        *open = Some(Open {
            icmp: icmp.clone(),
            reader,
        });
        Ok(icmp)
    }

    async fn try_probe(&self, ip: Ipv4Addr, seq: u16) -> std::io::Result<bool> {
        let icmp = self.socket().await?;
        let (tx, rx) = oneshot::channel();
        icmp.waiting().insert((ip, seq), tx);
        let _waiting = Waiting {
            icmp: &icmp,
            key: (ip, seq),
        };
        let target = SocketAddr::V4(SocketAddrV4::new(ip, 0));
        icmp.sock
            .send_to(&echo_request(self.ident, seq), target)
            .await?;
        match tokio::time::timeout(self.timeout, rx).await {
            Err(_) => Ok(false),
            Ok(Ok(())) => Ok(true),
            Ok(Err(_)) => Err(std::io::Error::other(
                "the ICMP socket failed while waiting for the reply",
            )),
        }
    }
}

/// The Internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = match chunk {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => 0,
        };
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP echo request (type 8) with `ident`, `seq` and a short payload.
pub fn echo_request(ident: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![8, 0, 0, 0];
    p.extend_from_slice(&ident.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(b"ironpool-dhcp-probe");
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// The identifier and sequence number of `packet` (an IPv4 datagram as a raw socket
/// delivers it) when it is an ICMP echo reply (type 0).
pub fn echo_reply(packet: &[u8]) -> Option<(u16, u16)> {
    let first = packet.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let header = usize::from(first & 0x0f) * 4;
    if header < 20 || packet.get(9) != Some(&1) {
        return None;
    }
    match packet.get(header..header + 8)? {
        [0, 0, _, _, i0, i1, s0, s1] => Some((
            u16::from_be_bytes([*i0, *i1]),
            u16::from_be_bytes([*s0, *s1]),
        )),
        _ => None,
    }
}

/// Whether `packet` (an IPv4 datagram as a raw socket delivers it) is the echo reply
/// (type 0) to `ident`/`seq`.
pub fn is_echo_reply(packet: &[u8], ident: u16, seq: u16) -> bool {
    echo_reply(packet) == Some((ident, seq))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ipv4(payload: &[u8], ihl: u8, proto: u8) -> Vec<u8> {
        let mut p = vec![0x40 | ihl, 0, 0, 0, 0, 0, 0, 0, 64, proto];
        p.resize(usize::from(ihl) * 4, 0);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn echo_request_checksums_to_zero() {
        let p = echo_request(0x1234, 7);
        assert_eq!(&p[..2], &[8, 0]);
        assert_eq!(checksum(&p), 0);
        // RFC 1071's example words.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
    }

    #[test]
    fn matches_only_our_echo_reply() {
        let mut reply = echo_request(0x1234, 7);
        reply[0] = 0;
        assert!(is_echo_reply(&ipv4(&reply, 5, 1), 0x1234, 7));
        assert!(is_echo_reply(&ipv4(&reply, 6, 1), 0x1234, 7), "IP options");
        assert!(!is_echo_reply(&ipv4(&reply, 5, 1), 0x1234, 8), "other seq");
        assert!(!is_echo_reply(&ipv4(&reply, 5, 1), 0x4321, 7), "other id");
        assert!(!is_echo_reply(&ipv4(&reply, 5, 17), 0x1234, 7), "not ICMP");
        let request = echo_request(0x1234, 7);
        assert!(
            !is_echo_reply(&ipv4(&request, 5, 1), 0x1234, 7),
            "our own request"
        );
        for short in [&[][..], &[0x45], &ipv4(&reply[..6], 5, 1)[..], &[0x45; 19]] {
            assert!(!is_echo_reply(short, 0x1234, 7));
        }
        assert!(!is_echo_reply(&ipv4(&reply, 2, 1), 0x1234, 7), "IHL < 5");
        assert_eq!(echo_reply(&ipv4(&reply, 5, 1)), Some((0x1234, 7)));
        assert_eq!(echo_reply(&ipv4(&request, 5, 1)), None);
    }
}
