//! Failover without handing one address to two MACs. Two real `ironpool-agent`s, each in
//! its own network namespace with a veth onto one bridge, contend for the Subnet's Lease;
//! real clients (ISC `dhclient` and busybox `udhcpc`, each in its own namespace) hold
//! leases from the holder; the holder is SIGKILLed (its lease journal is gone with it) and
//! the standby takes the Lease over. Then:
//!
//! - new clients get addresses that none of the old clients use: the standby probes each
//!   dynamic address with an ICMP echo before offering it (RFC 2131 §4.4.1) and
//!   quarantines those that answer, so its first candidates (the dead holder's first
//!   leases) are skipped;
//! - old clients that come back (INIT-REBOOT: `dhclient` restarted with its lease file)
//!   get their own addresses acknowledged and recorded by the new holder, which did not
//!   know them;
//! - no address is bound to two MACs: checked on the clients' interfaces and in the new
//!   holder's journal.
//!
//! Plus pure decision tests of the parts of the pipeline this relies on. The network
//! test fails (never skips) when a tool is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "agent_support.rs"]
mod agent_support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use agent_support::{AGENT, TestNs, eventually};
use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};
use ironpool_agents::dhcp::{
    Decision, Effect, MacAddr, Request, ServerConfig, ServerState, SubnetConfig, handle,
};
use ironpool_e2e::netlab::{Netns, NsChild, require_tools};

const WAIT: Duration = Duration::from_secs(30);

fn subnet_config() -> SubnetConfig {
    SubnetConfig {
        name: "prov".into(),
        network: Ipv4Addr::new(10, 0, 0, 0),
        prefix: 24,
        gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
        dns: vec![],
        domain: None,
        mtu: None,
        lease_secs: 600,
        dynamic: Some((Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 110))),
        reserved: vec![],
        pxe: false,
    }
}

fn msg(kind: MessageType, mac: u8, ciaddr: Ipv4Addr, opts: Vec<DhcpOption>) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest)
        .set_chaddr(&[2, 0, 0, 0, 0, mac])
        .set_ciaddr(ciaddr);
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    for o in opts {
        m.opts_mut().insert(o);
    }
    m
}

fn decide(state: &mut ServerState, m: &Message) -> Decision {
    let req = Request {
        msg: m,
        interface_ip: Ipv4Addr::new(10, 0, 0, 2),
    };
    let d = handle(&req, state, 1_000);
    for e in &d.effects {
        state.apply(e);
    }
    d
}

fn reply_type(d: &Decision) -> Option<MessageType> {
    d.reply.as_ref().and_then(|(m, _)| m.opts().msg_type())
}

#[test]
fn a_new_holder_acks_addresses_it_does_not_know_and_probes_before_offering() {
    let mut state = ServerState::new(
        ServerConfig::new(Ipv4Addr::new(10, 0, 0, 2)),
        vec![subnet_config()],
    );
    let known = Ipv4Addr::new(10, 0, 0, 100);
    // REBINDING (ciaddr, no server id, broadcast) of an address this server never gave.
    let d = decide(&mut state, &msg(MessageType::Request, 1, known, vec![]));
    assert_eq!(reply_type(&d), Some(MessageType::Ack));
    assert!(
        d.effects
            .iter()
            .any(|e| matches!(e, Effect::Bind { lease, durable: true } if lease.ip == known)),
        "recorded in the journal: {:?}",
        d.effects
    );
    // INIT-REBOOT (requested address, no ciaddr, no server id) of another unknown address.
    let other = Ipv4Addr::new(10, 0, 0, 101);
    let d = decide(
        &mut state,
        &msg(
            MessageType::Request,
            2,
            Ipv4Addr::UNSPECIFIED,
            vec![DhcpOption::RequestedIpAddress(other)],
        ),
    );
    assert_eq!(reply_type(&d), Some(MessageType::Ack));
    // A third MAC asking for the first address is refused: one address, one MAC.
    let d = decide(
        &mut state,
        &msg(
            MessageType::Request,
            3,
            Ipv4Addr::UNSPECIFIED,
            vec![DhcpOption::RequestedIpAddress(known)],
        ),
    );
    assert_eq!(reply_type(&d), Some(MessageType::Nak));
    // Its DISCOVER gets a fresh address, flagged for an ICMP probe before the OFFER...
    let d = decide(
        &mut state,
        &msg(MessageType::Discover, 3, Ipv4Addr::UNSPECIFIED, vec![]),
    );
    let offered = d.reply.as_ref().unwrap().0.yiaddr();
    assert!(offered != known && offered != other, "{offered}");
    assert_eq!(d.probe, Some(offered));
    // ...and if a host answers, quarantining it makes the next decision pick another one.
    state.apply(&Effect::Abandon(offered, 2_000));
    let again = decide(
        &mut state,
        &msg(MessageType::Discover, 3, Ipv4Addr::UNSPECIFIED, vec![]),
    );
    let next = again.reply.as_ref().unwrap().0.yiaddr();
    assert!(next != offered && next != known && next != other, "{next}");
    assert_eq!(again.probe, Some(next));
    // A retransmitted DISCOVER for the address it now holds is not probed again.
    let retransmit = decide(
        &mut state,
        &msg(MessageType::Discover, 3, Ipv4Addr::UNSPECIFIED, vec![]),
    );
    assert_eq!(retransmit.reply.as_ref().unwrap().0.yiaddr(), next);
    assert_eq!(retransmit.probe, None);
    // A MAC that renews its own lease is not probed either.
    let d = decide(
        &mut state,
        &msg(MessageType::Discover, 1, Ipv4Addr::UNSPECIFIED, vec![]),
    );
    assert_eq!(d.reply.as_ref().unwrap().0.yiaddr(), known);
    assert_eq!(d.probe, None);
    let mac = MacAddr([2, 0, 0, 0, 0, 1]);
    assert_eq!(state.mac_of(known), Some(mac));

    // The host that answered the probe comes back asking for its address (INIT-REBOOT):
    // it may reclaim it, and the address is then bound to it.
    let reboot = |m: u8, ip| {
        msg(
            MessageType::Request,
            m,
            Ipv4Addr::UNSPECIFIED,
            vec![DhcpOption::RequestedIpAddress(ip)],
        )
    };
    let d = decide(&mut state, &reboot(4, offered));
    assert_eq!(reply_type(&d), Some(MessageType::Ack));
    assert_eq!(state.mac_of(offered), Some(MacAddr([2, 0, 0, 0, 0, 4])));
    // Once reclaimed, it is bound: nobody else gets it.
    let d = decide(&mut state, &reboot(5, offered));
    assert_eq!(reply_type(&d), Some(MessageType::Nak));
    // A declined address (a real conflict) is not reclaimable.
    let declined = Ipv4Addr::new(10, 0, 0, 109);
    state.apply(&Effect::Quarantine(declined, 2_000));
    let d = decide(&mut state, &reboot(6, declined));
    assert_eq!(reply_type(&d), Some(MessageType::Nak));
}

/// An agent in its own namespace, on the bridge through a veth, with its own forwarder
/// to the apiserver and its own journal.
struct Agent {
    node: String,
    proc: NsChild,
    journal: std::path::PathBuf,
    net: Netns,
    _forward: NsChild,
}

fn start_agent(ns: &TestNs, lab: &Netns, dir: &Path, name: &str, ip: &str) -> Agent {
    let net = Netns::new(name).unwrap();
    lab.bridge_port(
        "br0",
        &format!("p-{name}"),
        &net,
        "eth0",
        None,
        Some(&format!("{ip}/24")),
    )
    .unwrap();
    let fdir = dir.join(name);
    std::fs::create_dir_all(&fdir).unwrap();
    let forward = net.forward_loopback(ns.apiserver_port(), &fdir).unwrap();
    let node = format!("{}-{name}", ns.name);
    let journal = fdir.join("leases.journal");
    let (env, args) = ns.agent_args(
        &node,
        &[
            "--dhcp-interface",
            "eth0",
            "--server-ip",
            ip,
            "--journal",
            &journal.display().to_string(),
        ],
    );
    let mut cmd = net.cmd(AGENT);
    cmd.envs(env).args(args);
    let proc = NsChild::spawn(name, cmd, &fdir.join("agent.log")).unwrap();
    Agent {
        node,
        proc,
        journal,
        net,
        _forward: forward,
    }
}

/// A client namespace with `eth0` (MAC `mac`) on the bridge.
fn client(lab: &Netns, n: u8) -> (Netns, String) {
    let mac = format!("02:00:00:96:00:{n:02x}");
    let net = Netns::new(&format!("c{n}")).unwrap();
    lab.bridge_port("br0", &format!("pc{n}"), &net, "eth0", Some(&mac), None)
        .unwrap();
    (net, mac)
}

fn client_script(dir: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("client-script.sh");
    // dhclient passes $reason/$new_ip_address; udhcpc passes $1/$ip. The address is
    // configured, so the client answers the new holder's ICMP probe like a real host.
    std::fs::write(
        &path,
        "#!/bin/sh\n\
         case \"$reason$1\" in\n\
         BOUND|RENEW|REBIND|REBOOT) ip addr flush dev \"$interface\"; ip addr add \"$new_ip_address/24\" dev \"$interface\"; echo \"leased $reason $new_ip_address\" ;;\n\
         bound|renew) ip addr flush dev \"$interface\"; ip addr add \"$ip/24\" dev \"$interface\"; echo \"leased $1 $ip\" ;;\n\
         PREINIT|deconfig) ip link set \"$interface\" up ;;\n\
         esac\nexit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

/// Starts `dhclient -d` on the client's eth0 with lease file `lf`; returns the process and
/// the address it reports.
fn dhclient(net: &Netns, dir: &Path, tag: &str, lf: &Path, script: &str) -> (NsChild, String) {
    let mut cmd = net.cmd("dhclient");
    cmd.args(["-4", "-d", "-1", "-v", "-sf", script, "-lf"])
        .arg(lf)
        .arg("-pf")
        .arg(dir.join(format!("{tag}.pid")))
        .arg("eth0");
    let p = NsChild::spawn(tag, cmd, &dir.join(format!("{tag}.log"))).unwrap();
    let line = p.wait_for_line("leased ", WAIT).unwrap();
    let ip = line.rsplit(' ').next().unwrap().to_string();
    (p, ip)
}

/// Runs `udhcpc` once on the client's eth0; returns the address.
fn udhcpc(net: &Netns, script: &str) -> String {
    let out = net
        .cmd("busybox")
        .args([
            "udhcpc", "-f", "-q", "-n", "-i", "eth0", "-t", "10", "-T", "2", "-A", "1", "-s",
            script,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix("leased bound "))
        .map(str::to_string)
        .unwrap_or_else(|| {
            panic!(
                "udhcpc got no lease: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// The address configured on the client's eth0.
fn configured(net: &Netns) -> String {
    let out = net
        .ip(&["-4", "-o", "addr", "show", "dev", "eth0"])
        .unwrap();
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .map(|c| c.split('/').next().unwrap().to_string())
        .unwrap_or_default()
}

/// Live bindings in a journal: MAC -> address (the last record per MAC wins).
fn journal_bindings(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        match f.as_slice() {
            ["B", mac, ip, ..] => {
                out.insert(mac.to_string(), ip.to_string());
            }
            ["F", mac, ..] => {
                out.remove(*mac);
            }
            _ => {}
        }
    }
    out
}

fn metric(agent: &Agent, name: &str) -> f64 {
    let line = agent.proc.wait_for_line("metrics listening", WAIT).unwrap();
    let addr = line
        .split("addr=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let out = agent
        .net
        .exec(&[
            "curl",
            "-sf",
            "--max-time",
            "5",
            &format!("http://{addr}/metrics"),
        ])
        .unwrap();
    out.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_without_handing_an_address_to_two_macs() {
    require_tools(&["ip", "busybox", "nsenter", "dhclient", "curl"]).unwrap();
    let ns = TestNs::new("dhcp-failover").await;
    ns.subnet("prov", "10.96.0").await;
    let dir = tempfile::tempdir().unwrap();
    let script = client_script(dir.path());
    let lab = Netns::new("fo").unwrap();
    lab.bridge("br0", None).unwrap();

    let a = start_agent(&ns, &lab, dir.path(), "a", "10.96.0.2");
    let holder = eventually(WAIT, "agent a serves the Subnet", || ns.served_by("prov")).await;
    assert_eq!(holder, a.node);
    let b = start_agent(&ns, &lab, dir.path(), "b", "10.96.0.3");
    b.proc.wait_for_line("stores synced", WAIT).unwrap();

    // Three clients lease from a and keep their addresses configured.
    let mut old = Vec::new();
    for n in 1..=3u8 {
        let (net, mac) = client(&lab, n);
        let lf = dir.path().join(format!("c{n}.leases"));
        let (proc, ip) = dhclient(&net, dir.path(), &format!("dhclient-c{n}"), &lf, &script);
        old.push((net, mac, lf, proc, ip));
    }
    let a_leases = journal_bindings(&a.journal);
    for (_, mac, _, _, ip) in &old {
        assert_eq!(a_leases.get(mac), Some(ip), "a's journal: {a_leases:?}");
    }
    let old_ips: BTreeSet<String> = old.iter().map(|c| c.4.clone()).collect();
    assert_eq!(old_ips.len(), 3, "distinct leases from a: {old_ips:?}");

    // SIGKILL the holder; the standby takes the Lease (4 s lease in tests) and serves.
    a.proc.signal("KILL").unwrap();
    let holder = eventually(
        Duration::from_secs(40),
        "agent b takes the Subnet",
        || async { ns.served_by("prov").await.filter(|h| *h == b.node) },
    )
    .await;
    assert_eq!(holder, b.node);
    b.proc
        .wait_for_line("holding the Subnet Lease", WAIT)
        .unwrap();

    // New clients: b probes, skips the addresses a's clients answer on, offers others.
    let mut new = Vec::new();
    for n in 4..=6u8 {
        let (net, mac) = client(&lab, n);
        let ip = udhcpc(&net, &script);
        assert!(
            !old_ips.contains(&ip),
            "b offered {ip}, held by an old client"
        );
        new.push((net, mac, ip));
    }
    let in_use = metric(&b, "ironpool_dhcp_probes_total{result=\"in_use\"}");
    assert!(
        in_use >= 1.0,
        "b's first candidates were a's leases, so some probe must have been answered"
    );

    // Old clients come back (INIT-REBOOT with their lease files) and keep their addresses.
    for (net, mac, lf, proc, ip) in &mut old {
        proc.signal("KILL").unwrap();
        proc.wait_exit(WAIT).unwrap();
        let tag = format!("dhclient-again-{}", &mac[mac.len() - 2..]);
        let (again, got) = dhclient(net, dir.path(), &tag, lf, &script);
        assert_eq!(&got, ip, "{mac} got another address\n{}", again.tail(20));
        *proc = again;
    }

    // No address is bound to two MACs: on the wire, and in b's journal.
    let mut on_wire: BTreeMap<String, String> = BTreeMap::new();
    for (net, mac) in old
        .iter()
        .map(|c| (&c.0, &c.1))
        .chain(new.iter().map(|c| (&c.0, &c.1)))
    {
        let ip = configured(net);
        assert!(!ip.is_empty(), "{mac} has no address");
        if let Some(other) = on_wire.insert(ip.clone(), mac.clone()) {
            panic!("{ip} is configured on {other} and {mac}");
        }
    }
    assert_eq!(on_wire.len(), 6, "{on_wire:?}");
    let b_leases = journal_bindings(&b.journal);
    let mut seen = BTreeMap::new();
    for (mac, ip) in &b_leases {
        if let Some(other) = seen.insert(ip.clone(), mac.clone()) {
            panic!("b's journal binds {ip} to {other} and {mac}");
        }
    }
    for (ip, mac) in &on_wire {
        assert_eq!(
            b_leases.get(mac),
            Some(ip),
            "b's journal lacks {mac} -> {ip}: {b_leases:?}"
        );
    }
    eprintln!("after failover: {on_wire:?}; probes answered: {in_use}");
}
