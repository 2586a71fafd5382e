//! Per-Subnet Lease election. For every Subnet whose `agentSelector` admits this node, a
//! contender competes for the Lease `ironpool-subnet-<name>` in the Subnet's namespace; the
//! holder serves the Subnet over DHCP and names itself in `status.servedBy`. Losing the
//! Lease stops DHCP for the Subnet at once; a standby takes over within the lease duration.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ironpool_crds::Subnet;
use ironpool_runtime::leader::{LeaderElector, LeaseConfig};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::MANAGER;
use super::selector::admits;
use super::serving::{Serving, SubnetKey, subnet_config};
use super::stores::Stores;

/// What every contender shares.
pub struct Election {
    /// Kubernetes client.
    pub client: Client,
    /// This agent's identity (node name).
    pub node: String,
    /// Lease duration, renew deadline, retry period.
    pub timing: (Duration, Duration, Duration),
    /// The served set.
    pub serving: Serving,
    /// The stores.
    pub stores: Stores,
}

/// The `ironpool-subnet-<name>` Lease name of a Subnet.
pub fn lease_name(subnet: &str) -> String {
    format!("ironpool-subnet-{subnet}")
}

/// The Subnets the agent on Node `node` should contend for.
pub fn wanted(subnets: &[Arc<Subnet>], node: &str) -> BTreeSet<SubnetKey> {
    subnets
        .iter()
        .filter(|s| s.metadata.deletion_timestamp.is_none() && admits(s, node))
        .filter(|s| subnet_config(s).is_some())
        .map(|s| (s.namespace().unwrap_or_default(), s.name_any()))
        .collect()
}

impl Election {
    /// Starts and stops contenders as Subnets (and the operator's candidateNodes) change,
    /// until `cancel` fires; then waits for every contender to stop serving, clear
    /// servedBy and release.
    pub async fn supervise(self: Arc<Self>, cancel: CancellationToken) {
        let mut changes = self.stores.changes();
        let mut running: HashMap<SubnetKey, CancellationToken> = HashMap::new();
        let mut tasks = JoinSet::new();
        loop {
            let want = wanted(&self.stores.subnets.state(), &self.node);
            running.retain(|key, stop| {
                let keep = want.contains(key) && !stop.is_cancelled();
                if !keep {
                    tracing::info!(subnet = %key.1, namespace = %key.0, "no longer contending for this Subnet");
                    stop.cancel();
                }
                keep
            });
            for key in want {
                if !running.contains_key(&key) {
                    let stop = cancel.child_token();
                    running.insert(key.clone(), stop.clone());
                    tasks.spawn(self.clone().contend(key, stop));
                }
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                r = changes.changed() => if r.is_err() { break },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        for stop in running.values() {
            stop.cancel();
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn contend(self: Arc<Self>, key: SubnetKey, stop: CancellationToken) {
        let (ns, name) = (key.0.as_str(), key.1.as_str());
        let (lease_duration, renew_deadline, retry_period) = self.timing;
        let config = LeaseConfig {
            lease_duration,
            renew_deadline,
            retry_period,
            ..LeaseConfig::new(ns, lease_name(name), &self.node)
        };
        let elector = LeaderElector::new(self.client.clone(), config);
        loop {
            let term = match elector.acquire(&stop).await {
                Ok(Some(term)) => term,
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(subnet = name, namespace = ns, error = %e, "Subnet election failed");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(lease_duration) => continue,
                    }
                }
            };
            let lost = term.lost();
            self.serving.hold(&key);
            tracing::info!(subnet = name, namespace = ns, agent = %self.node, "holding the Subnet Lease; serving DHCP");
            tokio::select! {
                () = self.write_served_by(&key, true, &lost) => {}
                () = stop.cancelled() => {}
            }
            tokio::select! {
                () = lost.cancelled() => {
                    self.serving.drop_subnet(&key);
                    tracing::warn!(subnet = name, namespace = ns, "lost the Subnet Lease; stopped serving DHCP");
                    continue;
                }
                () = stop.cancelled() => {}
            }
            self.serving.drop_subnet(&key);
            let bounded = tokio::time::timeout(renew_deadline, async {
                self.write_served_by(&key, false, &CancellationToken::new())
                    .await;
            });
            let _ = bounded.await;
            if let Err(e) = term.release().await {
                tracing::warn!(subnet = name, namespace = ns, error = %e, "releasing the Subnet Lease");
            } else {
                tracing::info!(subnet = name, namespace = ns, "released the Subnet Lease");
            }
            return;
        }
    }

    /// Writes (or, with `serving == false`, clears) `status.servedBy`, retrying until it
    /// works, the Subnet is gone, or `lost` fires. Only `servedBy` is in the patch: the
    /// operator and IPAM own the rest of the Subnet status.
    async fn write_served_by(&self, key: &SubnetKey, serving: bool, lost: &CancellationToken) {
        let api: Api<Subnet> = Api::namespaced(self.client.clone(), &key.0);
        let status = if serving {
            let since = Time(k8s_openapi::jiff::Timestamp::now());
            json!({"servedBy": {"agent": self.node, "since": since}})
        } else {
            json!({})
        };
        let patch = json!({
            "apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Subnet", "status": status,
        });
        let pp = PatchParams::apply(MANAGER).force();
        loop {
            match api.patch_status(&key.1, &pp, &Patch::Apply(&patch)).await {
                Ok(_) => return,
                Err(kube::Error::Api(e)) if e.code == 404 => return,
                Err(e) => {
                    tracing::warn!(subnet = %key.1, error = %e, "writing Subnet status.servedBy; retrying");
                }
            }
            tokio::select! {
                () = lost.cancelled() => return,
                () = tokio::time::sleep(self.timing.2) => {}
            }
        }
    }
}
