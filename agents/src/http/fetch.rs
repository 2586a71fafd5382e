//! Upstream image download: a pooled hyper client (http:// and https:// with the system
//! roots), redirects, a stall deadline, and streaming into a file while hashing. The file is
//! written in 1 MiB batches on the blocking pool, where the digest is updated too.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ring::digest;

use super::HttpError;

const BATCH: usize = 1 << 20;
const MAX_REDIRECTS: usize = 5;

/// What a finished download produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Downloaded {
    /// Lower-case hex SHA-256 of the bytes written.
    pub sha256: String,
    /// Lower-case hex SHA-512 of the same bytes (computed in the same pass, so the cache
    /// can offer machines both digests: see `cache::ReprDigest`).
    pub sha512: String,
    /// Bytes written.
    pub bytes: u64,
}

/// A pooled client for upstream image servers.
#[derive(Clone, Debug)]
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    stall: Duration,
}

impl Upstream {
    /// A client; a download that receives nothing for `stall` fails.
    pub fn new(stall: Duration) -> Result<Self, HttpError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            // A broken system certificate only loses that root.
            let _ = roots.add(cert);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| HttpError::Config(format!("TLS for image downloads: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(15)));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self { client, stall })
    }

    /// Downloads `url` into `dest` (created), hashing with `algo`. `limit` caps the size.
    pub async fn download(
        &self,
        url: &str,
        dest: &Path,
        limit: u64,
    ) -> Result<Downloaded, HttpError> {
        let fail = |message: String| HttpError::Upstream {
            url: url.to_string(),
            message,
        };
        let mut uri: Uri = url.parse().map_err(|e| fail(format!("bad URL: {e}")))?;
        let mut redirects = 0;
        let resp = loop {
            let req = Request::get(uri.clone())
                .header(header::USER_AGENT, "ironpool-agent")
                .body(Empty::new())
                .map_err(|e| fail(e.to_string()))?;
            let resp = tokio::time::timeout(self.stall, self.client.request(req))
                .await
                .map_err(|_| fail(format!("no answer within {:?}", self.stall)))?
                .map_err(|e| fail(format!("request failed: {e:?}")))?;
            let status = resp.status();
            if status.is_redirection() && redirects < MAX_REDIRECTS {
                redirects += 1;
                uri = redirect_target(&uri, resp.headers())
                    .ok_or_else(|| fail(format!("HTTP {status} without a usable Location")))?;
                continue;
            }
            if status != StatusCode::OK {
                return Err(fail(format!("HTTP {status}")));
            }
            break resp;
        };
        let announced = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if let Some(len) = announced
            && len > limit
        {
            return Err(HttpError::TooLarge {
                url: url.to_string(),
                limit,
            });
        }
        let file = File::create(dest)
            .map_err(|e| HttpError::io(format!("create {}", dest.display()), &e))?;
        let mut sink = Some((file, Digests::new()));
        let mut body = resp.into_body();
        let mut batch = BytesMut::with_capacity(BATCH);
        let mut bytes = 0u64;
        loop {
            let frame = tokio::time::timeout(self.stall, body.frame())
                .await
                .map_err(|_| fail(format!("stalled for {:?} after {bytes} bytes", self.stall)))?;
            let data = match frame {
                None => None,
                Some(Err(e)) => return Err(fail(format!("body after {bytes} bytes: {e}"))),
                Some(Ok(frame)) => frame.into_data().ok(),
            };
            let done = frame_is_end(&data, &body);
            if let Some(d) = data {
                bytes += d.len() as u64;
                if bytes > limit {
                    return Err(HttpError::TooLarge {
                        url: url.to_string(),
                        limit,
                    });
                }
                batch.extend_from_slice(&d);
            }
            if batch.len() >= BATCH || (done && !batch.is_empty()) {
                sink = Some(write_batch(sink, batch.split().freeze(), dest).await?);
            }
            if done {
                break;
            }
        }
        if let Some(len) = announced
            && len != bytes
        {
            return Err(fail(format!(
                "connection closed after {bytes} of {len} bytes"
            )));
        }
        let (file, ctx) = sink.ok_or_else(|| fail("internal: writer lost".into()))?;
        let path = dest.to_path_buf();
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .map_err(|e| HttpError::Io {
                what: format!("sync {}", path.display()),
                message: e.to_string(),
            })?
            .map_err(|e| HttpError::io(format!("sync {}", dest.display()), &e))?;
        Ok(Downloaded {
            sha256: hex(ctx.sha256.finish().as_ref()),
            sha512: hex(ctx.sha512.finish().as_ref()),
            bytes,
        })
    }
}

fn frame_is_end(data: &Option<Bytes>, body: &hyper::body::Incoming) -> bool {
    use hyper::body::Body;
    data.is_none() || body.is_end_stream()
}

/// SHA-256 and SHA-512 of one download, computed together.
struct Digests {
    sha256: digest::Context,
    sha512: digest::Context,
}

impl Digests {
    fn new() -> Self {
        Self {
            sha256: digest::Context::new(&digest::SHA256),
            sha512: digest::Context::new(&digest::SHA512),
        }
    }
}

async fn write_batch(
    sink: Option<(File, Digests)>,
    batch: Bytes,
    dest: &Path,
) -> Result<(File, Digests), HttpError> {
    let what = format!("write {}", dest.display());
    let Some((mut file, mut ctx)) = sink else {
        return Err(HttpError::Io {
            what,
            message: "writer lost".into(),
        });
    };
    let joined = tokio::task::spawn_blocking(move || {
        ctx.sha256.update(&batch);
        ctx.sha512.update(&batch);
        file.write_all(&batch).map(|()| (file, ctx))
    })
    .await;
    match joined {
        Ok(Ok(pair)) => Ok(pair),
        Ok(Err(e)) => Err(HttpError::io(what, &e)),
        Err(e) => Err(HttpError::Io {
            what,
            message: e.to_string(),
        }),
    }
}

fn redirect_target(from: &Uri, headers: &http::HeaderMap) -> Option<Uri> {
    let loc = headers.get(header::LOCATION)?.to_str().ok()?;
    if loc.starts_with("http://") || loc.starts_with("https://") {
        return loc.parse().ok();
    }
    if loc.starts_with('/') {
        let scheme = from.scheme_str()?;
        let authority = from.authority()?;
        return format!("{scheme}://{authority}{loc}").parse().ok();
    }
    None
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
