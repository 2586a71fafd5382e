//! The DHCP socket loop: receives on an already-bound socket, decodes (malformed packets
//! are dropped and counted), asks the pure pipeline, applies its effects, waits for the
//! journal where a dynamic lease was bound (group commit), and sends the reply — each
//! packet under a deadline. Shutdown through a CancellationToken with a bounded drain.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dhcproto::v4::{Message, MessageType};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::journal::{JournalHandle, Record};
use super::metrics::DhcpMetrics;
use super::outbox::{Outbox, Outgoing};
use super::pipeline::{Decision, Effect, ReplyTo, Request, ServerState, handle};
use super::probe::{ProbeResult, Prober};
use super::{DhcpError, DhcpEvent, MacAddr};

/// Binds a UDP socket for DHCP: SO_REUSEADDR, SO_BROADCAST, and SO_BINDTODEVICE to
/// `interface` when given (so limited broadcasts leave through it and only its packets
/// arrive). All through socket2's safe API: no unsafe code.
pub fn bind_socket(addr: SocketAddrV4, interface: Option<&str>) -> Result<UdpSocket, DhcpError> {
    let what = format!(
        "bind {addr}{}",
        interface.map(|i| format!(" on {i}")).unwrap_or_default()
    );
    let err = |source| DhcpError::Socket {
        what: what.clone(),
        source,
    };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    s.set_broadcast(true).map_err(err)?;
    if let Some(dev) = interface {
        s.bind_device(Some(dev.as_bytes())).map_err(err)?;
    }
    // Bursts of DISCOVERs (a rack powering on) must not overflow the default buffer.
    let _ = s.set_recv_buffer_size(4 << 20);
    s.set_nonblocking(true).map_err(err)?;
    s.bind(&SocketAddr::V4(addr).into()).map_err(err)?;
    UdpSocket::from_std(s.into()).map_err(err)
}

/// The DHCP server: shared state, journal, metrics and event sink.
#[derive(Clone, Debug)]
pub struct DhcpServer {
    /// Decision state (reservations, leases). Shared so the agent can update reservations.
    pub state: Arc<Mutex<ServerState>>,
    journal: Option<JournalHandle>,
    metrics: DhcpMetrics,
    events: Option<mpsc::Sender<DhcpEvent>>,
    /// Time allowed from receipt to reply (journal wait included).
    pub deadline: Duration,
    /// Time allowed for in-flight replies after shutdown is requested.
    pub drain: Duration,
    prober: Option<Arc<Prober>>,
    /// MACs whose OFFER waits for a probe (their retransmitted DISCOVERs are dropped).
    probing: Arc<Mutex<HashSet<MacAddr>>>,
}

/// Datagrams handled per wake-up of the socket loop before its replies are flushed.
const RECV_BATCH: usize = 64;

/// Addresses probed for one DISCOVER before giving up on it (the client will ask again).
const PROBE_ROUNDS: usize = 4;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn type_label(msg: &Message) -> &'static str {
    match msg.opts().msg_type() {
        Some(MessageType::Discover) => "discover",
        Some(MessageType::Request) => "request",
        Some(MessageType::Decline) => "decline",
        Some(MessageType::Release) => "release",
        Some(MessageType::Inform) => "inform",
        Some(_) => "other",
        None => "none",
    }
}

impl DhcpServer {
    /// A server over `state`; `journal` makes dynamic leases durable before their ACK.
    pub fn new(state: ServerState, journal: Option<JournalHandle>, metrics: DhcpMetrics) -> Self {
        DhcpServer {
            state: Arc::new(Mutex::new(state)),
            journal,
            metrics,
            events: None,
            deadline: Duration::from_secs(2),
            drain: Duration::from_secs(2),
            prober: None,
            probing: Arc::default(),
        }
    }

    /// Probes every dynamic address with an ICMP echo before offering it; an address that
    /// answers is quarantined and the next one is tried (see [`super::probe`]).
    pub fn with_prober(mut self, prober: Prober) -> Self {
        self.prober = Some(Arc::new(prober));
        self
    }

    /// Sends [`DhcpEvent`]s to `tx` (never blocks: a full channel drops and counts).
    pub fn with_events(mut self, tx: mpsc::Sender<DhcpEvent>) -> Self {
        self.events = Some(tx);
        self
    }

    /// Serves `socket` until `token` is cancelled; `interface_ip` is the agent's address on
    /// the socket's network (selects the Subnet of non-relayed requests). ACKs still
    /// waiting for the journal get up to `drain` to leave after cancellation.
    pub async fn serve(
        &self,
        socket: UdpSocket,
        interface_ip: Ipv4Addr,
        token: CancellationToken,
    ) -> Result<(), DhcpError> {
        // ACKs that wait for the lease journal are sent by its writer thread right after the
        // group commit, through a second handle of the same socket: no task, channel or
        // runtime wake-up per ACK (those were most of the cost of a lease).
        let durable_sender = Arc::new(std_clone(&socket)?);
        let inflight = Arc::new(AtomicUsize::new(0));
        let mut buf = vec![0u8; 4096];
        let mut outbox = Outbox::default();
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                r = socket.readable() => if let Err(e) = r {
                    tracing::warn!(error = %e, "DHCP receive failed");
                    continue;
                },
            }
            // Everything already queued on the socket (up to RECV_BATCH datagrams) is
            // handled in this one wake-up, and the replies that need no journal leave
            // together with one sendmmsg.
            for _ in 0..RECV_BATCH {
                let len = match socket.try_recv_from(&mut buf) {
                    Ok((len, _peer)) => len,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "DHCP receive failed");
                        break;
                    }
                };
                let packet = buf.get(..len).unwrap_or(&[]);
                self.on_packet(
                    packet,
                    interface_ip,
                    &durable_sender,
                    &inflight,
                    &mut outbox,
                );
            }
            outbox.flush(&self.metrics);
        }
        let until = Instant::now() + self.drain;
        while inflight.load(Ordering::SeqCst) > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let left = inflight.load(Ordering::SeqCst);
        if left > 0 {
            tracing::warn!(left, "DHCP drain timed out; abandoning in-flight replies");
        }
        Ok(())
    }

    /// Handles one datagram: decode, decide, apply; queues a reply that needs no journal
    /// in `outbox`, hands a durable one to the journal (its writer thread sends it after
    /// the group commit), or spawns the probe of the address to offer.
    fn on_packet(
        &self,
        packet: &[u8],
        interface_ip: Ipv4Addr,
        durable_sender: &Arc<std::net::UdpSocket>,
        inflight: &Arc<AtomicUsize>,
        outbox: &mut Outbox,
    ) {
        let received = Instant::now();
        let Some(msg) = decode(packet) else {
            self.metrics.packet("malformed", "dropped");
            return;
        };
        let label = type_label(&msg);
        if self.prober.is_some() && self.is_probing(&msg) {
            self.metrics.packet(label, "probing");
            return;
        }
        let decision = self.decide(&msg, interface_ip);
        if decision.probe.is_some()
            && let (Some(prober), Some(mac)) =
                (self.prober.clone(), MacAddr::from_chaddr(msg.chaddr()))
        {
            let probing = ProbingGuard::new(&self.probing, mac);
            let (this, sender) = (self.clone(), Arc::clone(durable_sender));
            tokio::spawn(async move {
                let _probing = probing;
                this.offer_after_probe(&prober, msg, interface_ip, decision, &sender)
                    .await;
            });
            return;
        }
        self.metrics.packet(label, decision.outcome.label());
        let durable = self.durable_record(&decision);
        let Decision { reply, event, .. } = decision;
        if let Some(ev) = event {
            self.emit(ev);
        }
        let Some((reply, to)) = reply else {
            return;
        };
        let dest = self.dest(to);
        let Some(bytes) = encode(&reply) else {
            self.metrics.packet(label, "encode_error");
            return;
        };
        let out = Outgoing {
            socket: Arc::clone(durable_sender),
            bytes,
            dest,
            label,
            inflight: None,
        };
        let Some((journal, record)) = durable else {
            outbox.push(out);
            return;
        };
        let (metrics, deadline) = (self.metrics.clone(), self.deadline);
        let pending = Arc::clone(inflight);
        pending.fetch_add(1, Ordering::SeqCst);
        let then = Box::new(move |r: Result<(), String>, outbox: &mut Outbox| {
            match r {
                Ok(()) if received.elapsed() <= deadline => {
                    // In flight until the writer's sendmmsg has handed it to the kernel.
                    outbox.push(Outgoing {
                        inflight: Some(pending),
                        ..out
                    });
                    return;
                }
                Ok(()) => metrics.packet(label, "deadline"),
                Err(e) => {
                    tracing::error!(error = %e, "lease not durable; ACK withheld");
                    metrics.packet(label, "journal_error");
                }
            }
            pending.fetch_sub(1, Ordering::SeqCst);
        });
        if journal.commit_then(record, then).is_err() {
            // The callback was dropped unrun with the command.
            inflight.fetch_sub(1, Ordering::SeqCst);
            tracing::error!("lease journal closed; ACK withheld");
            self.metrics.packet(label, "journal_error");
        }
    }

    fn is_probing(&self, msg: &Message) -> bool {
        let Some(mac) = MacAddr::from_chaddr(msg.chaddr()) else {
            return false;
        };
        msg.opts().msg_type() == Some(MessageType::Discover)
            && self
                .probing
                .lock()
                .is_ok_and(|probing| probing.contains(&mac))
    }

    /// Probes the address `decision` offers; while a host answers on it, quarantines it and
    /// decides again (at most [`PROBE_ROUNDS`] addresses), then sends the final OFFER.
    async fn offer_after_probe(
        &self,
        prober: &Prober,
        msg: Message,
        interface_ip: Ipv4Addr,
        mut decision: Decision,
        sender: &std::net::UdpSocket,
    ) {
        let label = type_label(&msg);
        let mut rounds = 0;
        while let Some(ip) = decision.probe {
            let result = prober.probe(ip).await;
            self.metrics.probe(result.label());
            if result != ProbeResult::InUse {
                break;
            }
            rounds += 1;
            tracing::warn!(%ip, "address answers ICMP echo but has no lease here; quarantined");
            if let Ok(mut state) = self.state.lock() {
                let until = unix_now() + u64::from(state.config.quarantine_secs);
                state.apply(&Effect::Abandon(ip, until));
            }
            if rounds == PROBE_ROUNDS {
                self.metrics.packet(label, "probe_exhausted");
                return;
            }
            decision = self.decide(&msg, interface_ip);
        }
        self.metrics.packet(label, decision.outcome.label());
        let Decision { reply, event, .. } = decision;
        if let Some(ev) = event {
            self.emit(ev);
        }
        if let Some((reply, to)) = reply {
            send_blocking(sender, &reply, self.dest(to), &self.metrics, label);
        }
    }

    /// Runs the pipeline under the state lock and applies its effects; releases and
    /// declines are journalled without waiting.
    fn decide(&self, msg: &Message, interface_ip: Ipv4Addr) -> Decision {
        let now = unix_now();
        let Ok(mut state) = self.state.lock() else {
            return Decision {
                reply: None,
                effects: Vec::new(),
                event: None,
                outcome: super::Outcome::Ignored,
                probe: None,
            };
        };
        let decision = handle(&Request { msg, interface_ip }, &state, now);
        for e in &decision.effects {
            state.apply(e);
            if let (Effect::Free(mac, ip), Some(j)) = (e, &self.journal)
                && j.append(Record::Free { mac: *mac, ip: *ip }).is_err()
            {
                tracing::error!("lease journal closed; release not recorded");
            }
        }
        decision
    }

    fn durable_record(&self, d: &Decision) -> Option<(JournalHandle, Record)> {
        let journal = self.journal.clone()?;
        d.effects.iter().find_map(|e| match e {
            Effect::Bind {
                lease,
                durable: true,
            } => Some((
                journal.clone(),
                Record::Bind {
                    mac: lease.mac,
                    ip: lease.ip,
                    expires: lease.expires,
                },
            )),
            _ => None,
        })
    }

    fn dest(&self, to: ReplyTo) -> SocketAddrV4 {
        let Ok(state) = self.state.lock() else {
            return SocketAddrV4::new(Ipv4Addr::BROADCAST, 68);
        };
        let c = &state.config;
        match to {
            ReplyTo::Relay(ip) => SocketAddrV4::new(ip, c.relay_port),
            ReplyTo::Unicast(ip) => SocketAddrV4::new(ip, c.client_port),
            ReplyTo::Broadcast => SocketAddrV4::new(Ipv4Addr::BROADCAST, c.client_port),
        }
    }

    fn emit(&self, ev: DhcpEvent) {
        if let Some(tx) = &self.events
            && tx.try_send(ev).is_err()
        {
            self.metrics.events_dropped.inc();
        }
    }
}

/// Decodes a packet; `None` for anything malformed (a decoder panic is caught too).
pub fn decode(bytes: &[u8]) -> Option<Message> {
    // 236 bytes of BOOTP header, then the magic cookie (RFC 2131 §3): without it the
    // datagram is not DHCP (dhcproto would decode it anyway).
    if bytes.len() < 240 || bytes.get(236..240) != Some(&[99, 130, 83, 99][..]) {
        return None;
    }
    let msg = std::panic::catch_unwind(|| Message::decode(&mut Decoder::new(bytes)).ok())
        .ok()
        .flatten()?;
    // dhcproto's `chaddr()` slices by `hlen` and panics beyond 16: reject such packets here.
    (usize::from(msg.hlen()) <= 16).then_some(msg)
}

/// Encodes a reply into a buffer sized for it at once (`to_vec` grows from empty, five
/// reallocations for a 300-byte reply).
fn encode(reply: &Message) -> Option<Vec<u8>> {
    let mut bytes = Vec::with_capacity(576);
    reply.encode(&mut Encoder::new(&mut bytes)).ok()?;
    Some(bytes)
}

/// A second, blocking-API handle of `socket` (a dup of the same descriptor, so the same
/// bound address and options), for sends from the journal's writer thread.
fn std_clone(socket: &UdpSocket) -> Result<std::net::UdpSocket, DhcpError> {
    socket2::SockRef::from(socket)
        .try_clone()
        .map(std::net::UdpSocket::from)
        .map_err(|source| DhcpError::Socket {
            what: "clone the DHCP socket for the journal thread".into(),
            source,
        })
}

/// Sends from a plain thread. The descriptor is non-blocking; a full send buffer (never
/// seen with UDP at DHCP rates) drops the reply like a lost packet, and is counted.
fn send_blocking(
    socket: &std::net::UdpSocket,
    reply: &Message,
    dest: SocketAddrV4,
    metrics: &DhcpMetrics,
    label: &'static str,
) {
    let Some(bytes) = encode(reply) else {
        metrics.packet(label, "encode_error");
        return;
    };
    if let Err(e) = socket.send_to(&bytes, dest) {
        tracing::warn!(%dest, error = %e, "DHCP send failed");
        metrics.packet(label, "send_error");
    }
}

/// Holds a MAC in the probing set; removes it on drop (however the probe task ends).
struct ProbingGuard {
    set: Arc<Mutex<HashSet<MacAddr>>>,
    mac: MacAddr,
}

impl ProbingGuard {
    fn new(set: &Arc<Mutex<HashSet<MacAddr>>>, mac: MacAddr) -> Self {
        if let Ok(mut s) = set.lock() {
            s.insert(mac);
        }
        ProbingGuard {
            set: Arc::clone(set),
            mac,
        }
    }
}

impl Drop for ProbingGuard {
    fn drop(&mut self) {
        if let Ok(mut s) = self.set.lock() {
            s.remove(&self.mac);
        }
    }
}
