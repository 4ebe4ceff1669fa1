//! The one error type of Lanes' data path: tokenizers, shard files, `meta.json` and the
//! dataset loader. Every variant carries the fields a caller needs to say what went wrong with
//! which file; the `runner` adds the hint (`hint: run runner prepare`). Leaves out: errors of
//! the models and checkpoints (their own enums).

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// What went wrong while tokenizing, writing or reading token data.
#[derive(Debug, Error)]
pub enum DataError {
    /// The operating system refused an open, read, write, rename or memory map.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A tokenizer name that is neither `byte` nor `gpt2`.
    #[error("unknown tokenizer {name:?} (known: byte, gpt2)")]
    UnknownTokenizer { name: String },

    /// Text given to the `gpt2` tokenizer is not valid UTF-8 at this byte offset.
    #[error(
        "not UTF-8 at byte offset {offset}; the gpt2 tokenizer needs UTF-8 text (byte accepts any bytes)"
    )]
    NotUtf8 { offset: u64 },

    /// A token id outside the tokenizer's vocabulary given to `decode`.
    #[error("token id {id} is outside the {tokenizer} vocabulary (size {vocab_size})")]
    TokenNotInVocab {
        id: u32,
        tokenizer: &'static str,
        vocab_size: u32,
    },

    /// A path named like a shard that is a folder (or another non-file).
    #[error("{}: is a folder, not a shard file (its name matches train_*.bin or val_*.bin)", path.display())]
    ShardNotAFile { path: PathBuf },

    /// A file too short to hold the 1024-byte llm.c header.
    #[error("{}: {len} bytes is shorter than the 1024-byte shard header; not an llm.c shard", path.display())]
    ShardTooShort { path: PathBuf, len: u64 },

    /// The first header word is not llm.c's magic number 20240520.
    #[error("{}: wrong magic number {found} (an llm.c shard starts with 20240520); for a headerless nanoGPT .bin open it as raw", path.display())]
    BadMagic { path: PathBuf, found: i32 },

    /// A header version other than 1 (uint16 tokens). llm.c's version 2 holds uint32 tokens.
    #[error("{}: unsupported shard version {found} (only version 1, uint16 tokens, is supported)", path.display())]
    UnsupportedVersion { path: PathBuf, found: i32 },

    /// A negative token count in the header.
    #[error("{}: header token count {count} is negative", path.display())]
    BadTokenCount { path: PathBuf, count: i32 },

    /// The file is shorter than its header's token count says.
    #[error("{}: truncated: the header promises {expected} bytes (1024 + 2 x token count) but the file has {got}", path.display())]
    ShardTruncated {
        path: PathBuf,
        expected: u64,
        got: u64,
    },

    /// The file is longer than its header's token count says.
    #[error("{}: {got} bytes but the header promises {expected} (1024 + 2 x token count); trailing bytes", path.display())]
    ShardTooLong {
        path: PathBuf,
        expected: u64,
        got: u64,
    },

    /// A headerless (nanoGPT) `.bin` whose length is not a whole number of uint16 tokens.
    #[error("{}: {len} bytes is not a whole number of uint16 tokens", path.display())]
    RawOddLength { path: PathBuf, len: u64 },

    /// A stored token id that the model's vocabulary does not have.
    #[error("{}: token {index} is id {id}, outside the vocabulary of size {vocab_size}", path.display())]
    TokenOutOfRange {
        path: PathBuf,
        index: u64,
        id: u32,
        vocab_size: u32,
    },

    /// A token id that does not fit a shard's uint16.
    #[error("{}: token id {id} does not fit a uint16 shard", path.display())]
    TokenTooWide { path: PathBuf, id: u32 },

    /// The shard folder does not exist or holds no file at all.
    #[error("{}: the folder is empty", dir.display())]
    EmptyFolder { dir: PathBuf },

    /// The shard folder holds no `{split}_*.bin` file.
    #[error("{}: no {split}_*.bin shards", dir.display())]
    NoShards { dir: PathBuf, split: &'static str },

    /// The shard folder has no `meta.json`.
    #[error("{}: missing (prepare writes it last, so its absence also means an unfinished prepare)", path.display())]
    MetaMissing { path: PathBuf },

    /// `meta.json` is not the JSON this crate writes.
    #[error("{}: corrupt: {reason}", path.display())]
    MetaCorrupt { path: PathBuf, reason: String },

    /// `meta.json` disagrees with its tokenizer or with the shards beside it.
    #[error("{}: {reason}", path.display())]
    MetaMismatch { path: PathBuf, reason: String },

    /// A split holds fewer tokens than one window needs.
    #[error("{}: the {split} split holds {tokens} tokens, fewer than one window of T+1 = {needed}", path.display())]
    TooFewTokens {
        path: PathBuf,
        split: &'static str,
        tokens: u64,
        needed: u64,
    },
}

impl DataError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}
