//! The boot storm's world: a control plane, a provisioning network (namespace with bridge
//! `br0` holding the server address, and a fleet namespace on a veth port of it), the
//! files every server boots (Debian's iPXE binaries, a kernel and an initrd), and the real
//! `ironpool-agent` and `ironpool-operator` processes. Everything is removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::ControlPlane;
use crate::cluster;
use crate::netlab::{Netns, NsChild, require_tools};

/// The namespace of the benchmark's objects.
pub const NAMESPACE: &str = "storm";
/// The server's address on the bridge (agent, dnsmasq, nginx).
pub const SERVER_IP: &str = "10.78.0.1";
/// The fleet's own address (its BMCs listen here).
pub const FLEET_IP: &str = "10.78.255.254";
/// The fleet's interface.
pub const FLEET_IFACE: &str = "eth0";
/// The dynamic range and its netmask (what dnsmasq is given too).
pub const RANGE: (&str, &str, &str) = ("10.78.1.0", "10.78.40.255", "255.255.0.0");
/// The BMC credentials Secret.
pub const BMC_SECRET: &str = "storm-bmc";
/// Kernel and initrd sizes of the boot ramdisk `boot-images/build.sh` made when the README's
/// storm numbers were measured (its initrd is 7.3 MB since rescue mode added dropbear).
const KERNEL_BYTES: usize = 8_247_232;
const INITRD_BYTES: usize = 5_630_305;

/// The running world.
pub struct Env {
    /// Files and logs.
    pub dir: PathBuf,
    /// etcd + kube-apiserver.
    pub cp: ControlPlane,
    /// The provisioning network's server side.
    pub srv: Netns,
    /// The fleet's namespace.
    pub fleet: Netns,
    /// TFTP root (undionly.kpxe, ipxe.efi).
    pub tftp: PathBuf,
    /// vmlinuz and initramfs.
    pub assets: PathBuf,
    /// `user:password` of the simulated BMCs (0600).
    pub bmc_credentials: PathBuf,
    /// The agent, while it runs.
    pub agent: Option<NsChild>,
    /// The operator, while it runs.
    pub operator: Option<NsChild>,
    _forward: NsChild,
    agent_bin: PathBuf,
    operator_bin: PathBuf,
}

fn secret(n: usize) -> String {
    (0..n).map(|_| fastrand::alphanumeric()).collect()
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())?;
    Ok(())
}

/// Builds `ironpool-operator` and `ironpool-agent`: debug, as the lab and tests run them,
/// or release when `release` (the benchmark).
pub fn build_binaries(release: bool) -> Result<(PathBuf, PathBuf)> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(crate::repo_dir()).args(["build", "-q"]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd
        .args(["-p", "ironpool-operator", "--bin", "ironpool-operator"])
        .args(["-p", "ironpool-agents", "--bin", "ironpool-agent"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of the operator and agent failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_dir().join("target"));
    let profile = if release { "release" } else { "debug" };
    Ok((
        target.join(profile).join("ironpool-operator"),
        target.join(profile).join("ironpool-agent"),
    ))
}

impl Env {
    /// Starts everything up to a served Subnet, with release builds of the operator and
    /// agent when `release`.
    pub fn start(dir: &Path, release: bool) -> Result<Env> {
        require_tools(&["ip", "busybox", "nsenter", "/usr/lib/ipxe/undionly.kpxe"])?;
        std::fs::create_dir_all(dir)?;
        let (operator_bin, agent_bin) = build_binaries(release)?;
        let cp = ControlPlane::start()?;
        cluster::install_crds(&cp)?;
        cluster::kubectl_ok(cp.kubectl().args(["create", "namespace", NAMESPACE]))?;
        let srv = Netns::new("storm")?;
        srv.bridge("br0", Some(&format!("{SERVER_IP}/16")))?;
        let fleet = Netns::new("fleet")?;
        srv.bridge_port(
            "br0",
            "fleet0",
            &fleet,
            FLEET_IFACE,
            Some("02:1a:00:00:00:01"),
            Some(&format!("{FLEET_IP}/16")),
        )?;
        fleet.ip(&["route", "add", "default", "dev", FLEET_IFACE])?;
        let port = apiserver_port(&cp)?;
        let forward = srv.forward_loopback(port, dir)?;
        let tftp = dir.join("tftp");
        let assets = dir.join("assets");
        std::fs::create_dir_all(&tftp)?;
        std::fs::create_dir_all(&assets)?;
        for f in ["undionly.kpxe", "ipxe.efi"] {
            std::fs::copy(format!("/usr/lib/ipxe/{f}"), tftp.join(f))
                .with_context(|| format!("copying Debian's /usr/lib/ipxe/{f} (package ipxe)"))?;
        }
        let mut rng = fastrand::Rng::with_seed(7);
        for (f, n) in [("vmlinuz", KERNEL_BYTES), ("initramfs", INITRD_BYTES)] {
            let bytes: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
            std::fs::write(assets.join(f), bytes)?;
        }
        let bmc_credentials = dir.join("bmc-credentials");
        let (user, password) = ("storm", secret(20));
        write_private(&bmc_credentials, &format!("{user}:{password}"))?;
        let mut env = Env {
            dir: dir.to_path_buf(),
            cp,
            srv,
            fleet,
            tftp,
            assets,
            bmc_credentials,
            agent: None,
            operator: None,
            _forward: forward,
            agent_bin,
            operator_bin,
        };
        env.apply(
            &json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": BMC_SECRET, "namespace": NAMESPACE},
            "stringData": {"username": user, "password": password}}),
            "secret",
        )?;
        env.apply(
            &json!({"apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Subnet",
            "metadata": {"name": "storm", "namespace": NAMESPACE},
            "spec": {"cidr": "10.78.0.0/16", "gateway": SERVER_IP, "leaseTime": "10m", "pxe": true,
                     "dynamicRange": {"start": RANGE.0, "end": RANGE.1},
                     "reservedRanges": [{"start": "10.78.0.1", "end": "10.78.0.255"}]}}),
            "subnet",
        )?;
        env.start_operator()?;
        env.start_agent()?;
        env.wait_served(Duration::from_secs(90))?;
        Ok(env)
    }

    fn apply(&self, obj: &serde_json::Value, name: &str) -> Result<()> {
        let file = self.dir.join(format!("{name}.json"));
        write_private(&file, &obj.to_string())?;
        cluster::kubectl_ok(
            self.cp
                .kubectl()
                .args([
                    "apply",
                    "--server-side",
                    "--field-manager",
                    "boot-storm",
                    "-f",
                ])
                .arg(&file),
        )?;
        Ok(())
    }

    /// Starts the operator on the host.
    pub fn start_operator(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.operator_bin);
        cmd.env("KUBECONFIG", self.cp.kubeconfig_path())
            .env("RUST_LOG", "info,kube=warn")
            .args([
                "--lease-namespace",
                NAMESPACE,
                "--identity",
                "storm-operator",
            ])
            .args(["--listen", "127.0.0.1:0"]);
        self.operator = Some(NsChild::spawn(
            "ironpool-operator",
            cmd,
            &self.dir.join("operator.log"),
        )?);
        Ok(())
    }

    /// Starts the agent in the server namespace. Enlistment's rate limit (default 10 a
    /// minute) is raised: a storm of 200 new servers at the default would take 20 minutes
    /// to enlist, which is the limit doing its job, not the thing measured here.
    pub fn start_agent(&mut self) -> Result<()> {
        let token = self.dir.join("token-secret");
        if !token.exists() {
            write_private(&token, &secret(48))?;
        }
        let mut cmd = self.srv.cmd(&self.agent_bin);
        cmd.env("KUBECONFIG", self.cp.kubeconfig_path())
            .env("NODE_NAME", "storm-node")
            .env("RUST_LOG", "info,kube=warn")
            .args(["--namespace", NAMESPACE, "--dhcp-interface", "br0"])
            .args(["--server-ip", SERVER_IP])
            .arg("--journal")
            .arg(self.dir.join("leases.journal"))
            .args(["--http-listen", &format!("{SERVER_IP}:8080")])
            .args(["--http-base-url", &format!("http://{SERVER_IP}:8080")])
            .args(["--tftp-listen", &format!("{SERVER_IP}:69")])
            .arg("--tftp-root")
            .arg(&self.tftp)
            .arg("--assets-dir")
            .arg(&self.assets)
            .arg("--image-cache-dir")
            .arg(self.dir.join("image-cache"))
            .arg("--token-secret-file")
            .arg(&token)
            .args(["--metrics-listen", "127.0.0.1:9090"])
            .args(["--enlist-per-minute", "100000"]);
        self.agent = Some(NsChild::spawn(
            "ironpool-agent",
            cmd,
            &self.dir.join("agent.log"),
        )?);
        Ok(())
    }

    fn wait_served(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = cluster::kubectl_ok(self.cp.kubectl().args([
                "get",
                "subnet",
                "storm",
                "-n",
                NAMESPACE,
                "-o",
                "jsonpath={.status.servedBy.agent}",
            ]))
            .unwrap_or_default();
            if !out.trim().is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let tail = self.agent.as_ref().map(|a| a.tail(30)).unwrap_or_default();
                bail!("the agent did not serve Subnet storm within {timeout:?}\n{tail}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Removes the addresses earlier fleets configured (a new fleet's servers are new
    /// machines), keeping the fleet's own.
    pub fn reset_fleet_addresses(&self) -> Result<()> {
        let out = self
            .fleet
            .ip(&["-o", "-4", "addr", "show", "dev", FLEET_IFACE])?;
        for line in out.lines() {
            let Some(addr) = line.split_whitespace().skip_while(|w| *w != "inet").nth(1) else {
                continue;
            };
            if !addr.starts_with(FLEET_IP) {
                self.fleet.ip(&["addr", "del", addr, "dev", FLEET_IFACE])?;
            }
        }
        Ok(())
    }

    /// SIGKILLs the operator.
    pub fn stop_operator(&mut self) -> Result<()> {
        stop(&mut self.operator)
    }

    /// SIGKILLs the agent (its DHCP, TFTP and HTTP ports are free afterwards).
    pub fn stop_agent(&mut self) -> Result<()> {
        stop(&mut self.agent)
    }
}

fn stop(child: &mut Option<NsChild>) -> Result<()> {
    if let Some(c) = child.as_mut() {
        c.signal("KILL")?;
        c.wait_exit(Duration::from_secs(10))?;
    }
    *child = None;
    Ok(())
}

fn apiserver_port(cp: &ControlPlane) -> Result<u16> {
    let url = cp.server_url();
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .with_context(|| format!("no port in the apiserver URL {url}"))
}
