//! The pure DHCP decision pipeline: `handle(&Request, &ServerState, now) -> Decision`.
//! Handlers run in order (validate, select Subnet, check server id, per-message lease
//! logic, options and PXE, relay echo), each either answering, staying silent or passing
//! on. State changes come back as [`Effect`]s that the caller applies with
//! [`ServerState::apply`] (and journals) — nothing here touches a socket or a file.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, HType, Message, MessageType, Opcode, OptionCode};

use super::config::{Reservation, Reservations, ServerConfig, SubnetConfig};
use super::leases::{Lease, LeaseState, LeaseTable};
use super::reply::{self, boot_options, network_options, skeleton};
use super::{DhcpEvent, DhcpEventKind, MacAddr, pxe};

pub use super::reply::ReplyTo;

/// A decoded request and where it came in.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    /// The message.
    pub msg: &'a Message,
    /// Address of the interface it arrived on; selects the Subnet of non-relayed requests.
    pub interface_ip: Ipv4Addr,
}

/// Everything decisions depend on besides the request and the time.
#[derive(Clone, Debug)]
pub struct ServerState {
    /// Server-wide settings.
    pub config: ServerConfig,
    /// Served networks.
    pub subnets: Vec<SubnetConfig>,
    reservations: Reservations,
    reserved_ips: HashMap<Ipv4Addr, MacAddr>,
    /// Offers and leases.
    pub leases: LeaseTable,
}

/// A change of state a decision asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Hold an offered address.
    Offer(Lease),
    /// Bind (or extend) a lease; `durable` leases must be journalled before the ACK goes.
    Bind {
        /// The lease.
        lease: Lease,
        /// Whether it is a dynamic lease (journalled); reservations need no journal.
        durable: bool,
    },
    /// Free the lease of a MAC on an address.
    Free(MacAddr, Ipv4Addr),
    /// Keep an address out of the pool until a time (declined: it conflicts).
    Quarantine(Ipv4Addr, u64),
    /// Keep an address out of offers until a time because a host answered a probe on it;
    /// that host may reclaim it with a REQUEST.
    Abandon(Ipv4Addr, u64),
    /// The free-address search handed out this address: the next search starts after it.
    /// Only the search moves its cursor. A client given back its current lease, or binding
    /// an address offered a while ago, must not move it backwards: every search after
    /// that would walk again over all the addresses handed out since (an O(leases) scan
    /// per new client).
    Allocated(Ipv4Addr),
}

/// Why a request was answered or not (the `outcome` label of the packet metric).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A reply was produced.
    Replied,
    /// Handled without a reply (RELEASE, DECLINE).
    Accepted,
    /// Not for us or not answerable (other server chosen, no subnet, unknown type).
    Ignored,
    /// Not a valid DHCP request (wrong opcode, hardware type, missing message type).
    Invalid,
    /// No address left to offer.
    Exhausted,
}

impl Outcome {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Replied => "replied",
            Outcome::Accepted => "accepted",
            Outcome::Ignored => "ignored",
            Outcome::Invalid => "invalid",
            Outcome::Exhausted => "exhausted",
        }
    }
}

/// What to do about one request.
#[derive(Clone, Debug)]
pub struct Decision {
    /// The reply and where it goes, if any.
    pub reply: Option<(Message, ReplyTo)>,
    /// State changes to apply (and journal) before the reply is sent.
    pub effects: Vec<Effect>,
    /// What to report to the flight recorder.
    pub event: Option<DhcpEvent>,
    /// Metric outcome.
    pub outcome: Outcome,
    /// A dynamic address this MAC did not hold yet: probe it (ICMP echo) before the OFFER
    /// leaves, in case a host this server does not know uses it (RFC 2131 §4.4.1).
    pub probe: Option<Ipv4Addr>,
}

impl Decision {
    fn silent(outcome: Outcome) -> Self {
        Decision {
            reply: None,
            effects: Vec::new(),
            event: None,
            outcome,
            probe: None,
        }
    }

    /// Whether the reply may only be sent after a journal commit.
    pub fn needs_journal(&self) -> bool {
        self.effects
            .iter()
            .any(|e| matches!(e, Effect::Bind { durable: true, .. }))
    }
}

impl ServerState {
    /// A state with no reservations and no leases.
    pub fn new(config: ServerConfig, subnets: Vec<SubnetConfig>) -> Self {
        ServerState {
            config,
            subnets,
            reservations: HashMap::new(),
            reserved_ips: HashMap::new(),
            leases: LeaseTable::new(),
        }
    }

    /// Replaces the reservations (e.g. when Machines change).
    pub fn set_reservations(&mut self, reservations: Reservations) {
        self.reserved_ips = reservations.iter().map(|(m, r)| (r.ip, *m)).collect();
        self.reservations = reservations;
    }

    /// The reservation of `mac`.
    pub fn reservation(&self, mac: &MacAddr) -> Option<&Reservation> {
        self.reservations.get(mac)
    }

    /// Applies a decision's effect.
    pub fn apply(&mut self, effect: &Effect) {
        match effect {
            Effect::Offer(l) | Effect::Bind { lease: l, .. } => self.leases.insert(l.clone()),
            Effect::Allocated(ip) => {
                if let Some(s) = self.subnets.iter().find(|s| s.contains(*ip)) {
                    self.leases.advance(s, *ip);
                }
            }
            Effect::Free(mac, ip) => {
                self.leases.remove(mac, *ip);
            }
            Effect::Quarantine(ip, until) => self.leases.quarantine(*ip, *until),
            Effect::Abandon(ip, until) => self.leases.abandon(*ip, *until),
        }
    }

    /// The MAC that `ip` is reserved for or leased to (offered or bound), if any: how
    /// TFTP and other IP-addressed requests are tied back to a machine.
    pub fn mac_of(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        self.reserved_ips
            .get(&ip)
            .copied()
            .or_else(|| self.leases.holder(ip).map(|l| l.mac))
    }

    fn reserved_for_other(&self, ip: Ipv4Addr, mac: &MacAddr) -> bool {
        self.reserved_ips.get(&ip).is_some_and(|m| m != mac)
    }
}

/// Per-request context shared by the handlers.
struct Ctx<'a> {
    req: &'a Message,
    state: &'a ServerState,
    subnet: &'a SubnetConfig,
    mac: MacAddr,
    now: u64,
}

/// Decides what to do about one request at unix time `now`.
pub fn handle(request: &Request<'_>, state: &ServerState, now: u64) -> Decision {
    let msg = request.msg;
    // Handler 1: validate.
    let (Some(kind), Some(mac)) = (msg.opts().msg_type(), MacAddr::from_chaddr(msg.chaddr()))
    else {
        return Decision::silent(Outcome::Invalid);
    };
    if msg.opcode() != Opcode::BootRequest || msg.htype() != HType::Eth || msg.hlen() != 6 {
        return Decision::silent(Outcome::Invalid);
    }
    // Handler 2: select the Subnet (relay agent address, else the receiving interface).
    let selector = if msg.giaddr().is_unspecified() {
        request.interface_ip
    } else {
        msg.giaddr()
    };
    let Some(subnet) = state.subnets.iter().find(|s| s.contains(selector)) else {
        return Decision::silent(Outcome::Ignored);
    };
    let cx = Ctx {
        req: msg,
        state,
        subnet,
        mac,
        now,
    };
    // Handler 3: a server id naming another server means the client chose that one.
    let server_id = match msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    if server_id.is_some_and(|id| id != state.config.server_ip) {
        let mut d = Decision::silent(Outcome::Ignored);
        if let Some(l) = state
            .leases
            .by_mac(&mac)
            .filter(|l| l.state == LeaseState::Offered)
        {
            d.effects.push(Effect::Free(mac, l.ip));
        }
        return d;
    }
    // Handler 4: per message type.
    match kind {
        MessageType::Discover => discover(&cx),
        MessageType::Request => request_msg(&cx),
        MessageType::Decline => decline(&cx),
        MessageType::Release => release(&cx),
        MessageType::Inform => inform(&cx),
        _ => Decision::silent(Outcome::Ignored),
    }
}

fn requested_ip(m: &Message) -> Option<Ipv4Addr> {
    match m.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    }
}

fn event(cx: &Ctx<'_>, kind: DhcpEventKind, ip: Option<Ipv4Addr>, detail: String) -> DhcpEvent {
    DhcpEvent {
        mac: cx.mac,
        kind,
        ip,
        detail,
        known: cx.state.reservation(&cx.mac).is_some(),
        arch: super::pxe::Arch::of(cx.req),
    }
}

/// Whether `mac` may have `ip` in this Subnet: its reservation, or a free dynamic address.
fn may_have(cx: &Ctx<'_>, ip: Ipv4Addr) -> bool {
    if let Some(r) = cx.state.reservation(&cx.mac)
        && cx.subnet.contains(r.ip)
    {
        return r.ip == ip;
    }
    cx.subnet.in_dynamic(ip)
        && cx.subnet.assignable(ip)
        && !cx.state.reserved_for_other(ip, &cx.mac)
        && cx.state.leases.free_for(ip, &cx.mac, cx.now)
}

/// Whether `mac` may take back `ip` that a probe found in use: the client asking to keep
/// an address (INIT-REBOOT, RENEW, REBIND) is the host that answered on it, e.g. a client
/// of an agent that died and whose Subnet this server took over (as ISC dhcpd reclaims an
/// abandoned lease).
fn may_reclaim(cx: &Ctx<'_>, ip: Ipv4Addr) -> bool {
    cx.state.reservation(&cx.mac).is_none()
        && cx.subnet.in_dynamic(ip)
        && cx.subnet.assignable(ip)
        && !cx.state.reserved_for_other(ip, &cx.mac)
        && cx.state.leases.abandoned(ip, cx.now)
}

/// The address to offer: reservation, current lease, requested address, or a free one
/// (then `true`: it came from the free-address search).
fn choose(cx: &Ctx<'_>) -> Option<(Ipv4Addr, bool)> {
    if let Some(r) = cx
        .state
        .reservation(&cx.mac)
        .filter(|r| cx.subnet.contains(r.ip))
    {
        return Some((r.ip, false));
    }
    let current = cx.state.leases.by_mac(&cx.mac).map(|l| l.ip);
    for ip in current.into_iter().chain(requested_ip(cx.req)) {
        if cx.subnet.contains(ip) && may_have(cx, ip) {
            return Some((ip, false));
        }
    }
    let state = cx.state;
    let free = state.leases.find_free(cx.subnet, &cx.mac, cx.now, |ip| {
        state.reserved_for_other(ip, &cx.mac)
    });
    free.map(|ip| (ip, true))
}

/// OFFER or ACK with the network's options and PXE fields.
fn answer(cx: &Ctx<'_>, kind: MessageType, ip: Ipv4Addr) -> (Message, Option<String>) {
    let mut m = skeleton(cx.req, kind, &cx.state.config);
    m.set_yiaddr(ip);
    let hostname = cx
        .state
        .reservation(&cx.mac)
        .and_then(|r| r.hostname.as_deref());
    network_options(&mut m, cx.subnet, hostname, false);
    let detail = pxe_fields(cx, &mut m);
    (m, detail)
}

fn pxe_fields(cx: &Ctx<'_>, m: &mut Message) -> Option<String> {
    let boot = cx.state.config.boot.as_ref().filter(|_| cx.subnet.pxe)?;
    let client = pxe::classify(cx.req);
    let a = pxe::answer(client, &cx.mac, boot, cx.state.config.server_ip)?;
    boot_options(m, &a);
    Some(a.detail)
}

fn discover(cx: &Ctx<'_>) -> Decision {
    let Some((ip, searched)) = choose(cx) else {
        let mut d = Decision::silent(Outcome::Exhausted);
        d.event = Some(event(
            cx,
            DhcpEventKind::Discover,
            None,
            format!("no free address in {}", cx.subnet.name),
        ));
        return d;
    };
    let (m, boot) = answer(cx, MessageType::Offer, ip);
    let mut effects = Vec::new();
    let current = cx.state.leases.by_mac(&cx.mac);
    let bound =
        current.is_some_and(|l| l.ip == ip && l.state == LeaseState::Bound && l.expires > cx.now);
    let reserved = cx.state.reservation(&cx.mac).is_some_and(|r| r.ip == ip);
    let probe = (!reserved && current.is_none_or(|l| l.ip != ip)).then_some(ip);
    if !bound {
        let expires = cx.now + u64::from(cx.state.config.offer_secs);
        effects.push(Effect::Offer(Lease {
            mac: cx.mac,
            ip,
            expires,
            state: LeaseState::Offered,
        }));
    }
    if searched {
        effects.push(Effect::Allocated(ip));
    }
    Decision {
        reply: Some((m, reply::destination(cx.req, MessageType::Offer))),
        effects,
        event: Some(event(
            cx,
            DhcpEventKind::Offer,
            Some(ip),
            boot.unwrap_or_default(),
        )),
        outcome: Outcome::Replied,
        probe,
    }
}

fn request_msg(cx: &Ctx<'_>) -> Decision {
    let ciaddr = cx.req.ciaddr();
    let wanted = match (requested_ip(cx.req), ciaddr.is_unspecified()) {
        (Some(ip), true) => ip,
        (_, false) => ciaddr,
        (None, true) => return Decision::silent(Outcome::Invalid),
    };
    if !cx.subnet.contains(wanted) || !(may_have(cx, wanted) || may_reclaim(cx, wanted)) {
        // INIT-REBOOT/RENEW on the wrong network or a taken address: NAK. SELECTING a lost
        // offer: NAK so the client restarts at once.
        let why = if cx.subnet.contains(wanted) {
            "address not available"
        } else {
            "wrong network"
        };
        return Decision {
            reply: Some((
                reply::nak(cx.req, &cx.state.config, why),
                reply::destination(cx.req, MessageType::Nak),
            )),
            effects: Vec::new(),
            event: Some(event(cx, DhcpEventKind::Nak, Some(wanted), why.to_string())),
            outcome: Outcome::Replied,
            probe: None,
        };
    }
    let (m, boot) = answer(cx, MessageType::Ack, wanted);
    let durable = cx.state.reservation(&cx.mac).is_none_or(|r| r.ip != wanted);
    let lease = Lease {
        mac: cx.mac,
        ip: wanted,
        expires: cx.now + u64::from(cx.subnet.lease_secs),
        state: LeaseState::Bound,
    };
    Decision {
        reply: Some((m, reply::destination(cx.req, MessageType::Ack))),
        effects: vec![Effect::Bind { lease, durable }],
        event: Some(event(
            cx,
            DhcpEventKind::Ack,
            Some(wanted),
            boot.unwrap_or_default(),
        )),
        outcome: Outcome::Replied,
        probe: None,
    }
}

fn decline(cx: &Ctx<'_>) -> Decision {
    let Some(ip) = requested_ip(cx.req) else {
        return Decision::silent(Outcome::Invalid);
    };
    let mut d = Decision::silent(Outcome::Accepted);
    if cx.state.leases.by_mac(&cx.mac).is_some_and(|l| l.ip == ip) {
        d.effects.push(Effect::Free(cx.mac, ip));
        d.effects.push(Effect::Quarantine(
            ip,
            cx.now + u64::from(cx.state.config.quarantine_secs),
        ));
        d.event = Some(event(
            cx,
            DhcpEventKind::Decline,
            Some(ip),
            "address in use on the wire; quarantined".into(),
        ));
    }
    d
}

fn release(cx: &Ctx<'_>) -> Decision {
    let ip = cx.req.ciaddr();
    let mut d = Decision::silent(Outcome::Accepted);
    if cx.state.leases.by_mac(&cx.mac).is_some_and(|l| l.ip == ip) {
        d.effects.push(Effect::Free(cx.mac, ip));
        d.event = Some(event(cx, DhcpEventKind::Release, Some(ip), String::new()));
    }
    d
}

fn inform(cx: &Ctx<'_>) -> Decision {
    let mut m = skeleton(cx.req, MessageType::Ack, &cx.state.config);
    m.set_ciaddr(cx.req.ciaddr());
    network_options(&mut m, cx.subnet, None, true);
    Decision {
        reply: Some((m, reply::destination(cx.req, MessageType::Ack))),
        effects: Vec::new(),
        event: None,
        outcome: Outcome::Replied,
        probe: None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use dhcproto::v4::{DhcpOption, Opcode};

    use super::*;

    fn discover_from(mac: u8) -> Message {
        let mut m = Message::default();
        m.set_opcode(Opcode::BootRequest)
            .set_chaddr(&[2, 0, 0, 0, 0, mac]);
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Discover));
        m
    }

    fn offer(state: &mut ServerState, mac: u8, now: u64) -> (Ipv4Addr, Vec<Effect>) {
        let m = discover_from(mac);
        let req = Request {
            msg: &m,
            interface_ip: Ipv4Addr::new(10, 0, 0, 2),
        };
        let d = handle(&req, state, now);
        for e in &d.effects {
            state.apply(e);
        }
        (d.reply.unwrap().0.yiaddr(), d.effects)
    }

    /// Only the free-address search moves its cursor: a client offered its own address
    /// again does not send the next search back over the addresses handed out since.
    #[test]
    fn the_search_cursor_only_moves_forward() {
        let subnet = SubnetConfig {
            name: "t".into(),
            network: Ipv4Addr::new(10, 0, 0, 0),
            prefix: 24,
            gateway: None,
            dns: vec![],
            domain: None,
            mtu: None,
            lease_secs: 600,
            dynamic: Some((Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 110))),
            reserved: vec![],
            pxe: false,
        };
        let mut state =
            ServerState::new(ServerConfig::new(Ipv4Addr::new(10, 0, 0, 2)), vec![subnet]);
        let ip = |n| Ipv4Addr::new(10, 0, 0, n);
        let (first, effects) = offer(&mut state, 1, 1_000);
        assert_eq!(first, ip(100));
        assert!(effects.contains(&Effect::Allocated(ip(100))), "{effects:?}");
        assert_eq!(offer(&mut state, 2, 1_000).0, ip(101));
        // Much later MAC 2's offer has expired and MAC 1 asks again: it gets its offered
        // address back, and that is no allocation.
        let later = 1_000 + u64::from(state.config.offer_secs) + 1;
        let (again, effects) = offer(&mut state, 1, later);
        assert_eq!(again, ip(100));
        assert!(
            !effects.iter().any(|e| matches!(e, Effect::Allocated(_))),
            "{effects:?}"
        );
        // A new client gets the next address after the cursor, not the expired .101 just
        // behind MAC 1's.
        assert_eq!(offer(&mut state, 3, later).0, ip(102));
    }
}
