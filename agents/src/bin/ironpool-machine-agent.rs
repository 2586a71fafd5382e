//! `ironpool-machine-agent`: runs in the boot ramdisk. Reads `ironpool.url=`,
//! `ironpool.token=`, `ironpool.mac=`, `ironpool.purpose=` and `ironpool.attempt=` from the
//! kernel command line, reports the inventory, and carries out the agent's plan (erase or
//! deploy). Exits 0 when the work succeeded, 1 (with the reason on stderr) otherwise.
//!
//! Flags (for tests): `--cmdline FILE` (default `/proc/cmdline`), `--root DIR` (default `/`;
//! `/proc`, `/sys` and `/dev` are read under it).
//!
//! `ironpool-machine-agent first-boot --seed DIR [--proc DIR] [--work DIR]` is the deployed
//! OS's first-boot step instead ([`ironpool_agents::machine::firstboot`]): run the user-data
//! of the cloud-init seed mounted at DIR and check in. Exits 0 after the check-in was
//! accepted. With `--cloud-init` (an image with real cloud-init, which ran the user-data)
//! it reports cloud-init's result instead of running anything.

use std::path::PathBuf;
use std::process::ExitCode;

use ironpool_agents::machine::{cmdline, firstboot, run};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false)
        .init();
    if std::env::args().nth(1).as_deref() == Some("first-boot") {
        return first_boot(std::env::args().skip(2));
    }
    let mut cmdline_file = PathBuf::from("/proc/cmdline");
    let mut root = PathBuf::from("/");
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        let value = argv.next();
        match (flag.as_str(), value) {
            ("--cmdline", Some(v)) => cmdline_file = v.into(),
            ("--root", Some(v)) => root = v.into(),
            (other, _) => {
                eprintln!("ironpool-machine-agent: unknown flag or missing value: {other}");
                eprintln!("usage: ironpool-machine-agent [--cmdline FILE] [--root DIR]");
                return ExitCode::from(2);
            }
        }
    }
    let line = match std::fs::read_to_string(&cmdline_file) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "ironpool-machine-agent: read {}: {e}",
                cmdline_file.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let args = match cmdline::parse(&line) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ironpool-machine-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(url = %args.url, mac = %args.mac, purpose = ?args.purpose, attempt = args.attempt, "machine agent starting");
    match run::run(&args, &root) {
        Ok(summary) => {
            println!("ironpool-machine-agent: done: {summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ironpool-machine-agent: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `first-boot --seed DIR [--cloud-init] [--proc DIR] [--work DIR]`.
fn first_boot(mut argv: impl Iterator<Item = String>) -> ExitCode {
    let mut seed = None;
    let mut host = firstboot::Host::default();
    let mut cloud_init = false;
    const USAGE: &str = "usage: ironpool-machine-agent first-boot --seed DIR [--cloud-init] [--proc DIR] [--work DIR]";
    while let Some(flag) = argv.next() {
        if flag == "--cloud-init" {
            cloud_init = true;
            continue;
        }
        match (flag.as_str(), argv.next()) {
            ("--seed", Some(v)) => seed = Some(PathBuf::from(v)),
            ("--proc", Some(v)) => host.proc_dir = v.into(),
            ("--work", Some(v)) => host.work_dir = v.into(),
            (other, _) => {
                eprintln!(
                    "ironpool-machine-agent first-boot: unknown flag or missing value: {other}"
                );
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(seed) = seed else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let mut log = |line: &str| println!("ironpool-first-boot: {line}");
    let done = if cloud_init {
        firstboot::after_cloud_init(&seed, &host, &Default::default(), &mut log)
    } else {
        firstboot::first_boot(&seed, &host, &mut log)
    };
    match done {
        Ok(summary) => {
            println!("ironpool-first-boot: done: {summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ironpool-first-boot: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
