//! The agent's power controller: carries out each Machine's boot intent exactly once per
//! attempt, syncs observed power periodically, and reports BMC reachability in the
//! `BMCReachable` condition.
//!
//! Exactly once: before sending a power action that boots the machine (on, cycle) for
//! attempt N the controller records `status.bootApplying.attempt = N`; after it, one status
//! write records `status.bootApplied.attempt = N` and, by leaving the marker out of the
//! server-side apply, removes it: two status writes per boot, no metadata write. A
//! controller that starts and finds the marker (or the `metal.ironpool.dev/applying-attempt`
//! annotation older agents wrote) equal to the pending attempt knows the action may have
//! landed, and only finishes idempotently (see [`decide::plan`]). An off is not marked:
//! sent again after a restart it still leaves the machine off.

mod context;
pub mod decide;
pub mod metrics;
mod reconcile;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use ironpool_crds::Machine;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use metrics::Metrics;

use crate::bmc::BmcError;

/// Errors of the power controller.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    /// A BMC call failed.
    #[error(transparent)]
    Bmc(#[from] BmcError),
    /// The Kubernetes API refused or failed a call.
    #[error("Kubernetes API call failed: {0}; check the agent's RBAC and the apiserver")]
    Kube(#[from] kube::Error),
    /// The BMC credentials Secret is missing or incomplete.
    #[error("{0}")]
    NoCredentials(String),
}

impl PowerError {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            PowerError::Bmc(e) => e.metric_label(),
            PowerError::Kube(_) => "KubernetesAPI",
            PowerError::NoCredentials(_) => "NoCredentials",
        }
    }
}

/// Settings of the power controller.
#[derive(Clone)]
pub struct Config {
    /// Watch Machines in this namespace only; all namespaces when None.
    pub namespace: Option<String>,
    /// Label selector for the credentials Secrets watched (all Secrets when None).
    pub secret_selector: Option<String>,
    /// How often each machine's power state is read (±10 % jitter).
    pub sync_interval: Duration,
    /// Machines reconciled at once by this agent.
    pub max_concurrent: u16,
    /// BMC calls in flight at once per BMC host:port.
    pub per_bmc_concurrent: usize,
    /// First retry delay after a failure; doubles per failure.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Deadline of one BMC call.
    pub bmc_timeout: Duration,
    /// After a power cycle the BMC accepted, how long before the power is read again: a
    /// machine that was shutting down as the cycle arrived (a ramdisk that powers itself
    /// off when done) can end up off, and is then powered on.
    pub cycle_settle: Duration,
    /// PEM CA bundle for Redfish BMC certificates (system roots when None).
    pub ca_bundle: Option<Vec<u8>>,
    /// Server-side apply field manager.
    pub field_manager: String,
    /// Metrics to record into.
    pub metrics: Metrics,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            namespace: None,
            secret_selector: None,
            sync_interval: Duration::from_secs(60),
            max_concurrent: 32,
            per_bmc_concurrent: 2,
            backoff_base: Duration::from_secs(5),
            backoff_max: Duration::from_secs(300),
            bmc_timeout: Duration::from_secs(20),
            cycle_settle: Duration::from_secs(3),
            ca_bundle: None,
            field_manager: "ironpool-agent".into(),
            metrics: Metrics::default(),
        }
    }
}

/// Runs the power controller until `cancel` fires (then drains running reconciles).
pub async fn run(
    client: Client,
    config: Config,
    cancel: CancellationToken,
) -> Result<(), PowerError> {
    let (machines, secrets): (Api<Machine>, Api<Secret>) = match &config.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let mut secret_watch = watcher::Config::default().any_semantic();
    if let Some(sel) = &config.secret_selector {
        secret_watch = secret_watch.labels(sel);
    }
    let concurrency = config.max_concurrent;
    let ctx = Arc::new(context::Ctx::new(client, config));
    let controller = Controller::new(machines, watcher::Config::default().any_semantic())
        .with_config(controller::Config::default().concurrency(concurrency));
    let store = controller.store();
    let pruner = tokio::spawn(prune_deleted(
        store.clone(),
        ctx.clone(),
        ctx.config.sync_interval,
        cancel.clone(),
    ));
    let mapper_ctx = ctx.clone();
    info!("power controller started");
    controller
        .watches(secrets, secret_watch, move |secret: Secret| {
            mapper_ctx.secret_changed(&secret);
            let ns = secret.namespace();
            let name = secret.name_any();
            store
                .state()
                .iter()
                .filter(|m| {
                    m.namespace() == ns
                        && m.spec
                            .bmc
                            .as_ref()
                            .is_some_and(|b| b.credentials_secret_ref.name == name)
                })
                .map(|m| ObjectRef::from_obj(&**m))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(cancel.cancelled_owned())
        .run(reconcile::reconcile, reconcile::error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                match e {
                    controller::Error::ReconcilerFailed(_, _) => {}
                    other => warn!(error = %other, "power controller"),
                }
            }
        })
        .await;
    pruner.abort();
    ctx.close_all().await;
    info!("power controller stopped");
    Ok(())
}

/// Every `every`, drops the drivers, backoff and credentials held for Machines that no
/// longer exist (the controller is not called for deleted objects).
async fn prune_deleted(
    store: kube::runtime::reflector::Store<Machine>,
    ctx: Arc<context::Ctx>,
    every: Duration,
    cancel: CancellationToken,
) {
    let every = every.max(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        // Not before the first full list (an empty store would drop everything). Polled
        // once per tick: a task parked in `wait_until_ready` before the list completed
        // was seen never to wake (kube-runtime 5).
        if !matches!(store.wait_until_ready().now_or_never(), Some(Ok(()))) {
            continue;
        }
        let live = store
            .state()
            .iter()
            .filter_map(|m| {
                let ns = m.namespace().unwrap_or_default();
                let secret = &m.spec.bmc.as_ref()?.credentials_secret_ref.name;
                Some((format!("{ns}/{}", m.name_any()), format!("{ns}/{secret}")))
            })
            .collect();
        ctx.prune(&live);
    }
}
