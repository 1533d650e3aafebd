//! A [`StateStore`] in a folder: each saved state one file,
//! `state-00000001.bin`, `state-00000002.bin`, ..., written whole (a
//! temporary file renamed into place, then the folder synced) and readable
//! by its owner only. The label of a state is its file name, so a host
//! restarted on the same folder finds the state it saved before, and the
//! QPM can hand it to a restarted host by name.
//!
//! **Only the newest state is kept.** A pipeline's state holds the
//! positions of its authentication pads: restoring any state older than the
//! newest one written would use pads again (the channel's restart rule 4,
//! `qkd_postproc::auth`). Once a new state is durable, the older ones are
//! overwritten with zeros and removed.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use qkd_core::control::StateStore;
use zeroize::Zeroizing;

/// The largest state file read, bytes.
pub const MAX_STATE_BYTES: u64 = 256 << 20;

/// A folder of saved states (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct StateDirectory {
    dir: PathBuf,
}

impl StateDirectory {
    /// Opens (and creates, owner-only) the folder.
    ///
    /// # Errors
    /// The folder could not be created.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        }
        Ok(StateDirectory { dir })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The file that holds the state labelled `label`, if the label is one
    /// this store makes (no other name, and no path, is ever opened).
    pub fn file(&self, label: &str) -> Option<PathBuf> {
        sequence_of(label).map(|_| self.dir.join(label))
    }

    /// The labels of the states kept, oldest first.
    ///
    /// # Errors
    /// The folder could not be read.
    pub fn labels(&self) -> io::Result<Vec<String>> {
        let mut found: Vec<(u64, String)> = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            if let Some(name) = name.to_str()
                && let Some(n) = sequence_of(name)
            {
                found.push((n, name.to_owned()));
            }
        }
        found.sort();
        Ok(found.into_iter().map(|(_, l)| l).collect())
    }
}

/// Overwrites a state file with zeros, then removes it.
fn wipe(path: &Path) -> io::Result<()> {
    let len = fs::metadata(path)?.len();
    let mut f = fs::OpenOptions::new().write(true).open(path)?;
    let zeros = [0u8; 4096];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    drop(f);
    fs::remove_file(path)
}

fn sequence_of(label: &str) -> Option<u64> {
    let digits = label.strip_prefix("state-")?.strip_suffix(".bin")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl StateStore for StateDirectory {
    type Error = io::Error;

    fn store(&mut self, state: &[u8]) -> io::Result<String> {
        let next = self
            .labels()?
            .last()
            .and_then(|l| sequence_of(l))
            .map_or(1, |n| n + 1);
        if next > 99_999_999 {
            return Err(io::Error::other(
                "state sequence exhausted; clear the folder",
            ));
        }
        let label = format!("state-{next:08}.bin");
        let tmp = self.dir.join(format!(".{label}.tmp"));
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp)?;
        f.write_all(state)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, self.dir.join(&label))?;
        fs::File::open(&self.dir)?.sync_all()?;
        for older in self.labels()? {
            if sequence_of(&older).is_some_and(|n| n < next) {
                wipe(&self.dir.join(older))?;
            }
        }
        Ok(label)
    }

    fn load(&self, label: Option<&str>) -> io::Result<Option<(String, Zeroizing<Vec<u8>>)>> {
        let label = match label {
            Some(l) => {
                if sequence_of(l).is_none() {
                    return Ok(None);
                }
                l.to_owned()
            }
            None => match self.labels()?.pop() {
                Some(l) => l,
                None => return Ok(None),
            },
        };
        let path = self.dir.join(&label);
        let f = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut bytes = Zeroizing::new(Vec::new());
        f.take(MAX_STATE_BYTES + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_STATE_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "state file too large",
            ));
        }
        Ok(Some((label, bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_survive_a_reopen_and_labels_cannot_escape() {
        let dir = std::env::temp_dir().join(format!("qkd-states-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut s = StateDirectory::open(&dir).unwrap();
        assert_eq!(s.load(None).unwrap(), None);
        assert_eq!(s.store(b"one").unwrap(), "state-00000001.bin");
        let first = dir.join("state-00000001.bin");
        // A second name for the first state's bytes shows they are
        // overwritten, not just unlinked, when a newer state lands.
        let hard_link = dir.join("seen-first");
        fs::hard_link(&first, &hard_link).unwrap();
        assert_eq!(s.store(b"two").unwrap(), "state-00000002.bin");
        let s2 = StateDirectory::open(&dir).unwrap();
        let (l, b) = s2.load(None).unwrap().unwrap();
        assert_eq!(
            (l.as_str(), b.as_slice()),
            ("state-00000002.bin", &b"two"[..])
        );
        // Only the newest is kept; the older one was zeroed and removed.
        assert_eq!(s2.labels().unwrap(), ["state-00000002.bin"]);
        assert_eq!(s2.load(Some("state-00000001.bin")).unwrap(), None);
        assert_eq!(fs::read(&hard_link).unwrap(), [0u8; 3]);
        for bad in [
            "../state-00000001.bin",
            "/etc/passwd",
            "state-1.bin",
            "state-0000000x.bin",
        ] {
            assert_eq!(s2.load(Some(bad)).unwrap(), None, "{bad}");
            assert_eq!(s2.file(bad), None);
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join("state-00000002.bin"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "state files are owner-only");
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
