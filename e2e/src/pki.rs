//! The control plane's certificates and keys, generated fresh for every start with rcgen.

use std::{
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The apiserver's service range; its serving certificate names the first address.
pub(crate) const SERVICE_CLUSTER_IP_RANGE: &str = "10.0.0.0/24";
const KUBERNETES_SERVICE_IP: &str = "10.0.0.1";

/// Paths of the PEM files written by [`write_pki`].
#[derive(Debug, Clone)]
pub(crate) struct PkiFiles {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub apiserver_cert: PathBuf,
    pub apiserver_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub etcd_cert: PathBuf,
    pub etcd_key: PathBuf,
    pub etcd_client_cert: PathBuf,
    pub etcd_client_key: PathBuf,
    pub service_account_key: PathBuf,
    pub service_account_pub: PathBuf,
    /// The apiserver's client certificate towards kubelets (`system:masters`), for logs
    /// and exec.
    pub kubelet_client_cert: PathBuf,
    pub kubelet_client_key: PathBuf,
    /// One client certificate per node name asked for: `system:node:<name>` in
    /// `system:nodes`, what the Node authorizer and NodeRestriction expect of a kubelet.
    pub nodes: Vec<NodeCredentials>,
}

/// A kubelet's client certificate and key.
#[derive(Debug, Clone)]
pub(crate) struct NodeCredentials {
    pub name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate and its private key, both PEM.
struct Leaf {
    cert: String,
    key: String,
}

/// What a leaf certificate is for.
struct LeafSpec<'a> {
    common_name: &'a str,
    organization: Option<&'a str>,
    sans: &'a [&'a str],
    usages: &'a [ExtendedKeyUsagePurpose],
}

/// Generates a CA and every certificate the control plane needs, and writes them into `dir`
/// (created if missing; private keys are mode 0600). `extra_sans` are added to the
/// apiserver's serving certificate (an address it is reached at besides loopback); `nodes`
/// get kubelet client certificates.
pub(crate) fn write_pki(dir: &Path, extra_sans: &[String], nodes: &[String]) -> Result<PkiFiles> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (ca_cert, ca_key, ca) = new_ca()?;
    let server = [ExtendedKeyUsagePurpose::ServerAuth];
    let client = [ExtendedKeyUsagePurpose::ClientAuth];
    let both = [
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let apiserver = leaf(
        &ca,
        &LeafSpec {
            common_name: "kube-apiserver",
            organization: None,
            sans: &[
                "127.0.0.1",
                "localhost",
                KUBERNETES_SERVICE_IP,
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ]
            .into_iter()
            .chain(extra_sans.iter().map(String::as_str))
            .collect::<Vec<_>>(),
            usages: &server,
        },
    )?;
    let admin = leaf(
        &ca,
        &LeafSpec {
            common_name: "admin",
            organization: Some("system:masters"),
            sans: &[],
            usages: &client,
        },
    )?;
    // etcd uses one certificate for client and peer traffic, so it needs both usages.
    let etcd = leaf(
        &ca,
        &LeafSpec {
            common_name: "etcd",
            organization: None,
            sans: &["127.0.0.1", "localhost"],
            usages: &both,
        },
    )?;
    let etcd_client = leaf(
        &ca,
        &LeafSpec {
            common_name: "kube-apiserver-etcd-client",
            organization: None,
            sans: &[],
            usages: &client,
        },
    )?;
    let kubelet_client = leaf(
        &ca,
        &LeafSpec {
            common_name: "kube-apiserver-kubelet-client",
            organization: Some("system:masters"),
            sans: &[],
            usages: &client,
        },
    )?;
    let mut node_leaves = Vec::new();
    for name in nodes {
        let common_name = format!("system:node:{name}");
        let node = leaf(
            &ca,
            &LeafSpec {
                common_name: &common_name,
                organization: Some("system:nodes"),
                sans: &[],
                usages: &client,
            },
        )?;
        node_leaves.push((name.clone(), node));
    }
    let sa = KeyPair::generate().context("generating the service-account signing key")?;

    let files = PkiFiles {
        ca_cert: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        apiserver_cert: dir.join("apiserver.crt"),
        apiserver_key: dir.join("apiserver.key"),
        admin_cert: dir.join("admin.crt"),
        admin_key: dir.join("admin.key"),
        etcd_cert: dir.join("etcd.crt"),
        etcd_key: dir.join("etcd.key"),
        etcd_client_cert: dir.join("apiserver-etcd-client.crt"),
        etcd_client_key: dir.join("apiserver-etcd-client.key"),
        service_account_key: dir.join("sa.key"),
        service_account_pub: dir.join("sa.pub"),
        kubelet_client_cert: dir.join("apiserver-kubelet-client.crt"),
        kubelet_client_key: dir.join("apiserver-kubelet-client.key"),
        nodes: node_leaves
            .iter()
            .map(|(name, _)| NodeCredentials {
                name: name.clone(),
                cert: dir.join(format!("node-{name}.crt")),
                key: dir.join(format!("node-{name}.key")),
            })
            .collect(),
    };
    write(&files.ca_cert, &ca_cert, false)?;
    write(&files.ca_key, &ca_key, true)?;
    for (leaf, cert, key) in [
        (&apiserver, &files.apiserver_cert, &files.apiserver_key),
        (&admin, &files.admin_cert, &files.admin_key),
        (&etcd, &files.etcd_cert, &files.etcd_key),
        (
            &etcd_client,
            &files.etcd_client_cert,
            &files.etcd_client_key,
        ),
        (
            &kubelet_client,
            &files.kubelet_client_cert,
            &files.kubelet_client_key,
        ),
    ]
    .into_iter()
    .chain(
        node_leaves
            .iter()
            .zip(&files.nodes)
            .map(|((_, leaf), node)| (leaf, &node.cert, &node.key)),
    ) {
        write(cert, &leaf.cert, false)?;
        write(key, &leaf.key, true)?;
    }
    write(&files.service_account_key, &sa.serialize_pem(), true)?;
    write(&files.service_account_pub, &sa.public_key_pem(), false)?;
    Ok(files)
}

fn new_ca() -> Result<(String, String, Issuer<'static, KeyPair>)> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "ironpool-e2e-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().context("generating the CA key")?;
    let cert = params
        .self_signed(&key)
        .context("self-signing the CA certificate")?;
    let key_pem = key.serialize_pem();
    Ok((cert.pem(), key_pem, Issuer::new(params, key)))
}

/// A fresh CA and a serving certificate for `127.0.0.1`/`localhost` signed by it, for a
/// webhook server on loopback: writes `tls.crt` and `tls.key` (0600) into `dir` and
/// returns the CA certificate (PEM) that callers put in their caBundle.
pub fn write_serving_pki(dir: &Path, common_name: &str) -> Result<String> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (ca_cert, _, ca) = new_ca()?;
    let served = leaf(
        &ca,
        &LeafSpec {
            common_name,
            organization: None,
            sans: &["127.0.0.1", "localhost"],
            usages: &[ExtendedKeyUsagePurpose::ServerAuth],
        },
    )?;
    write(&dir.join("tls.crt"), &served.cert, false)?;
    write(&dir.join("tls.key"), &served.key, true)?;
    Ok(ca_cert)
}

fn leaf(ca: &Issuer<'static, KeyPair>, spec: &LeafSpec<'_>) -> Result<Leaf> {
    let sans: Vec<String> = spec.sans.iter().map(|s| (*s).to_owned()).collect();
    let mut params = CertificateParams::new(sans)
        .with_context(|| format!("subject alternative names for {}", spec.common_name))?;
    params
        .distinguished_name
        .push(DnType::CommonName, spec.common_name);
    if let Some(org) = spec.organization {
        params
            .distinguished_name
            .push(DnType::OrganizationName, org);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = spec.usages.to_vec();
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate()
        .with_context(|| format!("generating the key for {}", spec.common_name))?;
    let cert = params
        .signed_by(&key, ca)
        .with_context(|| format!("signing the certificate for {}", spec.common_name))?;
    Ok(Leaf {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn write(path: &Path, contents: &str, private: bool) -> Result<()> {
    let mode = if private { 0o600 } else { 0o644 };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn writes_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_pki(&dir.path().join("pki"), &[], &["n1".to_owned()]).unwrap();
        let ca = fs::read_to_string(&files.ca_cert).unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
        let key = fs::read_to_string(&files.admin_key).unwrap();
        assert!(key.contains("PRIVATE KEY"));
        let public = fs::read_to_string(&files.service_account_pub).unwrap();
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
    }
}
