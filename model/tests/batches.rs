//! Batches from a shard folder: reproducible training windows (same seed and step, same
//! batch; another seed, another batch; a resumed run sees what it would have seen), windows
//! that cross shard boundaries read the right tokens, and evaluation windows cover the split
//! in order. Leaves out: file validation (tests/shards.rs).

mod common;

use common::{ramp, write_folder};
use model::TokenizerKind;
use model::data::{Dataset, Split};

const V: u32 = 50257;

/// A folder whose train split is 0, 1, 2, … (mod V) in shards of 1000 tokens, so a window's
/// tokens say where it came from.
fn ramp_folder(train_len: usize, val_len: usize) -> (tempfile::TempDir, Dataset) {
    let dir = tempfile::tempdir().unwrap();
    let val: Vec<u32> = ramp(val_len, V).iter().map(|t| (t + 7) % V).collect();
    write_folder(
        dir.path(),
        TokenizerKind::Gpt2,
        &ramp(train_len, V),
        &val,
        1000,
    );
    let ds = Dataset::open(dir.path()).unwrap();
    (dir, ds)
}

fn batch(ds: &Dataset, seed: u64, step: u64, b: usize, t: usize) -> (Vec<u32>, Vec<u32>) {
    // Poisoned buffers: every element must be written.
    let (mut x, mut y) = (vec![u32::MAX; b * t], vec![u32::MAX; b * t]);
    ds.train()
        .train_batch(seed, step, b, t, &mut x, &mut y)
        .unwrap();
    (x, y)
}

#[test]
fn training_batches_are_windows_of_the_stream() {
    let (_dir, ds) = ramp_folder(5000, 100);
    let (b, t) = (8, 300);
    for step in 0..20 {
        let (x, y) = batch(&ds, 1, step, b, t);
        let starts: Vec<u64> = ds
            .train()
            .train_window_starts(1, step, b, t)
            .unwrap()
            .collect();
        for (r, &start) in starts.iter().enumerate() {
            assert!(start + (t as u64) < 5000, "window of T+1 inside the split");
            for i in 0..t {
                // Token at stream position p is p here; targets are inputs shifted by one.
                assert_eq!(x[r * t + i] as u64, start + i as u64, "step {step} row {r}");
                assert_eq!(
                    y[r * t + i] as u64,
                    start + i as u64 + 1,
                    "step {step} row {r}"
                );
            }
        }
    }
}

#[test]
fn windows_cross_shard_boundaries() {
    let (_dir, ds) = ramp_folder(3500, 10);
    assert_eq!(ds.train().shards().len(), 4);
    // Tokens 990 .. 2010 span three shards.
    let mut out = vec![0; 1020];
    ds.train().copy_tokens(990, &mut out);
    assert!(out.iter().enumerate().all(|(i, &id)| id == 990 + i as u32));
    // The last window of the split is reachable and exact.
    let mut out = vec![0; 501];
    ds.train().copy_tokens(2999, &mut out);
    assert_eq!((out[0], out[500]), (2999, 3499));
    // Over many steps, some training window crosses a boundary.
    let crossing = (0..100).any(|step| {
        let starts: Vec<u64> = ds
            .train()
            .train_window_starts(5, step, 4, 64)
            .unwrap()
            .collect();
        starts.iter().any(|s| s / 1000 != (s + 64) / 1000)
    });
    assert!(crossing);
}

#[test]
fn same_seed_same_batches_other_seed_other_batches() {
    let (dir, ds) = ramp_folder(20_000, 100);
    let (b, t) = (4, 32);
    let run = |ds: &Dataset, seed| {
        (0..10)
            .map(|s| batch(ds, seed, s, b, t))
            .collect::<Vec<_>>()
    };
    let first = run(&ds, 1337);
    // A second process opening the same folder: reopened here.
    let reopened = Dataset::open(dir.path()).unwrap();
    assert_eq!(run(&reopened, 1337), first);
    assert_ne!(run(&ds, 1338), first);
    // Consecutive steps differ.
    assert_ne!(first[0], first[1]);
}

#[test]
fn a_resumed_run_sees_the_batches_it_would_have_seen() {
    let (_dir, ds) = ramp_folder(20_000, 100);
    let uninterrupted: Vec<_> = (0..50).map(|s| batch(&ds, 9, s, 2, 16)).collect();
    // Resume at step 37 without touching steps 0..37, in reverse order for good measure.
    for s in (37..50).rev() {
        assert_eq!(batch(&ds, 9, s, 2, 16), uninterrupted[s as usize]);
    }
}

#[test]
fn batch_starts_are_pinned_across_platforms() {
    // SplitMix64 is integer arithmetic only: these numbers must never change, or resumed runs
    // from older checkpoints would see different data.
    let (_dir, ds) = ramp_folder(5000, 100);
    let starts: Vec<u64> = ds
        .train()
        .train_window_starts(42, 7, 4, 64)
        .unwrap()
        .collect();
    assert_eq!(starts, PINNED_STARTS);
}
// Also computed by a 10-line Python SplitMix64 + Lemire transcription when they were pinned.
const PINNED_STARTS: [u64; 4] = [4413, 2631, 3710, 233];

#[test]
fn eval_windows_cover_the_split_in_order() {
    let (_dir, ds) = ramp_folder(100, 1001);
    let val = ds.split(Split::Val);
    let (b, t) = (3, 64);
    // (1001 - 1) / 64 = 15 windows, in 5 batches of 3.
    assert_eq!((val.eval_windows(t), val.eval_batches(b, t)), (15, 5));
    let mut scored = Vec::new();
    let (mut x, mut y) = (vec![0; b * t], vec![0; b * t]);
    for i in 0..val.eval_batches(b, t) {
        let rows = val.eval_batch(i, b, t, &mut x, &mut y);
        assert_eq!(rows, 3);
        for r in 0..rows {
            let row = r * t..(r + 1) * t;
            assert_eq!(&x[row.clone()][1..], &y[row.clone()][..t - 1]);
            scored.extend_from_slice(&y[row]);
        }
    }
    // Targets are tokens 1 ..= 960 of the split, each exactly once, in order.
    let want: Vec<u32> = (1..=960u32).map(|p| (p + 7) % V).collect();
    assert_eq!(scored, want);
    assert_eq!(val.eval_batch(5, b, t, &mut x, &mut y), 0);
}

#[test]
fn the_last_eval_batch_may_be_partial() {
    let (_dir, ds) = ramp_folder(100, 10 * 8 + 1);
    let val = ds.val();
    let (b, t) = (4, 8);
    assert_eq!((val.eval_windows(t), val.eval_batches(b, t)), (10, 3));
    let (mut x, mut y) = (vec![u32::MAX; b * t], vec![u32::MAX; b * t]);
    assert_eq!(val.eval_batch(2, b, t, &mut x, &mut y), 2);
    assert!(
        x[2 * t..].iter().all(|&v| v == u32::MAX),
        "rows past the count are untouched"
    );
}
