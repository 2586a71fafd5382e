//! Enlistment: a MAC that PXE-boots on a served Subnet and that no Machine has becomes a
//! Machine `enlisted-<mac>` (label `ironpool.dev/enlisted: "true"`, no BMC) for the operator
//! to commission. Its boot mode and architecture come from the firmware's DHCP option 93
//! (BIOS, x86-64 UEFI, arm64 UEFI) when the first request carried one. Rate-limited by a
//! token bucket, and at most one create per MAC.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ironpool_crds::Machine;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;

use super::stores::Stores;
use crate::dhcp::MacAddr;
use crate::dhcp::pxe::Arch;

/// Label on enlisted Machines.
pub const ENLISTED_LABEL: &str = "ironpool.dev/enlisted";
/// Annotation: the Subnet the MAC was first seen on.
pub const SUBNET_ANNOTATION: &str = "ironpool.dev/enlisted-subnet";
/// Annotation: when the MAC was first seen (RFC 3339).
pub const FIRST_SEEN_ANNOTATION: &str = "ironpool.dev/first-seen";

/// A token bucket: `capacity` tokens, refilled continuously at `per_minute`.
#[derive(Debug)]
pub struct TokenBucket {
    capacity: f64,
    tokens: f64,
    per_sec: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `per_minute` tokens refilled at `per_minute` per minute.
    pub fn per_minute(per_minute: u32, now: Instant) -> Self {
        let capacity = f64::from(per_minute.max(1));
        TokenBucket {
            capacity,
            tokens: capacity,
            per_sec: capacity / 60.0,
            last: now,
        }
    }

    /// Takes a token if one is left at `now`.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The Machine name for an enlisted MAC.
pub fn machine_name(mac: &MacAddr) -> String {
    format!("enlisted-{}", mac.dashed())
}

/// `spec.bootMode` and `spec.architecture` for a firmware that announced `arch`; `None`
/// for codes that name neither (the Machine then keeps the defaults, UEFI x86_64).
pub fn firmware_spec(arch: Arch) -> Option<(&'static str, &'static str)> {
    match arch {
        Arch::Bios => Some(("Legacy", "x86_64")),
        Arch::UefiX64 => Some(("UEFI", "x86_64")),
        Arch::UefiArm64 => Some(("UEFI", "aarch64")),
        Arch::Other(_) => None,
    }
}

/// The Machine object created for `mac` first seen on `subnet`, with the boot mode of the
/// firmware `arch` it announced.
pub fn enlisted_machine(
    mac: &MacAddr,
    namespace: &str,
    subnet: &str,
    now: &str,
    arch: Option<Arch>,
) -> serde_json::Value {
    let mut spec = json!({
        "bootMACAddress": mac.to_string(),
        "description": format!("enlisted by the agent: PXE-booted on Subnet {subnet}"),
    });
    if let Some((mode, architecture)) = arch.and_then(firmware_spec) {
        spec["bootMode"] = json!(mode);
        spec["architecture"] = json!(architecture);
    }
    json!({
        "apiVersion": "metal.ironpool.dev/v1alpha1",
        "kind": "Machine",
        "metadata": {
            "name": machine_name(mac),
            "namespace": namespace,
            "labels": {ENLISTED_LABEL: "true"},
            "annotations": {SUBNET_ANNOTATION: subnet, FIRST_SEEN_ANNOTATION: now},
        },
        "spec": spec,
    })
}

/// Creates enlisted Machines, rate-limited.
pub struct Enlister {
    client: Client,
    stores: Stores,
    bucket: Mutex<TokenBucket>,
    tried: Mutex<HashSet<MacAddr>>,
    /// Machines created (for metrics and tests).
    pub created: prometheus_client::metrics::counter::Counter,
    /// Enlistments postponed by the rate limit.
    pub limited: prometheus_client::metrics::counter::Counter,
}

impl Enlister {
    /// An enlister allowing `per_minute` creates per minute.
    pub fn new(client: Client, stores: Stores, per_minute: u32) -> Arc<Self> {
        Arc::new(Enlister {
            client,
            stores,
            bucket: Mutex::new(TokenBucket::per_minute(per_minute, Instant::now())),
            tried: Mutex::default(),
            created: Default::default(),
            limited: Default::default(),
        })
    }

    /// Reports `mac`, seen on Subnet `namespace/subnet`: creates its Machine in the
    /// background unless a Machine has it, it was tried already, or the bucket is empty (a
    /// later request of the same MAC tries again). `arch` is the firmware's option 93.
    pub fn report(
        self: &Arc<Self>,
        mac: MacAddr,
        namespace: &str,
        subnet: &str,
        arch: Option<Arch>,
    ) {
        if self.stores.machine_by_mac(&mac).is_some() {
            return;
        }
        {
            let mut tried = self.tried.lock().unwrap_or_else(PoisonError::into_inner);
            if tried.contains(&mac) {
                return;
            }
            let ok = self
                .bucket
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(Instant::now());
            if !ok {
                self.limited.inc();
                tracing::debug!(%mac, "enlistment rate limit reached; will retry on a later request");
                return;
            }
            tried.insert(mac);
        }
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let obj = enlisted_machine(&mac, namespace, subnet, &now, arch);
        let this = self.clone();
        let namespace = namespace.to_string();
        tokio::spawn(async move { this.create(mac, &namespace, obj).await });
    }

    async fn create(&self, mac: MacAddr, namespace: &str, obj: serde_json::Value) {
        let machine: Machine = match serde_json::from_value(obj) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(%mac, error = %e, "building the enlisted Machine");
                return;
            }
        };
        let api: Api<Machine> = Api::namespaced(self.client.clone(), namespace);
        match api.create(&PostParams::default(), &machine).await {
            Ok(_) => {
                self.created.inc();
                tracing::info!(%mac, machine = %machine_name(&mac), namespace, "enlisted an unknown machine");
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::debug!(%mac, "enlisted Machine exists already");
            }
            Err(e) => {
                tracing::warn!(%mac, error = %e, "creating the enlisted Machine failed; will retry on a later request");
                // Let a later request try again, after a pause that bounds the retry rate.
                tokio::time::sleep(Duration::from_secs(10)).await;
                self.tried
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&mac);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ironpool_crds::machine::{Architecture, BootMode};

    #[test]
    fn bucket_limits_and_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::per_minute(10, t0);
        assert_eq!((0..20).filter(|_| b.take(t0)).count(), 10);
        assert!(!b.take(t0 + Duration::from_secs(3)));
        assert!(b.take(t0 + Duration::from_secs(7)));
        assert!(!b.take(t0 + Duration::from_secs(7)));
    }

    #[test]
    fn enlisted_machine_is_a_valid_machine() {
        let mac: MacAddr = "02:aa:bb:cc:dd:ee".parse().unwrap();
        let m: Machine = serde_json::from_value(enlisted_machine(
            &mac,
            "dc",
            "prov",
            "2026-01-01T00:00:00Z",
            None,
        ))
        .unwrap();
        assert_eq!(
            m.metadata.name.as_deref(),
            Some("enlisted-02-aa-bb-cc-dd-ee")
        );
        assert!(m.spec.bmc.is_none());
        assert_eq!(m.metadata.labels.unwrap()[ENLISTED_LABEL], "true");
        assert_eq!(m.spec.boot_mode, BootMode::Uefi);
    }

    #[test]
    fn firmware_sets_boot_mode_and_architecture() {
        let mac: MacAddr = "02:aa:bb:cc:dd:ee".parse().unwrap();
        let cases = [
            (0, BootMode::Legacy, Architecture::X86_64),
            (7, BootMode::Uefi, Architecture::X86_64),
            (16, BootMode::Uefi, Architecture::X86_64),
            (11, BootMode::Uefi, Architecture::Aarch64),
            (42, BootMode::Uefi, Architecture::X86_64),
        ];
        for (code, mode, arch) in cases {
            let obj = enlisted_machine(
                &mac,
                "dc",
                "prov",
                "2026-01-01T00:00:00Z",
                Some(Arch::from_code(code)),
            );
            let m: Machine = serde_json::from_value(obj).unwrap();
            assert_eq!(
                (m.spec.boot_mode, m.spec.architecture),
                (mode, arch),
                "option 93 = {code}"
            );
        }
    }
}
