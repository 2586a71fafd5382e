//! The lab as a Cluster API management cluster: the real Cluster API installed by
//! clusterctl ([`crate::capi::Capi`]), the operator restarted with `--capi`, and a workload
//! cluster whose control plane is a second kube-apiserver on the host, reachable from the
//! VMs at `10.77.0.1:<port>` (forwarded into the provisioning network). No lab machine hosts
//! the control plane, so the Cluster names a `LabControlPlane` (a lab-only kind, CRD below)
//! that the lab marks initialized, as a hosted control plane provider would; the lab's
//! servers are all workers of `examples/capi/workers.yaml`.
//!
//! The test OS cannot run a kubelet under TCG: its `kubeadm` stand-in
//! (`boot-images/os/kubeadm`) prints the join configuration the bootstrap data wrote and
//! registers the Node with the bootstrap token, which the workload cluster lets bootstrap
//! tokens do (ClusterRole `lab-node-registration`) instead of the kubelet's CSR flow.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::{AGENT_IP, Lab, NAMESPACE};
use crate::ControlPlane;
use crate::capi::Capi;
use crate::cluster::kubectl_ok;
use crate::netlab::NsChild;

/// The Cluster's name.
pub const CLUSTER: &str = "lab";

const LAB_CONTROL_PLANE_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: labcontrolplanes.controlplane.lab.ironpool.dev
  labels: {"cluster.x-k8s.io/v1beta2": v1alpha1}
spec:
  group: controlplane.lab.ironpool.dev
  names: {kind: LabControlPlane, listKind: LabControlPlaneList, plural: labcontrolplanes, singular: labcontrolplane}
  scope: Namespaced
  versions:
  - name: v1alpha1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        description: The lab's hosted control plane (its second kube-apiserver); lab only.
        x-kubernetes-preserve-unknown-fields: true
"#;

const WORKLOAD_RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: lab-node-registration}
rules:
- apiGroups: [""]
  resources: [nodes]
  verbs: [create, get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: lab-node-registration}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: lab-node-registration}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: "system:bootstrappers"}
"#;

/// Cluster API on the lab, and the workload cluster.
pub struct CapiLab {
    /// Cluster API as clusterctl installed it.
    pub capi: Capi,
    /// The workload cluster's control plane.
    pub workload: ControlPlane,
    /// The workload API's port (on the host's loopback and on 10.77.0.1).
    pub port: u16,
    _forward: NsChild,
}

fn apply_stdin(
    cp: &ControlPlane,
    ns: Option<&str>,
    yaml: &str,
    dir: &std::path::Path,
    name: &str,
) -> Result<()> {
    let file = dir.join(name);
    std::fs::write(&file, yaml)?;
    let mut cmd = cp.kubectl();
    cmd.args(["apply", "--server-side", "-f"]).arg(&file);
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    kubectl_ok(&mut cmd).with_context(|| format!("applying {name}"))?;
    Ok(())
}

impl Lab {
    /// Installs Cluster API, restarts the operator with `--capi`, starts the workload
    /// cluster and creates the Cluster (`examples/lab/capi-cluster.yaml`) with its CA and
    /// kubeconfig Secrets.
    pub fn start_capi(&mut self) -> Result<CapiLab> {
        eprintln!("[lab] installing Cluster API with clusterctl init");
        let capi = Capi::install(&self.cp)?;
        self.capi = true;
        self.kill_operator()?;
        self.start_operator()?;
        eprintln!("[lab] starting the workload cluster's kube-apiserver");
        // busybox's TLS client (the test OS's) sends no signature_algorithms, so a TLS 1.2
        // server may only sign with SHA-1, which Go refuses unless told otherwise.
        let workload = ControlPlane::start_with_apiserver_env(&[("GODEBUG", "tlssha1=1")])?;
        let port: u16 = workload
            .server_url()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .context("the workload apiserver URL has no port")?;
        let forward = self.net.forward_loopback(port, &self.dir)?;
        let dir = self.dir.join("manifests");
        std::fs::create_dir_all(&dir)?;
        apply_stdin(&workload, None, WORKLOAD_RBAC, &dir, "workload-rbac.yaml")?;
        apply_stdin(
            &self.cp,
            None,
            LAB_CONTROL_PLANE_CRD,
            &dir,
            "labcontrolplane-crd.yaml",
        )?;
        crate::cluster::wait_established(
            &self.cp,
            &["crd/labcontrolplanes.controlplane.lab.ironpool.dev".as_ref()],
        )?;
        // The cluster's CA is the workload apiserver's: Cluster API signs with it, and
        // CABPK pins it in every join configuration.
        let ca = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "type": "cluster.x-k8s.io/secret",
            "metadata": {"name": format!("{CLUSTER}-ca"), "labels": {"cluster.x-k8s.io/cluster-name": CLUSTER}},
            "stringData": {
                "tls.crt": std::fs::read_to_string(workload.ca_cert_path())?,
                "tls.key": std::fs::read_to_string(workload.ca_key_path())?,
            },
        });
        // A hosted control plane provider writes the kubeconfig Secret; so does the lab.
        let flat = kubectl_ok(
            workload
                .kubectl()
                .args(["config", "view", "--raw", "--flatten"]),
        )?;
        let kubeconfig = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "type": "cluster.x-k8s.io/secret",
            "metadata": {"name": format!("{CLUSTER}-kubeconfig"), "labels": {"cluster.x-k8s.io/cluster-name": CLUSTER}},
            "stringData": {"value": flat},
        });
        for (name, doc) in [("capi-ca.json", ca), ("capi-kubeconfig.json", kubeconfig)] {
            apply_stdin(&self.cp, Some(NAMESPACE), &doc.to_string(), &dir, name)?;
        }
        let port_text = port.to_string();
        self.apply_example(
            "capi-cluster.yaml",
            &[
                ("CLUSTER_NAME", CLUSTER),
                ("ENDPOINT_HOST", AGENT_IP),
                ("ENDPOINT_PORT", &port_text),
            ],
        )?;
        let status =
            serde_json::json!({"status": {"initialization": {"controlPlaneInitialized": true}}});
        kubectl_ok(self.cp.kubectl().args([
            "patch",
            "labcontrolplane",
            CLUSTER,
            "-n",
            NAMESPACE,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ]))?;
        Ok(CapiLab {
            capi,
            workload,
            port,
            _forward: forward,
        })
    }

    /// Applies `examples/capi/workers.yaml` for the lab's Cluster with `replicas` workers
    /// and the test OS image `image_file` (`os.qcow2` or `os.raw`).
    pub fn apply_workers(&self, replicas: u32, image_file: &str) -> Result<()> {
        let checksum = self.artifacts.os_checksum(image_file)?;
        let url = format!("http://127.0.0.1:8081/{image_file}");
        let format = if image_file.ends_with(".qcow2") {
            "qcow2"
        } else {
            "raw"
        };
        let replicas = replicas.to_string();
        let path: PathBuf = crate::repo_dir().join("examples/capi/workers.yaml");
        self.apply_template(
            &path,
            &[
                ("CLUSTER_NAME", CLUSTER),
                ("NAMESPACE", NAMESPACE),
                ("KUBERNETES_VERSION", "v1.37.2"),
                ("WORKER_MACHINE_COUNT", &replicas),
                ("IRONPOOL_IMAGE_URL", &url),
                ("IRONPOOL_IMAGE_CHECKSUM", &checksum),
                ("IRONPOOL_IMAGE_FORMAT", format),
            ],
        )
    }
}
