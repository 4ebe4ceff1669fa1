//! Rough edges a new or hostile user meets (issues 15 and 17), end to end through the built
//! binary: one writer per run folder (two real processes), no NaN levels without a
//! validation split, numbers as a person writes them, bounded `--threads`, training sizes
//! checked against memory, non-finite weights refused.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Waits until `path` holds text (the lock's holder label), at most a minute.
fn wait_for_text(path: &Path) -> String {
    let started = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && !text.trim().is_empty()
        {
            return text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{} never filled",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_second_writer_of_a_run_folder_is_refused_naming_the_holder() {
    let root = tempfile::tempdir().unwrap();
    let data = prepared_corpus(root.path());
    let out = root.path().join("run");
    let mut args: Vec<String> = ["train", "--steps", "100000", "--save-every", "5"]
        .iter()
        .chain(TINY)
        .map(|a| a.to_string())
        .collect();
    args.extend(["--shards".into(), s(&data), "--out".into(), s(&out)]);
    let mut first = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let label = wait_for_text(&out.join("run.lock"));
    assert!(label.contains(&format!("pid {}", first.id())), "{label}");

    // A second fresh start on the same folder, and a --resume while the first still runs.
    let mut second = args.clone();
    second[2] = "10".into();
    let err = fails(runner(
        &second.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    assert!(
        err.contains("is in use by pid") && err.contains(&first.id().to_string()),
        "{err}"
    );
    assert!(
        err.contains("runner train"),
        "names the holder's command: {err}"
    );
    let err = fails(runner_with(
        &["train", "--resume", "--steps", "200000"],
        &["--out".into(), s(&out)],
    ));
    assert!(err.contains(&format!("pid {}", first.id())), "{err}");
    let still_running = first.try_wait().unwrap().is_none();
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(
        still_running,
        "the first run ended before the test could race it"
    );

    // A fresh start refused for a bad flag leaves no folder behind.
    let fresh = root.path().join("never");
    let err = fails(runner_with(
        &["train", "--model", "lstm", "--d-model", "64"],
        &["--shards".into(), s(&data), "--out".into(), s(&fresh)],
    ));
    assert!(err.contains("--d-model"), "{err}");
    assert!(!fresh.exists(), "{} was left behind", fresh.display());

    // The OS released the lock with the killed process: a resume now gets past it.
    let resumed = runner_with(
        &["train", "--resume", "--steps", "200000", "--time", "1s"],
        &["--out".into(), s(&out)],
    );
    let err = String::from_utf8_lossy(&resumed.stderr);
    assert!(!err.contains("in use"), "{err}");
}

#[test]
fn without_a_validation_split_no_level_is_nan() {
    let root = tempfile::tempdir().unwrap();
    let text = root.path().join("text.txt");
    std::fs::write(
        &text,
        model::corpus::builtin_documents(3, 4, 3_000).join("\n"),
    )
    .unwrap();
    let data = root.path().join("data");
    ok(runner_with(
        &["prepare", "--val-fraction", "0"],
        &["--input".into(), s(&text), "--out".into(), s(&data)],
    ));
    let (_, stdout) = train_tiny(root.path(), "run", "gpt", &data, 3, &[]);
    assert!(!stdout.to_lowercase().contains("nan"), "{stdout}");
    assert!(!stdout.contains("inf "), "{stdout}");
    assert!(stdout.contains("of the training text"), "{stdout}");
    let levels = stdout.lines().find(|l| l.starts_with("levels:")).unwrap();
    assert!(levels.contains("bits/byte"), "{levels}");
    assert_eq!(
        stdout.matches("validation").count(),
        2,
        "said once: {stdout}"
    );
}

#[test]
fn numbers_read_as_a_person_writes_them() {
    let root = tempfile::tempdir().unwrap();
    let data = prepared_corpus(root.path());
    let (run, stdout) = train_tiny(
        root.path(),
        "run",
        "gpt",
        &data,
        1,
        &["--lr", "1e-3", "--threads", "1"],
    );
    let banner = stdout.lines().find(|l| l.starts_with("train:")).unwrap();
    assert!(banner.contains("lr 1e-3 → 1e-4"), "{banner}");
    assert!(
        banner.contains(", 1 thread") && !banner.contains("threads"),
        "{banner}"
    );
    assert!(banner.starts_with("train:  1 step of"), "{banner}");
    assert!(stdout.contains("trained 1 step,"), "{stdout}");

    let score = ok(runner_with(
        &["score", "--text", "a"],
        &["--ckpt".into(), s(&run)],
    ));
    assert!(
        score.contains("over 2 factors (1 token + <eos>)"),
        "{score}"
    );
    assert!(score.contains(" / 1 byte = "), "{score}");
    let out = runner_with(
        &["generate", "--max-tokens", "1", "--temperature", "0.7"],
        &["--ckpt".into(), s(&run)],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("temperature 0.7,"), "{err}");
    assert!(
        err.contains("prompt: 1 token in") && err.contains("generated: 1 token in"),
        "{err}"
    );
}

#[test]
fn threads_are_bounded_and_oversubscription_is_warned_in_every_subcommand() {
    let too_many = (8 * cores() + 1).to_string();
    for n in [too_many.as_str(), "100000000"] {
        let err = fails(runner(&["info", "--threads", n]));
        assert!(
            err.contains("--threads") && err.contains("per core"),
            "{err}"
        );
    }
    let over = (cores() + 1).to_string();
    let out = runner(&["info", "--threads", &over]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.starts_with("warning: --threads"),
        "{err}"
    );
    let out = runner(&[
        "score",
        "--threads",
        &over,
        "--ckpt",
        "/nonexistent",
        "--text",
        "x",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("warning: --threads"), "{err}");
    let out = runner(&["info", "--threads", "1"]);
    assert!(String::from_utf8_lossy(&out.stderr).is_empty());
}

#[test]
fn training_sizes_beyond_the_memory_are_refused_before_allocating() {
    let root = tempfile::tempdir().unwrap();
    let data = prepared_corpus(root.path());
    for (flag, value) in [("--batch", "100000000"), ("--d-model", "10000000")] {
        let err = fails(runner_with(
            &["train", "--preset", "tiny", "--steps", "1", flag, value],
            &[
                "--shards".into(),
                s(&data),
                "--out".into(),
                s(&root.path().join(flag)),
            ],
        ));
        assert!(err.contains("would take about"), "{flag}: {err}");
        assert!(err.contains("hint: use a smaller --batch"), "{flag}: {err}");
    }
}

#[test]
fn a_checkpoint_with_a_nan_weight_is_refused_naming_the_tensor() {
    let root = tempfile::tempdir().unwrap();
    let data = prepared_corpus(root.path());
    let (run, _) = train_tiny(root.path(), "run", "gpt", &data, 1, &[]);
    let ckpt = run.join("checkpoint");
    let path = ckpt.join("model.safetensors");
    // The first weight of transformer.h.0.mlp.c_fc.weight, found through the header.
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let at = header["transformer.h.0.mlp.c_fc.weight"]["data_offsets"][0]
        .as_u64()
        .unwrap() as usize
        + 8
        + n;
    let mut bytes = bytes;
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    for cmd in [
        &["score", "--text", "The king"][..],
        &["generate", "--max-tokens", "5"][..],
    ] {
        let err = fails(runner_with(cmd, &["--ckpt".into(), s(&ckpt)]));
        assert!(
            err.contains("`transformer.h.0.mlp.c_fc.weight` holds NaN"),
            "{err}"
        );
    }
}

#[test]
fn the_lstm_scores_long_text_in_chunks_with_the_factors_of_one_pass() {
    let root = tempfile::tempdir().unwrap();
    let data = prepared_corpus(root.path());
    let (run, _) = train_tiny(root.path(), "lstm", "lstm", &data, 5, &[]);
    let text = model::corpus::builtin_documents(11, 1, 2_600).join("");
    let out = ok(runner_with(
        &["score", "--json", "--text", &text],
        &["--ckpt".into(), s(&run)],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let n = text.len() + 1; // byte tokens and the final <eos>
    assert_eq!(v["text_tokens"], text.len());
    assert_eq!(v["carried_chunks"]["tokens"], 1024);
    assert_eq!(v["carried_chunks"]["chunks"], n.div_ceil(1024));
    // The same log p as one forward over the whole text.
    let mut lm = model::load_checkpoint(&run.join("checkpoint")).unwrap();
    let mut ids = vec![256u32];
    ids.extend(text.bytes().map(u32::from));
    ids.push(256);
    lm.forward(&ids[..n], &ids[1..], 1, n);
    let nats: f64 = lm.token_losses().iter().map(|&l| f64::from(l)).sum();
    let ln_p = v["ln_p"].as_f64().unwrap();
    assert!((ln_p + nats).abs() < 1e-4 * nats, "{ln_p} vs {}", -nats);
}

#[test]
fn smaller_rough_edges_get_clear_messages() {
    let root = tempfile::tempdir().unwrap();
    let data = prepared_corpus(root.path());
    let shards = ["--shards".to_string(), s(&data)];
    let train = |extra: &[&str], out: &str| {
        let mut args = vec!["train", "--steps", "2"];
        args.extend_from_slice(TINY);
        args.extend_from_slice(extra);
        let mut more = shards.to_vec();
        more.extend(["--out".into(), s(&root.path().join(out))]);
        runner_with(&args, &more)
    };

    // A count flag given -1 says what a count is, not "unexpected argument".
    let err = usage_error(runner(&["train", "--steps", "-1"]), "--steps");
    assert!(err.contains("at least 1"), "{err}");

    // loss.svg that cannot be written: the error has a hint.
    std::fs::create_dir_all(root.path().join("b/loss.svg/x")).unwrap();
    let err = fails(train(&[], "b"));
    assert!(
        err.contains("loss.svg") && err.contains("free space"),
        "{err}"
    );

    // meta.json saying the validation text has no bytes: bits/byte from the training split,
    // never "inf".
    let meta_path = data.join("meta.json");
    let original = std::fs::read_to_string(&meta_path).unwrap();
    let mut meta: serde_json::Value = serde_json::from_str(&original).unwrap();
    meta["val"]["text_bytes"] = 0.into();
    std::fs::write(&meta_path, meta.to_string()).unwrap();
    let out = ok(train(&[], "c"));
    assert!(!out.contains("inf") && !out.contains("NaN"), "{out}");
    std::fs::write(&meta_path, original).unwrap();

    // A folder named like a shard, and the prepare hint for an existing folder.
    std::fs::create_dir(data.join("train_999999.bin")).unwrap();
    let err = fails(train(&[], "d"));
    assert!(err.contains("is a folder, not a shard file"), "{err}");
    assert!(!err.contains("os error 19"), "{err}");
    assert!(err.contains("--overwrite"), "{err}");
}
