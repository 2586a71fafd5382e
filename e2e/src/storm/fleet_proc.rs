//! The orchestrator's handle on a fleet process: started with `ip netns exec` inside the
//! fleet's namespace, told to power on through its stdin, read through its JSON lines.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::FleetConfig;
use super::env::Env;

/// A fleet process and what it printed.
pub struct FleetProc {
    child: Child,
    stdin: Option<ChildStdin>,
    events: Arc<Mutex<Vec<Value>>>,
}

impl FleetProc {
    /// Starts `boot-storm fleet` (at `exe`) in the fleet namespace and waits until it is
    /// ready (sockets bound).
    pub fn start(env: &Env, exe: &Path, cfg: &FleetConfig, log: &str) -> Result<FleetProc> {
        let err = std::fs::File::create(env.dir.join(log))?;
        let mut child = env
            .fleet
            .cmd(exe)
            .arg("fleet")
            .args(cfg.args())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let stdout = child.stdout.take().context("fleet stdout")?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap_or_else(|p| p.into_inner()).push(v);
                }
            }
        });
        let stdin = child.stdin.take();
        let mut f = FleetProc {
            child,
            stdin,
            events,
        };
        f.wait_event("ready", Duration::from_secs(30))?;
        Ok(f)
    }

    /// Everything it printed so far.
    pub fn events(&self) -> Vec<Value> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits for the first event named `name`.
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.events().into_iter().find(|e| e["event"] == name) {
                return Ok(v);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("the fleet exited ({status}) before '{name}'");
            }
            if Instant::now() > deadline {
                bail!("the fleet printed no '{name}' within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Powers every server on.
    pub fn go(&mut self) -> Result<()> {
        let stdin = self.stdin.as_mut().context("fleet stdin closed")?;
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
        Ok(())
    }

    /// Ends a Full fleet (stdin closes) and returns its stats.
    pub fn finish(mut self, timeout: Duration) -> Result<Value> {
        self.stdin = None;
        let stats = self.wait_event("stats", timeout)?;
        let _ = self.child.wait();
        Ok(stats)
    }

    /// Every boot that failed: `mac: detail`. Two refusals are not failures but boots
    /// overtaken by the Machine's next state, see [`FleetProc::overtaken`]: the enlistment
    /// ramdisk of a MAC whose Machine the agent created meanwhile (told "reboot the
    /// machine"), and a ramdisk whose attempt the operator moved past while it ran ("this
    /// ramdisk is stale"; the agent's power cycle for an attempt the server had already
    /// booted into on its own started a second boot of it). The real ramdisk stops there
    /// too, and the agent's next power action boots it again.
    pub fn failures(&self) -> Vec<String> {
        self.events()
            .iter()
            .filter(|e| e["event"] == "boot" && e["ok"] == false && !is_overtaken(e))
            .map(|e| format!("{}: {}", e["mac"], e["detail"]))
            .collect()
    }

    /// How many boots were overtaken (see [`FleetProc::failures`]).
    pub fn overtaken(&self) -> usize {
        self.events()
            .iter()
            .filter(|e| e["event"] == "boot" && is_overtaken(e))
            .count()
    }

    /// MAC -> the addresses it was leased.
    pub fn leases(&self) -> HashMap<String, HashSet<String>> {
        let mut m: HashMap<String, HashSet<String>> = HashMap::new();
        for e in self.events().iter().filter(|e| e["event"] == "lease") {
            m.entry(e["mac"].as_str().unwrap_or("").to_string())
                .or_default()
                .insert(e["ip"].as_str().unwrap_or("").to_string());
        }
        m
    }
}

fn is_overtaken(e: &Value) -> bool {
    let detail = e["detail"].as_str().unwrap_or("");
    e["ok"] == false
        && (detail.contains("this ramdisk is stale") || detail.contains("reboot the machine"))
}

impl Drop for FleetProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
