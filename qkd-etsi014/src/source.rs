//! Where keys come from: the [`KeySource`] trait the handler draws on, and
//! [`FixedSource`], a one-KME source of non-secret keys for tests and demos.
//!
//! With the `sync` feature, `qkd_sync::SyncNode` implements [`KeySource`]
//! (see [`crate::sync`]).

use std::collections::HashMap;
use std::time::Instant;

use qkd_core::{KeyId, SecretKey};

/// Whether a key waits for a slave SAE ([`KeySource::probe`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Not known here (not yet, or no longer).
    Absent,
    /// Here, taken by `master` and fetchable by this slave now.
    Ready,
    /// Here, but this slave is not one of its slaves (or fetched it already).
    NotAuthorized,
    /// Here, but taken by another master SAE than the one named.
    OtherMaster,
}

/// Why a [`KeySource`] could not serve a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The source cannot serve keys now (link down, not paired ...); the
    /// message is shown to the SAE (503).
    #[error("{0}")]
    Unavailable(String),
    /// Not enough fresh key material; nothing was taken (503).
    #[error("not enough key material: {requested} keys asked for, {available} available")]
    Insufficient {
        /// Keys asked for.
        requested: usize,
        /// Keys of that size available now.
        available: usize,
    },
    /// The slave may not fetch the key (401).
    #[error("the key is not available to this SAE")]
    NotAuthorized,
    /// The key is not here (400).
    #[error("key not found")]
    NotFound,
}

/// What the handler needs from the key store behind it.
///
/// The handler validates every request before calling in: sizes are
/// multiples of 8 within [`max_key_bits`](Self::max_key_bits), counts
/// within [`max_keys_per_request`](Self::max_keys_per_request), SAE IDs
/// non-empty, printable and at most 255 bytes, slaves distinct and at most
/// [`max_slaves`](Self::max_slaves).
///
/// Keys wait on the slave's KME until fetched; a lookup of a key whose
/// notice has not arrived yet is answered [`Probe::Absent`], and the
/// handler calls [`watch`](Self::watch) and waits to be told of the
/// arrival (`Kme::handle_arrival`) or of the end of the wait
/// (`Kme::handle_wait_ended`), or until its own deadline.
pub trait KeySource {
    /// Why the source cannot serve now (503), or `None` when it can.
    fn unavailable(&self) -> Option<String>;
    /// Largest key size in bits.
    fn max_key_bits(&self) -> usize;
    /// Most keys one take may ask for.
    fn max_keys_per_request(&self) -> usize;
    /// Most slave SAEs one binding may name (the path's slave included).
    fn max_slaves(&self) -> usize;
    /// Keys of `bits` bits this KME could hand out fresh now.
    fn fresh_keys(&self, bits: usize) -> usize;
    /// The most [`fresh_keys`](Self::fresh_keys) can reach for `bits`.
    fn max_key_count(&self, bits: usize) -> usize;
    /// Takes `count` fresh keys of `bits` bits for `master`, fetchable on
    /// the slaves' KME by each of `slaves`: all or nothing.
    ///
    /// # Errors
    /// [`SourceError::Unavailable`] or [`SourceError::Insufficient`].
    fn take(
        &mut self,
        now: Instant,
        count: usize,
        bits: usize,
        master: &str,
        slaves: &[&str],
    ) -> Result<Vec<(KeyId, SecretKey)>, SourceError>;
    /// Whether key `id`, taken by `master`, may be fetched by `slave` now;
    /// changes nothing.
    fn probe(&self, id: &KeyId, master: &str, slave: &str) -> Probe;
    /// Fetches key `id` for `slave` (after [`probe`](Self::probe) said
    /// [`Probe::Ready`]); the key leaves once every slave fetched it.
    ///
    /// # Errors
    /// [`SourceError::NotFound`], [`SourceError::NotAuthorized`] or
    /// [`SourceError::Unavailable`].
    fn fetch(&mut self, now: Instant, id: &KeyId, slave: &str) -> Result<SecretKey, SourceError>;
    /// Asks to be told when key `id` arrives (for `slave`); does nothing if
    /// the source cannot tell.
    fn watch(&mut self, now: Instant, id: &KeyId, slave: &str);
}

struct Held {
    key: SecretKey,
    master: String,
    slaves: Vec<String>,
    /// Bit i set: slave i may still fetch.
    remaining: u64,
}

/// A KME whose master and slave SAEs are all attached to it, handing out
/// keys derived from a seed: **the keys are not secret**. For tests, demos
/// and fuzzing of the handler without a link.
///
/// `enc_keys` takes keys from a finite budget ([`with_budget`](Self::with_budget))
/// and keeps each for its slaves; `dec_keys` on the same handler fetches
/// them, once per slave.
///
/// ```
/// use std::time::Instant;
/// use qkd_etsi014::{FixedSource, KeySource, Probe};
///
/// let mut source = FixedSource::new([7; 32]).with_budget(10);
/// let now = Instant::now();
/// let keys = source.take(now, 2, 256, "sae-a", &["sae-b"]).unwrap();
/// assert_eq!(source.fresh_keys(256), 8);
/// assert_eq!(source.probe(&keys[0].0, "sae-a", "sae-b"), Probe::Ready);
/// assert_eq!(source.fetch(now, &keys[0].0, "sae-b").unwrap(), keys[0].1);
/// assert_eq!(source.probe(&keys[0].0, "sae-a", "sae-b"), Probe::Absent);
/// ```
pub struct FixedSource {
    seed: [u8; 32],
    counter: u64,
    budget: usize,
    max_budget: usize,
    max_key_bits: usize,
    max_keys_per_request: usize,
    unavailable: Option<String>,
    held: HashMap<KeyId, Held>,
}

impl FixedSource {
    /// A source with a budget of 1 000 000 keys, keys up to 65 536 bits,
    /// 1024 keys per request.
    #[must_use]
    pub fn new(seed: [u8; 32]) -> Self {
        FixedSource {
            seed,
            counter: 0,
            budget: 1_000_000,
            max_budget: 1_000_000,
            max_key_bits: 65_536,
            max_keys_per_request: 1024,
            unavailable: None,
            held: HashMap::new(),
        }
    }

    /// Sets how many keys may still be taken (and the most there can be).
    #[must_use]
    pub fn with_budget(mut self, keys: usize) -> Self {
        self.budget = keys;
        self.max_budget = keys;
        self
    }

    /// Sets the largest key size in bits.
    #[must_use]
    pub fn with_max_key_bits(mut self, bits: usize) -> Self {
        self.max_key_bits = bits;
        self
    }

    /// Makes the source unavailable with `reason` (or available again with `None`).
    pub fn set_unavailable(&mut self, reason: Option<String>) {
        self.unavailable = reason;
    }

    /// Keys waiting for a slave.
    #[must_use]
    pub fn held(&self) -> usize {
        self.held.len()
    }

    fn derive(&mut self, bits: usize) -> (KeyId, SecretKey) {
        self.counter += 1;
        let mut ctx = Vec::with_capacity(40);
        ctx.extend_from_slice(&self.seed);
        ctx.extend_from_slice(&self.counter.to_le_bytes());
        let id = KeyId::derive(&ctx);
        let mut bytes = vec![0u8; bits / 8];
        blake3::Hasher::new_keyed(&self.seed)
            .update(&self.counter.to_le_bytes())
            .finalize_xof()
            .fill(&mut bytes);
        (id, SecretKey::from_vec(bytes))
    }
}

impl core::fmt::Debug for FixedSource {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FixedSource")
            .field("budget", &self.budget)
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

impl KeySource for FixedSource {
    fn unavailable(&self) -> Option<String> {
        self.unavailable.clone()
    }

    fn max_key_bits(&self) -> usize {
        self.max_key_bits
    }

    fn max_keys_per_request(&self) -> usize {
        self.max_keys_per_request
    }

    fn max_slaves(&self) -> usize {
        64
    }

    fn fresh_keys(&self, _bits: usize) -> usize {
        self.budget
    }

    fn max_key_count(&self, _bits: usize) -> usize {
        self.max_budget
    }

    fn take(
        &mut self,
        _now: Instant,
        count: usize,
        bits: usize,
        master: &str,
        slaves: &[&str],
    ) -> Result<Vec<(KeyId, SecretKey)>, SourceError> {
        if let Some(reason) = &self.unavailable {
            return Err(SourceError::Unavailable(reason.clone()));
        }
        if count > self.budget {
            return Err(SourceError::Insufficient {
                requested: count,
                available: self.budget,
            });
        }
        self.budget -= count;
        let remaining = match slaves.len() {
            64.. => u64::MAX,
            n => (1u64 << n) - 1,
        };
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let (id, key) = self.derive(bits);
            self.held.insert(
                id,
                Held {
                    key: key.clone(),
                    master: master.to_owned(),
                    slaves: slaves.iter().map(|s| (*s).to_owned()).collect(),
                    remaining,
                },
            );
            out.push((id, key));
        }
        Ok(out)
    }

    fn probe(&self, id: &KeyId, master: &str, slave: &str) -> Probe {
        let Some(h) = self.held.get(id) else {
            return Probe::Absent;
        };
        if h.master != master {
            return Probe::OtherMaster;
        }
        match h.slaves.iter().position(|s| s == slave) {
            Some(i) if i < 64 && h.remaining & (1 << i) != 0 => Probe::Ready,
            _ => Probe::NotAuthorized,
        }
    }

    fn fetch(&mut self, _now: Instant, id: &KeyId, slave: &str) -> Result<SecretKey, SourceError> {
        let h = self.held.get_mut(id).ok_or(SourceError::NotFound)?;
        let i = h
            .slaves
            .iter()
            .position(|s| s == slave)
            .filter(|&i| i < 64 && h.remaining & (1 << i) != 0)
            .ok_or(SourceError::NotAuthorized)?;
        h.remaining &= !(1 << i);
        if h.remaining != 0 {
            return Ok(h.key.clone());
        }
        Ok(self.held.remove(id).map(|h| h.key).unwrap_or_default())
    }

    fn watch(&mut self, _now: Instant, _id: &KeyId, _slave: &str) {}
}
