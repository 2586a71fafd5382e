//! HTTP/1.1 for the boot storm: a client (one connection per request from the simulated
//! server's own address, `Connection: close`, as iPXE and the ramdisk's machine agent do)
//! and the small request reader the simulated BMCs use.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;

/// An answer: status, `Retry-After`, the body (kept only up to `keep` bytes) and its size.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// `Retry-After` seconds.
    pub retry_after: Option<u64>,
    /// The first bytes of the body.
    pub body: Vec<u8>,
    /// Body bytes received.
    pub len: u64,
}

impl Answer {
    /// The kept body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Splits `http://host:port/path` into the address and the path.
pub fn split(url: &str) -> Result<(SocketAddr, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("not an http:// URL: {url}"))?;
    let (auth, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if auth.contains(':') {
        auth.parse()?
    } else {
        SocketAddr::V4(SocketAddrV4::new(auth.parse()?, 80))
    };
    Ok((addr, path.to_string()))
}

/// Sends one request from `local` and reads the whole answer.
pub async fn request(
    local: Ipv4Addr,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
    keep: usize,
) -> Result<Answer> {
    let (addr, path) = split(url)?;
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::V4(SocketAddrV4::new(local, 0)))?;
    sock.set_nodelay(true)?;
    let mut stream = sock
        .connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: ironpool-boot-storm\r\n"
    );
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    if let Some(b) = body {
        stream.write_all(b).await?;
    }
    let mut r = BufReader::with_capacity(1 << 16, stream);
    let (status, headers) = read_head(&mut r).await?;
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let length: Option<u64> = header("content-length").and_then(|v| v.parse().ok());
    if header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        bail!("{url}: chunked answers are not expected here");
    }
    let retry_after = header("retry-after").and_then(|v| v.parse().ok());
    let mut body = Vec::new();
    let mut len = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    let no_body = method == "HEAD" || status == 204 || status == 304;
    while !no_body && length.is_none_or(|l| len < l) {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            if let Some(l) = length {
                bail!("{url}: closed after {len} of {l} body bytes");
            }
            break;
        }
        len += n as u64;
        let room = keep.saturating_sub(body.len()).min(n);
        body.extend_from_slice(&buf[..room]);
    }
    Ok(Answer {
        status,
        retry_after,
        body,
        len,
    })
}

/// Reads a status or request line and the headers.
pub async fn read_head<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
) -> Result<(u16, Vec<(String, String)>)> {
    use tokio::io::AsyncBufReadExt;
    let mut first = String::new();
    if r.read_line(&mut first).await? == 0 {
        bail!("connection closed before the head");
    }
    let status = first
        .strip_prefix("HTTP/1.")
        .and_then(|s| s.get(2..5))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut headers = vec![("".to_string(), first.trim_end().to_string())];
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            bail!("connection closed in the headers");
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok((status, headers))
}
