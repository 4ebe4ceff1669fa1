//! Memory: opening a shard set and reading every token of it must not grow the process's
//! anonymous resident memory (`RssAnon` in /proc/self/status) with the corpus size — the
//! shards are memory-mapped, so their pages are file-backed page cache (`RssFile`), which the
//! kernel can drop at will. A CI-sized version runs with the suite; the 1 GiB version is
//! `#[ignore]`d (it writes 1 GiB to the temporary folder):
//!
//! ```text
//! cargo test --release -p model --test rss -- --ignored --nocapture
//! ```
//!
//! This file holds only these tests, so no other test's allocations run in the same process
//! at the same time. Leaves out: platforms without /proc (the tests pass vacuously there).

mod common;

use model::TokenizerKind;
use model::data::{Dataset, Split, SplitWriter};

/// One field of /proc/self/status in KiB, or None where there is no /proc.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Writes `bytes` of shards (in 32 MiB files), opens them, reads every token (a vocabulary
/// check and a full pass of evaluation windows) plus 1000 random training batches, and
/// returns (growth of RssAnon, RssFile after) in MiB.
fn anon_growth_mib(bytes: u64) -> Option<(f64, f64)> {
    let dir = tempfile::tempdir().unwrap();
    let tokens = bytes / 2;
    {
        let mut train = SplitWriter::new(dir.path(), Split::Train, 16 << 20);
        let block: Vec<u32> = common::ramp(1 << 20, 50257);
        let mut left = tokens;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            train.write(&block[..n]).unwrap();
            left -= n as u64;
        }
        let train_tokens = train.tokens();
        let shards = train.finish().unwrap().len() as u64;
        let mut val = SplitWriter::new(dir.path(), Split::Val, 16 << 20);
        val.write(&block[..4096]).unwrap();
        val.finish().unwrap();
        let stats = |tokens, shards| model::data::SplitStats {
            documents: 1,
            text_bytes: tokens,
            tokens,
            shards,
        };
        model::data::Meta::new(
            TokenizerKind::Gpt2,
            "test",
            stats(train_tokens, shards),
            stats(4096, 1),
        )
        .write(dir.path())
        .unwrap();
    }
    let before = status_kib("RssAnon:")?;

    let ds = Dataset::open(dir.path()).unwrap();
    assert_eq!(ds.train().len(), tokens);
    ds.check_vocab(50257).unwrap();
    let (b, t) = (8, 1024);
    let (mut x, mut y) = (vec![0u32; b * t], vec![0u32; b * t]);
    let mut sum = 0u64;
    for i in 0..ds.train().eval_batches(b, t) {
        let rows = ds.train().eval_batch(i, b, t, &mut x, &mut y);
        sum += y[..rows * t].iter().map(|&v| u64::from(v)).sum::<u64>();
    }
    for step in 0..1000 {
        ds.train()
            .train_batch(3, step, b, t, &mut x, &mut y)
            .unwrap();
        sum += u64::from(x[0]);
    }
    assert!(sum > 0);

    let after = status_kib("RssAnon:")?;
    let file = status_kib("RssFile:")?;
    Some((
        (after as f64 - before as f64) / 1024.0,
        file as f64 / 1024.0,
    ))
}

fn check(bytes: u64) {
    let Some((growth, file)) = anon_growth_mib(bytes) else {
        eprintln!("no /proc/self/status here; skipped");
        return;
    };
    println!(
        "{} MiB of shards read: RssAnon grew by {growth:.2} MiB (RssFile {file:.0} MiB)",
        bytes >> 20
    );
    assert!(
        growth < 4.0,
        "RssAnon grew by {growth:.2} MiB reading {} MiB of shards",
        bytes >> 20
    );
}

#[test]
fn reading_128_mib_of_shards_keeps_anonymous_memory_flat() {
    check(128 << 20);
}

#[test]
#[ignore = "writes and reads 1 GiB of shards; run with --ignored"]
fn reading_1_gib_of_shards_keeps_anonymous_memory_flat() {
    check(1 << 30);
}
