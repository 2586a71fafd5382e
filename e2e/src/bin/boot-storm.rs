//! boot-storm: N simulated servers power on at once on one provisioning network and boot
//! over the real protocols against the real agent and operator, to Ready; then the serving
//! half alone against the agent and against dnsmasq + nginx. Prints a Markdown report.
//!
//! `boot-storm [N] [--debug]` (default 200) runs the benchmark with release builds of the
//! operator and agent (`--debug`: the debug builds the tests use; `--full-only`: only the
//! runs to Ready, not the serving half); `boot-storm fleet ...`
//! is the fleet process it starts inside the fleet's network namespace.

use std::process::ExitCode;

use anyhow::{Context, Result};
use ironpool_e2e::storm;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting tokio")
        .and_then(|rt| rt.block_on(run(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("boot-storm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Vec<String>) -> Result<()> {
    if args.first().map(String::as_str) == Some("fleet") {
        let cfg = storm::FleetConfig::parse(&args[1..])?;
        return storm::fleet_main(cfg).await;
    }
    let release = !args.iter().any(|a| a == "--debug");
    let n: u32 = match args.iter().find(|a| !a.starts_with("--")) {
        Some(a) => a
            .parse()
            .context("usage: boot-storm [servers] [--debug] [--full-only]")?,
        None => 200,
    };
    let exe = std::env::current_exe()?;
    let dir = storm::bench::work_dir();
    eprintln!(
        "[boot-storm] {n} servers; files and logs in {}",
        dir.display()
    );
    let full_only = args.iter().any(|a| a == "--full-only");
    let results = storm::report::run(&exe, &dir, n, release, full_only).await?;
    println!("{}", storm::report::markdown(&results));
    Ok(())
}
