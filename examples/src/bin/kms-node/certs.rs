//! `kms-node certs`: a throw-away CA and node and SAE certificates, for
//! demos and tests (rcgen, ECDSA P-256, valid from now for one year).
//!
//! Files written into the output folder:
//! - `ca.pem`: the CA certificate (its key is not kept: nothing more can be
//!   signed by it later, which is what a throw-away CA wants);
//! - `KME.pem` / `KME.key` for every `--kme`: a server certificate for
//!   `localhost`, `127.0.0.1` and `::1`, subject CN = the KME ID;
//! - `SAE.pem` / `SAE.key` for every `--sae`: a client certificate with
//!   subject CN = the SAE ID, a SAN URI `urn:qkd:sae:SAE`, and the SAE ID as
//!   a SAN DNS name where it is a valid one;
//! - `link.secret`: 32 random bytes in hex, the initial secret of the link
//!   (`--no-secret` leaves it out), followed by `--bootstrap-pads N` keys of
//!   1 KiB of random bytes (one-time pads for a link that allows only the
//!   one-time-pad suite).

use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use zeroize::Zeroizing;

/// What to generate.
#[derive(Debug, Clone)]
pub(crate) struct CertRequest {
    /// Output folder (created if missing).
    pub(crate) out: PathBuf,
    /// The CA's common name.
    pub(crate) ca_name: String,
    /// KME IDs to make server certificates for.
    pub(crate) kmes: Vec<String>,
    /// SAE IDs to make client certificates for.
    pub(crate) saes: Vec<String>,
    /// Whether to write `link.secret`.
    pub(crate) secret: bool,
    /// Bootstrap pads of 1 KiB appended to `link.secret`.
    pub(crate) bootstrap_pads: u32,
}

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum CertError {
    /// rcgen refused a parameter or failed to sign.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An ID that cannot be a file name.
    #[error("{0:?} cannot name a file (use letters, digits, '-', '_', '.')")]
    BadName(String),
    /// The system random generator failed.
    #[error("no randomness: {0}")]
    Random(getrandom::Error),
}

/// Generates everything `req` asks for; returns the files written.
pub(crate) fn generate(req: &CertRequest) -> Result<Vec<PathBuf>, CertError> {
    for id in req.kmes.iter().chain(&req.saes) {
        let ok = !id.is_empty()
            && id != "ca"
            && id != "link"
            && !id.starts_with('.')
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(CertError::BadName(id.clone()));
        }
    }
    fs::create_dir_all(&req.out).map_err(|source| CertError::Write {
        path: req.out.clone(),
        source,
    })?;
    let mut written = Vec::new();

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = name(&req.ca_name);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    written.push(write(
        &req.out.join("ca.pem"),
        ca_cert.pem().as_bytes(),
        false,
    )?);

    for kme in &req.kmes {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        p.distinguished_name = name(kme);
        p.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut p);
        let cert = p.signed_by(&key, &issuer)?;
        written.push(write(
            &req.out.join(format!("{kme}.pem")),
            cert.pem().as_bytes(),
            false,
        )?);
        let pem = Zeroizing::new(key.serialize_pem());
        written.push(write(
            &req.out.join(format!("{kme}.key")),
            pem.as_bytes(),
            true,
        )?);
    }
    for sae in &req.saes {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        p.distinguished_name = name(sae);
        p.subject_alt_names = vec![SanType::URI(format!("urn:qkd:sae:{sae}").try_into()?)];
        if is_dns_name(sae) {
            p.subject_alt_names
                .push(SanType::DnsName(sae.as_str().try_into()?));
        }
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut p);
        let cert = p.signed_by(&key, &issuer)?;
        written.push(write(
            &req.out.join(format!("{sae}.pem")),
            cert.pem().as_bytes(),
            false,
        )?);
        let pem = Zeroizing::new(key.serialize_pem());
        written.push(write(
            &req.out.join(format!("{sae}.key")),
            pem.as_bytes(),
            true,
        )?);
    }
    if req.secret {
        let len = 32 + req.bootstrap_pads as usize * crate::link_keys::LINK_KEY_BYTES;
        let mut secret = Zeroizing::new(vec![0u8; len]);
        getrandom::fill(&mut secret[..]).map_err(CertError::Random)?;
        let mut hex = Zeroizing::new(String::with_capacity(2 * len + 1));
        for b in secret.iter() {
            hex.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
            hex.push(char::from_digit(u32::from(b & 15), 16).unwrap_or('0'));
        }
        hex.push('\n');
        written.push(write(&req.out.join("link.secret"), hex.as_bytes(), true)?);
    }
    Ok(written)
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// Valid from a minute ago (clock skew) for a year.
fn validity(p: &mut CertificateParams) {
    let now = std::time::SystemTime::now();
    let from = now - std::time::Duration::from_secs(60);
    let to = now + std::time::Duration::from_secs(365 * 86_400);
    p.not_before = from.into();
    p.not_after = to.into();
}

/// Letters, digits and '-' in dot-separated labels of 1 to 63 bytes.
fn is_dns_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Writes `bytes` to `path`; a private file is readable by its owner only.
fn write(path: &Path, bytes: &[u8], private: bool) -> Result<PathBuf, CertError> {
    let err = |source| CertError::Write {
        path: path.to_owned(),
        source,
    };
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    let _ = private;
    let mut f = opts.open(path).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    Ok(path.to_owned())
}
