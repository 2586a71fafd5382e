//! A real Kubernetes node for tests and the lab: containerd (runc, the bridge CNI) and
//! kubelet, built from their Go modules by `e2e/scripts/build-node.sh`, joined to a
//! [`ControlPlane`] with a client certificate of its own.
//!
//! The node lives in a network namespace that the test creates ([`NodeNetwork`]), joined
//! to the test's namespace by a veth pair: the host end carries the address the apiserver
//! binds, the node end the node's InternalIP. containerd and kubelet are started with
//! `nsenter --net` (not `ip netns exec`, which remounts /sys and hides the cgroup
//! hierarchies kubelet needs); their mounts and cgroups are the host's, under the node's
//! temporary directory and a cgroup of its own (`/ironpool-<node>`).
//!
//! The host's cgroups are v1 (hybrid: cgroup2 only at /sys/fs/cgroup/unified). kubelet
//! 1.37 refuses v1 unless `failCgroupV1: false`; it then runs with the cgroupfs driver
//! (containerd's runc shim uses cgroupfs too, `SystemdCgroup = false`) and `cgroupRoot`
//! set to a cgroup the node creates in every hierarchy, so its QoS tree
//! (`/ironpool-<node>/kubepods/...`) and everything in it is removed with the node.
//!
//! There is no kube-proxy: the one Service address pods need is the apiserver's
//! (`kubernetes.default`, 10.0.0.1:443, what in-cluster clients dial), and one DNAT rule in
//! the node's namespace sends it to the apiserver, for pods on the bridge and for
//! hostNetwork pods alike. Pods therefore use the same in-cluster configuration (the
//! `KUBERNETES_SERVICE_*` variables, the projected token and `kube-root-ca.crt`) as on any
//! cluster, and the chart needs no test-only value.

use std::{
    collections::BTreeMap,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Node as NodeObject;
use kube::Api;
use serde_json::json;

use crate::{
    ControlPlane,
    binaries::run_build_script,
    control_plane::Options,
    netlab::{Netns, run},
    process::{Server, Watchdog},
};

/// How long a new node gets to report Ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long containerd gets to open its socket.
const CONTAINERD_TIMEOUT: Duration = Duration::from_secs(30);
/// The address in-cluster clients dial for the apiserver (the `kubernetes` Service).
const KUBERNETES_SERVICE: (&str, u16) = ("10.0.0.1", 443);
/// Lines of each log quoted when the node fails to start.
const LOG_TAIL: usize = 30;

/// Paths of the node binaries `e2e/scripts/build-node.sh` builds and caches.
#[derive(Debug, Clone)]
pub struct NodeBinaries {
    /// kubelet (k8s.io/kubernetes cmd/kubelet).
    pub kubelet: PathBuf,
    /// containerd; containerd-shim-runc-v2 sits next to it.
    pub containerd: PathBuf,
    /// ctr, for importing image archives.
    pub ctr: PathBuf,
    /// runc.
    pub runc: PathBuf,
    /// The directory of the CNI plugins (bridge, host-local, loopback, portmap).
    pub cni_bin_dir: PathBuf,
    /// crictl.
    pub crictl: PathBuf,
}

impl NodeBinaries {
    /// Builds the node binaries once (a no-op when cached) and returns their paths; the
    /// result is remembered for the life of the process.
    pub fn ensure() -> Result<NodeBinaries> {
        static CACHED: Mutex<Option<NodeBinaries>> = Mutex::new(None);
        let mut cached = CACHED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(found) = cached.as_ref() {
            return Ok(found.clone());
        }
        let script = crate::repo_dir().join("e2e/scripts/build-node.sh");
        let stdout = run_build_script(&script)?;
        let found = parse_node_binaries(&stdout)
            .with_context(|| format!("reading the output of {}", script.display()))?;
        *cached = Some(found.clone());
        Ok(found)
    }
}

fn parse_node_binaries(stdout: &str) -> Result<NodeBinaries> {
    let lines: BTreeMap<&str, PathBuf> = stdout
        .lines()
        .filter_map(|line| line.trim().split_once('='))
        .map(|(key, value)| (key, PathBuf::from(value)))
        .collect();
    let get = |key: &str| {
        let path = lines
            .get(key)
            .cloned()
            .with_context(|| format!("no {key}= line in {stdout:?}"))?;
        if !path.exists() {
            bail!("{key}={} does not exist", path.display());
        }
        Ok(path)
    };
    Ok(NodeBinaries {
        kubelet: get("KUBELET")?,
        containerd: get("CONTAINERD")?,
        ctr: get("CTR")?,
        runc: get("RUNC")?,
        cni_bin_dir: get("CNI_BIN_DIR")?,
        crictl: get("CRICTL")?,
    })
}

/// The OCI archives of Ironpool's images and the node's pause image, from
/// `e2e/scripts/build-images.sh` (dev profile; reused while their inputs are unchanged).
#[derive(Debug, Clone)]
pub struct Images {
    /// Every archive, keyed by the script's name for it (`OPERATOR`, `AGENT`,
    /// `BOOT_ASSETS`, `PAUSE`).
    pub archives: BTreeMap<String, PathBuf>,
}

impl Images {
    /// Builds (or reuses) the images; remembered for the life of the process.
    pub fn ensure() -> Result<Images> {
        static CACHED: Mutex<Option<Images>> = Mutex::new(None);
        let mut cached = CACHED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(found) = cached.as_ref() {
            return Ok(found.clone());
        }
        let script = crate::repo_dir().join("e2e/scripts/build-images.sh");
        let out = Command::new("bash")
            .arg(&script)
            .env("IRONPOOL_IMAGE_PROFILE", "dev")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        if !out.status.success() {
            bail!("{} failed ({})", script.display(), out.status);
        }
        let archives: BTreeMap<String, PathBuf> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| line.strip_prefix("IMAGE_")?.split_once('='))
            .map(|(name, path)| (name.to_owned(), PathBuf::from(path)))
            .collect();
        for name in ["OPERATOR", "AGENT", "BOOT_ASSETS", "PAUSE"] {
            if !archives.contains_key(name) {
                bail!("{} printed no IMAGE_{name}= line", script.display());
            }
        }
        let images = Images { archives };
        *cached = Some(images.clone());
        Ok(images)
    }
}

/// The node's network: a namespace, a veth pair to the test's namespace, forwarding on.
/// Created before the control plane, whose apiserver binds [`NodeNetwork::host_ip`].
#[derive(Debug)]
pub struct NodeNetwork {
    netns: Netns,
    index: u8,
}

impl NodeNetwork {
    /// Picks a free `10.213.<n>.0/30` (host end `.1`, node end `.2`) and pod subnet
    /// `10.214.<n>.0/24`, and creates the namespace and the veth pair.
    pub fn create() -> Result<NodeNetwork> {
        crate::netlab::require_tools(&["ip", "iptables", "nsenter"])?;
        static NEXT: Mutex<u32> = Mutex::new(0);
        let addresses = run(Command::new("ip").args(["-o", "-4", "addr", "show"]))?;
        let mut next = NEXT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let index = (0..250)
            .map(|i| ((std::process::id() + *next + i) % 250 + 1) as u8)
            .find(|n| !addresses.contains(&format!(" 10.213.{n}.")))
            .context("no free 10.213.<n>.0/30 for a node network")?;
        *next += 1;
        let netns = Netns::new("node")?;
        let network = NodeNetwork { netns, index };
        let host_if = network.host_interface();
        let ns = network.netns.name().to_owned();
        run(Command::new("ip").args([
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]))?;
        run(Command::new("ip").args([
            "addr",
            "add",
            &format!("{}/30", network.host_ip()),
            "dev",
            &host_if,
        ]))?;
        run(Command::new("ip").args(["link", "set", &host_if, "up"]))?;
        let node_cidr = format!("{}/30", network.node_ip());
        network
            .netns
            .ip(&["addr", "add", &node_cidr, "dev", "eth0"])?;
        network.netns.ip(&["link", "set", "eth0", "up"])?;
        let gateway = network.host_ip().to_string();
        network
            .netns
            .ip(&["route", "add", "default", "via", &gateway])?;
        network
            .netns
            .exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        // The test reaches pods (their /metrics, Prometheus's scrapes) through the node, as
        // a cluster's own routing would; the route goes with the veth.
        let node_ip = network.node_ip().to_string();
        run(Command::new("ip").args([
            "route",
            "add",
            &network.pod_cidr(),
            "via",
            &node_ip,
            "dev",
            &host_if,
        ]))?;
        Ok(network)
    }

    /// The test namespace's end of the veth pair: where the apiserver listens.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.index, 1)
    }

    /// The node's InternalIP (and hostIP of its hostNetwork pods).
    pub fn node_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.index, 2)
    }

    /// The pod subnet of the node's bridge.
    pub fn pod_cidr(&self) -> String {
        format!("10.214.{}.0/24", self.index)
    }

    /// The namespace the node runs in.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    fn host_interface(&self) -> String {
        format!("ipnode{}", self.index)
    }

    /// A command that runs `program` in the node's network namespace only (mounts, cgroups
    /// and /sys stay the host's).
    fn nsenter(&self, program: &Path) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.netns.name()))
            .arg("--")
            .arg(program);
        command
    }
}

impl Drop for NodeNetwork {
    fn drop(&mut self) {
        // Deleting the namespace (Netns's drop) removes the node's end, and with it the
        // host's; this is for a pair whose namespace is already gone.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_interface()])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// A control plane with controllers and one node, started together: the usual way tests
/// and the lab get a cluster that runs pods.
pub struct Cluster {
    // Field order is drop order: the node goes before its control plane.
    /// The node.
    pub node: Node,
    /// Its control plane (with controller manager and scheduler).
    pub control_plane: ControlPlane,
}

impl Cluster {
    /// Starts a control plane (apiserver on the node network's host address, controller
    /// manager, scheduler) and node `node_name` with `labels`, and waits until it is Ready.
    pub fn start(node_name: &str, labels: &[(&str, &str)]) -> Result<Cluster> {
        let network = NodeNetwork::create()?;
        let control_plane = ControlPlane::start_with(&Options {
            bind_address: Some(network.host_ip()),
            controllers: true,
            nodes: vec![node_name.to_owned()],
            ..Options::default()
        })?;
        let node = Node::join(&control_plane, network, node_name, labels)?;
        Ok(Cluster {
            node,
            control_plane,
        })
    }
}

/// A running node: containerd and kubelet in a [`NodeNetwork`]. Dropping it removes every
/// pod's processes, the node's mounts, cgroups, network and directory. If the test process
/// dies instead, its watchdog kills kubelet and containerd and removes the directory.
pub struct Node {
    name: String,
    dir: PathBuf,
    cgroup: String,
    binaries: NodeBinaries,
    // Drop order matters (see Drop): processes first, the network last.
    kubelet: Option<Server>,
    containerd: Option<Server>,
    watchdog: Option<Watchdog>,
    network: NodeNetwork,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("dir", &self.dir)
            .field("ip", &self.network.node_ip())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Starts containerd and kubelet in `network`, registers Node `name` with `labels` at
    /// `control_plane` (which must have issued its certificate, see [`Options::nodes`]),
    /// points the `kubernetes` Service address at the apiserver, and waits for Ready.
    pub fn join(
        control_plane: &ControlPlane,
        network: NodeNetwork,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Result<Node> {
        let binaries = NodeBinaries::ensure()?;
        let dir = tempfile::Builder::new()
            .prefix("ironpool-node-")
            .tempdir()
            .context("creating the node's temporary directory")?
            .keep();
        let cgroup = format!("ironpool-{name}-{}", std::process::id());
        let cleanup = watchdog_cleanup(&dir, &cgroup, network.netns().name());
        let mut node = Node {
            name: name.to_owned(),
            cgroup,
            dir: dir.clone(),
            binaries,
            kubelet: None,
            containerd: None,
            watchdog: Some(Watchdog::spawn_with_cleanup(&dir, &cleanup)?),
            network,
        };
        let started = Instant::now();
        match node.start(control_plane, labels) {
            Ok(()) => {
                eprintln!(
                    "ironpool-e2e: node {name} ({}) Ready in {:.1?} (dir {})",
                    node.network.node_ip(),
                    started.elapsed(),
                    dir.display()
                );
                Ok(node)
            }
            Err(error) => {
                let tails: Vec<String> = node
                    .containerd
                    .iter()
                    .chain(node.kubelet.iter())
                    .map(|server| server.log_tail(LOG_TAIL))
                    .collect();
                Err(error.context(format!(
                    "node {name} did not start (dir {})\n{}",
                    dir.display(),
                    tails.join("\n")
                )))
            }
        }
    }

    fn start(&mut self, control_plane: &ControlPlane, labels: &[(&str, &str)]) -> Result<()> {
        self.route_service_to_apiserver(control_plane)?;
        self.create_cgroup()?;
        self.start_containerd()?;
        self.start_kubelet(control_plane, labels)?;
        self.wait_ready(control_plane)
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's InternalIP.
    pub fn ip(&self) -> Ipv4Addr {
        self.network.node_ip()
    }

    /// The node's network namespace (hostNetwork pods share it).
    pub fn netns(&self) -> &Netns {
        self.network.netns()
    }

    /// The node's temporary directory (logs, configuration, kubelet's and containerd's
    /// state).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A directory under the node's own directory, created, for a hostPath volume that
    /// must not touch the host's real paths (e.g. the agent's journal).
    pub fn host_path(&self, name: &str) -> Result<PathBuf> {
        let path = self.dir.join("host").join(name);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(path)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// Imports an OCI archive (from `build-images.sh`) into containerd's `k8s.io`
    /// namespace and unpacks it, so pods use it without a registry.
    pub fn import_image(&self, archive: &Path) -> Result<()> {
        let started = Instant::now();
        run(Command::new(&self.binaries.ctr)
            .arg(format!("--address={}", self.socket().display()))
            .args([
                "--namespace=k8s.io",
                "images",
                "import",
                "--snapshotter=native",
            ])
            .arg(archive))
        .with_context(|| format!("importing {} into the node", archive.display()))?;
        eprintln!(
            "ironpool-e2e: imported {} in {:.1?}",
            archive.display(),
            started.elapsed()
        );
        Ok(())
    }

    /// Imports every archive of `images` (see [`Node::import_image`]).
    pub fn import_images(&self, images: &Images) -> Result<()> {
        images
            .archives
            .values()
            .try_for_each(|archive| self.import_image(archive))
    }

    /// `crictl` against the node's containerd.
    pub fn crictl(&self) -> Command {
        let mut command = Command::new(&self.binaries.crictl);
        command.arg(format!(
            "--runtime-endpoint=unix://{}",
            self.socket().display()
        ));
        command
    }

    /// kubelet's log file.
    pub fn kubelet_log(&self) -> PathBuf {
        self.dir.join("kubelet.log")
    }

    /// DNAT 10.0.0.1:443 to the apiserver, for locally generated traffic (hostNetwork
    /// pods) and for traffic forwarded from the pod bridge.
    fn route_service_to_apiserver(&self, control_plane: &ControlPlane) -> Result<()> {
        let url = control_plane.server_url();
        let port = url
            .rsplit(':')
            .next()
            .and_then(|port| port.parse::<u16>().ok())
            .with_context(|| format!("no port in the apiserver URL {url}"))?;
        let (service_ip, service_port) = KUBERNETES_SERVICE;
        let target = format!("{}:{port}", self.network.host_ip());
        let service_port = service_port.to_string();
        for chain in ["OUTPUT", "PREROUTING"] {
            self.network.netns.exec(&[
                "iptables",
                "-w",
                "-t",
                "nat",
                "-A",
                chain,
                "-d",
                service_ip,
                "-p",
                "tcp",
                "--dport",
                &service_port,
                "-j",
                "DNAT",
                "--to-destination",
                &target,
            ])?;
        }
        Ok(())
    }

    /// `/sys/fs/cgroup/<hierarchy>/<cgroup>` in every hierarchy, for kubelet's cgroupRoot
    /// (kubelet checks that it exists); cpuset gets its parent's CPUs and memory nodes, as
    /// a v1 cpuset must before a task can join it.
    fn create_cgroup(&self) -> Result<()> {
        for hierarchy in cgroup_hierarchies()? {
            let path = hierarchy.join(&self.cgroup);
            fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let parent = hierarchy.join(file);
                if parent.exists() {
                    let value = fs::read_to_string(&parent)?;
                    fs::write(path.join(file), value.trim())
                        .with_context(|| format!("writing {}", path.join(file).display()))?;
                }
            }
        }
        Ok(())
    }

    fn start_containerd(&mut self) -> Result<()> {
        let dir = &self.dir;
        let cni_conf = dir.join("cni/net.d");
        fs::create_dir_all(&cni_conf)?;
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": "ironpool-node",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": true,
                    "ipMasq": true,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{ "subnet": self.network.pod_cidr() }]],
                        "routes": [{ "dst": "0.0.0.0/0" }],
                        "dataDir": dir.join("cni/ipam"),
                    },
                },
                { "type": "portmap", "capabilities": { "portMappings": true } },
            ],
        });
        fs::write(
            cni_conf.join("10-ironpool-node.conflist"),
            serde_json::to_string_pretty(&conflist)?,
        )?;
        let config = containerd_config(dir, &self.binaries, &self.socket(), &cni_conf);
        let config_path = dir.join("containerd.toml");
        fs::write(&config_path, config)?;
        let mut command = self.network.nsenter(&self.binaries.containerd);
        command.arg(format!("--config={}", config_path.display()));
        let watchdog = self.watchdog.as_mut().context("node watchdog gone")?;
        let containerd = Server::spawn_command(
            "containerd",
            command,
            &[("PATH", &self.binaries.search_path())],
            dir,
            watchdog,
        )?;
        let socket = self.socket();
        let containerd = self.containerd.insert(containerd);
        let started = Instant::now();
        while !socket.exists() {
            if let Some(status) = containerd.exited()? {
                bail!("containerd exited ({status}) before opening its socket");
            }
            if started.elapsed() > CONTAINERD_TIMEOUT {
                bail!("containerd did not open its socket within {CONTAINERD_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn start_kubelet(
        &mut self,
        control_plane: &ControlPlane,
        labels: &[(&str, &str)],
    ) -> Result<()> {
        let dir = self.dir.clone();
        let credentials = control_plane.node_credentials(&self.name)?;
        let kubeconfig = dir.join("kubelet.kubeconfig");
        let doc = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "ironpool", "cluster": {
                "server": control_plane.server_url(),
                "certificate-authority": control_plane.ca_cert_path(),
            }}],
            "users": [{ "name": self.name, "user": {
                "client-certificate": credentials.cert,
                "client-key": credentials.key,
            }}],
            "contexts": [{ "name": "node", "context": { "cluster": "ironpool", "user": self.name }}],
            "current-context": "node",
        });
        fs::write(&kubeconfig, serde_json::to_string_pretty(&doc)?)?;
        let config = json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            // The host's cgroups are v1 (see the module docs).
            "failCgroupV1": false,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": format!("/{}", self.cgroup),
            "failSwapOn": false,
            // No kube-proxy, so no route_localnet for KUBE-FIREWALL to guard; its drop of
            // every non-loopback -> 127.0.0.0/8 packet would also break processes on the
            // node that wake themselves that way (pyghmi's IPMI BMC emulator in the lab).
            "makeIPTablesUtilChains": false,
            "containerRuntimeEndpoint": format!("unix://{}", self.socket().display()),
            "address": self.network.node_ip().to_string(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "authentication": {
                "anonymous": { "enabled": false },
                "webhook": { "enabled": true },
                "x509": { "clientCAFile": control_plane.ca_cert_path() },
            },
            "authorization": { "mode": "Webhook" },
            "podLogsDir": dir.join("pod-logs"),
            // A shared CI disk must not make the node evict the pods under test.
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": false,
            "nodeStatusUpdateFrequency": "4s",
            "syncFrequency": "10s",
            "resolvConf": "/etc/resolv.conf",
        });
        let config_path = dir.join("kubelet.yaml");
        fs::write(&config_path, serde_json::to_string_pretty(&config)?)?;
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut command = self.network.nsenter(&self.binaries.kubelet);
        command
            .arg(format!("--config={}", config_path.display()))
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--root-dir={}", dir.join("kubelet").display()))
            .arg(format!("--cert-dir={}", dir.join("kubelet-pki").display()))
            .arg(format!("--hostname-override={}", self.name))
            .arg(format!("--node-ip={}", self.network.node_ip()))
            .arg("--v=2");
        if !labels.is_empty() {
            command.arg(format!("--node-labels={}", labels.join(",")));
        }
        let watchdog = self.watchdog.as_mut().context("node watchdog gone")?;
        self.kubelet = Some(Server::spawn_command(
            "kubelet",
            command,
            &[("PATH", &self.binaries.search_path())],
            &dir,
            watchdog,
        )?);
        Ok(())
    }

    fn wait_ready(&mut self, control_plane: &ControlPlane) -> Result<()> {
        let started = Instant::now();
        let mut last = String::from("not registered yet");
        loop {
            for server in self.containerd.iter_mut().chain(self.kubelet.iter_mut()) {
                if let Some(status) = server.exited()? {
                    bail!("{} exited ({status})", server.name());
                }
            }
            let out = control_plane
                .kubectl()
                .args([
                    "get",
                    "node",
                    &self.name,
                    "-o",
                    "jsonpath={range .status.conditions[?(@.type==\"Ready\")]}{.status} {.reason}: {.message}{end}",
                ])
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if out.status.success() && text.starts_with("True") {
                return Ok(());
            }
            if out.status.success() && !text.is_empty() {
                last = text;
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "node {} not Ready within {READY_TIMEOUT:?}: {last}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The Node object, read with the admin client.
    pub async fn object(&self, control_plane: &ControlPlane) -> Result<NodeObject> {
        let api: Api<NodeObject> = Api::all(control_plane.client().await?);
        Ok(api.get(&self.name).await?)
    }

    /// Removes every pod's processes (sandbox shims and containers), stops kubelet and
    /// containerd, unmounts what they mounted under the node's directory, removes the
    /// node's cgroups and the directory. Idempotent; also what drop does.
    pub fn stop(&mut self) {
        if let Some(mut kubelet) = self.kubelet.take() {
            kubelet.kill();
        }
        // The shims left their process group and session; they name the node's socket.
        let socket = self.socket();
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", &format!("[-]address {}", socket.display())])
            .status();
        if let Some(mut containerd) = self.containerd.take() {
            containerd.kill();
        }
        // Containers (and anything they forked) are in the node's cgroup.
        if let Ok(hierarchies) = cgroup_hierarchies() {
            for _ in 0..20 {
                let mut alive = false;
                for hierarchy in &hierarchies {
                    alive |= kill_cgroup_tree(&hierarchy.join(&self.cgroup));
                }
                if !alive {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            for hierarchy in &hierarchies {
                remove_cgroup_tree(&hierarchy.join(&self.cgroup));
            }
        }
        unmount_under(&self.dir);
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.disarm();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

impl NodeBinaries {
    /// PATH for containerd and kubelet: the shim next to containerd, runc, then the
    /// system's (iptables for the bridge plugin's masquerading, mount tools).
    fn search_path(&self) -> String {
        let mut dirs: Vec<String> = [&self.containerd, &self.runc]
            .iter()
            .filter_map(|path| path.parent())
            .map(|dir| dir.display().to_string())
            .collect();
        dirs.push("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned());
        dirs.join(":")
    }
}

/// containerd 2.x configuration (version 3): state under the node's directory, the
/// native snapshotter (overlayfs needs what a CI sandbox may lack), our own pause image as
/// the sandbox (no registry), the bridge CNI, runc with cgroupfs.
fn containerd_config(
    dir: &Path,
    binaries: &NodeBinaries,
    socket: &Path,
    cni_conf: &Path,
) -> String {
    let pause_tag = crate::chart::app_version().unwrap_or_else(|_| "dev".to_owned());
    let d = |p: &str| dir.join(p).display().to_string();
    format!(
        r#"version = 3
root = "{root}"
state = "{state}"
# NRI would open a socket at the host-wide /var/run/nri; nothing here uses it.
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[plugins.'io.containerd.internal.v1.opt']
  path = "{opt}"

# What `ctr images import` unpacks into (the transfer service's default is overlayfs).
[[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
  platform = "linux/amd64"
  snapshotter = "native"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "native"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "localhost/ironpool/ironpool-pause:{pause_tag}"

# This sandbox has no CAP_SYS_RESOURCE, so no process may lower its oom_score_adj:
# clamp what the kubelet asks for (-998 for sandboxes) to containerd's own score.
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  # Pod network namespaces under the node's state directory, not the host's
  # /var/run/netns, so stopping the node removes every one of them.
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{cni_bin}"]
    conf_dir = "{cni_conf}"
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        SystemdCgroup = false
"#,
        root = d("containerd/root"),
        state = d("containerd/state"),
        socket = socket.display(),
        opt = d("containerd/opt"),
        cni_bin = binaries.cni_bin_dir.display(),
        cni_conf = cni_conf.display(),
        runc = binaries.runc.display(),
    )
}

/// The mounted cgroup v1 hierarchies and the cgroup2 one (`unified` on a hybrid host).
/// What [`Node::stop`] does, as a shell script for the watchdog, for a test process that
/// dies without dropping its node: the shims (which left the kubelet's process group), every
/// process in the node's cgroups, its mounts, cgroups and network namespace.
fn watchdog_cleanup(dir: &Path, cgroup: &str, netns: &str) -> String {
    let dir = dir.display();
    let socket = format!("{dir}/containerd.sock");
    [
        format!("pkill -KILL -f '[-]address {socket}'"),
        "for h in $(awk '$3==\"cgroup\"||$3==\"cgroup2\"{print $2}' /proc/self/mounts); do".into(),
        format!("  d=\"$h/{cgroup}\"; [ -d \"$d\" ] || continue"),
        "  for i in 1 2 3 4 5 6 7 8 9 10; do".into(),
        "    pids=$(find \"$d\" -name cgroup.procs -exec cat {} + 2>/dev/null)".into(),
        "    [ -n \"$pids\" ] || break; kill -KILL $pids 2>/dev/null; sleep 0.1".into(),
        "  done".into(),
        "  find \"$d\" -depth -type d -exec rmdir {} + 2>/dev/null".into(),
        "done".into(),
        format!("awk -v p='{dir}' 'index($2, p) == 1 {{print $2}}' /proc/self/mounts | sort -r | xargs -r -n 1 umount -l"),
        format!("ip netns del {netns} 2>/dev/null"),
    ]
    .join("\n")
}

fn cgroup_hierarchies() -> Result<Vec<PathBuf>> {
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    Ok(mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, path, kind) = (fields.next()?, fields.next()?, fields.next()?);
            (kind == "cgroup" || kind == "cgroup2").then(|| PathBuf::from(path))
        })
        .collect())
}

/// SIGKILLs every process in `dir` and its children; whether any was found.
fn kill_cgroup_tree(dir: &Path) -> bool {
    let mut found = false;
    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter(|pid| !pid.is_empty()) {
            found = true;
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                found |= kill_cgroup_tree(&entry.path());
            }
        }
    }
    found
}

/// Removes `dir` and its child cgroups, deepest first.
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Lazily unmounts every mount point under `dir`, deepest first (kubelet's volumes,
/// containerd's sandbox and rootfs mounts).
fn unmount_under(dir: &Path) {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let prefix = dir.display().to_string();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .filter(|point| point.starts_with(&prefix))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.len()));
    for point in points {
        let _ = Command::new("umount").args(["-l", point]).status();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_cleanup_is_valid_shell_naming_the_nodes_parts() {
        let script = watchdog_cleanup(
            Path::new("/tmp/ironpool-node-x"),
            "ironpool-n-1",
            "ipt-node-1-0",
        );
        let out = Command::new("sh")
            .args(["-n", "-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
        for part in [
            "[-]address /tmp/ironpool-node-x/containerd.sock",
            "$h/ironpool-n-1",
            "p='/tmp/ironpool-node-x'",
            "ip netns del ipt-node-1-0",
        ] {
            assert!(script.contains(part), "{part} in\n{script}");
        }
    }

    #[test]
    fn parses_the_build_script_output_and_checks_paths() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().display();
        let out = format!(
            "KUBELET={p}\nCONTAINERD={p}\nCONTAINERD_SHIM_RUNC_V2={p}\nCTR={p}\nRUNC={p}\nCNI_BIN_DIR={p}\nCRICTL={p}\n"
        );
        let found = parse_node_binaries(&out).unwrap();
        assert_eq!(found.kubelet, dir.path());
        let missing = out.replace("CTR=", "XCTR=");
        assert!(format!("{:#}", parse_node_binaries(&missing).unwrap_err()).contains("CTR="));
        let gone = out.replace(&format!("RUNC={p}"), "RUNC=/nonexistent/runc");
        assert!(parse_node_binaries(&gone).is_err());
    }

    #[test]
    fn containerd_config_names_the_node_paths() {
        let dir = Path::new("/tmp/n");
        let binaries = NodeBinaries {
            kubelet: "/b/kubelet".into(),
            containerd: "/b/containerd".into(),
            ctr: "/b/ctr".into(),
            runc: "/r/runc".into(),
            cni_bin_dir: "/cni".into(),
            crictl: "/b/crictl".into(),
        };
        let config = containerd_config(dir, &binaries, &dir.join("c.sock"), &dir.join("net.d"));
        for line in [
            "address = \"/tmp/n/c.sock\"",
            "bin_dirs = [\"/cni\"]",
            "conf_dir = \"/tmp/n/net.d\"",
            "BinaryName = \"/r/runc\"",
            "SystemdCgroup = false",
            "snapshotter = \"native\"",
        ] {
            assert!(config.contains(line), "{line} missing from\n{config}");
        }
        assert_eq!(binaries.search_path().split(':').next(), Some("/b"));
    }
}
