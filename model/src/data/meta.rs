//! `meta.json`: what a shard folder holds, written by `runner prepare` after its last shard
//! (so a folder without it is unfinished) and read by everything that trains on, scores or
//! generates from the folder, so no one has to name the tokenizer twice.
//!
//! ```json
//! { "format": "llm.c uint16 shards", "tokenizer": "gpt2", "vocab_size": 50257, "eos_id": 50256,
//!   "document": "one input file; eos appended after each",
//!   "train": { "documents": 38, "text_bytes": 4796483, "tokens": 1206310, "shards": 1 },
//!   "val":   { "documents": 4,  "text_bytes": 548011,  "tokens": 136601,  "shards": 1 } }
//! ```
//!
//! `tokens` counts the end-of-sequence ids too (the model predicts them), so
//! `text_bytes / tokens` is the bytes per token that turns a loss in nats per token into bits
//! per byte: `bpb = loss / ln 2 × tokens / text_bytes`.
//!
//! Leaves out: provenance (input paths, dates), which would make two identical corpora's
//! folders differ.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{DataError, Split};
use crate::tokenizer::TokenizerKind;

/// The value of `format`: the shard layout this folder uses.
pub const FORMAT: &str = "llm.c uint16 shards";

/// The contents of `meta.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// Always [`FORMAT`].
    pub format: String,
    /// `byte` or `gpt2`.
    pub tokenizer: String,
    /// V of the tokenizer; a model trained on the folder needs at least this many ids.
    pub vocab_size: u32,
    /// The id appended after each document.
    pub eos_id: u32,
    /// What one document was when the folder was prepared, in words.
    pub document: String,
    pub train: SplitStats,
    pub val: SplitStats,
}

/// Counts for one split.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitStats {
    /// Documents with text in this split (a document cut in two counts in both splits).
    pub documents: u64,
    /// Bytes of input text tokenized into this split.
    pub text_bytes: u64,
    /// Token ids in this split's shards, end-of-sequence ids included.
    pub tokens: u64,
    /// Number of `{split}_*.bin` files.
    pub shards: u64,
}

impl SplitStats {
    /// Text bytes per token, or NaN for an empty split.
    pub fn bytes_per_token(&self) -> f64 {
        self.text_bytes as f64 / self.tokens as f64
    }
}

impl Meta {
    /// The file name inside a shard folder.
    pub const FILE: &'static str = "meta.json";

    /// A `meta.json` for a folder tokenized with `kind`.
    pub fn new(kind: TokenizerKind, document: &str, train: SplitStats, val: SplitStats) -> Self {
        Meta {
            format: FORMAT.to_string(),
            tokenizer: kind.name().to_string(),
            vocab_size: kind.vocab_size(),
            eos_id: kind.eos_id(),
            document: document.to_string(),
            train,
            val,
        }
    }

    pub fn split(&self, split: Split) -> &SplitStats {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }

    /// The tokenizer this folder was made with.
    pub fn tokenizer_kind(&self) -> TokenizerKind {
        TokenizerKind::from_name(&self.tokenizer).expect("validated by Meta::read")
    }

    /// Reads and validates `dir/meta.json`: present, well-formed, a known tokenizer whose
    /// vocabulary size and end-of-sequence id agree with the file.
    pub fn read(dir: &Path) -> Result<Self, DataError> {
        let path = dir.join(Self::FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DataError::MetaMissing { path });
            }
            Err(e) => return Err(DataError::io(path, e)),
        };
        let meta: Meta = serde_json::from_str(&text).map_err(|e| DataError::MetaCorrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mismatch = |reason: String| DataError::MetaMismatch {
            path: path.clone(),
            reason,
        };
        if meta.format != FORMAT {
            return Err(mismatch(format!(
                "format {:?}, expected {FORMAT:?}",
                meta.format
            )));
        }
        let kind =
            TokenizerKind::from_name(&meta.tokenizer).map_err(|e| mismatch(e.to_string()))?;
        if (meta.vocab_size, meta.eos_id) != (kind.vocab_size(), kind.eos_id()) {
            return Err(mismatch(format!(
                "vocab_size {} and eos_id {} disagree with tokenizer {kind} ({} and {})",
                meta.vocab_size,
                meta.eos_id,
                kind.vocab_size(),
                kind.eos_id()
            )));
        }
        Ok(meta)
    }

    /// Writes `dir/meta.json` atomically (temporary name, then rename).
    pub fn write(&self, dir: &Path) -> Result<(), DataError> {
        let path = dir.join(Self::FILE);
        let tmp = dir.join("meta.json.tmp");
        let mut json = serde_json::to_string_pretty(self).expect("Meta serializes");
        json.push('\n');
        std::fs::write(&tmp, json).map_err(|e| DataError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| DataError::io(&path, e))
    }
}
