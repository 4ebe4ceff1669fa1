//! Data-parallel `runner train` over MPI (`cargo test --release -p runner --features mpi
//! --test mpi`; needs OpenMPI's `mpirun`). Each test starts `mpirun -np 2` itself, as CI does
//! (`--allow-run-as-root --oversubscribe`): 2 ranks × 1 thread train what 1 process × 2
//! threads trains with the same global batch (losses printed side by side); a checkpoint from
//! 2 ranks resumes on 2 (bit-exactly) and on 1; ranks started differently refuse with one
//! line from rank 0 and write nothing; a rank killed mid-run takes the job down and leaves the
//! last checkpoint loadable; a `--time` run re-plans its length on every rank at the same step
//! (no hang). Leaves out: speed (the README's measured table).
#![cfg(feature = "mpi")]

mod common;

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// `mpirun -np 2 runner ARGS` (MPMD: each `:` in `args` starts another rank's command line
/// when `ranks` is 0; then the args give the ranks themselves).
fn mpirun(ranks: usize, args: &[String]) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--allow-run-as-root", "--oversubscribe"]);
    if ranks > 0 {
        cmd.args(["-np", &ranks.to_string(), env!("CARGO_BIN_EXE_runner")]);
    }
    cmd.args(args);
    cmd
}

/// The exit status of `job`, which must end within `seconds` (a hung job is killed: its
/// ranks' collective calls went out of step).
fn wait_for(job: &mut Child, seconds: u64) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = job.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > Duration::from_secs(seconds) {
            job.kill().unwrap();
            panic!("the job hangs");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

fn run(mut cmd: Command) -> Output {
    cmd.output()
        .expect("mpirun runs (apt-get install openmpi-bin)")
}

/// Tiny-run flags with a global batch of 8 (4 windows per rank on 2 ranks).
fn tiny(data: &Path, out: &Path, steps: u64) -> Vec<String> {
    tiny_batch(data, out, steps, 8)
}

fn tiny_batch(data: &Path, out: &Path, steps: u64, batch: usize) -> Vec<String> {
    let mut args = strings(&["train", "--preset", "tiny", "--seq-len", "32"]);
    args.extend(strings(&["--eval-batches", "2", "--eval-every", "5"]));
    args.extend(["--batch".into(), batch.to_string()]);
    args.extend([
        "--shards".into(),
        s(data),
        "--out".into(),
        s(out),
        "--steps".into(),
        steps.to_string(),
    ]);
    args
}

#[test]
fn two_ranks_train_what_one_process_trains_with_the_same_global_batch() {
    let root = tempfile::tempdir().unwrap();
    let data = prepared_corpus(root.path());
    for kind in ["gpt", "lstm"] {
        let one = root.path().join(format!("{kind}-one"));
        let two = root.path().join(format!("{kind}-two"));
        let mut args = tiny(&data, &one, 20);
        args.extend(strings(&["--model", kind, "--threads", "2"]));
        ok(runner(&args.iter().map(String::as_str).collect::<Vec<_>>()));
        let mut args = tiny(&data, &two, 20);
        args.extend(strings(&["--model", kind, "--threads", "1"]));
        let stdout = ok(run(mpirun(2, &args)));
        assert!(stdout.contains("2 ranks × 1 thread"), "{stdout}");
        // Rank 0 alone prints: one header, one summary.
        assert_eq!(stdout.matches("model:  ").count(), 1, "{stdout}");
        assert_eq!(stdout.matches("trained 20 steps").count(), 1, "{stdout}");

        let (a, b) = (train_losses(&one), train_losses(&two));
        assert_eq!(a.len(), 20);
        assert_eq!(b.len(), 20);
        println!("{kind}: step | 1 process × 2 threads | 2 ranks × 1 thread | relative");
        for (x, y) in a.iter().zip(&b) {
            let rel = ((x.1 - y.1) / x.1).abs();
            println!("{kind}: {:>4} | {:.7} | {:.7} | {rel:.1e}", x.0, x.1, y.1);
            assert!(rel < 1e-5, "{kind} step {}: {} vs {}", x.0, x.1, y.1);
        }
        for (x, y) in val_losses(&one).iter().zip(&val_losses(&two)) {
            assert_eq!(x.0, y.0);
            assert!(((x.1 - y.1) / x.1).abs() < 1e-5, "{kind} val {x:?} {y:?}");
        }
        let m = metrics(&two);
        let step = m.iter().find(|v| v["train_loss"].is_number()).unwrap();
        assert_eq!(step["ranks"], 2);
        assert!(step["allreduce_wait_s"].as_f64().unwrap() >= 0.0);
        assert_eq!(state(&two)["ranks"], 2);
        assert_eq!(state(&two)["batch"], 8);
    }
}

#[test]
fn a_checkpoint_of_two_ranks_resumes_on_two_bit_exactly_and_on_one() {
    let root = tempfile::tempdir().unwrap();
    let data = prepared_corpus(root.path());
    let whole = root.path().join("whole");
    ok(run(mpirun(2, &tiny(&data, &whole, 16))));
    let part = root.path().join("part");
    ok(run(mpirun(2, &tiny(&data, &part, 8))));
    let mut more = strings(&["train", "--resume", "--steps", "16", "--out"]);
    more.push(s(&part));
    let stdout = ok(run(mpirun(2, &more)));
    assert!(stdout.contains("resuming") && stdout.contains("at step 8 of 16"));
    let bits = |run: &Path| {
        train_losses(run)
            .iter()
            .map(|l| (l.0, l.1.to_bits()))
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(&part), bits(&whole), "2 ranks → 2 ranks is bit-exact");

    // The same checkpoint resumed by one process: the same model, up to summation order.
    let single = root.path().join("single");
    ok(run(mpirun(2, &tiny(&data, &single, 8))));
    let mut more = strings(&["train", "--resume", "--steps", "16", "--out"]);
    more.push(s(&single));
    ok(runner(&more.iter().map(String::as_str).collect::<Vec<_>>()));
    for (x, y) in train_losses(&single).iter().zip(&train_losses(&whole)) {
        assert!(((x.1 - y.1) / x.1).abs() < 1e-5, "{x:?} vs {y:?}");
    }
    assert_eq!(state(&single)["ranks"], 1);

    // A global batch that does not split over the ranks is refused, naming both.
    let bad = root.path().join("bad");
    let out = run(mpirun(2, &tiny_batch(&data, &bad, 4, 3)));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--batch 3 cannot be split evenly over 2 ranks"),
        "{err}"
    );
    assert!(!bad.exists(), "nothing written");
}

#[test]
fn ranks_started_differently_refuse_with_one_line_and_write_nothing() {
    let root = tempfile::tempdir().unwrap();
    let data = prepared_corpus(root.path());
    let out = root.path().join("run");
    let exe = env!("CARGO_BIN_EXE_runner").to_string();
    // Different flags: MPMD, one command line per rank.
    let rank = |seed: &str| {
        let mut a = vec!["-np".to_string(), "1".into(), exe.clone()];
        a.extend(tiny(&data, &out, 4));
        a.extend(strings(&["--seed", seed]));
        a
    };
    let mut args = rank("1");
    args.push(":".into());
    args.extend(rank("2"));
    let res = run(mpirun(0, &args));
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success());
    let ours: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(ours.len(), 1, "one line, from rank 0: {err}");
    assert!(
        ours[0].contains("`flags.seed` is 2 on rank 1 but 1 on rank 0")
            && ours[0].contains("hint:"),
        "{err}"
    );
    assert!(!out.exists(), "nothing written in --out");

    // The same flags, but one rank's shard folder is missing (another working directory).
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    std::fs::create_dir_all(&b).unwrap();
    copy_dir(&data, &a.join("data"));
    let rank = |wdir: &Path| {
        let mut r = vec![
            "-np".to_string(),
            "1".into(),
            "-wdir".into(),
            s(wdir),
            exe.clone(),
        ];
        r.extend(tiny(Path::new("data"), &out, 4));
        r
    };
    let mut args = rank(&a);
    args.push(":".into());
    args.extend(rank(&b));
    let res = run(mpirun(0, &args));
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success());
    let ours: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(ours.len(), 1, "one line, from rank 0: {err}");
    assert!(
        ours[0].contains("the shards differ")
            && ours[0].contains("`data.error`")
            && ours[0].contains("on rank 1"),
        "{err}"
    );
    assert!(!out.exists(), "nothing written in --out");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

#[test]
fn a_rank_that_dies_takes_the_job_down_and_the_last_checkpoint_stays() {
    let root = tempfile::tempdir().unwrap();
    let data = prepared_corpus(root.path());
    let out = root.path().join("run");
    let mut args = tiny(&data, &out, 100_000);
    args.extend(strings(&["--save-every", "5"]));
    let mut job = mpirun(2, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !out.join("checkpoint/state.json").exists() {
        assert!(started.elapsed() < Duration::from_secs(60), "no checkpoint");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The ranks are mpirun's children; kill the one that is not rank 0's... either will do.
    let children = Command::new("pgrep")
        .args(["-P", &job.id().to_string()])
        .output()
        .unwrap();
    let pids = String::from_utf8(children.stdout).unwrap();
    let victim = pids.lines().last().expect("mpirun has rank processes");
    assert!(
        Command::new("kill")
            .args(["-KILL", victim])
            .status()
            .unwrap()
            .success()
    );
    let status = wait_for(&mut job, 60);
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(job.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!err.is_empty(), "mpirun says why it stopped");
    // The checkpoint loads and the run resumes (in one process) from it.
    let step = state(&out)["step"].as_u64().unwrap();
    assert!(step > 0 && step.is_multiple_of(5));
    let mut more = strings(&["train", "--resume", "--out"]);
    more.extend([s(&out), "--steps".into(), (step + 2).to_string()]);
    ok(runner(&more.iter().map(String::as_str).collect::<Vec<_>>()));
}

/// A `--time` run re-plans its length every 2% of the budget from rank 0's clock: every rank
/// takes the new length at the same step (one broadcast a step carries it with the stop
/// decision), so the job neither hangs nor has ranks disagree on where the run ends.
#[test]
fn a_time_run_on_two_ranks_replans_in_lock_step() {
    let root = tempfile::tempdir().unwrap();
    let data = prepared_corpus(root.path());
    let out = root.path().join("run");
    let mut args = strings(&[
        "train",
        "--preset",
        "tiny",
        "--seq-len",
        "32",
        "--batch",
        "8",
    ]);
    args.extend(strings(&[
        "--eval-batches",
        "2",
        "--time",
        "5s",
        "--warmup",
        "5",
    ]));
    args.extend(["--shards".into(), s(&data), "--out".into(), s(&out)]);
    let mut job = mpirun(2, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for(&mut job, 120);
    let output = job.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.matches("steps fit at").count(), 1, "{stdout}");
    let plans = metrics(&out)
        .iter()
        .filter(|v| v["planned_steps"].is_number())
        .count();
    assert!(plans >= 2, "re-planned: {plans} plans\n{stdout}");
}
