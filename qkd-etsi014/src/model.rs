//! The data formats of ETSI GS QKD 014 V1.1.1, with the standard's exact
//! JSON member names (case included).
//!
//! Every object the standard defines is closed: an unknown member is an
//! error when decoding (`deny_unknown_fields`); extensions go in the
//! members the standard provides for them (`*_extension`,
//! `extension_mandatory`, `extension_optional`).
//!
//! Key material ([`Key::key`]) is a [`SecretKey`]: base64 (RFC 4648,
//! standard alphabet, padded) on the wire, encoded through a zeroized
//! buffer and decoded into one; it never appears in `Debug`.
//!
//! ```
//! use qkd_etsi014::model::{KeyIds, KeyRequest};
//!
//! let r: KeyRequest = serde_json::from_str(r#"{"number": 2, "size": 256}"#).unwrap();
//! assert_eq!((r.number, r.size), (Some(2), Some(256)));
//! // Member names are exact: `Number` is not `number`.
//! assert!(serde_json::from_str::<KeyRequest>(r#"{"Number": 2}"#).is_err());
//! let ids: KeyIds = serde_json::from_str(
//!     r#"{"key_IDs": [{"key_ID": "bc490419-7d60-487f-adc1-4ddcc177c139"}]}"#,
//! ).unwrap();
//! assert_eq!(ids.key_ids.len(), 1);
//! // Key IDs are UUIDs in the hyphenated 8-4-4-4-12 form.
//! assert!(serde_json::from_str::<KeyIds>(r#"{"key_IDs": [{"key_ID": "42"}]}"#).is_err());
//! ```

use core::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use qkd_core::{KeyId, SecretKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::{Zeroize, Zeroizing};

/// An extension object: name/value pairs (vendor names carry a prefix
/// ending in `_`, e.g. `abc_route_type`).
pub type Extension = serde_json::Map<String, serde_json::Value>;

/// Answer to "Get status" (`GET /api/v1/keys/{slave_SAE_ID}/status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    /// `source_KME_ID`: this KME.
    #[serde(rename = "source_KME_ID")]
    pub source_kme_id: String,
    /// `target_KME_ID`: the KME of the slave SAE.
    #[serde(rename = "target_KME_ID")]
    pub target_kme_id: String,
    /// `master_SAE_ID`: the calling SAE.
    #[serde(rename = "master_SAE_ID")]
    pub master_sae_id: String,
    /// `slave_SAE_ID`: the SAE in the path.
    #[serde(rename = "slave_SAE_ID")]
    pub slave_sae_id: String,
    /// Default key size, bits.
    pub key_size: u64,
    /// Keys available for this master/slave pair now (never above `max_key_count`).
    pub stored_key_count: u64,
    /// The most `stored_key_count` can reach.
    pub max_key_count: u64,
    /// Most keys one request may ask for.
    pub max_key_per_request: u64,
    /// Largest key size, bits.
    pub max_key_size: u64,
    /// Smallest key size, bits.
    pub min_key_size: u64,
    /// `max_SAE_ID_count`: most `additional_slave_SAE_IDs` a request may
    /// name (0: no multicast).
    #[serde(rename = "max_SAE_ID_count")]
    pub max_sae_id_count: u64,
    /// `status_extension`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_extension: Option<Extension>,
}

/// Body of "Get key" by POST (`/api/v1/keys/{slave_SAE_ID}/enc_keys`);
/// every member is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    /// Number of keys (default 1). A JSON integer too large for `u64`
    /// decodes as `u64::MAX` (so that a range check refuses it by name).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count::deserialize"
    )]
    pub number: Option<u64>,
    /// Key size in bits (default the KME's `key_size`); too large
    /// saturates as `number` does.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "count::deserialize"
    )]
    pub size: Option<u64>,
    /// `additional_slave_SAE_IDs`: further slaves that share the same keys.
    #[serde(
        rename = "additional_slave_SAE_IDs",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub additional_slave_sae_ids: Vec<String>,
    /// Extensions the KME must honour, or answer 400.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extension_mandatory: Vec<Extension>,
    /// Extensions the KME may ignore.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extension_optional: Vec<Extension>,
}

/// One key of a [`KeyContainer`].
#[derive(PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Key {
    /// `key_ID`: a UUID.
    #[serde(rename = "key_ID", with = "strict_key_id")]
    pub key_id: KeyId,
    /// `key_ID_extension`.
    #[serde(
        rename = "key_ID_extension",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub key_id_extension: Option<Extension>,
    /// `key`: the key material, base64 on the wire.
    #[serde(with = "base64_key")]
    pub key: SecretKey,
    /// `key_extension`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_extension: Option<Extension>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("key_ID", &self.key_id)
            .field("bits", &self.key.bit_len())
            .finish_non_exhaustive()
    }
}

/// Answer to both key methods (`enc_keys`, `dec_keys`).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyContainer {
    /// The keys.
    pub keys: Vec<Key>,
    /// `key_container_extension`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_container_extension: Option<Extension>,
}

/// One entry of [`KeyIds`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyIdEntry {
    /// `key_ID`: a UUID.
    #[serde(rename = "key_ID", with = "strict_key_id")]
    pub key_id: KeyId,
    /// `key_ID_extension`.
    #[serde(
        rename = "key_ID_extension",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub key_id_extension: Option<Extension>,
}

/// Body of "Get key with key IDs" by POST (`/api/v1/keys/{master_SAE_ID}/dec_keys`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyIds {
    /// `key_IDs`.
    #[serde(rename = "key_IDs")]
    pub key_ids: Vec<KeyIdEntry>,
    /// `key_IDs_extension`.
    #[serde(
        rename = "key_IDs_extension",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub key_ids_extension: Option<Extension>,
}

/// The Error body of every 4xx and 5xx answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// What went wrong.
    pub message: String,
    /// Name/value pairs with more detail (omitted when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<Extension>,
}

impl ErrorBody {
    /// An error with `message` and no details.
    #[must_use]
    pub fn new(message: impl Into<String>) -> Self {
        ErrorBody {
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// Adds one detail `{name: value}`.
    #[must_use]
    pub fn with_detail(mut self, name: &str, value: impl Into<serde_json::Value>) -> Self {
        let mut m = Extension::new();
        m.insert(name.to_owned(), value.into());
        self.details.push(m);
        self
    }
}

/// Whether `s` is a UUID in the hyphenated 8-4-4-4-12 form (either case).
#[must_use]
pub fn parse_key_id(s: &str) -> Option<KeyId> {
    if s.len() != 36 {
        return None;
    }
    uuid::Uuid::try_parse(s).ok().map(KeyId::from_uuid)
}

/// `key_ID` members: the hyphenated UUID form only.
mod strict_key_id {
    use super::*;

    pub(super) fn serialize<S: Serializer>(id: &KeyId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(id)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<KeyId, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = KeyId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a UUID string")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<KeyId, E> {
                parse_key_id(s).ok_or_else(|| {
                    E::custom("key_ID shall be a UUID (8-4-4-4-12 hexadecimal digits)")
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// `number` and `size`: non-negative integers; an integer literal beyond
/// `u64` (which JSON parsers read as a float) saturates to `u64::MAX`.
mod count {
    use super::*;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Option<u64>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative integer")
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Option<u64>, E> {
                Ok(None)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Option<u64>, E> {
                Ok(Some(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Option<u64>, E> {
                u64::try_from(v).map(Some).map_err(|_| {
                    E::custom(format!("{v} is negative, expected a non-negative integer"))
                })
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Option<u64>, E> {
                // 2^64: every integer literal beyond u64 reads as at least this.
                if v >= 18_446_744_073_709_551_616.0 && v.fract() == 0.0 {
                    Ok(Some(u64::MAX))
                } else {
                    Err(E::custom(format!("{v} is not an integer")))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Length of the base64 text of `len` bytes (padded).
#[must_use]
pub const fn base64_len(len: usize) -> usize {
    len.div_ceil(3) * 4
}

/// `key` members: base64 through zeroized buffers.
mod base64_key {
    use super::*;

    pub(super) fn serialize<S: Serializer>(key: &SecretKey, s: S) -> Result<S::Ok, S::Error> {
        let mut text = Zeroizing::new(vec![0u8; base64_len(key.len())]);
        let n = BASE64
            .encode_slice(key.expose_secret(), &mut text[..])
            .map_err(serde::ser::Error::custom)?;
        let text = core::str::from_utf8(&text[..n]).map_err(serde::ser::Error::custom)?;
        s.serialize_str(text)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SecretKey, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SecretKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("base64 key material")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<SecretKey, E> {
                let mut bytes = Zeroizing::new(vec![0u8; s.len() / 4 * 3 + 3]);
                let n = BASE64
                    .decode_slice(s.as_bytes(), &mut bytes[..])
                    .map_err(|_| E::custom("key shall be base64 (RFC 4648)"))?;
                Ok(SecretKey::from_slice(&bytes[..n]))
            }
            fn visit_string<E: serde::de::Error>(self, mut s: String) -> Result<SecretKey, E> {
                let key = self.visit_str(&s);
                s.zeroize();
                key
            }
        }
        d.deserialize_str(V)
    }
}
