//! The boot storm's DHCP client: the packets a PXE firmware, iPXE and the ramdisk's busybox
//! `udhcpc` send (DISCOVER, REQUEST with their options), RFC 2131 retransmission with
//! exponential backoff (4 s, 8 s, 16 s, ... +-1 s), counted. One UDP socket on port 68 is
//! shared by every simulated server of a fleet; replies are routed by transaction id.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

const MAGIC: [u8; 4] = [99, 130, 83, 99];

/// Which program sends the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The NIC's PXE firmware: options 93 (arch), 94, 97 (UUID), 60 `PXEClient:...`.
    Firmware,
    /// iPXE after it was loaded: the same, plus user class (77) `iPXE` and option 175.
    Ipxe,
    /// busybox `udhcpc` in the boot ramdisk: hostname, no PXE options.
    Ramdisk,
}

/// Who the client is.
#[derive(Clone, Copy, Debug)]
pub struct Client {
    /// Boot MAC.
    pub mac: [u8; 6],
    /// Client system architecture (option 93): 0 BIOS, 7 x86-64 UEFI.
    pub arch: u16,
    /// SMBIOS UUID (option 97).
    pub uuid: [u8; 16],
}

/// What the server handed out.
#[derive(Clone, Debug)]
pub struct Lease {
    /// Address.
    pub ip: Ipv4Addr,
    /// Prefix length from option 1.
    pub prefix: u8,
    /// Server identifier (option 54).
    pub server: Ipv4Addr,
    /// TFTP server: siaddr, else option 66, else the server identifier.
    pub next_server: Ipv4Addr,
    /// Boot file: option 67, else the `file` field.
    pub bootfile: String,
}

/// A parsed reply.
#[derive(Clone, Debug)]
struct Reply {
    kind: u8,
    yiaddr: Ipv4Addr,
    siaddr: Ipv4Addr,
    file: String,
    options: HashMap<u8, Vec<u8>>,
}

/// Counters of one fleet.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests sent again after a timeout.
    pub retransmits: AtomicU64,
    /// Exchanges that ended with an ACK.
    pub acks: AtomicU64,
    /// NAKs received.
    pub naks: AtomicU64,
}

/// The shared socket and the reply router.
pub struct Hub {
    sock: Arc<UdpSocket>,
    waiters: Mutex<HashMap<u32, mpsc::UnboundedSender<Reply>>>,
    /// Counters.
    pub counters: Counters,
}

impl Hub {
    /// Binds 0.0.0.0:68 with SO_BROADCAST and SO_REUSEADDR (fleets of successive runs
    /// share the port; the servers' replies are broadcast, so each fleet sees them all and
    /// keeps those of its own transactions) and starts the router task.
    pub async fn bind() -> Result<Arc<Hub>> {
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        s.set_reuse_address(true)?;
        s.set_broadcast(true)?;
        s.set_nonblocking(true)?;
        s.bind(&std::net::SocketAddr::from(([0, 0, 0, 0], 68)).into())?;
        let sock = UdpSocket::from_std(s.into())?;
        let hub = Arc::new(Hub {
            sock: Arc::new(sock),
            waiters: Mutex::default(),
            counters: Counters::default(),
        });
        let h = hub.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                let Ok((n, _)) = h.sock.recv_from(&mut buf).await else {
                    return;
                };
                let Some((xid, reply)) = parse(&buf[..n]) else {
                    continue;
                };
                let tx = h.lock().get(&xid).cloned();
                if let Some(tx) = tx {
                    let _ = tx.send(reply);
                }
            }
        });
        Ok(hub)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, mpsc::UnboundedSender<Reply>>> {
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One DORA exchange as `stage` sends it; retransmits with backoff, restarts on NAK.
    pub async fn lease(&self, client: &Client, stage: Stage) -> Result<Lease> {
        for _ in 0..4 {
            let xid: u32 = fastrand::u32(..);
            let (tx, mut rx) = mpsc::unbounded_channel();
            self.lock().insert(xid, tx);
            let r = self.exchange(client, stage, xid, &mut rx).await;
            self.lock().remove(&xid);
            match r {
                Ok(Some(lease)) => {
                    self.counters.acks.fetch_add(1, Ordering::Relaxed);
                    return Ok(lease);
                }
                Ok(None) => continue, // NAK: start over
                Err(e) => return Err(e),
            }
        }
        bail!("four NAKs in a row")
    }

    async fn exchange(
        &self,
        client: &Client,
        stage: Stage,
        xid: u32,
        rx: &mut mpsc::UnboundedReceiver<Reply>,
    ) -> Result<Option<Lease>> {
        let discover = packet(client, stage, xid, 1, None);
        let offer = self.send_until(&discover, rx, |r| r.kind == 2).await?;
        let server = option_ip(&offer.options, 54).unwrap_or(offer.siaddr);
        let request = packet(client, stage, xid, 3, Some((offer.yiaddr, server)));
        let ack = self
            .send_until(&request, rx, |r| r.kind == 5 || r.kind == 6)
            .await?;
        if ack.kind == 6 {
            self.counters.naks.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        let mask = option_ip(&ack.options, 1).unwrap_or(Ipv4Addr::new(255, 255, 255, 0));
        let next_server = if ack.siaddr.is_unspecified() {
            ack.options
                .get(&66)
                .and_then(|v| {
                    String::from_utf8_lossy(v)
                        .trim_end_matches('\0')
                        .parse()
                        .ok()
                })
                .unwrap_or(server)
        } else {
            ack.siaddr
        };
        let bootfile = match ack.options.get(&67) {
            Some(v) => String::from_utf8_lossy(v)
                .trim_end_matches('\0')
                .to_string(),
            None => ack.file.clone(),
        };
        Ok(Some(Lease {
            ip: ack.yiaddr,
            prefix: u32::from(mask).count_ones() as u8,
            server,
            next_server,
            bootfile,
        }))
    }

    /// Sends `pkt` until a reply passes `want`: RFC 2131 section 4.1 timing, 4 s doubling
    /// to 64 s, each randomized by +-1 s; six sends, then an error.
    async fn send_until(
        &self,
        pkt: &[u8],
        rx: &mut mpsc::UnboundedReceiver<Reply>,
        want: impl Fn(&Reply) -> bool,
    ) -> Result<Reply> {
        let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
        let mut base = 4.0f64;
        for attempt in 0..6 {
            if attempt > 0 {
                self.counters.retransmits.fetch_add(1, Ordering::Relaxed);
            }
            self.sock.send_to(pkt, to).await?;
            let wait = Duration::from_secs_f64(base + fastrand::f64() * 2.0 - 1.0);
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(r)) if want(&r) => return Ok(r),
                    Ok(Some(_)) => continue,
                    Ok(None) => bail!("DHCP router stopped"),
                    Err(_) => break,
                }
            }
            base = (base * 2.0).min(64.0);
        }
        bail!("no DHCP answer after 6 sends")
    }
}

fn option_ip(opts: &HashMap<u8, Vec<u8>>, code: u8) -> Option<Ipv4Addr> {
    let v = opts.get(&code)?;
    let b: [u8; 4] = v.get(..4)?.try_into().ok()?;
    Some(Ipv4Addr::from(b))
}

/// Builds a BOOTREQUEST of `kind` (1 DISCOVER, 3 REQUEST) with `stage`'s options; the
/// broadcast flag is set (the simulated NIC cannot take unicast before it has an address).
fn packet(
    c: &Client,
    stage: Stage,
    xid: u32,
    kind: u8,
    request: Option<(Ipv4Addr, Ipv4Addr)>,
) -> Vec<u8> {
    let mut p = vec![0u8; 236];
    p[0] = 1;
    p[1] = 1;
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[10] = 0x80;
    p[28..34].copy_from_slice(&c.mac);
    p.extend_from_slice(&MAGIC);
    let mut opt = |code: u8, v: &[u8]| {
        p.push(code);
        p.push(v.len() as u8);
        p.extend_from_slice(v);
    };
    opt(53, &[kind]);
    if let Some((ip, server)) = request {
        opt(50, &ip.octets());
        opt(54, &server.octets());
    }
    let mut id = vec![1u8];
    id.extend_from_slice(&c.mac);
    opt(61, &id);
    match stage {
        Stage::Firmware | Stage::Ipxe => {
            opt(57, &1472u16.to_be_bytes());
            opt(93, &c.arch.to_be_bytes());
            opt(94, &[1, 2, 1]);
            let mut uuid = vec![0u8];
            uuid.extend_from_slice(&c.uuid);
            opt(97, &uuid);
            let undi = if c.arch == 0 { "002001" } else { "003016" };
            let vci = format!("PXEClient:Arch:{:05}:UNDI:{undi}", c.arch);
            opt(60, vci.as_bytes());
            if stage == Stage::Ipxe {
                // iPXE sends its user class as the raw bytes "iPXE" and feature flags in
                // its encapsulated option 175 (here: HTTP 0x13, PXE 0x21, bzImage 0x18).
                opt(77, b"iPXE");
                opt(175, &[0x13, 1, 1, 0x21, 1, 1, 0x18, 1, 1]);
                opt(
                    55,
                    &[1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, 128, 175],
                );
            } else {
                opt(
                    55,
                    &[
                        1, 2, 3, 5, 6, 11, 12, 13, 15, 16, 17, 18, 43, 54, 60, 67, 128,
                    ],
                );
            }
        }
        Stage::Ramdisk => {
            opt(57, &576u16.to_be_bytes());
            opt(12, b"ironpool-ramdisk");
            opt(55, &[1, 3, 6, 12, 15, 28, 42]);
        }
    }
    p.push(255);
    p
}

/// Parses a BOOTREPLY: (xid, reply) or None when it is not one.
fn parse(b: &[u8]) -> Option<(u32, Reply)> {
    if b.len() < 240 || b[0] != 2 || b[236..240] != MAGIC {
        return None;
    }
    let xid = u32::from_be_bytes(b[4..8].try_into().ok()?);
    let ip = |at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
    let file_end = b[108..236].iter().position(|&x| x == 0).unwrap_or(128);
    let file = String::from_utf8_lossy(&b[108..108 + file_end]).into_owned();
    let mut options = HashMap::new();
    let mut i = 240;
    while i < b.len() {
        let code = b[i];
        if code == 255 {
            break;
        }
        if code == 0 {
            i += 1;
            continue;
        }
        let len = usize::from(*b.get(i + 1)?);
        let v = b.get(i + 2..i + 2 + len)?;
        options
            .entry(code)
            .or_insert_with(Vec::new)
            .extend_from_slice(v);
        i += 2 + len;
    }
    let kind = options.get(&53)?.first().copied()?;
    Some((
        xid,
        Reply {
            kind,
            yiaddr: ip(16),
            siaddr: ip(20),
            file,
            options,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_discover_carries_the_pxe_options_and_a_reply_parses() {
        let c = Client {
            mac: [2, 0, 0, 0, 0, 1],
            arch: 7,
            uuid: [7; 16],
        };
        let p = packet(&c, Stage::Ipxe, 42, 1, None);
        let text = String::from_utf8_lossy(&p);
        assert!(text.contains("PXEClient:Arch:00007:UNDI:003016"));
        assert!(text.contains("iPXE"));
        let mut reply = p.clone();
        reply[0] = 2;
        reply[16..20].copy_from_slice(&[10, 0, 0, 5]);
        // Replace the message type 1 (DISCOVER) with 2 (OFFER).
        reply[242] = 2;
        let (xid, r) = parse(&reply).unwrap();
        assert_eq!((xid, r.kind, r.yiaddr), (42, 2, Ipv4Addr::new(10, 0, 0, 5)));
    }
}
