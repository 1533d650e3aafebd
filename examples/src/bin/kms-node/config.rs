//! The node's TOML configuration: what it loads, checks and resolves.
//!
//! Relative paths in the file are resolved against the folder of the file,
//! so a configuration and its certificates move together.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use qkd_core::machine::ConfigError;
use qkd_handshake::capability::CipherSuite;
use serde::Deserialize;

/// The whole file (see `examples/kms-node/node-a.toml` for every field with
/// a comment).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeConfig {
    /// This KME's ID, reported as `source_KME_ID`.
    pub(crate) kme_id: String,
    /// Where SAEs connect (HTTPS).
    pub(crate) listen: SocketAddr,
    /// Certificates and how the SAE ID is read from a client certificate.
    pub(crate) tls: TlsConfig,
    /// The SAEs attached to this KME (allowed to call it).
    #[serde(default, rename = "sae")]
    pub(crate) saes: Vec<SaeEntry>,
    /// Key sizes and request limits.
    #[serde(default)]
    pub(crate) keys: KeyLimits,
    /// Limits of the key store.
    #[serde(default)]
    pub(crate) store: StoreLimits,
    /// The peer KME and the link to it.
    pub(crate) peer: PeerConfig,
    /// Where the final key blocks come from.
    #[serde(default)]
    pub(crate) source: SourceConfig,
}

/// `[tls]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsConfig {
    /// PEM file of the CA that signs SAE certificates (one trust chain).
    pub(crate) ca: PathBuf,
    /// PEM file of this node's certificate chain.
    pub(crate) cert: PathBuf,
    /// PEM file of this node's private key (PKCS#8, SEC1 or PKCS#1).
    pub(crate) key: PathBuf,
    /// Which field of a client certificate names the caller.
    #[serde(default)]
    pub(crate) sae_id_from: IdentityField,
}

/// Which certificate field identifies an SAE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum IdentityField {
    /// The subject's common name (the first CN).
    #[default]
    SubjectCn,
    /// A DNS name in the subject alternative names (each is tried in order).
    SanDns,
    /// A URI in the subject alternative names (each is tried in order).
    SanUri,
}

/// `[[sae]]`: one SAE attached to this KME.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SaeEntry {
    /// The SAE ID used in the API.
    pub(crate) id: String,
    /// The certificate identity (the field `tls.sae_id_from` names) that
    /// maps to this SAE; the SAE ID itself when absent.
    #[serde(default)]
    pub(crate) identity: Option<String>,
}

/// `[keys]`: sizes in bits and request limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyLimits {
    /// `key_size`: the size of a key when a request names none.
    pub(crate) default_size: u32,
    /// `min_key_size`.
    pub(crate) min_size: u32,
    /// `max_key_size`.
    pub(crate) max_size: u32,
    /// `max_key_per_request`.
    pub(crate) max_per_request: u32,
    /// `max_SAE_ID_count`: most additional slaves in one request.
    pub(crate) max_additional_slaves: u32,
    /// How long a `dec_keys` waits for the peer's notice, in milliseconds.
    pub(crate) dec_wait_ms: u64,
    /// Largest request body accepted, in bytes.
    pub(crate) max_body_bytes: usize,
    /// Most `dec_keys` requests waiting for the peer at once (more: 503).
    pub(crate) max_waiting: u32,
}

impl Default for KeyLimits {
    fn default() -> Self {
        KeyLimits {
            default_size: 256,
            min_size: 64,
            max_size: 8192,
            max_per_request: 128,
            max_additional_slaves: 0,
            dec_wait_ms: 2000,
            max_body_bytes: 64 << 10,
            max_waiting: 1024,
        }
    }
}

/// `[store]`: limits of the key store.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoreLimits {
    /// Most bytes of key material held.
    pub(crate) capacity_bytes: u64,
    /// Bytes per ownership chunk (both nodes must agree; also the largest
    /// key the store cuts in one piece: larger keys are made of pieces of
    /// several chunks).
    pub(crate) chunk_bytes: u32,
    /// How long fresh key waits before it is dropped, in seconds.
    pub(crate) key_ttl_s: u64,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            capacity_bytes: 256 << 20,
            chunk_bytes: 1024,
            key_ttl_s: 3600,
        }
    }
}

/// `[peer]`: the KME at the other end of the QKD link.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PeerConfig {
    /// The peer's KME ID, reported as `target_KME_ID`.
    pub(crate) kme_id: String,
    /// SAEs attached to the peer (the slaves this KME's SAEs may name).
    pub(crate) saes: Vec<String>,
    /// Where this node listens for the peer's link connection.
    pub(crate) link_listen: SocketAddr,
    /// The peer's link address. The node whose KME ID sorts first accepts
    /// the link, the other connects.
    pub(crate) link_address: SocketAddr,
    /// File with the operator-installed initial secret, hex, at least 32
    /// bytes: the same on both nodes.
    pub(crate) initial_secret_file: PathBuf,
    /// File where the node records which link keys it consumed, so that no
    /// link key (handshake PSK, rekey) is used twice across restarts.
    pub(crate) link_state_file: PathBuf,
    /// The secured channel's cipher suites, most preferred first (registry
    /// names). Default: `["QKD_AES_256_GCM_BLAKE3", "QKD_OTP_WC_POLYVAL"]`.
    /// `["QKD_OTP_WC_POLYVAL"]` alone makes the link information-theoretic:
    /// its pads come from the link reserve only, and the channel waits when
    /// the reserve is empty.
    #[serde(default = "default_suites")]
    pub(crate) suites: Vec<CipherSuite>,
}

fn default_suites() -> Vec<CipherSuite> {
    CipherSuite::ALL.to_vec()
}

/// `[source]`: where final key blocks come from. Fields a kind does not
/// use are ignored by it (and take their defaults when left out).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct SourceConfig {
    /// `pipeline`: the distillation pipeline fed by the simulated device
    /// ([`crate::pipeline_source::PipelineSource`]); `simulated`: both nodes
    /// derive the same blocks from `seed` and the session (for tests).
    pub(crate) kind: SourceKind,
    /// Seed of the simulated source, or of the simulated device (the same
    /// on both nodes: it plays the quantum channel).
    pub(crate) seed: u64,
    /// Simulated source: bytes per final key block.
    pub(crate) block_bytes: usize,
    /// Simulated source: most key bytes per second the source delivers (0:
    /// as fast as the store takes them, keeping a few blocks ahead of demand).
    pub(crate) bytes_per_second: u64,
    /// Pipeline: this node's end of the QKD link (`alice` or `bob`; the
    /// peer node runs the other).
    pub(crate) role: Option<qkd_core::Role>,
    /// Pipeline: a definition file (TOML, or XML when it ends in `.xml`);
    /// default: the library's default definition. Both nodes must use the same.
    pub(crate) pipeline: Option<PathBuf>,
    /// Pipeline: where this node listens for the peer's pipeline
    /// connection (used by the node that accepts the peer link).
    pub(crate) link_listen: Option<SocketAddr>,
    /// Pipeline: the peer's pipeline address (used by the node that
    /// connects the peer link).
    pub(crate) link_address: Option<SocketAddr>,
    /// Simulated device: time slots per frame (one frame is one block).
    pub(crate) frame_slots: u64,
    /// Simulated device: the channel's QBER.
    pub(crate) qber: f64,
    /// Simulated device: detection probability per slot.
    pub(crate) detection_probability: f64,
    /// Simulated device: probability of the Z basis.
    pub(crate) z_basis_probability: f64,
    /// Pipeline: worker threads for privacy amplification (0: in the
    /// pipeline's own thread).
    pub(crate) workers: usize,
    /// The definition read from `pipeline` (filled in by [`NodeConfig::load`]).
    #[serde(skip)]
    pub(crate) definition: Option<qkd_postproc::pipeline::PipelineDefinition>,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            kind: SourceKind::Simulated,
            seed: 1,
            block_bytes: 1 << 20,
            bytes_per_second: 0,
            role: None,
            pipeline: None,
            link_listen: None,
            link_address: None,
            frame_slots: 4_000_000,
            qber: 0.02,
            detection_probability: 0.5,
            z_basis_probability: 0.5,
            workers: 1,
            definition: None,
        }
    }
}

impl SourceConfig {
    /// The simulated device's settings (the seed is the configured one;
    /// the pipeline source binds it to each run).
    pub(crate) fn device(&self) -> qkd_core::SimulatorConfig {
        qkd_core::SimulatorConfig {
            qber: self.qber,
            detection_probability: self.detection_probability,
            z_basis_probability: self.z_basis_probability,
            frame_slots: self.frame_slots as usize,
            seed: self.seed,
        }
    }
}

/// The kinds of key source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SourceKind {
    /// [`crate::pipeline_source::PipelineSource`].
    Pipeline,
    /// [`crate::source::SimulatedSource`].
    Simulated,
}

/// Fewest slots per simulated frame (a block of fewer detections cannot
/// fill one Cascade chunk).
pub(crate) const MIN_FRAME_SLOTS: u64 = 1024;
/// Most slots per simulated frame (the pipeline link's frame limit holds
/// the largest datagram of such a block).
pub(crate) const MAX_FRAME_SLOTS: u64 = 1 << 26;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not valid TOML, or a field of the wrong type or unknown.
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    /// A value outside its range.
    #[error("{path}: {source}")]
    Invalid { path: PathBuf, source: ConfigError },
}

/// Most bytes of an SAE or KME ID (the store's limit on SAE IDs).
const MAX_ID_LEN: usize = qkd_keystore::notice::MAX_SAE_ID_LEN;

impl NodeConfig {
    /// Reads, parses, checks and resolves the file at `path`.
    pub(crate) fn load(path: &Path) -> Result<NodeConfig, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: NodeConfig = toml::from_str(&text).map_err(|source| LoadError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config.validate().map_err(|source| LoadError::Invalid {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve(base);
        if let Some(file) = &config.source.pipeline {
            config.source.definition =
                Some(read_definition(file).map_err(|source| LoadError::Invalid {
                    path: path.to_owned(),
                    source,
                })?);
        }
        Ok(config)
    }

    /// Makes every relative path relative to `base`.
    fn resolve(&mut self, base: &Path) {
        for p in [
            &mut self.tls.ca,
            &mut self.tls.cert,
            &mut self.tls.key,
            &mut self.peer.initial_secret_file,
            &mut self.peer.link_state_file,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(p) = &mut self.source.pipeline
            && p.is_relative()
        {
            *p = base.join(&*p);
        }
    }

    /// Checks every value against its documented range.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        check_id("kme_id", &self.kme_id)?;
        check_id("peer.kme_id", &self.peer.kme_id)?;
        if self.kme_id == self.peer.kme_id {
            return Err(ConfigError::new(
                "peer.kme_id",
                "must differ from this node's kme_id",
            ));
        }
        if self.saes.is_empty() {
            return Err(ConfigError::new("sae", "name at least one SAE"));
        }
        let mut ids = std::collections::HashSet::new();
        let mut identities = std::collections::HashSet::new();
        for s in &self.saes {
            check_id("sae.id", &s.id)?;
            if !ids.insert(s.id.as_str()) {
                return Err(ConfigError::new(
                    "sae.id",
                    format!("{} is listed twice", s.id),
                ));
            }
            let identity = s.identity.as_deref().unwrap_or(&s.id);
            if identity.is_empty() {
                return Err(ConfigError::new("sae.identity", "must not be empty"));
            }
            if !identities.insert(identity) {
                return Err(ConfigError::new(
                    "sae.identity",
                    format!("{identity} maps to two SAEs"),
                ));
            }
        }
        for s in &self.peer.saes {
            check_id("peer.saes", s)?;
            if ids.contains(s.as_str()) {
                return Err(ConfigError::new(
                    "peer.saes",
                    format!("{s} is also attached to this node"),
                ));
            }
        }
        let s = &self.store;
        in_range(
            "store.chunk_bytes",
            s.chunk_bytes.into(),
            8,
            qkd_keystore::MAX_CHUNK_BYTES.into(),
        )?;
        let k = &self.keys;
        // The store is built with the default `max_key_bytes` (node.rs):
        // keys larger than a chunk are made of pieces, up to that maximum.
        let store_max_bits = u64::from(qkd_keystore::DEFAULT_MAX_KEY_BYTES) * 8;
        for (field, v) in [
            ("keys.default_size", k.default_size),
            ("keys.min_size", k.min_size),
            ("keys.max_size", k.max_size),
        ] {
            if v == 0 || v % 8 != 0 {
                return Err(ConfigError::new(field, "must be a positive multiple of 8"));
            }
        }
        if !(k.min_size <= k.default_size && k.default_size <= k.max_size) {
            return Err(ConfigError::new(
                "keys.default_size",
                "must lie between keys.min_size and keys.max_size",
            ));
        }
        if u64::from(k.max_size) > store_max_bits {
            return Err(ConfigError::new(
                "keys.max_size",
                format!("must be at most the key store's largest key, {store_max_bits} bits"),
            ));
        }
        in_range("keys.max_per_request", k.max_per_request.into(), 1, 10_000)?;
        in_range(
            "keys.max_additional_slaves",
            k.max_additional_slaves.into(),
            0,
            qkd_keystore::notice::MAX_SLAVES as u64 - 1,
        )?;
        in_range("keys.dec_wait_ms", k.dec_wait_ms, 1, 60_000)?;
        in_range(
            "keys.max_body_bytes",
            k.max_body_bytes as u64,
            256,
            16 << 20,
        )?;
        if s.capacity_bytes < 4 * u64::from(s.chunk_bytes) {
            return Err(ConfigError::new(
                "store.capacity_bytes",
                "must hold at least four chunks",
            ));
        }
        in_range("keys.max_waiting", k.max_waiting.into(), 1, 1 << 20)?;
        in_range("store.key_ttl_s", s.key_ttl_s, 1, 30 * 86_400)?;
        let src = &self.source;
        in_range(
            "source.block_bytes",
            src.block_bytes as u64,
            s.chunk_bytes.into(),
            64 << 20,
        )?;
        if self.peer.suites.is_empty() {
            return Err(ConfigError::new("peer.suites", "name at least one suite"));
        }
        for (i, suite) in self.peer.suites.iter().enumerate() {
            if self.peer.suites[..i].contains(suite) {
                return Err(ConfigError::new(
                    "peer.suites",
                    format!("{suite} is listed twice"),
                ));
            }
        }
        if self.peer.link_listen == self.peer.link_address {
            return Err(ConfigError::new(
                "peer.link_address",
                "must differ from peer.link_listen",
            ));
        }
        if src.kind == SourceKind::Pipeline {
            self.validate_pipeline()?;
        }
        Ok(())
    }

    /// The `[source]` fields of the pipeline kind.
    fn validate_pipeline(&self) -> Result<(), ConfigError> {
        let src = &self.source;
        if src.role.is_none() {
            return Err(ConfigError::new(
                "source.role",
                "name this node's end of the QKD link: \"alice\" or \"bob\"",
            ));
        }
        let (Some(listen), Some(address)) = (src.link_listen, src.link_address) else {
            return Err(ConfigError::new(
                if src.link_listen.is_none() {
                    "source.link_listen"
                } else {
                    "source.link_address"
                },
                "the pipeline source needs source.link_listen and source.link_address",
            ));
        };
        if listen == address {
            return Err(ConfigError::new(
                "source.link_address",
                "must differ from source.link_listen",
            ));
        }
        for used in [self.peer.link_listen, self.peer.link_address, self.listen] {
            for (field, value) in [
                ("source.link_listen", listen),
                ("source.link_address", address),
            ] {
                if value == used {
                    return Err(ConfigError::new(
                        field,
                        format!(
                            "{used} is taken by the peer link or HTTPS; the pipeline needs its own ports"
                        ),
                    ));
                }
            }
        }
        in_range(
            "source.frame_slots",
            src.frame_slots,
            MIN_FRAME_SLOTS,
            MAX_FRAME_SLOTS,
        )?;
        in_range("source.workers", src.workers as u64, 0, 16)?;
        src.device().validate().map_err(|e| {
            let field = match &e {
                qkd_core::Error::InvalidParameter { name, .. } => format!("source.{name}"),
                _ => "source".to_owned(),
            };
            ConfigError::new(field, e.to_string())
        })?;
        Ok(())
    }

    /// Whether this node accepts the link (its KME ID sorts first) rather
    /// than connecting.
    pub(crate) fn accepts_link(&self) -> bool {
        self.kme_id < self.peer.kme_id
    }

    /// The link's name, the same on both nodes.
    pub(crate) fn link_name(&self) -> String {
        let (a, b) = if self.accepts_link() {
            (&self.kme_id, &self.peer.kme_id)
        } else {
            (&self.peer.kme_id, &self.kme_id)
        };
        // Both IDs are at most 255 bytes; the store's link name too.
        let name = format!("{a}|{b}");
        if name.len() <= MAX_ID_LEN {
            name
        } else {
            qkd_core::KeyId::derive(name.as_bytes()).to_string()
        }
    }
}

/// Reads and checks a pipeline definition file.
fn read_definition(path: &Path) -> Result<qkd_postproc::pipeline::PipelineDefinition, ConfigError> {
    use qkd_postproc::pipeline::PipelineDefinition;
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            "source.pipeline",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let xml = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("xml"))
        || text.trim_start().starts_with('<');
    let parsed = if xml {
        PipelineDefinition::from_xml(&text)
    } else {
        PipelineDefinition::from_toml(&text)
    };
    parsed.map_err(|e| {
        ConfigError::new(
            "source.pipeline",
            format!("{} is not a valid pipeline definition: {e}", path.display()),
        )
    })
}

/// An SAE or KME ID: 1 to 255 bytes, printable, no `/` (it travels in URL paths).
fn check_id(field: &str, id: &str) -> Result<(), ConfigError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(ConfigError::new(
            field.to_owned(),
            format!("must be 1 to {MAX_ID_LEN} bytes"),
        ));
    }
    if id.chars().any(|c| c.is_control() || c == '/') {
        return Err(ConfigError::new(
            field.to_owned(),
            format!("{id:?} holds a control character or '/'"),
        ));
    }
    Ok(())
}

/// `value` within `lo..=hi`, or an error naming `field` and the range.
fn in_range(field: &str, value: u64, lo: u64, hi: u64) -> Result<(), ConfigError> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::new(
            field.to_owned(),
            format!("must be {lo} to {hi}, got {value}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> NodeConfig {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("kms-node/node-a.toml");
        NodeConfig::load(&path).unwrap()
    }

    #[test]
    fn the_committed_examples_load_and_resolve_paths_next_to_the_file() {
        let a = example();
        assert_eq!(a.kme_id, "KME_A");
        assert!(a.accepts_link());
        assert!(a.tls.ca.ends_with("kms-node/certs/ca.pem"));
        assert!(a.tls.ca.is_absolute() || a.tls.ca.starts_with(env!("CARGO_MANIFEST_DIR")));
        let b =
            NodeConfig::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("kms-node/node-b.toml"))
                .unwrap();
        assert!(!b.accepts_link());
        assert_eq!(a.link_name(), b.link_name());
        assert_eq!(a.peer.link_listen, b.peer.link_address);
    }

    /// A change that makes a configuration invalid.
    type Breakage = Box<dyn Fn(&mut NodeConfig)>;

    #[test]
    fn each_invalid_value_names_its_field() {
        let ok = example();
        let cases: Vec<(&str, Breakage)> = vec![
            ("kme_id", Box::new(|c| c.kme_id.clear())),
            (
                "peer.kme_id",
                Box::new(|c| c.peer.kme_id = c.kme_id.clone()),
            ),
            ("sae", Box::new(|c| c.saes.clear())),
            ("sae.id", Box::new(|c| c.saes.push(c.saes[0].clone()))),
            ("sae.id", Box::new(|c| c.saes[0].id = "a/b".into())),
            (
                "peer.saes",
                Box::new(|c| c.peer.saes.push(c.saes[0].id.clone())),
            ),
            ("keys.min_size", Box::new(|c| c.keys.min_size = 12)),
            ("keys.default_size", Box::new(|c| c.keys.default_size = 16)),
            ("keys.max_size", Box::new(|c| c.keys.max_size = 65_544)),
            (
                "keys.max_per_request",
                Box::new(|c| c.keys.max_per_request = 0),
            ),
            (
                "keys.max_additional_slaves",
                Box::new(|c| c.keys.max_additional_slaves = 64),
            ),
            ("keys.dec_wait_ms", Box::new(|c| c.keys.dec_wait_ms = 0)),
            (
                "keys.max_body_bytes",
                Box::new(|c| c.keys.max_body_bytes = 1),
            ),
            ("keys.max_waiting", Box::new(|c| c.keys.max_waiting = 0)),
            ("store.chunk_bytes", Box::new(|c| c.store.chunk_bytes = 0)),
            (
                "store.capacity_bytes",
                Box::new(|c| c.store.capacity_bytes = 10),
            ),
            ("store.key_ttl_s", Box::new(|c| c.store.key_ttl_s = 0)),
            ("source.block_bytes", Box::new(|c| c.source.block_bytes = 1)),
            (
                "peer.link_address",
                Box::new(|c| c.peer.link_address = c.peer.link_listen),
            ),
            ("peer.suites", Box::new(|c| c.peer.suites.clear())),
            (
                "peer.suites",
                Box::new(|c| c.peer.suites.push(c.peer.suites[0])),
            ),
        ];
        for (field, change) in cases {
            let mut c = ok.clone();
            change(&mut c);
            let e = c.validate().unwrap_err();
            assert_eq!(e.field(), field, "{e}");
        }
    }
}
