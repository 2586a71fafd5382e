//! The real Cluster API on a test control plane: `clusterctl init` from a local provider
//! repository (core, kubeadm bootstrap and Ironpool), and the core and kubeadm bootstrap
//! managers as processes.
//!
//! What differs from a production install, and why:
//! - There is no node, so no provider pod runs: the managers run as processes with the
//!   admin kubeconfig, and the Deployments clusterctl installs stay unscheduled.
//! - cert-manager's controllers are not served as Go modules, so cert-manager is not
//!   installed; only its CRDs are (clusterctl init will not run until the cert-manager API
//!   answers). The Certificates the components ask for stay unissued: this harness makes
//!   one serving certificate for `127.0.0.1` with its own CA and points every webhook of
//!   the two providers (admission and CRD conversion) at its manager on loopback, with that
//!   CA as caBundle.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};

use crate::cluster::kubectl_ok;
use crate::process::{Server, Watchdog, free_ports};
use crate::{ControlPlane, clusterctl};

/// The Cluster API release the tests run.
pub const CAPI_VERSION: &str = "v1.14.2";
/// How long a manager gets to serve its webhooks.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The built Cluster API parts (see `e2e/scripts/build-capi.sh`).
#[derive(Clone, Debug)]
pub struct Parts {
    /// `clusterctl`.
    pub clusterctl: PathBuf,
    /// The core manager.
    pub core_manager: PathBuf,
    /// The kubeadm bootstrap manager.
    pub bootstrap_manager: PathBuf,
    /// Where the components files and cert-manager's CRDs are.
    pub dir: PathBuf,
}

impl Parts {
    /// Builds the parts once (cached under `~/.cache/ironpool/`) and returns their paths.
    pub fn ensure() -> Result<Parts> {
        let script = crate::repo_dir().join("e2e/scripts/build-capi.sh");
        let out = crate::binaries::run_build_script(&script)?;
        let get = |key: &str| {
            out.lines()
                .find_map(|l| l.trim().strip_prefix(key))
                .map(PathBuf::from)
                .ok_or_else(|| anyhow!("{} printed no {key} line", script.display()))
        };
        Ok(Parts {
            clusterctl: get("CLUSTERCTL=")?,
            core_manager: get("CAPI_MANAGER=")?,
            bootstrap_manager: get("CABPK_MANAGER=")?,
            dir: get("CAPI_DIR=")?,
        })
    }
}

/// Cluster API installed by clusterctl on a control plane, with its managers running.
pub struct Capi {
    parts: Parts,
    dir: PathBuf,
    kubeconfig: PathBuf,
    managers: Vec<Server>,
    _watchdog: Watchdog,
}

impl std::fmt::Debug for Capi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capi")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Drop for Capi {
    fn drop(&mut self) {
        for m in &mut self.managers {
            m.kill();
        }
    }
}

/// The local provider repository and clusterctl config for `repo_root`, in the layout
/// clusterctl reads (`<provider-label>/<version>/`).
fn write_repository(parts: &Parts, root: &Path) -> Result<PathBuf> {
    let copy = |from: &Path, to: PathBuf| -> Result<()> {
        std::fs::create_dir_all(to.parent().unwrap_or(root))?;
        std::fs::copy(from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        Ok(())
    };
    let core = root.join("cluster-api").join(CAPI_VERSION);
    let bootstrap = root.join("bootstrap-kubeadm").join(CAPI_VERSION);
    let ours = root
        .join("infrastructure-ironpool")
        .join(clusterctl::VERSION);
    copy(
        &parts.dir.join("core-components.yaml"),
        core.join("core-components.yaml"),
    )?;
    copy(&parts.dir.join("metadata.yaml"), core.join("metadata.yaml"))?;
    copy(
        &parts.dir.join("bootstrap-components.yaml"),
        bootstrap.join("bootstrap-components.yaml"),
    )?;
    copy(
        &parts.dir.join("metadata.yaml"),
        bootstrap.join("metadata.yaml"),
    )?;
    for f in [
        "infrastructure-components.yaml",
        "metadata.yaml",
        "cluster-template.yaml",
    ] {
        copy(&clusterctl::release_dir().join(f), ours.join(f))?;
    }
    let config = root.join("clusterctl.yaml");
    let text = format!(
        "providers:\n\
         - name: cluster-api\n  type: CoreProvider\n  url: {}\n\
         - name: kubeadm\n  type: BootstrapProvider\n  url: {}\n\
         - name: ironpool\n  type: InfrastructureProvider\n  url: {}\n",
        core.join("core-components.yaml").display(),
        bootstrap.join("bootstrap-components.yaml").display(),
        ours.join("infrastructure-components.yaml").display(),
    );
    std::fs::write(&config, text)?;
    Ok(config)
}

impl Capi {
    /// One Cluster API per test binary, installed on `cp` on first use.
    pub fn shared(cp: &'static ControlPlane) -> Result<&'static Capi> {
        static SHARED: OnceLock<Result<Capi, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| Capi::install(cp).map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|m| anyhow!("Cluster API did not install: {m}"))
    }

    /// `clusterctl` with the local repository's config and its own config directory
    /// (nothing under `$HOME` is touched, no network is asked); commands that talk to the
    /// cluster also need [`Capi::kubeconfig_arg`].
    pub fn clusterctl(&self) -> Command {
        clusterctl_command(&self.parts, &self.dir)
    }

    /// `--kubeconfig=<admin kubeconfig>` for the clusterctl commands that take it.
    pub fn kubeconfig_arg(&self) -> String {
        format!("--kubeconfig={}", self.kubeconfig.display())
    }

    /// The directory with the repository, the webhook certificate and the managers' logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Installs Cluster API with `clusterctl init` and starts the two managers.
    pub fn install(cp: &ControlPlane) -> Result<Capi> {
        let started = Instant::now();
        let parts = Parts::ensure()?;
        let dir = cp.dir().join("capi");
        std::fs::create_dir_all(&dir)?;
        write_repository(&parts, &dir.join("repo"))?;
        let mut watchdog = Watchdog::spawn(&dir)?;
        kubectl_ok(
            cp.kubectl()
                .args(["apply", "--server-side", "-f"])
                .arg(parts.dir.join("cert-manager-crds.yaml")),
        )
        .context("installing cert-manager's CRDs")?;
        crate::cluster::wait_established(
            cp,
            &[
                "crd/certificates.cert-manager.io".as_ref(),
                "crd/issuers.cert-manager.io".as_ref(),
            ],
        )?;
        let token = crate::secret::random_secret(48)?;
        let init = kubectl_ok(
            clusterctl_command(&parts, &dir)
                .env("IRONPOOL_AGENT_TOKEN", token)
                .arg("init")
                .arg(format!("--kubeconfig={}", cp.kubeconfig_path().display()))
                .args(["--core", &format!("cluster-api:{CAPI_VERSION}")])
                .args(["--bootstrap", &format!("kubeadm:{CAPI_VERSION}")])
                .args(["--control-plane", "-"])
                .args([
                    "--infrastructure",
                    &format!("ironpool:{}", clusterctl::VERSION),
                ]),
        )
        .context("clusterctl init")?;
        std::fs::write(dir.join("clusterctl-init.log"), &init)?;
        let certs = dir.join("webhook-certs");
        let ca = crate::pki::write_serving_pki(&certs, "capi-webhooks")?;
        let [core_port, bootstrap_port, p1, p2, p3, p4] = free_ports::<6>()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let client = cp.client().await?;
            point_webhooks_at(&client, "cluster-api", core_port, &ca).await?;
            point_webhooks_at(&client, "bootstrap-kubeadm", bootstrap_port, &ca).await
        })?;
        let mut managers = Vec::new();
        for (name, program, webhook, diagnostics, health) in [
            ("capi-manager", &parts.core_manager, core_port, p1, p2),
            (
                "capi-kubeadm-bootstrap-manager",
                &parts.bootstrap_manager,
                bootstrap_port,
                p3,
                p4,
            ),
        ] {
            let args = vec![
                format!("--kubeconfig={}", cp.kubeconfig_path().display()),
                format!("--webhook-port={webhook}"),
                format!("--webhook-cert-dir={}", certs.display()),
                format!("--diagnostics-address=127.0.0.1:{diagnostics}"),
                "--insecure-diagnostics".into(),
                format!("--health-addr=127.0.0.1:{health}"),
                "--leader-elect=false".into(),
            ];
            managers.push(Server::spawn(name, program, &args, &dir, &mut watchdog)?);
        }
        let mut capi = Capi {
            parts,
            dir,
            kubeconfig: cp.kubeconfig_path().to_path_buf(),
            managers,
            _watchdog: watchdog,
        };
        for (i, port) in [core_port, bootstrap_port].into_iter().enumerate() {
            wait_for_port(port, &mut capi.managers[i])?;
        }
        eprintln!(
            "ironpool-e2e: Cluster API {CAPI_VERSION} installed by clusterctl in {:.1?} ({})",
            started.elapsed(),
            capi.dir.display()
        );
        Ok(capi)
    }
}

fn clusterctl_command(parts: &Parts, dir: &Path) -> Command {
    let mut c = Command::new(&parts.clusterctl);
    c.env("XDG_CONFIG_HOME", dir.join("xdg"))
        .env("CLUSTERCTL_DISABLE_VERSIONCHECK", "true")
        .env("GOPROXY", "off")
        .arg("--config")
        .arg(dir.join("repo/clusterctl.yaml"));
    c
}

fn wait_for_port(port: u16, server: &mut Server) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = server.exited()? {
            bail!(
                "{} exited ({status}) before serving webhooks:\n{}",
                server.name(),
                server.log_tail(40)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!(
        "{} serves no webhooks on 127.0.0.1:{port} after {READY_TIMEOUT:?}:\n{}",
        server.name(),
        server.log_tail(40)
    )
}

/// `service` -> `https://127.0.0.1:<port><path>` with `ca` as caBundle.
fn on_loopback(c: &WebhookClientConfig, port: u16, ca: &str) -> WebhookClientConfig {
    let path = c
        .service
        .as_ref()
        .and_then(|s| s.path.clone())
        .unwrap_or_default();
    WebhookClientConfig {
        url: Some(format!("https://127.0.0.1:{port}{path}")),
        service: None,
        ca_bundle: Some(ByteString(ca.as_bytes().to_vec())),
    }
}

/// Points every admission and conversion webhook of `provider` (by clusterctl's
/// `cluster.x-k8s.io/provider` label) at `127.0.0.1:<port>`.
async fn point_webhooks_at(client: &Client, provider: &str, port: u16, ca: &str) -> Result<()> {
    let lp = ListParams::default().labels(&format!("cluster.x-k8s.io/provider={provider}"));
    let pp = PatchParams::default();
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    for mut w in validating.list(&lp).await? {
        let name = w.metadata.name.clone().unwrap_or_default();
        for h in w.webhooks.iter_mut().flatten() {
            h.client_config = on_loopback(&h.client_config, port, ca);
        }
        let body = serde_json::json!({ "webhooks": w.webhooks });
        validating.patch(&name, &pp, &Patch::Merge(&body)).await?;
    }
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    for mut w in mutating.list(&lp).await? {
        let name = w.metadata.name.clone().unwrap_or_default();
        for h in w.webhooks.iter_mut().flatten() {
            h.client_config = on_loopback(&h.client_config, port, ca);
        }
        let body = serde_json::json!({ "webhooks": w.webhooks });
        mutating.patch(&name, &pp, &Patch::Merge(&body)).await?;
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds.list(&lp).await? {
        let Some(conversion) = crd.spec.conversion.as_ref() else {
            continue;
        };
        let Some(webhook) = conversion.webhook.as_ref() else {
            continue;
        };
        let Some(cc) = webhook.client_config.as_ref() else {
            continue;
        };
        let path = cc
            .service
            .as_ref()
            .and_then(|s| s.path.clone())
            .unwrap_or_default();
        let body = serde_json::json!({ "spec": { "conversion": { "webhook": { "clientConfig": {
            "service": null,
            "url": format!("https://127.0.0.1:{port}{path}"),
            "caBundle": base64::engine::general_purpose::STANDARD.encode(ca),
        }}}}});
        crds.patch(
            crd.metadata.name.as_deref().unwrap_or_default(),
            &pp,
            &Patch::Merge(&body),
        )
        .await?;
    }
    Ok(())
}
