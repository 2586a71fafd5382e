//! Plain-HTTP/1.1 connections with a zero-copy path for file downloads: a connection's
//! requests are read here first, and each `GET /images/<key>` or `GET /assets/<name>`
//! (plain paths, no body) is answered here, its body sent with `sendfile(2)` from the page
//! cache to the socket, with no copy through user space. The first request of any other
//! kind hands the connection, with the bytes already read, to hyper and the axum router
//! for the rest of its life. Both paths decide through the same functions
//! (`handlers::asset_file`, `handlers::image_file`), so answers are identical.

use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use bytes::{Buf, Bytes, BytesMut};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::files::FileReply;
use super::handlers;
use super::state::{HttpServer, route_label};

/// Largest request head read before giving the connection to hyper.
const MAX_HEAD: usize = 16 * 1024;
/// Largest error body collected to answer on the zero-copy path.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A request the zero-copy path answers.
#[derive(Debug, PartialEq, Eq)]
pub struct FileRequest {
    /// `/images/<key>` or `/assets/<name>`.
    pub target: Target,
    /// The request URI (path and query).
    pub uri: Uri,
    /// Headers (`Range` matters).
    pub headers: HeaderMap,
    /// Whether the client asked to close after this response.
    pub close: bool,
}

/// What a [`FileRequest`] asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// A cached image by its file name (`sha256-<hex>`).
    Image(String),
    /// A boot asset by its relative name.
    Asset(String),
}

/// Whether a path segment list is plain enough to serve without percent-decoding: the
/// router decodes `%xx`, so such paths (and anything unusual) go through hyper and axum.
fn plain(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'/'))
}

/// Parses one complete request head. `Some` only for a body-less HTTP/1.1 `GET` of an
/// image or asset with a plain path; everything else is left to hyper. Pure.
pub fn parse_file_request(head: &[u8]) -> Option<FileRequest> {
    let mut raw = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut raw);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(n)) if n == head.len()) {
        return None;
    }
    if req.method != Some("GET") || req.version != Some(1) {
        return None;
    }
    let target = req.path?;
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let target_kind = if let Some(key) = path.strip_prefix("/images/") {
        (plain(key) && !key.contains('/')).then(|| Target::Image(key.to_string()))?
    } else if let Some(name) = path.strip_prefix("/assets/") {
        plain(name).then(|| Target::Asset(name.to_string()))?
    } else {
        return None;
    };
    let mut headers = HeaderMap::new();
    let mut close = false;
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        if name == header::TRANSFER_ENCODING
            || name == header::EXPECT
            || name == header::UPGRADE
            || (name == header::CONTENT_LENGTH && value != "0")
        {
            return None;
        }
        if name == header::CONNECTION {
            let v = value.to_str().ok()?.to_ascii_lowercase();
            close |= v.split(',').any(|t| t.trim() == "close");
        }
        headers.append(name, value);
    }
    Some(FileRequest {
        target: target_kind,
        uri: target.parse().ok()?,
        headers,
        close,
    })
}

/// Serves one accepted connection until the client closes it, an error, or `cancel`
/// (between requests; a response being sent is finished).
pub async fn connection(
    server: Arc<HttpServer>,
    router: Router,
    mut stream: TcpStream,
    cancel: CancellationToken,
) {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let head = tokio::select! {
            () = cancel.cancelled() => return,
            h = read_head(&mut stream, &mut buf) => h,
        };
        let len = match head {
            Ok(Some(len)) => len,
            Ok(None) => break,
            Err(_) => return,
        };
        let Some(req) = buf.get(..len).and_then(parse_file_request) else {
            break;
        };
        buf.advance(len);
        match answer(&server, &mut stream, req).await {
            Ok(true) => {}
            Ok(false) | Err(_) => return,
        }
    }
    // Not a file request (or not complete yet): hyper reads on from the bytes we have.
    hand_off(router, stream, buf.freeze(), cancel).await;
}

/// Reads until `buf` holds a complete head: `Ok(Some(len))`; `Ok(None)` when the head is
/// too large or the peer sent a partial head and closed (hyper answers or drops those).
/// An idle peer closing cleanly is `Err` (nothing to answer).
async fn read_head(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<Option<usize>> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(i + 4));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
        if stream.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Err(io::ErrorKind::UnexpectedEof.into())
            } else {
                Ok(None)
            };
        }
    }
}

/// Answers one file request; `Ok(true)` when the connection stays open.
async fn answer(server: &HttpServer, stream: &mut TcpStream, req: FileRequest) -> io::Result<bool> {
    let decided = match &req.target {
        Target::Image(key) => handlers::image_file(server, key, &req.headers),
        Target::Asset(name) => handlers::asset_file(server, name, &req.uri, &req.headers).await,
    };
    let route = route_label(req.uri.path());
    let served = server.metrics.bytes_served.clone();
    let status = match decided {
        Ok(reply) => {
            let status = reply.status;
            send_file(stream, reply, req.close, &served).await?;
            status
        }
        Err(resp) => {
            let status = resp.status();
            send_response(stream, *resp, req.close).await?;
            status
        }
    };
    server.metrics.request(route, status.as_u16());
    Ok(!req.close)
}

fn head(status: StatusCode, headers: &HeaderMap, close: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let reason = status.canonical_reason().unwrap_or("");
    out.extend_from_slice(format!("HTTP/1.1 {} {reason}\r\n", status.as_u16()).as_bytes());
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Sends the head, then the range with `sendfile(2)` whenever the socket can take more.
async fn send_file(
    stream: &mut TcpStream,
    reply: FileReply,
    close: bool,
    served: &Counter,
) -> io::Result<()> {
    stream
        .write_all(&head(reply.status, &reply.headers, close))
        .await?;
    let (mut offset, mut left) = (reply.start, reply.count);
    while left > 0 {
        stream.writable().await?;
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(1 << 30);
        let sent = stream.try_io(Interest::WRITABLE, || {
            rustix::fs::sendfile(stream.as_fd(), &reply.file, Some(&mut offset), want)
                .map_err(io::Error::from)
        });
        match sent {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank while it was being served",
                ));
            }
            Ok(n) => {
                left -= n as u64;
                served.inc_by(n as u64);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    drop(reply.guard);
    Ok(())
}

/// Sends a small non-file response (404, 416, 502, 503), its body collected first.
async fn send_response(stream: &mut TcpStream, resp: Response, close: bool) -> io::Result<()> {
    let (parts, body) = resp.into_parts();
    let body = axum::body::to_bytes(body, MAX_ERROR_BODY)
        .await
        .map_err(io::Error::other)?;
    let mut headers = parts.headers;
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let mut out = head(parts.status, &headers, close);
    out.extend_from_slice(&body);
    stream.write_all(&out).await
}

/// Gives the connection to hyper with the axum router; graceful shutdown on `cancel`.
async fn hand_off(router: Router, stream: TcpStream, read: Bytes, cancel: CancellationToken) {
    let io = TokioIo::new(Prefixed {
        prefix: read,
        inner: stream,
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, TowerToHyperService::new(router));
    tokio::pin!(conn);
    tokio::select! {
        r = &mut conn => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        }
        () = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A TCP stream whose first reads return bytes already read from it.
struct Prefixed {
    prefix: Bytes,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = buf.remaining().min(this.prefix.len());
            buf.put_slice(this.prefix.get(..n).unwrap_or_default());
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Option<FileRequest> {
        parse_file_request(s.as_bytes())
    }

    #[test]
    fn only_plain_file_gets_take_the_zero_copy_path() {
        let r =
            parse("GET /images/sha256-ab HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n").unwrap();
        assert_eq!(r.target, Target::Image("sha256-ab".into()));
        assert_eq!(r.headers[header::RANGE], "bytes=0-9");
        assert!(!r.close);
        let r = parse("GET /assets/aarch64/vmlinuz?mac=3c-ec-ef-12-34-56 HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        assert_eq!(r.target, Target::Asset("aarch64/vmlinuz".into()));
        assert_eq!(r.uri.query(), Some("mac=3c-ec-ef-12-34-56"));
        assert!(r.close);
        assert!(parse("GET /assets/x HTTP/1.1\r\nContent-Length: 0\r\n\r\n").is_some());
        for other in [
            "HEAD /images/sha256-ab HTTP/1.1\r\n\r\n",
            "POST /assets/x HTTP/1.1\r\n\r\n",
            "GET /assets/x HTTP/1.0\r\n\r\n",
            "GET /boot/3c-ec-ef-12-34-56.ipxe HTTP/1.1\r\n\r\n",
            "GET /assets/%2e%2e/secret HTTP/1.1\r\n\r\n",
            "GET /images/a/b HTTP/1.1\r\n\r\n",
            "GET /images/ HTTP/1.1\r\n\r\n",
            "GET /assets/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /assets/x HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
            "GET /assets/x HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET /assets/x HTTP/1.1\r\n",
        ] {
            assert_eq!(parse(other), None, "{other:?}");
        }
    }

    #[test]
    fn heads_are_written_like_hyper_writes_them() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(10u64));
        let out = head(StatusCode::PARTIAL_CONTENT, &h, true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 206 Partial Content\r\ncontent-length: 10\r\nconnection: close\r\n\r\n"
        );
    }
}
