//! Scale benchmark of the operator against a real kube-apiserver (a program, not a timed
//! test): N Machines commissioned by a simulated agent, then M Deployments allocated.
//! Prints peak RSS, time to steady state, reconciles and status writes per object,
//! apiserver requests per object, and allocation time beside the time the same apiserver
//! needs for the same number of plain status writes, measured in the same run.
//!
//! `cargo bench -p ironpool-operator --bench scale -- [machines] [deployments]`; under
//! `cargo test` it runs a short form (200 Machines, 100 Deployments) that checks
//! correctness only.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use ironpool_crds::deployment::{DeploymentSpec, ErasePolicy, Image, ImageFormat, MachineSelector};
use ironpool_crds::machine::{Hardware, InventorySummary, MachinePhase, MachineSpec};
use ironpool_crds::{Deployment, Machine, MachineInventory};
use ironpool_e2e::ControlPlane;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// Concurrency of the baseline writes and of the operator's controllers
/// (`IRONPOOL_BENCH_CONCURRENCY`, default the operator's own default, 16).
fn concurrency() -> usize {
    std::env::var("IRONPOOL_BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16)
}

fn machine(i: usize) -> Machine {
    let mut m = Machine::new(
        &format!("m{i:05}"),
        MachineSpec {
            bmc: None,
            ..MachineSpec::for_boot_mac(format!(
                "52:54:00:{:02x}:{:02x}:{:02x}",
                (i >> 16) & 0xff,
                (i >> 8) & 0xff,
                i & 0xff
            ))
        },
    );
    m.metadata.labels = Some([("pool".to_string(), "bench".to_string())].into());
    m
}

fn deployment(i: usize) -> Deployment {
    Deployment::new(
        &format!("d{i:05}"),
        DeploymentSpec {
            machine_selector: Some(MachineSelector {
                match_labels: [("pool".to_string(), "bench".to_string())].into(),
                ..Default::default()
            }),
            machine_ref: None,
            image: Image {
                url: Some("http://images.test/os.raw".into()),
                checksum: Some(format!("sha256:{}", "ab".repeat(32))),
                format: Some(ImageFormat::Raw),
                oci: None,
            },
            user_data_secret_ref: None,
            network_data_secret_ref: None,
            storage: None,
            hostname: None,
            subnet_ref: None,
            erase: ErasePolicy::None,
        },
    )
}

/// What commissioning finds on a typical 2-socket server: 64 cores with their flags,
/// 8 disks, 4 NICs, DMI identity and 80 PCI functions (the inventory a real ramdisk
/// reports is of this size, some 20 KiB of JSON).
fn server_inventory(mac: &str) -> Hardware {
    let flags = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc cpuid extd_apicid aperfmperf rapl pni pclmulqdq monitor ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand lahf_lm cmp_legacy svm extapic cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw ibs skinit wdt tce topoext perfctr_core perfctr_nb bpext perfctr_llc mwaitx cpb cat_l3 cdp_l3 hw_pstate ssbd mba ibrs ibpb stibp vmmcall fsgsbase bmi1 avx2 smep bmi2 erms invpcid cqm rdt_a rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 xsaves cqm_llc cqm_occup_llc cqm_mbm_total cqm_mbm_local wbnoinvd amd_ppin brs arat npt lbrv svm_lock nrip_save tsc_scale vmcb_clean flushbyasid decodeassists pausefilter pfthreshold v_vmsave_vmload vgif v_spec_ctrl umip pku ospke vaes vpclmulqdq rdpid overflow_recov succor smca fsrm";
    serde_json::from_value(json!({
        "cpu": {"model": "AMD EPYC 7543 32-Core Processor", "cores": 64, "threads": 128, "sockets": 2,
                "architecture": "x86_64", "flags": flags.split(' ').collect::<Vec<_>>()},
        "memoryBytes": 549755813888i64, "memory": "512Gi",
        "disks": (0..8).map(|d| json!({"name": format!("nvme{d}n1"), "sizeBytes": 3840755982336i64, "type": "NVMe",
            "model": "SAMSUNG MZQL23T8HCLS-00A07", "vendor": "Samsung", "serialNumber": format!("S64HNE0T{d:06}"),
            "wwn": format!("eui.36344830526{d:05}0025384500000001"), "rotational": false})).collect::<Vec<_>>(),
        "nics": (0..4).map(|n| json!({"name": format!("ens{}f{}", 1 + n / 2, n % 2), "mac": if n == 0 { mac.to_string() } else { format!("b8:ce:f6:00:00:{n:02x}") },
            "driver": "mlx5_core", "link": true, "speedMbps": 25000})).collect::<Vec<_>>(),
        "system": {"manufacturer": "Supermicro", "product": "AS -1124US-TNRP", "serialNumber": "A123456789",
            "uuid": "00000000-0000-0000-0000-ac1f6b000001", "boardManufacturer": "Supermicro", "boardProduct": "H12DSU-iN",
            "biosVendor": "American Megatrends International, LLC.", "biosVersion": "2.4", "biosDate": "04/12/2022"},
        "pci": (0..80).map(|p| json!({"address": format!("0000:{:02x}:{:02x}.{}", p / 16, p % 16, p % 8), "vendorId": "1022",
            "deviceId": format!("{:04x}", 0x1480 + p), "class": "060000", "driver": "pcieport"})).collect::<Vec<_>>(),
    }))
    .unwrap()
}

/// The simulated agent: applies every pending intent of every machine; commissioning
/// reports inventory. Deploy intents are applied but never reported (machines stay
/// Deploying), so the allocation measurement is not mixed with later steps.
async fn agent_pass(api: &Api<Machine>, calls: &AtomicU64) -> usize {
    let list = api.list(&ListParams::default()).await.unwrap().items;
    calls.fetch_add(1, Ordering::Relaxed);
    let todo: Vec<Machine> = list
        .into_iter()
        .filter(|m| {
            let st = m.status.as_ref();
            let intent = st
                .and_then(|s| s.boot_intent.as_ref())
                .map_or(0, |i| i.attempt);
            intent
                > st.and_then(|s| s.boot_applied.as_ref())
                    .map_or(0, |a| a.attempt)
        })
        .collect();
    let n = todo.len();
    stream::iter(todo)
        .for_each_concurrent(concurrency(), |m| async move {
            let st = m.status.as_ref().unwrap();
            let i = st.boot_intent.as_ref().unwrap();
            let now = Timestamp::now().to_string();
            let mut status = json!({"bootApplied": {"attempt": i.attempt, "appliedAt": now}, "power": {"state": "On", "lastSync": now}});
            if let Some(h) = &st.inventory {
                status["inventory"] = serde_json::to_value(h).unwrap();
            }
            if let Some(p) = &st.provisioning {
                status["provisioning"] = serde_json::to_value(p).unwrap();
            }
            if format!("{:?}", i.purpose) == "Commission" {
                // As the agent does: the full inventory in its own object, the summary in
                // the Machine's status.
                let hw = server_inventory(&m.spec.boot_mac_address);
                let inventories: Api<MachineInventory> =
                    Api::namespaced(api.clone().into_client(), &m.namespace().unwrap());
                let object = json!({"apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "MachineInventory",
                    "metadata": {"name": m.name_any()}, "spec": {"hardware": hw}});
                let _ = inventories.patch(&m.name_any(), &PatchParams::apply("ironpool-agent-hardware").force(), &Patch::Apply(&object)).await;
                calls.fetch_add(1, Ordering::Relaxed);
                status["inventory"] = serde_json::to_value(InventorySummary::of(&m.name_any(), &hw)).unwrap();
                status["provisioning"] = json!({"attempt": i.attempt, "step": "Succeeded"});
            }
            let patch = json!({"apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Machine", "metadata": {"name": m.name_any()}, "status": status});
            let _ = api.patch_status(&m.name_any(), &PatchParams::apply("ironpool-agent").force(), &Patch::Apply(&patch)).await;
            calls.fetch_add(1, Ordering::Relaxed);
        })
        .await;
    n
}

fn scrape(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", url])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    out.unwrap_or_default()
}

/// Sum of a Prometheus counter family (all label sets) in `text`.
fn metric_sum(text: &str, name: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(filter) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// apiserver requests on Ironpool kinds, leases and events, from its own metrics.
fn apiserver_requests(cp: &ControlPlane) -> f64 {
    let out = cp
        .kubectl()
        .args(["get", "--raw", "/metrics"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    [
        "resource=\"machines\"",
        "resource=\"machineinventories\"",
        "resource=\"deployments\"",
        "resource=\"subnets\"",
        "resource=\"leases\"",
        "resource=\"events\"",
    ]
    .iter()
    .map(|r| metric_sum(&text, "apiserver_request_total{", r))
    .sum()
}

/// apiserver requests on Ironpool kinds, leases and events by verb, resource and code.
fn apiserver_breakdown(cp: &ControlPlane) -> BTreeMap<String, f64> {
    let out = cp
        .kubectl()
        .args(["get", "--raw", "/metrics"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let label = |l: &str, k: &str| -> String {
        let key = format!("{k}=\"");
        l.split(&key)
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("")
            .to_string()
    };
    let mut by = BTreeMap::new();
    for l in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let resource = label(l, "resource");
        if ![
            "machines",
            "machineinventories",
            "deployments",
            "subnets",
            "leases",
            "events",
        ]
        .contains(&resource.as_str())
        {
            continue;
        }
        let sub = label(l, "subresource");
        let key = format!(
            "{} {}{}{} {}",
            label(l, "verb"),
            resource,
            if sub.is_empty() { "" } else { "/" },
            sub,
            label(l, "code")
        );
        let v: f64 = l
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *by.entry(key).or_insert(0.0) += v;
    }
    by
}

/// CPU seconds (user + system) the process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0);
    (field(11) + field(12)) / 100.0
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

async fn count_phase(api: &Api<Machine>, p: MachinePhase) -> usize {
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|m| m.status.as_ref().and_then(|s| s.phase) == Some(p))
        .count()
}

/// `n` plain status writes (server-side apply of a Deployment's phase and machineRef) at the
/// operator's concurrency, on `n` Deployments created first in `ns`: wall time, and the
/// control plane's CPU seconds during the writes.
async fn plain_writes(
    client: &Client,
    ns: &str,
    n: usize,
    cp_cpu: &dyn Fn() -> f64,
) -> (Duration, f64) {
    let base: Api<Deployment> = Api::namespaced(client.clone(), ns);
    stream::iter(0..n)
        .for_each_concurrent(concurrency(), |i| {
            let base = base.clone();
            async move {
                base.create(&PostParams::default(), &deployment(i))
                    .await
                    .unwrap();
            }
        })
        .await;
    let cp_before = cp_cpu();
    let t = Instant::now();
    stream::iter(0..n)
        .for_each_concurrent(concurrency(), |i| {
            let base = base.clone();
            async move {
                let patch = json!({"apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Deployment", "metadata": {"name": format!("d{i:05}")},
                    "status": {"phase": "Allocated", "machineRef": {"name": format!("m{i:05}")}}});
                base.patch_status(&format!("d{i:05}"), &PatchParams::apply("baseline").force(), &Patch::Apply(&patch)).await.unwrap();
            }
        })
        .await;
    (t.elapsed(), cp_cpu() - cp_before)
}

/// The same apiserver's cost of each request kind an allocation makes, one kind at a time
/// with no operator watching: `n` merge patches of the allocated Machines' status (one small
/// field, as the claim is a merge patch), and `n` Events created (the allocation's Event).
/// Control plane CPU seconds of each.
async fn request_costs(
    machines: &Api<Machine>,
    events: &Api<k8s_openapi::api::core::v1::Event>,
    events_ns: &str,
    n: usize,
    cp_cpu: &dyn Fn() -> f64,
) -> (f64, f64) {
    let names: Vec<String> = machines
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|m| {
            m.status
                .as_ref()
                .is_some_and(|s| s.deployment_ref.is_some())
        })
        .map(|m| m.name_any())
        .take(n)
        .collect();
    let before = cp_cpu();
    stream::iter(names.iter())
        .for_each_concurrent(concurrency(), |name| async move {
            let patch = json!({"status": {"power": {"state": "Off", "lastSync": Timestamp::now().to_string()}}});
            machines
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        })
        .await;
    let machine_cpu = (cp_cpu() - before) / names.len().max(1) as f64;
    let before = cp_cpu();
    stream::iter(0..n)
        .for_each_concurrent(concurrency(), |i| async move {
            let event: k8s_openapi::api::core::v1::Event = serde_json::from_value(json!({
                "metadata": {"generateName": "d-"},
                "involvedObject": {"apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Deployment", "name": format!("d{i:05}"), "namespace": events_ns},
                "reason": "Allocated", "message": format!("allocated machine m{i:05}"), "type": "Normal",
                "source": {"component": "ironpool-operator"}, "count": 1,
                "firstTimestamp": Timestamp::now().to_string(), "lastTimestamp": Timestamp::now().to_string()}))
            .unwrap();
            events.create(&PostParams::default(), &event).await.unwrap();
        })
        .await;
    let event_cpu = (cp_cpu() - before) / n.max(1) as f64;
    (machine_cpu, event_cpu)
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    // `cargo bench` passes --bench: the full size. `cargo test` (the CI suite) runs the short
    // form, which checks correctness only: every machine Ready, no machine allocated twice.
    let full = std::env::args().any(|a| a == "--bench");
    let (machines_n, deployments_n) = if full {
        (
            args.first().copied().unwrap_or(5000),
            args.get(1).copied().unwrap_or(1000),
        )
    } else {
        (200, 100)
    };
    let cp = ControlPlane::start().unwrap();
    ironpool_e2e::cluster::install_crds(&cp).unwrap();
    let client: Client = cp.client().await.unwrap();
    let ns = cp.create_namespace("bench").await.unwrap();
    let base_ns = cp.create_namespace("baseline").await.unwrap();
    let machines: Api<Machine> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let calls = Arc::new(AtomicU64::new(0));

    let cp_cpu = || cp.pids().into_iter().map(cpu_seconds).sum::<f64>();
    // Baseline: the apiserver's time for `deployments_n` status writes at the operator's
    // concurrency, on an apiserver holding nothing else yet. Measured again after the
    // allocation, on the apiserver as full as the allocation found it.
    let (baseline, cp_baseline) = plain_writes(&client, &base_ns, deployments_n, &cp_cpu).await;
    let _ = cp
        .kubectl()
        .args(["delete", "namespace", &base_ns, "--wait=false"])
        .output();

    // As the chart installs it: the apiserver adds the release finalizer to every new
    // Deployment (MutatingAdmissionPolicy), so the operator need not write it. Installed
    // after the baseline's creates, so the baseline's Deployments go with their namespace.
    ironpool_e2e::chart::install_release_finalizer_policy(&cp, &client, &ns)
        .await
        .unwrap();

    // Machines, created before the operator starts.
    let t = Instant::now();
    stream::iter(0..machines_n)
        .for_each_concurrent(32, |i| {
            let machines = machines.clone();
            async move {
                machines
                    .create(&PostParams::default(), &machine(i))
                    .await
                    .unwrap();
            }
        })
        .await;
    eprintln!("created {machines_n} Machines in {:?}", t.elapsed());

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let start_operator = || {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(cp.dir().join("operator.log"))
            .unwrap();
        Command::new(env!("CARGO_BIN_EXE_ironpool-operator"))
            .env("KUBECONFIG", cp.kubeconfig_path())
            .args([
                "--namespace",
                &ns,
                "--lease-namespace",
                &ns,
                "--identity",
                "bench",
                "--concurrency",
                &concurrency().to_string(),
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap()
    };
    let mut op = start_operator();
    let pid = op.id();
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    let requests_before = apiserver_requests(&cp);
    let calls_before = calls.load(Ordering::Relaxed);

    // Commission everything: steady state when all are Ready, every intent is applied,
    // and the operator's reconcile count stops moving.
    let t = Instant::now();
    let mut last_reconciles = -1.0;
    loop {
        assert!(
            full || t.elapsed() < Duration::from_secs(300),
            "the short form did not commission {machines_n} machines in 5 minutes"
        );
        let pending = agent_pass(&machines, &calls).await;
        let ready = count_phase(&machines, MachinePhase::Ready).await;
        calls.fetch_add(1, Ordering::Relaxed);
        let reconciles = metric_sum(
            &scrape(&metrics_url),
            "ironpool_reconciles_total",
            "machine",
        );
        eprintln!(
            "  t={:>5.1}s Ready {ready}/{machines_n}, intents applied this pass {pending}, reconciles {reconciles}",
            t.elapsed().as_secs_f64()
        );
        if ready == machines_n && pending == 0 && reconciles == last_reconciles {
            break;
        }
        last_reconciles = reconciles;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let steady = t.elapsed();
    let cpu_after_commission = cpu_seconds(pid);
    let m1 = scrape(&metrics_url);
    let machine_reconciles = metric_sum(&m1, "ironpool_reconciles_total", "machine");
    let machine_writes = metric_sum(&m1, "ironpool_status_writes_total", "machine");
    let requests_commission = apiserver_requests(&cp)
        - requests_before
        - (calls.load(Ordering::Relaxed) - calls_before) as f64;

    // Idle: nothing changes, so nothing should be reconciled.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle = metric_sum(&scrape(&metrics_url), "ironpool_reconciles_total", "")
        - metric_sum(&m1, "ironpool_reconciles_total", "");

    // Allocation: the Deployments are created while the operator is stopped (SIGTERM, so
    // it hands its Lease back), then it starts and allocates them all; the clock runs from
    // its start, so the measurement holds the operator's work and not the bench's creates.
    let peak_commission = rss_kib(pid, "VmHWM:");
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = op.wait();
    let t = Instant::now();
    stream::iter(0..deployments_n)
        .for_each_concurrent(32, |i| {
            let d = deployments.clone();
            async move {
                d.create(&PostParams::default(), &deployment(i))
                    .await
                    .unwrap();
            }
        })
        .await;
    let created = t.elapsed();
    let requests_before = apiserver_requests(&cp);
    let breakdown_before = apiserver_breakdown(&cp);
    let calls_before = calls.load(Ordering::Relaxed);
    let cp_before = cp_cpu();
    let t = Instant::now();
    let mut op = start_operator();
    let pid = op.id();
    // The operator's cold start (process, Lease, listing 5,000 Machines and the
    // Deployments): until its caches are full it decides nothing. Polled finely here,
    // /metrics costs the apiserver nothing.
    let synced = loop {
        let text = scrape(&metrics_url);
        if metric_sum(&text, "ironpool_caches_synced_seconds", "") > 0.0 {
            break t.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("  t={:>5.1}s caches synced", synced.as_secs_f64());
    // `IRONPOOL_BENCH_PPROF=FILE`: a 10 s CPU profile of kube-apiserver during allocation
    // (its /debug/pprof endpoint; read with `go tool pprof -top FILE`).
    let pprof = std::env::var_os("IRONPOOL_BENCH_PPROF").map(|file| {
        let mut cmd = cp.kubectl();
        cmd.args(["get", "--raw", "/debug/pprof/profile?seconds=10"]);
        cmd.stdout(std::fs::File::create(file).unwrap());
        cmd.spawn().unwrap()
    });
    // Follow the Deployments with one watch (listing all of them every second would load
    // the apiserver being measured): done when every one names a machine, none twice.
    let mut holders: BTreeMap<String, String> = BTreeMap::new();
    let mut events =
        std::pin::pin!(watcher(deployments.clone(), watcher::Config::default()).applied_objects());
    let mut last_report = Instant::now();
    while holders.len() < deployments_n {
        let d = match tokio::time::timeout(Duration::from_secs(120), events.next()).await {
            Ok(Some(Ok(d))) => d,
            Ok(Some(Err(e))) => {
                eprintln!("  watch error (retried): {e}");
                continue;
            }
            Ok(None) | Err(_) => panic!("allocation stalled at {}/{deployments_n}", holders.len()),
        };
        if let Some(m) = d.status.as_ref().and_then(|s| s.machine_ref.as_ref()) {
            holders.insert(d.name_any(), m.name.clone());
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            eprintln!(
                "  t={:>5.1}s allocated {}/{deployments_n}",
                t.elapsed().as_secs_f64(),
                holders.len()
            );
        }
    }
    // The watch's own list and watch requests.
    calls.fetch_add(2, Ordering::Relaxed);
    let distinct: std::collections::BTreeSet<&String> = holders.values().collect();
    assert_eq!(
        distinct.len(),
        deployments_n,
        "a machine was allocated twice"
    );
    let allocation = t.elapsed();
    let cp_alloc = cp_cpu() - cp_before;
    let cpu_alloc = cpu_seconds(pid);
    let m2 = scrape(&metrics_url);
    let dep_reconciles = metric_sum(&m2, "ironpool_reconciles_total", "deployment");
    let dep_writes = metric_sum(&m2, "ironpool_status_writes_total", "deployment");
    let requests_alloc = apiserver_requests(&cp)
        - requests_before
        - (calls.load(Ordering::Relaxed) - calls_before) as f64;
    let breakdown = apiserver_breakdown(&cp);
    let events_per_allocation = breakdown
        .iter()
        .filter(|(k, _)| k.starts_with("POST events"))
        .map(|(k, v)| v - breakdown_before.get(k).copied().unwrap_or(0.0))
        .sum::<f64>()
        / deployments_n as f64;
    let peak = rss_kib(pid, "VmHWM:").max(peak_commission);
    if let Some(mut p) = pprof {
        let _ = p.wait();
    }
    let kept = std::env::temp_dir().join("ironpool-bench-operator.log");
    if std::fs::copy(cp.dir().join("operator.log"), &kept).is_ok() {
        eprintln!("operator log kept in {}", kept.display());
    }
    let _ = op.kill();
    let _ = op.wait();
    let after_ns = cp.create_namespace("baseline-after").await.unwrap();
    let (baseline_after, cp_baseline_after) =
        plain_writes(&client, &after_ns, deployments_n, &cp_cpu).await;
    let (machine_write_cpu, event_cpu) = request_costs(
        &machines,
        &Api::namespaced(client.clone(), &after_ns),
        &after_ns,
        deployments_n,
        &cp_cpu,
    )
    .await;

    println!(
        "\nironpool-operator scale benchmark ({machines_n} Machines, {deployments_n} Deployments, real kube-apiserver + etcd on this machine)"
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| peak RSS of the operator | {:.1} MiB |",
        peak as f64 / 1024.0
    );
    println!(
        "| commission {machines_n} machines to steady state (simulated agent) | {:.1} s |",
        steady.as_secs_f64()
    );
    println!(
        "| machine reconciles per machine | {:.2} |",
        machine_reconciles / machines_n as f64
    );
    println!(
        "| machine status writes per machine | {:.2} |",
        machine_writes / machines_n as f64
    );
    println!(
        "| apiserver requests by the operator per machine (commissioning) | {:.2} |",
        requests_commission / machines_n as f64
    );
    println!("| operator CPU during commissioning | {cpu_after_commission:.1} s |");
    println!("| operator CPU during allocation | {cpu_alloc:.1} s |");
    println!("| reconciles during 10 s with nothing changing | {idle} |");
    println!(
        "| operator start to {deployments_n} Deployments allocated (created before, in {:.1} s) | {:.2} s |",
        created.as_secs_f64(),
        allocation.as_secs_f64()
    );
    println!(
        "| same apiserver: {deployments_n} plain status writes, concurrency {}, before / after the allocation | {:.2} s / {:.2} s |",
        concurrency(),
        baseline.as_secs_f64(),
        baseline_after.as_secs_f64()
    );
    println!(
        "| kube-apiserver + etcd CPU: during the plain writes (before / after) / during allocation | {cp_baseline:.1} s / {cp_baseline_after:.1} s / {cp_alloc:.1} s |"
    );
    println!(
        "| kube-apiserver + etcd CPU per plain write (before / after) / per allocation | {:.2} ms / {:.2} ms / {:.2} ms |",
        1000.0 * cp_baseline / deployments_n as f64,
        1000.0 * cp_baseline_after / deployments_n as f64,
        1000.0 * cp_alloc / deployments_n as f64
    );
    // What the allocation's own requests cost when nothing watches: its floor in CPU.
    let plain_cpu = (cp_baseline + cp_baseline_after) / 2.0 / deployments_n as f64;
    let floor = machine_write_cpu + plain_cpu + events_per_allocation * event_cpu;
    println!(
        "| kube-apiserver + etcd CPU of the allocation's requests alone: a Machine status merge patch / a Deployment status write / an Event | {:.2} ms / {:.2} ms / {:.2} ms |",
        1000.0 * machine_write_cpu,
        1000.0 * plain_cpu,
        1000.0 * event_cpu
    );
    println!(
        "| their sum per allocation ({events_per_allocation:.2} Events), the floor without watches / measured per allocation | {:.2} ms = {:.2}x a plain write / {:.2}x |",
        1000.0 * floor,
        floor / plain_cpu,
        cp_alloc / deployments_n as f64 / plain_cpu
    );
    // The two baselines bracket the allocation; their mean is the yardstick (one window
    // alone moves with whatever else the machine does at that moment).
    let baseline = (baseline + baseline_after) / 2;
    println!(
        "| allocation / mean baseline (goal <= 4) | {:.2} |",
        allocation.as_secs_f64() / baseline.as_secs_f64()
    );
    let work = allocation.saturating_sub(synced);
    println!(
        "| of which cold start (start to caches synced) / allocation work after it | {:.2} s / {:.2} s |",
        synced.as_secs_f64(),
        work.as_secs_f64()
    );
    println!(
        "| allocation work after the caches synced / baseline | {:.2} |",
        work.as_secs_f64() / baseline.as_secs_f64()
    );
    println!(
        "| deployment reconciles per Deployment | {:.2} |",
        dep_reconciles / deployments_n as f64
    );
    println!(
        "| deployment status writes per Deployment | {:.2} |",
        dep_writes / deployments_n as f64
    );
    println!(
        "| apiserver requests by the operator per Deployment (allocation) | {:.2} |",
        requests_alloc / deployments_n as f64
    );
    for c in ["deployment", "machine"] {
        let filter = format!("controller=\"{c}\"");
        let n = metric_sum(&m2, "ironpool_reconcile_duration_seconds_count", &filter);
        let sum = metric_sum(&m2, "ironpool_reconcile_duration_seconds_sum", &filter);
        println!(
            "| {c} reconciles in all / mean duration | {n} / {:.1} ms |",
            1000.0 * sum / n.max(1.0)
        );
    }
    // What each write carries: the size of an allocated Machine and its Deployment as the
    // apiserver stores them (JSON), and how much of it is managedFields.
    let m0 = machines.get("m00000").await.unwrap();
    let d0 = deployments.get("d00000").await.unwrap();
    let size = |v: serde_json::Value| {
        let all = serde_json::to_vec(&v).unwrap().len();
        let mf = serde_json::to_vec(&v["metadata"]["managedFields"])
            .unwrap()
            .len();
        let status = serde_json::to_vec(&v["status"]).unwrap().len();
        format!("{all} bytes (status {status}, managedFields {mf})")
    };
    println!(
        "| size of an allocated Machine / its Deployment | {} / {} |",
        size(serde_json::to_value(&m0).unwrap()),
        size(serde_json::to_value(&d0).unwrap())
    );
    if std::env::var_os("IRONPOOL_BENCH_DUMP").is_some() {
        eprintln!("{}", serde_json::to_string_pretty(&m0).unwrap());
        eprintln!("{}", serde_json::to_string_pretty(&d0).unwrap());
    }
    println!("\napiserver requests during allocation, per Deployment (the bench's own included)");
    println!("| request | per Deployment |");
    println!("|---|---|");
    for (k, v) in &breakdown {
        let d = v - breakdown_before.get(k).copied().unwrap_or(0.0);
        if d > 0.0 {
            println!("| {k} | {:.2} |", d / deployments_n as f64);
        }
    }
}
