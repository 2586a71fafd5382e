//! The API against a real kube-apiserver: the CRDs install, `kubectl explain` reads well,
//! invalid manifests are rejected with the field and a message that says what to fix, and
//! the examples apply cleanly and stay stable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use ironpool_e2e::ControlPlane;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The shared control plane of this test binary, with the CRDs installed and Established.
fn cluster() -> &'static ControlPlane {
    static READY: OnceLock<&'static ControlPlane> = OnceLock::new();
    READY.get_or_init(|| {
        let cp = ControlPlane::shared().expect("control plane starts");
        let crds = repo().join("crds/yaml");
        run_ok(
            cp.kubectl()
                .args(["apply", "--server-side", "-f"])
                .arg(&crds),
        );
        run_ok(
            cp.kubectl()
                .args(["wait", "--for=condition=Established", "--timeout=60s", "-f"])
                .arg(&crds),
        );
        cp
    })
}

fn run(cmd: &mut Command, stdin: Option<&str>) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl starts");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd, None);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn namespace(cp: &ControlPlane, prefix: &str) -> String {
    let name = format!(
        "{prefix}-{}",
        std::process::id() as u64 * 1000 + rand_suffix()
    );
    run_ok(cp.kubectl().args(["create", "namespace", &name]));
    name
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// `kubectl apply --server-side --validate=strict` of one manifest in `ns`.
fn apply(cp: &ControlPlane, ns: &str, yaml: &str) -> Output {
    run(
        cp.kubectl().args([
            "apply",
            "--server-side",
            "--validate=strict",
            "-n",
            ns,
            "-f",
            "-",
        ]),
        Some(yaml),
    )
}

/// `kubectl explain`, retried for up to 30 s: the apiserver publishes a new CRD's schema a
/// moment after the CRD is Established, and kubectl may read an older document until then.
fn explain(cp: &ControlPlane, what: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = run(cp.kubectl().args(["explain", what]), None);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "`kubectl explain {what}` kept failing: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

#[test]
fn crds_are_established_and_explained() {
    let cp = cluster();
    let names = run_ok(cp.kubectl().args([
        "api-resources",
        "--api-group=metal.ironpool.dev",
        "-o",
        "wide",
    ]));
    for (kind, short) in [
        ("Machine", "bmm"),
        ("MachineInventory", "bmi"),
        ("Subnet", "bms"),
        ("Deployment", "bmd"),
    ] {
        let line = names
            .lines()
            .find(|l| l.split_whitespace().any(|w| w == kind))
            .unwrap_or_else(|| panic!("{kind} missing: {names}"));
        assert!(line.contains(short) && line.contains("ironpool"), "{line}");
    }
    let bmc = explain(cp, "bmm.spec.bmc");
    for text in [
        "baseboard management controller",
        "redfish+https://",
        "credentialsSecretRef",
        "insecureSkipVerify",
    ] {
        assert!(
            bmc.contains(text),
            "`kubectl explain bmm.spec.bmc` lacks {text:?}:\n{bmc}"
        );
    }
    let progress = explain(cp, "bmd.status.progress");
    for text in [
        "Progress of the current step",
        "bytesWritten",
        "percent",
        "summary",
    ] {
        assert!(
            progress.contains(text),
            "`kubectl explain bmd.status.progress` lacks {text:?}:\n{progress}"
        );
    }
}

#[test]
fn printer_columns_show_status() {
    let cp = cluster();
    let ns = namespace(cp, "columns");
    let out = apply(cp, &ns, MACHINE);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = r#"{"status":{"phase":"Ready","power":{"state":"Off"},
        "inventory":{"inventoryRef":{"name":"m"},"cores":16,"memory":"64Gi","memoryBytes":68719476736,"diskCount":3},
        "boot":[{"step":"DHCPOffer","at":"2026-01-01T00:00:00Z"},{"step":"RamdiskCheckIn","at":"2026-01-01T00:00:09Z"}]}}"#;
    run_ok(cp.kubectl().args([
        "patch",
        "bmm",
        "m",
        "-n",
        &ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        status,
    ]));
    let table = run_ok(cp.kubectl().args(["get", "bmm", "-n", &ns, "-o", "wide"]));
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "PHASE",
            "POWER",
            "ARCH",
            "CORES",
            "MEMORY",
            "BMC",
            "AGE",
            "MAC",
            "DISKS",
            "DEPLOYMENT",
            "LAST-BOOT-STEP",
            "REASON"
        ]
    );
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    for value in [
        "m",
        "Ready",
        "Off",
        "x86_64",
        "16",
        "64Gi",
        "redfish+http://127.0.0.1:8000",
        "52:54:00:00:00:01",
        "3",
        "RamdiskCheckIn",
    ] {
        assert!(row.contains(&value), "{value} missing from {row:?}");
    }
}

const SUBNET: &str = r#"
apiVersion: metal.ironpool.dev/v1alpha1
kind: Subnet
metadata: {name: net}
spec:
  cidr: 10.0.1.0/24
  gateway: 10.0.1.1
  dynamicRange: {start: 10.0.1.100, end: 10.0.1.200}
  reservedRanges: [{start: 10.0.1.1, end: 10.0.1.20}]
"#;

const MACHINE: &str = r#"
apiVersion: metal.ironpool.dev/v1alpha1
kind: Machine
metadata: {name: m}
spec:
  bootMACAddress: "52:54:00:00:00:01"
  bmc: {address: "redfish+http://127.0.0.1:8000", credentialsSecretRef: {name: bmc}}
"#;

const DEPLOYMENT: &str = r#"
apiVersion: metal.ironpool.dev/v1alpha1
kind: Deployment
metadata: {name: d}
spec:
  machineSelector: {matchLabels: {pool: a}}
  image:
    url: http://images.example.internal/os.raw
    checksum: sha256:0000000000000000000000000000000000000000000000000000000000000000
    format: raw
"#;

const IRONPOOL_MACHINE: &str = r#"
apiVersion: infrastructure.cluster.x-k8s.io/v1beta1
kind: IronpoolMachine
metadata: {name: m}
spec:
  providerID: ironpool://lab/r1-u07
  hostSelector: {matchLabels: {ironpool.dev/pool: worker}}
  image:
    url: http://images.example.internal/os.qcow2
    checksum: sha256:0000000000000000000000000000000000000000000000000000000000000000
    format: qcow2
"#;

const IRONPOOL_MACHINE_TEMPLATE: &str = r#"
apiVersion: infrastructure.cluster.x-k8s.io/v1beta1
kind: IronpoolMachineTemplate
metadata: {name: t}
spec:
  template:
    spec:
      image:
        url: http://images.example.internal/os.qcow2
        checksum: sha256:0000000000000000000000000000000000000000000000000000000000000000
        format: qcow2
"#;

const IRONPOOL_CLUSTER: &str = r#"
apiVersion: infrastructure.cluster.x-k8s.io/v1beta1
kind: IronpoolCluster
metadata: {name: c}
spec:
  controlPlaneEndpoint: {host: 10.20.0.5, port: 6443}
"#;

/// An invalid manifest: `base` with `edit` applied (a YAML path -> value replacement done
/// on the parsed document), and what the apiserver must say.
struct Case {
    name: &'static str,
    base: &'static str,
    /// Applied first and accepted: for transition rules (immutable fields).
    create_first: bool,
    edits: &'static [(&'static str, &'static str)],
    field: &'static str,
    message: &'static str,
}

const fn case(
    name: &'static str,
    base: &'static str,
    edits: &'static [(&'static str, &'static str)],
    field: &'static str,
    message: &'static str,
) -> Case {
    Case {
        name,
        base,
        create_first: false,
        edits,
        field,
        message,
    }
}

const fn update(
    name: &'static str,
    base: &'static str,
    edits: &'static [(&'static str, &'static str)],
    field: &'static str,
    message: &'static str,
) -> Case {
    Case {
        name,
        base,
        create_first: true,
        edits,
        field,
        message,
    }
}

const CASES: &[Case] = &[
    // Subnet
    case(
        "cidr syntax",
        SUBNET,
        &[("spec.cidr", "10.0.1.0/33")],
        "spec.cidr",
        "is not an IPv4 network in CIDR notation",
    ),
    case(
        "cidr not IPv4",
        SUBNET,
        &[("spec.cidr", "fd00::/64")],
        "spec.cidr",
        "is not an IPv4 network",
    ),
    case(
        "cidr host bits",
        SUBNET,
        &[("spec.cidr", "10.0.1.5/24")],
        "spec.cidr",
        "has host bits set",
    ),
    case(
        "gateway outside cidr",
        SUBNET,
        &[("spec.gateway", "10.0.2.1")],
        "spec.gateway",
        "gateway 10.0.2.1 lies outside cidr 10.0.1.0/24",
    ),
    case(
        "gateway not an address",
        SUBNET,
        &[("spec.gateway", "10.0.1.x")],
        "spec.gateway",
        "is not an IPv4 address",
    ),
    case(
        "dynamic range outside cidr",
        SUBNET,
        &[("spec.dynamicRange.end", "10.0.2.5")],
        "spec.dynamicRange",
        "dynamicRange 10.0.1.100-10.0.2.5 lies outside cidr 10.0.1.0/24",
    ),
    case(
        "reversed range",
        SUBNET,
        &[("spec.dynamicRange.start", "10.0.1.250")],
        "spec.dynamicRange",
        "range start 10.0.1.250 comes after its end 10.0.1.200; swap them",
    ),
    case(
        "range start not an address",
        SUBNET,
        &[("spec.dynamicRange.start", "10.0.1")],
        "spec.dynamicRange.start",
        "is not an IPv4 address",
    ),
    case(
        "reserved range outside cidr",
        SUBNET,
        &[("spec.reservedRanges[0].end", "10.0.9.20")],
        "spec.reservedRanges",
        "every reservedRanges entry must lie inside cidr 10.0.1.0/24",
    ),
    case(
        "dynamic overlaps reserved",
        SUBNET,
        &[("spec.dynamicRange.start", "10.0.1.10")],
        "spec.dynamicRange",
        "overlaps a reservedRanges entry",
    ),
    case(
        "gateway inside dynamic range",
        SUBNET,
        &[("spec.gateway", "10.0.1.150")],
        "spec.gateway",
        "lies inside dynamicRange",
    ),
    case(
        "dns server not IPv4",
        SUBNET,
        &[("spec.dnsServers", "[10.0.1.2, dns.example]")],
        "spec.dnsServers",
        "must be an IPv4 address",
    ),
    case(
        "lease time too short",
        SUBNET,
        &[("spec.leaseTime", "10s")],
        "spec.leaseTime",
        "between 1m and 8760h",
    ),
    case(
        "lease time not a duration",
        SUBNET,
        &[("spec.leaseTime", "forever")],
        "spec.leaseTime",
        "between 1m and 8760h",
    ),
    case(
        "vlan out of range",
        SUBNET,
        &[("spec.vlan", "5000")],
        "spec.vlan",
        "less than or equal to 4094",
    ),
    case(
        "domain not a DNS name",
        SUBNET,
        &[("spec.domain", "Rack_1.example")],
        "spec.domain",
        "lower-case DNS name",
    ),
    case(
        "cidr missing",
        SUBNET,
        &[("spec.cidr", "~")],
        "spec.cidr",
        "Required value",
    ),
    update(
        "cidr changed",
        SUBNET,
        &[
            ("spec.cidr", "10.0.2.0/24"),
            ("spec.gateway", "10.0.2.1"),
            ("spec.dynamicRange", "{start: 10.0.2.100, end: 10.0.2.200}"),
            ("spec.reservedRanges", "[]"),
        ],
        "spec.cidr",
        "cidr is immutable",
    ),
    // Machine
    case(
        "bad MAC",
        MACHINE,
        &[("spec.bootMACAddress", "52:54:00:00:00")],
        "spec.bootMACAddress",
        "is not a MAC address",
    ),
    case(
        "MAC with dashes",
        MACHINE,
        &[("spec.bootMACAddress", "52-54-00-00-00-01")],
        "spec.bootMACAddress",
        "six colon-separated hex bytes",
    ),
    case(
        "unsupported BMC scheme",
        MACHINE,
        &[("spec.bmc.address", "https://10.30.0.7")],
        "spec.bmc.address",
        "must start with redfish://, redfish+https://, redfish+http:// or ipmi://",
    ),
    case(
        "BMC without host",
        MACHINE,
        &[("spec.bmc.address", "redfish://")],
        "spec.bmc.address",
        "followed by the BMC host",
    ),
    case(
        "ipmi with a path",
        MACHINE,
        &[("spec.bmc.address", "ipmi://10.30.0.8/Systems/1")],
        "spec.bmc.address",
        "takes only a host and optional port",
    ),
    case(
        "missing credentials ref",
        MACHINE,
        &[("spec.bmc.credentialsSecretRef", "~")],
        "spec.bmc.credentialsSecretRef",
        "Required value",
    ),
    case(
        "empty credentials ref",
        MACHINE,
        &[("spec.bmc.credentialsSecretRef.name", "''")],
        "spec.bmc.credentialsSecretRef.name",
        "at least 1 chars long",
    ),
    case(
        "unknown boot mode",
        MACHINE,
        &[("spec.bootMode", "EFI")],
        "spec.bootMode",
        "Unsupported value: \"EFI\"",
    ),
    case(
        "unknown architecture",
        MACHINE,
        &[("spec.architecture", "riscv64")],
        "spec.architecture",
        "Unsupported value",
    ),
    case(
        "zero disk size hint",
        MACHINE,
        &[("spec.rootDeviceHints", "{minSizeGigabytes: 0}")],
        "spec.rootDeviceHints.minSizeGigabytes",
        "must be at least 1",
    ),
    update(
        "MAC changed",
        MACHINE,
        &[("spec.bootMACAddress", "52:54:00:00:00:02")],
        "spec.bootMACAddress",
        "bootMACAddress is immutable",
    ),
    case(
        "power not On or Off",
        MACHINE,
        &[("spec.power", "Sideways")],
        "spec.power",
        r#"supported values: "On", "Off""#,
    ),
    case(
        "empty power-cycle request",
        MACHINE,
        &[("spec.powerCycleRequest", "''")],
        "spec.powerCycleRequest",
        "should be at least 1 chars long",
    ),
    case(
        "rescue key is not a public key",
        MACHINE,
        &[(
            "spec.rescue.sshAuthorizedKeys",
            "['-----BEGIN OPENSSH PRIVATE KEY-----']",
        )],
        "spec.rescue.sshAuthorizedKeys",
        "must be one public key line such as 'ssh-ed25519 AAAAC3Nz... alice@laptop'",
    ),
    case(
        "rescue without keys",
        MACHINE,
        &[("spec.rescue.sshAuthorizedKeys", "[]")],
        "spec.rescue.sshAuthorizedKeys",
        "should have at least 1 items",
    ),
    case(
        "unknown field (server-side apply)",
        MACHINE,
        &[("spec.bmcAddress", "ipmi://10.0.0.1")],
        ".spec.bmcAddress",
        "field not declared in schema",
    ),
    // Deployment
    case(
        "selector and ref",
        DEPLOYMENT,
        &[("spec.machineRef", "{name: m}")],
        "spec",
        "set exactly one of machineSelector",
    ),
    case(
        "neither selector nor ref",
        DEPLOYMENT,
        &[("spec.machineSelector", "~")],
        "spec",
        "set exactly one of machineSelector",
    ),
    case(
        "zero cores",
        DEPLOYMENT,
        &[("spec.machineSelector.hardware", "{minCores: 0}")],
        "spec.machineSelector.hardware.minCores",
        "minCores must be at least 1",
    ),
    case(
        "negative cores",
        DEPLOYMENT,
        &[("spec.machineSelector.hardware", "{minCores: -4}")],
        "spec.machineSelector.hardware.minCores",
        "minCores must be at least 1",
    ),
    case(
        "zero memory",
        DEPLOYMENT,
        &[("spec.machineSelector.hardware", "{minMemory: '0'}")],
        "spec.machineSelector.hardware.minMemory",
        "must be a positive quantity",
    ),
    case(
        "negative disk",
        DEPLOYMENT,
        &[("spec.machineSelector.hardware", "{minDisk: -200Gi}")],
        "spec.machineSelector.hardware.minDisk",
        "must be a positive quantity",
    ),
    case(
        "memory not a quantity",
        DEPLOYMENT,
        &[("spec.machineSelector.hardware", "{minMemory: lots}")],
        "spec.machineSelector.hardware.minMemory",
        "minMemory lots must be a positive quantity such as 256Gi",
    ),
    case(
        "image URL scheme",
        DEPLOYMENT,
        &[("spec.image.url", "ftp://images.example.internal/os.raw")],
        "spec.image.url",
        "must be an absolute http:// or https:// URL",
    ),
    case(
        "image URL without checksum",
        DEPLOYMENT,
        &[("spec.image.checksum", "~")],
        "spec.image.checksum",
        "image.checksum is required with image.url",
    ),
    case(
        "image checksum algorithm",
        DEPLOYMENT,
        &[(
            "spec.image.checksum",
            "md5:0123456789abcdef0123456789abcdef",
        )],
        "spec.image.checksum",
        "sha256:<64 lower-case hex digits>",
    ),
    case(
        "image format missing",
        DEPLOYMENT,
        &[("spec.image.format", "~")],
        "spec.image.format",
        "image.format is required with image.url",
    ),
    case(
        "image format unknown",
        DEPLOYMENT,
        &[("spec.image.format", "vmdk")],
        "spec.image.format",
        "Unsupported value: \"vmdk\"",
    ),
    case(
        "image URL and OCI",
        DEPLOYMENT,
        &[("spec.image.oci", "registry.example/os:1")],
        "spec.image",
        "set exactly one of image.url",
    ),
    case(
        "hostname not a DNS label",
        DEPLOYMENT,
        &[("spec.hostname", "Web_1")],
        "spec.hostname",
        "hostname must be a DNS label",
    ),
    case(
        "erase policy unknown",
        DEPLOYMENT,
        &[("spec.erase", "Shred")],
        "spec.erase",
        "Unsupported value: \"Shred\"",
    ),
    case(
        "user data key not a Secret key",
        DEPLOYMENT,
        &[("spec.userDataSecretRef", "{name: ud, key: 'user data'}")],
        "spec.userDataSecretRef.key",
        "key must be a Secret key",
    ),
    // Cluster API kinds
    case(
        "machine template without image",
        IRONPOOL_MACHINE_TEMPLATE,
        &[("spec.template.spec.image", "~")],
        "spec.template.spec.image",
        "Required value",
    ),
    case(
        "machine template sets providerID",
        IRONPOOL_MACHINE_TEMPLATE,
        &[("spec.template.spec.providerID", "ironpool://lab/r1")],
        "spec.template.spec",
        "a template must not set providerID",
    ),
    case(
        "providerID of another provider",
        IRONPOOL_MACHINE,
        &[("spec.providerID", "metal3://lab/r1")],
        "spec.providerID",
        "providerID must be ironpool://<namespace>/<machine>",
    ),
    update(
        "providerID changed",
        IRONPOOL_MACHINE,
        &[("spec.providerID", "ironpool://lab/r2-u01")],
        "spec.providerID",
        "spec.providerID is set by Ironpool once a server is bound and cannot change",
    ),
    case(
        "machine image checksum",
        IRONPOOL_MACHINE,
        &[("spec.image.checksum", "md5:abc")],
        "spec.image.checksum",
        "image.checksum must be sha256:",
    ),
    case(
        "host selector memory",
        IRONPOOL_MACHINE,
        &[("spec.hostSelector.hardware", "{minMemory: lots}")],
        "spec.hostSelector.hardware.minMemory",
        "must be a positive quantity",
    ),
    case(
        "endpoint port out of range",
        IRONPOOL_CLUSTER,
        &[("spec.controlPlaneEndpoint.port", "70000")],
        "spec.controlPlaneEndpoint.port",
        "less than or equal to 65535",
    ),
    case(
        "failure domain label",
        IRONPOOL_CLUSTER,
        &[("spec.failureDomainLabel", "'not a label!'")],
        "spec.failureDomainLabel",
        "failureDomainLabel must be a label key",
    ),
];

/// Applies `edits` to a YAML document: each path (dots, `[i]` indexes) is set to the
/// YAML value, or removed when the value is `~`.
fn edit(base: &str, edits: &[(&str, &str)]) -> String {
    let mut doc: serde_json::Value = serde_saphyr::from_str(base).unwrap();
    for (path, value) in edits {
        let keys: Vec<&str> = path.split('.').collect();
        let mut node = &mut doc;
        for key in &keys[..keys.len() - 1] {
            node = step(node, key);
        }
        let last = keys[keys.len() - 1];
        if *value == "~" {
            node.as_object_mut().unwrap().remove(last);
        } else {
            let parsed: serde_json::Value = serde_saphyr::from_str(value).unwrap();
            match last.split_once('[') {
                Some((k, idx)) => {
                    let i: usize = idx.trim_end_matches(']').parse().unwrap();
                    node[k][i] = parsed;
                }
                None => node[last] = parsed,
            }
        }
    }
    serde_json::to_string(&doc).unwrap()
}

fn step<'a>(node: &'a mut serde_json::Value, key: &str) -> &'a mut serde_json::Value {
    match key.split_once('[') {
        Some((k, idx)) => &mut node[k][idx.trim_end_matches(']').parse::<usize>().unwrap()],
        None => {
            if node.get(key).is_none() {
                node[key] = serde_json::json!({});
            }
            &mut node[key]
        }
    }
}

#[test]
fn invalid_manifests_are_rejected_with_field_and_message() {
    let cp = cluster();
    assert!(CASES.len() >= 25);
    let mut failures = Vec::new();
    for (i, c) in CASES.iter().enumerate() {
        let ns = namespace(cp, &format!("invalid-{i}"));
        if c.create_first {
            let out = apply(cp, &ns, c.base);
            assert!(
                out.status.success(),
                "{}: base rejected: {}",
                c.name,
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            // The untouched base must be valid, so each case fails for its own reason.
            let dry = run(
                cp.kubectl().args([
                    "apply",
                    "--server-side",
                    "--dry-run=server",
                    "--validate=strict",
                    "-n",
                    &ns,
                    "-f",
                    "-",
                ]),
                Some(c.base),
            );
            assert!(
                dry.status.success(),
                "{}: base rejected: {}",
                c.name,
                String::from_utf8_lossy(&dry.stderr)
            );
        }
        let out = apply(cp, &ns, &edit(c.base, c.edits));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let field_ok = c.field.is_empty() || stderr.contains(&format!("{}: ", c.field));
        if out.status.success() || !field_ok || !stderr.contains(c.message) {
            failures.push(format!(
                "{}: expected rejection at `{}` saying {:?}; kubectl said: {}",
                c.name,
                c.field,
                c.message,
                if out.status.success() {
                    "accepted".into()
                } else {
                    stderr.trim().to_string()
                }
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn unknown_fields_fail_strict_client_side_validation() {
    let cp = cluster();
    let ns = namespace(cp, "strict");
    let typo = edit(MACHINE, &[("spec.bmc.insecureSkipVerfy", "true")]);
    let out = run(
        cp.kubectl()
            .args(["create", "--validate=strict", "-n", &ns, "-f", "-"]),
        Some(&typo),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "typo accepted");
    assert!(
        stderr.contains("unknown field \"spec.bmc.insecureSkipVerfy\""),
        "{stderr}"
    );
    // Without strict validation the apiserver prunes the typo, and warns.
    let out = run(
        cp.kubectl()
            .args(["create", "--validate=warn", "-n", &ns, "-f", "-"]),
        Some(&typo),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown field"),
        "no warning"
    );
}

#[test]
fn examples_apply_server_side_and_are_stable() {
    let cp = cluster();
    let ns = namespace(cp, "examples");
    let examples = repo().join("examples");
    let out = run_ok(
        cp.kubectl()
            .args([
                "apply",
                "--server-side",
                "--validate=strict",
                "-n",
                &ns,
                "-f",
            ])
            .arg(&examples),
    );
    for obj in [
        "subnet.metal.ironpool.dev/prov",
        "machine.metal.ironpool.dev/r1-u07",
        "machine.metal.ironpool.dev/r1-u08",
        "deployment.metal.ironpool.dev/web-1",
    ] {
        assert!(out.contains(obj), "{obj} not applied: {out}");
    }
    // Applying again changes nothing, and the server-side diff is empty.
    let again = run_ok(
        cp.kubectl()
            .args(["apply", "--server-side", "-n", &ns, "-f"])
            .arg(&examples),
    );
    assert!(!again.contains("configured"), "{again}");
    let diff = run(
        cp.kubectl()
            .args(["diff", "--server-side", "-n", &ns, "-f"])
            .arg(&examples),
        None,
    );
    assert!(
        diff.status.success() && diff.stdout.is_empty(),
        "kubectl diff --server-side is not empty: {}{}",
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );
    // The defaults the apiserver filled in are the documented ones.
    let lease = run_ok(cp.kubectl().args([
        "get",
        "bmm",
        "r1-u08",
        "-n",
        &ns,
        "-o",
        "jsonpath={.spec.bmc.insecureSkipVerify}",
    ]));
    assert_eq!(lease, "false");
    let table = run_ok(cp.kubectl().args(["get", "ironpool", "-n", &ns]));
    for name in ["prov", "r1-u07", "r1-u08", "web-1"] {
        assert!(
            table.contains(name),
            "`kubectl get ironpool` lacks {name}: {table}"
        );
    }
}
