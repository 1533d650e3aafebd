//! The link's reserve of QKD key: a share of the final key blocks that
//! never enters the store and keys the link itself (handshakes, AES-256-GCM
//! rekeys, one-time pads, the pipeline's per-run secrets).
//!
//! # What is carved
//!
//! Both nodes receive the same final key blocks with the same numbers
//! (a block one node lacks is reconciled by the stores as lost). Before a
//! block enters the store, [`Reserve::carve`] decides from the block's
//! number and length alone, which both nodes share:
//!
//! - block `b` of the session whose first block is `f` is carved when
//!   `(b - f)` is a multiple of [`RESERVE_EVERY`] and the block holds at
//!   least two link keys ([`LINK_KEY_BYTES`] each);
//! - a carved block gives its first [`LINK_KEY_BYTES`] bytes to the
//!   reserve, as one *entry*, and only its remaining bytes to the store, so
//!   a reserve key is never also served to an application;
//! - the entry is written to the reserve file and the file is fsynced
//!   *before* the remaining bytes go to the store.
//!
//! The rule depends on nothing one node knows and the other does not (not
//! on how much either has drawn), so the two stores stay identical. These
//! constants are therefore constants, not settings: two nodes with
//! different values would carve different bytes out of the same block.
//!
//! # Bound (the high-water mark)
//!
//! The reserve holds the newest [`RESERVE_MAX`] entries carved; an entry
//! that falls out of that window is zeroized in the file and forgotten.
//! Both nodes carve the same sequence, so they forget the same entries.
//! The live file is at most `RESERVE_MAX` records of [`RECORD_BYTES`]
//! bytes (plus as many consumed, zeroized records before it is rewritten
//! without them). The cost to the store is one link key per
//! [`RESERVE_EVERY`] blocks: 1 KiB per 4 blocks, 0.1 % of the simulated
//! source's 1 MiB blocks, about 0.3 % of the pipeline's 80 KiB blocks.
//!
//! # Drawing
//!
//! An entry's owner follows the carving order: entry number `(b - f) /
//! RESERVE_EVERY` of a session belongs to the node that owns even link keys
//! when it is even, to the other when odd, so the two nodes never draw the
//! same entry. A node draws ([`Reserve::draw`]) the oldest live entry it
//! owns that is neither among the [`SETTLE`] newest entries (the peer may
//! not have carved them yet) nor among the [`EXPIRY_MARGIN`] oldest of a
//! full window (the peer, a block ahead, may have forgotten them); the peer
//! takes it by its key ID ([`Reserve::find`], [`Reserve::consume`]). The
//! key ID names the reserve position: the link, the reserve, and the
//! number of the block the entry was carved from.
//!
//! Every draw or consumption zeroizes the entry in the file (live flag
//! cleared, key bytes overwritten) and fsyncs *before* the key is used, so
//! a key is never drawn twice, across restarts of the process too.
//!
//! Cost per use, in link keys of 1 KiB: a handshake takes one (the
//! connecting node's), an AES-256-GCM rekey one (the rekeying direction's
//! node), a pipeline run one (the accepting node's); a one-time-pad record
//! takes `33 + payload` bytes of pad from link keys.
//!
//! # File
//!
//! `"kmsrsv01"`, then records of [`RECORD_BYTES`] bytes:
//! `ordinal u64 | block u64 | owner u8 (0 even, 1 odd) | live u8 | key [1024]`,
//! integers big-endian. A record cut short by a crash while it was appended
//! is dropped on opening (its block never reached the store).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use qkd_core::{BlockId, KeyId, SecretKey};
use qkd_handshake::psk::PskError;
use zeroize::Zeroizing;

use crate::link_keys::LINK_KEY_BYTES;

/// Every how many blocks of a session one is carved.
pub(crate) const RESERVE_EVERY: u64 = 4;
/// The high-water mark: entries kept (the newest carved).
pub(crate) const RESERVE_MAX: u64 = 64;
/// The newest entries not drawn yet (the peer may still be carving them).
pub(crate) const SETTLE: u64 = 2;
/// The oldest entries of a full window not drawn (the peer may be about to
/// forget them).
pub(crate) const EXPIRY_MARGIN: u64 = 8;
/// Bytes of one record of the file.
pub(crate) const RECORD_BYTES: usize = 8 + 8 + 1 + 1 + LINK_KEY_BYTES;

const MAGIC: &[u8; 8] = b"kmsrsv01";
const HEADER: u64 = MAGIC.len() as u64;

/// Why the reserve file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ReserveError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not a reserve file.
    #[error("{0}: not a kms-node link reserve file")]
    BadFile(PathBuf),
}

/// One carved entry.
struct Entry {
    ordinal: u64,
    block: BlockId,
    owner: u8,
    id: KeyId,
    /// Where its record starts in the file.
    offset: u64,
    /// `None` once drawn, consumed or expired (zeroized in the file).
    key: Option<SecretKey>,
}

/// Counters of the reserve, for the status lines and the tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ReserveStats {
    /// Live entries owned by the even side and by the odd side.
    pub(crate) live: [u64; 2],
    /// Entries carved since the file was created.
    pub(crate) carved: u64,
    /// Entries drawn or consumed by this process.
    pub(crate) used: u64,
}

/// The reserve file and its entries.
pub(crate) struct Reserve {
    path: PathBuf,
    file: File,
    /// Prefix of the key IDs.
    name: Vec<u8>,
    /// Entries by ordinal, oldest first (dead ones until the rewrite).
    entries: Vec<Entry>,
    next_ordinal: u64,
    used: u64,
}

impl core::fmt::Debug for Reserve {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Reserve")
            .field("path", &self.path)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReserveError + '_ {
    move |source| ReserveError::Io {
        path: path.to_owned(),
        source,
    }
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
    {
        let _ = d.sync_all();
    }
}

impl Reserve {
    /// Opens (or creates) the reserve in `path`; `name` prefixes the key
    /// IDs (the link's name and a fingerprint of its initial secret).
    pub(crate) fn open(path: &Path, name: &[u8]) -> Result<Self, ReserveError> {
        let mut id_name = name.to_vec();
        id_name.extend_from_slice(b"|reserve");
        let exists = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io(path))?;
        if !exists {
            file.write_all(MAGIC).map_err(io(path))?;
            file.sync_all().map_err(io(path))?;
            sync_dir(path);
        }
        let mut bytes = Zeroizing::new(Vec::new());
        file.seek(SeekFrom::Start(0)).map_err(io(path))?;
        file.read_to_end(&mut bytes).map_err(io(path))?;
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(ReserveError::BadFile(path.to_owned()));
        }
        let mut r = Reserve {
            path: path.to_owned(),
            file,
            name: id_name,
            entries: Vec::new(),
            next_ordinal: 0,
            used: 0,
        };
        let body = &bytes[MAGIC.len()..];
        let whole = body.len() / RECORD_BYTES * RECORD_BYTES;
        for (i, rec) in body[..whole].chunks_exact(RECORD_BYTES).enumerate() {
            let ordinal = u64::from_be_bytes(rec[..8].try_into().unwrap_or_default());
            let block = BlockId::new(u64::from_be_bytes(
                rec[8..16].try_into().unwrap_or_default(),
            ));
            let (owner, live) = (rec[16], rec[17]);
            if owner > 1 || live > 1 || ordinal < r.next_ordinal {
                return Err(ReserveError::BadFile(path.to_owned()));
            }
            r.next_ordinal = ordinal + 1;
            r.entries.push(Entry {
                ordinal,
                block,
                owner,
                id: r.id(block),
                offset: HEADER + (i * RECORD_BYTES) as u64,
                key: (live == 1).then(|| SecretKey::from_slice(&rec[18..])),
            });
        }
        if whole != body.len() {
            // A record cut short by a crash: its block never reached the store.
            r.file
                .set_len(HEADER + whole as u64)
                .and_then(|()| r.file.sync_all())
                .map_err(io(path))?;
        }
        Ok(r)
    }

    /// The key ID of the entry carved from `block`.
    pub(crate) fn id(&self, block: BlockId) -> KeyId {
        KeyId::for_block(&self.name, block, 0)
    }

    /// The counters.
    pub(crate) fn stats(&self) -> ReserveStats {
        let mut live = [0u64; 2];
        for e in &self.entries {
            if e.key.is_some() {
                live[e.owner as usize] += 1;
            }
        }
        ReserveStats {
            live,
            carved: self.next_ordinal,
            used: self.used,
        }
    }

    /// Whether `id` names an entry this reserve holds or held.
    pub(crate) fn knows(&self, id: &KeyId) -> bool {
        self.entries.iter().any(|e| e.id == *id)
    }

    /// Takes the reserve's share of `block` (of the session whose first
    /// block is `first`) if the carving rule selects it: the entry is
    /// durable on return, and the result is the part of the block that may
    /// enter the store; `None` when the whole block goes to the store.
    ///
    /// # Errors
    /// The file could not be written: the block must then go nowhere (the
    /// caller discards it; the stores reconcile it as lost).
    pub(crate) fn carve(
        &mut self,
        first: BlockId,
        block: BlockId,
        key: &SecretKey,
    ) -> std::io::Result<Option<SecretKey>> {
        let Some(k) = block.get().checked_sub(first.get()) else {
            return Ok(None);
        };
        if !k.is_multiple_of(RESERVE_EVERY) || key.len() < 2 * LINK_KEY_BYTES {
            return Ok(None);
        }
        let id = self.id(block);
        if self.knows(&id) {
            // The same block twice (the store refuses the second copy).
            return Ok(None);
        }
        let owner = ((k / RESERVE_EVERY) % 2) as u8;
        let ordinal = self.next_ordinal;
        let bytes = key.expose_secret();
        let mut rec = Zeroizing::new(Vec::with_capacity(RECORD_BYTES));
        rec.extend_from_slice(&ordinal.to_be_bytes());
        rec.extend_from_slice(&block.get().to_be_bytes());
        rec.push(owner);
        rec.push(1);
        rec.extend_from_slice(&bytes[..LINK_KEY_BYTES]);
        let offset = self.file.seek(SeekFrom::End(0))?;
        self.file.write_all(&rec)?;
        // The window moves: entries that fall out of it are zeroized in the
        // same sync.
        let keep_from = (ordinal + 1).saturating_sub(RESERVE_MAX);
        let mut expired = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            if e.ordinal >= keep_from {
                break;
            }
            if e.key.is_some() {
                expired.push(i);
            }
        }
        for &i in &expired {
            self.zero_record(self.entries[i].offset)?;
        }
        self.file.sync_data()?;
        for i in expired {
            self.entries[i].key = None;
        }
        self.next_ordinal = ordinal + 1;
        self.entries.push(Entry {
            ordinal,
            block,
            owner,
            id,
            offset,
            key: Some(SecretKey::from_slice(&bytes[..LINK_KEY_BYTES])),
        });
        self.compact_if_needed();
        Ok(Some(SecretKey::from_slice(&bytes[LINK_KEY_BYTES..])))
    }

    /// Draws the oldest drawable entry owned by `owner` (0 even, 1 odd):
    /// durably consumed before it is returned. `None` if the reserve holds
    /// no drawable entry of this owner.
    ///
    /// # Errors
    /// The consumption could not be written (the key is not returned).
    pub(crate) fn draw(&mut self, owner: u8) -> std::io::Result<Option<(KeyId, SecretKey)>> {
        let newest_drawable = self.next_ordinal.checked_sub(SETTLE + 1);
        let oldest_drawable = (self.next_ordinal + EXPIRY_MARGIN).saturating_sub(RESERVE_MAX);
        let Some(newest) = newest_drawable else {
            return Ok(None);
        };
        let Some(i) = self.entries.iter().position(|e| {
            e.owner == owner
                && e.key.is_some()
                && e.ordinal >= oldest_drawable
                && e.ordinal <= newest
        }) else {
            return Ok(None);
        };
        let key = self.kill(i)?;
        Ok(Some((self.entries[i].id, key)))
    }

    /// A copy of the entry named `id`: `None` if this reserve never held
    /// it (or forgot it), `Some(Err(AlreadyUsed))` if it is consumed.
    pub(crate) fn find(&self, id: &KeyId) -> Option<Result<SecretKey, PskError>> {
        let e = self.entries.iter().find(|e| e.id == *id)?;
        Some(e.key.clone().ok_or(PskError::AlreadyUsed(*id)))
    }

    /// Consumes the entry named `id` durably; `None` if this reserve never
    /// held it (or forgot it).
    pub(crate) fn consume(&mut self, id: &KeyId) -> Option<Result<(), PskError>> {
        let i = self.entries.iter().position(|e| e.id == *id)?;
        if self.entries[i].key.is_none() {
            return Some(Err(PskError::AlreadyUsed(*id)));
        }
        // Without a durable record the key must not be used.
        Some(self.kill(i).map(drop).map_err(|_| PskError::Exhausted))
    }

    /// Zeroizes entry `i` in the file (synced) and returns its key.
    fn kill(&mut self, i: usize) -> std::io::Result<SecretKey> {
        self.zero_record(self.entries[i].offset)?;
        self.file.sync_data()?;
        self.used += 1;
        let key = self.entries[i].key.take().unwrap_or_default();
        self.compact_if_needed();
        Ok(key)
    }

    /// Clears the live flag and overwrites the key bytes of the record at
    /// `offset` (not synced).
    fn zero_record(&mut self, offset: u64) -> std::io::Result<()> {
        let z = [0u8; 1 + LINK_KEY_BYTES];
        self.file.seek(SeekFrom::Start(offset + 17))?;
        self.file.write_all(&z)
    }

    /// Rewrites the file without its dead records once they outnumber
    /// the window (temporary file, fsync, rename); a failure leaves the
    /// old file, which is still correct.
    fn compact_if_needed(&mut self) {
        let dead = self.entries.iter().filter(|e| e.key.is_none()).count() as u64;
        if dead <= RESERVE_MAX {
            return;
        }
        let mut tmp_name = self.path.clone().into_os_string();
        tmp_name.push(".tmp");
        let tmp = PathBuf::from(tmp_name);
        // The newest record stays even when used, so that the ordinals
        // go on from it after a reopen.
        let last = self.entries.len().saturating_sub(1);
        let live: Vec<usize> = (0..self.entries.len())
            .filter(|&i| self.entries[i].key.is_some() || i == last)
            .collect();
        let write = || -> std::io::Result<File> {
            let mut f = File::create(&tmp)?;
            let mut buf =
                Zeroizing::new(Vec::with_capacity(MAGIC.len() + live.len() * RECORD_BYTES));
            buf.extend_from_slice(MAGIC);
            for &i in &live {
                let e = &self.entries[i];
                buf.extend_from_slice(&e.ordinal.to_be_bytes());
                buf.extend_from_slice(&e.block.get().to_be_bytes());
                buf.push(e.owner);
                match &e.key {
                    Some(k) => {
                        buf.push(1);
                        buf.extend_from_slice(k.expose_secret());
                    }
                    None => {
                        buf.push(0);
                        buf.extend_from_slice(&[0u8; LINK_KEY_BYTES]);
                    }
                }
            }
            f.write_all(&buf)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            sync_dir(&self.path);
            OpenOptions::new().read(true).write(true).open(&self.path)
        };
        match write() {
            Ok(file) => {
                self.file = file;
                let mut n = 0;
                self.entries.retain(|e| {
                    n += 1;
                    e.key.is_some() || n == last + 1
                });
                for (n, e) in self.entries.iter_mut().enumerate() {
                    e.offset = HEADER + (n * RECORD_BYTES) as u64;
                }
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                eprintln!(
                    "{}: could not rewrite the reserve without its used records: {e}",
                    self.path.display()
                );
            }
        }
    }

    /// The bytes of the file, for the tests.
    #[cfg(test)]
    pub(crate) fn file_bytes(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap_or_default()
    }

    /// The blocks of the live entries, oldest first, for the tests.
    #[cfg(test)]
    pub(crate) fn live_blocks(&self) -> Vec<u64> {
        self.entries
            .iter()
            .filter(|e| e.key.is_some())
            .map(|e| e.block.get())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "kms-node-reserve-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn block(i: u64, len: usize) -> SecretKey {
        let mut b = vec![0u8; len];
        let mut h = blake3::Hasher::new();
        h.update(&i.to_be_bytes());
        h.finalize_xof().fill(&mut b);
        SecretKey::from_vec(b)
    }

    const FIRST: u64 = 1001;

    /// Carves blocks `from..to` (numbers relative to FIRST) into `r`;
    /// returns what went to the store.
    fn feed(r: &mut Reserve, from: u64, to: u64) -> Vec<SecretKey> {
        (from..to)
            .map(|k| {
                let key = block(k, 4096);
                r.carve(BlockId::new(FIRST), BlockId::new(FIRST + k), &key)
                    .unwrap()
                    .unwrap_or(key)
            })
            .collect()
    }

    #[test]
    fn both_nodes_carve_the_same_reserve_and_the_store_never_sees_it() {
        let d = dir("same");
        let mut a = Reserve::open(&d.join("a"), b"l").unwrap();
        let mut b = Reserve::open(&d.join("b"), b"l").unwrap();
        let sa = feed(&mut a, 0, 40);
        let sb = feed(&mut b, 0, 40);
        assert_eq!(sa, sb, "the stores get the same bytes");
        assert_eq!(a.file_bytes(), b.file_bytes(), "identical reserve files");
        assert_eq!(a.stats().carved, 10);
        assert_eq!(a.stats().live, [5, 5]);
        // Carved blocks lose exactly their first link key, the others nothing.
        for (k, s) in sa.iter().enumerate() {
            let full = block(k as u64, 4096);
            if (k as u64).is_multiple_of(RESERVE_EVERY) {
                assert_eq!(s.expose_secret(), &full.expose_secret()[LINK_KEY_BYTES..]);
                let entry = a
                    .find(&a.id(BlockId::new(FIRST + k as u64)))
                    .unwrap()
                    .unwrap();
                assert_eq!(
                    entry.expose_secret(),
                    &full.expose_secret()[..LINK_KEY_BYTES]
                );
                // No window of the stored bytes equals the reserve key.
                assert!(
                    !s.expose_secret()
                        .windows(LINK_KEY_BYTES)
                        .any(|w| w == entry.expose_secret())
                );
            } else {
                assert_eq!(s, &full);
            }
        }
        // A short block is not carved.
        let short = block(99, 2 * LINK_KEY_BYTES - 1);
        assert!(
            a.carve(BlockId::new(FIRST), BlockId::new(FIRST + 400), &short)
                .unwrap()
                .is_none()
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn draws_alternate_owners_settle_and_survive_a_reopen() {
        let d = dir("draw");
        let (pa, pb) = (d.join("a"), d.join("b"));
        let mut a = Reserve::open(&pa, b"l").unwrap();
        let mut b = Reserve::open(&pb, b"l").unwrap();
        feed(&mut a, 0, 4);
        feed(&mut b, 0, 4);
        // One entry: not settled yet.
        assert!(a.draw(0).unwrap().is_none());
        feed(&mut a, 4, 12);
        feed(&mut b, 4, 12);
        // Three entries (owners 0, 1, 0): the oldest one settled.
        let (id, key) = a.draw(0).unwrap().unwrap();
        assert_eq!(id, a.id(BlockId::new(FIRST)));
        assert!(a.draw(0).unwrap().is_none(), "entry 2 is not settled");
        assert!(
            a.draw(1).unwrap().is_none(),
            "entry 1 is not settled either"
        );
        assert_eq!(b.find(&id).unwrap().unwrap(), key);
        b.consume(&id).unwrap().unwrap();
        assert_eq!(b.find(&id).unwrap().unwrap_err(), PskError::AlreadyUsed(id));
        assert_eq!(
            b.consume(&id).unwrap().unwrap_err(),
            PskError::AlreadyUsed(id)
        );
        assert!(b.find(&KeyId::derive(b"other")).is_none());
        // The key is zeroized in both files.
        for f in [a.file_bytes(), b.file_bytes()] {
            assert!(!f.windows(64).any(|w| w == &key.expose_secret()[..64]));
        }
        drop((a, b));
        // Reopened: the drawn entry is not drawn again, nor accepted.
        let mut a = Reserve::open(&pa, b"l").unwrap();
        let b = Reserve::open(&pb, b"l").unwrap();
        assert_eq!(a.find(&id).unwrap().unwrap_err(), PskError::AlreadyUsed(id));
        assert_eq!(b.find(&id).unwrap().unwrap_err(), PskError::AlreadyUsed(id));
        feed(&mut a, 12, 16);
        assert!(
            a.draw(0).unwrap().is_none(),
            "entry 2 is still the newest but one"
        );
        feed(&mut a, 16, 20);
        let (id2, _) = a.draw(0).unwrap().unwrap();
        assert_ne!(id2, id);
        assert_eq!(id2, a.id(BlockId::new(FIRST + 8)));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_reserve_is_bounded_and_the_file_rewritten() {
        let d = dir("bound");
        let p = d.join("a");
        let mut a = Reserve::open(&p, b"l").unwrap();
        feed(&mut a, 0, 4 * RESERVE_EVERY * RESERVE_MAX);
        let s = a.stats();
        assert_eq!(s.live[0] + s.live[1], RESERVE_MAX);
        assert_eq!(s.carved, 4 * RESERVE_MAX);
        let len = a.file_bytes().len() as u64;
        assert!(
            len <= HEADER + 2 * (RESERVE_MAX + 1) * RECORD_BYTES as u64,
            "{len} bytes"
        );
        // The live ones are the newest.
        let blocks = a.live_blocks();
        assert_eq!(
            *blocks.last().unwrap(),
            FIRST + RESERVE_EVERY * (4 * RESERVE_MAX - 1)
        );
        // Draws skip the oldest of the full window.
        let (id, _) = a.draw(0).unwrap().unwrap();
        let ordinal = 3 * RESERVE_MAX + EXPIRY_MARGIN;
        assert_eq!(id, a.id(BlockId::new(FIRST + RESERVE_EVERY * ordinal)));
        drop(a);
        let a = Reserve::open(&p, b"l").unwrap();
        assert_eq!(a.stats().live[0] + a.stats().live[1], RESERVE_MAX - 1);
        assert_eq!(a.stats().carved, 4 * RESERVE_MAX);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_torn_record_is_dropped_and_a_foreign_file_refused() {
        let d = dir("torn");
        let p = d.join("a");
        let mut a = Reserve::open(&p, b"l").unwrap();
        feed(&mut a, 0, 8);
        drop(a);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.extend_from_slice(&[7u8; 100]);
        std::fs::write(&p, &bytes).unwrap();
        let a = Reserve::open(&p, b"l").unwrap();
        assert_eq!(a.stats().carved, 2);
        assert_eq!(
            std::fs::metadata(&p).unwrap().len(),
            HEADER + 2 * RECORD_BYTES as u64
        );
        std::fs::write(&p, b"not a reserve").unwrap();
        assert!(matches!(
            Reserve::open(&p, b"l"),
            Err(ReserveError::BadFile(_))
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
