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

/// Creates the objects of one chart template (`helm template --show-only TEMPLATE`) as
/// `helm install` of release `release` in `namespace` would, for tests and benchmarks that
/// run the binaries outside the chart but need one of its cluster objects.
pub fn apply_template(
    cp: &ControlPlane,
    release: &str,
    namespace: &str,
    template: &str,
    set: &[&str],
) -> Result<()> {
    let mut command = helm(cp)?;
    command.args(["template", release]).arg(chart_dir()).args([
        "-n",
        namespace,
        "--show-only",
        template,
    ]);
    for value in set {
        command.args(["--set", value]);
    }
    let rendered = kubectl_ok(&mut command).with_context(|| format!("helm template {template}"))?;
    let file = cp
        .dir()
        .join(format!("{release}-{}", template.replace('/', "-")));
    std::fs::write(&file, rendered).with_context(|| format!("writing {}", file.display()))?;
    kubectl_ok(
        cp.kubectl()
            .args(["apply", "--server-side", "-f"])
            .arg(&file),
    )
    .with_context(|| format!("kubectl apply of {template}"))?;
    Ok(())
}

/// Installs the chart's release-finalizer MutatingAdmissionPolicy (`templates/release-finalizer.yaml`)
/// and waits until the apiserver applies it: until a dry-run create of a Deployment in
/// `namespace` comes back with the finalizer (the policy is loaded a moment after it is
/// created). Dry runs store nothing, so no Deployment is left holding the finalizer.
pub async fn install_release_finalizer_policy(
    cp: &ControlPlane,
    client: &Client,
    namespace: &str,
) -> Result<()> {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    apply_template(
        cp,
        "ironpool",
        "ironpool-system",
        "templates/release-finalizer.yaml",
        &[],
    )?;
    let gvk = GroupVersionKind::gvk("metal.ironpool.dev", "v1alpha1", "Deployment");
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &ApiResource::from_gvk(&gvk));
    let probe: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Deployment",
        "metadata": {"name": "release-finalizer-probe"},
        "spec": {"machineSelector": {"matchLabels": {"probe": "true"}},
                 "image": {"url": "http://images.test/probe.raw", "format": "raw",
                           "checksum": format!("sha256:{}", "0".repeat(64))}},
    }))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let made = api
            .create(
                &PostParams {
                    dry_run: true,
                    ..PostParams::default()
                },
                &probe,
            )
            .await
            .context("dry-run create of a probe Deployment")?;
        if made
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == "metal.ironpool.dev/release")
        {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "the release-finalizer policy was not applied to a Deployment create within 60s"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
