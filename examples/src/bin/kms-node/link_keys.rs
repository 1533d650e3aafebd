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
//! 2. **The expansion of the initial secret** (computational), never for a
//!    one-time pad ([`PskSource::next_pad`] and [`PskSource::find_pad`]
//!    serve reserve keys only; without one the secured channel of the
//!    one-time-pad suite waits, [`ChannelEvent::PadsExhausted`]): only when
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
//! 3. **Bootstrap pads** (information-theoretic): an initial secret may
//!    carry, after its 32 bytes, whole keys of [`LINK_KEY_BYTES`] random
//!    bytes (`kms-node certs --bootstrap-pads N`). They are used raw, only
//!    as one-time pads, only when the reserve has none, each once (even
//!    ones owned by the node that owns even keys). A link whose channel
//!    allows only the one-time-pad suite needs them: its first sync
//!    messages, which start the session whose blocks fill the reserve,
//!    must be padded before any QKD key exists.
//!
//! **No reuse across restarts.** A reserve entry is zeroized in the
//! reserve file (fsynced) before it leaves this source. For the expansion,
//! the state file holds, per parity, the lowest index not yet consumed (and
//! the same for the bootstrap pads); it
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
#[cfg(doc)]
use qkd_handshake::channel::ChannelEvent;
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
    /// The secret file is not hex of 32 bytes plus whole bootstrap pads.
    #[error(
        "{0}: the initial secret must be hex of 32 bytes, optionally followed by bootstrap pads of {LINK_KEY_BYTES} bytes each"
    )]
    BadSecret(PathBuf),
    /// The state file is not two or four numbers.
    #[error("{0}: not a link state file (two or four numbers expected)")]
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
    fn next_pad(&mut self) -> Result<(KeyId, SecretKey), PskError> {
        self.lock().next_pad()
    }
    fn find_pad(&mut self, id: &KeyId) -> Result<SecretKey, PskError> {
        self.lock().find_pad(id)
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
    /// The bootstrap pads: the initial secret's bytes after its first 32,
    /// in keys of [`LINK_KEY_BYTES`], used raw (never expanded).
    bootstrap: Zeroizing<Vec<u8>>,
    /// Lowest unconsumed bootstrap pad per parity (persisted).
    boot_floor: [u64; 2],
    /// The bootstrap pads' key IDs, in order, and the index of each.
    boot_ids: Vec<KeyId>,
    boot_index: HashMap<KeyId, u64>,
    /// Reserve keys this process drew as one-time pads.
    pad_draws: u64,
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
    if hex.len() < 64 || hex.len() % 2 != 0 || (hex.len() / 2 - 32) % LINK_KEY_BYTES != 0 {
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
        let file = read_secret(secret_file)?;
        // The first 32 bytes key the expansion and name the link keys; the
        // rest are bootstrap pads, used raw and independent of both.
        let (secret, bootstrap) = file.split_at(32);
        let bootstrap = Zeroizing::new(bootstrap.to_vec());
        let root = Zeroizing::new(blake3::derive_key(
            "qkd kms-node 2026 link key root",
            secret,
        ));
        let (floor, boot_floor) = match std::fs::read_to_string(state_file) {
            Ok(text) => {
                let nums: Vec<u64> = text
                    .split_whitespace()
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .map_err(|_| LinkKeyError::BadState(state_file.to_owned()))?;
                let parities = |p: &[u64]| p[0].is_multiple_of(2) && p[1] % 2 == 1;
                match nums[..] {
                    // The form before bootstrap pads existed.
                    [even, odd] if parities(&nums) => ([even, odd], [0, 1]),
                    [even, odd, be, bo] if parities(&nums) && parities(&nums[2..]) => {
                        ([even, odd], [be, bo])
                    }
                    _ => return Err(LinkKeyError::BadState(state_file.to_owned())),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ([0, 1], [0, 1]),
            Err(source) => {
                return Err(LinkKeyError::Io {
                    path: state_file.to_owned(),
                    source,
                });
            }
        };
        // The key IDs name the secret too (by a fingerprint that reveals
        // nothing of it), so two secrets never share IDs.
        let fingerprint = blake3::derive_key("qkd kms-node 2026 link key id", secret);
        let mut name = link.as_bytes().to_vec();
        name.extend_from_slice(&fingerprint[..8]);
        let mut boot_name = name.clone();
        boot_name.extend_from_slice(b" bootstrap pads");
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
            pad_draws: 0,
            bootstrap,
            boot_floor,
            boot_ids: Vec::new(),
            boot_index: HashMap::new(),
        };
        let mut keys = keys;
        keys.boot_ids = (0..keys.bootstrap_pads())
            .map(|j| KeyId::for_block(&boot_name, BlockId::new(0), j))
            .collect();
        keys.boot_index = (0u64..)
            .zip(&keys.boot_ids)
            .map(|(j, id)| (*id, j))
            .collect();
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

    /// Reserve keys this process drew as one-time pads.
    #[cfg(test)]
    pub(crate) fn pad_draws(&self) -> u64 {
        self.pad_draws
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
            writeln!(
                f,
                "{} {} {} {}",
                self.floor[0], self.floor[1], self.boot_floor[0], self.boot_floor[1]
            )?;
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

    /// Bootstrap pads in the initial secret.
    fn bootstrap_pads(&self) -> u64 {
        (self.bootstrap.len() / LINK_KEY_BYTES) as u64
    }

    /// The bootstrap pad named `id`, if it is one.
    fn boot_index(&self, id: &KeyId) -> Option<u64> {
        self.boot_index.get(id).copied()
    }

    fn boot_key(&self, j: u64) -> SecretKey {
        let start = j as usize * LINK_KEY_BYTES;
        SecretKey::from_vec(self.bootstrap[start..start + LINK_KEY_BYTES].to_vec())
    }

    /// Consumes bootstrap pad `j` (one-time: its floor passes it, durably,
    /// before the key is used). Pads of a parity are consumed in order, so
    /// skipping ahead gives up the ones below.
    fn mark_bootstrap(&mut self, j: u64, id: &KeyId) -> Result<(), PskError> {
        let p = (j % 2) as usize;
        if j < self.boot_floor[p] {
            return Err(PskError::AlreadyUsed(*id));
        }
        let old = self.boot_floor[p];
        self.boot_floor[p] = j + 2;
        if self.persist().is_err() {
            self.boot_floor[p] = old;
            return Err(PskError::Exhausted);
        }
        Ok(())
    }

    /// The next bootstrap pad this node owns, if any is left.
    fn next_bootstrap_pad(&mut self) -> Result<(KeyId, SecretKey), PskError> {
        let j = self.boot_floor[self.own_parity()];
        if j >= self.bootstrap_pads() {
            return Err(PskError::Exhausted);
        }
        let Some(&id) = self.boot_ids.get(j as usize) else {
            return Err(PskError::Exhausted);
        };
        self.mark_bootstrap(j, &id)?;
        self.pad_draws += 1;
        Ok((id, self.boot_key(j)))
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
        if let Some(j) = self.boot_index(id) {
            return self.mark_bootstrap(j, id);
        }
        let i = self.index_of(id)?;
        self.mark(i)
    }

    /// One-time pads come from the reserve only: the expansion of the
    /// initial secret is computational and never becomes a pad. With no
    /// drawable reserve entry the answer is `Exhausted`, and the secured
    /// channel waits for the pipeline to carve more.
    fn next_pad(&mut self) -> Result<(KeyId, SecretKey), PskError> {
        match self.reserve.draw(self.own_parity() as u8) {
            Ok(Some(drawn)) => {
                self.pad_draws += 1;
                Ok(drawn)
            }
            Ok(None) => self.next_bootstrap_pad(),
            // Without a durable record the key must not be used.
            Err(_) => Err(PskError::Exhausted),
        }
    }

    /// The peer's pad key by its ID, from the reserve only; an ID of the
    /// expansion is refused as not QKD key.
    fn find_pad(&mut self, id: &KeyId) -> Result<SecretKey, PskError> {
        if let Some(found) = self.reserve.find(id) {
            return found;
        }
        if let Some(j) = self.boot_index(id) {
            return if self.boot_floor[(j % 2) as usize] <= j {
                Ok(self.boot_key(j))
            } else {
                Err(PskError::AlreadyUsed(*id))
            };
        }
        match self.index_of(id) {
            Ok(_) | Err(PskError::AlreadyUsed(_)) => Err(PskError::NotQkdKey(*id)),
            Err(e) => Err(e),
        }
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

    /// Both nodes' keys of a new link in a fresh folder.
    struct Pair {
        dir: PathBuf,
        secret: PathBuf,
        sa: PathBuf,
        sb: PathBuf,
        a: LinkKeys,
        b: LinkKeys,
    }

    impl Pair {
        fn fresh(name: &str) -> Pair {
            let dir = std::env::temp_dir()
                .join(format!("kms-node-linkkeys-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let secret = setup(&dir);
            let (sa, sb) = (dir.join("a.state"), dir.join("b.state"));
            let a = LinkKeys::open("l", &secret, &sa, Ownership::First).unwrap();
            let b = LinkKeys::open("l", &secret, &sb, Ownership::Second).unwrap();
            Pair {
                dir,
                secret,
                sa,
                sb,
                a,
                b,
            }
        }
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
        let Pair {
            dir,
            secret,
            sa,
            sb,
            mut a,
            mut b,
        } = Pair::fresh("reserve");
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
    fn one_time_pads_come_from_the_reserve_only() {
        let Pair {
            dir, mut a, mut b, ..
        } = Pair::fresh("pads");
        // A new link: the reserve is empty. A handshake key comes from the
        // expansion; a pad does not come at all.
        assert_eq!(a.next_pad().unwrap_err(), PskError::Exhausted);
        assert_eq!(b.next_pad().unwrap_err(), PskError::Exhausted);
        assert_eq!(a.expansion_draws(), 0, "a pad request drew nothing");
        let (expanded, _) = a.next().unwrap();
        assert_eq!(a.expansion_draws(), 1);
        // The peer refuses that key as a pad (a forged or confused record
        // naming an expansion key is not opened with it) and still knows
        // it as a handshake key.
        assert_eq!(
            b.find_pad(&expanded).unwrap_err(),
            PskError::NotQkdKey(expanded)
        );
        assert!(b.find(&expanded).is_ok());
        // Blocks arrive: pads are reserve entries, taken by ID on the other
        // side, never twice.
        let first = BlockId::new((6 << 24) | 1);
        for k in 0..40 {
            let block = BlockId::new(first.get() + k);
            let key = final_block(k, 8192);
            assert_eq!(
                a.carve(first, block, &key).unwrap(),
                b.carve(first, block, &key).unwrap()
            );
        }
        let mut seen = Vec::new();
        while let Ok((id, pad)) = a.next_pad() {
            assert!(a.is_reserve_key(&id));
            assert_eq!(b.find_pad(&id).unwrap(), pad);
            b.consume(&id).unwrap();
            assert_eq!(b.find_pad(&id).unwrap_err(), PskError::AlreadyUsed(id));
            assert!(!seen.contains(&id));
            seen.push(id);
        }
        assert!(!seen.is_empty());
        assert_eq!(a.pad_draws(), seen.len() as u64);
        // Out of reserve again: no fallback to the expansion.
        assert_eq!(a.next_pad().unwrap_err(), PskError::Exhausted);
        assert_eq!(a.expansion_draws(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bootstrap_pads_are_used_raw_once_each_and_only_as_pads() {
        let dir =
            std::env::temp_dir().join(format!("kms-node-linkkeys-boot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("s");
        // 32 bytes of secret, then four pads of distinct bytes.
        let mut raw = vec![0xab_u8; 32];
        for j in 0..4u8 {
            raw.extend(std::iter::repeat_n(0x10 + j, LINK_KEY_BYTES));
        }
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(&secret, hex).unwrap();
        let (sa, sb) = (dir.join("a.state"), dir.join("b.state"));
        let mut a = LinkKeys::open("l", &secret, &sa, Ownership::First).unwrap();
        let mut b = LinkKeys::open("l", &secret, &sb, Ownership::Second).unwrap();
        // The 32-byte part keys the expansion exactly as a bare secret does.
        std::fs::create_dir_all(dir.join("bare")).unwrap();
        let bare = setup(&dir.join("bare"));
        let mut c = LinkKeys::open("l", &bare, &dir.join("c.state"), Ownership::First).unwrap();
        assert_eq!(a.next().unwrap(), c.next().unwrap());
        // Pads: A owns pads 0 and 2, B 1 and 3, each the raw bytes.
        let (p0, k0) = a.next_pad().unwrap();
        assert_eq!(k0.expose_secret(), &[0x10; LINK_KEY_BYTES][..]);
        let (p1, k1) = b.next_pad().unwrap();
        assert_eq!(k1.expose_secret(), &[0x11; LINK_KEY_BYTES][..]);
        assert_eq!(b.find_pad(&p0).unwrap(), k0);
        b.consume(&p0).unwrap();
        assert_eq!(b.find_pad(&p0).unwrap_err(), PskError::AlreadyUsed(p0));
        assert_eq!(a.find_pad(&p1).unwrap(), k1);
        a.consume(&p1).unwrap();
        // Never a handshake key.
        assert!(a.find(&p1).is_err());
        drop((a, b));
        // After a restart nothing used comes back.
        let mut a = LinkKeys::open("l", &secret, &sa, Ownership::First).unwrap();
        let mut b = LinkKeys::open("l", &secret, &sb, Ownership::Second).unwrap();
        assert_eq!(a.find_pad(&p1).unwrap_err(), PskError::AlreadyUsed(p1));
        let (p2, k2) = a.next_pad().unwrap();
        assert_eq!(k2.expose_secret(), &[0x12; LINK_KEY_BYTES][..]);
        assert_eq!(b.find_pad(&p2).unwrap(), k2);
        assert_eq!(
            a.next_pad().unwrap_err(),
            PskError::Exhausted,
            "A's two are spent"
        );
        let (_, k3) = b.next_pad().unwrap();
        assert_eq!(k3.expose_secret(), &[0x13; LINK_KEY_BYTES][..]);
        assert_eq!(b.next_pad().unwrap_err(), PskError::Exhausted);
        // A secret whose tail is not whole pads is refused.
        std::fs::write(&secret, "ab".repeat(33)).unwrap();
        assert!(matches!(
            LinkKeys::open("l", &secret, &sa, Ownership::First),
            Err(LinkKeyError::BadSecret(_))
        ));
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
