//! Shared state of the power controller: credentials cache, driver cache, per-BMC
//! limits, per-machine backoff and sync schedule.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ironpool_crds::machine::Bmc;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use tokio::sync::Semaphore;

use super::{Config, PowerError};
use crate::bmc::{self, BmcAddress, Credentials, DriverConfig, PowerDriver};

/// Credentials of one Secret, with the resourceVersion they came from.
#[derive(Clone)]
pub struct SecretCreds {
    /// resourceVersion of the Secret.
    pub version: String,
    /// The credentials, or why there are none.
    pub creds: Result<Credentials, String>,
}

/// A built driver and what it was built from.
pub struct CachedDriver {
    /// address, insecure flag and Secret version.
    pub fingerprint: String,
    /// host:port of the BMC (the key of its concurrency limit).
    pub host: String,
    /// The driver.
    pub driver: Arc<dyn PowerDriver>,
}

#[derive(Default)]
struct Machines {
    drivers: HashMap<String, CachedDriver>,
    failures: HashMap<String, (u32, Instant)>,
    next_sync: HashMap<String, Instant>,
    applied: HashMap<String, i64>,
}

/// Everything reconcile needs.
pub struct Ctx {
    pub client: Client,
    pub config: Config,
    secrets: Mutex<HashMap<String, SecretCreds>>,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
    machines: Mutex<Machines>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read_secret(secret: &Secret) -> SecretCreds {
    let key = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|v| {
                String::from_utf8_lossy(&v.0)
                    .trim_end_matches(['\n', '\r'])
                    .to_string()
            })
            .or_else(|| secret.string_data.as_ref().and_then(|d| d.get(k)).cloned())
    };
    let creds = match (key("username"), key("password")) {
        (Some(username), Some(password)) => Ok(Credentials { username, password }),
        _ => Err(format!(
            "Secret {} has no `username` and `password` keys; add both",
            secret.name_any()
        )),
    };
    SecretCreds {
        version: secret.resource_version().unwrap_or_default(),
        creds,
    }
}

impl Ctx {
    /// A context for `config`.
    pub fn new(client: Client, config: Config) -> Self {
        Self {
            client,
            config,
            secrets: Mutex::default(),
            hosts: Mutex::default(),
            machines: Mutex::default(),
        }
    }

    /// Called by the Secret watch for every change, deletion included: drops the cached
    /// credentials so the next reconcile reads the Secret (or finds it gone).
    pub fn secret_changed(&self, secret: &Secret) {
        self.forget_secret(&secret.namespace().unwrap_or_default(), &secret.name_any());
    }

    /// Forgets cached credentials (after the BMC rejected them), so the next use reads the
    /// Secret again.
    pub fn forget_secret(&self, ns: &str, name: &str) {
        lock(&self.secrets).remove(&format!("{ns}/{name}"));
    }

    /// Credentials from the cache or the API.
    pub async fn credentials(&self, ns: &str, name: &str) -> Result<SecretCreds, PowerError> {
        let key = format!("{ns}/{name}");
        if let Some(c) = lock(&self.secrets).get(&key).cloned() {
            return Ok(c);
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let found = match api.get_opt(name).await? {
            Some(s) => read_secret(&s),
            None => SecretCreds {
                version: String::new(),
                creds: Err(format!(
                    "Secret {ns}/{name} named by spec.bmc.credentialsSecretRef does not exist; create it with `username` and `password` keys"
                )),
            },
        };
        lock(&self.secrets).insert(key, found.clone());
        Ok(found)
    }

    /// The driver for a machine, rebuilt when its BMC settings or Secret changed.
    /// Returns the driver and whether it is new.
    pub fn driver(
        &self,
        machine: &str,
        bmc_spec: &Bmc,
        creds: &Credentials,
        version: &str,
    ) -> Result<(Arc<dyn PowerDriver>, bool), PowerError> {
        let fingerprint = format!(
            "{}|{}|{version}",
            bmc_spec.address, bmc_spec.insecure_skip_verify
        );
        let mut m = lock(&self.machines);
        if let Some(c) = m.drivers.get(machine)
            && c.fingerprint == fingerprint
        {
            return Ok((c.driver.clone(), false));
        }
        let mut cfg = DriverConfig::new(BmcAddress::parse(&bmc_spec.address)?, creds.clone());
        cfg.insecure_skip_verify = bmc_spec.insecure_skip_verify;
        cfg.ca_bundle = self.config.ca_bundle.clone();
        cfg.timeout = self.config.bmc_timeout;
        let host = cfg.address.host_port();
        let driver: Arc<dyn PowerDriver> = Arc::from(bmc::connect(cfg)?);
        let old = m.drivers.insert(
            machine.to_string(),
            CachedDriver {
                fingerprint,
                host,
                driver: driver.clone(),
            },
        );
        // New settings or credentials: retry at once, sync at once.
        m.failures.remove(machine);
        m.next_sync.remove(machine);
        self.config.metrics.tracked_machines.set(tracked(&m) as i64);
        drop(m);
        if let Some(old) = old {
            close_later(old.driver);
        }
        Ok((driver, true))
    }

    /// Drops everything held for machines that are gone: drivers (their Redfish sessions
    /// are closed), backoff, schedules, and the credentials and per-BMC limits no live
    /// machine uses any more. `live` maps each existing machine to its Secret's key.
    pub fn prune(&self, live: &HashMap<String, String>) {
        let mut m = lock(&self.machines);
        let gone: Vec<CachedDriver> = m
            .drivers
            .extract_if(|k, _| !live.contains_key(k))
            .map(|(_, d)| d)
            .collect();
        m.failures.retain(|k, _| live.contains_key(k));
        m.next_sync.retain(|k, _| live.contains_key(k));
        m.applied.retain(|k, _| live.contains_key(k));
        let hosts_in_use: HashSet<&str> = m.drivers.values().map(|d| d.host.as_str()).collect();
        lock(&self.hosts)
            .retain(|h, sem| hosts_in_use.contains(h.as_str()) || Arc::strong_count(sem) > 1);
        let secrets_in_use: HashSet<&String> = live.values().collect();
        lock(&self.secrets).retain(|k, _| secrets_in_use.contains(k));
        self.config.metrics.tracked_machines.set(tracked(&m) as i64);
        drop(m);
        for d in gone {
            close_later(d.driver);
        }
    }

    /// How many machines, BMC limits and Secrets the controller holds state for.
    #[cfg(test)]
    pub fn held(&self) -> (usize, usize, usize) {
        let machines = tracked(&lock(&self.machines));
        (machines, lock(&self.hosts).len(), lock(&self.secrets).len())
    }

    /// The limit of calls in flight to one BMC.
    pub fn host_limit(&self, host: &str) -> Arc<Semaphore> {
        lock(&self.hosts)
            .entry(host.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.config.per_bmc_concurrent.max(1))))
            .clone()
    }

    /// When the machine may be tried again after failures, if it is backing off.
    pub fn backoff_until(&self, machine: &str) -> Option<Instant> {
        lock(&self.machines)
            .failures
            .get(machine)
            .map(|f| f.1)
            .filter(|t| *t > Instant::now())
    }

    /// Records a failure; returns the delay before the next try.
    pub fn failed(&self, machine: &str) -> Duration {
        let mut m = lock(&self.machines);
        let n = m.failures.get(machine).map_or(0, |f| f.0);
        let delay = backoff(self.config.backoff_base, self.config.backoff_max, n);
        m.failures
            .insert(machine.to_string(), (n + 1, Instant::now() + delay));
        delay
    }

    /// Clears the failures of a machine.
    pub fn succeeded(&self, machine: &str) {
        lock(&self.machines).failures.remove(machine);
    }

    /// Whether the periodic sync is due.
    pub fn sync_due(&self, machine: &str) -> bool {
        lock(&self.machines)
            .next_sync
            .get(machine)
            .is_none_or(|t| *t <= Instant::now())
    }

    /// Schedules the next sync after `after` (jittered ±10 %); returns the delay.
    pub fn schedule_sync(&self, machine: &str, after: Duration) -> Duration {
        let delay = after.mul_f64(0.9 + fastrand::f64() * 0.2);
        lock(&self.machines)
            .next_sync
            .insert(machine.to_string(), Instant::now() + delay);
        delay
    }

    /// Time until the next sync.
    pub fn until_sync(&self, machine: &str) -> Duration {
        lock(&self.machines)
            .next_sync
            .get(machine)
            .map_or(Duration::ZERO, |t| {
                t.saturating_duration_since(Instant::now())
            })
    }

    /// Remembers that this process applied `attempt`, so a reconcile that still sees an
    /// older object (the watch lags our own write) does not act again.
    pub fn remember_applied(&self, machine: &str, attempt: i64) {
        lock(&self.machines)
            .applied
            .insert(machine.to_string(), attempt);
    }

    /// The last attempt this process applied.
    pub fn applied(&self, machine: &str) -> Option<i64> {
        lock(&self.machines).applied.get(machine).copied()
    }

    /// Closes every driver (logs out of Redfish sessions).
    pub async fn close_all(&self) {
        let drivers: Vec<_> = lock(&self.machines)
            .drivers
            .drain()
            .map(|(_, c)| c.driver)
            .collect();
        for d in drivers {
            d.close().await;
        }
    }
}

/// Machines with any state held.
fn tracked(m: &Machines) -> usize {
    let mut keys: HashSet<&String> = m.drivers.keys().collect();
    keys.extend(m.failures.keys());
    keys.extend(m.next_sync.keys());
    keys.extend(m.applied.keys());
    keys.len()
}

/// Closes a driver that is no longer used (logs out of its Redfish session) without
/// holding up the caller.
fn close_later(driver: Arc<dyn PowerDriver>) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move { driver.close().await });
    }
}

/// `base * 2^failures`, capped at `max`, with ±20 % jitter.
pub fn backoff(base: Duration, max: Duration, failures: u32) -> Duration {
    let raw = base.saturating_mul(1u32 << failures.min(16)).min(max);
    raw.mul_f64(0.8 + fastrand::f64() * 0.4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn state_of_deleted_machines_is_dropped() {
        let kube_config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let ctx = Ctx::new(Client::try_from(kube_config).unwrap(), Config::default());
        let bmc_spec: Bmc = serde_json::from_value(serde_json::json!({
            "address": "redfish+http://127.0.0.1:8000",
            "credentialsSecretRef": {"name": "s"}
        }))
        .unwrap();
        let creds = Credentials {
            username: "u".into(),
            password: "p".into(),
        };
        for m in ["ns/a", "ns/b"] {
            ctx.driver(m, &bmc_spec, &creds, "1").unwrap();
            ctx.failed(m);
            ctx.schedule_sync(m, Duration::from_secs(60));
            ctx.remember_applied(m, 1);
        }
        lock(&ctx.secrets).insert(
            "ns/s".into(),
            SecretCreds {
                version: "1".into(),
                creds: Ok(creds.clone()),
            },
        );
        drop(ctx.host_limit("127.0.0.1:8000"));
        assert_eq!(ctx.held(), (2, 1, 1));

        let live = HashMap::from([("ns/b".to_string(), "ns/s".to_string())]);
        ctx.prune(&live);
        assert_eq!(ctx.held(), (1, 1, 1), "b and its BMC and Secret stay");
        assert!(ctx.applied("ns/a").is_none() && ctx.backoff_until("ns/a").is_none());
        assert_eq!(ctx.config.metrics.tracked_machines.get(), 1);

        ctx.prune(&HashMap::new());
        assert_eq!(ctx.held(), (0, 0, 0));
        assert_eq!(ctx.config.metrics.tracked_machines.get(), 0);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let b = |n| backoff(Duration::from_secs(5), Duration::from_secs(300), n).as_secs_f64();
        for (n, nominal) in [(0, 5.0), (1, 10.0), (3, 40.0), (6, 300.0), (40, 300.0)] {
            let got = b(n);
            assert!(got >= nominal * 0.8 && got <= nominal * 1.2, "{n}: {got}");
        }
    }
}
