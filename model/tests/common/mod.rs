//! Helpers shared by the data-path integration tests: shard folders built in a temporary
//! directory, and llm.c shard bytes built by hand. Leaves out: text corpora (tests make
//! their own).
#![allow(dead_code)] // each test file uses a different subset

use std::path::Path;

use model::TokenizerKind;
use model::data::{Meta, Split, SplitStats, SplitWriter};

/// The bytes llm.c's `data_common.py::write_datafile` writes for `tokens` (header
/// `np.zeros(256, dtype=np.int32)` with [0] = 20240520, [1] = 1, [2] = len, then
/// `np.array(tokens, dtype=np.uint16).tobytes()`), built here independently of the crate's
/// writer.
pub fn llmc_bytes(tokens: &[u16]) -> Vec<u8> {
    let mut header = [0i32; 256];
    header[0] = 20240520;
    header[1] = 1;
    header[2] = tokens.len() as i32;
    let mut out: Vec<u8> = header.iter().flat_map(|h| h.to_le_bytes()).collect();
    out.extend(tokens.iter().flat_map(|t| t.to_le_bytes()));
    out
}

/// Writes a prepared folder: `train` and `val` token streams cut into shards of
/// `shard_tokens`, and a matching `meta.json` (one document per split, 1 byte per token).
pub fn write_folder(
    dir: &Path,
    kind: TokenizerKind,
    train: &[u32],
    val: &[u32],
    shard_tokens: u64,
) {
    let mut stats = [SplitStats::default(); 2];
    for (i, (split, ids)) in [(Split::Train, train), (Split::Val, val)]
        .into_iter()
        .enumerate()
    {
        let mut w = SplitWriter::new(dir, split, shard_tokens);
        w.write(ids).unwrap();
        stats[i] = SplitStats {
            documents: 1,
            text_bytes: ids.len() as u64,
            tokens: w.tokens(),
            shards: w.finish().unwrap().len() as u64,
        };
    }
    Meta::new(kind, "test", stats[0], stats[1])
        .write(dir)
        .unwrap();
}

/// 0, 1, 2, … wrapping below `v`: a stream whose every position is recognizable.
pub fn ramp(n: usize, v: u32) -> Vec<u32> {
    (0..n as u32).map(|i| i % v).collect()
}
