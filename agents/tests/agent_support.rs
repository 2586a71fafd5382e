//! Helpers for the agent tests against the real kube-apiserver: a namespace deleted on
//! drop, the agent binary as a child process, Subnet and Machine objects, polling.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::process::Command;
use std::time::{Duration, Instant};

use ironpool_crds::{Machine, Subnet};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// The agent binary.
pub const AGENT: &str = env!("CARGO_BIN_EXE_ironpool-agent");

/// A test namespace on the shared control plane, deleted (without waiting) on drop.
pub struct TestNs {
    /// Its name.
    pub name: String,
    /// An admin client.
    pub client: Client,
    cp: &'static ironpool_e2e::ControlPlane,
}

impl TestNs {
    /// Installs the CRDs and creates `<prefix>-<random>`.
    pub async fn new(prefix: &str) -> TestNs {
        let cp = ironpool_e2e::ControlPlane::shared().unwrap();
        ironpool_e2e::cluster::install_crds(cp).unwrap();
        let name = cp.create_namespace(prefix).await.unwrap();
        TestNs {
            name,
            client: cp.client().await.unwrap(),
            cp,
        }
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> &std::path::Path {
        self.cp.kubeconfig_path()
    }

    /// The apiserver port on 127.0.0.1.
    pub fn apiserver_port(&self) -> u16 {
        self.cp
            .server_url()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// The Subnets API of this namespace.
    pub fn subnets(&self) -> Api<Subnet> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// The Machines API of this namespace.
    pub fn machines(&self) -> Api<Machine> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Creates a Subnet `name` on `<base>.0/24` with the dynamic range `.100`-`.150`.
    pub async fn subnet(&self, name: &str, base: &str) {
        let s: Subnet = serde_json::from_value(json!({
            "apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Subnet",
            "metadata": {"name": name},
            "spec": {"cidr": format!("{base}.0/24"), "gateway": format!("{base}.1"),
                     "leaseTime": "10m", "pxe": false,
                     "dynamicRange": {"start": format!("{base}.100"), "end": format!("{base}.150")}}
        }))
        .unwrap();
        self.subnets()
            .create(&PostParams::default(), &s)
            .await
            .unwrap();
    }

    /// Creates a Machine `name` with boot MAC `mac` and no BMC.
    pub async fn machine(&self, name: &str, mac: &str) {
        let m: Machine = serde_json::from_value(json!({
            "apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Machine",
            "metadata": {"name": name}, "spec": {"bootMACAddress": mac}
        }))
        .unwrap();
        self.machines()
            .create(&PostParams::default(), &m)
            .await
            .unwrap();
    }

    /// Writes a Subnet status field as another field manager (like the operator would).
    pub async fn subnet_status_as(&self, name: &str, manager: &str, status: serde_json::Value) {
        let p = json!({"apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Subnet", "status": status});
        self.subnets()
            .patch_status(name, &PatchParams::apply(manager).force(), &Patch::Apply(p))
            .await
            .unwrap();
    }

    /// The agent's command line: KUBECONFIG, NODE_NAME, this namespace, fast Leases, no
    /// servers but what `extra` enables, metrics on a free loopback port.
    pub fn agent_args(&self, node: &str, extra: &[&str]) -> (Vec<(String, String)>, Vec<String>) {
        let env = vec![
            (
                "KUBECONFIG".to_string(),
                self.kubeconfig().display().to_string(),
            ),
            ("NODE_NAME".to_string(), node.to_string()),
            ("RUST_LOG".to_string(), "info,kube=warn".to_string()),
        ];
        let mut args: Vec<String> = [
            "--namespace",
            &self.name,
            "--no-tftp",
            "--no-http",
            "--no-power",
            "--metrics-listen",
            "127.0.0.1:0",
            "--lease-duration",
            "4s",
            "--renew-deadline",
            "3s",
            "--retry-period",
            "1s",
            "--drain",
            "5s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        (env, args)
    }

    /// `Command` for the agent run directly (in this network namespace).
    pub fn agent(&self, node: &str, extra: &[&str]) -> Command {
        let (env, args) = self.agent_args(node, extra);
        let mut c = Command::new(AGENT);
        c.envs(env).args(args);
        c
    }

    /// The agent currently named by the Subnet's `status.servedBy`.
    pub async fn served_by(&self, subnet: &str) -> Option<String> {
        let s = self.subnets().get(subnet).await.ok()?;
        s.status?.served_by.map(|b| b.agent)
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = self
            .cp
            .kubectl()
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .output();
    }
}

/// Polls `f` every 200 ms until it yields `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
