//! End to end in network namespaces: the real agent binary serves a Subnet over DHCP on a
//! bridge in its own namespace (reaching the apiserver through a loopback forwarder), and
//! busybox `udhcpc` clients behind veths ask for leases: an unknown MAC gets a dynamic
//! lease and becomes one `enlisted-...` Machine; a known Machine's flight recorder shows
//! DHCPDiscover/DHCPOffer/DHCPAck in `status.boot` and a DHCPAck Event; once allocated,
//! it gets its Deployment's address as a reservation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "agent_support.rs"]
mod agent_support;
#[path = "dhcp_support.rs"]
mod support;

use std::time::Duration;

use agent_support::{TestNs, eventually};
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
use support::{Netns, Proc, can_netns, have, veth};

const KNOWN_MAC: &str = "02:00:00:5e:00:01";
const UNKNOWN_MAC: &str = "02:00:00:5e:00:02";

/// Forwards 127.0.0.1:`port` inside `ns` to 127.0.0.1:`port` of this process's network
/// namespace (one `nsenter` per connection), so the agent in `ns` reaches the apiserver.
fn forward_apiserver(ns: &Netns, dir: &std::path::Path, port: u16) -> Proc {
    let script = dir.join("forward.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec nsenter --net=/proc/{}/ns/net busybox nc 127.0.0.1 {port}\n",
            std::process::id()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = ns.cmd("busybox");
    cmd.args(["nc", "-ll", "-p", &port.to_string(), "-e"])
        .arg(&script);
    Proc::spawn(cmd)
}

/// Creates Deployment `deployment` for `machine` with `address`, and the status the
/// operator writes on both (deploymentRef, addresses).
async fn allocate(ns: &TestNs, machine: &str, deployment: &str, address: &str) {
    use kube::api::{Patch, PatchParams, PostParams};
    let api: Api<ironpool_crds::Deployment> = Api::namespaced(ns.client.clone(), &ns.name);
    let d: ironpool_crds::Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Deployment",
        "metadata": {"name": deployment},
        "spec": {"machineRef": {"name": machine}, "subnetRef": {"name": "prov"},
                 "image": {"url": "http://images.test/os.raw",
                           "checksum": format!("sha256:{}", "a".repeat(64)), "format": "raw"}}
    }))
    .unwrap();
    api.create(&PostParams::default(), &d).await.unwrap();
    let pp = PatchParams::apply("ironpool-operator").force();
    let status = serde_json::json!({"apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Deployment",
        "status": {"addresses": [address], "machineRef": {"name": machine}}});
    api.patch_status(deployment, &pp, &Patch::Apply(status))
        .await
        .unwrap();
    let status = serde_json::json!({"apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Machine",
        "status": {"deploymentRef": {"name": deployment}}});
    ns.machines()
        .patch_status(machine, &pp, &Patch::Apply(status))
        .await
        .unwrap();
}

/// Runs udhcpc once on `iface` in `ns` and returns the leased address.
fn udhcpc(ns: &Netns, dir: &std::path::Path, iface: &str) -> String {
    let script = dir.join("udhcpc.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n[ \"$1\" = bound ] && echo \"leased $ip\"\nexit 0\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = ns
        .cmd("busybox")
        .args([
            "udhcpc", "-f", "-q", "-n", "-i", iface, "-t", "10", "-T", "1", "-A", "1", "-s",
        ])
        .arg(&script)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text
        .lines()
        .find(|l| l.starts_with("leased "))
        .unwrap_or_else(|| {
            panic!(
                "udhcpc on {iface} got no lease: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    line.trim_start_matches("leased ").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_mac_is_enlisted_and_known_machine_boot_is_recorded() {
    if !can_netns() || !have("busybox") || !have("nsenter") {
        eprintln!("SKIP: needs root, ip netns, busybox and nsenter");
        return;
    }
    let ns = TestNs::new("agent-dhcp").await;
    ns.subnet("prov", "10.89.0").await;
    ns.machine("known-1", KNOWN_MAC).await;
    let dir = tempfile::tempdir().unwrap();

    let (srv, cli) = (Netns::new("ags"), Netns::new("agc"));
    srv.run(&["ip", "link", "add", "br0", "type", "bridge"]);
    srv.run(&["ip", "addr", "add", "10.89.0.1/24", "dev", "br0"]);
    srv.run(&["ip", "link", "set", "br0", "up"]);
    for (port, iface, mac) in [("p1", "e1", KNOWN_MAC), ("p2", "e2", UNKNOWN_MAC)] {
        veth(&srv, port, "", &cli, iface, "");
        srv.run(&["ip", "link", "set", port, "master", "br0"]);
        cli.run(&["ip", "link", "set", iface, "address", mac]);
    }
    let _forward = forward_apiserver(&srv, dir.path(), ns.apiserver_port());

    let node = format!("{}-node", ns.name);
    let journal = dir.path().join("leases.journal").display().to_string();
    let assets = dir.path().join("assets").display().to_string();
    let cache = dir.path().join("cache").display().to_string();
    std::fs::create_dir_all(&assets).unwrap();
    std::fs::write(dir.path().join("assets/ipxe.efi"), b"not really ipxe").unwrap();
    let (env, args) = ns.agent_args(
        &node,
        &[
            "--dhcp-interface",
            "br0",
            "--server-ip",
            "10.89.0.1",
            "--journal",
            &journal,
            "--http-listen",
            "10.89.0.1:8080",
            "--token-secret",
            "test-secret-of-at-least-32-bytes-0123456789",
            "--assets-dir",
            &assets,
            "--image-cache-dir",
            &cache,
            "--tftp-listen",
            "10.89.0.1:69",
            "--tftp-root",
            &assets,
        ],
    );
    let mut cmd = srv.cmd(agent_support::AGENT);
    cmd.envs(env).args(
        args.into_iter()
            .filter(|a| a != "--no-http" && a != "--no-tftp"),
    );
    let mut agent = Proc::spawn(cmd);
    let served = eventually(
        Duration::from_secs(30),
        "the agent serves the Subnet",
        || ns.served_by("prov"),
    )
    .await;
    assert_eq!(served, node);

    // (a) An unknown MAC gets a dynamic lease and is enlisted exactly once.
    let ip = udhcpc(&cli, dir.path(), "e2");
    assert!(
        ip.starts_with("10.89.0.1") && ip.len() == "10.89.0.1xx".len(),
        "dynamic lease {ip}"
    );
    let name = "enlisted-02-00-00-5e-00-02";
    let m = eventually(Duration::from_secs(15), "enlisted Machine", || async {
        ns.machines().get_opt(name).await.ok().flatten()
    })
    .await;
    assert_eq!(m.spec.boot_mac_address, UNKNOWN_MAC);
    assert_eq!(m.metadata.labels.unwrap()["ironpool.dev/enlisted"], "true");
    assert_eq!(
        m.metadata.annotations.unwrap()["ironpool.dev/enlisted-subnet"],
        "prov"
    );
    let again = udhcpc(&cli, dir.path(), "e2");
    assert_eq!(again, ip, "the same MAC keeps its lease");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let enlisted = ns
        .machines()
        .list(&ListParams::default().labels("ironpool.dev/enlisted=true"))
        .await
        .unwrap();
    assert_eq!(enlisted.items.len(), 1, "one Machine per MAC");

    // (b) A known Machine's boot steps land in status.boot (and only there: network steps
    // make no Events).
    let known_ip = udhcpc(&cli, dir.path(), "e1");
    let boot = eventually(Duration::from_secs(15), "flight recorder steps", || async {
        let m = ns.machines().get("known-1").await.ok()?;
        let boot = m.status?.boot;
        let steps: Vec<String> = boot
            .iter()
            .map(|r| {
                serde_json::to_value(r.step)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        steps
            .iter()
            .any(|s| s == "DHCPAck")
            .then_some((steps, boot))
    })
    .await;
    eprintln!("known-1 status.boot: {:?}", boot.0);
    for step in ["DHCPDiscover", "DHCPOffer", "DHCPAck"] {
        assert!(
            boot.0.iter().any(|s| s == step),
            "{step} missing from {:?}",
            boot.0
        );
    }
    let ack = boot
        .1
        .iter()
        .rev()
        .find(|r| serde_json::to_value(r.step).unwrap() == "DHCPAck")
        .unwrap();
    assert!(
        ack.detail.as_deref().unwrap_or("").contains(&known_ip),
        "{ack:?}"
    );
    let events: Api<Event> = Api::namespaced(ns.client.clone(), &ns.name);
    let list = events.list(&ListParams::default()).await.unwrap();
    assert!(
        !list
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("DHCPAck")),
        "a DHCPAck Event: {:?}",
        list.items.iter().map(|e| &e.reason).collect::<Vec<_>>()
    );

    // The iPXE script fetch is recorded too (HTTP server on the agent, curl in the client).
    cli.run(&["ip", "addr", "add", "10.89.0.200/24", "dev", "e1"]);
    let out = cli
        .cmd("curl")
        .args([
            "-sf",
            "--max-time",
            "10",
            "http://10.89.0.1:8080/boot/02-00-00-5e-00-01.ipxe",
        ])
        .output()
        .unwrap();
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && script.starts_with("#!ipxe"),
        "script: {script}"
    );
    eventually(Duration::from_secs(15), "ScriptFetched step", || async {
        let m = ns.machines().get("known-1").await.ok()?;
        m.status?
            .boot
            .iter()
            .any(|r| serde_json::to_value(r.step).unwrap() == "ScriptFetched")
            .then_some(())
    })
    .await;
    // TFTP serves the iPXE binaries from its root.
    let out = cli
        .cmd("curl")
        .args(["-sf", "--max-time", "10", "tftp://10.89.0.1/ipxe.efi"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "not really ipxe");
    cli.run(&["ip", "addr", "flush", "dev", "e1"]);

    // (c) Once allocated, the Machine gets its Deployment's address as a reservation.
    allocate(&ns, "known-1", "web-1", "10.89.0.57").await;
    let reserved = eventually(Duration::from_secs(15), "reserved address", || async {
        let ip = udhcpc(&cli, dir.path(), "e1");
        (ip == "10.89.0.57").then_some(ip)
    })
    .await;
    assert_eq!(reserved, "10.89.0.57");

    agent.signal("TERM");
    let stopped = std::time::Instant::now();
    while agent.child.try_wait().unwrap().is_none() {
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "agent did not exit on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
