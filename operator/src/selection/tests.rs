//! Tests of machine selection.

use std::collections::BTreeMap;

use ironpool_crds::deployment::{HardwareConstraints, MachineSelector};
use ironpool_crds::machine::{
    Architecture, Cpu, Disk, Hardware, InventorySummary, MachinePhase, MachineSpec, MachineStatus,
};
use ironpool_crds::{LocalObjectRef, Machine, RootDeviceHints};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

use super::*;

fn machine(
    name: &str,
    phase: MachinePhase,
    pool: &str,
    cores: i32,
    mem_gib: i64,
    disk_gib: i64,
) -> Machine {
    let mut m = Machine::new(
        name,
        MachineSpec {
            bmc: None,
            architecture: Architecture::X86_64,
            ..MachineSpec::for_boot_mac("52:54:00:00:00:01")
        },
    );
    m.metadata.labels = Some(BTreeMap::from([("pool".to_string(), pool.to_string())]));
    m.status = Some(MachineStatus {
        phase: Some(phase),
        inventory: Some(InventorySummary::of(
            name,
            &Hardware {
                cpu: Some(Cpu {
                    cores: Some(cores),
                    ..Default::default()
                }),
                memory_bytes: Some(mem_gib << 30),
                disks: vec![Disk {
                    name: "vda".into(),
                    size_bytes: disk_gib << 30,
                    ..Default::default()
                }],
                ..Default::default()
            },
        )),
        ..Default::default()
    });
    m
}

fn sel(pool: Option<&str>, hw: Option<HardwareConstraints>) -> MachineSelector {
    MachineSelector {
        match_labels: pool
            .map(|p| BTreeMap::from([("pool".to_string(), p.to_string())]))
            .unwrap_or_default(),
        match_expressions: vec![],
        hardware: hw,
    }
}

fn names(r: Result<Vec<&Machine>, String>) -> Result<Vec<String>, String> {
    r.map(|v| {
        v.iter()
            .map(|m| m.metadata.name.clone().unwrap_or_default())
            .collect()
    })
}

#[test]
fn quantities_parse() {
    for (q, want) in [
        ("64Gi", Some(64i64 << 30)),
        ("1Ki", Some(1024)),
        ("500G", Some(500_000_000_000)),
        ("1.5Gi", Some(3 << 29)),
        ("7", Some(7)),
        ("lots", None),
        ("5Xi", None),
        ("", None),
    ] {
        assert_eq!(parse_quantity(q), want, "{q}");
    }
}

#[test]
fn selection_filters_and_explains() {
    let fleet = [
        machine("a", MachinePhase::Ready, "gpu", 16, 64, 500),
        machine("b", MachinePhase::Ready, "gpu", 64, 512, 2000),
        machine("c", MachinePhase::Ready, "web", 8, 32, 200),
        machine("d", MachinePhase::Deployed, "gpu", 64, 512, 2000),
        machine("e", MachinePhase::Commissioning, "gpu", 64, 512, 2000),
    ];
    let all: Vec<&Machine> = fleet.iter().collect();
    let hw = |cores: Option<i32>, mem: Option<&str>, disk: Option<&str>| HardwareConstraints {
        architecture: None,
        min_cores: cores,
        min_memory: mem.map(Into::into),
        min_disk: disk.map(Into::into),
    };
    type Case = (
        &'static str,
        MachineSelector,
        Result<Vec<&'static str>, &'static str>,
    );
    let cases: Vec<Case> = vec![
        ("labels only", sel(Some("gpu"), None), Ok(vec!["a", "b"])),
        (
            "no constraint takes every free machine",
            sel(None, None),
            Ok(vec!["a", "b", "c"]),
        ),
        (
            "cores",
            sel(Some("gpu"), Some(hw(Some(32), None, None))),
            Ok(vec!["b"]),
        ),
        (
            "memory",
            sel(None, Some(hw(None, Some("100Gi"), None))),
            Ok(vec!["b"]),
        ),
        (
            "disk",
            sel(None, Some(hw(None, None, Some("1Ti")))),
            Ok(vec!["b"]),
        ),
        (
            "too much memory",
            sel(None, Some(hw(None, Some("1Ti"), None))),
            Err("0 of 3 Ready machines have >= 1Ti memory"),
        ),
        (
            "unknown pool",
            sel(Some("db"), None),
            Err("0 of 3 Ready machines have labels pool=db"),
        ),
        (
            "cores after labels",
            sel(Some("web"), Some(hw(Some(16), None, None))),
            Err("0 of 1 Ready machine have >= 16 cores"),
        ),
        (
            "wrong arch",
            sel(
                None,
                Some(HardwareConstraints {
                    architecture: Some(Architecture::Aarch64),
                    ..Default::default()
                }),
            ),
            Err("0 of 3 Ready machines are aarch64"),
        ),
    ];
    for (name, s, want) in cases {
        let got = names(candidates(&s, &all));
        let want = want
            .map(|v| v.iter().map(|s| s.to_string()).collect())
            .map_err(str::to_string);
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn expressions_match_like_kubernetes() {
    let m = machine("a", MachinePhase::Ready, "gpu", 1, 1, 1);
    let labels = m.metadata.labels.clone().unwrap_or_default();
    let e = |op: &str, values: &[&str]| LabelSelectorRequirement {
        key: "pool".into(),
        operator: op.into(),
        values: Some(values.iter().map(|s| s.to_string()).collect()),
    };
    assert!(matches_expression(&labels, &e("In", &["gpu", "web"])));
    assert!(!matches_expression(&labels, &e("NotIn", &["gpu"])));
    assert!(matches_expression(&labels, &e("Exists", &[])));
    assert!(!matches_expression(&labels, &e("DoesNotExist", &[])));
    assert!(!matches_expression(&labels, &e("Bogus", &[])));
}

#[test]
fn held_or_allocated_machines_are_not_free() {
    let mut held = machine("a", MachinePhase::Ready, "gpu", 1, 1, 1);
    held.spec.maintenance = Some(true);
    let mut taken = machine("b", MachinePhase::Ready, "gpu", 1, 1, 1);
    if let Some(s) = taken.status.as_mut() {
        s.deployment_ref = Some(LocalObjectRef::new("x"));
    }
    let busy = machine("c", MachinePhase::Deploying, "gpu", 1, 1, 1);
    let got = candidates(&sel(None, None), &[&held, &taken, &busy]);
    assert_eq!(
        got.err().as_deref(),
        Some("no Ready machine is free (3 machines: 1 Deploying, 2 Ready)")
    );
    assert!(
        candidates(&sel(None, None), &[])
            .unwrap_err()
            .contains("no Machines exist")
    );
}

#[test]
fn spread_rotates_deterministically() {
    let fleet: Vec<Machine> = (0..10)
        .map(|i| machine(&format!("m{i}"), MachinePhase::Ready, "p", 1, 1, 1))
        .collect();
    let all: Vec<&Machine> = fleet.iter().collect();
    let first = |k: &str| spread(all.clone(), k)[0].metadata.name.clone();
    assert_eq!(first("dep-1"), first("dep-1"));
    let distinct: std::collections::BTreeSet<_> =
        (0..50).map(|i| first(&format!("dep-{i}"))).collect();
    assert!(distinct.len() >= 5, "{distinct:?}");
    assert_eq!(spread(all.clone(), "x").len(), 10);
}

#[test]
fn recently_remediated_servers_go_last() {
    let now: Timestamp = "2026-12-06T10:00:00Z".parse().unwrap();
    let mut a = machine("a", MachinePhase::Ready, "p", 8, 32, 100);
    let b = machine("b", MachinePhase::Ready, "p", 8, 32, 100);
    let mut c = machine("c", MachinePhase::Ready, "p", 8, 32, 100);
    a.metadata.annotations = Some(BTreeMap::from([(
        REMEDIATED_ANNOTATION.to_string(),
        "2026-12-06T09:30:00Z lab/c1-md-0-x: Node NotReady".to_string(),
    )]));
    c.metadata.annotations = Some(BTreeMap::from([(
        REMEDIATED_ANNOTATION.to_string(),
        "2026-12-06T08:00:00Z lab/c1-md-0-y: Node NotReady".to_string(),
    )]));
    let names = |v: Vec<&Machine>| v.iter().map(|m| m.name_any()).collect::<Vec<_>>();
    assert_eq!(
        names(recently_remediated_last(vec![&a, &b, &c], now)),
        ["b", "c", "a"],
        "a (30 minutes ago) last; c (2 hours ago) is forgiven"
    );
    assert_eq!(
        names(recently_remediated_last(vec![&a], now)),
        ["a"],
        "still used when alone"
    );
}

#[test]
fn root_device_hints_apply_deployment_first_and_say_why_a_disk_does_not_fit() {
    let mut own = machine("own", MachinePhase::Ready, "gpu", 1, 1, 100);
    let plain = machine("plain", MachinePhase::Ready, "gpu", 1, 1, 100);
    let nvme = RootDeviceHints {
        model: Some("NVMe".into()),
        ..Default::default()
    };
    own.spec.root_device_hints = Some(nvme.clone());
    let want = |gb: i64| RootDeviceHints {
        min_size_gigabytes: Some(gb),
        ..Default::default()
    };
    // The Deployment's hints override the Machine's; without either there is no check.
    assert_eq!(hints_for(&own, None), Some(&nvme));
    assert_eq!(hints_for(&own, Some(&want(5))), Some(&want(5)));
    assert_eq!(hints_for(&plain, None), None);
    // Candidates are chosen by the selector alone: the hints need the MachineInventory.
    let all = [&own, &plain];
    assert_eq!(
        names(candidates(&sel(None, None), &all)),
        Ok(vec!["own".to_string(), "plain".to_string()])
    );
    // The summary rules out a disk that is too small without reading the inventory...
    assert_eq!(
        summary_disk_mismatch(&plain, &want(500)).as_deref(),
        Some("the largest of its 1 disks has 107374182400 bytes, below 500 GB")
    );
    assert_eq!(summary_disk_mismatch(&plain, &want(50)), None);
    // ...but not a model: that takes the disks themselves.
    assert_eq!(summary_disk_mismatch(&plain, &nvme), None);
    let disks = [
        Disk {
            name: "sda".into(),
            size_bytes: 480 << 30,
            model: Some("Micron 5300".into()),
            ..Default::default()
        },
        Disk {
            name: "nvme0n1".into(),
            size_bytes: 10 << 30,
            model: Some("Samsung NVMe PM9A3".into()),
            ..Default::default()
        },
    ];
    assert_eq!(root_disk_mismatch(&disks, &nvme), None, "nvme0n1 fits");
    assert_eq!(root_disk_mismatch(&disks, &want(100)), None, "sda fits");
    assert_eq!(
        root_disk_mismatch(&disks, &want(1000)).as_deref(),
        Some(
            "sda: 515396075520 bytes is below 1000 GB, nvme0n1: 10737418240 bytes is below 1000 GB"
        )
    );
    // A machine whose inventory lists no disks cannot take an image.
    assert_eq!(
        root_disk_mismatch(&[], &want(1)).as_deref(),
        Some("commissioning found no disks")
    );
    let mut bare = machine("bare", MachinePhase::Ready, "gpu", 1, 1, 1);
    bare.status.as_mut().unwrap().inventory =
        Some(InventorySummary::of("bare", &Hardware::default()));
    assert_eq!(
        summary_disk_mismatch(&bare, &want(1)).as_deref(),
        Some("commissioning found no disks")
    );
    // When all were rejected, the sentence counts them, shows three and says what to do.
    let rejected: Vec<String> = (0..5).map(|i| format!("m{i}: sda: too small")).collect();
    let err = no_matching_disk(5, &rejected);
    assert!(
        err.starts_with("0 of 5 Ready machines have a disk matching the root-device hints (m0: sda: too small; m1"),
        "{err}"
    );
    assert!(
        err.contains("; 2 more); 5 rejected for their disks: correct spec.storage.rootDeviceHints"),
        "{err}"
    );
}

#[test]
fn disk_verdicts_are_kept_per_machine_summary_and_hints_for_a_while() {
    let mut m = machine("m1", MachinePhase::Ready, "gpu", 1, 1, 100);
    let nvme = RootDeviceHints {
        model: Some("NVMe".into()),
        ..Default::default()
    };
    assert_eq!(DiskVerdicts::key(&m, &nvme), None, "no UID: not remembered");
    m.metadata.uid = Some("uid-1".into());
    let key = DiskVerdicts::key(&m, &nvme).unwrap();
    let other_hints = RootDeviceHints {
        model: Some("PM9A3".into()),
        ..Default::default()
    };
    assert_ne!(DiskVerdicts::key(&m, &other_hints).unwrap(), key);
    let mut recommissioned = m.clone();
    recommissioned
        .status
        .as_mut()
        .unwrap()
        .inventory
        .as_mut()
        .unwrap()
        .disk_count = 2;
    assert_ne!(DiskVerdicts::key(&recommissioned, &nvme).unwrap(), key);

    let verdicts = DiskVerdicts::default();
    let t0 = Instant::now();
    assert_eq!(verdicts.get(&key, t0), None);
    verdicts.put(key.clone(), Some("vda: model None lacks 'NVMe'".into()), t0);
    assert_eq!(
        verdicts.get(&key, t0 + Duration::from_secs(10)),
        Some(Some("vda: model None lacks 'NVMe'".into()))
    );
    assert_eq!(verdicts.get(&key, t0 + VERDICT_TTL), None, "expired");
    verdicts.put(key.clone(), None, t0);
    assert_eq!(
        verdicts.get(&key, t0),
        Some(None),
        "a fit is remembered too"
    );
}
