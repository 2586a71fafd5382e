//! Random secrets for tests, the lab and the harness (BMC passwords, the agent's token
//! secret, Argo CD's server key, bearer tokens): the one place they are made, so none is a
//! constant in the code and all come from the operating system's CSPRNG (ring's
//! `SystemRandom`, already in the tree through rustls), not from a fast non-cryptographic
//! generator.

use anyhow::{Result, anyhow};
use ring::rand::{SecureRandom, SystemRandom};

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// `len` random ASCII letters and digits (about 5.95 bits each: 48 give 285 bits, more than
/// the 32 bytes the agent wants for its token secret); safe in a URL, a shell word, YAML,
/// an htpasswd line and an IPMI password.
pub fn random_secret(len: usize) -> Result<String> {
    let rng = SystemRandom::new();
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        rng.fill(&mut buf)
            .map_err(|_| anyhow!("the operating system's random number generator failed"))?;
        // Only bytes below the largest multiple of 62 keep every character equally likely.
        let limit = (256 / ALPHABET.len() * ALPHABET.len()) as u8;
        for b in buf.iter().filter(|&&b| b < limit) {
            if out.len() == len {
                break;
            }
            out.push(char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]));
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn secrets_have_the_length_and_alphabet_and_differ() {
        for len in [0, 1, 16, 48, 200] {
            let s = random_secret(len).unwrap();
            assert_eq!(s.len(), len);
            assert!(s.bytes().all(|b| ALPHABET.contains(&b)), "{s}");
        }
        assert_ne!(random_secret(32).unwrap(), random_secret(32).unwrap());
    }

    #[test]
    fn every_character_turns_up() {
        // 62 characters in 20,000 draws: each is expected ~320 times.
        let s = random_secret(20_000).unwrap();
        for &c in ALPHABET {
            let n = s.bytes().filter(|&b| b == c).count();
            assert!((150..600).contains(&n), "{} drawn {n} times", char::from(c));
        }
    }
}
