//! Private networks for tests, benchmarks and the lab: network namespaces, bridges, veth
//! pairs and tap devices that this process creates and that are removed when their guards
//! drop (also two namespaces on one wire, [`NetnsPair`]), plus child processes run inside a
//! namespace, optionally pinned to a core, and killed on drop. Nothing here touches the
//! host's own interfaces: every device lives in a namespace created here. The only
//! implementation in the workspace: `agents/bench` uses it too.
//!
//! ```no_run
//! # fn demo() -> anyhow::Result<()> {
//! use ironpool_e2e::netlab::{Netns, require_tools};
//! require_tools(&["ip", "busybox"])?;
//! let lab = Netns::new("pxe")?;
//! lab.bridge("br0", Some("10.89.0.1/24"))?;
//! lab.tap("tap0", "br0")?;
//! # Ok(())
//! # }
//! ```

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Fails, naming the missing programs and the script that installs them, unless every
/// program in `programs` is on `PATH` (or is an existing absolute path). Tests call this
/// instead of skipping: `e2e/run test` installs everything they need.
pub fn require_tools(programs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = programs.iter().copied().filter(|p| !have(p)).collect();
    if !missing.is_empty() {
        bail!(
            "missing {}: run e2e/scripts/install-net-tools.sh and e2e/scripts/install-qemu.sh \
             (e2e/run test does)",
            missing.join(", ")
        );
    }
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .context("running ip netns list")?;
    if !out.status.success() {
        bail!(
            "ip netns does not work here (needs root / CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether `program` is installed.
pub fn have(program: &str) -> bool {
    if program.starts_with('/') {
        return Path::new(program).exists();
    }
    Command::new("sh")
        .args(["-c", r#"command -v "$1""#, "sh", program])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs a command to completion; an error carries its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace with loopback up, deleted on drop (its devices go with it) unless
/// this is a [`Netns::handle`].
#[derive(Debug)]
pub struct Netns {
    name: String,
    owned: bool,
}

impl Netns {
    /// Creates `ipt-<tag>-<pid>-<n>` (kept short: interface-name limits do not apply to
    /// namespaces, but `ip netns list` stays readable).
    pub fn new(tag: &str) -> Result<Netns> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("ipt-{tag}-{}-{n}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name, owned: true };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Another handle to the same namespace that leaves it in place on drop (e.g. the lab's
    /// provisioning network when it is a test node's namespace, which the node removes).
    pub fn handle(&self) -> Netns {
        Netns {
            name: self.name.clone(),
            owned: false,
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace (`ip netns exec` execs it, so
    /// the child's pid is the program's).
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Like [`Netns::cmd`], pinned to CPU `core` (e.g. "1") with `taskset` when it is
    /// installed (benchmarks keep a server and its load generator on different cores).
    pub fn cmd_on_core(&self, core: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]);
        if have("taskset") {
            c.args(["taskset", "-c", core]);
        }
        c.arg(program);
        c
    }

    /// Runs `args` inside the namespace to completion; returns stdout.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let (program, rest) = args.split_first().context("empty command")?;
        run(self.cmd(program).args(rest))
    }

    /// `ip <args>` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Creates bridge `name` (up), with `cidr` on it when given. Forwarding delay 0 so
    /// ports pass traffic at once (PXE firmware does not wait for STP learning).
    pub fn bridge(&self, name: &str, cidr: Option<&str>) -> Result<()> {
        self.ip(&[
            "link",
            "add",
            name,
            "type",
            "bridge",
            "forward_delay",
            "0",
            "stp_state",
            "0",
        ])?;
        if let Some(cidr) = cidr {
            self.ip(&["addr", "add", cidr, "dev", name])?;
        }
        self.ip(&["link", "set", name, "up"])?;
        Ok(())
    }

    /// Creates tap device `name` (for a QEMU `-nic tap,ifname=<name>`) as a port of
    /// `bridge`, up.
    pub fn tap(&self, name: &str, bridge: &str) -> Result<()> {
        self.ip(&["tuntap", "add", "dev", name, "mode", "tap"])?;
        self.ip(&["link", "set", name, "master", bridge])?;
        self.ip(&["link", "set", name, "up"])?;
        Ok(())
    }

    /// Connects `bridge` here to a new interface `iface` in `other` through a veth pair
    /// (`port` is this end's name); `mac` and `cidr` configure the far end when given.
    pub fn bridge_port(
        &self,
        bridge: &str,
        port: &str,
        other: &Netns,
        iface: &str,
        mac: Option<&str>,
        cidr: Option<&str>,
    ) -> Result<()> {
        self.ip(&[
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            iface,
            "netns",
            &other.name,
        ])?;
        self.ip(&["link", "set", port, "master", bridge])?;
        self.ip(&["link", "set", port, "up"])?;
        if let Some(mac) = mac {
            other.ip(&["link", "set", iface, "address", mac])?;
        }
        if let Some(cidr) = cidr {
            other.ip(&["addr", "add", cidr, "dev", iface])?;
        }
        other.ip(&["link", "set", iface, "up"])?;
        Ok(())
    }

    /// Joins this namespace to `other` with a veth pair, `iface` here and `peer` there,
    /// each end addressed (`cidr`, `peer_cidr`, e.g. "10.64.0.1/10") and up.
    pub fn veth(
        &self,
        iface: &str,
        cidr: &str,
        other: &Netns,
        peer: &str,
        peer_cidr: &str,
    ) -> Result<()> {
        self.ip(&[
            "link",
            "add",
            iface,
            "type",
            "veth",
            "peer",
            "name",
            peer,
            "netns",
            &other.name,
        ])?;
        for (ns, dev, cidr) in [(self, iface, cidr), (other, peer, peer_cidr)] {
            ns.ip(&["addr", "add", cidr, "dev", dev])?;
            ns.ip(&["link", "set", dev, "up"])?;
        }
        Ok(())
    }

    /// Makes TCP port `port` on 127.0.0.1 inside this namespace reach 127.0.0.1:`port` of
    /// the test process's namespace (one `nsenter` + `busybox nc` per connection): how an
    /// agent inside reaches the test's apiserver. `dir` holds the small helper script.
    pub fn forward_loopback(&self, port: u16, dir: &Path) -> Result<NsChild> {
        use std::os::unix::fs::PermissionsExt;
        let script = dir.join(format!("forward-{port}.sh"));
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nexec nsenter --net=/proc/{}/ns/net busybox nc 127.0.0.1 {port}\n",
                std::process::id()
            ),
        )?;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        let mut cmd = self.cmd("busybox");
        cmd.args(["nc", "-ll", "-p", &port.to_string(), "-e"])
            .arg(&script);
        NsChild::spawn("forwarder", cmd, &dir.join(format!("forward-{port}.log")))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .output();
    }
}

/// Two namespaces on one wire: `server` and `client` joined by the veth pair
/// `server_if`/`client_if` (a server and its clients, as the benchmarks run them); both
/// namespaces are deleted on drop.
#[derive(Debug)]
pub struct NetnsPair {
    /// The server's namespace.
    pub server: Netns,
    /// The client's namespace.
    pub client: Netns,
    /// The server's end of the veth pair.
    pub server_if: &'static str,
    /// The client's end of the veth pair.
    pub client_if: &'static str,
}

impl NetnsPair {
    /// Creates `ipt-<tag>-s-..` and `ipt-<tag>-c-..` joined by `pair-s`/`pair-c`,
    /// addressed `server_cidr` / `client_cidr` (e.g. "10.64.0.1/10").
    pub fn new(tag: &str, server_cidr: &str, client_cidr: &str) -> Result<NetnsPair> {
        let pair = NetnsPair {
            server: Netns::new(&format!("{tag}-s"))?,
            client: Netns::new(&format!("{tag}-c"))?,
            server_if: "pair-s",
            client_if: "pair-c",
        };
        pair.server.veth(
            pair.server_if,
            server_cidr,
            &pair.client,
            pair.client_if,
            client_cidr,
        )?;
        Ok(pair)
    }
}

/// A child process with stdout and stderr in a log file, killed (SIGKILL) and reaped on
/// drop.
#[derive(Debug)]
pub struct NsChild {
    name: String,
    child: Child,
    log: PathBuf,
}

impl NsChild {
    /// Spawns `cmd` with its output going to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<NsChild> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(NsChild {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. "KILL", "TERM") to the process.
    pub fn signal(&self, signal: &str) -> Result<()> {
        run(Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string()))
        .map(|_| ())
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} still running after {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asks it to stop with SIGTERM and waits up to `grace` for it to exit; one still
    /// running then is killed when this drops.
    pub fn stop(mut self, grace: Duration) {
        if self.signal("TERM").is_ok() {
            let _ = self.wait_exit(grace);
        }
    }

    /// Everything it has written so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of its output under a header, for failure messages.
    pub fn tail(&self, lines: usize) -> String {
        let all = self.output();
        let v: Vec<&str> = all.lines().collect();
        format!(
            "--- {} ({}), last {lines} lines ---\n{}",
            self.name,
            self.log.display(),
            v[v.len().saturating_sub(lines)..].join("\n")
        )
    }

    /// Waits up to `timeout` for a line of output containing `needle`.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let file = std::fs::File::open(&self.log)?;
            if let Some(line) = BufReader::new(file)
                .lines()
                .map_while(Result::ok)
                .find(|l| l.contains(needle))
            {
                return Ok(line);
            }
            if Instant::now() > deadline {
                bail!(
                    "no line containing '{needle}' within {timeout:?}\n{}",
                    self.tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
