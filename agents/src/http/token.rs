//! Per-machine bearer tokens of the machine API: derived, never stored.
//!
//! `token = base64url(HMAC-SHA256(agent secret, "ironpool-machine-token/v1|<mac>|<attempt>"))`.
//! Any agent holding the secret verifies any token, and a token dies with its boot intent
//! attempt: once the operator issues attempt n+1, the ramdisk of attempt n is refused.
//! Attempt 0 is reserved for enlistment (operator attempts start at 1): an unknown MAC's
//! enlistment ramdisk gets the attempt-0 token, which is honoured only while no Machine has
//! that MAC.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;

use super::{HttpError, MacAddr};

/// The attempt number of enlistment tokens (unknown MACs).
pub const ENLIST_ATTEMPT: i64 = 0;

/// The agent secret, ready to derive and verify tokens.
#[derive(Clone, Debug)]
pub struct TokenKey {
    key: hmac::Key,
}

impl TokenKey {
    /// A key from the agent secret (at least 32 bytes, e.g. from a Kubernetes Secret shared
    /// by all agents).
    pub fn new(secret: &[u8]) -> Result<Self, HttpError> {
        if secret.len() < 32 {
            return Err(HttpError::Config(format!(
                "the agent token secret has {} bytes; it needs at least 32 random bytes",
                secret.len()
            )));
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        })
    }

    /// The token of `mac` for boot intent `attempt`.
    pub fn derive(&self, mac: &MacAddr, attempt: i64) -> String {
        let tag = hmac::sign(&self.key, message(mac, attempt).as_bytes());
        URL_SAFE_NO_PAD.encode(tag.as_ref())
    }

    /// Whether `token` is the token of `mac` for `attempt`, compared in constant time.
    pub fn verify(&self, mac: &MacAddr, attempt: i64, token: &str) -> bool {
        self.verify_message(&message(mac, attempt), token)
    }

    /// The check-in token of the OS that Deploy attempt `attempt` wrote onto `mac`'s disk
    /// (in its cloud-init meta-data). A different message from the ramdisk token's, so the
    /// deployed OS, which keeps its seed, cannot act as a ramdisk.
    pub fn derive_os(&self, mac: &MacAddr, attempt: i64) -> String {
        let tag = hmac::sign(&self.key, os_message(mac, attempt).as_bytes());
        URL_SAFE_NO_PAD.encode(tag.as_ref())
    }

    /// Whether `token` is the OS check-in token of `mac` for Deploy attempt `attempt`.
    pub fn verify_os(&self, mac: &MacAddr, attempt: i64, token: &str) -> bool {
        self.verify_message(&os_message(mac, attempt), token)
    }

    fn verify_message(&self, message: &str, token: &str) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(token.trim()) else {
            return false;
        };
        hmac::verify(&self.key, message.as_bytes(), &tag).is_ok()
    }
}

fn message(mac: &MacAddr, attempt: i64) -> String {
    format!("ironpool-machine-token/v1|{mac}|{attempt}")
}

fn os_message(mac: &MacAddr, attempt: i64) -> String {
    format!("ironpool-os-token/v1|{mac}|{attempt}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> TokenKey {
        TokenKey::new(&[byte; 32]).unwrap()
    }

    const MAC: MacAddr = MacAddr([0x3c, 0xec, 0xef, 0x12, 0x34, 0x56]);

    #[test]
    fn derived_token_verifies_only_for_its_mac_attempt_and_secret() {
        let token = key(1).derive(&MAC, 3);
        assert!(key(1).verify(&MAC, 3, &token));
        assert!(!key(1).verify(&MAC, 4, &token), "next attempt");
        assert!(!key(1).verify(&MAC, 2, &token), "previous attempt");
        assert!(!key(2).verify(&MAC, 3, &token), "other secret");
        assert!(!key(1).verify(&MacAddr([0x3c, 0xec, 0xef, 0x12, 0x34, 0x57]), 3, &token));
        assert!(!key(1).verify(&MAC, 3, "not base64 !!"));
        assert!(!key(1).verify(&MAC, 3, ""));
        assert!(!key(1).verify(&MAC, 3, &token[..token.len() - 2]));
    }

    #[test]
    fn tokens_are_stable_url_safe_and_short() {
        let a = key(7).derive(&MAC, 1);
        assert_eq!(
            a,
            key(7).derive(&MAC, 1),
            "any agent with the secret derives the same"
        );
        assert_eq!(a.len(), 43);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }

    #[test]
    fn os_tokens_differ_from_ramdisk_tokens() {
        let os = key(1).derive_os(&MAC, 3);
        assert!(key(1).verify_os(&MAC, 3, &os));
        assert!(
            !key(1).verify(&MAC, 3, &os),
            "an OS token is no ramdisk token"
        );
        assert!(!key(1).verify_os(&MAC, 3, &key(1).derive(&MAC, 3)));
        assert!(!key(1).verify_os(&MAC, 4, &os));
        assert!(!key(2).verify_os(&MAC, 3, &os));
    }

    #[test]
    fn short_secret_is_refused_with_advice() {
        let err = TokenKey::new(b"short").unwrap_err().to_string();
        assert!(err.contains("at least 32"), "{err}");
    }
}
