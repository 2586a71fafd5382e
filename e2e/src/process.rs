//! Server processes in their own process groups, and a watchdog that kills them and removes
//! their directory when the test process goes away, however it goes.

use std::{
    fs::File,
    io::Write,
    net::TcpListener,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
};

use anyhow::{Context, Result};

/// The watchdog reads process-group ids from stdin, one a line. Its stdin is a pipe whose
/// only write end lives in the test process (Rust opens pipes close-on-exec), so EOF means
/// the test process dropped the watchdog or died, even by SIGKILL. Then it kills every
/// group, waits (bounded) for them to go, runs its cleanup script (if any) and removes the
/// directory. It sits in its own process group, so a Ctrl-C aimed at the test's group does
/// not reach it.
const WATCHDOG_SCRIPT: &str = r#"
trap '' HUP INT PIPE
dir=$1
cleanup=$2
groups=
while read -r group; do groups="$groups $group"; done
for group in $groups; do kill -KILL -"$group" 2>/dev/null; done
tries=0
for group in $groups; do
  while kill -0 -"$group" 2>/dev/null && [ "$tries" -lt 50 ]; do
    sleep 0.1; tries=$((tries + 1))
  done
done
[ -n "$cleanup" ] && sh -c "$cleanup"
rm -rf "$dir"
"#;

/// Kills registered process groups and removes a directory once the test process is gone.
#[derive(Debug)]
pub(crate) struct Watchdog {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Watchdog {
    /// Starts a watchdog that will remove `dir` (and kill whatever it is told to watch).
    pub(crate) fn spawn(dir: &Path) -> Result<Watchdog> {
        Self::spawn_with_cleanup(dir, "")
    }

    /// [`Watchdog::spawn`] that also runs the shell script `cleanup` after the kills and
    /// before removing `dir` (for what process groups do not cover: a node's containers,
    /// mounts, cgroups and network namespace).
    pub(crate) fn spawn_with_cleanup(dir: &Path, cleanup: &str) -> Result<Watchdog> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("ironpool-watchdog")
            .arg(dir)
            .arg(cleanup)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting the watchdog shell (sh)")?;
        let stdin = child.stdin.take();
        Ok(Watchdog { child, stdin })
    }

    /// Registers a process group to kill when the test process goes away.
    fn watch(&mut self, group: u32) -> Result<()> {
        let stdin = self.stdin.as_mut().context("the watchdog is disarmed")?;
        writeln!(stdin, "{group}").context("telling the watchdog about a new process")
    }

    /// Stops the watchdog without letting it act (the caller has cleaned up or wants the
    /// directory kept).
    pub(crate) fn disarm(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop(self.stdin.take());
    }
}

/// One long-running server (etcd or kube-apiserver), leader of its own process group, with
/// stdout and stderr going to a log file.
#[derive(Debug)]
pub(crate) struct Server {
    name: &'static str,
    child: Child,
    log: PathBuf,
    /// Set once the child has been reaped; after that its pid and group id may be reused.
    status: Option<ExitStatus>,
}

impl Server {
    /// Starts `program` in `dir` and registers its process group with `watchdog`.
    pub(crate) fn spawn(
        name: &'static str,
        program: &Path,
        args: &[String],
        dir: &Path,
        watchdog: &mut Watchdog,
    ) -> Result<Server> {
        Self::spawn_with_env(name, program, args, &[], dir, watchdog)
    }

    /// [`Server::spawn`] with extra environment variables.
    pub(crate) fn spawn_with_env(
        name: &'static str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        dir: &Path,
        watchdog: &mut Watchdog,
    ) -> Result<Server> {
        let mut command = Command::new(program);
        command.args(args);
        Self::spawn_command(name, command, env, dir, watchdog)
    }

    /// [`Server::spawn_with_env`] for a prepared command (e.g. one that `nsenter`s into a
    /// network namespace first).
    pub(crate) fn spawn_command(
        name: &'static str,
        mut command: Command,
        env: &[(&str, &str)],
        dir: &Path,
        watchdog: &mut Watchdog,
    ) -> Result<Server> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let program = command.get_program().to_owned();
        let child = command
            .envs(env.iter().copied())
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        let mut server = Server {
            name,
            child,
            log,
            status: None,
        };
        if let Err(error) = watchdog.watch(server.child.id()) {
            server.kill();
            return Err(error);
        }
        Ok(server)
    }

    /// The name the server was started under (`etcd`, `kube-apiserver`).
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// The process id, which is also its process-group id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has exited.
    pub(crate) fn exited(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("checking on {}", self.name))?;
        }
        Ok(self.status)
    }

    /// Kills the whole process group with SIGKILL and reaps the leader. Idempotent.
    pub(crate) fn kill(&mut self) {
        if self.status.is_some() {
            return;
        }
        // The leader is not reaped yet, so its group id cannot have been reused.
        let _ = kill_group(self.child.id());
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
    }

    /// Whether the log file contains `needle`.
    pub(crate) fn log_contains(&self, needle: &str) -> bool {
        std::fs::read_to_string(&self.log).is_ok_and(|log| log.contains(needle))
    }

    /// The last `lines` lines of the log, under a header naming the file.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let body = match std::fs::read_to_string(&self.log) {
            Ok(log) => {
                let all: Vec<&str> = log.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(error) => format!("(cannot read: {error})"),
        };
        format!(
            "--- {} log {} (last {lines} lines) ---\n{body}",
            self.name,
            self.log.display()
        )
    }
}

/// Sends SIGKILL to every process in group `group` (via the shell's `kill`, so no unsafe
/// code is needed).
fn kill_group(group: u32) -> Result<()> {
    Command::new("sh")
        .args(["-c", r#"kill -KILL -"$1" 2>/dev/null"#, "sh"])
        .arg(group.to_string())
        .stdin(Stdio::null())
        .status()
        .context("running kill")?;
    Ok(())
}

/// `N` distinct loopback ports that were free a moment ago. Another process may take one
/// before the server binds it; callers retry on "address already in use".
pub(crate) fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    for port in &mut ports {
        let listener = TcpListener::bind(("127.0.0.1", 0)).context("binding a loopback port")?;
        *port = listener.local_addr()?.port();
        listeners.push(listener);
    }
    Ok(ports)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn free_ports_are_distinct() {
        let [a, b, c] = free_ports::<3>().unwrap();
        assert!(a != b && b != c && a != c);
    }

    #[test]
    fn dropping_the_watchdog_kills_the_group_and_removes_the_dir() {
        let dir = tempfile::tempdir().unwrap().keep();
        let mut watchdog = Watchdog::spawn(&dir).unwrap();
        let args = ["-c".to_owned(), "sleep 300 & sleep 300".to_owned()];
        let mut server =
            Server::spawn("sleeper", Path::new("sh"), &args, &dir, &mut watchdog).unwrap();
        // Dropping the watchdog closes its stdin, as the death of the test process would.
        drop(watchdog);
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.exited().unwrap().is_none() || dir.exists() {
            assert!(Instant::now() < deadline, "watchdog did not clean up");
            std::thread::sleep(Duration::from_millis(50));
        }
        // The background `sleep` was in the same group, so it is gone as well.
        let alive = Command::new("sh")
            .args(["-c", r#"kill -0 -"$1" 2>/dev/null"#, "sh"])
            .arg(server.pid().to_string())
            .status()
            .unwrap();
        assert!(!alive.success());
    }
}
