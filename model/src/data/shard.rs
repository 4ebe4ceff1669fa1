//! One token shard file in llm.c's format: the header parser, an atomic writer, a rolling
//! writer that starts a new shard every N tokens, and a memory-mapped reader.
//!
//! ```text
//! offset 0     256 x int32 little-endian: [0] = 20240520 (magic), [1] = 1 (version),
//!              [2] = token count n, [3..256] = 0
//! offset 1024  n x uint16 little-endian token ids
//! ```
//!
//! This is what llm.c's `dev/data/data_common.py::write_datafile` writes and its C loader
//! reads, so shards move between the two projects unchanged. A raw nanoGPT `.bin` (the uint16
//! tokens with no header) is read only when asked for ([`ShardFormat::RawU16`]).
//!
//! The reader does not copy: it maps the file and views the bytes after the header as `&[u16]`
//! (`bytemuck`), so a corpus costs page cache, not anonymous memory. That view is right only on
//! a little-endian host (x86, ARM Linux); a big-endian build refuses to compile.
//!
//! Leaves out: llm.c's version 2 (uint32 tokens for Llama 3), compression, checksums.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::{DataError, Split};

#[cfg(target_endian = "big")]
compile_error!(
    "token shards are little-endian and viewed in place; big-endian hosts are not supported"
);

/// llm.c's magic number, the first int32 of every shard.
pub const MAGIC: i32 = 20240520;
/// Header version for uint16 tokens (GPT-2-sized vocabularies).
pub const VERSION: i32 = 1;
/// The header is 256 int32 = 1024 bytes.
pub const HEADER_BYTES: usize = 256 * 4;
/// The most tokens one shard can hold: the header's count is an int32.
pub const MAX_SHARD_TOKENS: u64 = i32::MAX as u64;

/// The 1024 header bytes of a shard of `count` tokens.
pub fn header_bytes(count: u64) -> [u8; HEADER_BYTES] {
    assert!(
        count <= MAX_SHARD_TOKENS,
        "a shard holds at most {MAX_SHARD_TOKENS} tokens, got {count}"
    );
    let mut h = [0u8; HEADER_BYTES];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&VERSION.to_le_bytes());
    h[8..12].copy_from_slice(&(count as i32).to_le_bytes());
    h
}

/// Validates a whole shard file's bytes (`file`, as mapped or read) and returns its token
/// count. Checks, in order: room for the header, the magic number, the version, a
/// non-negative count, and that the length is exactly 1024 + 2 x count bytes. Any input gives
/// a value or an error, never a panic (a property test feeds it arbitrary bytes).
pub fn parse_header(path: &Path, file: &[u8]) -> Result<u64, DataError> {
    let len = file.len() as u64;
    if file.len() < HEADER_BYTES {
        return Err(DataError::ShardTooShort {
            path: path.to_path_buf(),
            len,
        });
    }
    let int = |i: usize| i32::from_le_bytes(file[4 * i..4 * i + 4].try_into().expect("4 bytes"));
    let (magic, version, count) = (int(0), int(1), int(2));
    let path = path.to_path_buf();
    if magic != MAGIC {
        return Err(DataError::BadMagic { path, found: magic });
    }
    if version != VERSION {
        return Err(DataError::UnsupportedVersion {
            path,
            found: version,
        });
    }
    if count < 0 {
        return Err(DataError::BadTokenCount { path, count });
    }
    let count = count as u64;
    let expected = HEADER_BYTES as u64 + 2 * count;
    if len < expected {
        return Err(DataError::ShardTruncated {
            path,
            expected,
            got: len,
        });
    }
    if len > expected {
        return Err(DataError::ShardTooLong {
            path,
            expected,
            got: len,
        });
    }
    Ok(count)
}

/// How a shard file is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardFormat {
    /// llm.c: 1024-byte header, then uint16 tokens. What `runner prepare` writes.
    Llmc,
    /// nanoGPT's `train.bin`/`val.bin`: uint16 tokens, no header. Nothing in such a file says
    /// what it is, so it is read only when the caller asks for it.
    RawU16,
}

/// A read-only memory map of `file`.
///
/// This is the one `unsafe` block of the `model` crate.
#[allow(unsafe_code)]
fn map_readonly(path: &Path, file: &File) -> Result<Mmap, DataError> {
    // SAFETY: `Mmap::map` is unsafe because the mapped bytes change, and a `&[u8]` into them
    // would be unsound, if the file is modified or truncated while mapped. Lanes never writes
    // a shard it has mapped: shards are written once under a temporary name and renamed into
    // place, so a rerun of `prepare` replaces the directory entry and leaves the mapped inode
    // intact. Another program editing a shard in place during training is outside what Lanes
    // supports (as with llm.c and nanoGPT, which also map or stream their shards).
    unsafe { Mmap::map(file) }.map_err(|e| DataError::io(path, e))
}

/// One shard, memory-mapped and validated; its tokens are viewed in place.
pub struct Shard {
    path: PathBuf,
    map: Mmap,
    offset: usize, // bytes before the first token: 1024, or 0 for raw files
    len: usize,    // tokens
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Shard({}, {} tokens)", self.path.display(), self.len)
    }
}

impl Shard {
    /// Maps `path` and validates it as `format`. Errors name the file: unreadable, too short,
    /// wrong magic, unknown version, length that disagrees with the header (llm.c format) or
    /// an odd number of bytes (raw).
    pub fn open(path: &Path, format: ShardFormat) -> Result<Self, DataError> {
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        // A directory opens but cannot be mapped ("No such device"): say what it is.
        if !file
            .metadata()
            .map_err(|e| DataError::io(path, e))?
            .is_file()
        {
            return Err(DataError::ShardNotAFile {
                path: path.to_path_buf(),
            });
        }
        let map = map_readonly(path, &file)?;
        let (offset, len) = match format {
            ShardFormat::Llmc => (HEADER_BYTES, parse_header(path, &map)? as usize),
            ShardFormat::RawU16 => {
                if map.len() % 2 != 0 {
                    return Err(DataError::RawOddLength {
                        path: path.to_path_buf(),
                        len: map.len() as u64,
                    });
                }
                (0, map.len() / 2)
            }
        };
        Ok(Shard {
            path: path.to_path_buf(),
            map,
            offset,
            len,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The token ids, viewed in the mapped file (no copy). // (n,)
    pub fn tokens(&self) -> &[u16] {
        // The map is page-aligned and the offset even, so the cast cannot fail.
        bytemuck::cast_slice(&self.map[self.offset..self.offset + 2 * self.len])
    }

    /// Returns [`DataError::TokenOutOfRange`] for the first id `>= vocab_size`.
    pub fn check_vocab(&self, vocab_size: u32) -> Result<(), DataError> {
        const CHUNK: usize = 1 << 16;
        for (c, chunk) in self.tokens().chunks(CHUNK).enumerate() {
            // A max over the chunk vectorizes; only a failing chunk is searched.
            let max = chunk.iter().copied().max().unwrap_or(0);
            if u32::from(max) >= vocab_size {
                let i = chunk
                    .iter()
                    .position(|&id| u32::from(id) >= vocab_size)
                    .expect("the max is out of range");
                return Err(DataError::TokenOutOfRange {
                    path: self.path.clone(),
                    index: (c * CHUNK + i) as u64,
                    id: u32::from(chunk[i]),
                    vocab_size,
                });
            }
        }
        Ok(())
    }
}

/// Writes one shard under a temporary name (`<name>.tmp`) and renames it into place in
/// [`finish`](Self::finish), so a reader never sees a shard that is half written: an
/// interrupted run leaves at most a `.tmp` file, which no loader lists. Dropping an unfinished
/// writer deletes its temporary file.
pub struct ShardWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>, // None once finished
    count: u64,
    buf: Vec<u8>, // staging for the little-endian uint16 encoding of one `write`
}

impl ShardWriter {
    /// Starts writing the shard that will be named `path`.
    pub fn create(path: &Path) -> Result<Self, DataError> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let file = File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        // The count is not known yet: a zero header now, the real one in `finish`.
        out.write_all(&[0u8; HEADER_BYTES])
            .map_err(|e| DataError::io(&tmp, e))?;
        Ok(ShardWriter {
            path: path.to_path_buf(),
            tmp,
            out: Some(out),
            count: 0,
            buf: Vec::new(),
        })
    }

    /// Tokens written so far.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends token ids. Errors if an id does not fit uint16 or the shard would exceed
    /// [`MAX_SHARD_TOKENS`].
    pub fn write(&mut self, ids: &[u32]) -> Result<(), DataError> {
        if let Some(&id) = ids.iter().find(|&&id| id > u32::from(u16::MAX)) {
            return Err(DataError::TokenTooWide {
                path: self.path.clone(),
                id,
            });
        }
        assert!(
            self.count + ids.len() as u64 <= MAX_SHARD_TOKENS,
            "a shard holds at most {MAX_SHARD_TOKENS} tokens"
        );
        self.buf.clear();
        self.buf
            .extend(ids.iter().flat_map(|&id| (id as u16).to_le_bytes()));
        let out = self.out.as_mut().expect("write after finish");
        out.write_all(&self.buf)
            .map_err(|e| DataError::io(&self.tmp, e))?;
        self.count += ids.len() as u64;
        Ok(())
    }

    /// Writes the header, flushes to disk and renames the file to its final name.
    pub fn finish(mut self) -> Result<PathBuf, DataError> {
        let io = |e| DataError::io(&self.tmp, e);
        let out = self.out.take().expect("finish once");
        let mut file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&header_bytes(self.count)).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(io)?;
        Ok(self.path.clone())
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        if self.out.is_some() {
            // Unfinished: leave nothing behind that looks like data.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// The name of shard `index` of a split: `train_000000.bin`, `val_000003.bin`, …
pub fn shard_name(split: Split, index: usize) -> String {
    format!("{}_{index:06}.bin", split.name())
}

/// Writes one split's token stream as consecutive shards of at most `shard_tokens` tokens
/// each: `train_000000.bin`, `train_000001.bin`, … A shard boundary falls wherever the count
/// says, in the middle of a document if need be (the loader reads the shards as one stream).
/// A split that receives no token writes no shard.
pub struct SplitWriter {
    dir: PathBuf,
    split: Split,
    shard_tokens: u64,
    current: Option<ShardWriter>,
    finished: Vec<PathBuf>,
    tokens: u64,
}

impl SplitWriter {
    /// A writer of `split` shards in `dir`, `shard_tokens` (1..=[`MAX_SHARD_TOKENS`]) each.
    pub fn new(dir: &Path, split: Split, shard_tokens: u64) -> Self {
        assert!(
            (1..=MAX_SHARD_TOKENS).contains(&shard_tokens),
            "shard_tokens must be in 1..={MAX_SHARD_TOKENS}, got {shard_tokens}"
        );
        SplitWriter {
            dir: dir.to_path_buf(),
            split,
            shard_tokens,
            current: None,
            finished: Vec::new(),
            tokens: 0,
        }
    }

    /// Tokens written so far, across shards.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Appends ids, finishing a shard and starting the next whenever one fills.
    pub fn write(&mut self, mut ids: &[u32]) -> Result<(), DataError> {
        while !ids.is_empty() {
            let shard = match &mut self.current {
                Some(s) => s,
                None => {
                    let path = self.dir.join(shard_name(self.split, self.finished.len()));
                    self.current.insert(ShardWriter::create(&path)?)
                }
            };
            let room = (self.shard_tokens - shard.len()) as usize;
            let (now, rest) = ids.split_at(room.min(ids.len()));
            shard.write(now)?;
            self.tokens += now.len() as u64;
            ids = rest;
            if shard.len() == self.shard_tokens {
                let full = self.current.take().expect("current shard");
                self.finished.push(full.finish()?);
            }
        }
        Ok(())
    }

    /// Finishes the last shard and returns the paths of all shards, in order.
    pub fn finish(mut self) -> Result<Vec<PathBuf>, DataError> {
        if let Some(last) = self.current.take() {
            self.finished.push(last.finish()?);
        }
        Ok(self.finished)
    }
}
