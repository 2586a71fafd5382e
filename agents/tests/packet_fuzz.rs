//! Bad input for the DHCP and TFTP decision code, in `cargo test`:
//!
//! - a bounded property run (`proptest`, fixed case counts, a few seconds) over DHCP
//!   decoding and the whole `handle` pipeline with its effects applied, TFTP packet parsing,
//!   option negotiation and the transfer `Session` under arbitrary ACK/timeout sequences:
//!   nothing panics, and what comes out stays within its bounds;
//! - a real socket: the DHCP server on loopback gets truncated, oversized and malformed
//!   datagrams, drops and counts each, and still answers the next good request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};
use dhcproto::{Decodable, Decoder, Encodable};
use ironpool_agents::dhcp::metrics::DhcpMetrics;
use ironpool_agents::dhcp::server::decode;
use ironpool_agents::dhcp::{
    BootConfig, DhcpServer, MacAddr, Request, ServerConfig, ServerState, SubnetConfig, handle,
};
use ironpool_agents::tftp::packet::{self, Packet};
use ironpool_agents::tftp::session::{Action, Limits, Session, negotiate};
use proptest::prelude::*;

fn subnet(base: [u8; 3], pxe: bool) -> SubnetConfig {
    let ip = |d| Ipv4Addr::new(base[0], base[1], base[2], d);
    SubnetConfig {
        name: "fuzz".into(),
        network: ip(0),
        prefix: 24,
        gateway: Some(ip(1)),
        dns: vec![ip(1)],
        domain: Some("fuzz.internal".into()),
        mtu: Some(1500),
        lease_secs: 600,
        dynamic: Some((ip(100), ip(103))),
        reserved: vec![],
        pxe,
    }
}

fn state() -> ServerState {
    let mut config = ServerConfig::new(Ipv4Addr::new(10, 0, 0, 2));
    config.boot = Some(BootConfig::new("http://10.0.0.2:8080"));
    ServerState::new(config, vec![subnet([10, 0, 0], true)])
}

/// A well-formed request to mutate: DISCOVER or REQUEST with PXE-ish options.
fn seed(kind: MessageType, mac: u8) -> Vec<u8> {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest)
        .set_chaddr(&[2, 0, 0, 0, 0, mac]);
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m.opts_mut().insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00007:UNDI:003016".to_vec(),
    ));
    m.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 101)));
    m.to_vec().unwrap()
}

/// Decodes and, when it decodes, runs the pipeline and applies its effects; encodes the
/// reply. Returns whether a reply came out.
fn pipeline(bytes: &[u8], state: &mut ServerState) -> bool {
    let Some(msg) = decode(bytes) else {
        return false;
    };
    let req = Request {
        msg: &msg,
        interface_ip: Ipv4Addr::new(10, 0, 0, 2),
    };
    let d = handle(&req, state, 1_000);
    for e in &d.effects {
        state.apply(e);
    }
    if let Some((reply, _)) = &d.reply {
        let bytes = reply.to_vec().expect("a reply we built encodes");
        assert!(Message::decode(&mut Decoder::new(&bytes)).is_ok());
        // Whatever happens, an offered or acknowledged address is inside the Subnet.
        let y = reply.yiaddr();
        assert!(
            y.is_unspecified() || subnet([10, 0, 0], true).contains(y),
            "{y}"
        );
    }
    d.reply.is_some()
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Extend(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0usize..400, any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (0usize..400).prop_map(Mutation::Truncate),
        proptest::collection::vec(any::<u8>(), 0..2000).prop_map(Mutation::Extend),
    ]
}

fn mutate(mut bytes: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        match m {
            Mutation::Flip(i, b) if !bytes.is_empty() => {
                let n = bytes.len();
                bytes[i % n] ^= b;
            }
            Mutation::Flip(..) => {}
            Mutation::Truncate(n) => bytes.truncate(*n),
            Mutation::Extend(tail) => bytes.extend_from_slice(tail),
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Random bytes of any length up to an oversized datagram never panic the decoder.
    #[test]
    fn dhcp_random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut s = state();
        pipeline(&bytes, &mut s);
    }

    /// Mutated well-formed requests (flipped bytes in the header and options, truncation,
    /// trailing garbage) go through the whole pipeline without panicking, in sequence, so
    /// effects of earlier packets meet later ones.
    #[test]
    fn dhcp_mutated_requests_never_panic(
        packets in proptest::collection::vec(
            (prop_oneof![
                Just(MessageType::Discover), Just(MessageType::Request),
                Just(MessageType::Decline), Just(MessageType::Release),
                Just(MessageType::Inform),
            ], 0u8..6, proptest::collection::vec(mutation(), 0..4)),
            1..12,
        )
    ) {
        let mut s = state();
        for (kind, mac, ms) in packets {
            pipeline(&mutate(seed(kind, mac), &ms), &mut s);
        }
        // The lease table never binds one address to two MACs.
        let mut seen = std::collections::HashMap::new();
        for l in s.leases.iter() {
            if let Some(other) = seen.insert(l.ip, l.mac) {
                prop_assert!(other == l.mac, "{} held by {} and {}", l.ip, other, l.mac);
            }
        }
    }

    /// TFTP: any datagram parses or fails cleanly; RRQ options negotiate within limits.
    #[test]
    fn tftp_parse_and_negotiate_stay_in_bounds(
        bytes in proptest::collection::vec(any::<u8>(), 0..1500),
        file_len in 0u64..10_000_000,
    ) {
        if let Ok(Packet::Rrq { options, .. }) = packet::parse(&bytes) {
            let limits = Limits::default();
            let n = negotiate(&options, file_len, &limits);
            prop_assert!((8..=usize::from(limits.max_blksize)).contains(&n.blksize));
            prop_assert!((1..=limits.max_windowsize).contains(&n.windowsize));
            prop_assert!(n.oack.len() <= options.len());
        }
    }

    /// RRQs built from random names and option pairs parse back to what was sent.
    #[test]
    fn tftp_rrq_round_trip(
        name in "[a-zA-Z0-9_./-]{1,64}",
        opts in proptest::collection::vec(("[a-z]{1,10}", "[0-9]{1,6}"), 0..6),
    ) {
        let mut bytes = vec![0, 1];
        bytes.extend_from_slice(name.as_bytes());
        bytes.extend_from_slice(b"\0octet\0");
        for (k, v) in &opts {
            bytes.extend_from_slice(k.as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(v.as_bytes());
            bytes.push(0);
        }
        match packet::parse(&bytes) {
            Ok(Packet::Rrq { filename, options, .. }) => {
                prop_assert_eq!(filename, name);
                prop_assert_eq!(options.len(), opts.len());
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    /// A transfer session under arbitrary ACKs (any wire number) and timeouts never
    /// panics, never asks for blocks outside the file, and always ends: Done only after
    /// the last block is acknowledged, Fail only after too many timeouts.
    #[test]
    fn tftp_session_under_arbitrary_acks(
        file_len in 0u64..200_000,
        blksize in prop_oneof![Just(None), (0u64..70_000).prop_map(Some)],
        window in prop_oneof![Just(None), (0u64..100).prop_map(Some)],
        events in proptest::collection::vec(prop_oneof![
            any::<u16>().prop_map(Some), Just(None),
        ], 0..300),
    ) {
        let limits = Limits::default();
        let mut opts = Vec::new();
        if let Some(b) = blksize { opts.push(("blksize".to_string(), b.to_string())); }
        if let Some(w) = window { opts.push(("windowsize".to_string(), w.to_string())); }
        let n = negotiate(&opts, file_len, &limits);
        let mut s = Session::new(&n, file_len, &limits);
        let last = file_len / n.blksize as u64 + 1;
        let mut action = s.start();
        for ev in events {
            match &action {
                Action::Done | Action::Fail(_) => break,
                Action::SendBlocks(from, to) => {
                    prop_assert!(1 <= *from && from <= to && *to <= last, "{from}..={to} of {last}");
                    let (offset, size, _) = s.block(*to);
                    prop_assert!(offset <= file_len && size == n.blksize as u64);
                }
                Action::SendOack | Action::Wait => {}
            }
            action = match ev {
                Some(wire) => s.on_ack(wire),
                None => s.on_timeout(),
            };
        }
        // A well-behaved client then acknowledges everything in order: the session ends.
        let mut steps = 0u64;
        loop {
            steps += 1;
            prop_assert!(steps < last + 10, "no end after {steps} steps");
            action = match action {
                Action::Done | Action::Fail(_) => break,
                Action::SendOack => s.on_ack(0),
                Action::SendBlocks(_, to) => s.on_ack((to % 65536) as u16),
                Action::Wait => s.on_timeout(),
            };
        }
    }
}

/// The real socket loop: bad datagrams are dropped and counted, good ones still answered.
#[tokio::test]
async fn dhcp_server_drops_and_counts_bad_datagrams_and_keeps_serving() {
    // Replies to a relay go to giaddr:relay_port, so a relay address on loopback lets the
    // test receive them without broadcasts.
    let relay = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut config = ServerConfig::new(Ipv4Addr::new(127, 0, 0, 1));
    config.relay_port = relay.local_addr().unwrap().port();
    let state = ServerState::new(config, vec![subnet([127, 0, 0], false)]);
    let metrics = DhcpMetrics::new();
    let server = DhcpServer::new(state, None, metrics.clone());
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let token = tokio_util::sync::CancellationToken::new();
    let task = {
        let token = token.clone();
        tokio::spawn(async move {
            server
                .serve(socket, Ipv4Addr::new(127, 0, 0, 1), token)
                .await
        })
    };
    let good = || {
        let mut m = Message::default();
        m.set_opcode(Opcode::BootRequest)
            .set_chaddr(&[2, 0, 0, 0, 0, 9])
            .set_giaddr(Ipv4Addr::LOCALHOST);
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Discover));
        m.to_vec().unwrap()
    };
    let mut hlen_255 = good();
    hlen_255[2] = 255;
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("truncated header", good()[..100].to_vec()),
        ("one byte short of a header", vec![1; 239]),
        ("hlen 255", hlen_255),
        ("oversized garbage", vec![0xff; 9000]),
        ("no magic cookie", {
            let mut g = good();
            g[236] = 0;
            g
        }),
    ];
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for (_, bytes) in &bad {
        client.send_to(bytes, addr).await.unwrap();
    }
    client.send_to(&good(), addr).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), relay.recv_from(&mut buf))
        .await
        .expect("the good DISCOVER after the garbage is answered")
        .unwrap();
    let offer = Message::decode(&mut Decoder::new(&buf[..n])).unwrap();
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(
        MacAddr::from_chaddr(offer.chaddr()),
        Some(MacAddr([2, 0, 0, 0, 0, 9]))
    );
    // Every bad datagram is counted as malformed and dropped (the empty one included).
    assert_eq!(
        metrics.count("malformed", "dropped"),
        bad.len() as u64,
        "{:?}",
        bad.iter().map(|b| b.0).collect::<Vec<_>>()
    );
    assert_eq!(metrics.count("discover", "replied"), 1);
    token.cancel();
    task.await.unwrap().unwrap();
}
