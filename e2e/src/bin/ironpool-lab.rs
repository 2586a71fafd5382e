//! ironpool-lab: the local lab behind the README's first command.
//!
//! `up` builds what it needs (operator, agent, boot ramdisk, OS image), starts a real
//! control plane, runs the operator and the agent, creates a provisioning network with two
//! QEMU machines (UEFI behind a Redfish BMC, Legacy BIOS behind an IPMI BMC), and walks them
//! through the whole lifecycle: they PXE-boot unknown and are enlisted, get their BMC added,
//! are commissioned, deployed with the lab OS image and boot it from disk. It prints the
//! machine table while it waits, then keeps everything running until Ctrl-C or `down`.
//! `status` tells whether a lab runs and how to reach it.
//!
//! `up --helm` runs Ironpool as users install it: a real node (kubelet and containerd)
//! joins the control plane, `helm install` of `charts/ironpool` runs the operator's two
//! replicas and the agent DaemonSet from the images `e2e/scripts/build-images.sh` builds,
//! and the agent pod, on the node's provisioning bridge, serves and powers the VMs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use ironpool_e2e::lab::{Artifacts, HELM_NAMESPACE, Lab, LabMachine, NAMESPACE, Runtime};

fn state_dir() -> PathBuf {
    ironpool_e2e::cache_dir().join("lab")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = args.first().cloned().unwrap_or_else(|| "up".into());
    let runtime = match args.get(1).map(String::as_str) {
        None => Runtime::Host,
        Some("--helm") if cmd == "up" => Runtime::Helm,
        Some(other) => {
            eprintln!(
                "ironpool-lab: unknown argument {other:?}; use `up`, `up --helm`, `down` or `status`"
            );
            return ExitCode::from(2);
        }
    };
    let result = match cmd.as_str() {
        "up" => up(runtime),
        "down" => down(),
        "status" => status(),
        other => {
            eprintln!("ironpool-lab: unknown command {other:?}; use up, down or status");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ironpool-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn running_pid() -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(state_dir().join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    std::path::Path::new(&format!("/proc/{pid}"))
        .exists()
        .then_some(pid)
}

fn up(runtime: Runtime) -> Result<()> {
    if let Some(pid) = running_pid() {
        bail!("a lab is already running (pid {pid}); stop it with `e2e/run lab down`");
    }
    let state = state_dir();
    if state.exists() {
        // Disks, consoles and logs of the previous run.
        std::fs::remove_dir_all(&state).with_context(|| format!("clearing {}", state.display()))?;
    }
    std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
    std::fs::write(state.join("pid"), std::process::id().to_string())?;
    let result = run_lab(&state, runtime);
    let _ = std::fs::remove_file(state.join("pid"));
    result
}

fn run_lab(state: &std::path::Path, runtime: Runtime) -> Result<()> {
    let started = std::time::Instant::now();
    let stop = ironpool_e2e::lab::stop_on_signal()?;
    let artifacts = Artifacts::build()?;
    let lab = Lab::start_as(state, artifacts, LabMachine::default_pair(), runtime)?;
    let kubeconfig = state.join("kubeconfig");
    std::fs::copy(lab.cp.kubeconfig_path(), &kubeconfig).context("copying the kubeconfig")?;
    let kubectl = ironpool_e2e::Binaries::ensure()?.kubectl;
    println!("Watch it in another terminal:");
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!("  alias kubectl={}", kubectl.display());
    println!("  kubectl get machines,deployments -n {NAMESPACE} -w");
    if runtime == Runtime::Helm {
        println!("  kubectl get pods -n {HELM_NAMESPACE} -o wide   # the Helm release's pods");
    }
    match lab.web_view_url() {
        Ok(Some(url)) => println!(
            "Fleet web view: {url} (sign in with the token of `kubectl create token fleet-viewer -n {NAMESPACE}`)"
        ),
        Ok(None) => {}
        Err(e) => println!("(no fleet web view: {e:#})"),
    }
    let minutes = |m: u64| std::time::Duration::from_secs(60 * m);
    lab.adopt_enlisted(minutes(10))?;
    lab.wait_all("Ready", minutes(20))?;
    for i in 0..lab.machines.len() {
        lab.deploy(i, "os.qcow2", None)?;
    }
    lab.wait_all("Deployed", minutes(30))?;
    println!("{}", lab.table()?);
    match lab.phases_table() {
        Ok(t) => println!("Where the time went (* = our own software):\n{t}"),
        Err(e) => println!("(no phase breakdown: {e:#})"),
    }
    for i in 0..lab.machines.len() {
        if let Some(d) = lab.boot_step(i, "OSBooted")? {
            println!("{}: {d}", lab.machines[i].vm);
        }
    }
    println!(
        "Every machine is Deployed ({:.0} s after start). Everything stays up: explore with \
         kubectl (e.g. `kubectl describe bmm -n {NAMESPACE}`, `kubectl delete \
         deployment.metal.ironpool.dev uefi-1 -n {NAMESPACE}` to release and erase one).",
        started.elapsed().as_secs_f64()
    );
    println!("Logs and serial consoles: {}", state.display());
    println!("Stop with Ctrl-C here, or `e2e/run lab down`.");
    let _ = stop.recv();
    eprintln!("[lab] stopping");
    drop(lab);
    let _ = std::fs::remove_file(&kubeconfig);
    eprintln!("[lab] stopped");
    Ok(())
}

fn down() -> Result<()> {
    let Some(pid) = running_pid() else {
        println!("no lab is running");
        return Ok(());
    };
    let ok = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status()?
        .success();
    if !ok {
        bail!("could not signal the lab (pid {pid})");
    }
    for _ in 0..300 {
        if running_pid().is_none() {
            println!("lab stopped");
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    bail!("the lab (pid {pid}) did not stop within 30s; kill it with `kill -9 {pid}`")
}

fn status() -> Result<()> {
    match running_pid() {
        Some(pid) => println!(
            "lab running (pid {pid}); export KUBECONFIG={}",
            state_dir().join("kubeconfig").display()
        ),
        None => println!("no lab is running; start one with `e2e/run lab`"),
    }
    Ok(())
}
