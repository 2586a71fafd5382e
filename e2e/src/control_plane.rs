//! A real control plane for tests: etcd and kube-apiserver with TLS and RBAC, on free
//! loopback ports, in a fresh temporary directory.

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use kube::Client;

use crate::{
    Binaries, client,
    pki::{self, PkiFiles},
    process::{Server, Watchdog, free_ports},
};

/// How long the apiserver gets to answer `/readyz` with `ok`.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long etcd gets to accept connections on its client port.
const ETCD_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts with fresh ports when a port was taken between picking and binding it.
const PORT_ATTEMPTS: usize = 5;
/// Lines of each server log quoted in a start failure.
const LOG_TAIL: usize = 40;

/// A running etcd + kube-apiserver. Dropping it (or [`ControlPlane::stop`]) kills the
/// apiserver, then etcd, and removes the directory; if the test process dies instead, a
/// watchdog process does the same.
///
/// By default there is no controller-manager or scheduler: no garbage collection of owned
/// objects, no namespace finalization, no pods scheduled. [`ControlPlane::create_namespace`]
/// creates the namespace's `default` ServiceAccount itself. [`Options::controllers`] adds
/// both, for tests that run pods on a [`crate::node::Node`].
pub struct ControlPlane {
    processes: Processes,
    kubeconfig: PathBuf,
    server_url: String,
    ca_cert: PathBuf,
    ca_key: PathBuf,
    kubectl: PathBuf,
    nodes: Vec<pki::NodeCredentials>,
}

/// How to start a [`ControlPlane`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Extra environment variables for kube-apiserver (see
    /// [`ControlPlane::start_with_apiserver_env`]).
    pub apiserver_env: Vec<(String, String)>,
    /// The address kube-apiserver binds and advertises instead of 127.0.0.1: a local
    /// address that a node's network namespace can reach (the host end of its veth). It
    /// is added to the serving certificate, and the admin kubeconfig uses it.
    pub bind_address: Option<Ipv4Addr>,
    /// Also run kube-controller-manager and kube-scheduler (built next to kube-apiserver),
    /// so Deployments, DaemonSets and garbage collection work and pods get scheduled.
    pub controllers: bool,
    /// Node names to issue kubelet client certificates for.
    pub nodes: Vec<String>,
}

impl fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server_url", &self.server_url)
            .field("kubeconfig", &self.kubeconfig)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver on free loopback ports in a fresh temporary directory
    /// and waits for `/readyz`. Blocking; works from any thread, inside a tokio runtime or
    /// not. On failure the directory (logs, certificates, kubeconfig) is kept and its path
    /// is in the error.
    pub fn start() -> Result<ControlPlane> {
        Self::start_with_apiserver_env(&[])
    }

    /// [`ControlPlane::start`] with extra environment variables for kube-apiserver, e.g.
    /// `GODEBUG=tlssha1=1` for a lab whose clients (busybox's TLS) send no
    /// signature_algorithms and so can only be served SHA-1 signatures.
    pub fn start_with_apiserver_env(env: &[(&str, &str)]) -> Result<ControlPlane> {
        Self::start_with(&Options {
            apiserver_env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Options::default()
        })
    }

    /// A control plane started as `options` say.
    pub fn start_with(options: &Options) -> Result<ControlPlane> {
        let binaries = Binaries::ensure()?;
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            match start_once(&binaries, options) {
                Ok(control_plane) => {
                    eprintln!(
                        "ironpool-e2e: control plane ready at {} in {:.1?} (dir {})",
                        control_plane.server_url,
                        started.elapsed(),
                        control_plane.dir().display()
                    );
                    return Ok(control_plane);
                }
                Err(StartError::PortTaken(error)) if attempt < PORT_ATTEMPTS => {
                    eprintln!("ironpool-e2e: a port was taken, retrying with new ports: {error:#}");
                    attempt += 1;
                }
                Err(StartError::PortTaken(error) | StartError::Failed(error)) => return Err(error),
            }
        }
    }

    /// One control plane per test binary, started on first use and shared by all its tests
    /// (isolate them by namespace). It is never dropped; the watchdog tears it down when the
    /// test process exits. A failed start is remembered and reported to every caller.
    pub fn shared() -> Result<&'static ControlPlane> {
        static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| ControlPlane::start().map_err(|error| format!("{error:#}")))
            .as_ref()
            .map_err(|message| anyhow!("the shared control plane did not start: {message}"))
    }

    /// The admin kubeconfig (client certificate in group `system:masters`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The apiserver's URL, `https://127.0.0.1:<port>` (or the bind address asked for).
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The CA certificate (PEM file) that signed every certificate of this control plane.
    pub fn ca_cert_path(&self) -> &Path {
        &self.ca_cert
    }

    /// The CA's private key (PEM file, mode 0600): a test that plays a cluster's own CA
    /// (e.g. a Cluster API workload cluster whose `<cluster>-ca` Secret it provides) signs
    /// with it.
    pub fn ca_key_path(&self) -> &Path {
        &self.ca_key
    }

    /// The temporary directory holding logs (`etcd.log`, `kube-apiserver.log`), `pki/` and
    /// the kubeconfig.
    pub fn dir(&self) -> &Path {
        self.processes.dir.as_deref().unwrap_or(Path::new(""))
    }

    /// Process ids of kube-apiserver and etcd, in that order; each leads its own process
    /// group.
    pub fn pids(&self) -> Vec<u32> {
        let processes = &self.processes;
        processes
            .apiserver
            .iter()
            .chain(processes.etcd.iter())
            .map(Server::pid)
            .collect()
    }

    /// The kubelet client certificate and key issued for node `name` (see
    /// [`Options::nodes`]).
    pub(crate) fn node_credentials(&self, name: &str) -> Result<&pki::NodeCredentials> {
        self.nodes
            .iter()
            .find(|node| node.name == name)
            .with_context(|| format!("no kubelet certificate for node {name}: start the control plane with it in Options::nodes"))
    }

    /// A new admin client for the caller's tokio runtime.
    pub async fn client(&self) -> Result<Client> {
        client::client_from_file(&self.kubeconfig).await
    }

    /// A new client that authenticates with a bearer `token`, e.g. one from the TokenRequest
    /// API, for testing RBAC.
    pub async fn client_with_token(&self, token: &str) -> Result<Client> {
        client::client_with_token(&self.server_url, &self.ca_cert, token).await
    }

    /// `kubectl` with `--kubeconfig` set to the admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new(&self.kubectl);
        command.arg(format!("--kubeconfig={}", self.kubeconfig.display()));
        // A cache of our own: kubectl keys its discovery/OpenAPI cache by host:port, and a
        // port reused from an earlier control plane would serve that one's stale schemas.
        command.arg(format!(
            "--cache-dir={}",
            self.dir().join("kubectl-cache").display()
        ));
        command
    }

    /// Creates a namespace named `<prefix>-<random>` with its `default` ServiceAccount and
    /// returns the name.
    pub async fn create_namespace(&self, prefix: &str) -> Result<String> {
        client::create_namespace(self.client().await?, prefix).await
    }

    /// Kills the apiserver, then etcd, and removes the directory.
    pub fn stop(mut self) {
        self.processes.shutdown(false);
    }
}

/// Why one start attempt failed.
enum StartError {
    /// A server could not bind a port that was free when picked; worth a retry.
    PortTaken(anyhow::Error),
    /// Anything else.
    Failed(anyhow::Error),
}

/// Everything one start attempt created, torn down in order on drop.
struct Processes {
    dir: Option<PathBuf>,
    watchdog: Option<Watchdog>,
    etcd: Option<Server>,
    apiserver: Option<Server>,
    /// kube-controller-manager and kube-scheduler, when asked for.
    controllers: Vec<Server>,
}

impl Processes {
    fn servers(&self) -> impl Iterator<Item = &Server> {
        self.etcd
            .iter()
            .chain(self.apiserver.iter())
            .chain(self.controllers.iter())
    }

    /// Kills the controllers, the apiserver, then etcd, disarms the watchdog, and removes
    /// the directory unless `keep_dir`. Idempotent.
    fn shutdown(&mut self, keep_dir: bool) {
        for mut controller in self.controllers.drain(..) {
            controller.kill();
        }
        if let Some(mut apiserver) = self.apiserver.take() {
            apiserver.kill();
        }
        if let Some(mut etcd) = self.etcd.take() {
            etcd.kill();
        }
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.disarm();
        }
        if let Some(dir) = self.dir.take()
            && !keep_dir
        {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.shutdown(false);
    }
}

fn start_once(binaries: &Binaries, options: &Options) -> Result<ControlPlane, StartError> {
    let dir = tempfile::Builder::new()
        .prefix("ironpool-cp-")
        .tempdir()
        .context("creating the control plane's temporary directory")
        .map_err(StartError::Failed)?
        .keep();
    let mut processes = Processes {
        dir: Some(dir.clone()),
        watchdog: None,
        etcd: None,
        apiserver: None,
        controllers: Vec::new(),
    };
    match launch(&mut processes, binaries, &dir, options) {
        Ok(control_plane) => Ok(control_plane),
        Err(error) => {
            if processes
                .servers()
                .any(|server| server.log_contains("address already in use"))
            {
                processes.shutdown(false);
                return Err(StartError::PortTaken(error));
            }
            let tails: Vec<String> = processes
                .servers()
                .map(|server| server.log_tail(LOG_TAIL))
                .collect();
            processes.shutdown(true);
            eprintln!(
                "ironpool-e2e: control plane failed to start; kept {}",
                dir.display()
            );
            Err(StartError::Failed(anyhow!(
                "the control plane failed to start: {error:#}\nfiles kept in {}\n{}\n--- end of logs ---",
                dir.display(),
                tails.join("\n")
            )))
        }
    }
}

/// Writes certificates, starts etcd and the apiserver, and waits until they are ready.
/// On success the processes move into the returned [`ControlPlane`].
fn launch(
    processes: &mut Processes,
    binaries: &Binaries,
    dir: &Path,
    options: &Options,
) -> Result<ControlPlane> {
    let watchdog = processes.watchdog.insert(Watchdog::spawn(dir)?);
    let extra_sans: Vec<String> = options
        .bind_address
        .iter()
        .map(ToString::to_string)
        .collect();
    let pki = pki::write_pki(&dir.join("pki"), &extra_sans, &options.nodes)?;
    let [etcd_port, peer_port, apiserver_port] = free_ports::<3>()?;

    let etcd_args = etcd_args(dir, &pki, etcd_port, peer_port);
    let etcd = processes.etcd.insert(Server::spawn(
        "etcd",
        &binaries.etcd,
        &etcd_args,
        dir,
        watchdog,
    )?);
    wait_for_port(etcd, etcd_port, ETCD_TIMEOUT)?;

    let address = options.bind_address.unwrap_or(Ipv4Addr::LOCALHOST);
    let server_url = format!("https://{address}:{apiserver_port}");
    let kubeconfig = dir.join("kubeconfig");
    client::write_admin_kubeconfig(&kubeconfig, &server_url, &pki)?;
    let mut apiserver_args = apiserver_args(dir, &pki, etcd_port, address, apiserver_port);
    apiserver_args.extend(audit_args(dir)?);
    let env: Vec<(&str, &str)> = options
        .apiserver_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    processes.apiserver = Some(Server::spawn_with_env(
        "kube-apiserver",
        &binaries.kube_apiserver,
        &apiserver_args,
        &env,
        dir,
        watchdog,
    )?);
    match (&mut processes.etcd, &mut processes.apiserver) {
        (Some(etcd), Some(apiserver)) => {
            client::wait_ready(&kubeconfig, &mut [apiserver, etcd], READY_TIMEOUT)?;
        }
        _ => bail!("internal error: a server handle went missing during start"),
    }
    if options.controllers {
        let kubeconfig_arg = path_arg("kubeconfig", &kubeconfig);
        // Both use the admin kubeconfig and serve nothing (--secure-port=0): the tests
        // need their controllers, not their endpoints or per-controller identities.
        let controller_manager = vec![
            kubeconfig_arg.clone(),
            "--secure-port=0".to_owned(),
            "--leader-elect=false".to_owned(),
            // The CA every pod's kube-root-ca.crt ConfigMap carries.
            path_arg("root-ca-file", &pki.ca_cert),
            path_arg("service-account-private-key-file", &pki.service_account_key),
            "--controllers=*".to_owned(),
        ];
        let scheduler = vec![
            kubeconfig_arg,
            "--secure-port=0".to_owned(),
            "--leader-elect=false".to_owned(),
        ];
        for (name, program, args) in [
            (
                "kube-controller-manager",
                binaries
                    .kube_apiserver
                    .with_file_name("kube-controller-manager"),
                controller_manager,
            ),
            (
                "kube-scheduler",
                binaries.kube_apiserver.with_file_name("kube-scheduler"),
                scheduler,
            ),
        ] {
            let server = Server::spawn(name, &program, &args, dir, watchdog)?;
            processes.controllers.push(server);
        }
    }

    Ok(ControlPlane {
        processes: Processes {
            dir: processes.dir.take(),
            watchdog: processes.watchdog.take(),
            etcd: processes.etcd.take(),
            apiserver: processes.apiserver.take(),
            controllers: std::mem::take(&mut processes.controllers),
        },
        kubeconfig,
        server_url,
        ca_cert: pki.ca_cert,
        ca_key: pki.ca_key,
        kubectl: binaries.kubectl.clone(),
        nodes: pki.nodes,
    })
}

/// Waits until `port` on loopback accepts connections while `server` keeps running.
fn wait_for_port(server: &mut Server, port: u16, timeout: Duration) -> Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let started = Instant::now();
    loop {
        if let Some(status) = server.exited()? {
            bail!(
                "{} exited ({status}) before listening on port {port}{}",
                server.name(),
                disk_full_hint(server)
            );
        }
        if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!(
                "{} did not listen on port {port} within {timeout:?}",
                server.name()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A sentence for an early exit caused by a full disk: etcd reports ENOSPC only as
/// `PathError=&{write <file> 28}` in its log, which does not say "disk full".
fn disk_full_hint(server: &Server) -> &'static str {
    if server.log_contains("no space left on device") || server.log_contains(" 28})") {
        "; its log shows a write that failed with ENOSPC: the disk is full, free space \
         (target/ and ~/.cache/go-build are the large ones) and run again"
    } else {
        ""
    }
}

fn path_arg(flag: &str, path: &Path) -> String {
    format!("--{flag}={}", path.display())
}

fn etcd_args(dir: &Path, pki: &PkiFiles, client_port: u16, peer_port: u16) -> Vec<String> {
    let client_url = format!("https://127.0.0.1:{client_port}");
    let peer_url = format!("https://127.0.0.1:{peer_port}");
    vec![
        "--name=ironpool".to_owned(),
        path_arg("data-dir", &dir.join("etcd-data")),
        format!("--listen-client-urls={client_url}"),
        format!("--advertise-client-urls={client_url}"),
        format!("--listen-peer-urls={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster=ironpool={peer_url}"),
        path_arg("cert-file", &pki.etcd_cert),
        path_arg("key-file", &pki.etcd_key),
        path_arg("trusted-ca-file", &pki.ca_cert),
        "--client-cert-auth=true".to_owned(),
        path_arg("peer-cert-file", &pki.etcd_cert),
        path_arg("peer-key-file", &pki.etcd_key),
        path_arg("peer-trusted-ca-file", &pki.ca_cert),
        "--peer-client-cert-auth=true".to_owned(),
        "--unsafe-no-fsync=true".to_owned(),
    ]
}

/// With `IRONPOOL_AUDIT_LOG=<file>`, kube-apiserver writes one JSON line per write request
/// (Metadata level: verb, URI with its `fieldManager`, user agent, response code) to that
/// file. A diagnostic for counting who writes what (the boot-storm breakdown); it costs
/// apiserver CPU, so measurements are taken without it.
fn audit_args(dir: &Path) -> Result<Vec<String>> {
    let Some(log) = std::env::var_os("IRONPOOL_AUDIT_LOG") else {
        return Ok(Vec::new());
    };
    let policy = dir.join("audit-policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n\
         - level: Metadata\n  verbs: [create, update, patch, delete]\n- level: None\n",
    )
    .with_context(|| format!("writing {}", policy.display()))?;
    Ok(vec![
        path_arg("audit-policy-file", &policy),
        path_arg("audit-log-path", Path::new(&log)),
        "--audit-log-format=json".to_owned(),
        "--audit-log-mode=batch".to_owned(),
    ])
}

fn apiserver_args(
    dir: &Path,
    pki: &PkiFiles,
    etcd_port: u16,
    address: Ipv4Addr,
    port: u16,
) -> Vec<String> {
    vec![
        format!("--etcd-servers=https://127.0.0.1:{etcd_port}"),
        path_arg("etcd-cafile", &pki.ca_cert),
        path_arg("etcd-certfile", &pki.etcd_client_cert),
        path_arg("etcd-keyfile", &pki.etcd_client_key),
        path_arg("cert-dir", &dir.join("apiserver-certs")),
        path_arg("tls-cert-file", &pki.apiserver_cert),
        path_arg("tls-private-key-file", &pki.apiserver_key),
        path_arg("client-ca-file", &pki.ca_cert),
        format!("--secure-port={port}"),
        format!("--bind-address={address}"),
        format!("--advertise-address={address}"),
        // No `kubernetes` Service endpoints: they may not point at loopback, and pods on a
        // test node reach the Service's address through a DNAT rule of the node's own
        // (see node.rs), not through kube-proxy and Endpoints.
        "--endpoint-reconciler-type=none".to_owned(),
        format!(
            "--service-cluster-ip-range={}",
            pki::SERVICE_CLUSTER_IP_RANGE
        ),
        "--allow-privileged=true".to_owned(),
        // Node before RBAC, with NodeRestriction, as kubeadm sets it up: a kubelet may
        // read what its own pods use and write only its own Node and pods.
        "--authorization-mode=Node,RBAC".to_owned(),
        "--enable-admission-plugins=NodeRestriction".to_owned(),
        path_arg("kubelet-client-certificate", &pki.kubelet_client_cert),
        path_arg("kubelet-client-key", &pki.kubelet_client_key),
        // Test nodes have no DNS names: logs, exec and port-forward go to their address.
        "--kubelet-preferred-address-types=InternalIP".to_owned(),
        // Bootstrap tokens (kube-system/bootstrap-token-*) authenticate, as in every
        // kubeadm cluster: Cluster API's kubeadm bootstrap provider makes them for joins.
        "--enable-bootstrap-token-auth=true".to_owned(),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
        path_arg("service-account-key-file", &pki.service_account_pub),
        path_arg("service-account-signing-key-file", &pki.service_account_key),
    ]
}
