//! Real Argo CD against a test control plane: its application controller and repo server
//! (built from the Go module by `e2e/scripts/build-argocd.sh`) and a Redis, as host
//! processes, syncing from a local git repository that holds a copy of the chart and
//! `examples/`.
//!
//! ```no_run
//! # fn demo(cp: &ironpool_e2e::ControlPlane, dir: &std::path::Path) -> anyhow::Result<()> {
//! use std::time::Duration;
//! let argocd = ironpool_e2e::argocd::ArgoCd::start(cp, dir)?;
//! argocd.apply_application("ironpool", "charts/ironpool", "ironpool-system", None)?;
//! argocd.wait_app("ironpool", "Synced", "Healthy", Duration::from_secs(300))?;
//! # Ok(())
//! # }
//! ```
//!
//! Argo CD runs as upstream runs it outside a cluster (its `Procfile` for `make
//! start-local`): one `argocd` binary per component, chosen by `ARGOCD_BINARY_NAME`;
//! `ARGOCD_FAKE_IN_CLUSTER=true` with `KUBECONFIG`, so the in-cluster destination
//! `https://kubernetes.default.svc` is the control plane's admin kubeconfig; the repo server
//! on a loopback port with the self-signed certificate it makes itself, which the controller
//! accepts without `--repo-server-strict-tls`. (`--disable-tls` alone fails in v3.6.2:
//! `--client-ca-path` has a non-empty default that it refuses to combine with.) argocd-server is not run: the controller needs neither
//! the API nor the UI, so the `default` AppProject (which argocd-server creates on start)
//! is created here. Resource health is persisted in `status.resources`
//! (`--persist-resource-health`; Argo CD 3 keeps it only in Redis by default). The
//! repository is served by `file://` URL, which the repo server accepts (upstream's own e2e
//! fixtures use one).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::{
    Binaries, ControlPlane,
    binaries::run_build_script,
    cluster::kubectl_ok,
    netlab::run,
    process::{Server, Watchdog, free_ports},
};

/// Namespace of Argo CD's own objects.
pub const NAMESPACE: &str = "argocd";
/// The destination that means "the cluster Argo CD runs in".
pub const IN_CLUSTER: &str = "https://kubernetes.default.svc";
/// The README's `argocd-cm` keys start with this.
const HEALTH_PREFIX: &str = "resource.customizations.health.";
/// How long each process gets to listen on its port.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts with fresh ports when a port was taken between picking and binding it.
const PORT_ATTEMPTS: usize = 3;
/// The controller's periodic comparison (`--app-resync`, default 120 s plus up to 60 s of
/// jitter). Not every change reaches the controller as an event: a CRD's status (its
/// health) does not requeue the Application that installed it, so without this an
/// Application waits up to three minutes to read Healthy after its CRDs are Established.
const APP_RESYNC_SECONDS: u32 = 20;
/// Lines of each log quoted on a failure.
const LOG_TAIL: usize = 40;

/// Paths printed by `build-argocd.sh`.
#[derive(Debug, Clone)]
pub struct ArgoCdBinaries {
    /// The `argocd` multi-binary.
    pub argocd: PathBuf,
    /// The module's `manifests/crds/` (`application-crd.yaml`, `appproject-crd.yaml`, ...).
    pub crds: PathBuf,
    /// Debian's `redis-server`.
    pub redis_server: PathBuf,
}

impl ArgoCdBinaries {
    /// Builds Argo CD once (a no-op when cached) and installs redis-server when missing.
    pub fn ensure() -> Result<ArgoCdBinaries> {
        static CACHED: Mutex<Option<ArgoCdBinaries>> = Mutex::new(None);
        let mut cached = CACHED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(found) = cached.as_ref() {
            return Ok(found.clone());
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-argocd.sh");
        let stdout = run_build_script(&script)?;
        let value = |key: &str| {
            stdout
                .lines()
                .find_map(|line| line.trim().strip_prefix(key)?.strip_prefix('='))
                .map(PathBuf::from)
                .with_context(|| format!("{} printed no {key}= line: {stdout:?}", script.display()))
        };
        let found = ArgoCdBinaries {
            argocd: value("ARGOCD")?,
            crds: value("ARGOCD_CRDS")?,
            redis_server: value("REDIS_SERVER")?,
        };
        for path in [&found.argocd, &found.redis_server] {
            if !path.is_file() {
                bail!("{} is missing after {}", path.display(), script.display());
            }
        }
        *cached = Some(found.clone());
        Ok(found)
    }
}

/// The Argo CD health checks of `charts/ironpool/README.md` (its `argocd-cm` block): every
/// `resource.customizations.health.<group>_<Kind>` key with its Lua.
pub fn health_checks() -> Result<BTreeMap<String, String>> {
    let path = crate::repo_dir().join("charts/ironpool/README.md");
    let readme =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let fence = "```yaml\ndata:\n";
    let start = readme
        .find(fence)
        .with_context(|| format!("{} has no argocd-cm block ({fence:?})", path.display()))?
        + "```yaml\n".len();
    let end = start
        + readme[start..]
            .find("```")
            .with_context(|| format!("the argocd-cm block of {} is not closed", path.display()))?;
    let doc: Value = serde_saphyr::from_str(&readme[start..end])
        .with_context(|| format!("parsing the argocd-cm block of {}", path.display()))?;
    let data = doc["data"]
        .as_object()
        .context("the README's argocd-cm block has no data map")?;
    Ok(data
        .iter()
        .filter(|(key, _)| key.starts_with(HEALTH_PREFIX))
        .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_owned())))
        .collect())
}

/// The README's health check (Lua) for `metal.ironpool.dev/<kind>`.
pub fn health_check(kind: &str) -> Result<String> {
    let key = format!("{HEALTH_PREFIX}metal.ironpool.dev_{kind}");
    health_checks()?
        .remove(&key)
        .with_context(|| format!("no {key} in the README's argocd-cm block"))
}

/// A running Argo CD (Redis, repo server, application controller) for one control plane,
/// with the git repository it syncs from. Dropping it kills the processes and removes its
/// directory; if the test process dies instead, a watchdog does the same.
pub struct ArgoCd {
    dir: PathBuf,
    repo: PathBuf,
    kubeconfig: PathBuf,
    kubectl: PathBuf,
    // Killed in this order: controller, repo server, Redis.
    servers: Vec<Server>,
    watchdog: Option<Watchdog>,
}

impl std::fmt::Debug for ArgoCd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArgoCd")
            .field("dir", &self.dir)
            .field("repo", &self.repo)
            .finish_non_exhaustive()
    }
}

impl ArgoCd {
    /// Builds Argo CD if needed; creates `<dir>/argocd` with a git repository holding
    /// `charts/ironpool` and `examples/` (one commit on `main`); installs Argo CD's CRDs,
    /// namespace `argocd`, `argocd-cm` (with the README's health checks), `argocd-rbac-cm`,
    /// `argocd-secret` and the `default` AppProject; and starts Redis, the repo server
    /// (with helm on its PATH) and the application controller.
    pub fn start(cp: &ControlPlane, dir: &Path) -> Result<ArgoCd> {
        let binaries = ArgoCdBinaries::ensure()?;
        let helm = crate::helm()?;
        let kubectl = Binaries::ensure()?.kubectl;
        let started = Instant::now();
        let dir = dir.join("argocd");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut argocd = ArgoCd {
            repo: dir.join("repo"),
            kubeconfig: cp.kubeconfig_path().to_owned(),
            kubectl,
            servers: Vec::new(),
            watchdog: Some(Watchdog::spawn(&dir)?),
            dir,
        };
        argocd.init_repo()?;
        argocd.install(&binaries)?;
        let mut attempt = 1;
        loop {
            match argocd.launch(&binaries, &helm) {
                Ok(()) => break,
                Err(error) => {
                    let taken = argocd
                        .servers
                        .iter()
                        .any(|server| server.log_contains("address already in use"));
                    let tails = argocd.log_tails();
                    argocd.kill_servers();
                    if taken && attempt < PORT_ATTEMPTS {
                        eprintln!("ironpool-e2e: Argo CD: a port was taken, retrying: {error:#}");
                        attempt += 1;
                        continue;
                    }
                    return Err(error.context(format!("Argo CD did not start\n{tails}")));
                }
            }
        }
        eprintln!(
            "ironpool-e2e: Argo CD (controller, repo server, redis) up in {:.1?} (dir {})",
            started.elapsed(),
            argocd.dir.display()
        );
        Ok(argocd)
    }

    /// The directory holding the logs (`redis.log`, `argocd-repo-server.log`,
    /// `argocd-application-controller.log`) and the repository.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The working tree of the git repository Argo CD syncs from.
    pub fn repo_dir(&self) -> &Path {
        &self.repo
    }

    /// The URL Applications name as `repoURL`.
    pub fn repo_url(&self) -> String {
        format!("file://{}", self.repo.display())
    }

    /// Writes `contents` to `path` (relative to the repository root, directories created)
    /// and commits it on `main`; returns the new commit's SHA. Refresh the Applications
    /// ([`ArgoCd::refresh`]) to have Argo CD see it before its next periodic poll.
    pub fn commit_file(&self, path: &str, contents: &str) -> Result<String> {
        let file = self.repo.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&file, contents).with_context(|| format!("writing {}", file.display()))?;
        self.git(&["add", "--", path])?;
        self.git(&["commit", "-q", "-m", &format!("update {path}")])?;
        Ok(self.git(&["rev-parse", "HEAD"])?.trim().to_owned())
    }

    /// Creates or updates Application `name` for `path` of the repository at `main`,
    /// deploying into `namespace` of this cluster, with `helm_values` (YAML) for a chart:
    /// automated sync with prune (selfHeal off), `CreateNamespace=true` and
    /// `ServerSideApply=true` (the CRDs are too large for client-side apply's annotation).
    pub fn apply_application(
        &self,
        name: &str,
        path: &str,
        namespace: &str,
        helm_values: Option<&str>,
    ) -> Result<()> {
        let mut source =
            json!({"repoURL": self.repo_url(), "targetRevision": "main", "path": path});
        if let Some(values) = helm_values {
            source["helm"] = json!({"values": values});
        }
        self.apply_application_spec(
            name,
            json!({
                "project": "default",
                "source": source,
                "destination": {"server": IN_CLUSTER, "namespace": namespace},
                "syncPolicy": {
                    "automated": {"prune": true, "selfHeal": false},
                    "syncOptions": ["CreateNamespace=true", "ServerSideApply=true"],
                },
            }),
        )
    }

    /// Creates or updates Application `name` with `spec` as given (server-side apply).
    pub fn apply_application_spec(&self, name: &str, spec: Value) -> Result<()> {
        let app = json!({
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Application",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": spec,
        });
        self.apply(&format!("application-{name}"), &app)
            .with_context(|| format!("applying Application {name}"))
    }

    /// Asks the controller to compare Application `name` with git and the cluster now
    /// (annotation `argocd.argoproj.io/refresh=normal`, which it removes when done).
    pub fn refresh(&self, name: &str) -> Result<()> {
        kubectl_ok(self.kubectl().args([
            "-n",
            NAMESPACE,
            "annotate",
            "--overwrite",
            "applications.argoproj.io",
            name,
            "argocd.argoproj.io/refresh=normal",
        ]))
        .with_context(|| format!("refreshing Application {name}"))?;
        Ok(())
    }

    /// Application `name` as JSON.
    pub fn application(&self, name: &str) -> Result<Value> {
        let out = kubectl_ok(self.kubectl().args([
            "-n",
            NAMESPACE,
            "get",
            "applications.argoproj.io",
            name,
            "-o",
            "json",
        ]))?;
        serde_json::from_str(&out).with_context(|| format!("parsing Application {name}"))
    }

    /// `(sync status, health status, status)` of Application `name`; the first two are
    /// empty until the controller has reconciled it.
    pub fn app_status(&self, name: &str) -> Result<(String, String, Value)> {
        let status = self.application(name)?["status"].take();
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        Ok((
            text(&status["sync"]["status"]),
            text(&status["health"]["status"]),
            status,
        ))
    }

    /// `(health status, message)` of one resource of Application `app`, from
    /// `status.resources` (`group` is empty for the core API group); `None` when the
    /// resource is not listed or has no health yet.
    pub fn resource_health(
        &self,
        app: &str,
        group: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<(String, String)>> {
        let (_, _, status) = self.app_status(app)?;
        Ok(
            find_resource(&status, group, kind, namespace, name).and_then(|resource| {
                let health = &resource["health"];
                let status = health["status"].as_str()?.to_owned();
                let message = health["message"].as_str().unwrap_or_default().to_owned();
                Some((status, message))
            }),
        )
    }

    /// Waits until Application `name` is `sync` (e.g. `Synced`) and `health` (e.g.
    /// `Healthy`); returns its status. On a timeout the error (also printed) carries the
    /// Application's conditions, operation state and unhealthy or unsynced resources, and
    /// the tails of the controller's and repo server's logs.
    pub fn wait_app(
        &self,
        name: &str,
        sync: &str,
        health: &str,
        timeout: Duration,
    ) -> Result<Value> {
        let started = Instant::now();
        loop {
            let last = match self.app_status(name) {
                Ok((s, h, status)) if s == sync && h == health => return Ok(status),
                Ok((_, _, status)) => status,
                Err(error) => json!({"error": format!("{error:#}")}),
            };
            if started.elapsed() > timeout {
                let report = format!(
                    "Application {name} was not {sync}/{health} within {timeout:?}\n{}\n{}",
                    describe(&last),
                    self.log_tails()
                );
                eprintln!("{report}");
                return Err(anyhow!(report));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The last lines of the controller's and the repo server's logs.
    pub fn log_tails(&self) -> String {
        self.servers
            .iter()
            .filter(|server| server.name() != "redis")
            .map(|server| server.log_tail(LOG_TAIL))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Kills the controller, the repo server and Redis, and removes the directory.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.kill_servers();
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.disarm();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn kill_servers(&mut self) {
        for mut server in self.servers.drain(..).rev() {
            server.kill();
        }
    }

    /// `kubectl` with the admin kubeconfig and a discovery cache of Argo CD's own.
    fn kubectl(&self) -> Command {
        let mut command = Command::new(&self.kubectl);
        command
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!(
                "--cache-dir={}",
                self.dir.join("kubectl-cache").display()
            ));
        command
    }

    /// Server-side applies `object` (written to `<dir>/manifests/<file>.json`).
    fn apply(&self, file: &str, object: &Value) -> Result<()> {
        let manifests = self.dir.join("manifests");
        std::fs::create_dir_all(&manifests)?;
        let path = manifests.join(format!("{file}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(object)?)
            .with_context(|| format!("writing {}", path.display()))?;
        kubectl_ok(
            self.kubectl()
                .args([
                    "apply",
                    "--server-side",
                    "--force-conflicts",
                    "--field-manager=ironpool-e2e",
                    "-f",
                ])
                .arg(&path),
        )?;
        Ok(())
    }

    fn git(&self, args: &[&str]) -> Result<String> {
        run(Command::new("git")
            .arg("-C")
            .arg(&self.repo)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "ironpool-e2e")
            .env("GIT_AUTHOR_EMAIL", "e2e@ironpool.invalid")
            .env("GIT_COMMITTER_NAME", "ironpool-e2e")
            .env("GIT_COMMITTER_EMAIL", "e2e@ironpool.invalid"))
        .with_context(|| format!("git {args:?} in {}", self.repo.display()))
    }

    /// The repository: `charts/ironpool` and `examples/` copied from this checkout.
    fn init_repo(&self) -> Result<()> {
        let source = crate::repo_dir();
        std::fs::create_dir_all(self.repo.join("charts"))?;
        run(Command::new("cp")
            .arg("-r")
            .arg(source.join("charts/ironpool"))
            .arg(self.repo.join("charts")))?;
        run(Command::new("cp")
            .arg("-r")
            .arg(source.join("examples"))
            .arg(&self.repo))?;
        self.git(&["init", "-q", "-b", "main"])?;
        self.git(&["add", "."])?;
        self.git(&["commit", "-q", "-m", "charts/ironpool and examples/"])?;
        Ok(())
    }

    /// Argo CD's CRDs, namespace, settings and default project.
    fn install(&self, binaries: &ArgoCdBinaries) -> Result<()> {
        // ApplicationSets are not used; their CRD alone is 1.5 MB.
        for crd in ["application-crd.yaml", "appproject-crd.yaml"] {
            let path = binaries.crds.join(crd);
            kubectl_ok(
                self.kubectl()
                    .args(["apply", "--server-side", "-f"])
                    .arg(&path),
            )?;
        }
        // Polled rather than `kubectl wait`, which fails while a new CRD has no conditions.
        let started = Instant::now();
        for name in ["applications.argoproj.io", "appprojects.argoproj.io"] {
            let established = r#"jsonpath={.status.conditions[?(@.type=="Established")].status}"#;
            while kubectl_ok(self.kubectl().args(["get", "crd", name, "-o", established]))?.trim()
                != "True"
            {
                if started.elapsed() > START_TIMEOUT {
                    bail!("CRD {name} was not Established within {START_TIMEOUT:?}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        self.apply(
            "namespace",
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
        )?;
        let labels = |name: &str| {
            json!({"name": name, "namespace": NAMESPACE,
                   "labels": {"app.kubernetes.io/part-of": "argocd"}})
        };
        let mut data = serde_json::Map::new();
        for (key, lua) in health_checks()? {
            data.insert(key, Value::String(lua));
        }
        self.apply(
            "argocd-cm",
            &json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": labels("argocd-cm"), "data": data}),
        )?;
        self.apply(
            "argocd-rbac-cm",
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": labels("argocd-rbac-cm")}),
        )?;
        let key = crate::secret::random_secret(32)?;
        self.apply(
            "argocd-secret",
            &json!({"apiVersion": "v1", "kind": "Secret", "metadata": labels("argocd-secret"),
                    "stringData": {"server.secretkey": key}}),
        )?;
        self.apply(
            "appproject-default",
            &json!({
                "apiVersion": "argoproj.io/v1alpha1", "kind": "AppProject",
                "metadata": {"name": "default", "namespace": NAMESPACE},
                "spec": {
                    "sourceRepos": ["*"],
                    "destinations": [{"server": "*", "namespace": "*"}],
                    "clusterResourceWhitelist": [{"group": "*", "kind": "*"}],
                },
            }),
        )
    }

    /// Starts Redis, the repo server and the controller on fresh ports and waits until
    /// each listens.
    fn launch(&mut self, binaries: &ArgoCdBinaries, helm: &Path) -> Result<()> {
        let [redis_port, repo_port, repo_metrics, controller_metrics] = free_ports::<4>()?;
        let redis = format!("127.0.0.1:{redis_port}");
        let redis_dir = self.subdir("redis")?;
        let tmp = self.subdir("tmp")?;
        let home = self.subdir("home")?;
        let tls = self.subdir("tls")?;
        let ssh = self.subdir("ssh")?;
        let gpg = self.subdir("gpg")?;
        let mut redis_cmd = Command::new(&binaries.redis_server);
        redis_cmd
            .args(["--bind", "127.0.0.1", "--port", &redis_port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&redis_dir);
        self.spawn("redis", redis_cmd, &[], redis_port)?;

        // helm renders charts; git-verify-wrapper.sh sits next to argocd (see the build
        // script); git and the rest come from the system.
        let dir_of = |p: &Path| p.parent().unwrap_or(Path::new("/")).display().to_string();
        let path = format!(
            "{}:{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            dir_of(helm),
            dir_of(&binaries.argocd)
        );
        let kubeconfig = self.kubeconfig.display().to_string();
        let (tmp, home) = (tmp.display().to_string(), home.display().to_string());
        let (tls, ssh, gpg) = (
            tls.display().to_string(),
            ssh.display().to_string(),
            gpg.display().to_string(),
        );
        let common: Vec<(&str, &str)> = vec![
            ("ARGOCD_FAKE_IN_CLUSTER", "true"),
            ("KUBECONFIG", &kubeconfig),
            ("TMPDIR", &tmp),
            ("HOME", &home),
            ("ARGOCD_TLS_DATA_PATH", &tls),
            ("ARGOCD_SSH_DATA_PATH", &ssh),
            ("ARGOCD_GNUPGHOME", &gpg),
            ("ARGOCD_GPG_DATA_PATH", &gpg),
            ("ARGOCD_GPG_ENABLED", "false"),
            ("GIT_CONFIG_NOSYSTEM", "1"),
            ("PATH", &path),
        ];

        let mut repo_env = common.clone();
        repo_env.push(("ARGOCD_BINARY_NAME", "argocd-repo-server"));
        let mut repo_server = Command::new(&binaries.argocd);
        repo_server.args([
            "--address=127.0.0.1",
            &format!("--port={repo_port}"),
            "--metrics-address=127.0.0.1",
            &format!("--metrics-port={repo_metrics}"),
            &format!("--redis={redis}"),
            "--logformat=text",
        ]);
        self.spawn("argocd-repo-server", repo_server, &repo_env, repo_port)?;

        let mut controller_env = common;
        controller_env.push(("ARGOCD_BINARY_NAME", "argocd-application-controller"));
        let mut controller = Command::new(&binaries.argocd);
        controller.arg(format!("--kubeconfig={kubeconfig}")).args([
            &format!("--namespace={NAMESPACE}"),
            &format!("--redis={redis}"),
            &format!("--repo-server=127.0.0.1:{repo_port}"),
            &format!("--metrics-port={controller_metrics}"),
            "--persist-resource-health",
            &format!("--app-resync={APP_RESYNC_SECONDS}"),
            "--app-resync-jitter=0",
            "--logformat=text",
        ]);
        self.spawn(
            "argocd-application-controller",
            controller,
            &controller_env,
            controller_metrics,
        )
    }

    fn subdir(&self, name: &str) -> Result<PathBuf> {
        let path = self.dir.join(name);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(path)
    }

    /// Starts `command` as `name` and waits until it listens on loopback `port`.
    fn spawn(
        &mut self,
        name: &'static str,
        command: Command,
        env: &[(&str, &str)],
        port: u16,
    ) -> Result<()> {
        let watchdog = self.watchdog.as_mut().context("Argo CD was stopped")?;
        let server = Server::spawn_command(name, command, env, &self.dir, watchdog)?;
        let server = {
            self.servers.push(server);
            self.servers
                .last_mut()
                .context("internal error: no server")?
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let started = Instant::now();
        loop {
            if let Some(status) = server.exited()? {
                bail!("{name} exited ({status}) before listening on port {port}");
            }
            if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                bail!("{name} did not listen on port {port} within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ArgoCd {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The entry of `status.resources` for one resource.
fn find_resource<'a>(
    status: &'a Value,
    group: &str,
    kind: &str,
    namespace: &str,
    name: &str,
) -> Option<&'a Value> {
    let text = |r: &Value, key: &str| r[key].as_str().unwrap_or_default().to_owned();
    status["resources"].as_array()?.iter().find(|r| {
        text(r, "group") == group
            && text(r, "kind") == kind
            && text(r, "namespace") == namespace
            && text(r, "name") == name
    })
}

/// What an Application's status says about why it is not where a test waits for it.
fn describe(status: &Value) -> String {
    let mut out = format!(
        "sync {} (revision {}), health {} {}",
        status["sync"]["status"],
        status["sync"]["revision"],
        status["health"]["status"],
        status["health"]["message"]
    );
    if let Some(conditions) = status["conditions"].as_array() {
        for c in conditions {
            out.push_str(&format!("\ncondition {}: {}", c["type"], c["message"]));
        }
    }
    let op = &status["operationState"];
    if !op.is_null() {
        out.push_str(&format!(
            "\noperation {} {}: {}",
            op["phase"], op["syncResult"]["revision"], op["message"]
        ));
        for r in op["syncResult"]["resources"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if r["status"] != "Synced" {
                out.push_str(&format!(
                    "\n  sync {} {}/{}: {} {}",
                    r["kind"], r["namespace"], r["name"], r["status"], r["message"]
                ));
            }
        }
    }
    for r in status["resources"].as_array().into_iter().flatten() {
        let healthy = r["health"].is_null() || r["health"]["status"] == "Healthy";
        if r["status"] != "Synced" || !healthy {
            out.push_str(&format!(
                "\nresource {} {}/{}: {}, health {} {}",
                r["kind"],
                r["namespace"],
                r["name"],
                r["status"],
                r["health"]["status"],
                r["health"]["message"]
            ));
        }
    }
    if status.get("error").is_some() {
        out.push_str(&format!("\n{}", status["error"]));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_has_a_health_check_per_kind() {
        let checks = health_checks().unwrap();
        for kind in ["Machine", "Subnet", "Deployment"] {
            let lua = health_check(kind).unwrap();
            assert!(lua.contains("return hs"), "{kind}: {lua}");
        }
        assert_eq!(checks.len(), 3, "{:?}", checks.keys());
    }

    #[test]
    fn finds_resources_by_group_kind_namespace_and_name() {
        let status = json!({"resources": [
            {"group": "apps", "kind": "Deployment", "namespace": "a", "name": "x",
             "health": {"status": "Healthy"}},
            {"group": "metal.ironpool.dev", "kind": "Deployment", "namespace": "a", "name": "x",
             "health": {"status": "Degraded", "message": "failed"}},
            {"kind": "Secret", "namespace": "a", "name": "s"},
        ]});
        let found = find_resource(&status, "metal.ironpool.dev", "Deployment", "a", "x").unwrap();
        assert_eq!(found["health"]["status"], "Degraded");
        assert!(find_resource(&status, "", "Secret", "a", "s").is_some());
        assert!(find_resource(&status, "", "Secret", "b", "s").is_none());
    }
}
