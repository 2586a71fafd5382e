//! The local lab: a real control plane, the operator and the network agent as processes,
//! a provisioning network (a network namespace with a bridge), and QEMU machines on it,
//! each behind a BMC emulator (Redfish or IPMI) that drives the VM through QMP.
//!
//! The machines start powered on and unknown: they PXE-boot, the agent enlists them, the
//! lab (playing the datacenter operator) adds each one's BMC, the operator commissions
//! them, and [`Lab::deploy`] creates a Deployment per machine with the lab's OS image
//! (`boot-images/os-image.sh`), served to the agent's image cache from inside the namespace.
//!
//! Addresses (inside the namespace `ironpool-lab-*`): bridge `br0` 10.77.0.1/24 (the agent's
//! DHCP, TFTP and HTTP on :8080), the OS images on 127.0.0.1:8081, Redfish BMC on
//! 10.77.0.1:8000, IPMI BMCs on 10.77.0.1:6230 and up; the apiserver is forwarded into
//! the namespace on its own loopback port.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

pub mod capi;
pub mod timeline;

use crate::bmc::{BmcEmulator, BmcOptions, EmulatedSystem};
use crate::netlab::{Netns, NsChild, require_tools};
use crate::qemu::{Disk, DiskFormat, Firmware, Vm, VmConfig};
use crate::secret::random_secret;
use crate::{ControlPlane, cluster};

/// The lab's namespace for Machines, Subnets, Deployments and Secrets.
pub const NAMESPACE: &str = "lab";
/// The agent's address on the provisioning bridge.
pub const AGENT_IP: &str = "10.77.0.1";
const BMC_USER: &str = "admin";

static STOP: AtomicBool = AtomicBool::new(false);

/// Makes Ctrl-C and SIGTERM stop [`Lab::wait_for`] with an error (so the lab is dropped and
/// cleans up) instead of killing the process. Returns a receiver that fires on the signal.
pub fn stop_on_signal() -> Result<std::sync::mpsc::Receiver<()>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut term) = signal(SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        STOP.store(true, Ordering::SeqCst);
        let _ = tx.send(());
    });
    Ok(rx)
}

/// Whether a stop signal arrived.
pub fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Which BMC protocol a lab machine's emulator speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BmcKind {
    /// Redfish (sushy-tools front).
    Redfish,
    /// IPMI 2.0 lanplus (pyghmi front).
    Ipmi,
}

/// One QEMU machine of the lab.
#[derive(Clone, Debug)]
pub struct LabMachine {
    /// VM name (also the tap's suffix).
    pub vm: String,
    /// Boot NIC MAC.
    pub mac: String,
    /// BIOS or UEFI.
    pub firmware: Firmware,
    /// BMC protocol.
    pub bmc: BmcKind,
    /// Guest memory.
    pub memory_mib: u32,
    /// Virtual disk size.
    pub disk_mib: u64,
}

impl LabMachine {
    /// The default pair: one UEFI machine behind Redfish, one BIOS machine behind IPMI.
    pub fn default_pair() -> Vec<LabMachine> {
        vec![
            LabMachine {
                vm: "uefi-1".into(),
                mac: "52:54:00:77:00:01".into(),
                firmware: Firmware::Uefi,
                bmc: BmcKind::Redfish,
                memory_mib: 512,
                disk_mib: 256,
            },
            LabMachine {
                vm: "bios-1".into(),
                mac: "52:54:00:77:00:02".into(),
                firmware: Firmware::Bios,
                bmc: BmcKind::Ipmi,
                memory_mib: 512,
                disk_mib: 256,
            },
        ]
    }

    /// The name of the Machine the agent enlists for this VM.
    pub fn machine_name(&self) -> String {
        format!("enlisted-{}", self.mac.replace(':', "-"))
    }
}

/// Built inputs of the lab.
#[derive(Clone, Debug)]
pub struct Artifacts {
    /// ironpool-operator (host build).
    pub operator: PathBuf,
    /// ironpool-agent (host build).
    pub agent: PathBuf,
    /// Boot ramdisk directory (vmlinuz, initramfs).
    pub ramdisk: PathBuf,
    /// OS image directory (os.raw, os.qcow2, SHA256SUMS).
    pub os_image: PathBuf,
}

fn last_line_value(stdout: &[u8], prefix: &str) -> Option<PathBuf> {
    String::from_utf8_lossy(stdout)
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(prefix).map(|p| PathBuf::from(p.trim())))
}

fn run_script(script: &str, prefix: &str) -> Result<PathBuf> {
    eprintln!("[lab] {script}");
    let out = Command::new(crate::repo_dir().join(script))
        .env("IRONPOOL_RAMDISK_PROFILE", "dev")
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {script}"))?;
    if !out.status.success() {
        bail!("{script} failed (its output is above)");
    }
    last_line_value(&out.stdout, prefix)
        .with_context(|| format!("{script} printed no '{prefix}<dir>' line"))
}

impl Artifacts {
    /// Builds (or finds up to date) the host binaries, the boot ramdisk and the OS image.
    pub fn build() -> Result<Artifacts> {
        eprintln!("[lab] building ironpool-operator and ironpool-agent");
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(crate::repo_dir())
            .args([
                "build",
                "-q",
                "-p",
                "ironpool-operator",
                "--bin",
                "ironpool-operator",
            ])
            .args(["-p", "ironpool-agents", "--bin", "ironpool-agent"])
            .status()
            .context("running cargo build")?;
        if !status.success() {
            bail!("cargo build of the operator and agent failed");
        }
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::repo_dir().join("target"));
        Ok(Artifacts {
            operator: target.join("debug/ironpool-operator"),
            agent: target.join("debug/ironpool-agent"),
            ramdisk: run_script("boot-images/build.sh", "ramdisk: ")?,
            os_image: run_script("boot-images/os-image.sh", "os-image: ")?,
        })
    }

    /// `sha256:<hex>` of `file` in the OS image directory, from its SHA256SUMS.
    pub fn os_checksum(&self, file: &str) -> Result<String> {
        let sums = std::fs::read_to_string(self.os_image.join("SHA256SUMS"))
            .context("reading the OS image's SHA256SUMS")?;
        sums.lines()
            .find_map(|l| {
                let (hex, name) = l.split_once(char::is_whitespace)?;
                (name.trim().trim_start_matches('*') == file).then(|| format!("sha256:{hex}"))
            })
            .with_context(|| format!("{file} is not in SHA256SUMS"))
    }
}

/// A running lab. Dropping it stops everything it started.
pub struct Lab {
    /// Files: logs, serial consoles, disks, manifests.
    pub dir: PathBuf,
    /// The control plane.
    pub cp: ControlPlane,
    /// The provisioning network.
    pub net: Netns,
    /// What the lab runs.
    pub artifacts: Artifacts,
    /// The machines, in the order of `vms`.
    pub machines: Vec<LabMachine>,
    /// The VMs.
    pub vms: Vec<Vm>,
    bmcs: Vec<BmcEmulator>,
    agent: Option<NsChild>,
    operator: Option<NsChild>,
    _images: NsChild,
    _forward: Option<NsChild>,
    agent_starts: u32,
    sampler: timeline::Sampler,
    /// The BMC emulators' password, made for this run (in Secret `lab-bmc` for users).
    bmc_password: String,
    /// The agent's token secret, made for this run, in a 0600 file (not on a command line).
    token_secret_file: PathBuf,
    /// Whether the operator runs the Cluster API provider ([`Lab::start_capi`]).
    capi: bool,
    /// With [`Runtime::Helm`]: the node that runs the chart's pods. Its network namespace
    /// is `net`; declared last so that it goes after the VMs and BMCs that use it.
    node: Option<crate::node::Node>,
}

/// How the lab runs Ironpool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// The operator and the agent as processes of the lab (logs in its directory).
    Host,
    /// As users install it: `helm install` of `charts/ironpool` onto a real node (kubelet
    /// and containerd, images from `e2e/scripts/build-images.sh`) whose network namespace
    /// is the provisioning network, so the agent pod (hostNetwork) serves the VMs and
    /// drives their BMCs, and two operator replicas elect a leader.
    Helm,
}

/// The Helm release, its namespace and the label of provisioning nodes in
/// [`Runtime::Helm`].
pub const HELM_RELEASE: &str = "ironpool";
/// The namespace of the Helm release.
pub const HELM_NAMESPACE: &str = "ironpool-system";
const PROVISIONING_LABEL: &str = "ironpool.dev/provisioning";

impl Lab {
    /// Starts the control plane, the provisioning network, the agent, the operator, the
    /// BMC emulators and the VMs (powered on, so they PXE-boot and enlist).
    pub fn start(dir: &Path, artifacts: Artifacts, machines: Vec<LabMachine>) -> Result<Lab> {
        Self::start_as(dir, artifacts, machines, Runtime::Host)
    }

    /// [`Lab::start`] with Ironpool run as `runtime` says.
    pub fn start_as(
        dir: &Path,
        artifacts: Artifacts,
        machines: Vec<LabMachine>,
        runtime: Runtime,
    ) -> Result<Lab> {
        require_tools(&["ip", "busybox", "nsenter", "python3", crate::qemu::QEMU])?;
        std::fs::create_dir_all(dir)?;
        let started = Instant::now();
        let (cp, node, net) = match runtime {
            Runtime::Host => {
                eprintln!("[lab] starting etcd and kube-apiserver");
                let cp = ControlPlane::start()?;
                cluster::install_crds(&cp)?;
                (cp, None, Netns::new("lab")?)
            }
            Runtime::Helm => {
                eprintln!("[lab] building the images, starting a control plane and a node");
                let images = crate::node::Images::ensure()?;
                let crate::node::Cluster {
                    node,
                    control_plane,
                } = crate::node::Cluster::start("lab-node", &[(PROVISIONING_LABEL, "true")])?;
                node.import_images(&images)?;
                let net = node.netns().handle();
                (control_plane, Some(node), net)
            }
        };
        cluster::kubectl_ok(cp.kubectl().args(["create", "namespace", NAMESPACE]))?;
        eprintln!(
            "[lab] control plane ready in {:.1}s",
            started.elapsed().as_secs_f64()
        );

        let sampler = timeline::Sampler::start(
            crate::Binaries::ensure()?.kubectl,
            cp.kubeconfig_path().to_path_buf(),
            NAMESPACE,
        );
        net.bridge("br0", Some(&format!("{AGENT_IP}/24")))?;
        // A host agent reaches the apiserver on the namespace's loopback; pods reach it
        // through the node's `kubernetes` Service address.
        let forward = match runtime {
            Runtime::Host => Some(net.forward_loopback(apiserver_port(&cp)?, dir)?),
            Runtime::Helm => None,
        };
        // The OS images, served from the namespace's loopback as the "upstream" the
        // agent's image cache fetches from.
        let mut http = net.cmd("python3");
        http.args([
            "-m",
            "http.server",
            "8081",
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(&artifacts.os_image);
        let images = NsChild::spawn("images", http, &dir.join("images.log"))?;
        let token_secret_file = dir.join("token-secret");
        {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let _ = std::fs::remove_file(&token_secret_file);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&token_secret_file)?
                .write_all(random_secret(48)?.as_bytes())?;
        }

        let mut lab = Lab {
            dir: dir.to_path_buf(),
            cp,
            net,
            artifacts,
            machines,
            vms: Vec::new(),
            bmcs: Vec::new(),
            agent: None,
            operator: None,
            _images: images,
            _forward: forward,
            agent_starts: 0,
            sampler,
            bmc_password: random_secret(16)?,
            token_secret_file,
            capi: false,
            node,
        };
        match runtime {
            Runtime::Host => {
                lab.apply_example("subnet.yaml", &[])?;
                lab.start_operator()?;
                lab.start_agent()?;
            }
            Runtime::Helm => {
                lab.helm_install()?;
                lab.apply_example("subnet.yaml", &[])?;
            }
        }
        lab.wait_for(
            "the agent serves Subnet lab",
            Duration::from_secs(60),
            |l| {
                Ok(l.get_json("subnet", "lab")?
                    .pointer("/status/servedBy/agent")
                    .is_some())
            },
        )?;
        lab.start_machines()?;
        Ok(lab)
    }

    /// `kubectl apply --server-side` into the lab namespace of `examples/lab/<file>` with
    /// each `${KEY}` replaced by its value; the filled-in copy is kept under `dir`. A
    /// placeholder left unfilled is an error, not a manifest with `${...}` in it.
    pub fn apply_example(&self, file: &str, vars: &[(&str, &str)]) -> Result<()> {
        self.apply_template(&crate::repo_dir().join("examples/lab").join(file), vars)
    }

    /// [`Lab::apply_example`] for any template file (e.g. one of `examples/capi/`).
    pub fn apply_template(&self, path: &Path, vars: &[(&str, &str)]) -> Result<()> {
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let file = file.as_str();
        let template =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let text = fill(&template, vars);
        if let Some(at) = text.find("${") {
            let rest = &text[at..];
            bail!(
                "{} has a placeholder the lab does not fill: {}",
                path.display(),
                &rest[..rest.find('}').map_or(rest.len(), |e| e + 1)]
            );
        }
        let manifests = self.dir.join("manifests");
        std::fs::create_dir_all(&manifests)?;
        let stem = file.trim_end_matches(".yaml");
        let suffix = vars
            .iter()
            .find(|(k, _)| *k == "NAME" || *k == "MACHINE")
            .map_or(String::new(), |(_, v)| format!("-{v}"));
        let out = manifests.join(format!("{stem}{suffix}.yaml"));
        std::fs::write(&out, text)?;
        cluster::kubectl_ok(
            self.cp
                .kubectl()
                .args([
                    "apply",
                    "--server-side",
                    "--force-conflicts",
                    "--field-manager",
                    "ironpool-lab",
                    "-n",
                    NAMESPACE,
                    "-f",
                ])
                .arg(&out),
        )?;
        Ok(())
    }

    /// An object as JSON (`kubectl get -o json`).
    pub fn get_json(&self, kind: &str, name: &str) -> Result<Value> {
        let out = cluster::kubectl_ok(
            self.cp
                .kubectl()
                .args(["get", kind, name, "-n", NAMESPACE, "-o", "json"]),
        )?;
        Ok(serde_json::from_str(&out)?)
    }

    /// Whether an object exists.
    pub fn exists(&self, kind: &str, name: &str) -> bool {
        self.cp
            .kubectl()
            .args(["get", kind, name, "-n", NAMESPACE, "-o", "name"])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// The live table: machine, phase, power, progress, last boot step, reason.
    pub fn table(&self) -> Result<String> {
        let out = cluster::kubectl_ok(self.cp.kubectl().args([
            "get",
            "machines.metal.ironpool.dev",
            "-n",
            NAMESPACE,
            "-o",
            "json",
        ]))?;
        let list: Value = serde_json::from_str(&out)?;
        let mut rows = vec![[
            "MACHINE".to_string(),
            "VM".into(),
            "PHASE".into(),
            "POWER".into(),
            "PROGRESS".into(),
            "LAST BOOT STEP".into(),
            "REASON".into(),
        ]];
        for m in list["items"].as_array().into_iter().flatten() {
            let st = &m["status"];
            let s = |p: &str| {
                m.pointer(p)
                    .and_then(Value::as_str)
                    .unwrap_or("-")
                    .to_string()
            };
            let progress = match (
                st.pointer("/provisioning/step").and_then(Value::as_str),
                st.pointer("/provisioning/bytesWritten")
                    .and_then(Value::as_i64),
                st.pointer("/provisioning/bytesTotal")
                    .and_then(Value::as_i64),
            ) {
                (Some(step), Some(w), Some(t)) if t > 0 => {
                    format!("{step} {}%", w.saturating_mul(100) / t)
                }
                (Some(step), _, _) => step.to_string(),
                _ => "-".into(),
            };
            let last = st["boot"]
                .as_array()
                .and_then(|b| b.last())
                .map(|r| r["step"].as_str().unwrap_or("-").to_string())
                .unwrap_or_else(|| "-".into());
            let reason = st["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .and_then(|c| c["reason"].as_str())
                .unwrap_or("-")
                .to_string();
            rows.push([
                s("/metadata/name"),
                s("/metadata/labels/lab.ironpool.dev~1vm"),
                s("/status/phase"),
                s("/status/power/state"),
                progress,
                last,
                reason,
            ]);
        }
        let widths: Vec<usize> = (0..7)
            .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
            .collect();
        let mut text = String::new();
        for r in rows {
            let cells: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            text.push_str(cells.join("  ").trim_end());
            text.push('\n');
        }
        Ok(text)
    }

    /// Polls `check` every second until it returns true, printing the machine table every
    /// 15 s; fails after `timeout` with the table and the tails of the logs.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Lab) -> Result<bool>,
    ) -> Result<Duration> {
        let start = Instant::now();
        let mut shown = Instant::now();
        eprintln!("[lab] waiting until {what} (up to {}s)", timeout.as_secs());
        loop {
            if stopping() {
                bail!("stopped while waiting until {what}");
            }
            match check(self) {
                Ok(true) => {
                    eprintln!("[lab] {what}: after {:.1}s", start.elapsed().as_secs_f64());
                    return Ok(start.elapsed());
                }
                Ok(false) => {}
                Err(e) => eprintln!("[lab] ({what}: {e:#})"),
            }
            if start.elapsed() > timeout {
                bail!(
                    "timed out after {}s waiting until {what}\n{}\n{}",
                    timeout.as_secs(),
                    self.table().unwrap_or_default(),
                    self.diagnostics()
                );
            }
            if shown.elapsed() > Duration::from_secs(15) {
                shown = Instant::now();
                eprintln!("{}", self.table().unwrap_or_default());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// The last lines of every log and serial console.
    pub fn diagnostics(&self) -> String {
        let mut s = String::new();
        if let Some(a) = &self.agent {
            s += &format!("--- agent log (tail)\n{}\n", a.tail(40));
        }
        if let Some(o) = &self.operator {
            s += &format!("--- operator log (tail)\n{}\n", o.tail(40));
        }
        if self.node.is_some() {
            for component in ["agent", "operator"] {
                s += &format!(
                    "--- {component} pod logs (tail)\n{}\n",
                    self.pod_logs(component, 40)
                );
            }
        }
        for b in &self.bmcs {
            s += &format!("--- BMC :{} (tail)\n{}\n", b.port(), b.tail(10));
        }
        for vm in &self.vms {
            let serial = vm.serial();
            let tail: Vec<&str> = serial.lines().rev().take(25).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            s += &format!("--- serial console (tail)\n{}\n", tail.join("\n"));
        }
        s
    }

    /// How Ironpool runs in this lab.
    pub fn runtime(&self) -> Runtime {
        if self.node.is_some() {
            Runtime::Helm
        } else {
            Runtime::Host
        }
    }

    /// With [`Runtime::Helm`], the node the chart's pods run on.
    pub fn node(&self) -> Option<&crate::node::Node> {
        self.node.as_ref()
    }

    /// The `helm install` (or `helm upgrade`, with `extra` values) arguments of the lab's
    /// release: the agent on the provisioning bridge, the lab's timeouts, its hostPaths
    /// inside the node's directory.
    fn helm_values(&self) -> Result<Vec<String>> {
        let node = self.node.as_ref().context("the lab does not run on Helm")?;
        let list = |items: &[&str]| serde_json::to_string(items).unwrap_or_default();
        Ok(vec![
            "--set".into(),
            format!(
                "agent.journalHostPath={}",
                node.host_path("journal")?.display()
            ),
            "--set".into(),
            format!(
                "agent.imageCache.hostPath={}",
                node.host_path("image-cache")?.display()
            ),
            "--set".into(),
            "agent.dhcpInterface=br0".into(),
            "--set".into(),
            format!("agent.serverIP={AGENT_IP}"),
            "--set".into(),
            format!("agent.http.baseURL=http://{AGENT_IP}:8080"),
            "--set-json".into(),
            format!(
                "agent.extraArgs={}",
                list(&[
                    "--kernel-args=console=ttyS0 ironpool.done=poweroff",
                    "--lease-duration=6s",
                    "--renew-deadline=4s",
                    "--retry-period=1s",
                ])
            ),
            "--set-json".into(),
            format!(
                "operator.extraArgs={}",
                list(&[
                    "--commission-timeout=10m",
                    "--deploy-timeout=15m",
                    "--boot-timeout=10m",
                    "--erase-timeout=15m",
                    "--power-timeout=5m",
                ])
            ),
            "--set".into(),
            "operator.leaderElection.leaseDuration=6s".into(),
            "--set".into(),
            "operator.leaderElection.renewDeadline=4s".into(),
            "--set".into(),
            "operator.leaderElection.retryPeriod=1s".into(),
            "--set".into(),
            "logFormat=text".into(),
        ])
    }

    /// `helm install` of the chart with the lab's values; waits until every pod is Ready.
    fn helm_install(&mut self) -> Result<()> {
        let started = Instant::now();
        let mut install = crate::chart::helm(&self.cp)?;
        install
            .args(["install", HELM_RELEASE])
            .arg(crate::chart::chart_dir())
            .args(["-n", HELM_NAMESPACE, "--create-namespace"])
            .args(self.helm_values()?);
        cluster::kubectl_ok(&mut install).context("helm install of the lab's release")?;
        self.wait_rollout()?;
        eprintln!(
            "[lab] helm install: the operator and agent pods are Ready in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// `helm upgrade --reuse-values` of the lab's release with `set` (`key=value` pairs);
    /// waits until the rolled pods are Ready.
    pub fn helm_upgrade(&mut self, set: &[&str]) -> Result<()> {
        let mut upgrade = crate::chart::helm(&self.cp)?;
        upgrade
            .args(["upgrade", HELM_RELEASE])
            .arg(crate::chart::chart_dir())
            .args(["-n", HELM_NAMESPACE, "--reuse-values"]);
        for value in set {
            upgrade.args(["--set", value]);
        }
        cluster::kubectl_ok(&mut upgrade).context("helm upgrade of the lab's release")?;
        self.wait_rollout()
    }

    fn wait_rollout(&self) -> Result<()> {
        for workload in ["deployment/ironpool-operator", "daemonset/ironpool-agent"] {
            cluster::kubectl_ok(self.cp.kubectl().args([
                "-n",
                HELM_NAMESPACE,
                "rollout",
                "status",
                workload,
                "--timeout=300s",
            ]))
            .with_context(|| format!("{workload} did not become Ready\n{}", self.diagnostics()))?;
        }
        Ok(())
    }

    /// The last `lines` log lines of the chart's `component` pods (operator or agent).
    fn pod_logs(&self, component: &str, lines: usize) -> String {
        let out = self
            .cp
            .kubectl()
            .args(["-n", HELM_NAMESPACE, "logs", "--prefix", "--tail"])
            .arg(lines.to_string())
            .arg(format!("-lapp.kubernetes.io/component={component}"))
            .output();
        match out {
            Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
            Err(e) => format!("(kubectl logs: {e})"),
        }
    }

    /// Force-deletes the chart's `component` pods (as a crash would end them) and does not
    /// wait for their replacements.
    fn kill_pods(&self, component: &str) -> Result<()> {
        cluster::kubectl_ok(self.cp.kubectl().args([
            "-n",
            HELM_NAMESPACE,
            "delete",
            "pod",
            &format!("-lapp.kubernetes.io/component={component}"),
            "--grace-period=0",
            "--force",
            "--wait=false",
        ]))?;
        Ok(())
    }

    /// The fleet web view's URL, from the line the host operator logged (None on Helm, or
    /// before the operator logged it), after making the ServiceAccount `fleet-viewer` (in
    /// the lab's namespace) that may read the fleet: sign in with
    /// `kubectl create token fleet-viewer -n lab`.
    pub fn web_view_url(&self) -> Result<Option<String>> {
        if self.node.is_some() {
            return Ok(None);
        }
        let log = std::fs::read_to_string(self.dir.join("operator.log")).unwrap_or_default();
        let Some(port) = log
            .lines()
            .filter(|l| l.contains("serving the fleet web view"))
            .filter_map(|l| l.split("127.0.0.1:").nth(1))
            .map(|rest| {
                rest.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
            })
            .next_back()
        else {
            return Ok(None);
        };
        let kubectl = |args: &[&str]| cluster::kubectl_ok(self.cp.kubectl().args(args));
        kubectl(&["create", "serviceaccount", "fleet-viewer", "-n", NAMESPACE])?;
        kubectl(&[
            "create",
            "clusterrole",
            "ironpool-fleet-viewer",
            "--verb=get,list,watch",
            "--resource=machines.metal.ironpool.dev,subnets.metal.ironpool.dev,deployments.metal.ironpool.dev",
        ])?;
        kubectl(&[
            "create",
            "clusterrolebinding",
            "ironpool-fleet-viewer",
            "--clusterrole=ironpool-fleet-viewer",
            &format!("--serviceaccount={NAMESPACE}:fleet-viewer"),
        ])?;
        Ok(Some(format!("http://127.0.0.1:{port}/")))
    }

    /// Starts (or restarts) the operator on the host; on Helm, waits for its pods.
    pub fn start_operator(&mut self) -> Result<()> {
        if self.node.is_some() {
            return self.wait_rollout();
        }
        let mut cmd = Command::new(&self.artifacts.operator);
        cmd.env("KUBECONFIG", self.cp.kubeconfig_path())
            .env("RUST_LOG", "info,kube=warn")
            .args(["--lease-namespace", NAMESPACE, "--identity", "lab-operator"])
            .args(["--listen", "127.0.0.1:0"])
            // The fleet web view, on a free port ([`Lab::web_view_url`] reads it back).
            .args(["--web-listen", "127.0.0.1:0"])
            .args(["--lease-duration", "6s", "--renew-deadline", "4s"])
            .args(["--retry-period", "1s"])
            .args(["--commission-timeout", "10m", "--deploy-timeout", "15m"])
            .args(["--boot-timeout", "10m", "--erase-timeout", "15m"])
            .args(["--power-timeout", "5m"]);
        if self.capi {
            cmd.arg("--capi");
        }
        self.operator = Some(NsChild::spawn(
            "ironpool-operator",
            cmd,
            &self.dir.join("operator.log"),
        )?);
        Ok(())
    }

    /// Starts (or restarts) the agent in the provisioning namespace; on Helm, waits for
    /// its pod.
    pub fn start_agent(&mut self) -> Result<()> {
        if self.node.is_some() {
            return self.wait_rollout();
        }
        let assets = self.dir.join("assets");
        let tftp = self.dir.join("tftp");
        for d in [&assets, &tftp] {
            std::fs::create_dir_all(d)?;
        }
        for f in ["vmlinuz", "initramfs"] {
            std::fs::copy(self.artifacts.ramdisk.join(f), assets.join(f))
                .with_context(|| format!("copying the ramdisk's {f}"))?;
        }
        for f in ["undionly.kpxe", "ipxe.efi", "snponly.efi"] {
            std::fs::copy(format!("/usr/lib/ipxe/{f}"), tftp.join(f))
                .with_context(|| format!("copying Debian's /usr/lib/ipxe/{f} (package ipxe)"))?;
        }
        let mut cmd = self.net.cmd(&self.artifacts.agent);
        cmd.env("KUBECONFIG", self.cp.kubeconfig_path())
            .env("NODE_NAME", "lab-node")
            .env("RUST_LOG", "info,kube=warn")
            .args(["--namespace", NAMESPACE, "--dhcp-interface", "br0"])
            .args(["--server-ip", AGENT_IP])
            .arg("--journal")
            .arg(self.dir.join("leases.journal"))
            .args(["--http-listen", &format!("{AGENT_IP}:8080")])
            .args(["--http-base-url", &format!("http://{AGENT_IP}:8080")])
            .args(["--tftp-listen", &format!("{AGENT_IP}:69")])
            .arg("--tftp-root")
            .arg(&tftp)
            .arg("--assets-dir")
            .arg(&assets)
            .arg("--image-cache-dir")
            .arg(self.dir.join("image-cache"))
            .args(["--kernel-args", "console=ttyS0 ironpool.done=poweroff"])
            .arg("--token-secret-file")
            .arg(&self.token_secret_file)
            .args(["--metrics-listen", "127.0.0.1:9090"])
            .args(["--lease-duration", "6s", "--renew-deadline", "4s"])
            .args(["--retry-period", "1s"]);
        self.agent_starts += 1;
        let log = self.dir.join(format!("agent-{}.log", self.agent_starts));
        self.agent = Some(NsChild::spawn("ironpool-agent", cmd, &log)?);
        Ok(())
    }

    /// SIGKILLs the agent (on Helm: force-deletes its pod).
    pub fn kill_agent(&mut self) -> Result<()> {
        if self.node.is_some() {
            return self.kill_pods("agent");
        }
        if let Some(a) = self.agent.as_mut() {
            a.signal("KILL")?;
            a.wait_exit(Duration::from_secs(10))?;
        }
        self.agent = None;
        Ok(())
    }

    /// SIGKILLs the operator (on Helm: force-deletes both replicas).
    pub fn kill_operator(&mut self) -> Result<()> {
        if self.node.is_some() {
            return self.kill_pods("operator");
        }
        if let Some(o) = self.operator.as_mut() {
            o.signal("KILL")?;
            o.wait_exit(Duration::from_secs(10))?;
        }
        self.operator = None;
        Ok(())
    }

    /// The BMC emulators' power/boot command log (`<system> <what> <status before>`).
    pub fn bmc_events(&self) -> Vec<String> {
        self.bmcs.iter().flat_map(|b| b.events()).collect()
    }

    fn start_machines(&mut self) -> Result<()> {
        let mut redfish_systems = Vec::new();
        let mut ipmi_port = 6230;
        for m in self.machines.clone() {
            let tap = format!("tap-{}", m.vm);
            self.net.tap(&tap, "br0")?;
            let disk = self.dir.join(format!("{}.disk.raw", m.vm));
            let f = std::fs::File::create(&disk)?;
            f.set_len(m.disk_mib << 20)?;
            let mut config = VmConfig::new(&m.vm, &m.mac, &tap, m.firmware);
            config.memory_mib = m.memory_mib;
            config.no_shutdown = true;
            config.disk = Some(Disk {
                path: disk,
                format: DiskFormat::Raw,
            });
            let mut vm = Vm::start(&self.net, &config, &self.dir)?;
            vm.wait_qmp(Duration::from_secs(30))?;
            let mut system = EmulatedSystem::new(&m.vm, &m.mac, vm.qmp_path());
            system.boot_mode = match m.firmware {
                Firmware::Uefi => "UEFI".into(),
                Firmware::Bios => "Legacy".into(),
            };
            match m.bmc {
                BmcKind::Redfish => redfish_systems.push(system),
                BmcKind::Ipmi => {
                    let opts = BmcOptions::new(AGENT_IP, ipmi_port)
                        .with_credentials(BMC_USER, &self.bmc_password);
                    ipmi_port += 1;
                    self.bmcs.push(BmcEmulator::ipmi(
                        &system,
                        &opts,
                        Some(&self.net),
                        &self.dir,
                    )?);
                }
            }
            eprintln!(
                "[lab] VM {} ({:?}, MAC {}) powered on; serial console: {}",
                m.vm,
                m.firmware,
                m.mac,
                self.dir.join(format!("{}.serial.log", m.vm)).display()
            );
            self.vms.push(vm);
        }
        if !redfish_systems.is_empty() {
            let opts =
                BmcOptions::new(AGENT_IP, 8000).with_credentials(BMC_USER, &self.bmc_password);
            self.bmcs.push(BmcEmulator::redfish(
                &redfish_systems,
                &opts,
                Some(&self.net),
                &self.dir,
            )?);
        }
        Ok(())
    }

    /// The BMC address a Machine for lab machine `i` names.
    fn bmc_address(&self, i: usize) -> Result<String> {
        let m = &self.machines[i];
        let kind = m.bmc;
        let index_among_kind = self.machines[..i].iter().filter(|o| o.bmc == kind).count();
        let b = self
            .bmcs
            .iter()
            .filter(|b| match kind {
                BmcKind::Redfish => b.address().starts_with("redfish"),
                BmcKind::Ipmi => b.address().starts_with("ipmi"),
            })
            .nth(if kind == BmcKind::Redfish {
                0
            } else {
                index_among_kind
            })
            .context("no BMC emulator for this machine")?;
        Ok(match kind {
            BmcKind::Redfish => format!(
                "{}/redfish/v1/Systems/{}",
                b.address(),
                crate::bmc::uuid_for_mac(&m.mac)
            ),
            BmcKind::Ipmi => b.address(),
        })
    }

    /// Waits until the agent has enlisted every VM, then adds each Machine's BMC and a
    /// `lab.ironpool.dev/vm` label, as a datacenter operator would. The boot mode is the
    /// agent's: it read it from the firmware's DHCP request (option 93) when it enlisted it.
    pub fn adopt_enlisted(&self, timeout: Duration) -> Result<()> {
        self.wait_for("every VM is enlisted", timeout, |l| {
            Ok(l.machines
                .iter()
                .all(|m| l.exists("machine.metal.ironpool.dev", &m.machine_name())))
        })?;
        for (i, m) in self.machines.iter().enumerate() {
            self.apply_example(
                "machine.yaml",
                &[
                    ("MACHINE", &m.machine_name()),
                    ("VM", &m.vm),
                    ("MAC", &m.mac),
                    ("BMC_ADDRESS", &self.bmc_address(i)?),
                    ("BMC_USER", BMC_USER),
                    ("BMC_PASSWORD", &self.bmc_password),
                ],
            )?;
        }
        Ok(())
    }

    /// Gives machine `i` its own BMC credentials Secret, `<machine>-bmc`, holding
    /// `password` (the BMC's real one when `None`), as a person who mistypes or fixes them
    /// would: the Secret is written first, then the Machine pointed at it.
    pub fn set_bmc_password(&self, i: usize, password: Option<&str>) -> Result<()> {
        let machine = self.machines[i].machine_name();
        let secret = format!("{machine}-bmc");
        let manifest = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": secret, "namespace": NAMESPACE},
            "stringData": {"username": BMC_USER,
                           "password": password.unwrap_or(&self.bmc_password)},
        });
        let file = self.dir.join("manifests").join(format!("{secret}.json"));
        std::fs::create_dir_all(self.dir.join("manifests"))?;
        std::fs::write(&file, manifest.to_string())?;
        cluster::kubectl_ok(
            self.cp
                .kubectl()
                .args([
                    "apply",
                    "--server-side",
                    "--field-manager",
                    "ironpool-lab",
                    "-f",
                ])
                .arg(&file),
        )?;
        self.patch_machine(
            i,
            &serde_json::json!({"spec": {"bmc": {"credentialsSecretRef": {"name": secret}}}}),
        )
    }

    /// Merge-patches machine `i`'s Machine as a person does with `kubectl patch`.
    pub fn patch_machine(&self, i: usize, patch: &Value) -> Result<()> {
        cluster::kubectl_ok(self.cp.kubectl().args([
            "patch",
            "machine.metal.ironpool.dev",
            &self.machines[i].machine_name(),
            "-n",
            NAMESPACE,
            "--type",
            "merge",
            "-p",
            &patch.to_string(),
        ]))?;
        Ok(())
    }

    /// When the deployed OS of machine `i` last checked in (the newest `OSBooted` of its
    /// flight recorder), as the recorder spells it.
    pub fn os_booted_at(&self, i: usize) -> Result<Option<String>> {
        Ok(self
            .last_boot_record(i, "OSBooted")?
            .and_then(|r| r["at"].as_str().map(str::to_string)))
    }

    /// Per-phase wall times of every machine's last deployment, and our share.
    pub fn phases_table(&self) -> Result<String> {
        let t = self
            .sampler
            .timeline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut columns = Vec::new();
        for m in &self.machines {
            let phases = t
                .deploy_phases(&m.machine_name())
                .map_err(|e| anyhow::anyhow!(e))?;
            columns.push((m.vm.clone(), phases));
        }
        Ok(timeline::table(&columns))
    }

    /// The phase of the Machine of lab machine `i`.
    pub fn phase(&self, i: usize) -> Result<Option<String>> {
        let m = self.get_json(
            "machine.metal.ironpool.dev",
            &self.machines[i].machine_name(),
        )?;
        Ok(m.pointer("/status/phase")
            .and_then(Value::as_str)
            .map(str::to_string))
    }

    /// Waits until every machine is in `phase`.
    pub fn wait_all(&self, phase: &str, timeout: Duration) -> Result<Duration> {
        self.wait_for(&format!("every machine is {phase}"), timeout, |l| {
            for i in 0..l.machines.len() {
                let p = l.phase(i)?;
                if p.as_deref() == Some("FailedCommissioning")
                    || p.as_deref() == Some("FailedDeployment")
                {
                    bail!(
                        "machine {} is {}: {}",
                        l.machines[i].machine_name(),
                        p.unwrap_or_default(),
                        l.get_json("machine.metal.ironpool.dev", &l.machines[i].machine_name())?
                            .pointer("/status/conditions")
                            .cloned()
                            .unwrap_or_default()
                    );
                }
                if p.as_deref() != Some(phase) {
                    return Ok(false);
                }
            }
            Ok(true)
        })
    }

    /// Creates Deployment `<vm>` for lab machine `i` with the lab OS image, a static
    /// address from Subnet `lab`, and a user-data script that writes a file and prints it,
    /// the address the OS got and the one in the network-config Ironpool generated (the
    /// OS's check-in carries the output).
    pub fn deploy(&self, i: usize, image_file: &str, checksum: Option<&str>) -> Result<String> {
        let m = &self.machines[i];
        let name = m.vm.clone();
        let checksum = match checksum {
            Some(c) => c.to_string(),
            None => self.artifacts.os_checksum(image_file)?,
        };
        let format = if image_file.ends_with(".qcow2") {
            "qcow2"
        } else {
            "raw"
        };
        self.apply_example(
            "deployment.yaml",
            &[
                ("NAME", &name),
                ("MACHINE", &m.machine_name()),
                ("IMAGE_URL", &format!("http://127.0.0.1:8081/{image_file}")),
                ("CHECKSUM", &checksum),
                ("FORMAT", format),
            ],
        )?;
        Ok(name)
    }

    /// Deletes Deployment `name` (without waiting for its finalizer).
    pub fn delete_deployment(&self, name: &str) -> Result<()> {
        cluster::kubectl_ok(self.cp.kubectl().args([
            "delete",
            "deployment.metal.ironpool.dev",
            name,
            "-n",
            NAMESPACE,
            "--wait=false",
        ]))?;
        Ok(())
    }

    /// The detail of the last `step` in the Machine's flight recorder.
    pub fn boot_step(&self, i: usize, step: &str) -> Result<Option<String>> {
        Ok(self
            .last_boot_record(i, step)?
            .map(|r| r["detail"].as_str().unwrap_or_default().to_string()))
    }

    /// The newest record of `step` in machine `i`'s flight recorder.
    fn last_boot_record(&self, i: usize, step: &str) -> Result<Option<Value>> {
        let m = self.get_json(
            "machine.metal.ironpool.dev",
            &self.machines[i].machine_name(),
        )?;
        Ok(m.pointer("/status/boot")
            .and_then(Value::as_array)
            .and_then(|b| b.iter().rev().find(|r| r["step"] == step))
            .cloned())
    }
}

fn apiserver_port(cp: &ControlPlane) -> Result<u16> {
    let url = cp.server_url();
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .with_context(|| format!("no port in the apiserver URL {url}"))
}

/// `template` with every `${KEY}` of `vars` replaced by its value.
fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    vars.iter().fold(template.to_string(), |t, (k, v)| {
        t.replace(&format!("${{{k}}}"), v)
    })
}

#[cfg(test)]
mod tests {
    use super::fill;

    #[test]
    fn every_lab_example_is_filled_completely() {
        let dir = crate::repo_dir().join("examples/lab");
        let vars = [
            ("NAME", "uefi-1"),
            ("MACHINE", "m-52-54-00-00-00-01"),
            ("VM", "uefi-1"),
            ("MAC", "52:54:00:00:00:01"),
            (
                "BMC_ADDRESS",
                "redfish+http://127.0.0.1:8000/redfish/v1/Systems/uefi-1",
            ),
            ("BMC_USER", "u"),
            ("BMC_PASSWORD", "p"),
            ("IMAGE_URL", "http://127.0.0.1:8081/os.qcow2"),
            ("CHECKSUM", "sha256:00"),
            ("FORMAT", "qcow2"),
            ("CLUSTER_NAME", "lab"),
            ("ENDPOINT_HOST", "10.77.0.1"),
            ("ENDPOINT_PORT", "6443"),
        ];
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            let filled = fill(&text, &vars);
            assert!(!filled.contains("${"), "{filled}");
            // The user-data's own shell syntax is left alone.
            if filled.contains("userData") {
                assert!(
                    filled.contains("awk '{print $4}'")
                        && filled.contains("proof-of-user-data uefi-1")
                );
            }
            files += 1;
        }
        assert_eq!(files, 4);
        assert_eq!(fill("a ${X} ${Y} $(z)", &[("X", "1")]), "a 1 ${Y} $(z)");
    }
}
