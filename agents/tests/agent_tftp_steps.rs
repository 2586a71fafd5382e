//! TFTP transfers in the flight recorder, without a VM: the real agent serves DHCP and
//! TFTP on a bridge in its own namespace; a client with a known Machine's MAC takes a lease
//! (busybox `udhcpc`), then fetches a boot file with `tftp-hpa` and `curl` (blksize
//! option), and asks for a file that does not exist. The Machine's `status.boot` shows
//! each transfer started and completed with the file's name and size, and the failure
//! with its reason. Fails (never skips) when a tool is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "agent_support.rs"]
mod agent_support;

use std::time::Duration;

use agent_support::{AGENT, TestNs, eventually};
use ironpool_e2e::netlab::{Netns, NsChild, require_tools};

const MAC: &str = "02:00:00:97:00:01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_transfers_of_a_known_machine_are_recorded() {
    require_tools(&["ip", "busybox", "nsenter", "curl", "tftp"]).unwrap();
    let ns = TestNs::new("tftp-steps").await;
    ns.subnet("prov", "10.97.0").await;
    ns.machine("known-1", MAC).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tftp");
    std::fs::create_dir_all(&root).unwrap();
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(root.join("undionly.kpxe"), &payload).unwrap();

    let srv = Netns::new("tfs").unwrap();
    srv.bridge("br0", Some("10.97.0.1/24")).unwrap();
    let cli = Netns::new("tfc").unwrap();
    srv.bridge_port("br0", "p1", &cli, "eth0", Some(MAC), None)
        .unwrap();
    let _forward = srv
        .forward_loopback(ns.apiserver_port(), dir.path())
        .unwrap();
    let node = format!("{}-node", ns.name);
    let journal = dir.path().join("leases.journal").display().to_string();
    let (env, args) = ns.agent_args(
        &node,
        &[
            "--dhcp-interface",
            "br0",
            "--server-ip",
            "10.97.0.1",
            "--journal",
            &journal,
            "--tftp-listen",
            "10.97.0.1:69",
            "--tftp-root",
            &root.display().to_string(),
        ],
    );
    let mut cmd = srv.cmd(AGENT);
    cmd.envs(env)
        .args(args.into_iter().filter(|a| a != "--no-tftp"));
    let agent = NsChild::spawn("agent", cmd, &dir.path().join("agent.log")).unwrap();
    eventually(
        Duration::from_secs(30),
        "the agent serves the Subnet",
        || ns.served_by("prov"),
    )
    .await;

    // A lease ties the client's address to its MAC (the TFTP request carries only the IP).
    let script = dir.path().join("udhcpc.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n[ \"$1\" = bound ] && ip addr add \"$ip/24\" dev \"$interface\"\nexit 0\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    cli.exec(&[
        "busybox",
        "udhcpc",
        "-f",
        "-q",
        "-n",
        "-i",
        "eth0",
        "-t",
        "10",
        "-T",
        "2",
        "-A",
        "1",
        "-s",
        &script.display().to_string(),
    ])
    .unwrap();

    // Lock-step RFC 1350 with tftp-hpa, then blksize 1468 with curl, then a missing file.
    let out = dir.path().join("got.kpxe");
    cli.exec(&[
        "tftp",
        "10.97.0.1",
        "-m",
        "binary",
        "-c",
        "get",
        "undionly.kpxe",
        &out.display().to_string(),
    ])
    .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), payload);
    let fetched = cli
        .cmd("curl")
        .args([
            "-sf",
            "--max-time",
            "20",
            "--tftp-blksize",
            "1468",
            "tftp://10.97.0.1/undionly.kpxe",
        ])
        .output()
        .unwrap();
    assert_eq!(fetched.stdout, payload, "{}", agent.tail(20));
    let missing = cli
        .cmd("curl")
        .args(["-sf", "--max-time", "10", "tftp://10.97.0.1/missing.efi"])
        .output()
        .unwrap();
    assert!(!missing.status.success());

    let steps = eventually(
        Duration::from_secs(20),
        "TFTP steps in status.boot",
        || async {
            let m = ns.machines().get("known-1").await.ok()?;
            let tftp: Vec<String> = m
                .status?
                .boot
                .into_iter()
                .filter(|r| serde_json::to_value(r.step).unwrap() == "TFTPRead")
                .filter_map(|r| r.detail)
                .collect();
            (tftp.len() >= 5).then_some(tftp)
        },
    )
    .await;
    eprintln!("TFTP steps: {steps:#?}");
    let size = payload.len();
    let want = [
        format!("undionly.kpxe: started, {size} bytes (blksize 512, windowsize 1)"),
        format!("undionly.kpxe: sent {size} bytes in "),
        format!("undionly.kpxe: started, {size} bytes (blksize 1468, windowsize 1)"),
        format!("undionly.kpxe: sent {size} bytes in "),
        "missing.efi: failed: file not found: missing.efi".to_string(),
    ];
    assert_eq!(steps.len(), want.len(), "{steps:#?}");
    for (got, want) in steps.iter().zip(&want) {
        assert!(got.starts_with(want.as_str()), "{got:?} vs {want:?}");
    }
}
