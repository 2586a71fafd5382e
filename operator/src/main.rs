//! ironpool-operator: the controller manager binary.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use ironpool_crds::{Deployment, Machine, Subnet};
use ironpool_operator::config::{Config, LogFormat};
use ironpool_operator::context::Context;
use ironpool_operator::metrics::Metrics;
use ironpool_operator::streams::SharedWatch;
use ironpool_operator::{capi, deployment_controller, machine_controller, subnet_controller, web};
use ironpool_runtime::http;
use ironpool_runtime::leader::{LeaderElector, LeaseConfig};
use kube::Client;
use kube::runtime::{Controller, watcher};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,kube=warn,tower=warn,hyper=warn")
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Runs the controllers until `stop` fires.
async fn run_controllers(
    client: Client,
    config: &Config,
    identity: &str,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let ns = config.namespace.as_deref();
    let watch = watcher::Config::default().any_semantic();
    // One watch per kind, shared by both controllers (streams.rs).
    let mut machine_watch = SharedWatch::new(
        ironpool_runtime::scoped_api::<Machine>(&client, ns),
        watch.clone(),
    );
    let mut deployment_watch = SharedWatch::new(
        ironpool_runtime::scoped_api::<Deployment>(&client, ns),
        watch.clone(),
    );
    let machines =
        Controller::for_shared_stream(machine_watch.subscribe(), machine_watch.store.clone());
    let deployments =
        Controller::for_shared_stream(deployment_watch.subscribe(), deployment_watch.store.clone());
    let machines_for_deployments = machine_watch.subscribe();
    let deployments_for_machines = deployment_watch.subscribe();
    // The Cluster API provider subscribes the same Machine and Deployment watches.
    let capi = config.capi.then(|| {
        (
            capi::Watches::new(&client, ns, watch.clone()),
            machine_watch.subscribe(),
            deployment_watch.subscribe(),
        )
    });
    let subnets = Controller::new(ironpool_runtime::scoped_api::<Subnet>(&client, ns), watch);
    let ctx = Arc::new(Context::new(
        client.clone(),
        identity,
        config.policy(),
        metrics,
        machine_watch.store.clone(),
        deployment_watch.store.clone(),
    ));
    let synced = {
        let (machines, deployments) = (ctx.machines.clone(), ctx.deployments.clone());
        let (metrics, started) = (ctx.metrics.clone(), std::time::Instant::now());
        let stop = stop.clone();
        async move {
            let both = async {
                machines.wait_until_ready().await.is_ok()
                    && deployments.wait_until_ready().await.is_ok()
            };
            let ready = tokio::select! {
                r = both => r,
                () = stop.cancelled() => false,
            };
            if ready {
                let took = started.elapsed().as_secs_f64();
                metrics.caches_synced_seconds.set(took);
                tracing::info!(
                    machines = machines.len(),
                    deployments = deployments.len(),
                    seconds = took,
                    "caches synced"
                );
            }
        }
    };
    tokio::join!(
        synced,
        machine_watch.run(stop.clone()),
        deployment_watch.run(stop.clone()),
        machine_controller::run(
            machines,
            deployments_for_machines,
            ctx.clone(),
            config.concurrency,
            stop.clone()
        ),
        deployment_controller::run(
            deployments,
            machines_for_deployments,
            ctx.clone(),
            config.concurrency,
            stop.clone()
        ),
        subnet_controller::run(
            subnets,
            ironpool_runtime::scoped_api(&client, ns),
            ctx.clone(),
            stop.clone()
        ),
        machine_controller::count_phases(ctx.clone(), stop.clone()),
        async {
            if let Some((watches, machines, deployments)) = capi {
                watches
                    .run(ctx.clone(), machines, deployments, stop.clone())
                    .await;
            }
        },
    );
}

async fn shutdown_signal(root: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    root.cancel();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_logging(config.log_format);
    let identity = config.identity();
    let client = Client::try_default()
        .await
        .context("no Kubernetes client config: set KUBECONFIG or run in a pod")?;
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let root = CancellationToken::new();
    tokio::spawn(shutdown_signal(root.clone()));
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (bound, http_task) = http::serve(config.listen, registry, ready, root.clone())
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(%bound, identity, "serving /metrics, /healthz, /readyz");
    // The web view serves on every replica, leader or standby, from its own watches.
    let web_task = match config.web_listen {
        Some(addr) => {
            let (bound, task) =
                web::serve(addr, client.clone(), config.namespace.clone(), root.clone())
                    .await
                    .with_context(|| format!("cannot listen on {addr} for the web view"))?;
            tracing::info!(%bound, "serving the fleet web view");
            Some(task)
        }
        None => None,
    };

    let lease = LeaseConfig {
        lease_duration: config.lease_duration,
        renew_deadline: config.renew_deadline,
        retry_period: config.retry_period,
        ..LeaseConfig::new(&config.lease_namespace, &config.lease_name, &identity)
    };
    let elector = LeaderElector::new(client.clone(), lease);
    let Some(term) = elector.acquire(&root).await? else {
        http_task.await.ok();
        if let Some(t) = web_task {
            t.await.ok();
        }
        return Ok(());
    };
    tracing::info!(identity, "leading");
    metrics.leader.set(1);
    let work = root.child_token();
    let lost = term.lost();
    let controllers = tokio::spawn({
        let (client, config, identity, metrics, work) = (
            client.clone(),
            config.clone(),
            identity.clone(),
            metrics.clone(),
            work.clone(),
        );
        async move { run_controllers(client, &config, &identity, metrics, work).await }
    });
    tokio::select! {
        _ = lost.cancelled() => {
            // Another replica may act now: stop at once, without draining.
            work.cancel();
            tracing::error!(identity, "lost the operator Lease; exiting so that only one replica acts");
            std::process::exit(1);
        }
        _ = root.cancelled() => {}
    }
    work.cancel();
    if tokio::time::timeout(Duration::from_secs(10), controllers)
        .await
        .is_err()
    {
        tracing::warn!("controllers did not stop within 10s");
    }
    metrics.leader.set(0);
    if let Err(e) = term.release().await {
        tracing::warn!(error = %e, "could not release the Lease; the standby takes over when it expires");
    }
    http_task.await.ok();
    if let Some(t) = web_task {
        t.await.ok();
    }
    Ok(())
}
