//! The boot storm's TFTP client: a read request with `blksize` and `windowsize` (RFC 2348,
//! RFC 7440) and `tsize`, as iPXE-capable firmware sends it; one ACK per window, the last
//! in-order block re-ACKed on a gap or a timeout (counted). Timeouts back off from 1 s,
//! doubling to 8 s, and the transfer is given up after 10 in a row (about a minute), as
//! PXE firmware retries before it moves on to its next boot device.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::net::UdpSocket;

/// Options asked for.
pub const BLKSIZE: usize = 1468;
/// Blocks per window asked for.
pub const WINDOWSIZE: u16 = 16;
const FIRST_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_TIMEOUT: Duration = Duration::from_secs(8);
const MAX_TIMEOUTS: u32 = 10;

/// Counters of one fleet.
#[derive(Debug, Default)]
pub struct Counters {
    /// Waits for data that timed out (each followed by a resend of the RRQ or last ACK).
    pub timeouts: AtomicU64,
    /// Blocks that arrived out of order, making the client re-ACK its last in-order block.
    pub gaps: AtomicU64,
    /// Transfers completed.
    pub transfers: AtomicU64,
}

fn rrq(file: &str) -> Vec<u8> {
    let mut p = vec![0, 1];
    for s in [
        file,
        "octet",
        "blksize",
        &BLKSIZE.to_string(),
        "windowsize",
        &WINDOWSIZE.to_string(),
        "tsize",
        "0",
    ] {
        p.extend_from_slice(s.as_bytes());
        p.push(0);
    }
    p
}

fn ack(block: u16) -> [u8; 4] {
    let b = block.to_be_bytes();
    [0, 4, b[0], b[1]]
}

/// Fetches `file` from `server`:69 from a socket bound to `local`; returns its size.
pub async fn fetch(
    local: Ipv4Addr,
    server: Ipv4Addr,
    file: &str,
    counters: &Counters,
) -> Result<u64> {
    let sock = UdpSocket::bind(SocketAddrV4::new(local, 0)).await?;
    let request = rrq(file);
    let first = SocketAddr::V4(SocketAddrV4::new(server, 69));
    sock.send_to(&request, first).await?;
    let mut peer: Option<SocketAddr> = None;
    let (mut blksize, mut window) = (512usize, 1u16);
    let (mut last, mut in_window, mut total, mut timeouts) = (0u16, 0u16, 0u64, 0u32);
    let mut buf = vec![0u8; 65536];
    loop {
        let wait = (FIRST_TIMEOUT * (1 << timeouts.min(3))).min(MAX_TIMEOUT);
        let (n, from) = match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => {
                counters.timeouts.fetch_add(1, Ordering::Relaxed);
                timeouts += 1;
                if timeouts > MAX_TIMEOUTS {
                    bail!("TFTP {file}: {MAX_TIMEOUTS} timeouts in a row");
                }
                match peer {
                    None => sock.send_to(&request, first).await?,
                    Some(p) => sock.send_to(&ack(last), p).await?,
                };
                in_window = 0;
                continue;
            }
        };
        if peer.is_some_and(|p| p != from) {
            continue;
        }
        let pkt = &buf[..n];
        if pkt.len() < 4 {
            continue;
        }
        match u16::from_be_bytes([pkt[0], pkt[1]]) {
            6 => {
                // OACK: read what the server accepted, then ACK block 0.
                let fields: Vec<&[u8]> = pkt[2..].split(|&b| b == 0).collect();
                for kv in fields.chunks(2) {
                    if let [k, v] = kv {
                        let v: usize = String::from_utf8_lossy(v).parse().unwrap_or(0);
                        match String::from_utf8_lossy(k).to_ascii_lowercase().as_str() {
                            "blksize" if v > 0 => blksize = v,
                            "windowsize" if v > 0 => window = v as u16,
                            _ => {}
                        }
                    }
                }
                peer = Some(from);
                timeouts = 0;
                sock.send_to(&ack(0), from).await?;
            }
            3 => {
                peer = Some(from);
                timeouts = 0;
                let block = u16::from_be_bytes([pkt[2], pkt[3]]);
                if block != last.wrapping_add(1) {
                    if block != last {
                        counters.gaps.fetch_add(1, Ordering::Relaxed);
                    }
                    in_window = 0;
                    sock.send_to(&ack(last), from).await?;
                    continue;
                }
                last = block;
                let data = n - 4;
                total += data as u64;
                in_window += 1;
                let done = data < blksize;
                if done || in_window >= window {
                    in_window = 0;
                    sock.send_to(&ack(last), from).await?;
                }
                if done {
                    counters.transfers.fetch_add(1, Ordering::Relaxed);
                    return Ok(total);
                }
            }
            5 => bail!(
                "TFTP {file}: error {}",
                String::from_utf8_lossy(&pkt[4..]).trim_end_matches('\0')
            ),
            _ => {}
        }
    }
}
