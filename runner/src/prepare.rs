//! `runner prepare`: text files → llm.c token shards + `meta.json`, streaming.
//!
//! What it does, in order:
//! 1. Lists the documents. **A document is one input file**: a folder contributes every file
//!    under it (recursively, in name order, skipping hidden entries, symlinked folders and the
//!    `--out` folder). Blank lines do not split documents: in a play or a book they separate
//!    paragraphs of one text, and an `<eos>` there would teach the model that the text ends.
//! 2. Splits by document, deterministically: walking the documents in order, one goes to
//!    `val` when that brings the validation bytes closer to `--val-fraction` of the bytes so
//!    far (error diffusion), so about every 1/f-th document is held out and the split does not
//!    depend on anything but the inputs. If that picks none although two or more documents
//!    exist, the last goes to `val`. A single document is cut in two instead, at the first
//!    line start after (1 − f) of its bytes (as nanoGPT does for Shakespeare), so there is
//!    always validation text when f > 0.
//! 3. Streams each document through the tokenizer in ~1 MiB chunks cut where the tokenizer
//!    allows ([`Tokenizer::chunk_boundary`]), encoding a few chunks in parallel (rayon) and
//!    writing them in order, and appends `<eos>` after each document. Memory stays at a few
//!    MiB whatever the corpus size.
//! 4. Writes shards through temporary names (`*.tmp`, renamed when complete) and `meta.json`
//!    last, so a folder with `meta.json` is a finished one.
//!
//! Leaves out: other document separators, deduplication, shuffling documents, Unicode
//! normalization, compressed inputs.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args as ClapArgs;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use indicatif::{ProgressBar, ProgressStyle};
use model::data::shard::MAX_SHARD_TOKENS;
use model::data::{DataError, Meta, Split, SplitStats, SplitWriter};
use model::{Tokenizer, TokenizerKind};
use rayon::prelude::*;

/// What `meta.json` records as a document.
const DOCUMENT: &str = "one input file; eos appended after each";
/// The same for a single input file, cut in two to make a validation split.
const DOCUMENT_CUT: &str =
    "one input file, cut at a line start into train then val; eos appended after it";
/// Bytes read per chunk; a chunk is cut back to the last safe boundary before encoding.
const CHUNK_BYTES: usize = 1 << 20;
/// A chunk with no safe boundary is cut anyway (at a character boundary) past this size.
const MAX_CHUNK_BYTES: usize = 16 << 20;
/// Inputs larger than this get a progress bar.
const PROGRESS_MIN_BYTES: u64 = 8 << 20;

#[derive(ClapArgs)]
pub struct Args {
    /// Text files or folders to read (folders recursively, in name order; hidden entries
    /// skipped). Each file is one document.
    #[arg(long, required = true, num_args = 1.., value_name = "FILE_OR_DIR")]
    pub input: Vec<PathBuf>,

    /// Folder for train_*.bin, val_*.bin and meta.json (created if missing).
    #[arg(long, default_value = "data")]
    pub out: PathBuf,

    /// Tokenizer: byte (256 bytes + end-of-sequence, V = 257) or gpt2 (GPT-2 BPE, V = 50257).
    #[arg(long, default_value = "byte",
          value_parser = PossibleValuesParser::new(["byte", "gpt2"])
              .map(|s| TokenizerKind::from_name(&s).expect("a listed name")))]
    pub tokenizer: TokenizerKind,

    /// Fraction of the text (in bytes, whole documents) held out for validation, in [0, 1).
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,

    /// Tokens per shard file (at most 2^31 - 1: llm.c's header counts in int32).
    #[arg(long, default_value_t = 100_000_000,
          value_parser = clap::value_parser!(u64).range(1..=MAX_SHARD_TOKENS))]
    pub shard_tokens: u64,

    /// Replace the shards and meta.json already in --out.
    #[arg(long)]
    pub overwrite: bool,

    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A byte range of one input file that goes to one split.
struct Segment {
    path: PathBuf,
    start: u64,
    end: Option<u64>, // None: to the end of the file
    split: Split,
    eos_after: bool, // the document ends here
}

pub fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    if !(0.0..1.0).contains(&args.val_fraction) {
        bail!(
            "--val-fraction {} is outside [0, 1); hint: 0.1 holds out a tenth of the text",
            args.val_fraction
        );
    }
    let tokenizer = Tokenizer::new(args.tokenizer);
    let docs = list_documents(&args.input, &args.out)?;
    let segments = plan_segments(&docs, args.val_fraction, &tokenizer)?;
    let total_bytes: u64 = docs.iter().map(|d| d.1).sum();
    clear_out_folder(&args.out, args.overwrite)?;

    let progress = if total_bytes >= PROGRESS_MIN_BYTES {
        let bar = ProgressBar::new(total_bytes);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {wide_msg}",
            )
            .expect("valid template"),
        );
        bar
    } else {
        ProgressBar::hidden()
    };

    let mut sink = Sink {
        tokenizer,
        writers: [Split::Train, Split::Val]
            .map(|split| SplitWriter::new(&args.out, split, args.shard_tokens)),
        stats: [SplitStats::default(); 2],
        doc_open: [false; 2],
        queue: Vec::new(),
        queued_bytes: 0,
        max_queued_bytes: 2 * rayon::current_num_threads() * CHUNK_BYTES,
    };
    for seg in &segments {
        progress.set_message(seg.path.display().to_string());
        read_segment(seg, &tokenizer, &progress, &mut sink)?;
    }
    sink.flush()?;
    progress.finish_and_clear();

    let mut stats = sink.stats;
    for (w, s) in sink.writers.into_iter().zip(&mut stats) {
        s.tokens = w.tokens();
        s.shards = w.finish()?.len() as u64;
    }
    let document = if segments.len() == 2 && !segments[0].eos_after {
        DOCUMENT_CUT
    } else {
        DOCUMENT
    };
    let meta = Meta::new(args.tokenizer, document, stats[0], stats[1]);
    meta.write(&args.out)?;
    report(&args, &meta, docs.len(), started.elapsed().as_secs_f64());
    Ok(())
}

/// Every input file with its size, in order. Folders are walked recursively in name order.
fn list_documents(inputs: &[PathBuf], out: &Path) -> Result<Vec<(PathBuf, u64)>> {
    // Never read our own output back in (`--input . --out data`).
    let out = std::fs::canonicalize(out).ok();
    let mut docs = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input)
            .with_context(|| format!("cannot read input {}", input.display()))
            .context("hint: check the path given to --input")?;
        if meta.is_dir() {
            let before = docs.len();
            walk(input, out.as_deref(), &mut docs)?;
            if docs.len() == before {
                bail!(
                    "input folder {} holds no files; hint: point --input at text files or folders of them",
                    input.display()
                );
            }
        } else {
            docs.push((input.clone(), meta.len()));
        }
    }
    Ok(docs)
}

fn walk(dir: &Path, out: Option<&Path>, docs: &mut Vec<(PathBuf, u64)>) -> Result<()> {
    if let Some(out) = out
        && std::fs::canonicalize(dir).is_ok_and(|d| d.starts_with(out))
    {
        return Ok(());
    }
    let read_err = || format!("cannot read input folder {}", dir.display());
    let mut entries = std::fs::read_dir(dir)
        .with_context(read_err)?
        .collect::<Result<Vec<_>, _>>()
        .with_context(read_err)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let kind = entry.file_type().with_context(read_err)?;
        if kind.is_dir() {
            walk(&path, out, docs)?;
        } else {
            // A symlink counts if it leads to a file; symlinked folders are not followed.
            let meta = std::fs::metadata(&path)
                .with_context(|| format!("cannot read input {}", path.display()))?;
            if meta.is_file() {
                docs.push((path, meta.len()));
            }
        }
    }
    Ok(())
}

/// Which bytes of which document go to which split (see the file header, step 2).
fn plan_segments(
    docs: &[(PathBuf, u64)],
    val_fraction: f64,
    tokenizer: &Tokenizer,
) -> Result<Vec<Segment>> {
    let whole = |path: &PathBuf, split| Segment {
        path: path.clone(),
        start: 0,
        end: None,
        split,
        eos_after: true,
    };
    if let [(path, len)] = docs
        && val_fraction > 0.0
    {
        let cut = cut_point(path, *len, 1.0 - val_fraction, tokenizer)?;
        return Ok(vec![
            Segment {
                end: Some(cut),
                eos_after: false,
                ..whole(path, Split::Train)
            },
            Segment {
                start: cut,
                ..whole(path, Split::Val)
            },
        ]);
    }
    let (mut total, mut val) = (0.0, 0.0);
    let mut segments: Vec<Segment> = docs
        .iter()
        .map(|(path, len)| {
            let len = *len as f64;
            total += len;
            // Hold it out if that leaves the val bytes nearer to the target fraction.
            let split = if val + len / 2.0 < val_fraction * total {
                val += len;
                Split::Val
            } else {
                Split::Train
            };
            whole(path, split)
        })
        .collect();
    if val_fraction > 0.0 && segments.len() >= 2 && segments.iter().all(|s| s.split == Split::Train)
    {
        segments.last_mut().expect("two or more").split = Split::Val;
    }
    Ok(segments)
}

/// Where to cut a single document so that `fraction` of it is training text: the first safe
/// chunk boundary at or after that byte (a line start for both tokenizers), else that byte.
fn cut_point(path: &Path, len: u64, fraction: f64, tokenizer: &Tokenizer) -> Result<u64> {
    let target = ((len as f64 * fraction) as u64).min(len);
    let mut file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    // Look at a window from a few bytes before the target (the character before a newline).
    let from = target.saturating_sub(4);
    let mut window = Vec::new();
    file.seek(SeekFrom::Start(from))
        .and_then(|_| file.take(CHUNK_BYTES as u64).read_to_end(&mut window))
        .with_context(|| format!("cannot read {}", path.display()))?;
    let skip = (target - from) as usize;
    let byte = Tokenizer::new(TokenizerKind::Byte);
    let at_line_start = |p: usize| window[p - 1] == b'\n' && byte.is_chunk_boundary(&window, p);
    let safe = (skip.max(1)..window.len())
        .find(|&p| at_line_start(p) && tokenizer.is_chunk_boundary(&window, p));
    // No line start nearby: cut at the target's character, never inside one.
    let char_start = || (skip..window.len()).find(|&p| window[p] & 0xC0 != 0x80);
    Ok(safe.or_else(char_start).map_or(len, |p| from + p as u64))
}

/// A chunk of one segment, cut at a safe boundary, waiting to be encoded.
struct Piece {
    split: Split,
    path: PathBuf,
    offset: u64, // file offset of bytes[0], for error messages
    bytes: Vec<u8>,
    eos_after: bool, // the last piece of a document
}

/// Collects pieces (from several documents when they are small) and encodes them in
/// parallel when enough bytes are queued, then writes their ids in queue order: the shards
/// are the same on any number of threads.
struct Sink {
    tokenizer: Tokenizer,
    writers: [SplitWriter; 2], // [train, val]
    stats: [SplitStats; 2],    // text bytes and documents; tokens and shards come at the end
    doc_open: [bool; 2],       // whether the current document has text in this split
    queue: Vec<Piece>,
    queued_bytes: usize,
    max_queued_bytes: usize,
}

impl Sink {
    fn push(&mut self, piece: Piece) -> Result<()> {
        self.queued_bytes += piece.bytes.len();
        self.queue.push(piece);
        if self.queued_bytes >= self.max_queued_bytes || self.queue.len() >= 1024 {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let tokenizer = self.tokenizer;
        let encoded: Vec<Result<Vec<u32>, DataError>> = self
            .queue
            .par_iter()
            .map(|piece| {
                let mut ids = Vec::with_capacity(piece.bytes.len());
                tokenizer.encode_bytes_into(&piece.bytes, &mut ids)?;
                Ok(ids)
            })
            .collect();
        for (piece, ids) in self.queue.drain(..).zip(encoded) {
            let i = piece.split as usize;
            match ids {
                Ok(ids) => self.writers[i].write(&ids)?,
                Err(DataError::NotUtf8 { offset }) => bail!(
                    "{}: {}; hint: convert it to UTF-8 (iconv -t UTF-8) or use --tokenizer byte",
                    piece.path.display(),
                    DataError::NotUtf8 {
                        offset: piece.offset + offset
                    }
                ),
                Err(e) => return Err(e.into()),
            }
            self.stats[i].text_bytes += piece.bytes.len() as u64;
            self.doc_open[i] = true;
            if piece.eos_after {
                self.writers[i].write(&[tokenizer.eos_id()])?;
                for (s, open) in self.stats.iter_mut().zip(&mut self.doc_open) {
                    s.documents += u64::from(std::mem::take(open));
                }
            }
        }
        self.queued_bytes = 0;
        Ok(())
    }
}

/// Reads one segment in chunks cut where the tokenizer allows and hands them to `sink`.
fn read_segment(
    seg: &Segment,
    tokenizer: &Tokenizer,
    progress: &ProgressBar,
    sink: &mut Sink,
) -> Result<()> {
    let path = &seg.path;
    let read_err = || format!("cannot read {}", path.display());
    let mut file = File::open(path).with_context(read_err)?;
    file.seek(SeekFrom::Start(seg.start))
        .with_context(read_err)?;
    let mut reader: Box<dyn Read> = match seg.end {
        Some(end) => Box::new(file.take(end - seg.start)),
        None => Box::new(file),
    };
    let mut pending: Vec<u8> = Vec::with_capacity(2 * CHUNK_BYTES);
    let mut offset = seg.start; // file offset of pending[0]
    loop {
        let before = pending.len();
        pending.resize(before + CHUNK_BYTES, 0);
        let n = reader.read(&mut pending[before..]).with_context(read_err)?;
        pending.truncate(before + n);
        progress.inc(n as u64);
        let eof = n == 0;
        let cut = if eof {
            pending.len()
        } else if pending.len() < CHUNK_BYTES {
            continue;
        } else {
            match tokenizer.chunk_boundary(&pending) {
                0 if pending.len() < MAX_CHUNK_BYTES => continue,
                0 => char_boundary(&pending),
                cut => cut,
            }
        };
        let rest = pending.split_off(cut);
        let bytes = std::mem::replace(&mut pending, rest);
        let len = bytes.len() as u64;
        sink.push(Piece {
            split: seg.split,
            path: path.clone(),
            offset,
            bytes,
            eos_after: eof && seg.eos_after,
        })?;
        offset += len;
        if eof {
            return Ok(());
        }
    }
}

/// The last UTF-8 character boundary of `bytes` that is not its start (a forced cut).
fn char_boundary(bytes: &[u8]) -> usize {
    (1..bytes.len())
        .rev()
        .find(|&i| bytes[i] & 0xC0 != 0x80)
        .unwrap_or(bytes.len())
}

/// Makes `out` exist and hold no earlier dataset: refuses to mix runs unless `--overwrite`,
/// which removes `meta.json` first (so the folder reads as unfinished) and then the shards.
fn clear_out_folder(out: &Path, overwrite: bool) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let ours = |name: &str| {
        name == Meta::FILE
            || name == "meta.json.tmp"
            || ((name.starts_with("train_") || name.starts_with("val_"))
                && (name.ends_with(".bin") || name.ends_with(".bin.tmp")))
    };
    let mut old: Vec<PathBuf> = std::fs::read_dir(out)
        .with_context(|| format!("cannot read {}", out.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| ours(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    if old.is_empty() {
        return Ok(());
    }
    if !overwrite {
        bail!(
            "{} already holds a prepared dataset; hint: pass --overwrite to replace it, or choose another --out",
            out.display()
        );
    }
    old.sort_by_key(|p| p.file_name() != Some(Meta::FILE.as_ref())); // meta.json first
    for p in old {
        std::fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
    }
    Ok(())
}

fn report(args: &Args, meta: &Meta, documents: usize, seconds: f64) {
    let bytes = meta.train.text_bytes + meta.val.text_bytes;
    let mb_per_s = bytes as f64 / 1e6 / seconds;
    if args.json {
        let value = serde_json::json!({
            "out": args.out,
            "meta": meta,
            "seconds": seconds,
            "mb_per_s": mb_per_s,
        });
        println!("{value:#}");
        return;
    }
    let total = SplitStats {
        documents: documents as u64, // a document cut in two counts once here
        text_bytes: bytes,
        tokens: meta.train.tokens + meta.val.tokens,
        shards: meta.train.shards + meta.val.shards,
    };
    println!(
        "prepared {} with the {} tokenizer (V = {}, eos = {})",
        args.out.display(),
        meta.tokenizer,
        meta.vocab_size,
        meta.eos_id
    );
    println!(
        "{:<6} {:>10} {:>14} {:>14} {:>12} {:>7}",
        "split", "documents", "text bytes", "tokens", "bytes/token", "shards"
    );
    for (name, s) in [
        ("train", &meta.train),
        ("val", &meta.val),
        ("total", &total),
    ] {
        println!(
            "{:<6} {:>10} {:>14} {:>14} {:>12.3} {:>7}",
            name,
            s.documents,
            s.text_bytes,
            s.tokens,
            s.bytes_per_token(),
            s.shards
        );
    }
    println!(
        "{:.1} MB of text in {seconds:.2} s: {mb_per_s:.1} MB/s",
        bytes as f64 / 1e6
    );
}
