//! A small blocking HTTP/1.1 client over `std::net` for the machine API and image
//! downloads: plain http only (the agent URL is on the provisioning LAN), one connection per
//! request, `Content-Length` or chunked bodies, a read timeout on every socket. Kept in the
//! ramdisk instead of an async stack so the static binary stays small.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::MachineError;

/// How long a socket may stay silent before the call fails.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// An answer whose body has not been read yet.
pub struct Response {
    /// The status code.
    pub status: u16,
    /// `Retry-After` in seconds, if sent.
    pub retry_after: Option<u64>,
    /// `Content-Length`, if sent.
    pub content_length: Option<u64>,
    /// `Repr-Digest` (RFC 9530), if sent: the image cache's digests of the whole image.
    pub repr_digest: Option<String>,
    /// `Ironpool-Failure`, if sent: a failure another boot cannot fix.
    pub failure: Option<String>,
    /// The body.
    pub body: Body,
}

impl Response {
    /// Reads the whole body as text (at most 1 MiB).
    pub fn text(mut self) -> String {
        let mut buf = Vec::new();
        let _ = (&mut self.body).take(1 << 20).read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).trim().to_string()
    }
}

/// A response body: `Content-Length` bytes, chunked, or everything until the peer closes.
pub struct Body {
    reader: BufReader<TcpStream>,
    mode: Mode,
}

enum Mode {
    Length(u64),
    Chunked { left: u64, done: bool },
    Close,
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.mode {
            Mode::Close => self.reader.read(buf),
            Mode::Length(left) => {
                if *left == 0 {
                    return Ok(0);
                }
                let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                let n = self.reader.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("connection closed with {left} body bytes still to come"),
                    ));
                }
                *left -= n as u64;
                Ok(n)
            }
            Mode::Chunked { left, done } => {
                if *done {
                    return Ok(0);
                }
                if *left == 0 {
                    let size = read_chunk_size(&mut self.reader)?;
                    if size == 0 {
                        // Trailers end with an empty line.
                        loop {
                            let line = read_line(&mut self.reader)?;
                            if line.is_empty() {
                                break;
                            }
                        }
                        *done = true;
                        return Ok(0);
                    }
                    *left = size;
                }
                let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                let n = self.reader.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "connection closed inside a chunk",
                    ));
                }
                *left -= n as u64;
                if *left == 0 {
                    read_line(&mut self.reader)?;
                }
                Ok(n)
            }
        }
    }
}

fn read_line(r: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut line = String::new();
    let n = r.by_ref().take(8192).read_line(&mut line)?;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed in the HTTP headers",
        ));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn read_chunk_size(r: &mut BufReader<TcpStream>) -> std::io::Result<u64> {
    let line = read_line(r)?;
    let hex = line.split(';').next().unwrap_or("").trim();
    u64::from_str_radix(hex, 16).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad chunk size line '{line}'"),
        )
    })
}

/// Splits `http://host[:port]/path` into (`host:port`, `/path`).
pub fn split_url(url: &str) -> Result<(String, String), MachineError> {
    let bad = |why: &str| MachineError::Http {
        url: url.to_string(),
        message: why.to_string(),
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("only http:// URLs are supported in the ramdisk"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(bad("no host in the URL"));
    }
    let authority = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_string()))
}

/// Sends one request and reads the status line and headers.
pub fn request(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> Result<Response, MachineError> {
    let fail = |message: String| MachineError::Http {
        url: url.to_string(),
        message,
    };
    let (authority, path) = split_url(url)?;
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| fail(format!("resolve {authority}: {e}")))?
        .next()
        .ok_or_else(|| fail(format!("{authority} resolves to nothing")))?;
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(15))
        .map_err(|e| fail(format!("connect: {e}")))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .and_then(|()| stream.set_nodelay(true))
        .map_err(|e| fail(format!("socket options: {e}")))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
         User-Agent: ironpool-machine-agent\r\n"
    );
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let payload = body.map(|(ctype, bytes)| {
        head.push_str(&format!(
            "Content-Type: {ctype}\r\nContent-Length: {}\r\n",
            bytes.len()
        ));
        bytes
    });
    head.push_str("\r\n");
    let mut writer = &stream;
    writer
        .write_all(head.as_bytes())
        .and_then(|()| writer.write_all(payload.unwrap_or_default()))
        .map_err(|e| fail(format!("send: {e}")))?;
    let mut reader = BufReader::with_capacity(1 << 20, stream);
    read_head(&mut reader, method)
        .map_err(|e| fail(format!("read the answer: {e}")))
        .map(|head| Response {
            status: head.status,
            retry_after: head.retry_after,
            content_length: head.length,
            repr_digest: head.repr_digest,
            failure: head.failure,
            body: Body {
                reader,
                mode: head.mode,
            },
        })
}

/// A parsed status line and the headers this client uses.
struct Head {
    status: u16,
    retry_after: Option<u64>,
    length: Option<u64>,
    repr_digest: Option<String>,
    failure: Option<String>,
    mode: Mode,
}

fn read_head(r: &mut BufReader<TcpStream>, method: &str) -> std::io::Result<Head> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let status_line = read_line(r)?;
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|s| s.get(2..5))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| invalid(format!("not an HTTP/1.x status line: '{status_line}'")))?;
    let (mut retry_after, mut length, mut chunked) = (None, None, false);
    let (mut repr_digest, mut failure) = (None, None);
    loop {
        let line = read_line(r)?;
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                length = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| invalid(format!("bad Content-Length '{value}'")))?,
                );
            }
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "retry-after" => retry_after = value.parse().ok(),
            crate::http::reprdigest::NAME => repr_digest = Some(value.to_string()),
            crate::http::api::FAILURE_HEADER => failure = Some(value.to_string()),
            _ => {}
        }
    }
    let mode = if method == "HEAD" || status == 204 || status == 304 {
        Mode::Length(0)
    } else if chunked {
        Mode::Chunked {
            left: 0,
            done: false,
        }
    } else if let Some(n) = length {
        Mode::Length(n)
    } else {
        Mode::Close
    };
    Ok(Head {
        status,
        retry_after,
        length,
        repr_digest,
        failure,
        mode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Serves `answers` (raw HTTP responses) one connection each; returns the base URL.
    fn serve(answers: Vec<&'static str>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for answer in answers {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).unwrap();
                s.write_all(answer.as_bytes()).unwrap();
            }
        });
        base
    }

    #[test]
    fn reads_length_chunked_and_close_delimited_bodies() {
        let base = serve(vec![
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nRepr-Digest: sha-256=:AA==:\r\n\r\nhello-extra",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            "HTTP/1.0 503 Service Unavailable\r\nRetry-After: 5\r\n\r\nfetching",
        ]);
        let r = request("GET", &format!("{base}/a"), Some("t"), None).unwrap();
        assert_eq!((r.status, r.content_length), (200, Some(5)));
        assert_eq!(r.repr_digest.as_deref(), Some("sha-256=:AA==:"));
        assert_eq!(r.text(), "hello");
        let r = request("GET", &format!("{base}/b"), None, None).unwrap();
        assert_eq!(r.repr_digest, None);
        assert_eq!(r.text(), "abcde");
        let r = request(
            "POST",
            &format!("{base}/c"),
            None,
            Some(("text/plain", b"x")),
        )
        .unwrap();
        assert_eq!((r.status, r.retry_after), (503, Some(5)));
        assert_eq!(r.text(), "fetching");
    }

    #[test]
    fn a_short_body_is_an_error_not_a_short_read() {
        let base = serve(vec!["HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"]);
        let mut r = request("GET", &format!("{base}/a"), None, None).unwrap();
        let mut out = Vec::new();
        let err = r.body.read_to_end(&mut out).unwrap_err();
        assert!(
            err.to_string().contains("7 body bytes still to come"),
            "{err}"
        );
    }

    #[test]
    fn urls_split_and_bad_ones_are_named() {
        assert_eq!(
            split_url("http://10.0.2.2:8080/api/v1").unwrap(),
            ("10.0.2.2:8080".into(), "/api/v1".into())
        );
        assert_eq!(split_url("http://h").unwrap(), ("h:80".into(), "/".into()));
        assert!(
            split_url("https://h/")
                .unwrap_err()
                .to_string()
                .contains("only http://")
        );
    }
}
