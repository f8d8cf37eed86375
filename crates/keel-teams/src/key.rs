//! Virtual key secrets: 40 random base62 characters after `sk-keel-` (about 238 bits from the
//! operating system's generator), kept only as their SHA-256.

use sha2::{Digest, Sha256};

use crate::{Error, Result};

pub const SECRET_PREFIX: &str = "sk-keel-";
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const SECRET_CHARS: usize = 40;
/// Characters of the secret kept for display after the `sk-keel-` prefix.
const SHOWN_CHARS: usize = 6;

/// A freshly made key: the secret (shown to its owner once, never stored) and what is stored.
#[derive(Debug)]
pub struct NewKey {
    pub secret: String,
    pub id: String,
    pub prefix: String,
    pub hash: String,
}

fn random_bytes(n: usize) -> Result<Vec<u8>> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).map_err(|e| Error::Random(e.to_string()))?;
    Ok(bytes)
}

/// Makes a key: base62 characters drawn without bias (bytes ≥ 248 are drawn again).
pub fn new_key() -> Result<NewKey> {
    let mut secret = String::from(SECRET_PREFIX);
    while secret.len() < SECRET_PREFIX.len() + SECRET_CHARS {
        for byte in random_bytes(64)? {
            if byte < 248 && secret.len() < SECRET_PREFIX.len() + SECRET_CHARS {
                secret.push(ALPHABET[usize::from(byte % 62)] as char);
            }
        }
    }
    let id = format!("key_{}", keel_core::hex(&random_bytes(8)?));
    let prefix = secret[..SECRET_PREFIX.len() + SHOWN_CHARS].to_string();
    let hash = hash_secret(&secret);
    Ok(NewKey { secret, id, prefix, hash })
}

/// The SHA-256 of a presented secret, in hex: what the store and the directory look up.
pub fn hash_secret(secret: &str) -> String {
    keel_core::hex(&Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_distinct_base62_and_stored_only_as_a_hash() {
        let a = new_key().unwrap();
        let b = new_key().unwrap();
        assert_ne!(a.secret, b.secret);
        assert_ne!(a.id, b.id);
        assert_eq!(a.secret.len(), SECRET_PREFIX.len() + SECRET_CHARS);
        assert!(a.secret[SECRET_PREFIX.len()..].bytes().all(|c| c.is_ascii_alphanumeric()));
        assert!(a.secret.starts_with(&a.prefix) && a.prefix.len() == 14);
        assert_eq!(a.hash, hash_secret(&a.secret));
        assert_eq!(a.hash.len(), 64);
        assert!(!a.hash.contains(&a.secret[8..]));
    }
}
