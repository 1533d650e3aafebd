//! TLS for the SAE-facing side: rustls server configuration with client
//! certificates required and verified against the configured CA (TLS 1.2
//! and 1.3), and the SAE ID read from a verified client certificate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::config::{IdentityField, NodeConfig};

/// Why the TLS setup failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    /// rustls refused the material (e.g. a key that does not match).
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built (e.g. an empty CA file).
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

fn pem_err(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Every certificate in a PEM file (at least one).
pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(path, e))?;
    if certs.is_empty() {
        return Err(pem_err(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_err(path, e))
}

/// A root store holding the CA certificates of `path`.
pub(crate) fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path)? {
        roots.add(c).map_err(|e| pem_err(path, e))?;
    }
    Ok(roots)
}

/// The crypto provider used everywhere (ring).
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server configuration: TLS 1.3 and 1.2, client certificate required
/// and chained to `tls.ca`, ALPN `http/1.1`.
pub(crate) fn server_config(config: &NodeConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let roots = load_roots(&config.tls.ca)?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
    let mut sc = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&config.tls.cert)?, load_key(&config.tls.key)?)?;
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(sc))
}

/// Maps verified client certificates to SAE IDs.
#[derive(Debug, Clone)]
pub(crate) struct SaeMap {
    field: IdentityField,
    by_identity: HashMap<String, String>,
}

/// Why a verified client certificate names no SAE of this node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum IdentityError {
    /// No certificate (cannot happen with the verifier above, checked anyway).
    #[error("no client certificate")]
    NoCertificate,
    /// The certificate did not parse.
    #[error("client certificate does not parse")]
    Unparsable,
    /// The certificate has no field of the configured kind.
    #[error("client certificate has no {0}")]
    NoField(&'static str),
    /// The certificate's identity is not mapped to an SAE of this node.
    #[error("client certificate identity {0:?} is not an SAE of this KME")]
    Unknown(String),
}

impl SaeMap {
    /// The mapping of `config` (`[[sae]]` entries, `tls.sae_id_from`).
    pub(crate) fn new(config: &NodeConfig) -> Self {
        SaeMap {
            field: config.tls.sae_id_from,
            by_identity: config
                .saes
                .iter()
                .map(|s| {
                    (
                        s.identity.clone().unwrap_or_else(|| s.id.clone()),
                        s.id.clone(),
                    )
                })
                .collect(),
        }
    }

    /// The SAE ID of the leaf certificate in `chain` (already verified by
    /// rustls against the CA).
    pub(crate) fn sae_id(
        &self,
        chain: Option<&[CertificateDer<'_>]>,
    ) -> Result<String, IdentityError> {
        let leaf = chain
            .and_then(|c| c.first())
            .ok_or(IdentityError::NoCertificate)?;
        let (_, cert) =
            X509Certificate::from_der(leaf.as_ref()).map_err(|_| IdentityError::Unparsable)?;
        let mut candidates: Vec<String> = match self.field {
            IdentityField::SubjectCn => cert
                .subject()
                .iter_common_name()
                .take(1)
                .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
                .collect(),
            IdentityField::SanDns | IdentityField::SanUri => {
                let mut v = Vec::new();
                if let Ok(Some(san)) = cert.subject_alternative_name() {
                    for n in &san.value.general_names {
                        match (self.field, n) {
                            (IdentityField::SanDns, GeneralName::DNSName(d))
                            | (IdentityField::SanUri, GeneralName::URI(d)) => {
                                v.push((*d).to_owned());
                            }
                            _ => {}
                        }
                    }
                }
                v
            }
        };
        if candidates.is_empty() {
            return Err(IdentityError::NoField(match self.field {
                IdentityField::SubjectCn => "subject common name",
                IdentityField::SanDns => "SAN DNS name",
                IdentityField::SanUri => "SAN URI",
            }));
        }
        for c in &candidates {
            if let Some(id) = self.by_identity.get(c) {
                return Ok(id.clone());
            }
        }
        Err(IdentityError::Unknown(candidates.swap_remove(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{CertRequest, generate};
    use crate::config::SaeEntry;

    fn config_with(field: IdentityField, saes: &[(&str, Option<&str>)]) -> NodeConfig {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kms-node/node-a.toml"),
        )
        .unwrap();
        let mut c: NodeConfig = toml::from_str(&text).unwrap();
        c.tls.sae_id_from = field;
        c.saes = saes
            .iter()
            .map(|(id, identity)| SaeEntry {
                id: (*id).to_owned(),
                identity: identity.map(str::to_owned),
            })
            .collect();
        c
    }

    #[test]
    fn the_sae_id_comes_from_the_configured_field_and_unmapped_identities_are_refused() {
        let dir = std::env::temp_dir().join(format!("kms-node-tls-{}", std::process::id()));
        generate(&CertRequest {
            out: dir.clone(),
            ca_name: "t".into(),
            kmes: vec![],
            saes: vec!["sae-1".into(), "SAE_2".into()],
            secret: false,
            bootstrap_pads: 0,
        })
        .unwrap();
        let chain = |name: &str| load_certs(&dir.join(format!("{name}.pem"))).unwrap();
        let (one, two) = (chain("sae-1"), chain("SAE_2"));

        let cn = SaeMap::new(&config_with(IdentityField::SubjectCn, &[("sae-1", None)]));
        assert_eq!(cn.sae_id(Some(&one)).unwrap(), "sae-1");
        assert_eq!(
            cn.sae_id(Some(&two)).unwrap_err(),
            IdentityError::Unknown("SAE_2".into())
        );
        assert_eq!(cn.sae_id(None).unwrap_err(), IdentityError::NoCertificate);

        let uri = SaeMap::new(&config_with(
            IdentityField::SanUri,
            &[("Alice", Some("urn:qkd:sae:SAE_2"))],
        ));
        assert_eq!(uri.sae_id(Some(&two)).unwrap(), "Alice");
        assert!(matches!(
            uri.sae_id(Some(&one)).unwrap_err(),
            IdentityError::Unknown(_)
        ));

        // "SAE_2" is not a DNS name, so its certificate has no SAN DNS.
        let dns = SaeMap::new(&config_with(IdentityField::SanDns, &[("x", Some("sae-1"))]));
        assert_eq!(dns.sae_id(Some(&one)).unwrap(), "x");
        assert_eq!(
            dns.sae_id(Some(&two)).unwrap_err(),
            IdentityError::NoField("SAN DNS name")
        );
        let garbage = [CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00])];
        assert_eq!(
            cn.sae_id(Some(&garbage)).unwrap_err(),
            IdentityError::Unparsable
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
