//! The loader: a shard folder opened as two token streams (train, val), and the batches a
//! training loop reads from them into buffers it owns.
//!
//! - Each split is one stream: its shards, in name order, laid end to end. Shard boundaries
//!   are where `prepare` happened to start a new file (every `--shard-tokens` tokens, in the
//!   middle of a document if need be; llm.c's tools cut the same way), so they carry no
//!   meaning and **windows may cross them**. Every position of the split can start a window.
//! - A window is T+1 consecutive tokens: the model reads the first T (inputs) and predicts the
//!   last T (targets, the inputs shifted by one).
//! - Training batch `step` takes B windows at uniformly random starts drawn from
//!   [`SplitMix64::for_step`]`(seed, step)`: a pure function of `(seed, step)`, so a run resumed
//!   at step s reads exactly the batches the uninterrupted run would have.
//! - Evaluation reads windows k = 0, 1, 2, … starting at token k·T, in order: every target
//!   token of the split is scored once, except a tail of fewer than T tokens.
//!
//! Nothing is copied into memory: shards stay memory-mapped ([`Shard`]) and a batch is filled
//! straight from the maps into the caller's `u32` buffers, so anonymous memory does not grow
//! with the corpus and a step allocates nothing.
//!
//! Leaves out: shuffling without replacement (epochs), document-aligned windows, prefetching
//! (the page cache and the kernel's read-ahead do that).

use std::path::{Path, PathBuf};

use super::meta::Meta;
use super::shard::{Shard, ShardFormat};
use super::{DataError, Split};
use crate::rng::SplitMix64;
use crate::tokenizer::TokenizerKind;

/// One split's shards as a single token stream.
#[derive(Debug)]
pub struct TokenStream {
    split: Split,
    origin: PathBuf,    // the folder (or the file) errors name
    shards: Vec<Shard>, // in stream order
    starts: Vec<u64>,   // (shards + 1,) stream position of each shard's first token; last = len
}

impl TokenStream {
    fn new(split: Split, origin: PathBuf, shards: Vec<Shard>) -> Self {
        let mut starts = Vec::with_capacity(shards.len() + 1);
        let mut pos = 0u64;
        starts.push(0);
        for s in &shards {
            pos += s.len() as u64;
            starts.push(pos);
        }
        TokenStream {
            split,
            origin,
            shards,
            starts,
        }
    }

    pub fn split(&self) -> Split {
        self.split
    }

    /// Tokens in the split.
    pub fn len(&self) -> u64 {
        *self.starts.last().expect("starts has len + 1 entries")
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// [`DataError::TokenOutOfRange`] for the first stored id `>= vocab_size`. Reads every
    /// token once (memory bandwidth, about a second per few GB).
    pub fn check_vocab(&self, vocab_size: u32) -> Result<(), DataError> {
        self.shards
            .iter()
            .try_for_each(|s| s.check_vocab(vocab_size))
    }

    /// [`DataError::TooFewTokens`] unless the split holds at least one window of T+1 tokens.
    pub fn check_window(&self, t: usize) -> Result<(), DataError> {
        let needed = t as u64 + 1;
        if self.len() < needed {
            return Err(DataError::TooFewTokens {
                path: self.origin.clone(),
                split: self.split.name(),
                tokens: self.len(),
                needed,
            });
        }
        Ok(())
    }

    /// Copies tokens `start .. start + out.len()` of the stream into `out`, across shard
    /// boundaries. Panics if the range runs past the end.
    pub fn copy_tokens(&self, start: u64, out: &mut [u32]) {
        let end = start + out.len() as u64;
        assert!(
            end <= self.len(),
            "tokens {start}..{end} run past the {} split's {} tokens",
            self.split.name(),
            self.len()
        );
        if out.is_empty() {
            return;
        }
        // The last shard whose first token is at or before `start` (skips empty shards).
        let mut s = self.starts.partition_point(|&p| p <= start) - 1;
        let mut pos = start;
        let mut done = 0;
        while done < out.len() {
            let tokens = self.shards[s].tokens();
            let local = (pos - self.starts[s]) as usize;
            let n = (tokens.len() - local).min(out.len() - done);
            for (o, &id) in out[done..done + n]
                .iter_mut()
                .zip(&tokens[local..local + n])
            {
                *o = u32::from(id);
            }
            done += n;
            pos += n as u64;
            s += 1;
        }
    }

    /// Fills one row: inputs = tokens `start .. start+T`, targets = `start+1 .. start+T+1`.
    fn fill_window(&self, start: u64, inputs: &mut [u32], targets: &mut [u32]) {
        self.copy_tokens(start, inputs);
        self.copy_tokens(start + 1, targets);
    }

    /// The start of each of the B windows of training batch `step`: uniform over the
    /// `len - T` possible starts, drawn in row order from `SplitMix64::for_step(seed, step)`.
    pub fn train_window_starts(
        &self,
        seed: u64,
        step: u64,
        b: usize,
        t: usize,
    ) -> Result<impl Iterator<Item = u64>, DataError> {
        self.check_window(t)?;
        let choices = self.len() - t as u64; // starts 0 ..= len - (T+1)
        let mut rng = SplitMix64::for_step(seed, step);
        Ok((0..b).map(move |_| rng.below(choices)))
    }

    /// Fills training batch `step`: `inputs` and `targets`, both (B, T) row-major, from B
    /// random windows (see [`train_window_starts`](Self::train_window_starts)). The same
    /// `(seed, step, B, T)` fills the same batch on every run and machine.
    ///
    /// Errors with [`DataError::TooFewTokens`] if the split is shorter than T+1. Panics if a
    /// buffer is not B·T long.
    pub fn train_batch(
        &self,
        seed: u64,
        step: u64,
        b: usize,
        t: usize,
        inputs: &mut [u32],  // (B, T)
        targets: &mut [u32], // (B, T)
    ) -> Result<(), DataError> {
        self.train_rows(seed, step, b, 0..b, t, inputs, targets)
    }

    /// Fills rows `rows` of training batch `step` of B windows (the same windows
    /// [`train_batch`](Self::train_batch) puts there): how a data-parallel rank takes its
    /// slice of the global batch. `inputs` and `targets` are (rows, T).
    ///
    /// Errors with [`DataError::TooFewTokens`] if the split is shorter than T+1. Panics if
    /// `rows` is empty or reaches past B, or a buffer is not rows·T long.
    #[allow(clippy::too_many_arguments)]
    pub fn train_rows(
        &self,
        seed: u64,
        step: u64,
        b: usize,
        rows: std::ops::Range<usize>,
        t: usize,
        inputs: &mut [u32],  // (rows, T)
        targets: &mut [u32], // (rows, T)
    ) -> Result<(), DataError> {
        assert!(
            rows.start < rows.end && rows.end <= b,
            "rows {rows:?} must be a non-empty part of 0..{b}"
        );
        check_buffers(rows.len(), t, inputs, targets);
        let starts = self.train_window_starts(seed, step, b, t)?;
        let mine = starts.skip(rows.start).take(rows.len());
        for ((start, inp), tgt) in mine.zip(inputs.chunks_mut(t)).zip(targets.chunks_mut(t)) {
            self.fill_window(start, inp, tgt);
        }
        Ok(())
    }

    /// Number of evaluation windows of length T+1: ⌊(len − 1) / T⌋ (window k starts at k·T).
    pub fn eval_windows(&self, t: usize) -> u64 {
        assert!(t > 0, "T must be positive");
        self.len().saturating_sub(1) / t as u64
    }

    /// Number of evaluation batches of B windows: ⌈windows / B⌉.
    pub fn eval_batches(&self, b: usize, t: usize) -> u64 {
        assert!(b > 0, "B must be positive");
        self.eval_windows(t).div_ceil(b as u64)
    }

    /// Fills evaluation batch `batch`: windows `batch·B ..` in order, row r from token
    /// (batch·B + r)·T. Returns the number of rows filled: B, fewer for the last batch, 0 past
    /// the end; rows past it are left as they were. Panics if a buffer is not B·T long.
    pub fn eval_batch(
        &self,
        batch: u64,
        b: usize,
        t: usize,
        inputs: &mut [u32],  // (B, T)
        targets: &mut [u32], // (B, T)
    ) -> usize {
        check_buffers(b, t, inputs, targets);
        let first = batch.saturating_mul(b as u64);
        let rows = self.eval_windows(t).saturating_sub(first).min(b as u64) as usize;
        for r in 0..rows {
            let start = (first + r as u64) * t as u64;
            let row = r * t..(r + 1) * t;
            self.fill_window(start, &mut inputs[row.clone()], &mut targets[row]);
        }
        rows
    }
}

fn check_buffers(b: usize, t: usize, inputs: &[u32], targets: &[u32]) {
    assert!(b > 0 && t > 0, "B = {b} and T = {t} must be positive");
    assert_eq!(inputs.len(), b * t, "inputs must be B*T = {b}*{t} long");
    assert_eq!(targets.len(), b * t, "targets must be B*T = {b}*{t} long");
}

/// A shard folder (or an explicit list of shard files), opened: its tokenizer, its
/// `meta.json` when it has one, and a [`TokenStream`] per split.
#[derive(Debug)]
pub struct Dataset {
    tokenizer: TokenizerKind,
    meta: Option<Meta>,
    train: TokenStream,
    val: TokenStream,
}

impl Dataset {
    /// Opens a folder written by `runner prepare`: `meta.json`, `train_*.bin` (at least one)
    /// and `val_*.bin` (none if the split is empty), in llm.c's format. Checks every shard's
    /// header and length, and that the shards hold the token counts `meta.json` records (so a
    /// missing shard or a folder mixing two runs is caught). Stray files are ignored, and so
    /// are `*.tmp` files left by an interrupted `prepare`.
    pub fn open(dir: &Path) -> Result<Self, DataError> {
        let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| DataError::io(dir, e))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        if names.is_empty() {
            return Err(DataError::EmptyFolder {
                dir: dir.to_path_buf(),
            });
        }
        names.sort();
        let shard_paths = |split: Split| -> Vec<PathBuf> {
            let prefix = format!("{}_", split.name());
            names
                .iter()
                .filter(|n| n.starts_with(&prefix) && n.ends_with(".bin"))
                .map(|n| dir.join(n))
                .collect()
        };
        let (train_paths, val_paths) = (shard_paths(Split::Train), shard_paths(Split::Val));
        if train_paths.is_empty() {
            return Err(DataError::NoShards {
                dir: dir.to_path_buf(),
                split: Split::Train.name(),
            });
        }
        let meta = Meta::read(dir)?;
        let train = open_stream(Split::Train, dir, &train_paths, ShardFormat::Llmc)?;
        let val = open_stream(Split::Val, dir, &val_paths, ShardFormat::Llmc)?;
        for stream in [&train, &val] {
            let stats = meta.split(stream.split);
            let found = (stream.len(), stream.shards.len() as u64);
            if found != (stats.tokens, stats.shards) {
                return Err(DataError::MetaMismatch {
                    path: dir.join(Meta::FILE),
                    reason: format!(
                        "records {} tokens in {} {} shards, but the folder's {}_*.bin hold {} tokens in {} \
                         (a shard is missing or the folder mixes two prepare runs)",
                        stats.tokens,
                        stats.shards,
                        stream.split.name(),
                        stream.split.name(),
                        found.0,
                        found.1
                    ),
                });
            }
        }
        Ok(Dataset {
            tokenizer: meta.tokenizer_kind(),
            meta: Some(meta),
            train,
            val,
        })
    }

    /// Opens explicit shard files, with no `meta.json`: llm.c's own files (e.g.
    /// `tiny_shakespeare_train.bin`, [`ShardFormat::Llmc`]) or nanoGPT's headerless
    /// `train.bin`/`val.bin` ([`ShardFormat::RawU16`]). The caller names the tokenizer the
    /// files were made with. `train` must name at least one file; `val` may be empty.
    pub fn open_files(
        train: &[PathBuf],
        val: &[PathBuf],
        format: ShardFormat,
        tokenizer: TokenizerKind,
    ) -> Result<Self, DataError> {
        let Some(first) = train.first() else {
            return Err(DataError::NoShards {
                dir: PathBuf::from("(no train files given)"),
                split: Split::Train.name(),
            });
        };
        let origin = |paths: &[PathBuf]| paths.first().unwrap_or(first).clone();
        Ok(Dataset {
            tokenizer,
            meta: None,
            train: open_stream(Split::Train, &origin(train), train, format)?,
            val: open_stream(Split::Val, &origin(val), val, format)?,
        })
    }

    /// The tokenizer the tokens came from.
    pub fn tokenizer(&self) -> TokenizerKind {
        self.tokenizer
    }

    /// The folder's `meta.json`; `None` for files opened with [`open_files`](Self::open_files).
    pub fn meta(&self) -> Option<&Meta> {
        self.meta.as_ref()
    }

    pub fn train(&self) -> &TokenStream {
        &self.train
    }

    pub fn val(&self) -> &TokenStream {
        &self.val
    }

    pub fn split(&self, split: Split) -> &TokenStream {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }

    /// Checks that every stored id of both splits is below a model's vocabulary size
    /// ([`DataError::TokenOutOfRange`] names the shard and position of the first that is not).
    pub fn check_vocab(&self, vocab_size: u32) -> Result<(), DataError> {
        self.train.check_vocab(vocab_size)?;
        self.val.check_vocab(vocab_size)
    }
}

fn open_stream(
    split: Split,
    origin: &Path,
    paths: &[PathBuf],
    format: ShardFormat,
) -> Result<TokenStream, DataError> {
    let shards = paths
        .iter()
        .map(|p| Shard::open(p, format))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TokenStream::new(split, origin.to_path_buf(), shards))
}
