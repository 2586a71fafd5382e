//! ICMP echo probe before offering a dynamic address (RFC 2131 §4.4.1: "the server SHOULD
//! probe the reused address before allocating the address, e.g., with an ICMP echo
//! request"). This is what keeps two agents from handing one address to two MACs when a
//! standby takes a Subnet over: the dead holder's lease journal is gone with it, but its
//! clients still hold (and answer on) their addresses, so the new holder skips them.
//!
//! A raw ICMP socket through socket2's safe API (needs CAP_NET_RAW, which the agent has
//! anyway for port 67), one per probe; the packet building and reply matching are pure.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

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

/// Sends ICMP echo requests and waits for the matching reply.
#[derive(Debug)]
pub struct Prober {
    timeout: Duration,
    ident: u16,
    seq: AtomicU16,
}

impl Prober {
    /// A prober waiting `timeout` for each reply.
    pub fn new(timeout: Duration) -> Self {
        Prober {
            timeout,
            ident: (std::process::id() & 0xffff) as u16,
            seq: AtomicU16::new(fastrand::u16(..)),
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

    async fn try_probe(&self, ip: Ipv4Addr, seq: u16) -> std::io::Result<bool> {
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
        s.set_nonblocking(true)?;
        // A raw socket driven through tokio's datagram type: recv_from/send_to are the
        // same system calls (the port of the address is ignored).
        let sock = tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(s))?;
        let target = SocketAddr::V4(SocketAddrV4::new(ip, 0));
        sock.send_to(&echo_request(self.ident, seq), target).await?;
        let deadline = Instant::now() + self.timeout;
        let mut buf = [0u8; 1500];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            match tokio::time::timeout(left, sock.recv_from(&mut buf)).await {
                Err(_) => return Ok(false),
                Ok(Err(e)) => return Err(e),
                Ok(Ok((n, from))) => {
                    let from_ip = match from {
                        SocketAddr::V4(a) => *a.ip(),
                        SocketAddr::V6(_) => continue,
                    };
                    let packet = buf.get(..n).unwrap_or(&[]);
                    if from_ip == ip && is_echo_reply(packet, self.ident, seq) {
                        return Ok(true);
                    }
                }
            }
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

/// Whether `packet` (an IPv4 datagram as a raw socket delivers it) is the echo reply
/// (type 0) to `ident`/`seq`.
pub fn is_echo_reply(packet: &[u8], ident: u16, seq: u16) -> bool {
    let Some(first) = packet.first() else {
        return false;
    };
    if first >> 4 != 4 {
        return false;
    }
    let header = usize::from(first & 0x0f) * 4;
    if header < 20 || packet.get(9) != Some(&1) {
        return false;
    }
    match packet.get(header..header + 8) {
        Some([0, 0, _, _, i0, i1, s0, s1]) => {
            u16::from_be_bytes([*i0, *i1]) == ident && u16::from_be_bytes([*s0, *s1]) == seq
        }
        _ => false,
    }
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
    }
}
