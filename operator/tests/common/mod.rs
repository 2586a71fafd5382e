//! Test support: the operator binary as a process, a simulated agent that plays the
//! agent's part exactly as DESIGN.md specifies it, and object builders.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod sim_agent;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ironpool_crds::deployment::{DeploymentSpec, ErasePolicy, Image, ImageFormat, MachineSelector};
use ironpool_crds::machine::{Bmc, MachinePhase, MachineSpec};
use ironpool_crds::{Deployment, Machine, SecretRef};
use ironpool_e2e::ControlPlane;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};

/// The shared control plane with the CRDs installed.
pub fn cluster() -> &'static ControlPlane {
    static READY: std::sync::OnceLock<&'static ControlPlane> = std::sync::OnceLock::new();
    READY.get_or_init(|| {
        let cp = ControlPlane::shared().expect("control plane");
        ironpool_e2e::cluster::install_crds(cp).expect("CRDs");
        cp
    })
}

/// A running `ironpool-operator` process.
pub struct Operator {
    pub child: Child,
    pub identity: String,
    /// Its log (stdout and stderr).
    pub log: std::path::PathBuf,
}

impl Operator {
    /// Starts the operator binary against the test cluster, watching `ns`, with the default
    /// leader-election timing (15 s lease: a loaded CI machine can stall the apiserver for
    /// seconds, and a test about allocation must not lose its leader to that) and the extra
    /// flags given.
    pub fn start(cp: &ControlPlane, ns: &str, identity: &str, extra: &[&str]) -> Operator {
        Self::start_timed(cp, ns, identity, extra, ["15s", "10s", "2s"])
    }

    /// Like [`Operator::start`] with short leader-election timing (4 s lease), for tests
    /// of failover and restarts, which wait for a lease to expire.
    pub fn start_fast(cp: &ControlPlane, ns: &str, identity: &str, extra: &[&str]) -> Operator {
        Self::start_timed(cp, ns, identity, extra, ["4s", "3s", "500ms"])
    }

    /// Like [`Operator::start`], authenticated by `kubeconfig` (e.g. a ServiceAccount's)
    /// and leading through Lease `lease_ns/ironpool-operator`.
    pub fn start_as(
        cp: &ControlPlane,
        kubeconfig: &std::path::Path,
        lease_ns: &str,
        ns: &str,
        identity: &str,
        extra: &[&str],
    ) -> Operator {
        Self::spawn(
            cp,
            kubeconfig,
            lease_ns,
            ns,
            identity,
            extra,
            ["15s", "10s", "2s"],
        )
    }

    fn start_timed(
        cp: &ControlPlane,
        ns: &str,
        identity: &str,
        extra: &[&str],
        timing: [&str; 3],
    ) -> Operator {
        Self::spawn(cp, cp.kubeconfig_path(), ns, ns, identity, extra, timing)
    }

    fn spawn(
        cp: &ControlPlane,
        kubeconfig: &std::path::Path,
        lease_ns: &str,
        ns: &str,
        identity: &str,
        extra: &[&str],
        [lease, renew, retry]: [&str; 3],
    ) -> Operator {
        let log = cp.dir().join(format!("operator-{identity}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ironpool-operator"))
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,ironpool_operator=debug,kube=warn")
            .args([
                "--namespace",
                ns,
                "--lease-namespace",
                lease_ns,
                "--identity",
                identity,
                "--listen",
                "127.0.0.1:0",
            ])
            .args([
                "--lease-duration",
                lease,
                "--renew-deadline",
                renew,
                "--retry-period",
                retry,
            ])
            .args(extra)
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("operator starts");
        Operator {
            child,
            identity: identity.to_string(),
            log,
        }
    }

    /// Its `/metrics` text, from the address it logged when it started serving.
    pub fn metrics(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        // The line carries the bound address (text or JSON logs, maybe with colour codes).
        let bound = log
            .lines()
            .find(|l| l.contains("serving /metrics"))
            .and_then(|l| l.split("127.0.0.1:").nth(1))
            .map(|rest| {
                let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                format!("127.0.0.1:{port}")
            })
            .unwrap_or_else(|| {
                panic!(
                    "no serving /metrics line in {}:\n{}",
                    self.log.display(),
                    log.lines().take(5).collect::<Vec<_>>().join("\n")
                )
            });
        let out = Command::new("curl")
            .args(["-sf", &format!("http://{bound}/metrics")])
            .output()
            .expect("curl runs");
        assert!(out.status.success(), "GET http://{bound}/metrics failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// SIGKILL: no cleanup, no Lease release.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn machine(name: &str, mac_suffix: u8, pool: &str) -> Machine {
    let mut m = Machine::new(
        name,
        MachineSpec {
            bmc: Some(Bmc {
                address: format!("redfish+http://127.0.0.1:8000/redfish/v1/Systems/{name}"),
                credentials_secret_ref: SecretRef { name: "bmc".into() },
                insecure_skip_verify: false,
            }),
            ..MachineSpec::for_boot_mac(format!(
                "52:54:00:00:{:02x}:{:02x}",
                mac_suffix / 100,
                mac_suffix % 100
            ))
        },
    );
    m.metadata.labels = Some([("pool".to_string(), pool.to_string())].into());
    m
}

pub fn deployment(name: &str, pool: &str, image: &str, erase: ErasePolicy) -> Deployment {
    Deployment::new(
        name,
        DeploymentSpec {
            machine_selector: Some(MachineSelector {
                match_labels: [("pool".to_string(), pool.to_string())].into(),
                ..Default::default()
            }),
            machine_ref: None,
            image: Image {
                url: Some(format!("http://images.test/{image}")),
                checksum: Some(format!("sha256:{}", "ab".repeat(32))),
                format: Some(ImageFormat::Raw),
                oci: None,
            },
            user_data_secret_ref: None,
            network_data_secret_ref: None,
            storage: None,
            hostname: None,
            subnet_ref: None,
            erase,
        },
    )
}

pub async fn create<K>(api: &Api<K>, obj: &K) -> K
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.create(&PostParams::default(), obj)
        .await
        .expect("create")
}

pub async fn delete<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.delete(name, &DeleteParams::default())
        .await
        .expect("delete");
}

/// Polls `f` until it returns Some, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn phase(m: &Machine) -> Option<MachinePhase> {
    m.status.as_ref().and_then(|s| s.phase)
}

/// Waits until machine `name` is in `want`.
pub async fn wait_phase(
    api: &Api<Machine>,
    name: &str,
    want: MachinePhase,
    timeout: Duration,
) -> Machine {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Ok(m) = api.get(name).await {
            if phase(&m) == Some(want) {
                return m;
            }
            last = Some(m);
        }
        if Instant::now() > deadline {
            let (p, why) = last.as_ref().map_or((None, String::new()), |m| {
                let c = m
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
                (
                    phase(m),
                    c.map(|c| format!("{}: {}", c.reason, c.message))
                        .unwrap_or_default(),
                )
            });
            panic!("machine {name} did not reach {want:?} within {timeout:?}; it is {p:?} ({why})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn client(cp: &ControlPlane) -> Client {
    cp.client().await.expect("client")
}
