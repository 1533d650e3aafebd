//! The state file of one side (`--save`, `--resume`): the pipeline's saved
//! state wrapped with what the host needs to continue (the device and how
//! far it got), and a checksum.
//!
//! ```text
//! "qkd-link state\n" (15 bytes) | version u32 = 1 | header length u32 | header (JSON)
//!   | pipeline state length u64 | pipeline state (qkd_postproc's save_state)
//!   | BLAKE3 of everything before (32 bytes)
//! ```
//! Integers big-endian. The header is `{"role", "device", "next_frame"}`:
//! the side, the simulated device's configuration, and the number of device
//! frames taken so far (the device resumes there).
//!
//! The file holds key material (unused authentication pads, the pipeline's
//! secret seed): it is written with mode 0600, through a temporary file
//! renamed into place, and every in-memory copy is zeroized. A state may be
//! resumed **once** (a second resume would reuse pads): `qkd-link` removes
//! the file it resumed from as soon as the link to the peer is up, and
//! writes a new one with `--save`.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use qkd_core::{Role, SimulatorConfig};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::net::role_name;

const MAGIC: &[u8; 15] = b"qkd-link state\n";
const VERSION: u32 = 1;
/// Largest state file read (1 GiB).
const MAX_STATE_BYTES: u64 = 1 << 30;

/// What the host keeps next to the pipeline's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HostState {
    /// The side that saved it.
    pub(crate) role: Role,
    /// The simulated device.
    pub(crate) device: SimulatorConfig,
    /// Device frames taken so far (the next frame's block number).
    pub(crate) next_frame: u64,
}

/// Why a state file could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StateFileError {
    #[error("cannot read the state file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write the state file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path} is not a qkd-link state file")]
    NotAState { path: PathBuf },
    #[error("the state file {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("the state file {path} has format version {found}; this qkd-link reads {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("the state file {path} was saved by {}; this side is {}", role_name(*saved), role_name(*this))]
    OtherSide {
        path: PathBuf,
        saved: Role,
        this: Role,
    },
}

/// Writes `host` and `pipeline` to `path` (mode 0600, atomically).
pub(crate) fn write(path: &Path, host: &HostState, pipeline: &[u8]) -> Result<(), StateFileError> {
    let err = |source| StateFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let header = serde_json::to_vec(host).map_err(|e| err(io::Error::other(e)))?;
    let mut bytes = Zeroizing::new(Vec::with_capacity(
        MAGIC.len() + 16 + header.len() + pipeline.len() + 32,
    ));
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_be_bytes());
    bytes.extend_from_slice(&(header.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(&(pipeline.len() as u64).to_be_bytes());
    bytes.extend_from_slice(pipeline);
    let digest = blake3::hash(&bytes);
    bytes.extend_from_slice(digest.as_bytes());

    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(err)?;
    file.write_all(&bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    fs::rename(&tmp, path).map_err(err)
}

/// Reads a state file saved by `role`: the host's part and the pipeline's.
pub(crate) fn read(
    path: &Path,
    role: Role,
) -> Result<(HostState, Zeroizing<Vec<u8>>), StateFileError> {
    let p = || path.to_path_buf();
    let corrupt = |reason: &str| StateFileError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let len = fs::metadata(path)
        .map_err(|source| StateFileError::Read { path: p(), source })?
        .len();
    if len > MAX_STATE_BYTES {
        return Err(corrupt("larger than any state qkd-link writes (1 GiB)"));
    }
    let bytes = Zeroizing::new(
        fs::read(path).map_err(|source| StateFileError::Read { path: p(), source })?,
    );
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(StateFileError::NotAState { path: p() });
    }
    let rest = &bytes[MAGIC.len()..];
    let version = rest
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| corrupt("truncated"))?;
    if version != VERSION {
        return Err(StateFileError::Version {
            path: p(),
            found: version,
        });
    }
    if bytes.len() < MAGIC.len() + 4 + 4 + 8 + 32 {
        return Err(corrupt("truncated"));
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != digest {
        return Err(corrupt("checksum mismatch (truncated or altered)"));
    }
    let mut at = MAGIC.len() + 4;
    let header_len = u32::from_be_bytes(
        body[at..at + 4]
            .try_into()
            .map_err(|_| corrupt("truncated"))?,
    ) as usize;
    at += 4;
    let header = body
        .get(at..at.saturating_add(header_len))
        .ok_or_else(|| corrupt("truncated header"))?;
    let host: HostState =
        serde_json::from_slice(header).map_err(|e| corrupt(&format!("header: {e}")))?;
    at += header_len;
    let len_bytes = body.get(at..at + 8).ok_or_else(|| corrupt("truncated"))?;
    let pipeline_len = u64::from_be_bytes(len_bytes.try_into().map_err(|_| corrupt("truncated"))?);
    at += 8;
    if (body.len() - at) as u64 != pipeline_len {
        return Err(corrupt(
            "the pipeline state's length does not match the file",
        ));
    }
    if host.role != role {
        return Err(StateFileError::OtherSide {
            path: p(),
            saved: host.role,
            this: role,
        });
    }
    Ok((host, Zeroizing::new(body[at..].to_vec())))
}

/// Reads a file that is not a qkd-link state file: a pipeline state as
/// the control surface saves it (`POST /pipeline/save` over CoAP).
pub(crate) fn read_raw(path: &Path) -> Result<Zeroizing<Vec<u8>>, StateFileError> {
    let len = fs::metadata(path)
        .map_err(|source| StateFileError::Read {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    if len > MAX_STATE_BYTES {
        return Err(StateFileError::Corrupt {
            path: path.to_path_buf(),
            reason: "larger than any state qkd-link writes (1 GiB)".into(),
        });
    }
    fs::read(path)
        .map(Zeroizing::new)
        .map_err(|source| StateFileError::Read {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostState {
        HostState {
            role: Role::Alice,
            device: SimulatorConfig::default(),
            next_frame: 7,
        }
    }

    #[test]
    fn a_written_state_reads_back_and_any_damage_is_refused() {
        let dir = std::env::temp_dir().join(format!("qkd-link-state-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.state");
        write(&path, &host(), b"{\"pipeline\":1}").unwrap();
        let (h, p) = read(&path, Role::Alice).unwrap();
        assert_eq!(h, host());
        assert_eq!(&p[..], b"{\"pipeline\":1}");
        assert!(matches!(
            read(&path, Role::Bob),
            Err(StateFileError::OtherSide { .. })
        ));
        let good = fs::read(&path).unwrap();
        for i in [0, 15, 20, good.len() / 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[i] ^= 1;
            fs::write(&path, &bad).unwrap();
            assert!(read(&path, Role::Alice).is_err(), "byte {i}");
        }
        for cut in [0, 10, 30, good.len() - 1] {
            fs::write(&path, &good[..cut]).unwrap();
            assert!(read(&path, Role::Alice).is_err(), "cut at {cut}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
