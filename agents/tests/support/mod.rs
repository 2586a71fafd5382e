//! Test support: the BMC emulators (sushy-emulator, a pyghmi IPMI BMC) started on free
//! loopback ports and killed when dropped (also on panic), and a slow TCP proxy.
#![allow(dead_code, missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub use ironpool_e2e::bmc::venv_bin;

pub fn free_tcp_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A child process killed on drop, with its output in `log`.
pub struct Emulator {
    child: Child,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
    pub port: u16,
}

impl Emulator {
    fn spawn(mut cmd: Command, dir: tempfile::TempDir, port: u16) -> Result<Self> {
        let log = dir.path().join("log");
        let f = std::fs::File::create(&log)?;
        let child = cmd
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .context("starting an emulator")?;
        Ok(Self {
            child,
            dir,
            log,
            port,
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Lines of the log containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Requests the emulator answered with `status`, whose request line contains `path`.
    pub fn requests(&self, path: &str, status: u16) -> usize {
        let status = format!(" {status} ");
        self.log_text()
            .lines()
            .filter(|l| l.contains(path) && l.contains(&status))
            .count()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How to start a sushy-emulator.
#[derive(Clone, Default)]
pub struct SushyOptions {
    /// (uuid, name, power) of each fake system; one "Off" system when empty.
    pub systems: Vec<(String, String, String)>,
    /// Require basic auth with this user and password.
    pub auth: Option<(String, String)>,
    /// Serve HTTPS with this certificate and key (PEM).
    pub tls: Option<(String, String)>,
    /// Listen on this port (to restart on the same one).
    pub port: Option<u16>,
}

/// A self-signed certificate for 127.0.0.1: (cert PEM, key PEM).
pub fn self_signed() -> (String, String) {
    let c =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    (c.cert.pem(), c.signing_key.serialize_pem())
}

pub fn start_sushy(opts: &SushyOptions) -> Result<Emulator> {
    let bin = venv_bin()?;
    let dir = tempfile::tempdir()?;
    let port = match opts.port {
        Some(p) => p,
        None => free_tcp_port()?,
    };
    let systems = if opts.systems.is_empty() {
        vec![(
            "27946b59-9e44-4fa7-8e91-f3527a1ef094".to_string(),
            "node-0".to_string(),
            "Off".to_string(),
        )]
    } else {
        opts.systems.clone()
    };
    // The fake driver keeps its state in sqlite under STATE_DIR: one per emulator.
    let mut conf = format!(
        "SUSHY_EMULATOR_STATE_DIR = '{}'\nSUSHY_EMULATOR_FAKE_DRIVER = True\nSUSHY_EMULATOR_FAKE_SYSTEMS = [\n",
        dir.path().join("state").display()
    );
    for (i, (uuid, name, power)) in systems.iter().enumerate() {
        conf.push_str(&format!(
            "  {{'uuid': '{uuid}', 'name': '{name}', 'power_state': '{power}', 'nics': [{{'mac': '52:54:00:00:{:02x}:{:02x}', 'ip': '10.0.0.{}'}}]}},\n",
            i / 256, i % 256, i % 250 + 1
        ));
    }
    conf.push_str("]\n");
    if let Some((user, pass)) = &opts.auth {
        let out = Command::new(bin.join("python"))
            .args(["-c", "import bcrypt,sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt(4)).decode())", pass])
            .output()?;
        let hash = String::from_utf8(out.stdout)?.trim().to_string();
        let htpasswd = dir.path().join("htpasswd");
        std::fs::write(&htpasswd, format!("{user}:{hash}\n"))?;
        conf.push_str(&format!(
            "SUSHY_EMULATOR_AUTH_FILE = '{}'\n",
            htpasswd.display()
        ));
    }
    if let Some((cert, key)) = &opts.tls {
        std::fs::write(dir.path().join("cert.pem"), cert)?;
        std::fs::write(dir.path().join("key.pem"), key)?;
        conf.push_str(&format!(
            "SUSHY_EMULATOR_SSL_CERT = '{0}/cert.pem'\nSUSHY_EMULATOR_SSL_KEY = '{0}/key.pem'\n",
            dir.path().display()
        ));
    }
    let config = dir.path().join("emulator.conf");
    std::fs::write(&config, conf)?;
    let mut cmd = Command::new(bin.join("sushy-emulator"));
    cmd.arg("--config")
        .arg(&config)
        .args(["-i", "127.0.0.1", "-p", &port.to_string()]);
    let emu = Emulator::spawn(cmd, dir, port)?;
    wait_tcp(port, &emu)?;
    Ok(emu)
}

fn wait_tcp(port: u16, emu: &Emulator) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("emulator on port {port} did not start:\n{}", emu.log_text())
}

/// Starts the pyghmi test BMC (agents/tests/support/ipmi_bmc.py).
pub fn start_ipmi(user: &str, password: &str) -> Result<Emulator> {
    let bin = venv_bin()?;
    let dir = tempfile::tempdir()?;
    let port = free_udp_port()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/ipmi_bmc.py");
    // In a file, not on the command line (a process listing would show it).
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, password)?;
    let mut cmd = Command::new(bin.join("python"));
    cmd.arg("-u")
        .arg(script)
        .args(["--port", &port.to_string(), "--user", user])
        .arg("--password-file")
        .arg(&password_file);
    let emu = Emulator::spawn(cmd, dir, port)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !emu.log_text().contains("LISTENING") {
        if Instant::now() > deadline {
            bail!("IPMI BMC did not start:\n{}", emu.log_text());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(emu)
}

/// A TCP proxy that forwards requests at once (recording them) and holds every chunk of
/// the answer for `delay` milliseconds (changeable while it runs).
pub struct SlowProxy {
    pub port: u16,
    pub delay_ms: Arc<AtomicU64>,
    pub seen: Arc<Mutex<String>>,
    /// When set, only answers to requests containing this text are delayed.
    pub only: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowProxy {
    pub async fn start(upstream: u16, delay: Duration) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let delay_ms = Arc::new(AtomicU64::new(delay.as_millis() as u64));
        let seen = Arc::new(Mutex::new(String::new()));
        let only: Arc<Mutex<Option<String>>> = Arc::default();
        let (d, s, o) = (delay_ms.clone(), seen.clone(), only.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (delay_ms, seen, only) = (d.clone(), s.clone(), o.clone());
                let slow = Arc::new(std::sync::atomic::AtomicBool::new(true));
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 16384];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                            if let Some(needle) = only.lock().unwrap().as_ref() {
                                slow.store(text.contains(needle.as_str()), Ordering::Relaxed);
                            }
                            seen.lock().unwrap().push_str(&text);
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = sw.shutdown().await;
                    };
                    let down = async {
                        let mut buf = vec![0u8; 16384];
                        loop {
                            let n = match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            let ms =
                                if slow.load(Ordering::Relaxed) || only.lock().unwrap().is_none() {
                                    delay_ms.load(Ordering::Relaxed)
                                } else {
                                    0
                                };
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            if cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Ok(Self {
            port,
            delay_ms,
            seen,
            only,
            task,
        })
    }

    /// How many requests so far contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.seen.lock().unwrap().matches(needle).count()
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `f` until it returns Some or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A committed mockup tree under agents/tests/mockups.
pub fn mockup(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/mockups")
        .join(name)
}

/// Builds a DMTF mockup tree (`redfish/v1/.../index.json`) of the DMTF
/// "public-rackmount1" system 437XR1138R2 from the JSON samples the python `sushy`
/// package ships (taken from DMTF's public mockups), under `dest`.
pub fn dmtf_rackmount_mockup(dest: &Path) -> Result<()> {
    let bin = venv_bin()?;
    let out = Command::new(bin.join("python"))
        .args([
            "-c",
            "import os, sushy; print(os.path.join(os.path.dirname(sushy.__file__), 'tests/unit/json_samples'))",
        ])
        .output()?;
    let samples = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    let tree = [
        ("root.json", ""),
        ("system_collection.json", "Systems"),
        ("system.json", "Systems/437XR1138R2"),
        ("session_service.json", "SessionService"),
        ("session_collection.json", "SessionService/Sessions"),
        ("manager_collection.json", "Managers"),
        ("manager.json", "Managers/BMC"),
        ("chassis_collection.json", "Chassis"),
        ("chassis.json", "Chassis/1U"),
    ];
    for (sample, at) in tree {
        let dir = dest.join("redfish/v1").join(at);
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(samples.join(sample), dir.join("index.json"))
            .with_context(|| format!("copying sushy's sample {sample}"))?;
    }
    Ok(())
}

/// Starts sushy-tools' `sushy-static` serving the mockup tree at `mockup` (the folder
/// that holds `redfish/v1`; sushy-static itself takes the `redfish/v1` folder).
pub fn start_sushy_static(mockup: &Path) -> Result<Emulator> {
    let bin = venv_bin()?;
    let dir = tempfile::tempdir()?;
    let port = free_tcp_port()?;
    let mut cmd = Command::new(bin.join("sushy-static"));
    cmd.arg("-m")
        .arg(mockup.join("redfish/v1"))
        .args(["-i", "127.0.0.1", "-p", &port.to_string()]);
    let emu = Emulator::spawn(cmd, dir, port)?;
    wait_tcp(port, &emu)?;
    Ok(emu)
}

/// Starts sushy-static with a real SessionService (agents/tests/support/redfish_static.py).
pub fn start_redfish_static(
    mockup: &Path,
    user: &str,
    password: &str,
    extra: &[&str],
) -> Result<Emulator> {
    let bin = venv_bin()?;
    let dir = tempfile::tempdir()?;
    let port = free_tcp_port()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/redfish_static.py");
    let mut cmd = Command::new(bin.join("python"));
    cmd.arg("-u")
        .arg(script)
        .arg("--mockup")
        .arg(mockup.join("redfish/v1"))
        .args([
            "--port",
            &port.to_string(),
            "--user",
            user,
            "--password",
            password,
        ])
        .args(extra);
    let emu = Emulator::spawn(cmd, dir, port)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !emu.log_text().contains("LISTENING") {
        if Instant::now() > deadline {
            bail!("redfish_static did not start:\n{}", emu.log_text());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(emu)
}
