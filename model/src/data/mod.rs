//! Token data on disk and in memory: llm.c-format shards ([`shard`]), the folder's
//! `meta.json` ([`meta`]), and the memory-mapped loader that cuts batches from them
//! ([`dataset`]). Text becomes shards in `runner prepare`; training, scoring and evaluation
//! read them through [`Dataset`].
//!
//! A shard folder:
//!
//! ```text
//! data/
//!   meta.json          tokenizer, vocabulary size, eos id, per-split counts (written last)
//!   train_000000.bin   llm.c shards: 1024-byte header, uint16 tokens
//!   train_000001.bin
//!   val_000000.bin
//! ```
//!
//! Leaves out: tokenization itself (see [`crate::tokenizer`]) and reading text files (the
//! runner streams them).

pub mod dataset;
mod error;
pub mod meta;
pub mod shard;

pub use dataset::{Dataset, TokenStream};
pub use error::DataError;
pub use meta::{Meta, SplitStats};
pub use shard::{Shard, ShardFormat, ShardWriter, SplitWriter};

/// The two splits of a shard folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Val,
}

impl Split {
    /// `train` or `val`: the shard file prefix and the key in `meta.json`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}
