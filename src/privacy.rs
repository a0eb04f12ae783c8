//! Crypto-shredding of personal data.
//!
//! Each data subject (a user id, or the IP address of an anonymous actor) has a random 256-bit
//! data key. Personal fields of that subject's events are stored only as one AEAD ciphertext
//! (ChaCha20-Poly1305, the event id as associated data) under that key; the key itself is
//! stored wrapped by the master key. Erasing a subject destroys its wrapped key: every
//! ciphertext about it becomes noise, while the rows, their hashes and the hash chains stay
//! intact. Queries and rules group by keyed pseudonyms (HMAC-SHA256), never by plaintext.

use std::fmt;

use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hmac::{Hmac, Mac};
use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::ConfigError;

const NONCE_LEN: usize = 12;

/// A 256-bit secret read from configuration (base64 or hex). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(pub [u8; 32]);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl SecretKey {
    /// Parse 32 bytes given as base64 (standard or URL-safe) or 64 hex digits.
    pub fn parse(setting: &str, text: &str) -> Result<SecretKey, ConfigError> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
            hex::decode(text).ok()
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
                .ok()
        };
        match bytes {
            Some(b) if b.len() == 32 => {
                let mut k = [0u8; 32];
                k.copy_from_slice(&b);
                Ok(SecretKey(k))
            }
            _ => Err(ConfigError::new(
                setting,
                "must be 32 bytes, base64 or hex encoded (generate one with `auditflow keys generate`)",
            )),
        }
    }

    pub fn generate() -> SecretKey {
        let mut k = [0u8; 32];
        OsRng.fill_bytes(&mut k);
        SecretKey(k)
    }

    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }
}

/// The kind of data subject a pseudonym stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubjectKind {
    User,
    Ip,
    Session,
    /// Events naming no user, address or session: their personal fields share one key.
    Anonymous,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::User => "user",
            SubjectKind::Ip => "ip",
            SubjectKind::Session => "session",
            SubjectKind::Anonymous => "anonymous",
        }
    }
}

/// Failure to open a ciphertext: the subject was erased, or the data was altered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrivacyError {
    #[error("the data key was destroyed (subject erased)")]
    Erased,
    #[error("ciphertext or key is corrupt")]
    Corrupt,
}

/// Keyed pseudonym of a subject under the pseudonym key (see [`PrivacyKeys::pseudonym`]).
pub fn pseudonym(key: &SecretKey, kind: SubjectKind, id: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key.0).expect("HMAC accepts any key length");
    mac.update(kind.as_str().as_bytes());
    mac.update(b":");
    mac.update(id.as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..16])
}

/// Master key (wraps data keys) and pseudonym key (HMAC for searchable pseudonyms).
#[derive(Clone, Debug)]
pub struct PrivacyKeys {
    pub master: SecretKey,
    pub pseudonym: SecretKey,
}

impl PrivacyKeys {
    /// Keyed pseudonym of a subject: stable, searchable, meaningless without the key.
    pub fn pseudonym(&self, kind: SubjectKind, id: &str) -> String {
        pseudonym(&self.pseudonym, kind, id)
    }

    /// A fresh data key, and its form wrapped by the master key (what the database stores).
    pub fn new_data_key(&self, subject_pseudonym: &str) -> (SecretKey, Vec<u8>) {
        let key = SecretKey::generate();
        let wrapped = seal(&self.master, &key.0, subject_pseudonym.as_bytes());
        (key, wrapped)
    }

    pub fn unwrap_data_key(&self, subject_pseudonym: &str, wrapped: &[u8]) -> Result<SecretKey, PrivacyError> {
        let plain = open(&self.master, wrapped, subject_pseudonym.as_bytes())?;
        if plain.len() != 32 {
            return Err(PrivacyError::Corrupt);
        }
        let mut k = [0u8; 32];
        k.copy_from_slice(&plain);
        Ok(SecretKey(k))
    }
}

/// One of a subject's stored keys: `(generation, wrapped key, or none once erased)`.
pub type KeyRow = (i32, Option<Vec<u8>>);

/// What a stored row's sealed personal fields open to.
#[derive(Debug, Clone, PartialEq)]
pub enum Unsealed {
    /// Nothing was sealed (no personal field, or none configured as personal).
    Nothing,
    Fields(Box<PersonalFields>),
    /// The subject's data key is destroyed: the row stays as a fact, nobody can read who.
    Erased,
    /// The key or the ciphertext does not open (a wrong master key, or a damaged row).
    Unreadable,
}

/// Open the `personal` column of a row (`id` is the event id the ciphertext is bound to),
/// given the subject's key rows `(generation, wrapped key or none once erased)`.
pub fn unseal(
    keys: &PrivacyKeys,
    subject_pseudonym: &str,
    key_rows: &[KeyRow],
    generation: Option<i32>,
    sealed: Option<&[u8]>,
    id: &str,
) -> Unsealed {
    let (Some(sealed), Some(g)) = (sealed, generation) else { return Unsealed::Nothing };
    match key_rows.iter().find(|(kg, _)| *kg == g) {
        Some((_, Some(wrapped))) => match keys.unwrap_data_key(subject_pseudonym, wrapped).and_then(|k| open(&k, sealed, id.as_bytes())) {
            Ok(plain) => serde_json::from_slice(&plain).map(|f| Unsealed::Fields(Box::new(f))).unwrap_or(Unsealed::Unreadable),
            Err(_) => Unsealed::Unreadable,
        },
        _ => Unsealed::Erased,
    }
}

/// Key-check values: HMACs of fixed labels under the master and the pseudonym key. Stored at
/// first use, they let a process prove at start that it holds the keys the database was
/// written with, without revealing anything about either key.
pub fn key_check_values(keys: &PrivacyKeys) -> (Vec<u8>, Vec<u8>) {
    let check = |key: &SecretKey, label: &[u8]| {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key.0).expect("HMAC accepts any key length");
        mac.update(label);
        mac.finalize().into_bytes().to_vec()
    };
    (check(&keys.master, b"auditflow master key check v1"), check(&keys.pseudonym, b"auditflow pseudonym key check v1"))
}

/// Encrypt `plain` under `key`, binding it to `aad` (e.g. the event id). Output: nonce ‖ ciphertext.
pub fn seal(key: &SecretKey, plain: &[u8], aad: &[u8]) -> Vec<u8> {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&key.0));
    let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
    let ct = cipher
        .encrypt(&nonce, Payload { msg: plain, aad })
        .expect("ChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

pub fn open(key: &SecretKey, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, PrivacyError> {
    if sealed.len() < NONCE_LEN + 16 {
        return Err(PrivacyError::Corrupt);
    }
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&key.0));
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad }).map_err(|_| PrivacyError::Corrupt)
}

/// The personal fields of one event, as sealed together in `audit_events.personal`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PersonalFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<crate::event::Location>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

/// Which fields count as personal (configurable; all six by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PersonalField {
    UserId,
    SessionId,
    IpAddress,
    UserAgent,
    Location,
    Metadata,
}

impl PersonalField {
    pub const ALL: [PersonalField; 6] = [
        PersonalField::UserId,
        PersonalField::SessionId,
        PersonalField::IpAddress,
        PersonalField::UserAgent,
        PersonalField::Location,
        PersonalField::Metadata,
    ];
}

/// The subject an event is about: its user, else the address or session of an unnamed actor.
pub fn subject_of(event: &crate::event::EnrichedEvent) -> (SubjectKind, &str) {
    if let Some(u) = event.user_id.as_deref() {
        return (SubjectKind::User, u);
    }
    if let Some(ip) = event.ip_address.as_deref() {
        return (SubjectKind::Ip, ip);
    }
    match event.session_id.as_deref() {
        Some(s) => (SubjectKind::Session, s),
        None => (SubjectKind::Anonymous, ""),
    }
}

impl std::str::FromStr for SubjectKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "user" => Ok(SubjectKind::User),
            "ip" => Ok(SubjectKind::Ip),
            "session" => Ok(SubjectKind::Session),
            other => Err(format!("unknown subject kind {other:?} (user, ip or session)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> PrivacyKeys {
        PrivacyKeys { master: SecretKey([7u8; 32]), pseudonym: SecretKey([9u8; 32]) }
    }

    #[test]
    fn pseudonyms_are_stable_keyed_and_kind_separated() {
        let k = keys();
        assert_eq!(k.pseudonym(SubjectKind::User, "alice"), k.pseudonym(SubjectKind::User, "alice"));
        assert_ne!(k.pseudonym(SubjectKind::User, "alice"), k.pseudonym(SubjectKind::Ip, "alice"));
        let other = PrivacyKeys { master: SecretKey([7u8; 32]), pseudonym: SecretKey([1u8; 32]) };
        assert_ne!(k.pseudonym(SubjectKind::User, "alice"), other.pseudonym(SubjectKind::User, "alice"));
        assert_eq!(k.pseudonym(SubjectKind::User, "alice").len(), 32);
    }

    #[test]
    fn data_keys_wrap_and_seal_round_trip_and_bind_context() {
        let k = keys();
        let (dk, wrapped) = k.new_data_key("p1");
        assert_eq!(k.unwrap_data_key("p1", &wrapped).unwrap(), dk);
        assert_eq!(k.unwrap_data_key("p2", &wrapped), Err(PrivacyError::Corrupt), "wrapped key bound to its subject");
        let sealed = seal(&dk, b"secret", b"event-1");
        assert_eq!(open(&dk, &sealed, b"event-1").unwrap(), b"secret");
        assert_eq!(open(&dk, &sealed, b"event-2"), Err(PrivacyError::Corrupt), "ciphertext bound to its event");
        let mut tampered = sealed.clone();
        tampered[20] ^= 1;
        assert_eq!(open(&dk, &tampered, b"event-1"), Err(PrivacyError::Corrupt));
        assert_eq!(open(&SecretKey([0u8; 32]), &sealed, b"event-1"), Err(PrivacyError::Corrupt));
    }

    #[test]
    fn secret_keys_parse_base64_or_hex_and_never_print() {
        let b64 = SecretKey([3u8; 32]).to_base64();
        assert_eq!(SecretKey::parse("k", &b64).unwrap(), SecretKey([3u8; 32]));
        assert_eq!(SecretKey::parse("k", &"03".repeat(32)).unwrap(), SecretKey([3u8; 32]));
        assert!(SecretKey::parse("AUDITFLOW_MASTER_KEY", "short").unwrap_err().setting == "AUDITFLOW_MASTER_KEY");
        assert_eq!(format!("{:?}", SecretKey([3u8; 32])), "SecretKey(<redacted>)");
    }
}
