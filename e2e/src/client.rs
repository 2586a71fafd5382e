//! Kubeconfigs and kube clients for the control plane, and the wait for `/readyz`.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::{
    Api, Client, Config,
    api::{ObjectMeta, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::{Value, json};

use crate::{pki::PkiFiles, process::Server};

/// A kubeconfig (as JSON, which is valid YAML) for `server` trusting `ca_cert`, with `user`
/// as its only user entry.
fn kubeconfig(server: &str, ca_cert: &Path, user: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "ironpool-e2e",
            "cluster": { "server": server, "certificate-authority": ca_cert },
        }],
        "users": [{ "name": "user", "user": user }],
        "contexts": [{
            "name": "ironpool-e2e",
            "context": { "cluster": "ironpool-e2e", "user": "user", "namespace": "default" },
        }],
        "current-context": "ironpool-e2e",
    })
}

/// Writes the admin kubeconfig (client certificate in group `system:masters`) to `path`.
pub(crate) fn write_admin_kubeconfig(path: &Path, server: &str, pki: &PkiFiles) -> Result<()> {
    let user = json!({
        "client-certificate": pki.admin_cert,
        "client-key": pki.admin_key,
    });
    let json = serde_json::to_string_pretty(&kubeconfig(server, &pki.ca_cert, user))?;
    std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
}

/// A client from a kubeconfig file, for the current tokio runtime.
pub(crate) async fn client_from_file(path: &Path) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    client_from(kubeconfig).await
}

/// A client that authenticates with a bearer token (e.g. a ServiceAccount token).
pub(crate) async fn client_with_token(server: &str, ca_cert: &Path, token: &str) -> Result<Client> {
    let doc = kubeconfig(server, ca_cert, json!({ "token": token }));
    let kubeconfig = Kubeconfig::from_yaml(&serde_json::to_string(&doc)?)?;
    client_from(kubeconfig).await
}

async fn client_from(kubeconfig: Kubeconfig) -> Result<Client> {
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("building a client config from the kubeconfig")?;
    Client::try_from(config).context("building a kube client")
}

/// Polls `/readyz` with the admin client until it answers `ok`, a server exits, or
/// `timeout` passes. Runs on a private current-thread runtime in a scoped thread, so it can
/// be called from plain threads and from inside any tokio runtime alike.
pub(crate) fn wait_ready(
    kubeconfig: &Path,
    servers: &mut [&mut Server],
    timeout: Duration,
) -> Result<()> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("building a tokio runtime to wait for /readyz")?;
                runtime.block_on(poll_readyz(kubeconfig, servers, timeout))
            })
            .join()
            .map_err(|_| anyhow!("the thread waiting for /readyz panicked"))?
    })
}

async fn poll_readyz(
    kubeconfig: &Path,
    servers: &mut [&mut Server],
    timeout: Duration,
) -> Result<()> {
    let client = client_from_file(kubeconfig).await?;
    let started = Instant::now();
    loop {
        for server in servers.iter_mut() {
            if let Some(status) = server.exited()? {
                bail!(
                    "{} exited ({status}) before /readyz answered ok",
                    server.name()
                );
            }
        }
        let request = http::Request::get("/readyz").body(Vec::new())?;
        let last = match tokio::time::timeout(Duration::from_secs(5), client.request_text(request))
            .await
        {
            Ok(Ok(body)) if body.trim() == "ok" => return Ok(()),
            Ok(Ok(body)) => format!("answer {body:?}"),
            Ok(Err(error)) => format!("{error:#}"),
            Err(_) => String::from("request timed out after 5s"),
        };
        if started.elapsed() > timeout {
            bail!("/readyz was not ok after {timeout:?}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates a namespace named `prefix-xxxxxx` (random suffix) and, standing in for the
/// controller-manager this control plane lacks, its `default` ServiceAccount.
pub(crate) async fn create_namespace(client: Client, prefix: &str) -> Result<String> {
    let prefix = sanitize_prefix(prefix);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for _ in 0..5 {
        let name = format!("{prefix}-{}", random_suffix(6));
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        match namespaces.create(&PostParams::default(), &namespace).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(error) => return Err(error).with_context(|| format!("creating namespace {name}")),
        }
        let account = ServiceAccount {
            metadata: ObjectMeta {
                name: Some("default".to_owned()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        Api::<ServiceAccount>::namespaced(client, &name)
            .create(&PostParams::default(), &account)
            .await
            .with_context(|| format!("creating ServiceAccount default in {name}"))?;
        return Ok(name);
    }
    bail!("five random namespace names for prefix {prefix:?} were all taken")
}

/// Lower-cases `prefix`, keeps `[a-z0-9-]`, trims dashes, and caps it so that the name with
/// its suffix stays a valid DNS label.
fn sanitize_prefix(prefix: &str) -> String {
    let cleaned: String = prefix
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(50)
        .collect();
    let trimmed = cleaned.trim_matches('-');
    if trimmed.is_empty() {
        "test".to_owned()
    } else {
        trimmed.to_owned()
    }
}

fn random_suffix(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| char::from(ALPHABET[fastrand::usize(..ALPHABET.len())]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_become_dns_labels() {
        assert_eq!(sanitize_prefix("Machine_Tests"), "machine-tests");
        assert_eq!(sanitize_prefix("--"), "test");
        assert_eq!(sanitize_prefix(&"a".repeat(80)).len(), 50);
        let name = format!("{}-{}", sanitize_prefix("x"), random_suffix(6));
        assert_eq!(name.len(), 8);
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }
}
