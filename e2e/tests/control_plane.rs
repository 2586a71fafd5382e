//! Tests of the control-plane harness against the real etcd and kube-apiserver binaries.

use std::{
    net::{SocketAddr, TcpStream},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use ironpool_e2e::ControlPlane;
use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{ConfigMap, Namespace, Secret, ServiceAccount},
    rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
};
use kube::{
    Api, Client,
    api::{ListParams, ObjectMeta, PostParams},
};

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        ..ObjectMeta::default()
    }
}

/// The HTTP status of a failed API call, or an error if the call did not fail that way.
fn api_status<T>(result: kube::Result<T>) -> Result<u16> {
    match result {
        Ok(_) => bail!("the call succeeded"),
        Err(kube::Error::Api(status)) => Ok(status.code),
        Err(other) => Err(other).context("the call failed without an API status"),
    }
}

#[tokio::test]
async fn reports_the_built_version() -> Result<()> {
    let control_plane = ControlPlane::shared()?;
    let version = control_plane.client().await?.apiserver_version().await?;
    assert_eq!(version.git_version, "v1.37.2");
    Ok(())
}

#[tokio::test]
async fn admin_creates_a_namespace_and_a_config_map() -> Result<()> {
    let control_plane = ControlPlane::shared()?;
    let namespace = control_plane.create_namespace("admin").await?;
    assert!(namespace.starts_with("admin-"), "{namespace}");
    let client = control_plane.client().await?;
    Api::<Namespace>::all(client.clone())
        .get(&namespace)
        .await?;

    let config_maps: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let config_map = ConfigMap {
        metadata: meta("settings"),
        data: Some([("answer".to_owned(), "42".to_owned())].into()),
        ..ConfigMap::default()
    };
    config_maps
        .create(&PostParams::default(), &config_map)
        .await?;
    let read = config_maps.get("settings").await?;
    assert_eq!(
        read.data
            .unwrap_or_default()
            .get("answer")
            .map(String::as_str),
        Some("42")
    );
    Ok(())
}

#[tokio::test]
async fn kubectl_uses_the_admin_kubeconfig() -> Result<()> {
    let control_plane = ControlPlane::shared()?;
    let output = control_plane
        .kubectl()
        .args(["get", "namespace", "default", "-o", "name"])
        .output()?;
    ensure!(
        output.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "namespace/default"
    );
    Ok(())
}

async fn service_account_token(client: &Client, namespace: &str, name: &str) -> Result<String> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    accounts
        .create(
            &PostParams::default(),
            &ServiceAccount {
                metadata: meta(name),
                ..ServiceAccount::default()
            },
        )
        .await?;
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let answer = accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await?;
    answer
        .status
        .and_then(|status| status.token)
        .context("the TokenRequest returned no token")
}

#[tokio::test]
async fn rbac_is_enforced_for_service_account_tokens() -> Result<()> {
    let control_plane = ControlPlane::shared()?;
    let namespace = control_plane.create_namespace("rbac").await?;
    let admin = control_plane.client().await?;
    let token = service_account_token(&admin, &namespace, "robot").await?;
    let robot = control_plane.client_with_token(&token).await?;

    // Authenticated (403, not 401) but not authorized.
    let secrets = api_status(
        Api::<Secret>::all(robot.clone())
            .list(&ListParams::default())
            .await,
    )?;
    assert_eq!(secrets, 403);
    let config_maps: Api<ConfigMap> = Api::namespaced(robot, &namespace);
    assert_eq!(
        api_status(config_maps.list(&ListParams::default()).await)?,
        403
    );

    // A Role and RoleBinding grant exactly what they say.
    let role = Role {
        metadata: meta("read-config-maps"),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".to_owned()]),
            verbs: vec!["list".to_owned()],
            ..PolicyRule::default()
        }]),
    };
    Api::<Role>::namespaced(admin.clone(), &namespace)
        .create(&PostParams::default(), &role)
        .await?;
    let binding = RoleBinding {
        metadata: meta("robot-reads-config-maps"),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "Role".to_owned(),
            name: "read-config-maps".to_owned(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: "robot".to_owned(),
            namespace: Some(namespace.clone()),
            ..Subject::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(admin, &namespace)
        .create(&PostParams::default(), &binding)
        .await?;
    let mut allowed = config_maps.list(&ListParams::default()).await;
    for _ in 0..50 {
        // The authorizer sees the new binding through its informer, a moment later.
        if allowed.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        allowed = config_maps.list(&ListParams::default()).await;
    }
    allowed.context("listing config maps after the RoleBinding")?;
    Ok(())
}

fn is_alive(pid: u32) -> Result<bool> {
    let status = Command::new("sh")
        .args(["-c", r#"kill -0 "$1" 2>/dev/null"#, "sh"])
        .arg(pid.to_string())
        .status()?;
    Ok(status.success())
}

fn port_open(url: &str) -> Result<bool> {
    let addr: SocketAddr = url.trim_start_matches("https://").parse()?;
    Ok(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok())
}

#[tokio::test]
async fn two_control_planes_run_side_by_side_and_stop_cleanly() -> Result<()> {
    let (first, second) = tokio::join!(
        tokio::task::spawn_blocking(ControlPlane::start),
        tokio::task::spawn_blocking(ControlPlane::start),
    );
    let (first, second) = (first??, second??);
    assert_ne!(first.server_url(), second.server_url());
    assert_ne!(first.dir(), second.dir());

    // Separate etcds: the same name can be created in each, as two different objects, and a
    // namespace created in one is absent from the other.
    let mut uids = Vec::new();
    for control_plane in [&first, &second] {
        let namespaces: Api<Namespace> = Api::all(control_plane.client().await?);
        let same = Namespace {
            metadata: meta("same"),
            ..Namespace::default()
        };
        let created = namespaces.create(&PostParams::default(), &same).await?;
        uids.push(created.metadata.uid.context("no uid")?);
    }
    assert_ne!(uids[0], uids[1]);
    let only_first = first.create_namespace("only-first").await?;
    let in_second = Api::<Namespace>::all(second.client().await?)
        .get_opt(&only_first)
        .await?;
    assert!(
        in_second.is_none(),
        "{only_first} leaked into the second control plane"
    );

    for control_plane in [first, second] {
        let pids = control_plane.pids();
        let url = control_plane.server_url().to_owned();
        let dir = control_plane.dir().to_owned();
        assert_eq!(pids.len(), 2);
        assert!(port_open(&url)?);
        control_plane.stop();
        for pid in pids {
            assert!(!is_alive(pid)?, "process {pid} survived stop()");
        }
        assert!(
            !port_open(&url)?,
            "{url} still accepts connections after stop()"
        );
        assert!(!dir.exists(), "{} survived stop()", dir.display());
    }
    Ok(())
}

/// Set in the child process of `watchdog_cleans_up_after_a_killed_test_process`.
const HOLDER_ENV: &str = "IRONPOOL_E2E_HOLDER";

/// Helper run as a child process: starts a control plane, reports it, and waits to be killed.
/// Without the environment variable it does nothing.
#[test]
fn holds_a_control_plane_until_killed() -> Result<()> {
    if std::env::var_os(HOLDER_ENV).is_none() {
        return Ok(());
    }
    let control_plane = ControlPlane::shared()?;
    let pids: Vec<String> = control_plane.pids().iter().map(u32::to_string).collect();
    println!(
        "HOLDER {} {} {}",
        control_plane.server_url(),
        control_plane.dir().display(),
        pids.join(",")
    );
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

#[test]
fn watchdog_cleans_up_after_a_killed_test_process() -> Result<()> {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "holds_a_control_plane_until_killed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLDER_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    // libtest may print "test <name> ... " on the same line first, so search within lines.
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(at) = line.find("HOLDER ") {
                let _ = sender.send(line[at + "HOLDER ".len()..].to_owned());
            }
        }
    });
    let report = match receiver.recv_timeout(Duration::from_secs(180)) {
        Ok(report) => report,
        Err(error) => {
            child.kill()?;
            child.wait()?;
            bail!("the holder process did not report a control plane: {error}");
        }
    };
    let [url, dir, pids] = report.split(' ').collect::<Vec<_>>()[..] else {
        bail!("unexpected report {report:?}");
    };
    let pids: Vec<u32> = pids.split(',').map(str::parse).collect::<Result<_, _>>()?;
    assert!(port_open(url)?);

    child.kill()?; // SIGKILL: no destructor, no atexit, nothing runs in the test process.
    child.wait()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let alive: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|pid| is_alive(*pid).unwrap_or(true))
            .collect();
        let dir_left = std::path::Path::new(dir).exists();
        if alive.is_empty() && !dir_left {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "15s after SIGKILL: processes {alive:?} alive, dir {dir} exists: {dir_left}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!port_open(url)?);
    Ok(())
}
