//! `runner train` end to end, through the built binary: both model kinds on prepared shards
//! and the built-in corpus, the run folder's files, bit-exact resume (after a finished part
//! and after Ctrl-C), thread-count independence, divergence, and every refused flag
//! combination or bad data with exit code 2 and a hint. Tiny models and a few hundred steps
//! at most, so the file runs in seconds. Leaves out: how well the default run learns (the
//! README reports a measured run).

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use model::TokenizerKind;
use model::data::{Meta, ShardWriter, SplitStats};

#[test]
fn both_models_train_and_write_a_complete_run_folder() {
    let root = tempfile::tempdir().unwrap();
    let data = prepared_corpus(root.path());
    for kind in ["gpt", "lstm"] {
        let (run, stdout) = train_tiny(
            root.path(),
            kind,
            kind,
            &data,
            40,
            &["--eval-every", "20", "--save-every", "25"],
        );
        for file in [
            "metrics.jsonl",
            "loss.svg",
            "checkpoint/config.json",
            "checkpoint/model.safetensors",
            "checkpoint/optimizer.safetensors",
            "checkpoint/state.json",
        ] {
            assert!(run.join(file).is_file(), "{kind}: {file} missing");
        }
        assert!(
            std::fs::read_to_string(run.join("loss.svg"))
                .unwrap()
                .contains("<svg")
        );
        let losses = train_losses(&run);
        assert_eq!(losses.len(), 40, "{kind}: one line per step");
        assert!(losses.iter().enumerate().all(|(i, l)| l.0 == i as u64 + 1));
        let val: Vec<u64> = val_losses(&run).iter().map(|v| v.0).collect();
        assert_eq!(
            val,
            [0, 20, 40],
            "{kind}: evaluations at the start, every 20, the end"
        );
        // It learns: the last losses are well below the first (the uniform guess, ln 257).
        let first = losses[0].1;
        let last = losses[35..].iter().map(|l| l.1).sum::<f64>() / 5.0;
        assert!(
            (first - 257f64.ln()).abs() < 0.3,
            "{kind}: first loss {first}"
        );
        assert!(last < first - 1.0, "{kind}: {first} -> {last}");
        let st = state(&run);
        assert_eq!(st["step"], 40);
        assert_eq!(st["optimizer"]["step"], 40);
        assert_eq!(st["model"], kind);
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(run.join("checkpoint/config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(config["tokenizer"], "byte");
        // The summary: validation figures, a sample, and how to use the checkpoint.
        for needle in [
            "validation:",
            "bits/byte",
            "a sample",
            "runner score --ckpt",
            "runner generate --ckpt",
        ] {
            assert!(
                stdout.contains(needle),
                "{kind}: no {needle:?} in\n{stdout}"
            );
        }
    }
}

#[test]
fn the_built_in_corpus_needs_no_data_and_reports_its_entropy_rate() {
    let root = tempfile::tempdir().unwrap();
    let run = root.path().join("run");
    let mut args = vec!["train", "--steps", "3", "--eval-every", "3"];
    args.extend_from_slice(TINY);
    let stdout = ok(runner_with(&args, &["--out".into(), s(&run)]));
    assert!(run.join("data/meta.json").is_file() && run.join("data/train_000000.bin").is_file());
    assert!(
        stdout.contains("the source's true entropy rate: 0.7486 bits/byte"),
        "{stdout}"
    );
    assert_eq!(state(&run)["shards"], serde_json::Value::Null);
}

#[test]
fn a_resumed_run_repeats_the_uninterrupted_losses_bit_for_bit() {
    let root = tempfile::tempdir().unwrap();
    let data = prepared_corpus(root.path());
    // A constant learning rate makes the schedule independent of the run's length, so a run
    // of 12 steps resumed to 24 must equal a run of 24.
    let flat = [
        "--lr",
        "2e-3",
        "--min-lr",
        "2e-3",
        "--warmup",
        "0",
        "--eval-every",
        "6",
    ];
    for kind in ["gpt", "lstm"] {
        let (straight, _) = train_tiny(root.path(), &format!("{kind}-24"), kind, &data, 24, &flat);
        let (split, _) = train_tiny(root.path(), &format!("{kind}-12"), kind, &data, 12, &flat);
        let stdout = ok(runner_with(
            &["train", "--resume", "--steps", "24"],
            &["--out".into(), s(&split)],
        ));
        assert!(stdout.contains("resuming"), "{stdout}");
        assert_eq!(
            train_losses(&split),
            train_losses(&straight),
            "{kind}: train losses"
        );
        assert_eq!(
            val_losses(&split),
            val_losses(&straight),
            "{kind}: val losses"
        );
        assert_eq!(
            std::fs::read(split.join("checkpoint/model.safetensors")).unwrap(),
            std::fs::read(straight.join("checkpoint/model.safetensors")).unwrap(),
            "{kind}: final weights"
        );
        // Finished: resuming again without more steps is refused.
        let err = fails(runner_with(
            &["train", "--resume"],
            &["--out".into(), s(&split)],
        ));
        assert!(err.contains("already at step 24"), "{err}");
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let root = tempfile::tempdir().unwrap();
    let data = prepared_corpus(root.path());
    let (one, _) = train_tiny(root.path(), "t1", "gpt", &data, 10, &["--threads", "1"]);
    let (two, _) = train_tiny(root.path(), "t2", "gpt", &data, 10, &["--threads", "2"]);
    assert_eq!(train_losses(&one), train_losses(&two));
    assert_eq!(val_losses(&one), val_losses(&two));
}

/// Ctrl-C mid-run saves the step it finished and exits 130; `--resume` then completes the
/// run with exactly the losses of a run never interrupted (same cosine schedule).
#[test]
fn sigint_saves_and_the_resumed_run_matches_the_uninterrupted_one() {
    let root = tempfile::tempdir().unwrap();
    let data = prepared_corpus(root.path());
    let steps = 300;
    let extra = ["--eval-every", "50", "--save-every", "1000"];
    let run = root.path().join("interrupted");
    let mut args: Vec<String> = ["train", "--model", "gpt"].map(String::from).to_vec();
    // The eval and save cadence is the run's: the resume below does not repeat it.
    args.extend(TINY.iter().map(|a| a.to_string()));
    args.extend(extra.iter().map(|a| a.to_string()));
    args.extend([
        "--shards".into(),
        s(&data),
        "--out".into(),
        s(&run),
        "--steps".into(),
        steps.to_string(),
    ]);
    let out = interrupted_after(&args, &run, 5);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{stdout}");
    assert!(stdout.contains("interrupted: saved step"), "{stdout}");
    let stopped = state(&run)["step"].as_u64().unwrap();
    assert!((5..steps).contains(&stopped), "stopped at {stopped}");
    assert_eq!(train_losses(&run).len() as u64, stopped);

    ok(runner_with(
        &["train", "--resume"],
        &["--out".into(), s(&run)],
    ));
    let (straight, _) = train_tiny(root.path(), "straight", "gpt", &data, steps, &extra);
    assert_eq!(train_losses(&run), train_losses(&straight));
    assert_eq!(val_losses(&run), val_losses(&straight));
}

/// `runner ARGS` training into `run`, sent Ctrl-C once it has logged `steps` steps.
fn interrupted_after(args: &[String], run: &Path, steps: usize) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while train_steps_logged(run) < steps {
        assert!(started.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    child.wait_with_output().unwrap()
}

fn train_steps_logged(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .map(|t| t.lines().filter(|l| l.contains("train_loss")).count())
        .unwrap_or(0)
}

/// A `--time` run interrupted after its length was planned, resumed with `--steps` equal to
/// that length, keeps its schedule (whose last update, one step before the length, runs at
/// --min-lr): nothing is re-stretched.
#[test]
fn an_interrupted_time_run_resumed_with_its_own_length_keeps_its_schedule() {
    let root = tempfile::tempdir().unwrap();
    let data = prepared_corpus(root.path());
    let run = root.path().join("timed");
    let mut args: Vec<String> = ["train", "--time", "5m", "--save-every", "1000"]
        .map(String::from)
        .to_vec();
    args.extend(TINY.iter().map(|a| a.to_string()));
    args.extend(["--shards".into(), s(&data), "--out".into(), s(&run)]);
    let out = interrupted_after(&args, &run, 15);
    assert_eq!(out.status.code(), Some(130));
    let st = state(&run);
    let target = st["target_steps"].as_u64().unwrap();
    assert_eq!(st["total"], target - 1);
    assert!(st["step"].as_u64().unwrap() < target);
    // Resumed with its own length (and a budget already spent, so it stops at once).
    let stdout = ok(runner_with(
        &["train", "--resume", "--time", "1s"],
        &[
            "--out".into(),
            s(&run),
            "--steps".into(),
            target.to_string(),
        ],
    ));
    assert!(!stdout.contains("now decays"), "{stdout}");
    let st = state(&run);
    assert_eq!(st["target_steps"], target);
    assert_eq!(st["total"], target - 1, "the schedule is the one planned");
}

#[test]
fn a_diverging_run_stops_with_exit_2_and_keeps_the_last_good_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let data = prepared_corpus(root.path());
    let run = root.path().join("nan");
    let mut args = vec![
        "train",
        "--steps",
        "50",
        "--save-every",
        "1",
        "--grad-clip",
        "0",
    ];
    args.extend_from_slice(&["--lr", "1e30", "--min-lr", "1e30", "--warmup", "0"]);
    args.extend_from_slice(TINY);
    let err = fails(runner_with(
        &args,
        &["--shards".into(), s(&data), "--out".into(), s(&run)],
    ));
    assert!(err.contains("training diverged"), "{err}");
    // Every saved checkpoint came before the bad step, with finite losses only.
    let st = state(&run);
    let saved = st["step"].as_u64().unwrap();
    assert!(saved >= 1 && st["train_loss"].as_f64().unwrap().is_finite());
    assert!(
        err.contains(&format!("last good checkpoint (step {saved})")),
        "{err}"
    );
}

#[test]
fn time_budget_sets_the_length_and_stops() {
    let root = tempfile::tempdir().unwrap();
    let data = prepared_corpus(root.path());
    let run = root.path().join("timed");
    let mut args = vec!["train", "--time", "2s", "--eval-every", "1000"];
    args.extend_from_slice(TINY);
    let started = Instant::now();
    let stdout = ok(runner_with(
        &args,
        &["--shards".into(), s(&data), "--out".into(), s(&run)],
    ));
    assert!(stdout.contains("steps fit at"), "{stdout}");
    let st = state(&run);
    // The schedule ends with the planned length: `total` is the index of its last update,
    // which runs at --min-lr.
    let target = st["target_steps"].as_u64().unwrap();
    assert_eq!(st["total"], target - 1, "the schedule ends with the budget");
    let step = st["step"].as_u64().unwrap();
    assert!(step >= 4);
    if step == target {
        let last = metrics(&run)
            .into_iter()
            .rfind(|v| v["lr"].is_number())
            .unwrap();
        assert_eq!(last["step"], step);
        assert_eq!(
            last["lr"].as_f64().unwrap() as f32,
            st["min_lr"].as_f64().unwrap() as f32
        );
    }
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn bad_flags_and_bad_data_fail_with_a_hint() {
    let root = tempfile::tempdir().unwrap();
    let data = prepared_corpus(root.path());
    let shards = ["--shards".to_string(), s(&data)];
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "--steps", "2"];
        args.extend_from_slice(TINY);
        args.extend_from_slice(extra);
        runner_with(&args, &shards)
    };
    let err = fails(train(&["--model", "lstm", "--d-model", "64"]));
    assert!(err.contains("--d-model"), "{err}");
    let err = fails(train(&["--model", "gpt", "--hidden", "64"]));
    assert!(err.contains("--hidden"), "{err}");
    let err = fails(train(&["--d-model", "30", "--heads", "4"]));
    assert!(err.contains("n_head"), "{err}");
    let err = fails(train(&["--lr", "0"]));
    assert!(err.contains("--lr"), "{err}");
    let err = fails(train(&["--lr", "1e-3", "--min-lr", "1e-2"]));
    assert!(err.contains("min-lr"), "{err}");
    let long = runner_with(
        &["train", "--seq-len", "100000", "--preset", "tiny"],
        &shards,
    );
    assert!(fails(long).contains("fewer than one window"));
    usage_error(train(&["--preset", "huge"]), "--preset");
    usage_error(train(&["--batch", "0"]), "--batch");
    usage_error(train(&["--time", "ten"]), "--time");
    usage_error(runner(&["train", "--resume"]), "--out");

    let lstm_gpt2 = runner_with(&["train", "--model", "lstm", "--preset", "gpt2"], &shards);
    assert!(fails(lstm_gpt2).contains("no LSTM preset"));

    let missing = root.path().join("no-such-folder");
    let err = fails(runner_with(&["train"], &["--shards".into(), s(&missing)]));
    assert!(err.contains("runner prepare"), "{err}");

    // A run folder is not overwritten, and a folder with no run cannot be resumed.
    let (run, _) = train_tiny(root.path(), "run", "gpt", &data, 2, &[]);
    let err = fails(train(&["--out", &s(&run)]));
    assert!(err.contains("--resume"), "{err}");
    let err = fails(runner_with(
        &["train", "--resume"],
        &["--out".into(), s(&missing)],
    ));
    assert!(err.contains("no resumable run"), "{err}");
    // Flags that define the run cannot change on resume; the same value is fine.
    let resume = |extra: &[&str]| {
        let mut args = vec!["train", "--resume"];
        args.extend_from_slice(extra);
        runner_with(&args, &["--out".into(), s(&run)])
    };
    let err = fails(resume(&["--steps", "4", "--batch", "8"]));
    assert!(
        err.contains("--batch differs") && err.contains("(4)"),
        "{err}"
    );
    let err = fails(resume(&["--steps", "4", "--model", "lstm"]));
    assert!(err.contains("--model differs"), "{err}");
    let err = fails(resume(&["--steps", "4", "--layers", "3"]));
    assert!(err.contains("size flags"), "{err}");
    ok(resume(&[
        "--steps", "4", "--batch", "4", "--preset", "tiny",
    ]));

    // Shards made with another tokenizer than the checkpoint's.
    let gpt2_data = root.path().join("gpt2-data");
    ok(runner_with(
        &["prepare", "--tokenizer", "gpt2"],
        &[
            "--input".into(),
            s(&root.path().join("text")),
            "--out".into(),
            s(&gpt2_data),
        ],
    ));
    let st_path = run.join("checkpoint/state.json");
    let mut st = state(&run);
    st["shards"] = serde_json::Value::String(s(&gpt2_data));
    std::fs::write(&st_path, st.to_string()).unwrap();
    let err = fails(resume(&["--steps", "6"]));
    assert!(
        err.contains("tokenized with gpt2") && err.contains("uses byte"),
        "{err}"
    );
}

#[test]
fn a_token_id_outside_the_vocabulary_names_the_shard() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let ids: Vec<u32> = (0..200).map(|i| if i == 150 { 300 } else { 65 }).collect();
    let mut w = ShardWriter::create(&dir.join("train_000000.bin")).unwrap();
    w.write(&ids).unwrap();
    w.finish().unwrap();
    let stats = SplitStats {
        documents: 1,
        text_bytes: 200,
        tokens: 200,
        shards: 1,
    };
    Meta::new(TokenizerKind::Byte, "test", stats, SplitStats::default())
        .write(&dir)
        .unwrap();
    let mut args = vec!["train", "--steps", "1"];
    args.extend_from_slice(TINY);
    let err = fails(runner_with(&args, &["--shards".into(), s(&dir)]));
    assert!(
        err.contains("train_000000.bin") && err.contains("300"),
        "{err}"
    );
}

#[test]
fn info_reports_the_thread_count_of_threads() {
    let out = ok(runner(&["info", "--threads", "3"]));
    assert!(out.contains("threads (rayon):    3"), "{out}");
}

#[cfg(not(feature = "mpi"))]
#[test]
fn a_build_without_mpi_refuses_to_run_as_one_of_several_ranks() {
    // What mpirun sets in each rank's environment; without MPI each would train alone.
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["train", "--preset", "tiny", "--steps", "1"])
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .current_dir(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    let err = fails(out);
    assert!(
        err.contains("one of 2 MPI ranks") && err.contains("--features mpi"),
        "{err}"
    );
}

#[test]
fn resume_with_more_steps_stretches_the_schedule_instead_of_running_at_the_floor() {
    let root = tempfile::tempdir().unwrap();
    let data = prepared_corpus(root.path());
    let (run, _) = train_tiny(root.path(), "run", "gpt", &data, 20, &["--warmup", "2"]);
    let stdout = ok(runner_with(
        &["train", "--resume", "--steps", "40"],
        &["--out".into(), s(&run)],
    ));
    assert!(
        stdout.contains("--steps 40: the learning rate now decays to")
            && stdout.contains("at step 40 (was step 20)"),
        "{stdout}"
    );
    // Steps 21..40 follow the 40-step cosine, as a 40-step run's would.
    let schedule = model::Schedule {
        lr: 3e-3,
        min_lr: 3e-4,
        warmup: 2,
        total: 40,
    };
    let lrs: Vec<(u64, f64)> = metrics(&run)
        .iter()
        .filter_map(|v| Some((v["step"].as_u64()?, v["lr"].as_f64()?)))
        .collect();
    assert_eq!(lrs.len(), 40);
    for &(step, lr) in &lrs[20..] {
        assert_eq!(lr as f32, schedule.at(step - 1), "step {step}");
    }
    assert!(
        lrs[20].1 > 1e-3,
        "step 21 is not at the floor: {}",
        lrs[20].1
    );
    assert_eq!(state(&run)["total"], 40);
}

#[test]
fn resume_finds_the_shards_from_any_folder_and_notices_replaced_ones() {
    let root = tempfile::tempdir().unwrap();
    prepared_corpus(root.path());
    let run = root.path().join("run");
    let train = |cwd: &Path, args: &[&str]| {
        let mut all = vec!["train"];
        all.extend_from_slice(args);
        Command::new(env!("CARGO_BIN_EXE_runner"))
            .args(&all)
            .current_dir(cwd)
            .output()
            .unwrap()
    };
    let mut first = TINY.to_vec();
    first.extend(["--shards", "data", "--out", "run", "--steps", "4"]);
    ok(train(root.path(), &first));
    let st = state(&run);
    assert!(
        Path::new(st["shards"].as_str().unwrap()).is_absolute(),
        "{st}"
    );
    assert_eq!(st["shards_identity"]["tokenizer"], "byte");

    // From another folder, naming the shards another way: the same run.
    let elsewhere = root.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let shards = format!("{}/./data/", s(root.path()));
    ok(train(
        &elsewhere,
        &[
            "--resume",
            "--out",
            &s(&run),
            "--steps",
            "6",
            "--shards",
            &shards,
        ],
    ));
    ok(train(
        root.path(),
        &[
            "--resume", "--out", "run", "--steps", "8", "--shards", "./data",
        ],
    ));
    assert_eq!(state(&run)["step"], 8);

    // The folder replaced by other text of the same tokenizer is noticed.
    std::fs::remove_dir_all(root.path().join("data")).unwrap();
    let text = root.path().join("other.txt");
    std::fs::write(
        &text,
        model::corpus::builtin_documents(99, 10, 3_000).concat(),
    )
    .unwrap();
    ok(runner_with(
        &["prepare", "--val-fraction", "0.2"],
        &[
            "--input".into(),
            s(&text),
            "--out".into(),
            s(&root.path().join("data")),
        ],
    ));
    let err = fails(train(
        root.path(),
        &["--resume", "--out", "run", "--steps", "10"],
    ));
    assert!(
        err.contains("are not the ones the run started with"),
        "{err}"
    );
}

/// `--precision` is saved in state.json and named in the banner; a resume keeps it unless
/// told otherwise, and says when it changes. The default is the fastest this build has.
#[test]
fn precision_is_saved_and_kept_on_resume_unless_told_otherwise() {
    let root = tempfile::tempdir().unwrap();
    let data = prepared_corpus(root.path());
    let fastest = model::Precision::fastest().name();
    let (default_run, stdout) = train_tiny(root.path(), "default", "gpt", &data, 2, &[]);
    assert!(stdout.contains(&format!("{fastest} products")), "{stdout}");
    assert_eq!(state(&default_run)["precision"], fastest);

    let (run, stdout) = train_tiny(
        root.path(),
        "fp32",
        "lstm",
        &data,
        2,
        &["--precision", "fp32"],
    );
    assert!(stdout.contains("fp32 products"), "{stdout}");
    assert_eq!(state(&run)["precision"], "fp32");
    let kept = ok(runner_with(
        &["train", "--resume", "--steps", "3"],
        &["--out".into(), s(&run)],
    ));
    assert!(kept.contains("fp32 products"), "{kept}");
    assert!(!kept.contains("precision:"), "{kept}");
    assert_eq!(state(&run)["precision"], "fp32");
    let switched = ok(runner_with(
        &["train", "--resume", "--steps", "4", "--precision", "bf16"],
        &["--out".into(), s(&run)],
    ));
    let now = model::Precision::Bf16.effective().name();
    assert_eq!(state(&run)["precision"], now);
    if now == "bf16" {
        assert!(switched.contains("precision: fp32 → bf16"), "{switched}");
    }
    let err = usage_error(
        runner_with(
            &["train", "--steps", "1", "--precision", "fp16"],
            &["--shards".into(), s(&data)],
        ),
        "--precision",
    );
    assert!(err.contains("fp16") && err.contains("bf16"), "{err}");
}
