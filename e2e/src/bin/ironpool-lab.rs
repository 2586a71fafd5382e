//! ironpool-lab: the local lab behind the README's first command.
//!
//! `up` starts a real control plane (etcd + kube-apiserver built from the Kubernetes Go
//! modules), installs the Ironpool CRDs, runs the operator, applies `examples/` into namespace `lab`, prints
//! `kubectl get ironpool`, and keeps everything running until Ctrl-C or `down`.
//! `status` tells whether a lab runs and how to reach it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use ironpool_e2e::{ControlPlane, cluster};

const NAMESPACE: &str = "lab";

fn state_dir() -> PathBuf {
    ironpool_e2e::cache_dir().join("lab")
}

fn main() -> ExitCode {
    let cmd = std::env::args().nth(1).unwrap_or_else(|| "up".into());
    let result = match cmd.as_str() {
        "up" => up(),
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

fn up() -> Result<()> {
    if let Some(pid) = running_pid() {
        bail!("a lab is already running (pid {pid}); stop it with `e2e/run lab down`");
    }
    let state = state_dir();
    std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
    eprintln!("[lab] starting etcd and kube-apiserver");
    let started = std::time::Instant::now();
    let cp = ControlPlane::start()?;
    eprintln!(
        "[lab] control plane ready in {:.1}s at {}",
        started.elapsed().as_secs_f64(),
        cp.server_url()
    );
    eprintln!("[lab] installing CRDs");
    cluster::install_crds(&cp)?;
    eprintln!("[lab] applying examples/ into namespace {NAMESPACE}");
    cluster::kubectl_ok(cp.kubectl().args(["create", "namespace", NAMESPACE]))?;
    let examples = ironpool_e2e::repo_dir().join("examples");
    cluster::kubectl_ok(
        cp.kubectl()
            .args(["apply", "--server-side", "-n", NAMESPACE, "-f"])
            .arg(&examples),
    )?;
    let kubeconfig = state.join("kubeconfig");
    std::fs::copy(cp.kubeconfig_path(), &kubeconfig).context("copying the kubeconfig")?;
    std::fs::write(state.join("pid"), std::process::id().to_string())?;
    let mut operator = start_operator(&cp, &state)?;
    eprintln!(
        "[lab] operator running (log: {})",
        state.join("operator.log").display()
    );
    // Let the operator take its first decisions before showing the table.
    std::thread::sleep(std::time::Duration::from_secs(4));
    let table = cluster::kubectl_ok(cp.kubectl().args(["get", "ironpool", "-n", NAMESPACE]))?;
    println!("{table}");
    let kubectl = ironpool_e2e::Binaries::ensure()?.kubectl;
    println!("The lab is running. In another terminal:");
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!("  alias kubectl={}", kubectl.display());
    println!("  kubectl get ironpool -n {NAMESPACE}; kubectl explain bmm.spec");
    println!("Stop it with Ctrl-C here, or `e2e/run lab down`.");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(wait_for_stop())?;
    eprintln!("[lab] stopping");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &operator.id().to_string()])
        .status();
    let _ = operator.wait();
    cp.stop();
    let _ = std::fs::remove_file(state.join("pid"));
    let _ = std::fs::remove_file(&kubeconfig);
    eprintln!("[lab] stopped");
    Ok(())
}

/// Starts the operator binary (built by `e2e/run lab`) against the lab's control plane.
fn start_operator(cp: &ControlPlane, state: &std::path::Path) -> Result<std::process::Child> {
    let bin = ironpool_e2e::repo_dir().join("target/debug/ironpool-operator");
    if !bin.exists() {
        bail!(
            "{} is missing; run the lab with `e2e/run lab`, which builds it",
            bin.display()
        );
    }
    let log = std::fs::File::create(state.join("operator.log"))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    std::process::Command::new(bin)
        .env("KUBECONFIG", cp.kubeconfig_path())
        .args(["--lease-namespace", NAMESPACE, "--identity", "lab-operator"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::from(log.try_clone()?))
        .stderr(std::process::Stdio::from(log))
        .spawn()
        .context("starting ironpool-operator")
}

async fn wait_for_stop() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
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
