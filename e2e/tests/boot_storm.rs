//! The boot storm's correctness form: 20 simulated servers power on at once and boot over
//! real DHCP, TFTP, HTTP and the machine API against the real `ironpool-agent`, and the
//! real `ironpool-operator` commissions each to Ready. Asserts correctness only (no
//! timing): every server Ready, on one Machine that has the MAC it booted with, no
//! duplicate Machines, a lease for every server, no failed boot. The benchmark itself is
//! `cargo run -p ironpool-e2e --bin boot-storm`.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, ensure};
use ironpool_e2e::storm::{bench, env::Env, report};

const SERVERS: u32 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_servers_powered_on_at_once_are_all_commissioned() -> Result<()> {
    let exe = Path::new(env!("CARGO_BIN_EXE_boot-storm"));
    let dir = tempfile::tempdir()?;
    let env = Env::start(dir.path(), false)?;
    let (storm, fleet) = bench::full(&env, exe, 100, SERVERS, Duration::from_secs(600)).await?;
    let stats = fleet.finish(Duration::from_secs(30))?;
    report::check(&storm)?;
    ensure!(
        storm.machines.len() == SERVERS as usize,
        "{} MACs have Machines, want {SERVERS}",
        storm.machines.len()
    );
    let all_ips: Vec<&String> = storm.leases.values().flatten().collect();
    let distinct: std::collections::HashSet<&String> = all_ips.iter().copied().collect();
    ensure!(
        storm.leases.len() == SERVERS as usize && distinct.len() >= SERVERS as usize,
        "leases: {:?}",
        storm.leases
    );
    // Every server boots at least twice (power-on, then the agent's power cycle for the
    // commissioning intent once the Machine has its BMC); every boot got its leases.
    ensure!(
        stats["dhcpAcks"].as_u64().unwrap_or(0) >= u64::from(SERVERS) * 3,
        "{stats}"
    );
    ensure!(
        stats["failed"].as_u64().unwrap_or(1) as usize == storm.overtaken,
        "{stats}"
    );
    Ok(())
}
