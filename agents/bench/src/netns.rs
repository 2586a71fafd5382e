//! Benchmark helpers shared by `dhcp-bench` and `tftp-bench`: a server and a client network
//! namespace joined by a veth pair (deleted on drop), commands pinned to a core with
//! `taskset`, and child processes killed on drop.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs a command, failing with its stderr.
pub fn sh(args: &[&str]) -> Result<()> {
    let (prog, rest) = args.split_first().context("empty command")?;
    let out = Command::new(prog)
        .args(rest)
        .output()
        .with_context(|| format!("run {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Whether `prog` can be found on PATH or as a path.
pub fn have(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Two network namespaces, `server` and `client`, joined by the veth pair
/// `server_if`/`client_if` with the given addresses; both namespaces are deleted on drop.
pub struct Pair {
    /// The server's namespace.
    pub server: String,
    /// The client's namespace.
    pub client: String,
    /// The server's end of the veth pair.
    pub server_if: &'static str,
    /// The client's end of the veth pair.
    pub client_if: &'static str,
}

impl Pair {
    /// Creates `ipb-<tag>-<pid>-<n>-{s,c}` with loopback up and the veth pair addressed with
    /// `server_cidr` / `client_cidr` (e.g. "10.64.0.1/10").
    pub fn new(tag: &str, server_cidr: &str, client_cidr: &str) -> Result<Pair> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = format!("ipb-{tag}-{}-{n}", std::process::id());
        let pair = Pair {
            server: format!("{base}-s"),
            client: format!("{base}-c"),
            server_if: "bench-s",
            client_if: "bench-c",
        };
        sh(&["ip", "netns", "add", &pair.server])?;
        sh(&["ip", "netns", "add", &pair.client])?;
        for ns in [&pair.server, &pair.client] {
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        sh(&[
            "ip",
            "-n",
            &pair.server,
            "link",
            "add",
            pair.server_if,
            "type",
            "veth",
            "peer",
            "name",
            pair.client_if,
            "netns",
            &pair.client,
        ])?;
        for (ns, ifname, cidr) in [
            (&pair.server, pair.server_if, server_cidr),
            (&pair.client, pair.client_if, client_cidr),
        ] {
            sh(&["ip", "-n", ns, "addr", "add", cidr, "dev", ifname])?;
            sh(&["ip", "-n", ns, "link", "set", ifname, "up"])?;
        }
        Ok(pair)
    }

    /// `prog` run inside `ns`, pinned to `core` when `taskset` exists.
    pub fn cmd(ns: &str, core: &str, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]);
        if have("taskset") {
            c.args(["taskset", "-c", core]);
        }
        c.arg(prog);
        c
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.server, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A child process killed and reaped on drop.
pub struct Proc(pub Child);

impl Proc {
    /// Spawns `cmd` with stdout and stderr sent to `log`.
    pub fn spawn(mut cmd: Command, log: &std::path::Path) -> Result<Proc> {
        let out = std::fs::File::create(log)?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawn {cmd:?}"))?;
        Ok(Proc(child))
    }

    /// Asks the process to stop with SIGTERM and waits up to `secs` before SIGKILL.
    pub fn stop(mut self, secs: u64) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .output();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
