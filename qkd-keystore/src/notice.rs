//! What one store tells the other: the notices the sync protocol carries.
//!
//! A [`KeyStore`](crate::KeyStore) queues a [`Notice`] for the peer whenever
//! its state changes in a way the peer must mirror (a block stored or lost, a
//! range of an owned chunk dropped, keys handed out, ownership lent), and
//! applies the peer's notices with [`KeyStore::apply`](crate::KeyStore::apply).
//! The store does not encode them; `qkd-sync` puts them on the wire, in order,
//! exactly once per session.

use std::sync::Arc;

use qkd_core::BlockId;

use crate::BindingError;

/// Longest SAE identifier accepted, in bytes.
pub const MAX_SAE_ID_LEN: usize = 255;
/// Most slave SAEs one binding may name.
pub const MAX_SLAVES: usize = 64;
/// Most pieces one key is made of (see [`KeyPieces`]).
pub const MAX_KEY_PIECES: usize = 255;

/// A range of bytes of one final key block: the identity of a key's material.
///
/// `offset` and `len` are in bytes; the key's ID is
/// `KeyId::for_block(link, block, offset)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyRange {
    /// The final key block.
    pub block: BlockId,
    /// First byte within the block.
    pub offset: u32,
    /// Length in bytes.
    pub len: u32,
}

impl KeyRange {
    /// One past the last byte.
    #[must_use]
    pub fn end(&self) -> u64 {
        u64::from(self.offset) + u64::from(self.len)
    }
}

/// The material of one key: an ordered list of pieces, each a range within
/// one chunk (at most [`MAX_KEY_PIECES`]).
///
/// A key of at most one chunk is one piece; a larger key is cut from
/// several chunks owned by the node that took it, possibly of several
/// blocks, and its bytes are the pieces' bytes concatenated in order. The
/// key's ID is derived from its first piece
/// (`KeyId::for_block(link, first.block, first.offset)`): that byte leaves
/// the store once, so no two keys share an ID.
///
/// ```
/// use qkd_core::BlockId;
/// use qkd_keystore::{KeyPieces, KeyRange};
///
/// let r = |block, offset, len| KeyRange { block: BlockId::new(block), offset, len };
/// let key = KeyPieces::new(vec![r(2, 960, 64), r(2, 2048, 1024), r(3, 1024, 960)]).unwrap();
/// assert_eq!((key.first(), key.len(), key.piece_count()), (r(2, 960, 64), 2048, 3));
/// assert_eq!(KeyPieces::single(r(1, 0, 32)).len(), 32);
/// assert!(KeyPieces::new(Vec::new()).is_none());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyPieces {
    first: KeyRange,
    /// The pieces after the first (empty, and not allocated, for a key of
    /// one piece).
    rest: Vec<KeyRange>,
}

impl KeyPieces {
    /// A key of one piece.
    #[must_use]
    pub fn single(range: KeyRange) -> Self {
        KeyPieces {
            first: range,
            rest: Vec::new(),
        }
    }

    /// A key of `pieces` in order; `None` if there is none.
    #[must_use]
    pub fn new(mut pieces: Vec<KeyRange>) -> Option<Self> {
        if pieces.is_empty() {
            return None;
        }
        let first = pieces.remove(0);
        Some(KeyPieces {
            first,
            rest: pieces,
        })
    }

    /// The first piece, which names the key.
    #[must_use]
    pub fn first(&self) -> KeyRange {
        self.first
    }

    /// The pieces in order.
    pub fn pieces(&self) -> impl Iterator<Item = &KeyRange> + '_ {
        std::iter::once(&self.first).chain(self.rest.iter())
    }

    /// How many pieces.
    #[must_use]
    pub fn piece_count(&self) -> usize {
        1 + self.rest.len()
    }

    /// The key's length in bytes (the sum of the pieces').
    #[must_use]
    pub fn len(&self) -> u64 {
        self.pieces().map(|r| u64::from(r.len)).sum()
    }

    /// Whether the key has no bytes (only if every piece is empty, which
    /// the store never builds and refuses from the peer).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<KeyRange> for KeyPieces {
    fn from(range: KeyRange) -> Self {
        KeyPieces::single(range)
    }
}

/// Who may fetch a key: the master SAE that took it (ETSI 014 `enc_keys`) and
/// the slave SAEs that may fetch it on the other node (`dec_keys`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Binding {
    master: String,
    slaves: Vec<String>,
}

impl Binding {
    /// A binding of `master` to one or more distinct `slaves`.
    ///
    /// # Errors
    /// [`BindingError`] if an ID is empty or longer than [`MAX_SAE_ID_LEN`],
    /// there is no slave, more than [`MAX_SLAVES`], or a slave is repeated.
    pub fn new(
        master: impl Into<String>,
        slaves: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Self, BindingError> {
        let master = master.into();
        let slaves: Vec<String> = slaves.into_iter().map(Into::into).collect();
        check_sae_id(&master)?;
        if slaves.is_empty() {
            return Err(BindingError::NoSlave);
        }
        if slaves.len() > MAX_SLAVES {
            return Err(BindingError::TooManySlaves {
                count: slaves.len(),
            });
        }
        for (i, s) in slaves.iter().enumerate() {
            check_sae_id(s)?;
            if slaves[..i].contains(s) {
                return Err(BindingError::DuplicateSlave);
            }
        }
        Ok(Binding { master, slaves })
    }

    /// A binding of `master` to the single slave `slave`.
    ///
    /// # Errors
    /// As [`Binding::new`].
    pub fn pair(master: impl Into<String>, slave: impl Into<String>) -> Result<Self, BindingError> {
        Self::new(master, [slave.into()])
    }

    /// The master SAE.
    #[must_use]
    pub fn master(&self) -> &str {
        &self.master
    }

    /// The slave SAEs, in the order given.
    #[must_use]
    pub fn slaves(&self) -> &[String] {
        &self.slaves
    }

    /// Position of `slave` in [`slaves`](Self::slaves).
    #[must_use]
    pub fn slave_index(&self, slave: &str) -> Option<usize> {
        self.slaves.iter().position(|s| s == slave)
    }
}

fn check_sae_id(id: &str) -> Result<(), BindingError> {
    if id.is_empty() || id.len() > MAX_SAE_ID_LEN {
        return Err(BindingError::BadSaeId { len: id.len() });
    }
    Ok(())
}

/// A chunk whose ownership moves to the peer, with the first byte (within
/// the block) the new owner may cut from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantedChunk {
    /// The final key block.
    pub block: BlockId,
    /// Chunk index within the block.
    pub chunk: u32,
    /// First byte of the block the borrower may cut; bytes before it were
    /// handed out, dropped or reserved by the lender.
    pub from: u32,
}

/// One change one store tells the other.
///
/// All notices of a session travel in one ordered, exactly-once stream
/// (qkd-sync provides it), which is what makes ownership transfer safe: a
/// [`Notice::Grant`] is applied once, after every notice the lender sent
/// before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// The sender stored final key block `block`.
    Have {
        /// The block.
        block: BlockId,
    },
    /// The sender does not hold and will never hold block `block` (failed
    /// confirmation there, or refused for capacity); the receiver drops it.
    Lost {
        /// The block.
        block: BlockId,
    },
    /// The sender dropped bytes of a chunk it owns; the receiver drops its copy.
    Drop {
        /// The bytes dropped.
        range: KeyRange,
    },
    /// The sender handed these keys out fresh (enc) for `binding`; the
    /// receiver keeps them for the slaves' lookups (dec).
    Delivered {
        /// Who may fetch the keys.
        binding: Arc<Binding>,
        /// The keys, each as its pieces of block material.
        keys: Vec<KeyPieces>,
    },
    /// A slave fetched `count` keys of the pairing (`master`, `slave`) on the
    /// sender (statistics only). The receiver took those keys: `count` is at
    /// least 1 and at most the keys it took for the pairing that were not
    /// reported fetched yet.
    Consumed {
        /// The master SAE.
        master: String,
        /// The slave SAE that fetched.
        slave: String,
        /// How many keys.
        count: u32,
    },
    /// The sender asks for ownership of about `bytes` of fresh material,
    /// and says how much it has (see the lending rule on
    /// [`StoreConfig`](crate::StoreConfig)).
    Borrow {
        /// How many bytes it would like.
        bytes: u64,
        /// Fresh bytes the sender owns now.
        fresh: u64,
    },
    /// The sender gave up these chunks; the receiver owns them from now on.
    /// An empty grant answers a borrow that could not be served.
    Grant {
        /// The chunks lent.
        chunks: Vec<GrantedChunk>,
    },
}
