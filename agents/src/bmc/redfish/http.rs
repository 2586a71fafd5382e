//! HTTP(S) transport of the Redfish driver: TLS set-up (verified by default, optional CA
//! bundle, skip only when asked), a pooled hyper client, deadlines, and the mapping of
//! transport failures onto [`BmcError`].

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::bmc::{BmcAddress, BmcError, Protocol};

/// Largest Redfish response body read (a ComputerSystem is a few kB).
const MAX_BODY: usize = 4 << 20;

/// One HTTP answer.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: StatusCode,
    /// Headers (X-Auth-Token, Location).
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

/// A pooled HTTP(S) client bound to one BMC.
#[derive(Clone)]
pub struct Transport {
    client: HttpClient,
    base: String,
    host: String,
    timeout: Duration,
}

impl Transport {
    /// A transport for `address`; `ca_bundle` (PEM) replaces the system roots.
    pub fn new(
        address: &BmcAddress,
        insecure_skip_verify: bool,
        ca_bundle: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Self, BmcError> {
        let client = shared_client(insecure_skip_verify, ca_bundle, timeout)?;
        let scheme = match address.protocol {
            Protocol::RedfishHttp => "http",
            _ => "https",
        };
        let host = address.host_port();
        Ok(Self {
            client,
            base: format!("{scheme}://{host}"),
            host,
            timeout,
        })
    }

    /// host:port of the BMC, for messages.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Sends one request and reads the whole answer within the deadline.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        auth: Option<(&'static str, &HeaderValue)>,
        body: Option<&serde_json::Value>,
    ) -> Result<Response, BmcError> {
        let operation = format!("{method} {path}");
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(ACCEPT, "application/json");
        if let Some((name, value)) = auth {
            req = req.header(name, value.clone());
        }
        let body = match body {
            Some(v) => {
                req = req.header(CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(v).unwrap_or_default())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(body))
            .map_err(|e| self.protocol(&operation, e))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| self.classify(e))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| self.unreachable(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok(Response {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(BmcError::Timeout {
                host: self.host.clone(),
                operation,
                after: self.timeout,
            }),
        }
    }

    fn protocol(&self, operation: &str, detail: impl std::fmt::Display) -> BmcError {
        BmcError::Protocol {
            host: self.host.clone(),
            operation: operation.to_string(),
            detail: detail.to_string(),
        }
    }

    fn unreachable(&self, detail: String) -> BmcError {
        BmcError::Unreachable {
            host: self.host.clone(),
            detail,
        }
    }

    fn classify(&self, e: hyper_util::client::legacy::Error) -> BmcError {
        let chain = error_chain(&e);
        if let Some(tls) = find_rustls_error(&e) {
            return BmcError::TlsVerification {
                host: self.host.clone(),
                detail: tls,
            };
        }
        // hyper-util boxes the connector's error, which hides the rustls type from
        // downcasting on some paths; its message is stable.
        if chain.contains("invalid peer certificate") {
            return BmcError::TlsVerification {
                host: self.host.clone(),
                detail: chain,
            };
        }
        self.unreachable(chain)
    }
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One pooled client per TLS setting, shared by every driver: a thousand BMCs cost one
/// TLS config and one pool, and BMCs behind one address share keep-alive connections.
fn shared_client(
    insecure: bool,
    ca_bundle: Option<&[u8]>,
    timeout: Duration,
) -> Result<HttpClient, BmcError> {
    type Key = (bool, Option<Vec<u8>>, Duration);
    static CLIENTS: OnceLock<std::sync::Mutex<std::collections::HashMap<Key, HttpClient>>> =
        OnceLock::new();
    let key = (insecure, ca_bundle.map(<[u8]>::to_vec), timeout);
    let mut clients = CLIENTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(c) = clients.get(&key) {
        return Ok(c.clone());
    }
    let tls = tls_config(insecure, ca_bundle)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(timeout));
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(8)
        .build(connector);
    clients.insert(key, client.clone());
    Ok(client)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// The rustls certificate error somewhere in `e`'s source chain, if any.
fn find_rustls_error(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let tls = err.downcast_ref::<rustls::Error>().or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(
            t @ (rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented),
        ) = tls
        {
            return Some(t.to_string());
        }
        cur = err.source();
    }
    None
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn native_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            Arc::new(roots)
        })
        .clone()
}

fn tls_config(insecure: bool, ca_bundle: Option<&[u8]>) -> Result<ClientConfig, BmcError> {
    let setup = |e: &dyn std::fmt::Display| BmcError::Setup(format!("TLS set-up failed: {e}"));
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| setup(&e))?;
    if insecure {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider())))
            .with_no_client_auth());
    }
    let roots = match ca_bundle {
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| setup(&format!("CA bundle: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| setup(&format!("CA bundle: {e}")))?;
            }
            if roots.is_empty() {
                return Err(setup(&"the CA bundle holds no PEM certificate"));
            }
            Arc::new(roots)
        }
        None => native_roots(),
    };
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// Accepts any server certificate but still checks handshake signatures; used only when
/// a Machine sets `insecureSkipVerify`.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
