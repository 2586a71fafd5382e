//! ironpool-agent: the network agent (DaemonSet on provisioning nodes). Parses flags,
//! sets up logging and the Kubernetes client, turns SIGTERM/SIGINT into the root
//! cancellation, and runs [`ironpool_agents::agent::run`].

use anyhow::Context as _;
use clap::Parser;
use ironpool_agents::agent::{AgentConfig, Cli, LogFormat};
use tokio_util::sync::CancellationToken;

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,kube=warn,tower=warn,hyper=warn")
    });
    // Colour codes only on a terminal: log collectors and tests read plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = AgentConfig::try_from(&cli)?;
    init_logging(config.log_format);
    let client = kube::Client::try_default()
        .await
        .context("building the Kubernetes client (in-cluster or KUBECONFIG)")?;
    let root = CancellationToken::new();
    let stop = root.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
        stop.cancel();
    });
    ironpool_agents::agent::run(config, client, root).await?;
    Ok(())
}
