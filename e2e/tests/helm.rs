//! The Helm chart `charts/ironpool` against the real kube-apiserver: lint, the values
//! schema, rendering, a server-side dry run of everything it renders, and install /
//! upgrade / uninstall.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::process::{Command, Stdio};

use ironpool_e2e::ControlPlane;
use ironpool_e2e::chart::{chart_dir, helm, install};
use ironpool_e2e::cluster::kubectl_ok;

fn cp() -> &'static ControlPlane {
    ControlPlane::shared().expect("control plane")
}

/// Runs a command; returns (success, stdout, stderr).
fn run(command: &mut Command) -> (bool, String, String) {
    let out = command.stdin(Stdio::null()).output().expect("command runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether the default rendering has the Grafana dashboard ConfigMap.
fn all_default_has_dashboard() -> bool {
    let (ok, out, err) = template(&[]);
    assert!(ok, "{err}");
    out.contains("name: t-ironpool-dashboard")
}

/// `helm template` with `--set` values.
fn template(set: &[&str]) -> (bool, String, String) {
    let mut command = helm(cp()).unwrap();
    command
        .args(["template", "t"])
        .arg(chart_dir())
        .args(["-n", "ironpool-system"]);
    for value in set {
        command.args(["--set", value]);
    }
    run(&mut command)
}

/// The `kind: X` lines of a rendered stream, with their `name:`.
fn kinds(rendered: &str) -> Vec<String> {
    rendered
        .split("\n---")
        .filter_map(|doc| {
            let kind = doc.lines().find_map(|l| l.strip_prefix("kind: "))?;
            let name = doc
                .lines()
                .find_map(|l| l.trim_start().strip_prefix("name: "))
                .unwrap_or("");
            Some(format!("{kind}/{name}"))
        })
        .collect()
}

#[test]
fn chart_crds_are_the_crdgen_output() {
    let generated = ironpool_e2e::repo_dir().join("crds/yaml");
    let chart = chart_dir().join("crds");
    let mut names: Vec<_> = std::fs::read_dir(&generated)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    let mut in_chart: Vec<_> = std::fs::read_dir(&chart)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    in_chart.sort();
    assert_eq!(
        names, in_chart,
        "charts/ironpool/crds must hold exactly the files of crds/yaml; run `cargo run -p ironpool-crds --bin crdgen -- --write`"
    );
    for name in names {
        assert_eq!(
            std::fs::read_to_string(generated.join(&name)).unwrap(),
            std::fs::read_to_string(chart.join(&name)).unwrap(),
            "charts/ironpool/crds/{name:?} differs from crds/yaml; run `cargo run -p ironpool-crds --bin crdgen -- --write`"
        );
    }
}

#[test]
fn chart_lints_clean() {
    let (ok, out, err) = run(helm(cp())
        .unwrap()
        .args(["lint", "--strict"])
        .arg(chart_dir()));
    assert!(ok, "helm lint --strict failed:\n{out}{err}");
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn schema_rejects_bad_values_with_the_path() {
    let cases: [(&str, &str); 10] = [
        ("operator.replicas=0", "/operator/replicas"),
        ("logFormat=xml", "/logFormat"),
        (
            "operator.leaderElection.leaseDuration=15",
            "/operator/leaderElection/leaseDuration",
        ),
        (
            "operator.leaderElection.retryPeriod=2 seconds",
            "/operator/leaderElection/retryPeriod",
        ),
        ("agent.serverIP=10.0.0.300", "/agent/serverIP"),
        (
            "agent.journalHostPath=relative/dir",
            "/agent/journalHostPath",
        ),
        ("agent.nodeSelector=null", "/agent"),
        (
            "agent.dhcpInterface=a-name-longer-than-15",
            "/agent/dhcpInterface",
        ),
        ("watchNamespace=Not_A_Namespace", "/watchNamespace"),
        ("operator.replica=2", "/operator"),
    ];
    for (value, path) in cases {
        let (ok, out, err) = template(&[value]);
        assert!(!ok, "--set {value} was accepted:\n{out}");
        assert!(
            err.contains("values don't meet the specifications of the schema")
                && err.contains(path),
            "--set {value}: the error does not name {path}:\n{err}"
        );
    }
    // The defaults and a fully set agent pass.
    let (ok, _, err) = template(&[
        "agent.serverIP=10.20.0.5",
        "agent.dhcpInterface=eno2",
        "watchNamespace=dc-a",
        "agent.http.baseURL=http://10.20.0.5:8080",
    ]);
    assert!(ok, "{err}");
}

#[test]
fn renders_what_the_values_ask_for() {
    let (ok, out, err) = template(&[]);
    assert!(ok, "{err}");
    let all = kinds(&out);
    for want in [
        "Deployment/t-ironpool-operator",
        "DaemonSet/t-ironpool-agent",
        "ServiceAccount/t-ironpool-operator",
        "ServiceAccount/t-ironpool-agent",
        "ClusterRole/t-ironpool-operator",
        "ClusterRole/t-ironpool-agent",
        "ClusterRole/t-ironpool-operator-nodes",
        "Role/t-ironpool-operator-leader-election",
        "PodDisruptionBudget/t-ironpool-operator",
        "Service/t-ironpool-operator-metrics",
        "ValidatingAdmissionPolicy/t-ironpool-ironpool-system-spec-guard",
        "MutatingAdmissionPolicy/t-ironpool-ironpool-system-release-finalizer",
        "MutatingAdmissionPolicyBinding/t-ironpool-ironpool-system-release-finalizer",
    ] {
        assert!(
            all.contains(&want.to_string()),
            "{want} missing from {all:?}"
        );
    }
    // The agent has no access to Nodes at all (the operator names the candidates).
    assert!(
        !all.contains(&"ClusterRole/t-ironpool-agent-nodes".to_string()),
        "{all:?}"
    );
    assert!(!all.iter().any(|k| k.starts_with("ServiceMonitor/")));
    // Image references: registry/name:appVersion, all three.
    for image in [
        "ironpool-operator",
        "ironpool-agent",
        "ironpool-boot-assets",
    ] {
        assert!(
            out.contains(&format!("localhost/ironpool/{image}:0.1.0")),
            "{image}"
        );
    }
    // The flags the binaries really have (a renamed flag would crash-loop the pods).
    for flag in [
        "--lease-duration=15s",
        "--listen=0.0.0.0:8080",
        "--journal=",
        "--token-secret-file=",
    ] {
        assert!(out.contains(flag), "{flag} missing");
    }

    assert!(!out.contains("--secret-selector"), "set without a value");
    // The power controller's Secret selector reaches the agent's flags, quoted (a set-based
    // selector has spaces and parentheses), and only when the controller runs.
    for (selector, flag) in [
        (
            "ironpool.dev/bmc-credentials=true",
            r#"- "--secret-selector=ironpool.dev/bmc-credentials=true""#,
        ),
        ("tier in (bmc)", r#"- "--secret-selector=tier in (bmc)""#),
    ] {
        let set = format!("agent.power.secretSelector={selector}");
        let (ok, out, err) = template(&[&set]);
        assert!(ok, "{err}");
        assert!(out.contains(flag), "{flag} missing from the agent's args");
        let (ok, out, err) = template(&[&set, "agent.power.enabled=false"]);
        assert!(ok, "{err}");
        assert!(
            out.contains("- --no-power") && !out.contains("--secret-selector"),
            "power off still passes the selector"
        );
    }

    let (ok, out, _) = template(&["operator.replicas=1"]);
    assert!(
        ok && !kinds(&out)
            .iter()
            .any(|k| k.starts_with("PodDisruptionBudget/"))
    );

    let (ok, out, err) = template(&[
        "metrics.serviceMonitor.enabled=true",
        "watchNamespace=dc-a",
        "agent.enabled=false",
        "image.tag=dev",
    ]);
    assert!(ok, "{err}");
    let all = kinds(&out);
    assert!(
        all.contains(&"ServiceMonitor/t-ironpool".to_string()),
        "{all:?}"
    );
    assert!(
        all.contains(&"Role/t-ironpool-operator".to_string()),
        "{all:?}"
    );
    // Cluster-scoped RBAC only for Node labels (Nodes are cluster-scoped).
    let cluster_scoped: Vec<&String> = all
        .iter()
        .filter(|k| k.starts_with("ClusterRole"))
        .collect();
    assert_eq!(
        cluster_scoped,
        [
            "ClusterRole/t-ironpool-operator-nodes",
            "ClusterRoleBinding/t-ironpool-operator-nodes"
        ],
        "{all:?}"
    );
    assert!(!all.iter().any(|k| k.contains("agent")), "{all:?}");
    assert!(out.contains("--namespace=dc-a") && out.contains("ironpool-operator:dev"));
    // With watchNamespace the release-finalizer policy is for that namespace only; off, the
    // operator adds the finalizer itself.
    assert!(
        out.contains("expression: request.namespace == 'dc-a'"),
        "the release-finalizer policy is not limited to the watched namespace"
    );
    // The Grafana dashboard: off by default; on, a ConfigMap with the sidecar's label whose
    // JSON is the chart's dashboard file unchanged.
    assert!(!all_default_has_dashboard());
    let (ok, out, err) = template(&[
        "grafanaDashboard.enabled=true",
        "grafanaDashboard.namespace=monitoring",
    ]);
    assert!(ok, "{err}");
    let doc = out
        .split("\n---")
        .find(|d| d.contains("name: t-ironpool-dashboard"))
        .expect("a dashboard ConfigMap");
    let cm: serde_json::Value = serde_saphyr::from_str(doc).unwrap();
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["namespace"], "monitoring");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let json: serde_json::Value =
        serde_json::from_str(cm["data"]["ironpool-fleet.json"].as_str().unwrap()).unwrap();
    assert_eq!(json, ironpool_e2e::dashboard::load().unwrap());

    let (ok, out, err) = template(&["releaseFinalizer.admissionPolicy=false"]);
    assert!(ok, "{err}");
    assert!(
        !kinds(&out)
            .iter()
            .any(|k| k.starts_with("MutatingAdmissionPolicy")),
        "releaseFinalizer.admissionPolicy=false still renders the policy"
    );
}

/// The fleet web view: off by default; on, the flag and port on the operator, a Service,
/// the review RBAC (cluster-scoped, create only) and Event reads for the machine page.
#[test]
fn web_view_renders_only_when_enabled() {
    let (ok, out, err) = template(&[]);
    assert!(ok, "{err}");
    assert!(!out.contains("--web-listen") && !out.contains("tokenreviews"));
    assert!(!kinds(&out).iter().any(|k| k.contains("-web")));
    for namespace in ["", "watchNamespace=dc-a"] {
        let mut set = vec!["operator.web.enabled=true", "operator.web.port=9443"];
        if !namespace.is_empty() {
            set.push(namespace);
        }
        let (ok, out, err) = template(&set);
        assert!(ok, "{err}");
        let all = kinds(&out);
        for want in [
            "Service/t-ironpool-operator-web",
            "ClusterRole/t-ironpool-operator-web-auth",
            "ClusterRoleBinding/t-ironpool-operator-web-auth",
        ] {
            assert!(
                all.contains(&want.to_string()),
                "{want} missing from {all:?}"
            );
        }
        assert!(out.contains("- --web-listen=0.0.0.0:9443"), "{out}");
        assert!(out.contains("containerPort: 9443"));
        let role = out
            .split("\n---")
            .find(|d| {
                d.contains("name: t-ironpool-operator-web-auth")
                    && d.contains("kind: ClusterRole\n")
            })
            .expect("the web-auth ClusterRole");
        assert!(
            role.contains("resources: [tokenreviews]")
                && role.contains("resources: [subjectaccessreviews]")
        );
        assert!(
            role.lines()
                .filter(|l| l.contains("verbs:"))
                .all(|l| l.trim() == "verbs: [create]"),
            "{role}"
        );
        assert!(
            out.contains("resources: [events]\n    verbs: [list]"),
            "no Event list for the machine page"
        );
    }
    let (ok, _, err) = template(&["operator.web.port=0"]);
    assert!(!ok, "port 0 accepted");
    assert!(err.contains("web"), "{err}");
}

/// `helm template | kubectl apply --dry-run=server -f -`: every object the chart renders is
/// valid for this apiserver (the CRDs are installed first, as `helm install` does).
#[test]
fn rendered_objects_pass_a_server_side_dry_run() {
    let cp = cp();
    ironpool_e2e::cluster::install_crds(cp).unwrap();
    kubectl_ok(cp.kubectl().args(["create", "namespace", "ironpool-dry"])).unwrap();
    kubectl_ok(cp.kubectl().args(["create", "namespace", "dc-dry"])).unwrap();
    for set in [
        &[][..],
        &["watchNamespace=dc-dry", "operator.replicas=3"][..],
        &["watchNamespace=dc-dry", "operator.web.enabled=true"][..],
    ] {
        let mut command = helm(cp).unwrap();
        command
            .args(["template", "dry"])
            .arg(chart_dir())
            .args(["-n", "ironpool-dry"]);
        for value in set {
            command.args(["--set", value]);
        }
        let rendered = kubectl_ok(&mut command).unwrap();
        let mut apply = cp
            .kubectl()
            .args(["apply", "--dry-run=server", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        apply
            .stdin
            .take()
            .unwrap()
            .write_all(rendered.as_bytes())
            .unwrap();
        let out = apply.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "dry run of {set:?} failed:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("daemonset.apps/dry-ironpool-agent created (server dry run)"),
            "{stdout}"
        );
        assert!(stdout.contains("(server dry run)"), "{stdout}");
    }
}

fn get(cp: &ControlPlane, args: &[&str]) -> (bool, String, String) {
    run(cp.kubectl().arg("get").args(args))
}

#[test]
fn install_upgrade_uninstall() {
    let cp = cp();
    let ns = "ironpool-helm";
    let out = install(cp, "ip", ns, &[]).unwrap();
    assert!(out.contains("STATUS: deployed"), "{out}");
    // NOTES.txt tells the user what to do next.
    assert!(
        out.contains("kubectl label node <node> ironpool.dev/provisioning=true"),
        "{out}"
    );
    assert!(out.contains("get lease ironpool-operator"), "{out}");

    // What it made is there, CRDs Established.
    let (ok, replicas, err) = get(
        cp,
        &[
            "deploy",
            "ip-ironpool-operator",
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.replicas}",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(replicas, "2");
    for crd in ["machines", "subnets", "deployments"] {
        kubectl_ok(cp.kubectl().args([
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            &format!("crd/{crd}.metal.ironpool.dev"),
        ]))
        .unwrap();
    }
    let (ok, token, _) = get(
        cp,
        &[
            "secret",
            "ip-ironpool-agent-token",
            "-n",
            ns,
            "-o",
            "jsonpath={.data.token}",
        ],
    );
    assert!(
        ok && token.len() >= 64,
        "the agent token Secret is missing or short"
    );

    // The apiserver gives every new Deployment the release finalizer (the chart's
    // MutatingAdmissionPolicy; loaded a moment after install, hence the retries). A
    // server-side dry run runs admission and stores nothing.
    let deployment = cp.dir().join("release-finalizer-probe.yaml");
    std::fs::write(
        &deployment,
        format!(
            "apiVersion: metal.ironpool.dev/v1alpha1\nkind: Deployment\nmetadata:\n  name: probe\n  namespace: {ns}\n\
             spec:\n  machineSelector: {{matchLabels: {{probe: \"true\"}}}}\n  image: {{url: http://images.test/p.raw, format: raw, checksum: \"sha256:{}\"}}\n",
            "0".repeat(64)
        ),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (ok, finalizers, err) = run(cp
            .kubectl()
            .args([
                "create",
                "--dry-run=server",
                "-o",
                "jsonpath={.metadata.finalizers}",
                "-f",
            ])
            .arg(&deployment));
        // Right after the install, the apiserver may not serve the new CRDs' kinds yet
        // ("There can be a delay..."): that, like a policy not yet in effect, is retried.
        assert!(
            ok || (err.contains("There can be a delay") && std::time::Instant::now() < deadline),
            "{err}"
        );
        if ok && finalizers.contains("metal.ironpool.dev/release") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a new Deployment did not get the release finalizer within 60 s: {finalizers:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }

    // An upgrade changes what it says and keeps the generated token.
    let mut upgrade = helm(cp).unwrap();
    upgrade.args(["upgrade", "ip"]).arg(chart_dir()).args([
        "-n",
        ns,
        "--set",
        "operator.replicas=3",
        "--set",
        "logFormat=text",
    ]);
    kubectl_ok(&mut upgrade).unwrap();
    let (_, replicas, _) = get(
        cp,
        &[
            "deploy",
            "ip-ironpool-operator",
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.replicas}",
        ],
    );
    assert_eq!(replicas, "3");
    let (_, after, _) = get(
        cp,
        &[
            "secret",
            "ip-ironpool-agent-token",
            "-n",
            ns,
            "-o",
            "jsonpath={.data.token}",
        ],
    );
    assert_eq!(after, token, "helm upgrade rotated the agent token");

    // A bad value fails the upgrade with the schema's message and changes nothing.
    let mut bad = helm(cp).unwrap();
    bad.args(["upgrade", "ip"])
        .arg(chart_dir())
        .args(["-n", ns, "--set", "operator.replicas=-1"]);
    let (ok, _, err) = run(&mut bad);
    assert!(!ok && err.contains("/operator/replicas"), "{err}");
    let (_, history, _) = run(helm(cp)
        .unwrap()
        .args(["history", "ip", "-n", ns, "-o", "json"]));
    assert_eq!(history.matches("\"revision\"").count(), 2, "{history}");

    // A bad value fails install too, before anything is created.
    let (ok, _, err) = run(helm(cp)
        .unwrap()
        .args(["install", "bad"])
        .arg(chart_dir())
        .args(["-n", "ironpool-bad", "--set", "logFormat=yaml"]));
    assert!(!ok && err.contains("/logFormat"), "{err}");

    // Uninstall removes what the release made; the CRDs (and so users' objects) stay.
    kubectl_ok(helm(cp).unwrap().args(["uninstall", "ip", "-n", ns])).unwrap();
    for (kind, namespaced) in [
        ("deploy/ip-ironpool-operator", true),
        ("daemonset/ip-ironpool-agent", true),
        ("secret/ip-ironpool-agent-token", true),
        ("clusterrole/ip-ironpool-operator", false),
        (
            "validatingadmissionpolicy/ip-ironpool-ironpool-helm-spec-guard",
            false,
        ),
        (
            "mutatingadmissionpolicy/ip-ironpool-ironpool-helm-release-finalizer",
            false,
        ),
    ] {
        let mut args = vec![kind];
        if namespaced {
            args.extend(["-n", ns]);
        }
        let (ok, _, err) = get(cp, &args);
        assert!(
            !ok && err.contains("NotFound"),
            "{kind} survived uninstall: {err}"
        );
    }
    let (ok, _, err) = get(cp, &["crd", "machines.metal.ironpool.dev"]);
    assert!(ok, "{err}");
}
