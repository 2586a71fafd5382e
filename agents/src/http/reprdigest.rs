//! The `Repr-Digest` response field (RFC 9530) that the image cache sends with every image:
//! the SHA-256 and SHA-512 of the whole image, computed in the same pass that verified the
//! Deployment's declared checksum. The machine agent anchors the field to its plan (the
//! declared algorithm's value must equal the declared checksum) and then verifies the bytes
//! it writes with whichever of the two algorithms costs less on its CPU: SHA-256 where the
//! CPU has SHA instructions, SHA-512 (about 1.6x cheaper in software on 64-bit CPUs)
//! elsewhere.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::fetch::hex;

/// The field name.
pub const NAME: &str = "repr-digest";

/// `sha-256=:<base64>:, sha-512=:<base64>:` for two lower-case hex digests; `None` if
/// either is not hex of the right length.
pub fn format(sha256_hex: &str, sha512_hex: &str) -> Option<String> {
    let a = unhex(sha256_hex).filter(|b| b.len() == 32)?;
    let b = unhex(sha512_hex).filter(|b| b.len() == 64)?;
    Some(format!(
        "sha-256=:{}:, sha-512=:{}:",
        STANDARD.encode(a),
        STANDARD.encode(b)
    ))
}

/// The digests in a `Repr-Digest` value as `(algorithm, lower-case hex)`, with the
/// algorithm named as Deployments name it (`sha256`, `sha512`). Members with other
/// algorithms, parameters or bad encodings are skipped; a member of the wrong length for
/// its algorithm is skipped too.
pub fn parse(value: &str) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for member in value.split(',') {
        let Some((key, item)) = member.trim().split_once('=') else {
            continue;
        };
        let (algo, len) = match key.trim() {
            "sha-256" => ("sha256", 32),
            "sha-512" => ("sha512", 64),
            _ => continue,
        };
        let Some(b64) = item
            .trim()
            .strip_prefix(':')
            .and_then(|s| s.strip_suffix(':'))
        else {
            continue;
        };
        if let Ok(bytes) = STANDARD.decode(b64)
            && bytes.len() == len
        {
            out.push((algo, hex(&bytes)));
        }
    }
    out
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_both_digests() {
        let (a, b) = ("0f".repeat(32), "a1".repeat(64));
        let v = format(&a, &b).unwrap();
        assert!(v.starts_with("sha-256=:Dw8P"), "{v}");
        assert_eq!(
            parse(&v),
            vec![("sha256", a.clone()), ("sha512", b.clone())]
        );
        // Spacing, unknown algorithms and parameters as RFC 9530 peers may send them.
        let other = format!(
            "unixsum=:AAA=:,sha-512=:{}: , id-sha-256=:x:",
            STANDARD.encode(unhex(&b).unwrap())
        );
        assert_eq!(parse(&other), vec![("sha512", b.clone())]);
    }

    #[test]
    fn bad_members_are_skipped() {
        for bad in [
            "",
            "sha-256",
            "sha-256=abc",
            "sha-256=:not base64!:",
            "sha-256=:AAAA:",
            "sha-512=:Dw8PDw8PDw8PDw8PDw8PDw8PDw8PDw8PDw8PDw8PDw8=:",
        ] {
            assert!(parse(bad).is_empty(), "{bad}");
        }
        assert_eq!(format("abc", &"a1".repeat(64)), None);
        assert_eq!(format(&"zz".repeat(32), &"a1".repeat(64)), None);
        assert_eq!(format(&"0f".repeat(32), &"a1".repeat(32)), None);
    }
}
