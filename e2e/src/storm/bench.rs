//! The boot storm's phases: a fleet that boots to Ready under the real operator and agent
//! (timed until every Machine's `status.phase` is Ready, with the apiserver's writes and
//! the processes' CPU and peak RSS), and a fleet that runs only the serving half, against
//! whichever servers run in the server namespace.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::StreamExt as _;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::env::{BMC_SECRET, Env, FLEET_IFACE, FLEET_IP, NAMESPACE};
pub use super::fleet_proc::FleetProc;
use super::{FleetConfig, Mode, metrics, server};

/// First BMC port; server `i` listens on `BMC_PORT + i`.
pub const BMC_PORT: u16 = 20000;

/// CPU seconds of the named processes.
pub type Cpu = BTreeMap<String, f64>;

fn cpu_of(pids: &[(String, u32)]) -> Cpu {
    pids.iter()
        .map(|(n, p)| (n.clone(), metrics::cpu_seconds(*p)))
        .collect()
}

fn cpu_diff(a: &Cpu, b: &Cpu) -> Cpu {
    b.iter()
        .map(|(k, v)| (k.clone(), v - a.get(k).copied().unwrap_or(0.0)))
        .collect()
}

/// The processes measured in an Ironpool run.
pub fn ironpool_pids(env: &Env) -> Vec<(String, u32)> {
    let mut v = Vec::new();
    if let Some(a) = &env.agent {
        v.push(("agent".to_string(), a.pid()));
    }
    if let Some(o) = &env.operator {
        v.push(("operator".to_string(), o.pid()));
    }
    let cp = env.cp.pids();
    for (name, pid) in ["kube-apiserver", "etcd"].iter().zip(cp) {
        v.push(((*name).to_string(), pid));
    }
    v
}

/// One full phase's outcome.
pub struct Full {
    /// Servers.
    pub servers: u32,
    /// Power-on to the last Ready.
    pub wall: Duration,
    /// MAC -> seconds from power-on to Ready.
    pub ready: HashMap<String, f64>,
    /// MAC -> Machine names that have it.
    pub machines: HashMap<String, Vec<String>>,
    /// MAC -> leased addresses.
    pub leases: HashMap<String, HashSet<String>>,
    /// Fleet counters.
    pub stats: Value,
    /// Boots that failed.
    pub failures: Vec<String>,
    /// Boots overtaken by the Machine's next state.
    pub overtaken: usize,
    /// apiserver writes during the phase, by resource.
    pub writes: BTreeMap<String, f64>,
    /// CPU seconds during the phase.
    pub cpu: Cpu,
    /// Peak RSS (MiB) of agent and operator at the end.
    pub rss: BTreeMap<String, f64>,
    /// Where the time goes: milestone -> seconds since power-on, one per server.
    pub milestones: Vec<(String, Vec<f64>)>,
    /// `/proc/loadavg` at the start and at the end (other work on the machine).
    pub load: (String, String),
}

/// The 1-minute load average now.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_string()
}

/// Milestones of each server's way to Ready, from the fleet's step events (its first boot,
/// and the boot that posted the result) and the bench's watch.
fn milestones(events: &[Value], seen: &Seen) -> Vec<(String, Vec<f64>)> {
    type Steps = HashMap<u64, HashMap<String, f64>>;
    let mut per: HashMap<String, Steps> = HashMap::new();
    for e in events.iter().filter(|e| e["event"] == "step") {
        let mac = e["mac"].as_str().unwrap_or("").to_string();
        let boot = e["boot"].as_u64().unwrap_or(0);
        let step = e["step"].as_str().unwrap_or("").to_string();
        let t = e["t"].as_f64().unwrap_or(0.0);
        per.entry(mac)
            .or_default()
            .entry(boot)
            .or_default()
            .entry(step)
            .or_insert(t);
    }
    let mut rows: Vec<(String, Vec<f64>)> = Vec::new();
    let mut push = |name: &str, v: Vec<f64>| rows.push((name.to_string(), v));
    let first = |step: &str| -> Vec<f64> {
        per.values()
            .filter_map(|b| b.get(&1).and_then(|s| s.get(step)).copied())
            .collect()
    };
    push("first boot: firmware DHCP ACK", first("dhcp"));
    push(
        "Machine enlisted (watch)",
        seen.enlisted.values().copied().collect(),
    );
    push(
        "BMC added by the bench",
        seen.bmc_at.values().copied().collect(),
    );
    let last = |step: &str| -> Vec<f64> {
        per.values()
            .filter_map(|b| {
                let (_, s) = b
                    .iter()
                    .filter(|(_, s)| s.contains_key("result"))
                    .max_by_key(|(n, _)| **n)?;
                s.get(step).copied()
            })
            .collect()
    };
    for (name, step) in [
        ("commissioning boot: powered on by the agent", "start"),
        ("  firmware DHCP ACK", "dhcp"),
        ("  TFTP of iPXE done", "tftp"),
        ("  iPXE DHCP ACK", "ipxe-dhcp"),
        ("  ramdisk script fetched", "script"),
        ("  kernel and initrd fetched", "kernel+initrd"),
        ("  ramdisk DHCP ACK", "ramdisk-dhcp"),
        ("  inventory accepted", "inventory"),
        ("  result accepted", "result"),
    ] {
        push(name, last(step));
    }
    push("Ready (watch)", seen.ready.values().copied().collect());
    rows
}

fn machine_api(client: kube::Client) -> Api<DynamicObject> {
    let gvk = kube::api::GroupVersionKind::gvk("metal.ironpool.dev", "v1alpha1", "Machine");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "machines");
    Api::namespaced_with(client, NAMESPACE, &ar)
}

#[derive(Default)]
struct Seen {
    ready: HashMap<String, f64>,
    names: HashMap<String, HashSet<String>>,
    adopted: HashSet<String>,
    enlisted: HashMap<String, f64>,
    bmc_at: HashMap<String, f64>,
}

/// Index of a fleet MAC (`02:1b:<4 bytes>`).
fn index_of(mac: &str) -> Option<u32> {
    let b: Vec<u8> = mac
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).ok())
        .collect::<Option<_>>()?;
    (b.len() == 6 && b[0] == 0x02 && b[1] == 0x1b)
        .then(|| u32::from_be_bytes([b[2], b[3], b[4], b[5]]))
}

/// Runs a Full fleet of `count` servers from `first`: power on at once; as each enlisted
/// Machine appears the bench gives it its BMC (as the lab's person does); waits until all
/// are Ready.
pub async fn full(
    env: &Env,
    exe: &Path,
    first: u32,
    count: u32,
    timeout: Duration,
) -> Result<(Full, FleetProc)> {
    env.reset_fleet_addresses()?;
    let cfg = FleetConfig {
        first,
        count,
        mode: Mode::Full,
        iface: FLEET_IFACE.into(),
        bmc_ip: FLEET_IP.parse()?,
        bmc_port: BMC_PORT,
        bmc_credentials: Some(env.bmc_credentials.clone()),
    };
    let mut fleet = FleetProc::start(env, exe, &cfg, &format!("fleet-full-{first}.log"))?;
    let client = env.cp.client().await?;
    let api = machine_api(client.clone());
    let wanted: HashSet<String> = (first..first + count)
        .map(|i| server::mac_text(&server::mac_of(i)))
        .collect();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let pids = ironpool_pids(env);
    let writes0 = metrics::apiserver_writes(&client).await?;
    let cpu0 = cpu_of(&pids);
    let load0 = load_average();
    let t0 = Instant::now();
    fleet.go()?;
    let watch = {
        let (seen, api, wanted) = (seen.clone(), api.clone(), wanted.clone());
        tokio::spawn(async move {
            let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
            while let Some(ev) = stream.next().await {
                let objs = match ev {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => vec![o],
                    _ => continue,
                };
                for o in objs {
                    observe(&o, seen.clone(), &wanted, &api, t0);
                }
            }
        })
    };
    let deadline = Instant::now() + timeout;
    let wall = loop {
        let done = seen.lock().unwrap_or_else(|p| p.into_inner()).ready.len();
        if done >= wanted.len() {
            break t0.elapsed();
        }
        if Instant::now() > deadline {
            watch.abort();
            bail!(
                "{done} of {count} Machines Ready after {timeout:?}; failed boots: {:?}",
                fleet.failures().iter().take(10).collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let cpu1 = cpu_of(&pids);
    let writes1 = metrics::apiserver_writes(&client).await?;
    if let Ok(text) = client
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await
    {
        let _ = std::fs::write(env.dir.join(format!("apiserver-metrics-{first}.txt")), text);
    }
    if let Ok(text) = env
        .srv
        .exec(&["curl", "-s", "http://127.0.0.1:9090/metrics"])
    {
        let _ = std::fs::write(env.dir.join(format!("agent-metrics-{first}.txt")), text);
    }
    // Let the last power-offs land before the counters are read.
    tokio::time::sleep(Duration::from_secs(1)).await;
    watch.abort();
    let s = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
    let milestones = milestones(&fleet.events(), &s);
    let rss = pids
        .iter()
        .filter(|(n, _)| n == "agent" || n == "operator")
        .map(|(n, p)| (n.clone(), metrics::peak_rss_mib(*p)))
        .collect();
    let leases = fleet.leases();
    let failures = fleet.failures();
    let overtaken = fleet.overtaken();
    Ok((
        Full {
            servers: count,
            wall,
            ready: s.ready,
            machines: s
                .names
                .into_iter()
                .map(|(k, v)| (k, v.into_iter().collect()))
                .collect(),
            leases,
            stats: Value::Null,
            failures,
            overtaken,
            writes: metrics::diff(&writes0, &writes1),
            cpu: cpu_diff(&cpu0, &cpu1),
            rss,
            milestones,
            load: (load0, load_average()),
        },
        fleet,
    ))
}

fn observe(
    o: &DynamicObject,
    seen: Arc<Mutex<Seen>>,
    wanted: &HashSet<String>,
    api: &Api<DynamicObject>,
    t0: Instant,
) {
    let mac = o.data["spec"]["bootMACAddress"]
        .as_str()
        .unwrap_or("")
        .to_ascii_lowercase();
    if !wanted.contains(&mac) {
        return;
    }
    let name = o.metadata.name.clone().unwrap_or_default();
    let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
    s.names.entry(mac.clone()).or_default().insert(name.clone());
    let now = t0.elapsed().as_secs_f64();
    s.enlisted.entry(mac.clone()).or_insert(now);
    if o.data["status"]["phase"] == "Ready" && !s.ready.contains_key(&mac) {
        s.ready.insert(mac.clone(), t0.elapsed().as_secs_f64());
    }
    if o.data["spec"]["bmc"].is_null() && s.adopted.insert(mac.clone()) {
        let Some(index) = index_of(&mac) else { return };
        let addr = std::net::SocketAddr::new(
            FLEET_IP
                .parse()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED)
                .into(),
            BMC_PORT + index as u16,
        );
        let patch = json!({"spec": {"bmc": {"address": super::redfish::address(addr),
                                             "credentialsSecretRef": {"name": BMC_SECRET}}}});
        let (api, seen) = (api.clone(), seen.clone());
        tokio::spawn(async move {
            let pp = PatchParams {
                field_manager: Some("boot-storm".into()),
                ..PatchParams::default()
            };
            match api.patch(&name, &pp, &Patch::Merge(&patch)).await {
                Ok(_) => {
                    let t = t0.elapsed().as_secs_f64();
                    let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                    s.bmc_at.insert(mac, t);
                }
                Err(e) => eprintln!("[boot-storm] giving {name} its BMC failed: {e}"),
            }
        });
    }
}

/// One serving-half phase's outcome.
pub struct Serve {
    /// Power-on to the last initrd byte.
    pub wall: Duration,
    /// Fleet counters.
    pub stats: Value,
    /// Boots that failed.
    pub failures: Vec<String>,
    /// CPU seconds of the servers during the phase.
    pub cpu: Cpu,
}

/// Runs a Serve fleet of `count` servers from `first` against what `pids` names.
pub fn serve(
    env: &Env,
    exe: &Path,
    first: u32,
    count: u32,
    pids: &[(String, u32)],
    timeout: Duration,
) -> Result<Serve> {
    env.reset_fleet_addresses()?;
    let cfg = FleetConfig {
        first,
        count,
        mode: Mode::Serve,
        iface: FLEET_IFACE.into(),
        bmc_ip: FLEET_IP.parse()?,
        bmc_port: BMC_PORT,
        bmc_credentials: None,
    };
    let mut fleet = FleetProc::start(env, exe, &cfg, &format!("fleet-serve-{first}.log"))?;
    let cpu0 = cpu_of(pids);
    let t0 = Instant::now();
    fleet.go()?;
    let stats = fleet.wait_event("stats", timeout)?;
    let wall = t0.elapsed();
    let cpu1 = cpu_of(pids);
    Ok(Serve {
        wall,
        stats,
        failures: fleet.failures(),
        cpu: cpu_diff(&cpu0, &cpu1),
    })
}

/// Where the benchmark writes: `$IRONPOOL_CACHE/boot-storm/<pid>`.
pub fn work_dir() -> PathBuf {
    crate::cache_dir()
        .join("boot-storm")
        .join(std::process::id().to_string())
}
