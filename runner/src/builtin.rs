//! The built-in corpus as a shard folder, so that `runner train` with no `--shards` works on
//! a fresh machine: documents from `model::corpus`'s English-like grammar, generated from the
//! run's seed, tokenized with `byte`, written as llm.c shards + `meta.json` exactly as
//! `runner prepare` would write them. Because the grammar's entropy rate is known exactly,
//! the trainer can print how close the model came to the best possible bits per byte.
//!
//! Leaves out: any real text; use `runner prepare` for that.

use std::path::Path;

use anyhow::{Context, Result};
use model::corpus::{Grammar, builtin_documents};
use model::data::{Meta, Split, SplitStats, SplitWriter};
use model::{Tokenizer, TokenizerKind};

/// Documents of the training split, then of the validation split.
const TRAIN_DOCS: usize = 400;
const VAL_DOCS: usize = 16;
/// Bytes per document (whole sentences, so slightly more): 4 MB of training text, more than
/// a default run reads, and 160 KB held out.
const DOC_BYTES: usize = 10_000;

/// What `meta.json` records as a document.
const DOCUMENT: &str =
    "one generated document of the built-in English-like grammar; eos appended after each";

/// The exact entropy rate of the built-in corpus's text, in bits per byte (the `<eos>` after
/// each document is not text and is not counted).
pub fn entropy_bits_per_byte() -> f64 {
    Grammar::english_like().entropy_bits_per_byte()
}

/// Makes `dir` hold the built-in corpus for `seed`, unless a finished one is already there
/// (a resumed run finds the one it started with). Returns whether it wrote it.
pub fn ensure(dir: &Path, seed: u64) -> Result<bool> {
    if dir.join(Meta::FILE).is_file() {
        return Ok(false);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let docs = builtin_documents(seed, TRAIN_DOCS + VAL_DOCS, DOC_BYTES);
    let tokenizer = Tokenizer::new(TokenizerKind::Byte);
    let mut ids = Vec::with_capacity(DOC_BYTES + 64);
    let [mut train, mut val] = [SplitStats::default(); 2];
    for (split, docs, stats) in [
        (Split::Train, &docs[..TRAIN_DOCS], &mut train),
        (Split::Val, &docs[TRAIN_DOCS..], &mut val),
    ] {
        let mut writer = SplitWriter::new(dir, split, model::data::shard::MAX_SHARD_TOKENS);
        for doc in docs {
            ids.clear();
            tokenizer.encode_into(doc, &mut ids);
            ids.push(tokenizer.eos_id());
            writer.write(&ids)?;
            stats.documents += 1;
            stats.text_bytes += doc.len() as u64;
        }
        stats.tokens = writer.tokens();
        stats.shards = writer.finish()?.len() as u64;
    }
    // meta.json last: a folder without it is an unfinished one.
    Meta::new(TokenizerKind::Byte, DOCUMENT, train, val).write(dir)?;
    Ok(true)
}
