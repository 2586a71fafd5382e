//! The fleet web view in a real headless Chromium, served by the real operator binary
//! against the real kube-apiserver: the login page refuses requests without a token (401)
//! or without access (403), the table lists the machines, a status change appears without
//! a reload (its latency measured), the machine page renders the flight recorder, the
//! Subnet page its leases and holder. The operator here is a standby (another identity
//! holds its Lease), so nothing but the test writes Machine status, and the view is shown
//! to be served by a replica that does not lead.
//!
//! `IRONPOOL_WEB_SCREENSHOTS=<dir>` writes `fleet-view.png` and `fleet-machine.png` there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use futures::StreamExt as _;

use common::*;
use ironpool_crds::{Machine, MachineInventory, Subnet};
use ironpool_e2e::webdriver::{Browser, epoch_ms, http, median};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

fn at(secs: u32) -> String {
    format!("2026-12-07T10:{:02}:{:02}.000001Z", secs / 60, secs % 60)
}

/// The lab's two machines and a few more in other phases, as the agent and operator
/// would have written them.
fn fleet() -> Vec<(&'static str, &'static str, Value)> {
    let boot = |ip: &str, file: &str, steps: usize| -> Value {
        let all = [
            json!({"step": "DHCPOffer", "detail": format!("{ip}, {file} over TFTP"), "at": at(0)}),
            json!({"step": "TFTPRead", "detail": file, "at": at(2)}),
            json!({"step": "DHCPAck", "detail": format!("{ip}, iPXE"), "at": at(14)}),
            json!({"step": "ScriptFetched", "detail": "/boot/52-54-00-77-00-10.ipxe", "at": at(15)}),
            json!({"step": "AssetFetched", "detail": "/assets/vmlinuz", "at": at(17)}),
            json!({"step": "RamdiskCheckIn", "detail": "ironpool-machine-agent 0.1.0", "at": at(33)}),
            json!({"step": "OSBooted", "detail": "check-in from the deployed OS", "at": at(71)}),
        ];
        Value::Array(all[..steps].to_vec())
    };
    let inv = |name: &str, cores: i64, gib: i64, disk_gib: i64| {
        json!({"inventoryRef": {"name": name}, "architecture": "x86_64", "cores": cores,
               "threads": cores, "memoryBytes": gib << 30, "memory": format!("{gib}Gi"),
               "diskCount": 1, "largestDiskBytes": disk_gib << 30,
               "totalDiskBytes": disk_gib << 30, "nicCount": 1})
    };
    let ready = |reason: &str, message: &str, ok: bool| {
        json!([{"type": "Ready", "status": if ok {"True"} else {"False"}, "reason": reason,
                "message": message, "lastTransitionTime": "2026-12-07T10:01:11Z"}])
    };
    vec![
        (
            "uefi-1",
            "rack1",
            json!({
                "phase": "Deploying", "power": {"state": "On"},
                "boot": boot("10.77.0.100", "ipxe.efi", 6), "inventory": inv("uefi-1", 2, 1, 4),
                "deploymentRef": {"name": "uefi-1"},
                "bootIntent": {"target": "Ramdisk", "purpose": "Deploy", "attempt": 3,
                               "issuedAt": "2026-12-07T09:59:58.000001Z"},
                "bootApplied": {"attempt": 3},
                "lastOperation": {"kind": "Deploy", "started": "2026-12-07T09:59:58Z",
                                  "result": "Running", "retries": 0, "image": "http://10.77.0.1:8081/os.qcow2"},
                "provisioning": {"attempt": 3, "step": "WritingImage",
                                 "bytesWritten": 20 << 20, "bytesTotal": 32 << 20},
                "conditions": ready("Deploying", "writing image 62%", false),
            }),
        ),
        (
            "bios-1",
            "rack1",
            json!({
                "phase": "Deployed", "power": {"state": "On"},
                "boot": boot("10.77.0.101", "undionly.kpxe", 7), "inventory": inv("bios-1", 2, 1, 4),
                "deploymentRef": {"name": "bios-1"},
                "conditions": ready("Deployed", "the OS checked in", true),
            }),
        ),
        (
            "r1-u03",
            "rack1",
            json!({
                "phase": "Ready", "power": {"state": "Off"},
                "boot": boot("10.77.0.102", "ipxe.efi", 6), "inventory": inv("r1-u03", 64, 512, 1788),
                "conditions": ready("Ready", "commissioned", true),
            }),
        ),
        (
            "r1-u04",
            "rack2",
            json!({
                "phase": "Commissioning", "power": {"state": "On"},
                "boot": boot("10.77.0.103", "ipxe.efi", 2),
                "conditions": ready("Commissioning", "waiting for the ramdisk", false),
            }),
        ),
        (
            "r2-u01",
            "rack2",
            json!({
                "phase": "FailedDeployment", "power": {"state": "Off"},
                "boot": boot("10.77.0.104", "ipxe.efi", 6), "inventory": inv("r2-u01", 32, 256, 960),
                "conditions": ready("ChecksumMismatch",
                    "the image's bytes do not hash to the declared checksum; fix spec.image.checksum", false),
            }),
        ),
    ]
}

async fn token(cp: &ironpool_e2e::ControlPlane, ns: &str, sa: &str) -> String {
    let c = client(cp).await;
    let sas: Api<ServiceAccount> = Api::namespaced(c, ns);
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": sa}})).unwrap();
    sas.create(&PostParams::default(), &account).await.unwrap();
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    sas.create_token_request(sa, &PostParams::default(), &req)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
        .unwrap()
}

/// The address the operator logged for the web view.
fn web_addr(op: &Operator) -> String {
    let deadline = Instant::now() + T;
    loop {
        let log = std::fs::read_to_string(&op.log).unwrap_or_default();
        let found = log
            .lines()
            .find(|l| l.contains("serving the fleet web view"))
            .and_then(|l| l.split("127.0.0.1:").nth(1))
            .map(|rest| {
                let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                format!("127.0.0.1:{port}")
            });
        if let Some(a) = found {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "no web view line in {}:\n{log}",
            op.log.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn setup(ns: &str) {
    let cp = cluster();
    let c = client(cp).await;
    // Another replica holds the Lease for an hour: this operator stays a standby.
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "ironpool-operator"},
        "spec": {"holderIdentity": "the-leader", "leaseDurationSeconds": 3600,
                 "renewTime": "2026-12-07T10:00:00.000000Z"},
    }))
    .unwrap();
    Api::<Lease>::namespaced(c.clone(), ns)
        .create(&PostParams::default(), &lease)
        .await
        .unwrap();
    let subnets: Api<Subnet> = Api::namespaced(c.clone(), ns);
    let subnet: Subnet = serde_json::from_value(json!({
        "apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Subnet", "metadata": {"name": "prov"},
        "spec": {"cidr": "10.77.0.0/24", "gateway": "10.77.0.1", "dnsServers": ["10.77.0.1"],
                 "domain": "lab.internal", "dynamicRange": {"start": "10.77.0.100", "end": "10.77.0.199"},
                 "reservedRanges": [{"start": "10.77.0.1", "end": "10.77.0.9"}], "pxe": true},
    }))
    .unwrap();
    subnets
        .create(&PostParams::default(), &subnet)
        .await
        .unwrap();
    let status = json!({"status": {
        "addresses": {"total": 254, "reserved": 9, "dynamic": 100, "allocated": 2, "free": 143},
        "allocations": [{"address": "10.77.0.20", "deployment": "uefi-1"},
                        {"address": "10.77.0.21", "deployment": "bios-1"}],
        "servedBy": {"agent": "lab-node-1", "since": "2026-12-07T09:58:00Z"},
        "candidateNodes": ["lab-node-1"],
    }});
    subnets
        .patch_status("prov", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let machines: Api<Machine> = Api::namespaced(c.clone(), ns);
    let inventories: Api<MachineInventory> = Api::namespaced(c.clone(), ns);
    for (i, (name, zone, status)) in fleet().into_iter().enumerate() {
        let mut m = machine(name, 10 + i as u8, "lab");
        m.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("topology.kubernetes.io/zone".into(), zone.into());
        let m = create(&machines, &m).await;
        machines
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await
            .unwrap();
        // As the agent writes it: the disks in the MachineInventory, the sizes in status.
        if let Some(bytes) = status["inventory"]["largestDiskBytes"].as_i64() {
            let hardware =
                json!({"disks": [{"name": "vda", "sizeBytes": bytes, "model": "QEMU HARDDISK"}]});
            let object = ironpool_crds::machine::apply_object(
                ns,
                name,
                m.metadata.uid.as_deref(),
                &serde_json::from_value(hardware).unwrap(),
                None,
            );
            inventories
                .patch(
                    name,
                    &PatchParams::apply("ironpool-agent-hardware").force(),
                    &Patch::Apply(object),
                )
                .await
                .unwrap();
        }
        let event: Event = serde_json::from_value(json!({
            "metadata": {"name": format!("{name}.commissioned")},
            "involvedObject": {"apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Machine",
                               "name": name, "namespace": ns, "uid": m.metadata.uid},
            "reason": "Commissioned", "message": "inventory: 2 cores, 1 GiB, 1 disk",
            "type": "Normal", "firstTimestamp": "2026-12-07T10:00:40Z",
            "lastTimestamp": "2026-12-07T10:00:40Z", "count": 1,
            "source": {"component": "ironpool-operator"},
        }))
        .unwrap();
        Api::<Event>::namespaced(c.clone(), ns)
            .create(&PostParams::default(), &event)
            .await
            .unwrap();
    }
    // A user who may list Machines here.
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "fleet-viewer"},
        "rules": [{"apiGroups": ["metal.ironpool.dev"], "resources": ["machines", "subnets"],
                   "verbs": ["get", "list", "watch"]}],
    }))
    .unwrap();
    Api::<Role>::namespaced(c.clone(), ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "fleet-viewer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "fleet-viewer"},
        "subjects": [{"kind": "ServiceAccount", "name": "viewer", "namespace": ns}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(c, ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
}

/// Milliseconds from just before Machine `name`'s phase is written as `phase` to the page
/// applying that update (with `cell`, also to its row's phase cell showing it); both clocks
/// are this machine's wall clock.
async fn phase_change_latency(
    browser: &Browser,
    machines: &Api<Machine>,
    ns: &str,
    name: &str,
    phase: &str,
    cell: bool,
) -> f64 {
    let before = browser.eval("return window.ironpool.updates.length", json!([]));
    let sent = epoch_ms();
    machines
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"phase": phase}})),
        )
        .await
        .unwrap();
    let cell = if cell {
        format!(
            "const cell = document.querySelector('#machines tr[data-key=\"{ns}/{name}\"] .phase');
             if (!cell || cell.textContent !== '{phase}') return null;"
        )
    } else {
        String::new()
    };
    let seen = browser.wait_for(
        &format!("{name} -> {phase} in the page"),
        T,
        &format!(
            "const u = window.ironpool.updates.slice({before}).find(u => u.key === '{ns}/{name}' && u.phase === '{phase}');
             {cell}
             return u ? u.at : null"
        ),
    );
    seen.as_f64().unwrap() - sent
}

#[tokio::test]
async fn fleet_view_in_a_real_browser() {
    let cp = cluster();
    let ns = cp.create_namespace("web").await.unwrap();
    setup(&ns).await;
    let viewer = token(cp, &ns, "viewer").await;
    let nobody = token(cp, &ns, "nobody").await;
    let op = Operator::start(cp, &ns, "op-web", &["--web-listen", "127.0.0.1:0"]);
    let addr = web_addr(&op);

    // Refused without a token (401, the login page says how to get one), with a token the
    // apiserver rejects (401), and for a user who may not list Machines here (403).
    let (status, _, body) = http(&addr, "GET", "/", &[], None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("kubectl create token"), "{body}");
    let (status, _, _) = http(&addr, "GET", "/api/stream", &[], None);
    assert_eq!(status, 401);
    let (status, _, _) = http(
        &addr,
        "GET",
        "/api/fleet",
        &[("Authorization", "Bearer not-a-token")],
        None,
    );
    assert_eq!(status, 401);
    let bearer = format!("Bearer {nobody}");
    let (status, _, body) = http(
        &addr,
        "GET",
        "/api/fleet",
        &[("Authorization", &bearer)],
        None,
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains(&format!("system:serviceaccount:{ns}:nobody")),
        "{body}"
    );
    let bearer = format!("Bearer {viewer}");
    let (status, _, body) = http(
        &addr,
        "GET",
        "/api/fleet",
        &[("Authorization", &bearer)],
        None,
    );
    assert_eq!(status, 200, "{body}");
    let fleet_json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        fleet_json["machines"].as_array().unwrap().len(),
        fleet().len(),
        "{body}"
    );

    // The browser: the login page, then the table.
    let browser = Browser::start(&cp.dir().join("chromedriver-web.log"));
    let base = format!("http://{addr}");
    browser.sign_in(&format!("{base}/"), &viewer, T);
    let rows = browser.wait_for(
        "the machine table",
        T,
        "const r = [...document.querySelectorAll('#machines tbody tr')].map(t => t.dataset.key); return r.length ? r : null",
    );
    let want: Vec<String> = {
        let mut v: Vec<String> = fleet()
            .iter()
            .map(|(n, _, _)| format!("{ns}/{n}"))
            .collect();
        v.sort();
        v
    };
    assert_eq!(rows, json!(want));

    // Page load, measured fresh (signed in): navigation start to the table drawn, and to
    // the load event, 5 times.
    let mut table_ms = Vec::new();
    let mut load_ms = Vec::new();
    for _ in 0..5 {
        browser.goto(&format!("{base}/?fresh"));
        let v = browser.wait_for(
            "the table after a reload",
            T,
            "const n = performance.getEntriesByType('navigation')[0];
             return window.ironpool && window.ironpool.firstTable !== null && n.loadEventEnd > 0
               ? [window.ironpool.firstTable, n.loadEventEnd] : null",
        );
        table_ms.push(v[0].as_f64().unwrap());
        load_ms.push(v[1].as_f64().unwrap());
    }
    let text = browser.eval(
        "return document.getElementById('machines').innerText",
        json!([]),
    );
    let text = text.as_str().unwrap();
    for col in [
        "uefi-1",
        "Deploying",
        "bios-1",
        "Deployed",
        "x86_64",
        "1 GiB",
        "1 (4 GiB)",
        "RamdiskCheckIn",
        "OSBooted",
        "FailedDeployment",
        "512 GiB",
    ] {
        assert!(text.contains(col), "table lacks {col:?}:\n{text}");
    }

    // Filters: by phase, label and subnet, in the page.
    browser.eval(
        "const s = document.getElementById('f-label'); s.value = 'topology.kubernetes.io/zone=rack2';
         s.dispatchEvent(new Event('input')); return true",
        json!([]),
    );
    let shown = browser.eval(
        "return [...document.querySelectorAll('#machines tbody tr')].filter(t => !t.hidden).map(t => t.dataset.key)",
        json!([]),
    );
    assert_eq!(
        shown,
        json!([format!("{ns}/r1-u04"), format!("{ns}/r2-u01")])
    );
    browser.goto(&format!("{base}/"));
    browser.wait_for(
        "the table",
        T,
        "return window.ironpool && window.ironpool.firstTable !== null",
    );

    // A phase change appears without a reload: the time from just before the status write
    // to the row's replacement in the page (both clocks are this machine's wall clock).
    let machines: Api<Machine> = Api::namespaced(client(cp).await, &ns);
    let mut latencies = Vec::new();
    for (i, phase) in [
        "Deployed",
        "Releasing",
        "Ready",
        "Allocated",
        "Deploying",
        "Deployed",
        "Deploying",
    ]
    .iter()
    .enumerate()
    {
        let ms = phase_change_latency(&browser, &machines, &ns, "uefi-1", phase, true).await;
        println!("update {i}: uefi-1 -> {phase} in the page after {ms:.1} ms");
        latencies.push(ms);
    }
    // A Subnet changing hands shows in the open table too.
    Api::<Subnet>::namespaced(client(cp).await, &ns)
        .patch_status(
            "prov",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"servedBy": {"agent": "lab-node-2"}}})),
        )
        .await
        .unwrap();
    browser.wait_for(
        "the new Subnet holder in the page",
        T,
        "return document.getElementById('subnets').innerText.includes('lab-node-2')",
    );
    let loads = browser.eval(
        "return performance.getEntriesByType('navigation').length",
        json!([]),
    );
    assert_eq!(loads, json!(1), "the page must not have reloaded");

    browser.save_screenshot("fleet-view.png");

    // The machine page: inventory, deploy progress, the flight recorder, events.
    browser.open_route(&format!("#/m/{ns}/bios-1"));
    let steps = browser.wait_for(
        "the flight recorder timeline",
        T,
        "const l = [...document.querySelectorAll('#timeline li .step')].map(s => s.textContent); return l.length ? l : null",
    );
    assert_eq!(
        steps,
        json!([
            "DHCPOffer",
            "TFTPRead",
            "DHCPAck",
            "ScriptFetched",
            "AssetFetched",
            "RamdiskCheckIn",
            "OSBooted"
        ])
    );
    let page = browser.eval(
        "return document.getElementById('view').innerText",
        json!([]),
    );
    let page = page.as_str().unwrap();
    for part in [
        "Inventory",
        "vda 4 GiB QEMU HARDDISK",
        "Flight recorder",
        "+71.0 s",
        "Commissioned",
        "Conditions",
        "the OS checked in",
    ] {
        assert!(page.contains(part), "machine page lacks {part:?}:\n{page}");
    }
    browser.open_route(&format!("#/m/{ns}/uefi-1"));
    browser.wait_for(
        "deploy progress",
        T,
        "const v = document.getElementById('view').innerText; return v.includes('WritingImage') && v.includes('20 MiB of 32 MiB')",
    );
    browser.save_screenshot("fleet-machine.png");

    // The Subnet page: ranges, static leases, who serves it, the machines on it.
    browser.open_route(&format!("#/s/{ns}/prov"));
    let page = browser.wait_for(
        "the Subnet page",
        T,
        "const v = document.getElementById('view').innerText; return v.includes('Static leases') ? v : null",
    );
    let page = page.as_str().unwrap();
    for part in [
        "10.77.0.100 – 10.77.0.199",
        "10.77.0.20",
        "lab-node-2",
        "lab-node-1",
        "bios-1",
        "143 free",
    ] {
        assert!(page.contains(part), "Subnet page lacks {part:?}:\n{page}");
    }

    // The same with 200 machines: the new ones arrive in the open table without a reload,
    // then page load and update latency again.
    browser.goto(&format!("{base}/"));
    browser.wait_for(
        "the table",
        T,
        "return window.ironpool && window.ironpool.firstTable !== null",
    );
    let bulk = 200 - fleet().len();
    let status = fleet()[2].2.clone();
    futures::stream::iter(0..bulk)
        .for_each_concurrent(16, |i| {
            let (machines, status) = (machines.clone(), status.clone());
            async move {
                let name = format!("bulk-{i:03}");
                let mut m = machine(&name, 0, "bulk");
                m.spec.boot_mac_address = format!("52:54:00:01:{:02x}:{:02x}", i / 256, i % 256);
                create(&machines, &m).await;
                machines
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"status": status})),
                    )
                    .await
                    .unwrap();
            }
        })
        .await;
    browser.wait_for(
        "200 rows in the open table",
        T,
        "return document.querySelectorAll('#machines tbody tr').length === 200",
    );
    let mut big_table_ms = Vec::new();
    for _ in 0..3 {
        browser.goto(&format!("{base}/?big"));
        let v = browser.wait_for(
            "the 200-machine table",
            T,
            "return window.ironpool && window.ironpool.firstTable !== null
               && document.querySelectorAll('#machines tbody tr').length === 200 ? window.ironpool.firstTable : null",
        );
        big_table_ms.push(v.as_f64().unwrap());
    }
    let mut big_latencies = Vec::new();
    for phase in ["Deployed", "Releasing", "Ready"] {
        big_latencies
            .push(phase_change_latency(&browser, &machines, &ns, "bulk-100", phase, false).await);
    }
    println!(
        "fleet view, 200 machines: page load to table drawn median {:.0} ms (runs {:?}); update latency median {:.0} ms (runs {:?})",
        median(big_table_ms.clone()),
        big_table_ms.iter().map(|v| v.round()).collect::<Vec<_>>(),
        median(big_latencies.clone()),
        big_latencies.iter().map(|v| v.round()).collect::<Vec<_>>(),
    );

    println!(
        "fleet view, {} machines: page load to table drawn median {:.0} ms (runs {:?}), load event {:.0} ms; \
         update latency median {:.0} ms, min {:.0}, max {:.0} (runs {:?})",
        fleet().len(),
        median(table_ms.clone()),
        table_ms.iter().map(|v| v.round()).collect::<Vec<_>>(),
        median(load_ms),
        median(latencies.clone()),
        latencies.iter().copied().fold(f64::MAX, f64::min),
        latencies.iter().copied().fold(0.0, f64::max),
        latencies.iter().map(|v| v.round()).collect::<Vec<_>>(),
    );
    drop(browser);
    drop(op);
}
