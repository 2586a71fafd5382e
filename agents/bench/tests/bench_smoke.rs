//! The serving benchmarks run end to end at a tiny size so they cannot rot: `dhcp-bench`
//! (a 1-second step of each load generator, perfdhcp and dhcp-load, against
//! ironpool-dhcpd and against ISC Kea) and
//! `tftp-bench` (a 1 MiB file from our server and from tftpd-hpa), each in network
//! namespaces it creates and removes. Skipped, loudly, without root or the peers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn ready(tools: &[&str]) -> bool {
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .is_ok_and(|o| o.status.success());
    let missing: Vec<_> = tools
        .iter()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if !netns || !missing.is_empty() {
        eprintln!(
            "SKIPPED: needs root with `ip netns` and {missing:?} (e2e/scripts/install-net-tools.sh)"
        );
        return false;
    }
    true
}

/// `ironpool-dhcpd` of the `ironpool-agents` package, built (or found up to date) the way
/// the README builds it; dhcp-bench is told where it is.
fn dhcpd() -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let status = Command::new(cargo)
        .args([
            "build",
            "-q",
            "--manifest-path",
            manifest,
            "--bin",
            "ironpool-dhcpd",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "cargo build --bin ironpool-dhcpd failed");
    // The test binary is target/<profile>/deps/<name>: the server is in target/<profile>.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let bin = dir.join("ironpool-dhcpd");
    assert!(bin.exists(), "{} was not built", bin.display());
    bin.to_string_lossy().into_owned()
}

fn run(bin: &str, args: &[&str]) -> String {
    run_with(bin, args, &[])
}

fn run_with(bin: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{bin} {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn dhcp_bench_runs_one_step_against_both_servers() {
    if !ready(&["perfdhcp", "kea-dhcp4"]) {
        return;
    }
    let dhcpd = dhcpd();
    let out = run_with(
        env!("CARGO_BIN_EXE_dhcp-bench"),
        &["1", "200", "200"],
        &[("IRONPOOL_DHCPD", &dhcpd)],
    );
    // One table per load generator (perfdhcp, dhcp-load), each with a row per server.
    for server in ["ironpool-dhcpd", "kea-dhcp4"] {
        let rows: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with(&format!("| {server} |")))
            .collect();
        assert_eq!(rows.len(), 2, "a row for {server} per generator: {out}");
        for row in rows {
            let leases: f64 = row
                .split('|')
                .nth(2)
                .and_then(|c| c.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no rate in {row}"));
            assert!(leases > 50.0, "{row}");
        }
    }
    for generator in ["perfdhcp", "dhcp-load"] {
        assert!(
            out.contains(&format!("{generator}: ironpool / kea:")),
            "{out}"
        );
    }
    assert!(!out.contains("stray replies"), "{out}");
}

#[test]
fn tftp_bench_fetches_from_both_servers() {
    if !ready(&["in.tftpd"]) {
        return;
    }
    let out = run(env!("CARGO_BIN_EXE_tftp-bench"), &["1", "1", "1"]);
    for row in [
        "| ironpool | 1468 | 1 |",
        "| tftpd-hpa | 1468 | 1 |",
        "| ironpool | 1468 | 16 |",
    ] {
        assert!(out.contains(row), "no {row}: {out}");
    }
    assert!(out.contains("ironpool / tftpd-hpa, lockstep:"), "{out}");
}
