//! Serving files: confinement of request paths to a directory, single-range `Range`
//! parsing (pure, table-tested) and a streaming file body read with positioned reads.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;

/// Bytes read per chunk of a response body.
const CHUNK: usize = 512 * 1024;

/// What a `Range` header asks of a file of a given length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeSpec {
    /// No (usable) range: the whole file, 200.
    Full,
    /// Bytes `start..=end`, 206.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// The range lies outside the file, 416.
    Unsatisfiable,
}

/// Parses a `Range` header against a file of `len` bytes. Multiple ranges and malformed
/// headers are ignored (the whole file is served), as RFC 9110 allows.
pub fn parse_range(header: Option<&str>, len: u64) -> RangeSpec {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeSpec::Full;
    };
    if spec.contains(',') {
        return RangeSpec::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeSpec::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        return match b.parse::<u64>() {
            Ok(0) => RangeSpec::Unsatisfiable,
            Ok(_) if len == 0 => RangeSpec::Unsatisfiable,
            Ok(n) => RangeSpec::Partial {
                start: len.saturating_sub(n),
                end: len - 1,
            },
            Err(_) => RangeSpec::Full,
        };
    }
    let Ok(start) = a.parse::<u64>() else {
        return RangeSpec::Full;
    };
    let end = if b.is_empty() {
        u64::MAX
    } else {
        match b.parse::<u64>() {
            Ok(end) if end >= start => end,
            _ => return RangeSpec::Full,
        }
    };
    if start >= len {
        return RangeSpec::Unsatisfiable;
    }
    RangeSpec::Partial {
        start,
        end: end.min(len - 1),
    }
}

/// `name` (a request path below a served directory) as a relative path, or `None` if it
/// could leave the directory: `..`, absolute paths, backslashes, NUL, empty segments.
pub fn confined(name: &str) -> Option<PathBuf> {
    if name.is_empty() || name.contains(['\\', '\0']) || name.starts_with('/') {
        return None;
    }
    let mut out = PathBuf::new();
    for segment in name.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return None;
        }
        out.push(segment);
    }
    let normal = out.components().all(|c| matches!(c, Component::Normal(_)));
    normal.then_some(out)
}

/// Opens `root/name` if it is a regular file that (after resolving symlinks) lies inside
/// `root`. `None` for anything else, so escapes look like "not found".
pub fn open_confined(root: &Path, name: &str) -> Option<(File, u64)> {
    let rel = confined(name)?;
    let root = root.canonicalize().ok()?;
    let path = root.join(rel).canonicalize().ok()?;
    if !path.starts_with(&root) {
        return None;
    }
    let file = File::open(&path).ok()?;
    let meta = file.metadata().ok()?;
    meta.is_file().then_some((file, meta.len()))
}

/// A file answer decided but not yet sent: status 200 or 206, the byte range, and a guard
/// held until the body is finished (the image cache counts readers with it). Sent either
/// as a streaming body through hyper ([`FileReply::into_response`]) or with `sendfile`
/// by the zero-copy connection path (`http::zerocopy`).
pub struct FileReply {
    /// The open file.
    pub file: File,
    /// 200 (whole file) or 206 (one range).
    pub status: StatusCode,
    /// First byte sent.
    pub start: u64,
    /// Bytes sent.
    pub count: u64,
    /// Response headers (length, type, ranges).
    pub headers: HeaderMap,
    /// Held until the body is sent or dropped.
    pub guard: Box<dyn std::any::Any + Send + Sync>,
}

/// Decides the answer for `file` of `len` bytes honouring `Range`: a [`FileReply`], or the
/// 416 response for a range outside the file.
pub fn file_reply<G: Send + Sync + 'static>(
    file: File,
    len: u64,
    headers: &HeaderMap,
    guard: G,
) -> Result<FileReply, Box<Response>> {
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, count) = match parse_range(range, len) {
        RangeSpec::Full => (StatusCode::OK, 0, len),
        RangeSpec::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        RangeSpec::Unsatisfiable => {
            let mut resp = (
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range outside the file\n",
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Err(Box::new(resp));
        }
    };
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        let end = start + count - 1;
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(FileReply {
        file,
        status,
        start,
        count,
        headers: h,
        guard: Box::new(guard),
    })
}

impl FileReply {
    /// A response streaming the range read in chunks; `served` counts body bytes.
    pub fn into_response(self, served: Counter) -> Response {
        let FileReply {
            file,
            status,
            start,
            count,
            headers,
            guard,
        } = self;
        let body = Body::from_stream(file_stream(Arc::new(file), start, count, guard, served));
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        resp
    }
}

/// `GET /boot/<file>` for anything but a `<mac>.ipxe` script: an iPXE binary from `dir`
/// (the TFTP root) for UEFI HTTP boot firmware, which DHCP offers
/// `<base>/boot/ipxe.efi`. The same confinement as TFTP ([`crate::tftp::root::resolve`]),
/// so Debian's `/usr/lib/ipxe/ipxe.efi -> /boot/ipxe.efi` is served over both protocols.
pub async fn boot_file(
    dir: Option<&Path>,
    name: &str,
    headers: &HeaderMap,
    served: Counter,
) -> Response {
    use crate::tftp::TftpError;
    let text = |status: StatusCode, msg: String| {
        let headers = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
        (status, headers, msg + "\n").into_response()
    };
    let Some(dir) = dir.map(Path::to_path_buf) else {
        let msg = format!(
            "'{name}' is not <mac>.ipxe and this agent serves no iPXE binaries over HTTP; \
             ask for e.g. /boot/3c-ec-ef-12-34-56.ipxe"
        );
        return text(StatusCode::NOT_FOUND, msg);
    };
    let lookup = name.to_string();
    let opened = tokio::task::spawn_blocking(move || {
        let root = dir.canonicalize().map_err(|source| TftpError::Io {
            what: format!("open the iPXE directory {}", dir.display()),
            source,
        })?;
        let path = crate::tftp::root::resolve(&root, &lookup)?;
        let file = File::open(&path).map_err(|source| TftpError::Io {
            what: format!("open {}", path.display()),
            source,
        })?;
        let len = file
            .metadata()
            .map_err(|source| TftpError::Io {
                what: format!("stat {}", path.display()),
                source,
            })?
            .len();
        Ok::<_, TftpError>((file, len))
    })
    .await;
    match opened {
        Ok(Ok((file, len))) => match file_reply(file, len, headers, ()) {
            Ok(reply) => reply.into_response(served),
            Err(resp) => *resp,
        },
        Ok(Err(TftpError::NotFound(_))) => text(
            StatusCode::NOT_FOUND,
            format!(
                "no iPXE binary '{name}' in this agent's iPXE directory (--tftp-root); \
                 scripts are /boot/<mac>.ipxe"
            ),
        ),
        Ok(Err(e @ TftpError::AccessViolation(_))) => text(StatusCode::FORBIDDEN, e.to_string()),
        Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

struct StreamState<G> {
    file: Arc<File>,
    pos: u64,
    left: u64,
    _guard: G,
    served: Counter,
}

fn file_stream<G: Send + Sync + 'static>(
    file: Arc<File>,
    start: u64,
    count: u64,
    guard: G,
    served: Counter,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let state = StreamState {
        file,
        pos: start,
        left: count,
        _guard: guard,
        served,
    };
    futures::stream::try_unfold(state, |mut st| async move {
        if st.left == 0 {
            return Ok(None);
        }
        let want = usize::try_from(st.left).unwrap_or(CHUNK).min(CHUNK);
        let (file, pos) = (Arc::clone(&st.file), st.pos);
        let chunk = tokio::task::spawn_blocking(move || read_chunk(&file, pos, want))
            .await
            .map_err(std::io::Error::other)??;
        st.pos += chunk.len() as u64;
        st.left -= chunk.len() as u64;
        st.served.inc_by(chunk.len() as u64);
        Ok(Some((chunk, st)))
    })
}

fn read_chunk(file: &File, pos: u64, want: usize) -> std::io::Result<Bytes> {
    let mut buf = vec![0u8; want];
    let mut filled = 0;
    while filled < want {
        let n = file.read_at(&mut buf[filled..], pos + filled as u64)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "file shrank while it was being served",
            ));
        }
        filled += n;
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_table() {
        use RangeSpec::*;
        let p = |start, end| Partial { start, end };
        let table: &[(Option<&str>, u64, RangeSpec)] = &[
            (None, 100, Full),
            (Some("bytes=0-9"), 100, p(0, 9)),
            (Some("bytes=10-"), 100, p(10, 99)),
            (Some("bytes=-10"), 100, p(90, 99)),
            (Some("bytes=-500"), 100, p(0, 99)),
            (Some("bytes=90-500"), 100, p(90, 99)),
            (Some("bytes=99-99"), 100, p(99, 99)),
            (Some("bytes=100-"), 100, Unsatisfiable),
            (Some("bytes=-0"), 100, Unsatisfiable),
            (Some("bytes=0-"), 0, Unsatisfiable),
            (Some("bytes=-5"), 0, Unsatisfiable),
            (Some("bytes=5-2"), 100, Full),
            (Some("bytes=0-1,5-6"), 100, Full),
            (Some("items=0-1"), 100, Full),
            (Some("bytes=x-1"), 100, Full),
            (Some("bytes=1-x"), 100, Full),
            (Some("bytes=-"), 100, Full),
        ];
        for (h, len, want) in table {
            assert_eq!(parse_range(*h, *len), *want, "{h:?} of {len}");
        }
    }

    #[test]
    fn escapes_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a\\..\\b",
            "a\0",
            "a/..",
        ] {
            assert_eq!(confined(bad), None, "{bad:?}");
        }
        assert_eq!(
            confined("aarch64/vmlinuz"),
            Some(PathBuf::from("aarch64/vmlinuz"))
        );
        assert_eq!(confined("..hidden"), Some(PathBuf::from("..hidden")));
    }

    #[test]
    fn symlinks_out_of_the_root_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("vmlinuz"), b"kernel").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("link"))
            .unwrap();
        std::fs::create_dir(root.path().join("sub")).unwrap();
        assert!(open_confined(root.path(), "vmlinuz").is_some());
        assert!(open_confined(root.path(), "link").is_none());
        assert!(
            open_confined(root.path(), "sub").is_none(),
            "directories are not served"
        );
        assert!(open_confined(root.path(), "missing").is_none());
    }
}
