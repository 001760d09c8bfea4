//! Events only from their owner: each producing service signs every event it
//! publishes with its own Ed25519 key, and a consumer applies an event only when
//! it verifies against a key of the topic's owner. A broker without ACLs (or
//! anyone who can reach it) can then drop or delay events, but not forge them.
//!
//! The signature covers the topic, the record key, the CloudEvents id, type and
//! source, and the payload, each length-prefixed, so that no field can be moved
//! into another or the record replayed onto another topic. It travels in two
//! CloudEvents extension headers: `ce_signature` (base64) and `ce_signingkey`
//! (the key's id: the first 8 bytes of the SHA-256 of the public key, in hex).

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::config::ConfigError;

pub const HEADER_SIGNATURE: &str = "ce_signature";
pub const HEADER_SIGNING_KEY: &str = "ce_signingkey";

/// What a signature covers.
#[derive(Clone, Copy, Debug)]
pub struct SignedFields<'a> {
    pub topic: &'a str,
    pub key: &'a str,
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub source: &'a str,
    pub payload: &'a [u8],
}

impl SignedFields<'_> {
    fn message(&self) -> Vec<u8> {
        let mut message = b"shopmesh.event.v1".to_vec();
        for field in [
            self.topic.as_bytes(),
            self.key.as_bytes(),
            self.event_id.as_bytes(),
            self.event_type.as_bytes(),
            self.source.as_bytes(),
            self.payload,
        ] {
            message.extend_from_slice(&(field.len() as u64).to_be_bytes());
            message.extend_from_slice(field);
        }
        message
    }
}

/// A public key's id: the first 8 bytes of its SHA-256, in hex.
pub fn key_id(key: &VerifyingKey) -> String {
    Sha256::digest(key.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The Ed25519 public keys in `pems` (one or more SPKI PEM blocks, several while
/// a key rotates), each with its id and its own PEM block; None when a block is not
/// such a key. Event verifiers and service-token verifiers read their keys so.
pub fn public_keys(pems: &str) -> Option<Vec<(String, VerifyingKey, &str)>> {
    const END: &str = "-----END PUBLIC KEY-----";
    pems.split_inclusive(END)
        .map(str::trim)
        .filter(|block| !block.is_empty())
        .map(|block| {
            let key = VerifyingKey::from_public_key_pem(block).ok()?;
            Some((key_id(&key), key, block))
        })
        .collect()
}

/// Signs this service's events (the outbox relay holds one).
#[derive(Clone)]
pub struct EventSigner {
    key: SigningKey,
    key_id: String,
}

impl std::fmt::Debug for EventSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl EventSigner {
    /// From a PKCS#8 PEM; `setting` names where it came from in errors.
    pub fn from_pem(pem: &str, setting: &str) -> Result<Self, ConfigError> {
        if pem.trim().is_empty() {
            return Err(ConfigError::missing(
                setting,
                "is required: the Ed25519 key (PKCS#8 PEM) this service signs its events with",
            ));
        }
        let key = SigningKey::from_pkcs8_pem(pem).map_err(|_| {
            ConfigError::missing(setting, "is not a PKCS#8 PEM Ed25519 private key")
        })?;
        let key_id = key_id(&key.verifying_key());
        Ok(Self { key, key_id })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The two headers to send with the event.
    pub fn sign(&self, fields: &SignedFields<'_>) -> [(&'static str, String); 2] {
        let signature = self.key.sign(&fields.message());
        [
            (HEADER_SIGNATURE, BASE64.encode(signature.to_bytes())),
            (HEADER_SIGNING_KEY, self.key_id.clone()),
        ]
    }
}

/// Why an event was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unverified {
    #[error("unsigned event: no {HEADER_SIGNATURE} or {HEADER_SIGNING_KEY} header")]
    Unsigned,
    #[error("signed by key {0}, which is not a key of this topic's owner")]
    UnknownKey(String),
    #[error("signature does not verify (forged or altered event)")]
    BadSignature,
}

/// The keys of the service whose events a consumer applies.
#[derive(Clone, Debug)]
pub struct EventVerifier {
    keys: HashMap<String, VerifyingKey>,
}

impl EventVerifier {
    /// From one or more SPKI PEM public keys (several while a key rotates);
    /// `setting` names where they came from in errors.
    pub fn from_pems(pems: &str, setting: &str) -> Result<Self, ConfigError> {
        let keys: HashMap<String, VerifyingKey> = public_keys(pems)
            .ok_or_else(|| {
                ConfigError::missing(
                    setting,
                    "holds something that is not an SPKI PEM Ed25519 public key",
                )
            })?
            .into_iter()
            .map(|(id, key, _)| (id, key))
            .collect();
        if keys.is_empty() {
            return Err(ConfigError::missing(
                setting,
                "is required: the public key(s) of the service whose events this one consumes",
            ));
        }
        Ok(Self { keys })
    }

    /// The keys `EVENT_PUBLIC_KEYS` names.
    pub fn from_settings(settings: &crate::config::ServiceSettings) -> Result<Self, ConfigError> {
        Self::from_pems(settings.event_public_keys.expose(), "EVENT_PUBLIC_KEYS")
    }

    /// Whether `headers` carry a valid signature of `fields` by one of the keys.
    pub fn verify(
        &self,
        fields: &SignedFields<'_>,
        headers: &HashMap<String, String>,
    ) -> Result<(), Unverified> {
        let (Some(signature), Some(key_id)) = (
            headers.get(HEADER_SIGNATURE),
            headers.get(HEADER_SIGNING_KEY),
        ) else {
            return Err(Unverified::Unsigned);
        };
        let Some(key) = self.keys.get(key_id) else {
            // The id is the sender's to choose: shown only when it looks like one.
            let shown = if key_id.len() == 16 && key_id.bytes().all(|b| b.is_ascii_hexdigit()) {
                key_id.clone()
            } else {
                "(malformed id)".into()
            };
            return Err(Unverified::UnknownKey(shown));
        };
        let signature = BASE64
            .decode(signature)
            .ok()
            .and_then(|bytes| Signature::from_slice(&bytes).ok())
            .ok_or(Unverified::BadSignature)?;
        key.verify(&fields.message(), &signature)
            .map_err(|_| Unverified::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::generate_keypair;

    fn fields(payload: &[u8]) -> SignedFields<'_> {
        SignedFields {
            topic: "shop.order.v1.events",
            key: "o1",
            event_id: "e1",
            event_type: "shop.order.v1.OrderCancelled",
            source: "order-service",
            payload,
        }
    }

    fn headers(pairs: [(&'static str, String); 2]) -> HashMap<String, String> {
        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    #[test]
    fn only_the_owners_untouched_events_verify() {
        let (owner_private, owner_public) = generate_keypair();
        let (other_private, _) = generate_keypair();
        let owner = EventSigner::from_pem(owner_private.expose(), "K").expect("signer");
        let other = EventSigner::from_pem(other_private.expose(), "K").expect("signer");
        let verifier = EventVerifier::from_pems(&owner_public, "P").expect("verifier");

        let signed = headers(owner.sign(&fields(b"payload")));
        assert_eq!(verifier.verify(&fields(b"payload"), &signed), Ok(()));
        assert_eq!(
            verifier.verify(&fields(b"altered"), &signed),
            Err(Unverified::BadSignature)
        );
        let moved = SignedFields {
            topic: "shop.user.v1.events",
            ..fields(b"payload")
        };
        assert_eq!(
            verifier.verify(&moved, &signed),
            Err(Unverified::BadSignature)
        );
        assert_eq!(
            verifier.verify(&fields(b"payload"), &HashMap::new()),
            Err(Unverified::Unsigned)
        );
        let by_other = headers(other.sign(&fields(b"payload")));
        assert_eq!(
            verifier.verify(&fields(b"payload"), &by_other),
            Err(Unverified::UnknownKey(other.key_id().to_owned()))
        );
        // The owner's key id with another key's signature.
        let mut forged = by_other;
        forged.insert(HEADER_SIGNING_KEY.into(), owner.key_id().to_owned());
        assert_eq!(
            verifier.verify(&fields(b"payload"), &forged),
            Err(Unverified::BadSignature)
        );
    }

    #[test]
    fn a_rotating_owner_has_two_keys_and_bad_settings_are_named() {
        let (old_private, old_public) = generate_keypair();
        let (_, new_public) = generate_keypair();
        let both = format!("{old_public}\n{new_public}");
        let verifier = EventVerifier::from_pems(&both, "P").expect("two keys");
        let old = EventSigner::from_pem(old_private.expose(), "K").expect("signer");
        let signed = headers(old.sign(&fields(b"x")));
        assert_eq!(verifier.verify(&fields(b"x"), &signed), Ok(()));

        let err = EventVerifier::from_pems("", "EVENT_PUBLIC_KEYS").expect_err("empty");
        assert!(err.to_string().contains("EVENT_PUBLIC_KEYS"), "{err}");
        let err = EventSigner::from_pem("nonsense", "EVENT_SIGNING_KEY").expect_err("junk");
        assert!(err.to_string().contains("EVENT_SIGNING_KEY"), "{err}");
    }
}
