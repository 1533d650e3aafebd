//! The keys of the KMS-to-KMS link: a [`PskSource`] that draws from the
//! link's reserve of QKD key ([`crate::reserve`]) and falls back to an
//! expansion of the operator-installed initial secret only while the
//! reserve has nothing to give.
//!
//! Every handshake, every AES-256-GCM rekey, every one-time pad of the
//! secured channel and every run of the pipeline takes one link key of
//! [`LINK_KEY_BYTES`]. The node whose KME ID sorts first owns the even
//! keys, the other the odd ones (qkd-handshake's ownership rule), so the
//! two never draw the same key; the other side takes a key by its ID.
//!
//! # Where a link key comes from
//!
//! 1. **The reserve** (fresh QKD key): [`next`](PskSource::next) draws the
//!    oldest drawable reserve entry this node owns. Its key ID names the
//!    reserve position (the block it was carved from).
//! 2. **The expansion of the initial secret** (computational): only when
//!    the reserve holds no drawable entry of this node's, that is on a new
//!    link until the first session has carved [`crate::reserve::SETTLE`]
//!    ` + 1` entries (the first handshake, the first pipeline run and any
//!    rekey before then), and again if the reserve ever runs dry (a link
//!    drawing faster than one key per [`crate::reserve::RESERVE_EVERY`]
//!    blocks). Link key `i` of the expansion is a blake3 stream keyed by
//!    the initial secret and `i`; its security rests on blake3 and on the
//!    secrecy of the initial secret, not on QKD. Its ID is derived from the
//!    link name, a fingerprint of the secret and `i`, in a namespace apart
//!    from the reserve's.
//!
//! **No reuse across restarts.** A reserve entry is zeroized in the
//! reserve file (fsynced) before it leaves this source. For the expansion,
//! the state file holds, per parity, the lowest index not yet consumed; it
//! is rewritten (write, fsync, rename) before a key leaves this source, and
//! everything below it is refused afterwards. Deleting the state and
//! reserve files on both nodes would allow reuse of expansion keys;
//! deleting them on one makes that node's first handshakes fail until it
//! has drawn past what the peer remembers.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use qkd_core::{BlockId, KeyId, SecretKey};
use qkd_handshake::capability::Ownership;
use qkd_handshake::psk::{PskError, PskSource};
use zeroize::Zeroizing;

use crate::reserve::{Reserve, ReserveError, ReserveStats};

/// Bytes of each link key (handshake PSK, rekey material).
pub(crate) const LINK_KEY_BYTES: usize = 1024;

/// How far past the lowest unconsumed index the peer's keys are recognised.
const LOOKAHEAD: u64 = 4096;

/// Why the initial secret or the state file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum LinkKeyError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The secret file is not hex of at least 32 bytes.
    #[error("{0}: the initial secret must be at least 64 hex digits (32 bytes)")]
    BadSecret(PathBuf),
    /// The state file is not two numbers.
    #[error("{0}: not a link state file (two numbers expected)")]
    BadState(PathBuf),
    /// The reserve file cannot be used.
    #[error(transparent)]
    Reserve(#[from] ReserveError),
}

/// The link's keys, shared between the successive channels of the node
/// and the pipeline source (each draw is persisted before it is used, so
/// no two users ever get the same key).
#[derive(Clone)]
pub(crate) struct SharedLinkKeys(std::sync::Arc<std::sync::Mutex<LinkKeys>>);

impl SharedLinkKeys {
    /// Opens the keys of `link` (see [`LinkKeys::open`]).
    pub(crate) fn open(
        link: &str,
        secret_file: &Path,
        state_file: &Path,
        ownership: Ownership,
    ) -> Result<Self, LinkKeyError> {
        Ok(SharedLinkKeys(std::sync::Arc::new(std::sync::Mutex::new(
            LinkKeys::open(link, secret_file, state_file, ownership)?,
        ))))
    }

    /// The link keys of the node configured by `config` (its ownership
    /// follows the same rule as the store's: the node whose KME ID sorts
    /// first owns the even indices).
    pub(crate) fn open_for(config: &crate::config::NodeConfig) -> Result<Self, LinkKeyError> {
        let ownership = if config.accepts_link() {
            Ownership::First
        } else {
            Ownership::Second
        };
        Self::open(
            &config.link_name(),
            &config.peer.initial_secret_file,
            &config.peer.link_state_file,
            ownership,
        )
    }

    /// The keys (a panicked holder leaves them usable: every call is one
    /// whole draw or lookup).
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, LinkKeys> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl PskSource for SharedLinkKeys {
    fn next(&mut self) -> Result<(KeyId, SecretKey), PskError> {
        self.lock().next()
    }
    fn find(&mut self, id: &KeyId) -> Result<SecretKey, PskError> {
        self.lock().find(id)
    }
    fn consume(&mut self, id: &KeyId) -> Result<(), PskError> {
        self.lock().consume(id)
    }
}

/// The link's keys, as a qkd-handshake PSK source.
pub(crate) struct LinkKeys {
    root: Zeroizing<[u8; 32]>,
    link: Vec<u8>,
    ownership: Ownership,
    /// Lowest unconsumed index per parity (persisted).
    floor: [u64; 2],
    used: HashSet<u64>,
    ids: HashMap<KeyId, u64>,
    computed_to: [u64; 2],
    state: PathBuf,
    reserve: Reserve,
    /// Keys this process drew from the expansion (not the reserve).
    expansion_draws: u64,
}

impl core::fmt::Debug for LinkKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LinkKeys")
            .field("ownership", &self.ownership)
            .field("floor", &self.floor)
            .field("reserve", &self.reserve)
            .finish_non_exhaustive()
    }
}

/// Reads a hex secret of at least 32 bytes.
fn read_secret(path: &Path) -> Result<Zeroizing<Vec<u8>>, LinkKeyError> {
    let text =
        Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| LinkKeyError::Io {
                path: path.to_owned(),
                source,
            })?,
        );
    let hex = text.trim();
    if hex.len() < 64 || hex.len() % 2 != 0 {
        return Err(LinkKeyError::BadSecret(path.to_owned()));
    }
    let mut out = Zeroizing::new(Vec::with_capacity(hex.len() / 2));
    for pair in hex.as_bytes().chunks(2) {
        let hi = (pair[0] as char).to_digit(16);
        let lo = (pair[1] as char).to_digit(16);
        match (hi, lo) {
            (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
            _ => return Err(LinkKeyError::BadSecret(path.to_owned())),
        }
    }
    Ok(out)
}

impl LinkKeys {
    /// The keys of link `link` from the secret in `secret_file`, with the
    /// consumption state in `state_file` and the reserve in
    /// [`reserve_path`]`(state_file)` (both created if missing).
    pub(crate) fn open(
        link: &str,
        secret_file: &Path,
        state_file: &Path,
        ownership: Ownership,
    ) -> Result<Self, LinkKeyError> {
        let secret = read_secret(secret_file)?;
        let root = Zeroizing::new(blake3::derive_key(
            "qkd kms-node 2026 link key root",
            &secret,
        ));
        let floor = match std::fs::read_to_string(state_file) {
            Ok(text) => {
                let nums: Vec<u64> = text
                    .split_whitespace()
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .map_err(|_| LinkKeyError::BadState(state_file.to_owned()))?;
                match nums[..] {
                    [even, odd] if even % 2 == 0 && odd % 2 == 1 => [even, odd],
                    _ => return Err(LinkKeyError::BadState(state_file.to_owned())),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => [0, 1],
            Err(source) => {
                return Err(LinkKeyError::Io {
                    path: state_file.to_owned(),
                    source,
                });
            }
        };
        // The key IDs name the secret too (by a fingerprint that reveals
        // nothing of it), so two secrets never share IDs.
        let fingerprint = blake3::derive_key("qkd kms-node 2026 link key id", &secret);
        let mut name = link.as_bytes().to_vec();
        name.extend_from_slice(&fingerprint[..8]);
        let reserve = Reserve::open(&reserve_path(state_file), &name)?;
        let keys = LinkKeys {
            root,
            link: name,
            ownership,
            floor,
            used: HashSet::new(),
            ids: HashMap::new(),
            computed_to: floor,
            state: state_file.to_owned(),
            reserve,
            expansion_draws: 0,
        };
        keys.persist().map_err(|source| LinkKeyError::Io {
            path: state_file.to_owned(),
            source,
        })?;
        Ok(keys)
    }

    /// Lowest unconsumed index of the expansion per parity (even, odd).
    pub(crate) fn floors(&self) -> [u64; 2] {
        self.floor
    }

    /// The reserve's counters.
    pub(crate) fn reserve_stats(&self) -> ReserveStats {
        self.reserve.stats()
    }

    /// Keys this process drew from the expansion of the initial secret.
    #[cfg(test)]
    pub(crate) fn expansion_draws(&self) -> u64 {
        self.expansion_draws
    }

    /// Whether `id` names a reserve entry (held now or before).
    #[cfg(test)]
    pub(crate) fn is_reserve_key(&self, id: &KeyId) -> bool {
        self.reserve.knows(id)
    }

    /// The key ID of the reserve entry carved from `block`.
    #[cfg(test)]
    pub(crate) fn reserve_key_id(&self, block: BlockId) -> KeyId {
        self.reserve.id(block)
    }

    /// Takes the reserve's share of a final key block before it enters the
    /// store (see [`Reserve::carve`]): the part for the store, or `None`
    /// when the whole block goes there.
    ///
    /// # Errors
    /// The reserve file could not be written: the block must go nowhere.
    pub(crate) fn carve(
        &mut self,
        first: BlockId,
        block: BlockId,
        key: &SecretKey,
    ) -> std::io::Result<Option<SecretKey>> {
        self.reserve.carve(first, block, key)
    }

    fn own_parity(&self) -> usize {
        match self.ownership {
            Ownership::First => 0,
            Ownership::Second => 1,
        }
    }

    fn id(&self, index: u64) -> KeyId {
        KeyId::for_block(&self.link, BlockId::new(0), index)
    }

    fn key(&self, index: u64) -> SecretKey {
        let mut h = blake3::Hasher::new_keyed(&self.root);
        h.update(&index.to_le_bytes());
        let mut bytes = vec![0u8; LINK_KEY_BYTES];
        h.finalize_xof().fill(&mut bytes);
        SecretKey::from_vec(bytes)
    }

    /// Writes the floors durably (temporary file, fsync, rename).
    fn persist(&self) -> std::io::Result<()> {
        let tmp = self.state.with_extension("tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            writeln!(f, "{} {}", self.floor[0], self.floor[1])?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.state)?;
        if let Some(dir) = self.state.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Marks `index` consumed and persists the new floor of its parity.
    fn mark(&mut self, index: u64) -> Result<(), PskError> {
        let p = (index % 2) as usize;
        let old = self.floor[p];
        self.floor[p] = self.floor[p].max(index + 2);
        if self.persist().is_err() {
            // Without a durable record the key must not be used.
            self.floor[p] = old;
            return Err(PskError::Exhausted);
        }
        self.used.insert(index);
        self.used.retain(|&i| i >= self.floor[(i % 2) as usize]);
        Ok(())
    }

    /// The index of `id` if it names a key at or above its parity's floor.
    fn index_of(&mut self, id: &KeyId) -> Result<u64, PskError> {
        for p in 0..2 {
            let end = self.floor[p] + 2 * LOOKAHEAD;
            let mut i = self.computed_to[p].max(self.floor[p]);
            while i < end {
                let kid = self.id(i);
                self.ids.insert(kid, i);
                i += 2;
            }
            self.computed_to[p] = self.computed_to[p].max(end);
        }
        match self.ids.get(id) {
            Some(&i) if i >= self.floor[(i % 2) as usize] && !self.used.contains(&i) => Ok(i),
            Some(_) => Err(PskError::AlreadyUsed(*id)),
            None => Err(PskError::Unknown(*id)),
        }
    }
}

impl PskSource for LinkKeys {
    fn next(&mut self) -> Result<(KeyId, SecretKey), PskError> {
        match self.reserve.draw(self.own_parity() as u8) {
            Ok(Some(drawn)) => return Ok(drawn),
            Ok(None) => {}
            // Without a durable record the key must not be used.
            Err(_) => return Err(PskError::Exhausted),
        }
        let index = self.floor[self.own_parity()];
        self.mark(index)?;
        self.expansion_draws += 1;
        Ok((self.id(index), self.key(index)))
    }

    fn find(&mut self, id: &KeyId) -> Result<SecretKey, PskError> {
        if let Some(found) = self.reserve.find(id) {
            return found;
        }
        let i = self.index_of(id)?;
        Ok(self.key(i))
    }

    fn consume(&mut self, id: &KeyId) -> Result<(), PskError> {
        if let Some(done) = self.reserve.consume(id) {
            return done;
        }
        let i = self.index_of(id)?;
        self.mark(i)
    }
}

/// Where the reserve of the link whose state file is `state_file` lives:
/// beside it, with `.reserve` appended to its name.
pub(crate) fn reserve_path(state_file: &Path) -> PathBuf {
    let mut p = state_file.as_os_str().to_owned();
    p.push(".reserve");
    PathBuf::from(p)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn setup(dir: &Path) -> PathBuf {
        let secret = dir.join("s");
        std::fs::write(&secret, "ab".repeat(32)).unwrap();
        secret
    }

    #[test]
    fn the_two_sides_agree_and_nothing_is_reused_across_restarts() {
        let dir = std::env::temp_dir().join(format!("kms-node-linkkeys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = setup(&dir);
        let (sa, sb) = (dir.join("a.state"), dir.join("b.state"));
        let _ = std::fs::remove_file(&sa);
        let _ = std::fs::remove_file(&sb);
        let mut a = LinkKeys::open("l", &secret, &sa, Ownership::First).unwrap();
        let mut b = LinkKeys::open("l", &secret, &sb, Ownership::Second).unwrap();
        let (id, key) = a.next().unwrap();
        assert_eq!(b.find(&id).unwrap(), key);
        b.consume(&id).unwrap();
        assert_eq!(b.find(&id).unwrap_err(), PskError::AlreadyUsed(id));
        let (id_b, _) = b.next().unwrap();
        assert_ne!(id_b, id);
        drop((a, b));
        // After a restart of both, the first keys are refused (below the
        // recorded floor they are not even recognised) and not drawn.
        let mut a = LinkKeys::open("l", &secret, &sa, Ownership::First).unwrap();
        let mut b = LinkKeys::open("l", &secret, &sb, Ownership::Second).unwrap();
        assert_eq!(b.find(&id).unwrap_err(), PskError::Unknown(id));
        assert!(b.consume(&id).is_err());
        let (id2, _) = a.next().unwrap();
        assert_ne!(id2, id);
        assert!(b.find(&id2).is_ok());
        // The peer's key that this side never took is still there for it.
        assert!(a.find(&id_b).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A final key block of `len` bytes, the same on both nodes.
    pub(crate) fn final_block(k: u64, len: usize) -> SecretKey {
        let mut b = vec![0u8; len];
        let mut h = blake3::Hasher::new();
        h.update(b"final block");
        h.update(&k.to_be_bytes());
        h.finalize_xof().fill(&mut b);
        SecretKey::from_vec(b)
    }

    #[test]
    fn keys_come_from_the_reserve_once_it_holds_some_and_never_twice() {
        let dir =
            std::env::temp_dir().join(format!("kms-node-linkkeys-reserve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let secret = setup(&dir);
        let (sa, sb) = (dir.join("a.state"), dir.join("b.state"));
        let mut a = LinkKeys::open("l", &secret, &sa, Ownership::First).unwrap();
        let mut b = LinkKeys::open("l", &secret, &sb, Ownership::Second).unwrap();
        // A new link: the reserve is empty, the expansion keys the first use.
        let (first_id, _) = a.next().unwrap();
        assert!(!a.is_reserve_key(&first_id));
        assert_eq!(a.expansion_draws(), 1);
        b.take(&first_id).unwrap();
        // The first session's blocks: both nodes carve the same entries.
        let first = BlockId::new((5 << 24) | 1);
        let mut stored = Vec::new();
        for k in 0..40 {
            let block = BlockId::new(first.get() + k);
            let key = final_block(k, 8192);
            let ra = a.carve(first, block, &key).unwrap();
            let rb = b.carve(first, block, &key).unwrap();
            assert_eq!(ra, rb);
            stored.push(ra.unwrap_or(key));
        }
        assert_eq!(a.reserve_stats(), b.reserve_stats());
        assert_eq!(a.reserve_stats().live, [5, 5]);
        let mut drawn = Vec::new();
        for _ in 0..3 {
            for flip in [false, true] {
                let (mine, peer) = if flip {
                    (&mut b, &mut a)
                } else {
                    (&mut a, &mut b)
                };
                let (id, key) = mine.next().unwrap();
                assert!(mine.is_reserve_key(&id), "drawn from the expansion");
                assert_eq!(peer.take(&id).unwrap(), key);
                // A reserve key is never also in the store.
                assert!(stored.iter().all(|s| {
                    !s.expose_secret()
                        .windows(key.len())
                        .any(|w| w == key.expose_secret())
                }));
                drawn.push(id);
            }
        }
        assert_eq!(a.expansion_draws(), 1);
        assert_eq!(b.expansion_draws(), 0);
        drop((a, b));
        // Both processes restart: nothing drawn before comes back, neither
        // from next() nor by ID.
        let mut a = LinkKeys::open("l", &secret, &sa, Ownership::First).unwrap();
        let mut b = LinkKeys::open("l", &secret, &sb, Ownership::Second).unwrap();
        for id in &drawn {
            assert_eq!(a.find(id).unwrap_err(), PskError::AlreadyUsed(*id));
            assert_eq!(b.find(id).unwrap_err(), PskError::AlreadyUsed(*id));
        }
        for _ in 0..6 {
            for flip in [false, true] {
                let (mine, peer) = if flip {
                    (&mut b, &mut a)
                } else {
                    (&mut a, &mut b)
                };
                let (id, key) = mine.next().unwrap();
                assert!(!drawn.contains(&id), "a key was drawn twice");
                assert_eq!(peer.take(&id).unwrap(), key);
                drawn.push(id);
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_short_or_non_hex_secret_is_refused() {
        let dir =
            std::env::temp_dir().join(format!("kms-node-linkkeys-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = dir.join("s");
        for bad in ["abcd", &"zz".repeat(32)] {
            std::fs::write(&s, bad).unwrap();
            assert!(matches!(
                LinkKeys::open("l", &s, &dir.join("st"), Ownership::First),
                Err(LinkKeyError::BadSecret(_))
            ));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
