//! TFTP packet parsing and encoding (RFC 1350, OACK from RFC 2347).

use super::TftpError;

/// TFTP error codes (RFC 1350, 2347).
pub mod code {
    /// Not defined, see message.
    pub const UNDEFINED: u16 = 0;
    /// File not found.
    pub const NOT_FOUND: u16 = 1;
    /// Access violation.
    pub const ACCESS: u16 = 2;
    /// Illegal TFTP operation.
    pub const ILLEGAL: u16 = 4;
    /// Unknown transfer ID.
    pub const UNKNOWN_TID: u16 = 5;
    /// Option negotiation refused.
    pub const OPTIONS: u16 = 8;
}

/// A parsed packet. Data payloads borrow the datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Read request: file, mode, options (names lower-cased).
    Rrq {
        /// Requested file name.
        filename: String,
        /// Transfer mode (octet or netascii).
        mode: String,
        /// Options in request order.
        options: Vec<(String, String)>,
    },
    /// Write request (always refused).
    Wrq,
    /// Data block.
    Data(u16, &'a [u8]),
    /// Acknowledgement of a block.
    Ack(u16),
    /// Error.
    Error(u16, String),
    /// Option acknowledgement.
    Oack(Vec<(String, String)>),
}

fn strings(body: &[u8]) -> Result<Vec<String>, TftpError> {
    if body.last() != Some(&0) {
        return Err(TftpError::Malformed("strings not NUL-terminated"));
    }
    let inner = body.get(..body.len() - 1).unwrap_or(&[]);
    inner
        .split(|b| *b == 0)
        .map(|s| {
            String::from_utf8(s.to_vec()).map_err(|_| TftpError::Malformed("non-UTF-8 string"))
        })
        .collect()
}

fn pairs(fields: &[String]) -> Result<Vec<(String, String)>, TftpError> {
    if !fields.len().is_multiple_of(2) {
        return Err(TftpError::Malformed("option without value"));
    }
    Ok(fields
        .chunks(2)
        .map(|c| (c[0].to_ascii_lowercase(), c[1].clone()))
        .collect())
}

/// Parses a datagram.
pub fn parse(buf: &[u8]) -> Result<Packet<'_>, TftpError> {
    let (op, body) = match buf {
        [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]), rest),
        _ => return Err(TftpError::Malformed("shorter than an opcode")),
    };
    let block = || -> Result<u16, TftpError> {
        match body {
            [a, b, ..] => Ok(u16::from_be_bytes([*a, *b])),
            _ => Err(TftpError::Malformed("no block number")),
        }
    };
    match op {
        1 => {
            let f = strings(body)?;
            let (Some(filename), Some(mode)) = (f.first(), f.get(1)) else {
                return Err(TftpError::Malformed("request without file name and mode"));
            };
            Ok(Packet::Rrq {
                filename: filename.clone(),
                mode: mode.to_ascii_lowercase(),
                options: pairs(&f[2..])?,
            })
        }
        2 => Ok(Packet::Wrq),
        3 => Ok(Packet::Data(block()?, body.get(2..).unwrap_or(&[]))),
        4 => Ok(Packet::Ack(block()?)),
        5 => {
            let msg = strings(body.get(2..).unwrap_or(&[]))
                .ok()
                .and_then(|v| v.into_iter().next());
            Ok(Packet::Error(block()?, msg.unwrap_or_default()))
        }
        6 => Ok(Packet::Oack(pairs(&strings(body)?)?)),
        _ => Err(TftpError::Malformed("unknown opcode")),
    }
}

/// Appends a DATA packet header and payload to `out`.
pub fn data(out: &mut Vec<u8>, block: u16, payload: &[u8]) {
    out.extend_from_slice(&3u16.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
    out.extend_from_slice(payload);
}

/// An ERROR packet.
pub fn error(code: u16, msg: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 5);
    out.extend_from_slice(&5u16.to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(msg.as_bytes());
    out.push(0);
    out
}

/// An OACK packet.
pub fn oack(options: &[(String, String)]) -> Vec<u8> {
    let mut out = 6u16.to_be_bytes().to_vec();
    for (k, v) in options {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// An ACK packet (for clients in tests).
pub fn ack(block: u16) -> Vec<u8> {
    let mut out = 4u16.to_be_bytes().to_vec();
    out.extend_from_slice(&block.to_be_bytes());
    out
}

/// A read request (for clients in tests).
pub fn rrq(filename: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut out = 1u16.to_be_bytes().to_vec();
    for s in [filename, "octet"]
        .into_iter()
        .chain(options.iter().flat_map(|(k, v)| [*k, *v]))
    {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::type_complexity)]
mod tests {
    use super::*;

    #[test]
    fn parses_by_table() {
        let ok: Vec<(Vec<u8>, Packet<'_>)> = vec![
            (
                rrq("a/b.efi", &[("BLKSIZE", "1468"), ("tsize", "0")]),
                Packet::Rrq {
                    filename: "a/b.efi".into(),
                    mode: "octet".into(),
                    options: vec![
                        ("blksize".into(), "1468".into()),
                        ("tsize".into(), "0".into()),
                    ],
                },
            ),
            (ack(7), Packet::Ack(7)),
            (error(1, "x"), Packet::Error(1, "x".into())),
            (b"\x00\x02f\x00octet\x00".to_vec(), Packet::Wrq),
        ];
        for (bytes, want) in ok {
            assert_eq!(parse(&bytes).unwrap(), want);
        }
        let bad: Vec<&[u8]> = vec![
            b"",
            b"\x00",
            b"\x00\x01file",
            b"\x00\x01f\x00octet\x00blksize\x00",
            b"\x00\x09",
            b"\x00\x04\x01",
        ];
        for b in bad {
            assert!(parse(b).is_err(), "{b:?}");
        }
    }
}
