//! Helpers shared by the end-to-end tests of `train`, `score` and `generate`: running the
//! built binary, a small prepared corpus, a tiny trained model of each kind, and reading a
//! run's metrics. Every corpus is generated here from the built-in grammar; nothing needs
//! Python or downloaded data.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Flags of a tiny, fast run: the `tiny` preset, B = 4, T = 32, two validation batches.
pub const TINY: &[&str] = &[
    "--preset",
    "tiny",
    "--batch",
    "4",
    "--seq-len",
    "32",
    "--eval-batches",
    "2",
];

pub fn runner(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(args)
        .output()
        .expect("runner runs")
}

/// Runs `runner` with `args` followed by `more` (paths and the like).
pub fn runner_with(args: &[&str], more: &[String]) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(more.iter().map(String::as_str));
    runner(&all)
}

/// Stdout of a run that must succeed.
#[track_caller]
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "runner failed ({:?}): {}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The one-line error of a run that must fail with exit code 2 and give a hint.
#[track_caller]
pub fn fails(out: Output) -> String {
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "expected exit code 2: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    // What went wrong first, the hint last.
    assert!(err.contains("; hint: "), "no hint after the error: {err}");
    err
}

/// A failure reported by clap (usage errors): exit code 2, naming the flag.
#[track_caller]
pub fn usage_error(out: Output, flag: &str) -> String {
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "expected exit code 2: {err}");
    assert!(err.starts_with("error: ") && err.contains(flag), "{err}");
    err
}

pub fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Prepares a small corpus of the built-in grammar (10 documents of 3 KB, byte tokenizer)
/// into `root/data` and returns the folder.
pub fn prepared_corpus(root: &Path) -> PathBuf {
    let text = root.join("text");
    std::fs::create_dir_all(&text).unwrap();
    for (i, doc) in model::corpus::builtin_documents(7, 10, 3_000)
        .iter()
        .enumerate()
    {
        std::fs::write(text.join(format!("doc{i:02}.txt")), doc).unwrap();
    }
    let data = root.join("data");
    ok(runner_with(
        &["prepare", "--val-fraction", "0.2"],
        &["--input".into(), s(&text), "--out".into(), s(&data)],
    ));
    data
}

/// Trains a tiny model of `kind` (`gpt` or `lstm`) for `steps` steps on `data` into
/// `root/NAME`; returns the run folder and stdout.
pub fn train_tiny(
    root: &Path,
    name: &str,
    kind: &str,
    data: &Path,
    steps: u64,
    extra: &[&str],
) -> (PathBuf, String) {
    let out = root.join(name);
    let mut args = vec!["train", "--model", kind];
    args.extend_from_slice(TINY);
    args.extend_from_slice(extra);
    let stdout = ok(runner_with(
        &args,
        &[
            "--shards".into(),
            s(data),
            "--out".into(),
            s(&out),
            "--steps".into(),
            steps.to_string(),
        ],
    ));
    (out, stdout)
}

/// (step, train loss) of every training line of a run's metrics.jsonl, in order.
pub fn train_losses(run: &Path) -> Vec<(u64, f64)> {
    metrics(run)
        .iter()
        .filter_map(|v| Some((v["step"].as_u64()?, v["train_loss"].as_f64()?)))
        .collect()
}

/// (step, validation loss) of every evaluation line.
pub fn val_losses(run: &Path) -> Vec<(u64, f64)> {
    metrics(run)
        .iter()
        .filter_map(|v| Some((v["step"].as_u64()?, v["val_loss"].as_f64()?)))
        .collect()
}

pub fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The checkpoint's state.json.
pub fn state(run: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(run.join("checkpoint/state.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}
