//! `kubectl ironpool`: the everyday verbs of a bare-metal fleet over Ironpool's API objects.
//! Every verb reads or changes Machines, Deployments and their neighbours through the
//! Kubernetes API, with the caller's own credentials; nothing goes around it.
//!
//! Exit codes as kubectl's: 0 done, 1 the request failed (message on stderr, saying what to
//! do), 2 bad command line (clap's).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kube::Client;

mod describe;
mod enlist;
mod lookup;
mod output;
mod power;
mod release;
mod rescue;
mod status;
mod watch;

use output::Format;

/// kubectl ironpool: fleet status, live progress, machine timelines, release, enlist, power
/// and rescue.
#[derive(Parser, Debug)]
#[command(name = "kubectl ironpool", version)]
struct Cli {
    /// Namespace (default: the kubeconfig context's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// Every namespace (status and watch).
    #[arg(short = 'A', long, global = true)]
    all_namespaces: bool,
    /// Output: table (default), json or yaml.
    #[arg(short, long, global = true, default_value = "table")]
    output: Format,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand, Debug)]
enum Verb {
    /// Fleet summary: Machines by phase, Subnets and who serves them, and every failure
    /// with its reason.
    Status,
    /// Live progress of machines in long steps (commissioning, image write with bytes/s and
    /// ETA, release and erase), redrawn as their status changes.
    Watch(watch::Args),
    /// One machine: phase, power, BMC, deployment, operation, conditions, the boot flight
    /// recorder as a timeline, inventory and events.
    Describe {
        /// Machine name.
        machine: String,
    },
    /// Release a machine: deletes the Deployment holding it, whose finalizer releases the
    /// machine and erases it as the Deployment's `erase` says.
    Release(release::Args),
    /// Enlist a server by its boot MAC (and BMC), as a new Machine the operator commissions.
    Enlist(enlist::Args),
    /// Power a Deployed machine on, off (it stays off) or cycle it once, through its spec
    /// (`spec.power`, `spec.powerCycleRequest`); the agent drives the BMC.
    Power(power::Args),
    /// Boot a Deployed or Broken machine into the rescue ramdisk with an SSH server for your
    /// public key, its disks untouched (`spec.rescue`); `--exit` boots its OS again.
    Rescue(rescue::Args),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = Client::try_default().await.map_err(|e| {
        anyhow::anyhow!(
            "no Kubernetes client config ({e}): set KUBECONFIG or pass --kubeconfig to kubectl"
        )
    })?;
    let ns = cli
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let scope = if cli.all_namespaces {
        None
    } else {
        Some(ns.as_str())
    };
    let mut out = std::io::stdout().lock();
    match cli.verb {
        Verb::Status => status::run(&client, scope, cli.output, &mut out).await,
        Verb::Watch(args) => watch::run(&client, scope, &args, &mut out).await,
        Verb::Describe { machine } => {
            describe::run(&client, &ns, &machine, cli.output, &mut out).await
        }
        Verb::Release(args) => release::run(&client, &ns, &args, cli.output, &mut out).await,
        Verb::Enlist(args) => enlist::run(&client, &ns, &args, cli.output, &mut out).await,
        Verb::Power(args) => power::run(&client, &ns, &args, cli.output, &mut out).await,
        Verb::Rescue(args) => rescue::run(&client, &ns, &args, cli.output, &mut out).await,
    }
}
