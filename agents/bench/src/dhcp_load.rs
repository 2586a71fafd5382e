//! A DHCPv4 load generator for `dhcp-bench` (`dhcp-bench load ...`). It drives the same
//! exchanges as `perfdhcp -4` does: full DORA as a relay (giaddr = its own address, from
//! and to port 67), each exchange for a client MAC drawn at random from a fixed set,
//! DISCOVERs at a fixed rate, a REQUEST (requested address and server identifier from the
//! OFFER, same xid) for every OFFER, and an ACK counted only when it is for the offered
//! address; its packets are byte for byte the shape of perfdhcp's (the same options, a
//! client identifier, no padding). Replies that match no exchange, or the wrong one, are
//! counted and ignored.
//!
//! Its loop is perfdhcp's single-thread loop (`-g single`): send the DISCOVERs due,
//! read every reply waiting and answer each OFFER at once, and above 10,000/s never sleep
//! (below, nap when idle). A first version that napped between rounds sent its packets
//! in bursts, and at the same rate Kea spent up to a fifth more CPU per lease than under
//! perfdhcp's even stream. This one's packets are spaced as perfdhcp's are (by packet
//! capture), yet Kea still spends 6-9% more CPU per lease under it; the cause is not
//! known, so the README also compares against Kea's perfdhcp numbers.
//!
//! It exists because perfdhcp spends most of its core in its own code (C++ option objects
//! and the allocator): on the single core this 2-core machine can give the load generator
//! it completes at most about 37,000 exchanges/s (44,000 with tcmalloc), below what a
//! server may take. Here packets are patched in place from a template and replies are read
//! at fixed offsets, with no allocation per packet; the kernel's UDP path is all that is
//! left.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// BOOTP header (236 bytes) plus the magic cookie.
const OPTIONS_AT: usize = 240;
const COOKIE: [u8; 4] = [99, 130, 83, 99];
/// Exchanges tracked at once (a power of two); older ones are forgotten.
const SLOTS: usize = 1 << 21;

/// What one run did.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Counts {
    /// DISCOVERs sent.
    pub discovers: u64,
    /// OFFERs received for an exchange in progress.
    pub offers: u64,
    /// REQUESTs sent (one per OFFER).
    pub requests: u64,
    /// ACKs received for the offered address.
    pub acks: u64,
    /// NAKs received.
    pub naks: u64,
    /// Replies for no exchange in progress, for another client, or an ACK for an address
    /// other than the one offered.
    pub stray: u64,
    /// Time spent in loop rounds that sent or received something: how busy the
    /// generator was (it polls, so its CPU time says nothing).
    pub busy_us: u64,
}

impl Counts {
    /// The line the `load` subcommand prints.
    pub fn line(&self) -> String {
        format!(
            "dhcp-load discovers={} offers={} requests={} acks={} naks={} stray={} busy_us={}",
            self.discovers,
            self.offers,
            self.requests,
            self.acks,
            self.naks,
            self.stray,
            self.busy_us
        )
    }

    /// Parses [`Counts::line`] out of the subcommand's output.
    pub fn parse(text: &str) -> Result<Counts> {
        let line = text
            .lines()
            .find(|l| l.starts_with("dhcp-load "))
            .context("no 'dhcp-load' line in the load generator's output")?;
        let field = |key: &str| -> Result<u64> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .with_context(|| format!("no {key} in {line:?}"))?
                .parse()
                .with_context(|| format!("{key} in {line:?}"))
        };
        Ok(Counts {
            discovers: field("discovers")?,
            offers: field("offers")?,
            requests: field("requests")?,
            acks: field("acks")?,
            naks: field("naks")?,
            stray: field("stray")?,
            busy_us: field("busy_us")?,
        })
    }
}

#[derive(Clone, Copy, Default)]
struct Slot {
    client: u32,
    offered: u32,
    state: u8,
}

const DISCOVERING: u8 = 1;
const REQUESTING: u8 = 2;

/// Client `n`'s MAC: perfdhcp's base MAC 00:0c:01:02:03:04 plus `n`.
fn mac(client: u32) -> [u8; 6] {
    let [_, _, a, b, c, d, e, f] = (0x000c_0102_0304_u64 + u64::from(client)).to_be_bytes();
    [a, b, c, d, e, f]
}

/// The parameter request list perfdhcp sends: mask, broadcast, time offset, router,
/// domain, DNS, host name.
const PRL: [u8; 9] = [55, 7, 1, 28, 2, 3, 15, 6, 12];

/// Where the REQUEST template keeps the requested address (option 50) and the server
/// identifier (option 54).
const REQ_IP_AT: usize = OPTIONS_AT + 3 + 2;
const REQ_SID_AT: usize = REQ_IP_AT + 4 + 2;

/// One packet kind: its bytes and where its client identifier's MAC goes.
struct Template {
    bytes: Vec<u8>,
    cid_at: usize,
}

impl Template {
    /// A packet as perfdhcp builds it: relayed (hops 1, giaddr), `options` from
    /// `OPTIONS_AT`, then a client identifier (option 61, type 1 + MAC) and the end option;
    /// no padding.
    fn new(giaddr: Ipv4Addr, options: &[u8]) -> Template {
        let mut bytes = vec![0u8; OPTIONS_AT];
        bytes[..4].copy_from_slice(&[1, 1, 6, 1]);
        bytes[24..28].copy_from_slice(&giaddr.octets());
        bytes[236..OPTIONS_AT].copy_from_slice(&COOKIE);
        bytes.extend_from_slice(options);
        bytes.extend_from_slice(&[61, 7, 1]);
        let cid_at = bytes.len();
        bytes.extend_from_slice(&[0; 6]);
        bytes.push(255);
        Template { bytes, cid_at }
    }

    /// Sets the xid, the MAC in chaddr and in the client identifier.
    fn patch(&mut self, xid: u32, client: u32) {
        let mac = mac(client);
        self.bytes[4..8].copy_from_slice(&xid.to_be_bytes());
        self.bytes[28..34].copy_from_slice(&mac);
        self.bytes[self.cid_at..self.cid_at + 6].copy_from_slice(&mac);
    }
}

fn templates(giaddr: Ipv4Addr) -> (Template, Template) {
    let mut discover = vec![53, 1, 1];
    discover.extend(PRL);
    let mut request = vec![53, 1, 3, 50, 4, 0, 0, 0, 0, 54, 4, 0, 0, 0, 0];
    request.extend(PRL);
    (
        Template::new(giaddr, &discover),
        Template::new(giaddr, &request),
    )
}

/// A reply's xid, chaddr, yiaddr, message type (option 53) and server identifier (54);
/// `None` for anything that is not a well-formed BOOTREPLY.
fn parse(b: &[u8]) -> Option<(u32, [u8; 6], u32, u8, u32)> {
    if b.len() < OPTIONS_AT || b.first() != Some(&2) || b.get(236..OPTIONS_AT)? != COOKIE {
        return None;
    }
    let u32_at = |at: usize| Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?));
    let xid = u32_at(4)?;
    let yiaddr = u32_at(16)?;
    let chaddr: [u8; 6] = b.get(28..34)?.try_into().ok()?;
    let (mut kind, mut sid) = (0, 0);
    let mut i = OPTIONS_AT;
    while let Some(&code) = b.get(i) {
        match code {
            0 => i += 1,
            255 => break,
            _ => {
                let len = usize::from(*b.get(i + 1)?);
                let value = b.get(i + 2..i + 2 + len)?;
                match (code, value) {
                    (53, [t]) => kind = *t,
                    (54, [a, b, c, d]) => sid = u32::from_be_bytes([*a, *b, *c, *d]),
                    _ => {}
                }
                i += 2 + len;
            }
        }
    }
    Some((xid, chaddr, yiaddr, kind, sid))
}

/// The client draw's seed (any odd number).
const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// xorshift64*: the client draw, cheap and good enough.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Runs from `local` (port 67) against `server` (port 67): `rate` DISCOVERs per second for
/// `secs` seconds, each for one of `clients` MACs, then `wait` for late replies.
pub fn run(
    local: Ipv4Addr,
    server: Ipv4Addr,
    rate: u32,
    secs: u64,
    clients: u32,
    wait: Duration,
) -> Result<Counts> {
    if rate == 0 || clients == 0 {
        bail!("rate and clients must be positive");
    }
    let sock = UdpSocket::bind(SocketAddrV4::new(local, 67))
        .with_context(|| format!("bind {local}:67"))?;
    let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(4 << 20);
    sock.set_nonblocking(true)?;
    let to = SocketAddrV4::new(server, 67);
    let (mut discover, mut request) = templates(local);
    let mut ex = Exchanges {
        slots: vec![Slot::default(); SLOTS],
        counts: Counts::default(),
    };
    // A fixed seed, as perfdhcp has without `-s`: every run draws the same sequence of
    // clients, so a step's clients are mostly those of the steps before it (returning
    // clients, whose lease the server finds) and the rest are new.
    let mut rng = Rng(SEED);
    let mut xid = rng.next() as u32;
    let mut buf = [0u8; 1500];
    let (sending, total) = (Duration::from_secs(secs), Duration::from_secs(secs) + wait);
    let start = Instant::now();
    loop {
        let now = start.elapsed();
        if now >= total {
            break;
        }
        let mut due = false;
        if now < sending {
            let target = (now.as_secs_f64() * f64::from(rate)) as u64 + 1;
            due = ex.counts.discovers < target;
            while ex.counts.discovers < target {
                xid = xid.wrapping_add(1);
                let client = (rng.next() % u64::from(clients)) as u32;
                ex.slots[xid as usize & (SLOTS - 1)] = Slot {
                    client,
                    offered: 0,
                    state: DISCOVERING,
                };
                discover.patch(xid, client);
                sock.send_to(&discover.bytes, to).context("send DISCOVER")?;
                ex.counts.discovers += 1;
            }
        }
        let mut got = false;
        loop {
            let n = match sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("receive"),
            };
            got = true;
            if let Some(reply) = ex.on_reply(buf.get(..n).unwrap_or_default(), &mut request) {
                sock.send_to(reply, to).context("send REQUEST")?;
            }
        }
        if got || due {
            ex.counts.busy_us += (start.elapsed() - now).as_micros() as u64;
        } else if rate < 10_000 {
            // perfdhcp's loop: below 10,000/s, with nothing received and nothing due,
            // `usleep(1)` (about 55 µs with the default timer slack); above, it polls.
            std::thread::sleep(Duration::from_micros(1));
        }
    }
    Ok(ex.counts)
}

/// The exchanges in progress, by xid, and what they came to.
struct Exchanges {
    slots: Vec<Slot>,
    counts: Counts,
}

impl Exchanges {
    /// Takes one reply: an OFFER for an exchange that sent a DISCOVER returns the REQUEST
    /// to send (built in `request`); an ACK for the offered address completes it.
    fn on_reply<'a>(&mut self, bytes: &[u8], request: &'a mut Template) -> Option<&'a [u8]> {
        let Some((xid, chaddr, yiaddr, kind, sid)) = parse(bytes) else {
            self.counts.stray += 1;
            return None;
        };
        let slot = &mut self.slots[xid as usize & (SLOTS - 1)];
        if slot.state == 0 || chaddr != mac(slot.client) {
            self.counts.stray += 1;
            return None;
        }
        match (kind, slot.state) {
            (2, DISCOVERING) => {
                self.counts.offers += 1;
                slot.state = REQUESTING;
                slot.offered = yiaddr;
                request.patch(xid, slot.client);
                request.bytes[REQ_IP_AT..REQ_IP_AT + 4].copy_from_slice(&yiaddr.to_be_bytes());
                request.bytes[REQ_SID_AT..REQ_SID_AT + 4].copy_from_slice(&sid.to_be_bytes());
                self.counts.requests += 1;
                return Some(&request.bytes);
            }
            (5, REQUESTING) if yiaddr == slot.offered => {
                self.counts.acks += 1;
                slot.state = 0;
            }
            (6, REQUESTING) => {
                self.counts.naks += 1;
                slot.state = 0;
            }
            _ => self.counts.stray += 1,
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};
    use dhcproto::{Decodable, Decoder, Encodable};

    /// The templates are DHCP as dhcproto reads it: the right type, relay address, MAC,
    /// xid and, for the REQUEST, the patched requested address and server identifier.
    #[test]
    fn packets_decode_as_the_exchange_they_belong_to() {
        let giaddr = Ipv4Addr::new(10, 64, 0, 2);
        let (mut d, mut r) = templates(giaddr);
        d.patch(7, 0x0102_0304);
        // perfdhcp's sizes: 262 and 274 bytes.
        assert_eq!((d.bytes.len(), r.bytes.len()), (262, 274));
        let m = Message::decode(&mut Decoder::new(&d.bytes)).unwrap();
        assert_eq!(m.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!((m.xid(), m.giaddr(), m.hops()), (7, giaddr, 1));
        let first = [0x00, 0x0c, 0x02, 0x04, 0x06, 0x08];
        assert_eq!(m.chaddr(), &first);
        let mut id = vec![1];
        id.extend(first);
        assert_eq!(
            m.opts().get(dhcproto::v4::OptionCode::ClientIdentifier),
            Some(&DhcpOption::ClientIdentifier(id))
        );
        r.patch(9, 5);
        r.bytes[REQ_IP_AT..REQ_IP_AT + 4].copy_from_slice(&[10, 64, 1, 9]);
        r.bytes[REQ_SID_AT..REQ_SID_AT + 4].copy_from_slice(&[10, 64, 0, 1]);
        let m = Message::decode(&mut Decoder::new(&r.bytes)).unwrap();
        assert_eq!(m.opts().msg_type(), Some(MessageType::Request));
        assert_eq!(m.chaddr(), &mac(5));
        assert_eq!(
            m.opts().get(dhcproto::v4::OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 64, 1, 9)))
        );
        assert_eq!(
            m.opts().get(dhcproto::v4::OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 64, 0, 1)))
        );
    }

    /// Replies are read as dhcproto writes them; requests, truncated and cookie-less
    /// packets are not replies.
    #[test]
    fn replies_are_parsed_and_junk_is_not() {
        let mut m = Message::default();
        m.set_opcode(Opcode::BootReply)
            .set_xid(42)
            .set_yiaddr(Ipv4Addr::new(10, 64, 3, 4))
            .set_chaddr(&mac(77));
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Offer));
        m.opts_mut()
            .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 64, 0, 1)));
        let bytes = m.to_vec().unwrap();
        let (xid, chaddr, yiaddr, kind, sid) = parse(&bytes).unwrap();
        assert_eq!((xid, chaddr, kind), (42, mac(77), 2));
        assert_eq!(Ipv4Addr::from(yiaddr), Ipv4Addr::new(10, 64, 3, 4));
        assert_eq!(Ipv4Addr::from(sid), Ipv4Addr::new(10, 64, 0, 1));
        let (d, _) = templates(Ipv4Addr::LOCALHOST);
        assert!(parse(&d.bytes).is_none(), "a BOOTREQUEST is not a reply");
        assert!(parse(&bytes[..200]).is_none());
        let mut no_cookie = bytes.clone();
        no_cookie[236] = 0;
        assert!(parse(&no_cookie).is_none());
        // An option running past the end is not read beyond it.
        let mut cut = bytes[..OPTIONS_AT + 2].to_vec();
        cut[OPTIONS_AT] = 53;
        cut[OPTIONS_AT + 1] = 9;
        assert!(parse(&cut).is_none());
    }

    fn reply(kind: MessageType, xid: u32, client: u32, yiaddr: Ipv4Addr) -> Vec<u8> {
        let mut m = Message::default();
        m.set_opcode(Opcode::BootReply)
            .set_xid(xid)
            .set_yiaddr(yiaddr)
            .set_chaddr(&mac(client));
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        m.opts_mut()
            .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 64, 0, 1)));
        m.to_vec().unwrap()
    }

    /// An OFFER gets a REQUEST for its address; only an ACK of that address, once,
    /// completes the exchange; replies for other clients or none are stray.
    #[test]
    fn exchanges_complete_only_on_the_right_ack() {
        let (_, mut request) = templates(Ipv4Addr::new(10, 64, 0, 2));
        let mut ex = Exchanges {
            slots: vec![Slot::default(); SLOTS],
            counts: Counts::default(),
        };
        for (xid, client) in [(1, 10), (2, 20)] {
            ex.slots[xid as usize] = Slot {
                client,
                offered: 0,
                state: DISCOVERING,
            };
        }
        let ip = Ipv4Addr::new(10, 64, 1, 1);
        let sent = ex
            .on_reply(&reply(MessageType::Offer, 1, 10, ip), &mut request)
            .unwrap()
            .to_vec();
        let m = Message::decode(&mut Decoder::new(&sent)).unwrap();
        assert_eq!((m.xid(), m.chaddr()), (1, &mac(10)[..]));
        assert_eq!(
            m.opts().get(dhcproto::v4::OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(ip))
        );
        let other = Ipv4Addr::new(10, 64, 1, 2);
        for junk in [
            reply(MessageType::Offer, 1, 10, ip),  // a second OFFER
            reply(MessageType::Ack, 1, 11, ip),    // another client's MAC
            reply(MessageType::Ack, 1, 10, other), // not the offered address
            reply(MessageType::Ack, 99, 10, ip),   // no such exchange
            reply(MessageType::Ack, 2, 20, other), // ACK before any OFFER
        ] {
            assert!(ex.on_reply(&junk, &mut request).is_none());
        }
        assert_eq!(ex.counts.stray, 5);
        assert!(
            ex.on_reply(&reply(MessageType::Ack, 1, 10, ip), &mut request)
                .is_none()
        );
        assert_eq!(ex.counts.acks, 1);
        assert!(
            ex.on_reply(&reply(MessageType::Ack, 1, 10, ip), &mut request)
                .is_none()
        );
        assert_eq!(
            (ex.counts.acks, ex.counts.stray),
            (1, 6),
            "an ACK counts once"
        );
        ex.on_reply(&reply(MessageType::Offer, 2, 20, other), &mut request);
        ex.on_reply(&reply(MessageType::Nak, 2, 20, other), &mut request);
        assert_eq!((ex.counts.offers, ex.counts.naks), (2, 1));
    }

    #[test]
    fn counts_round_trip_through_their_line() {
        let c = Counts {
            discovers: 10,
            offers: 9,
            requests: 9,
            acks: 8,
            naks: 1,
            stray: 2,
            busy_us: 3,
        };
        assert_eq!(Counts::parse(&format!("noise\n{}\n", c.line())).unwrap(), c);
        assert!(Counts::parse("dhcp-load discovers=1").is_err());
    }
}
