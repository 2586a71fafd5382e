//! The Helm chart against a control plane: the `helm` CLI (built from its Go module) pointed
//! at the control plane, ServiceAccount tokens and kubeconfigs for the chart's accounts.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;

use crate::ControlPlane;
use crate::cluster::kubectl_ok;

/// `charts/ironpool` in the repository.
pub fn chart_dir() -> PathBuf {
    crate::repo_dir().join("charts/ironpool")
}

/// The chart's `appVersion`: the tag of the images `e2e/scripts/build-images.sh` builds.
pub fn app_version() -> Result<String> {
    let path = chart_dir().join("Chart.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .find_map(|line| line.strip_prefix("appVersion:"))
        .map(|value| value.trim().trim_matches('"').to_owned())
        .with_context(|| format!("no appVersion in {}", path.display()))
}

/// `helm` with `--kubeconfig` set to the admin kubeconfig and its cache, config and data
/// directories inside the control plane's directory (nothing under `$HOME` is touched).
pub fn helm(cp: &ControlPlane) -> Result<Command> {
    let mut command = Command::new(crate::helm()?);
    let home = cp.dir().join("helm");
    command
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .arg(format!("--kubeconfig={}", cp.kubeconfig_path().display()));
    Ok(command)
}

/// `helm install <release> charts/ironpool -n <namespace> --create-namespace` with the
/// given `--set` values; returns helm's stdout.
pub fn install(cp: &ControlPlane, release: &str, namespace: &str, set: &[&str]) -> Result<String> {
    let mut command = helm(cp)?;
    command.args(["install", release]).arg(chart_dir()).args([
        "-n",
        namespace,
        "--create-namespace",
    ]);
    for value in set {
        command.args(["--set", value]);
    }
    kubectl_ok(&mut command).with_context(|| format!("helm install {release}"))
}

/// A token for ServiceAccount `namespace/name` from the TokenRequest API (valid 1 hour).
pub async fn service_account_token(client: &Client, namespace: &str, name: &str) -> Result<String> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .with_context(|| format!("TokenRequest for ServiceAccount {namespace}/{name}"))?
        .status
        .and_then(|status| status.token)
        .context("the TokenRequest returned no token")
}

/// Writes a kubeconfig that authenticates to `cp` with `token` (file mode 0600), for
/// running a real binary as a ServiceAccount.
pub fn write_token_kubeconfig(cp: &ControlPlane, path: &Path, token: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "ironpool-e2e",
            "cluster": { "server": cp.server_url(), "certificate-authority": cp.ca_cert_path() },
        }],
        "users": [{ "name": "sa", "user": { "token": token } }],
        "contexts": [{ "name": "sa", "context": { "cluster": "ironpool-e2e", "user": "sa" } }],
        "current-context": "sa",
    });
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(serde_json::to_string_pretty(&doc)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
