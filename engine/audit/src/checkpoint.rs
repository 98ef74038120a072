//! Signed checkpoints: the journal's proof of its own tail.
//!
//! The hash chain shows that no record was changed *between* two others; it cannot show that
//! the tail is whole. Every [`CHECKPOINT_EVERY`] records, every few seconds while records
//! arrive, when the engine opens a journal and when it stops, the writer appends a
//! `checkpoint` record: an Ed25519 signature over "the chain had `covers` records ending in
//! hash `head`" ([`checkpoint_message`]). The newest checkpoint is also kept in the journal's
//! *head file* (`<stem>.head`, replaced atomically) and, with NATS, published on the audit
//! stream. So:
//!
//! - a rewritten record (even with every later hash recomputed) breaks the next checkpoint's
//!   signature or its `head`;
//! - a removed or cut-off tail loses a checkpoint the head file still vouches for;
//! - a record appended to a stopped engine's journal follows a checkpoint marked `last`.
//!
//! The key ([`SigningKey`]) is generated on first start (`<stem>.key`, mode 0600, PKCS#8) with
//! its public half beside it (`<stem>.pub`, hex). Copy the public key somewhere the engine's
//! host cannot write and pass it to `firebreak audit verify --key`.

use std::io::Write;
use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::journal::AuditError;

/// Records between two checkpoints, at most.
pub const CHECKPOINT_EVERY: u64 = 1000;

/// What a checkpoint's signature covers.
pub fn checkpoint_message(covers: u64, head: &str, last: bool) -> Vec<u8> {
    format!("firebreak-audit-checkpoint/v1\n{covers}\n{head}\n{last}\n").into_bytes()
}

/// Whether `signature` (hex) is `public_key`'s (hex) Ed25519 signature of the checkpoint.
pub fn signature_holds(
    public_key: &str,
    covers: u64,
    head: &str,
    last: bool,
    signature: &str,
) -> bool {
    let (Some(key), Some(signature)) = (from_hex(public_key), from_hex(signature)) else {
        return false;
    };
    UnparsedPublicKey::new(&ED25519, key)
        .verify(&checkpoint_message(covers, head, last), &signature)
        .is_ok()
}

/// The journal's Ed25519 signing key.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public_hex: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("public", &self.public_hex)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Loads the key at `path` (hex of a PKCS#8 v2 document), or generates one there (mode
    /// 0600) with its public key at `path` with extension `pub`. Returns the key and whether
    /// it was created.
    pub fn load_or_create(path: &Path) -> Result<(SigningKey, bool), AuditError> {
        let err = |reason: String| AuditError::Key {
            path: path.to_owned(),
            reason,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let der = from_hex(text.trim())
                    .ok_or_else(|| err("not a hex-encoded PKCS#8 document".into()))?;
                let pair = Ed25519KeyPair::from_pkcs8(&der)
                    .map_err(|e| err(format!("not an Ed25519 PKCS#8 key: {e}")))?;
                Ok((SigningKey::from_pair(pair), false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                    .map_err(|e| err(format!("cannot generate a key: {e}")))?;
                let pair = Ed25519KeyPair::from_pkcs8(der.as_ref())
                    .map_err(|e| err(format!("generated key does not load: {e}")))?;
                let key = SigningKey::from_pair(pair);
                write_private(path, &to_hex(der.as_ref())).map_err(|e| err(e.to_string()))?;
                std::fs::write(public_key_path(path), format!("{}\n", key.public_hex))
                    .map_err(|e| err(format!("cannot write the public key: {e}")))?;
                Ok((key, true))
            }
            Err(e) => Err(err(e.to_string())),
        }
    }

    fn from_pair(pair: Ed25519KeyPair) -> SigningKey {
        let public_hex = to_hex(pair.public_key().as_ref());
        SigningKey { pair, public_hex }
    }

    /// The public key, hex.
    pub fn public_hex(&self) -> &str {
        &self.public_hex
    }

    /// Signs the checkpoint (hex).
    pub fn sign(&self, covers: u64, head: &str, last: bool) -> String {
        to_hex(
            self.pair
                .sign(&checkpoint_message(covers, head, last))
                .as_ref(),
        )
    }
}

/// `<stem>.pub` beside a key at `<stem>.key`.
pub fn public_key_path(key: &Path) -> PathBuf {
    key.with_extension("pub")
}

/// Reads a public key given as hex or as a file holding it.
pub fn read_public_key(key: &str) -> Result<String, String> {
    let text = if from_hex(key.trim()).is_some_and(|k| k.len() == 32) {
        key.to_owned()
    } else {
        std::fs::read_to_string(key).map_err(|e| format!("cannot read public key {key}: {e}"))?
    };
    let text = text.trim().to_owned();
    match from_hex(&text) {
        Some(bytes) if bytes.len() == 32 => Ok(text),
        _ => Err(format!("{key}: not an Ed25519 public key (64 hex digits)")),
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// Replaces the file at `path` with `bytes`, atomically (the head file, the carried index).
pub(crate) fn write_atomic(path: &Path, line: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(line)?;
    file.sync_data()?;
    std::fs::rename(&tmp, path)
}

pub fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Bytes first, checked as text once: a `char` pushed at a time cost each record's hash
    // about 700 instructions.
    let mut out = vec![0; bytes.len() * 2];
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0x0f)];
    }
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// Bytes from lowercase or uppercase hex (`None` if it is not hex).
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_two_digits_a_byte_and_reads_back() {
        let bytes: Vec<u8> = (0..=255).collect();
        let hex = to_hex(&bytes);
        assert_eq!(&hex[..8], "00010203");
        assert_eq!(&hex[hex.len() - 8..], "fcfdfeff");
        assert_eq!(
            hex,
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        assert_eq!(from_hex(&hex), Some(bytes));
        assert_eq!(to_hex(&[]), "");
    }

    #[test]
    fn a_signature_holds_only_for_what_was_signed_and_by_whom() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.key");
        let (key, created) = SigningKey::load_or_create(&path).unwrap();
        assert!(created);
        let (again, created) = SigningKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(key.public_hex(), again.public_hex());
        let public = read_public_key(public_key_path(&path).to_str().unwrap()).unwrap();
        assert_eq!(public, key.public_hex());
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );

        let sig = key.sign(41, "ab", false);
        assert!(signature_holds(&public, 41, "ab", false, &sig));
        assert!(!signature_holds(&public, 42, "ab", false, &sig));
        assert!(!signature_holds(&public, 41, "ac", false, &sig));
        assert!(!signature_holds(&public, 41, "ab", true, &sig));
        let other = SigningKey::load_or_create(&dir.path().join("other.key"))
            .unwrap()
            .0;
        assert!(!signature_holds(other.public_hex(), 41, "ab", false, &sig));
        assert!(!signature_holds(&public, 41, "ab", false, "zz"));

        std::fs::write(&path, "not hex\n").unwrap();
        let err = SigningKey::load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("hex-encoded PKCS#8"), "{err}");
    }
}
