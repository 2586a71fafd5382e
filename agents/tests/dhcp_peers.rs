//! DHCP server against real clients in network namespaces: isc-dhcp-client `dhclient`,
//! busybox `udhcpc` (obtain, renew, release; a reserved MAC), a client behind ISC
//! `dhcrelay`, and malformed packets that must be dropped and counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "dhcp_support.rs"]
mod support;

use std::time::Duration;

use support::{Netns, Proc, can_netns, have, veth};

const SERVER: &str = env!("CARGO_BIN_EXE_ironpool-dhcpd");
const WAIT: Duration = Duration::from_secs(20);

fn subnet(cidr_base: &str, dyn_lo: u8, dyn_hi: u8) -> serde_json::Value {
    serde_json::json!({
        "cidr": format!("{cidr_base}.0/24"), "gateway": format!("{cidr_base}.1"),
        "dnsServers": [format!("{cidr_base}.1")], "domain": "test.internal", "mtu": 1500,
        "leaseTime": "10m",
        "dynamicRange": {"start": format!("{cidr_base}.{dyn_lo}"), "end": format!("{cidr_base}.{dyn_hi}")}
    })
}

fn start_server(
    ns: &Netns,
    dir: &std::path::Path,
    iface: &str,
    server_ip: &str,
    subnets: serde_json::Value,
    reservations: serde_json::Value,
) -> Proc {
    let cfg = serde_json::json!({
        "listen": "0.0.0.0:67", "interface": iface, "serverIp": server_ip,
        "journal": dir.join("leases.journal"), "subnets": subnets, "reservations": reservations,
    });
    let path = dir.join("dhcpd.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let mut cmd = ns.cmd(SERVER);
    cmd.arg(&path);
    let p = Proc::spawn(cmd);
    p.expect_line("listening on", WAIT);
    p
}

fn script(dir: &std::path::Path) -> String {
    let path = dir.join("client-script.sh");
    // dhclient passes $reason/$new_ip_address/$new_subnet_mask; udhcpc passes $1/$ip/$mask.
    std::fs::write(&path, "#!/bin/sh\n\
        case \"$reason$1\" in\n\
        BOUND|RENEW|REBIND|REBOOT) ip addr flush dev \"$interface\"; ip addr add \"$new_ip_address/$new_subnet_mask\" dev \"$interface\" ;;\n\
        bound|renew) ip addr flush dev \"$interface\"; ip addr add \"$ip/$mask\" dev \"$interface\" ;;\n\
        esac\necho \"script $reason$1\"\nexit 0\n").unwrap();
    sh_chmod(&path);
    path.display().to_string()
}

fn sh_chmod(p: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn ready(tools: &[&str]) -> bool {
    if !can_netns() || !tools.iter().all(|t| have(t)) {
        eprintln!("SKIP: needs root, ip netns and {tools:?} (e2e/scripts/install-net-tools.sh)");
        return false;
    }
    true
}

#[test]
fn dhclient_obtains_releases_and_reobtains() {
    if !ready(&["dhclient"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (srv, cli) = (Netns::new("dhs"), Netns::new("dhc"));
    veth(&srv, "v0", "10.71.0.1/24", &cli, "v1", "");
    let server = start_server(
        &srv,
        dir.path(),
        "v0",
        "10.71.0.1",
        serde_json::json!([{"name": "a", "spec": subnet("10.71.0", 100, 150)}]),
        serde_json::json!([]),
    );
    let lf = dir.path().join("dhclient.leases").display().to_string();
    let pf = dir.path().join("dhclient.pid").display().to_string();
    let sf = script(dir.path());
    let base = ["-4", "-v", "-sf", &sf, "-lf", &lf, "-pf", &pf];
    let out = cli
        .cmd("dhclient")
        .args(base)
        .args(["-1", "v1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ack = server.expect_line("event Ack", WAIT);
    let ip = ack.split(' ').nth(3).unwrap().to_string();
    assert!(ip.starts_with("10.71.0.1"), "{ack}");
    let leases = std::fs::read_to_string(&lf).unwrap();
    assert!(
        leases.contains(&format!("fixed-address {ip}"))
            && leases.contains("option domain-name \"test.internal\""),
        "{leases}"
    );
    assert!(
        leases.contains("option interface-mtu 1500") && leases.contains("option routers 10.71.0.1"),
        "{leases}"
    );
    let out = cli
        .cmd("dhclient")
        .args(base)
        .args(["-r", "v1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.expect_line("event Release", WAIT);
    let out = cli
        .cmd("dhclient")
        .args(base)
        .args(["-1", "v1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let again = server.expect_line("event Ack", WAIT);
    assert!(again.contains(&ip), "re-obtained {again}, first {ip}");
    let _ = cli.cmd("dhclient").args(base).args(["-x", "v1"]).output();
}

#[test]
fn udhcpc_obtains_renews_releases_and_reserved_mac_gets_its_address() {
    if !ready(&["busybox"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (srv, cli) = (Netns::new("ubs"), Netns::new("ubc"));
    veth(&srv, "v0", "10.72.0.1/24", &cli, "v1", "");
    cli.run(&["ip", "link", "set", "v1", "address", "02:00:00:aa:bb:01"]);
    let reservations =
        serde_json::json!([{"mac": "02:00:00:aa:bb:01", "ip": "10.72.0.50", "hostname": "r1-u07"}]);
    let server = start_server(
        &srv,
        dir.path(),
        "v0",
        "10.72.0.1",
        serde_json::json!([{"name": "a", "spec": subnet("10.72.0", 100, 150)}]),
        reservations,
    );
    let sf = script(dir.path());
    let mut cmd = cli.cmd("busybox");
    cmd.args([
        "udhcpc", "-f", "-i", "v1", "-s", &sf, "-t", "10", "-T", "1", "-A", "1",
    ]);
    let client = Proc::spawn(cmd);
    let ack = server.expect_line("event Ack", WAIT);
    assert!(ack.contains("02:00:00:aa:bb:01 10.72.0.50"), "{ack}");
    client.expect_line("script bound", WAIT);
    // renew: a unicast REQUEST with ciaddr
    client.signal("USR1");
    let renew = server.expect_line("event Ack", WAIT);
    assert!(renew.contains("10.72.0.50"), "{renew}");
    client.expect_line("script renew", WAIT);
    // malformed packets from the client's address: dropped, counted, and serving goes on
    let junk = dir.path().join("junk");
    let mut truncated = vec![1u8, 1, 6, 0];
    truncated.resize(236, 0);
    truncated.extend_from_slice(&[0x63, 0x82, 0x53, 0x63, 53, 200, 1]);
    for (i, bytes) in [b"garbage".to_vec(), vec![0xff; 300], truncated]
        .iter()
        .enumerate()
    {
        let f = junk.with_extension(i.to_string());
        std::fs::write(&f, bytes).unwrap();
        cli.run(&[
            "bash",
            "-c",
            &format!("cat {} > /dev/udp/10.72.0.1/67", f.display()),
        ]);
    }
    client.signal("USR1");
    server.expect_line("event Ack", WAIT);
    client.expect_line("script renew", WAIT);
    client.signal("USR2");
    server.expect_line("event Release", WAIT);
    drop(client);
    server.signal("TERM");
    let text: Vec<String> = server.lines.iter().collect();
    let count = |needle: &str| -> u64 {
        text.iter()
            .filter(|l| l.contains(needle))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    let (dropped, invalid) = (
        count("msg_type=\"malformed\",outcome=\"dropped\""),
        count("outcome=\"invalid\""),
    );
    // garbage and hlen 255 fail to decode; the truncated option decodes without a type
    assert!(dropped >= 2 && dropped + invalid == 3, "{text:?}");
}

#[test]
fn client_behind_dhcrelay_gets_an_address_of_its_subnet() {
    if !ready(&["dhcrelay", "busybox"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (srv, relay, cli) = (Netns::new("rls"), Netns::new("rlr"), Netns::new("rlc"));
    veth(&srv, "v0", "10.73.0.1/24", &relay, "r0", "10.73.0.2/24");
    veth(&relay, "r1", "10.74.0.1/24", &cli, "c1", "");
    srv.run(&["ip", "route", "add", "10.74.0.0/24", "via", "10.73.0.2"]);
    let subnets = serde_json::json!([
        {"name": "local", "spec": subnet("10.73.0", 100, 150)},
        {"name": "remote", "spec": subnet("10.74.0", 100, 150)}
    ]);
    let server = start_server(
        &srv,
        dir.path(),
        "v0",
        "10.73.0.1",
        subnets,
        serde_json::json!([]),
    );
    let mut r = relay.cmd("dhcrelay");
    r.args(["-d", "-4", "-a", "-iu", "r0", "-id", "r1", "10.73.0.1"]);
    let _relay = Proc::spawn(r);
    std::thread::sleep(Duration::from_millis(500));
    let sf = script(dir.path());
    let mut cmd = cli.cmd("busybox");
    cmd.args([
        "udhcpc", "-f", "-q", "-i", "c1", "-s", &sf, "-t", "10", "-T", "1", "-A", "1",
    ]);
    let client = Proc::spawn(cmd);
    let ack = server.expect_line("event Ack", WAIT);
    assert!(ack.contains(" 10.74.0.1"), "relayed client got {ack}");
    drop(client);
}
