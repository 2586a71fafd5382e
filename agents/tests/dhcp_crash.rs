//! SIGKILL of a real `ironpool-dhcpd` process at random moments under load never loses an
//! acknowledged lease: every ACK the client saw is in the journal after the kill, and the
//! restarted server offers each such MAC its address again. Loopback only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "dhcp_support.rs"]
mod support;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};
use ironpool_agents::dhcp::MacAddr;
use ironpool_agents::dhcp::journal::recover_text;
use support::Proc;
use tokio::net::UdpSocket;

const SERVER: &str = env!("CARGO_BIN_EXE_ironpool-dhcpd");

fn mac(i: u32) -> [u8; 6] {
    let b = i.to_be_bytes();
    [2, 0xcc, b[0], b[1], b[2], b[3]]
}

fn msg(kind: MessageType, m: [u8; 6], xid: u32, opts: Vec<DhcpOption>) -> Vec<u8> {
    let mut msg = Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::LOCALHOST,
        &m,
    );
    msg.set_opcode(Opcode::BootRequest);
    msg.opts_mut().insert(DhcpOption::MessageType(kind));
    for o in opts {
        msg.opts_mut().insert(o);
    }
    msg.to_vec().unwrap()
}

fn start(config: &std::path::Path) -> (Proc, std::net::SocketAddr) {
    let mut cmd = Command::new(SERVER);
    cmd.arg(config);
    let p = Proc::spawn(cmd);
    let line = p.expect_line("listening on", Duration::from_secs(20));
    let addr = line.rsplit(' ').next().unwrap().parse().unwrap();
    (p, addr)
}

/// Runs DORA for MACs from `next` on with up to 64 in flight until `until`, killing the
/// server at `kill_at`. Returns ACKed (mac index -> ip).
async fn load(
    sock: &UdpSocket,
    server: std::net::SocketAddr,
    proc_: &mut Proc,
    first: u32,
    kill_at: Instant,
    until: Instant,
) -> HashMap<u32, Ipv4Addr> {
    let mut acks = HashMap::new();
    let mut next = first;
    let mut inflight: HashMap<u32, Instant> = HashMap::new();
    let mut buf = vec![0u8; 1500];
    let mut killed = false;
    while Instant::now() < until {
        if !killed && Instant::now() >= kill_at {
            proc_.child.kill().unwrap();
            killed = true;
        }
        inflight.retain(|_, t| t.elapsed() < Duration::from_millis(500));
        while !killed && inflight.len() < 64 {
            let _ = sock
                .send_to(&msg(MessageType::Discover, mac(next), next, vec![]), server)
                .await;
            inflight.insert(next, Instant::now());
            next += 1;
        }
        let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(20), sock.recv_from(&mut buf)).await
        else {
            continue;
        };
        let Ok(reply) = Message::decode(&mut Decoder::new(&buf[..n])) else {
            continue;
        };
        let xid = reply.xid();
        match reply.opts().msg_type() {
            Some(MessageType::Offer) if inflight.contains_key(&xid) => {
                let opts = vec![
                    DhcpOption::RequestedIpAddress(reply.yiaddr()),
                    DhcpOption::ServerIdentifier(Ipv4Addr::LOCALHOST),
                ];
                let _ = sock
                    .send_to(&msg(MessageType::Request, mac(xid), xid, opts), server)
                    .await;
            }
            Some(MessageType::Ack) => {
                acks.insert(xid, reply.yiaddr());
                inflight.remove(&xid);
            }
            _ => {}
        }
    }
    acks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_lease() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("leases.journal");
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = sock.local_addr().unwrap().port();
    let config = dir.path().join("dhcpd.json");
    let cfg = serde_json::json!({
        "listen": "127.0.0.1:0", "serverIp": "127.0.0.1", "journal": journal, "relayPort": port, "quiet": true,
        "subnets": [{"name": "lo", "spec": {"cidr": "127.0.0.0/8", "leaseTime": "1h",
            "dynamicRange": {"start": "127.1.0.1", "end": "127.1.255.254"}}}]
    });
    std::fs::write(&config, cfg.to_string()).unwrap();
    let mut all: HashMap<u32, Ipv4Addr> = HashMap::new();
    let mut first = 1u32;
    let rounds = 6;
    let started = Instant::now();
    for round in 0..rounds {
        let (mut server, addr) = start(&config);
        // the restarted server remembers acknowledged leases
        for (&i, &ip) in all.iter().take(16) {
            sock.send_to(&msg(MessageType::Discover, mac(i), i, vec![]), addr)
                .await
                .unwrap();
            let mut buf = vec![0u8; 1500];
            let offer = loop {
                let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
                    .await
                    .unwrap()
                    .unwrap();
                let m = Message::decode(&mut Decoder::new(&buf[..n])).unwrap();
                if m.xid() == i {
                    break m;
                }
            };
            assert_eq!(
                offer.yiaddr(),
                ip,
                "round {round}: mac {i} offered another address after restart"
            );
        }
        let kill_after = Duration::from_millis(100 + fastrand::u64(0..500));
        let now = Instant::now();
        let acks = load(
            &sock,
            addr,
            &mut server,
            first,
            now + kill_after,
            now + kill_after + Duration::from_millis(300),
        )
        .await;
        let _ = server.child.wait();
        let text = std::fs::read_to_string(&journal).unwrap();
        let (live, skipped) = recover_text(&text);
        for (i, ip) in &acks {
            let rec = live.get(ip);
            assert_eq!(
                rec.map(|(m, _)| *m),
                Some(MacAddr(mac(*i))),
                "round {round}: ACKed lease {ip} for mac {i} missing from journal"
            );
        }
        eprintln!(
            "round {round}: killed after {kill_after:?}, {} ACKs, journal {} live, {skipped} torn",
            acks.len(),
            live.len()
        );
        first += 1_000_000;
        all.extend(acks);
    }
    assert!(
        all.len() > 100,
        "too little load to mean anything: {}",
        all.len()
    );
    eprintln!(
        "{} acknowledged leases survived {rounds} SIGKILLs in {:?}",
        all.len(),
        started.elapsed()
    );
    let _ = OptionCode::End;
}
