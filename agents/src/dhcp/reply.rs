//! Building DHCP replies: header fields, the options of a served network, PXE fields,
//! relay-agent information echo, and where RFC 2131 §4.1 says the reply goes.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};

use super::config::{ServerConfig, SubnetConfig};
use super::pxe::BootAnswer;

/// Where a reply is sent (ports come from [`ServerConfig`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyTo {
    /// To the relay agent at giaddr, server port.
    Relay(Ipv4Addr),
    /// Unicast to the client's ciaddr, client port.
    Unicast(Ipv4Addr),
    /// To 255.255.255.255, client port. Used also where RFC 2131 would unicast to yiaddr
    /// before the client has its address: that needs an ARP entry injected (an ioctl, i.e.
    /// unsafe code), and the RFC allows broadcasting when unicast is not possible.
    Broadcast,
}

/// RFC 2131 §4.1: relay first, NAKs broadcast, then ciaddr, else broadcast.
pub fn destination(req: &Message, kind: MessageType) -> ReplyTo {
    if !req.giaddr().is_unspecified() {
        ReplyTo::Relay(req.giaddr())
    } else if kind == MessageType::Nak {
        ReplyTo::Broadcast
    } else if !req.ciaddr().is_unspecified() {
        ReplyTo::Unicast(req.ciaddr())
    } else {
        ReplyTo::Broadcast
    }
}

/// A reply skeleton: BOOTREPLY, same xid/flags/chaddr/giaddr, message type and server id.
pub fn skeleton(req: &Message, kind: MessageType, server: &ServerConfig) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootReply)
        .set_htype(req.htype())
        .set_xid(req.xid())
        .set_flags(if req.flags().broadcast() {
            Flags::default().set_broadcast()
        } else {
            Flags::default()
        })
        .set_giaddr(req.giaddr())
        .set_chaddr(
            req.chaddr()
                .get(..usize::from(req.hlen().min(16)))
                .unwrap_or(&[]),
        );
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m.opts_mut()
        .insert(DhcpOption::ServerIdentifier(server.server_ip));
    if let Some(relay) = req.opts().get(OptionCode::RelayAgentInformation) {
        m.opts_mut().insert(relay.clone());
    }
    m
}

/// Adds the network's options; lease times unless `inform` (RFC 2131 §3.4: no lease
/// times in an ACK to INFORM).
pub fn network_options(
    m: &mut Message,
    subnet: &SubnetConfig,
    hostname: Option<&str>,
    inform: bool,
) {
    let o = m.opts_mut();
    o.insert(DhcpOption::SubnetMask(subnet.mask()));
    if let Some(g) = subnet.gateway {
        o.insert(DhcpOption::Router(vec![g]));
    }
    if !subnet.dns.is_empty() {
        o.insert(DhcpOption::DomainNameServer(subnet.dns.clone()));
    }
    if let Some(d) = &subnet.domain {
        o.insert(DhcpOption::DomainName(d.clone()));
    }
    if let Some(mtu) = subnet.mtu {
        o.insert(DhcpOption::InterfaceMtu(mtu));
    }
    if let Some(h) = hostname {
        o.insert(DhcpOption::Hostname(h.to_string()));
    }
    if !inform {
        let lease = subnet.lease_secs;
        o.insert(DhcpOption::AddressLeaseTime(lease));
        o.insert(DhcpOption::Renewal(lease / 2));
        o.insert(DhcpOption::Rebinding((u64::from(lease) * 7 / 8) as u32));
    }
}

/// Adds the boot file (BOOTP `file` and option 67), next-server and echoed vendor class.
pub fn boot_options(m: &mut Message, boot: &BootAnswer) {
    if boot.filename.len() < 128 {
        m.set_fname_str(&boot.filename);
    }
    m.opts_mut()
        .insert(DhcpOption::BootfileName(boot.filename.clone().into_bytes()));
    if let Some(ns) = boot.next_server {
        m.set_siaddr(ns);
    }
    if let Some(vc) = boot.vendor_class {
        m.opts_mut()
            .insert(DhcpOption::ClassIdentifier(vc.as_bytes().to_vec()));
    }
}

/// A NAK for `req` with a message (option 56).
pub fn nak(req: &Message, server: &ServerConfig, why: &str) -> Message {
    let mut m = skeleton(req, MessageType::Nak, server);
    m.opts_mut().insert(DhcpOption::Message(why.to_string()));
    m
}
