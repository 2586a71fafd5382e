//! One simulated server of the boot storm: powered on, it boots as a PXE machine does,
//! each step a real protocol exchange over sockets: firmware DHCP -> TFTP of the iPXE
//! binary -> iPXE's DHCP (user class iPXE) -> HTTP of the script, following `sleep`/`chain`
//! -> kernel and initrd over HTTP -> in the "ramdisk": busybox udhcpc's DHCP, then the
//! machine API exactly as `ironpool-machine-agent` calls it (inventory, plan, result; 409
//! and 503 retried after Retry-After). A power action from its BMC aborts the boot and
//! starts another, so every boot intent the agent carries out is answered by a boot.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::dhcp::{self, Stage};
use super::fleet::{Fleet, Mode};
use super::redfish::Power;

/// One simulated server.
pub struct Server {
    /// Index in the fleet (MAC and BMC port derive from it).
    pub index: u32,
    /// DHCP identity.
    pub client: dhcp::Client,
    on: AtomicBool,
    boot: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Boots started (power-on and cycles).
    pub boots: AtomicU64,
    fleet: std::sync::Weak<Fleet>,
}

/// The MAC of server `index`: locally administered `02:1b:<index as 4 bytes>`.
pub fn mac_of(index: u32) -> [u8; 6] {
    let b = index.to_be_bytes();
    [0x02, 0x1b, b[0], b[1], b[2], b[3]]
}

/// `aa:bb:...`.
pub fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Server {
    /// A server that is off; `arch` 0 (BIOS) or 7 (x86-64 UEFI).
    pub fn new(index: u32, arch: u16, fleet: &Arc<Fleet>) -> Arc<Server> {
        let mut uuid = [0u8; 16];
        uuid[..4].copy_from_slice(b"stor");
        uuid[12..].copy_from_slice(&index.to_be_bytes());
        Arc::new(Server {
            index,
            client: dhcp::Client {
                mac: mac_of(index),
                arch,
                uuid,
            },
            on: AtomicBool::new(false),
            boot: std::sync::Mutex::default(),
            boots: AtomicU64::new(0),
            fleet: Arc::downgrade(fleet),
        })
    }

    /// Whether it is powered on.
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::SeqCst)
    }

    /// Its MAC as text.
    pub fn mac(&self) -> String {
        mac_text(&self.client.mac)
    }

    /// Records that this server reached `step` in its current boot.
    fn step(&self, f: &Fleet, step: &str) {
        f.step(&self.mac(), self.boots.load(Ordering::Relaxed), step);
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<tokio::task::JoinHandle<()>>> {
        self.boot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Powers it on (if off) or through a cycle, or off.
    pub fn set_power(self: &Arc<Self>, what: Power) {
        let mut slot = self.slot();
        if what == Power::On && self.on.load(Ordering::SeqCst) {
            return;
        }
        if let Some(h) = slot.take() {
            h.abort();
        }
        if what == Power::Off {
            self.on.store(false, Ordering::SeqCst);
            return;
        }
        self.on.store(true, Ordering::SeqCst);
        self.boots.fetch_add(1, Ordering::Relaxed);
        let me = self.clone();
        *slot = Some(tokio::spawn(async move {
            let Some(fleet) = me.fleet.upgrade() else {
                return;
            };
            let started = Instant::now();
            me.step(&fleet, "start");
            let outcome = me.boot(&fleet).await;
            fleet.report(&me.mac(), started.elapsed(), outcome);
        }));
    }

    async fn boot(&self, f: &Fleet) -> Result<String> {
        let fw = f.hub.lease(&self.client, Stage::Firmware).await?;
        f.lease_seen(&self.mac(), fw.ip).await?;
        self.step(f, "dhcp");
        let size = super::tftp::fetch(fw.ip, fw.next_server, &fw.bootfile, &f.tftp)
            .await
            .with_context(|| format!("TFTP {} from {}", fw.bootfile, fw.next_server))?;
        if size == 0 {
            bail!("TFTP {} was empty", fw.bootfile);
        }
        self.step(f, "tftp");
        let ipxe = f.hub.lease(&self.client, Stage::Ipxe).await?;
        f.lease_seen(&self.mac(), ipxe.ip).await?;
        self.step(f, "ipxe-dhcp");
        let ip = ipxe.ip;
        let mut url = ipxe.bootfile.clone();
        if !url.starts_with("http://") {
            bail!("iPXE was given '{url}', not an http:// script");
        }
        loop {
            let script = get(ip, &url, 64 << 10).await?.text();
            if f.mode == Mode::Serve {
                return self.serve_only(ip, &url, &script).await;
            }
            match interpret(&script) {
                Script::Chain { sleep, url: next } => {
                    self.step(f, "script-wait");
                    tokio::time::sleep(Duration::from_secs(sleep)).await;
                    url = next;
                }
                Script::Boot {
                    kernel,
                    args,
                    initrd,
                } => {
                    self.step(f, "script");
                    get(ip, &kernel, 0).await?;
                    get(ip, &initrd, 0).await?;
                    self.step(f, "kernel+initrd");
                    return self.ramdisk(f, &args).await;
                }
                Script::Off => {
                    self.on.store(false, Ordering::SeqCst);
                    return Ok("script: power off".into());
                }
                Script::Other(s) => return Ok(format!("script ends with: {s}")),
            }
        }
    }

    /// Serving half only: the script, then the kernel and initrd it names (or, for a
    /// script without them, `<base>/assets/vmlinuz` and `initramfs`, as the nginx peer's
    /// script names), so every server answers the same requests.
    async fn serve_only(&self, ip: Ipv4Addr, url: &str, script: &str) -> Result<String> {
        let (kernel, initrd) = match interpret(script) {
            Script::Boot { kernel, initrd, .. } => (kernel, initrd),
            _ => {
                let (addr, _) = super::http::split(url)?;
                let mac = self.mac().replace(':', "-");
                (
                    format!("http://{addr}/assets/vmlinuz?mac={mac}"),
                    format!("http://{addr}/assets/initramfs?mac={mac}"),
                )
            }
        };
        let k = get(ip, &kernel, 0).await?.len;
        let i = get(ip, &initrd, 0).await?.len;
        Ok(format!("kernel {k} bytes, initrd {i} bytes"))
    }

    /// What the ramdisk does: its own DHCP, then the machine API calls.
    async fn ramdisk(&self, f: &Fleet, args: &str) -> Result<String> {
        let arg = |k: &str| {
            args.split_whitespace()
                .find_map(|a| a.strip_prefix(k).map(str::to_string))
        };
        let base = arg("ironpool.url=").context("no ironpool.url=")?;
        let token = arg("ironpool.token=").context("no ironpool.token=")?;
        let attempt: i64 = arg("ironpool.attempt=")
            .and_then(|a| a.parse().ok())
            .context("no ironpool.attempt=")?;
        let lease = f.hub.lease(&self.client, Stage::Ramdisk).await?;
        f.lease_seen(&self.mac(), lease.ip).await?;
        self.step(f, "ramdisk-dhcp");
        let ip = lease.ip;
        let api = format!("{base}/api/v1/machines/{}", self.mac().replace(':', "-"));
        let inventory = inventory(self);
        call(
            ip,
            "POST",
            &format!("{api}/inventory"),
            &token,
            Some(&inventory),
        )
        .await?;
        self.step(f, "inventory");
        let plan = call(ip, "GET", &format!("{api}/plan"), &token, None).await?;
        let plan: serde_json::Value = serde_json::from_str(&plan).context("reading the plan")?;
        let purpose = plan["purpose"].as_str().unwrap_or("").to_string();
        let (ok, message) = match purpose.as_str() {
            "Enlist" => return Ok("enlistment inventory reported".into()),
            "Commission" => (
                true,
                "inventory reported: 8 cores, 32Gi, 2 disks, 2 NICs".to_string(),
            ),
            other => (false, format!("the boot-storm server cannot do {other}")),
        };
        let step = if ok { "Succeeded" } else { "Failed" };
        let result = json!({"attempt": attempt, "step": step, "message": message});
        call(
            ip,
            "POST",
            &format!("{api}/result"),
            &token,
            Some(&serde_json::to_vec(&result)?),
        )
        .await?;
        self.step(f, "result");
        Ok(format!("{purpose} attempt {attempt}: {step}"))
    }
}

/// GET that must answer 200.
async fn get(ip: Ipv4Addr, url: &str, keep: usize) -> Result<super::http::Answer> {
    let a = super::http::request(ip, "GET", url, None, None, keep).await?;
    if a.status != 200 {
        bail!("GET {url}: HTTP {}: {}", a.status, a.text());
    }
    Ok(a)
}

/// A machine API call, retried like the machine agent's: 409/503 after Retry-After
/// (default 5 s, 1..60), connection errors with backoff from 2 s to 15 s.
async fn call(
    ip: Ipv4Addr,
    method: &str,
    url: &str,
    token: &str,
    body: Option<&[u8]>,
) -> Result<String> {
    let mut delay = Duration::from_secs(1);
    for _ in 0..120 {
        let wait = match super::http::request(ip, method, url, Some(token), body, 1 << 20).await {
            Ok(a) if (200..300).contains(&a.status) => return Ok(a.text()),
            Ok(a) if matches!(a.status, 409 | 503) => {
                Duration::from_secs(a.retry_after.unwrap_or(5).clamp(1, 60))
            }
            Ok(a) => bail!("{method} {url}: HTTP {}: {}", a.status, a.text()),
            Err(_) => {
                delay = (delay * 2).min(Duration::from_secs(15));
                delay
            }
        };
        tokio::time::sleep(wait).await;
    }
    bail!("{method} {url}: still refused after 120 tries")
}

/// The hardware inventory as the ramdisk posts it (the shape of `Hardware` in camelCase).
fn inventory(s: &Server) -> Vec<u8> {
    let mac = s.mac();
    let serial = format!("STORM{:06}", s.index);
    let v = json!({
        "cpu": {"model": "Boot Storm Virtual CPU @ 2.40GHz", "cores": 8, "threads": 16,
                "sockets": 1, "architecture": "x86_64"},
        "memoryBytes": 34359738368i64,
        "memory": "32Gi",
        "disks": [
            {"name": "nvme0n1", "sizeBytes": 960197124096i64, "type": "NVMe", "rotational": false,
             "model": "STORM NVMe", "serialNumber": format!("{serial}-0"), "wwn": format!("eui.{:016x}", s.index)},
            {"name": "sda", "sizeBytes": 4000787030016i64, "type": "HDD", "rotational": true,
             "model": "STORM HDD", "serialNumber": format!("{serial}-1")}
        ],
        "nics": [
            {"name": "eno1", "mac": mac, "driver": "ice", "link": true, "speedMbps": 25000},
            {"name": "eno2", "mac": mac_text(&[0x02, 0x1c, 0, 0, (s.index >> 8) as u8, s.index as u8]),
             "driver": "ice", "link": false}
        ],
        "system": {"manufacturer": "Ironpool", "product": "Boot Storm Server", "serialNumber": serial,
                   "uuid": uuid_text(&s.client.uuid), "biosVendor": "Ironpool", "biosVersion": "1.0"}
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

fn uuid_text(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// What an iPXE script asks for.
#[derive(Debug, PartialEq)]
enum Script {
    Chain {
        sleep: u64,
        url: String,
    },
    Boot {
        kernel: String,
        args: String,
        initrd: String,
    },
    Off,
    Other(String),
}

/// Reads the commands this fleet understands: `kernel`, `initrd`, `boot`, `sleep`,
/// `chain`, `poweroff`; anything else (`sanboot`, `exit`) ends the boot.
fn interpret(script: &str) -> Script {
    let (mut sleep, mut kernel, mut initrd) = (0, None, None);
    for line in script.lines().map(str::trim) {
        let mut words = line.splitn(2, ' ');
        let (cmd, rest) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        match cmd {
            "" | "#!ipxe" | "echo" => {}
            "sleep" => sleep = rest.trim().parse().unwrap_or(0),
            "chain" => {
                let url = rest.split_whitespace().find(|w| w.starts_with("http://"));
                return Script::Chain {
                    sleep,
                    url: url.unwrap_or_default().to_string(),
                };
            }
            "kernel" => kernel = Some(rest.to_string()),
            "initrd" => initrd = Some(rest.trim().to_string()),
            "boot" => {
                let k = kernel.take().unwrap_or_default();
                let (url, args) = k.split_once(' ').unwrap_or((k.as_str(), ""));
                return Script::Boot {
                    kernel: url.to_string(),
                    args: args.to_string(),
                    initrd: initrd.take().unwrap_or_default(),
                };
            }
            "poweroff" => return Script::Off,
            other => return Script::Other(other.to_string()),
        }
    }
    Script::Other("end of script".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_read_as_ipxe_would_run_them() {
        let s = "#!ipxe\necho Ironpool: x\nkernel http://a/k?mac=1 ironpool.url=http://a ironpool.attempt=2\ninitrd http://a/i\nboot\n";
        assert_eq!(
            interpret(s),
            Script::Boot {
                kernel: "http://a/k?mac=1".into(),
                args: "ironpool.url=http://a ironpool.attempt=2".into(),
                initrd: "http://a/i".into()
            }
        );
        let s = "#!ipxe\necho wait\nsleep 10\nchain --replace --autofree http://a/boot/m.ipxe\n";
        assert_eq!(
            interpret(s),
            Script::Chain {
                sleep: 10,
                url: "http://a/boot/m.ipxe".into()
            }
        );
        assert_eq!(interpret("#!ipxe\npoweroff || exit\n"), Script::Off);
    }
}
