//! `runner parallelism` end to end, through the built binary, on a sweep small enough for a
//! test: every file it promises under `--out`, the JSON's runs and critical paths, `--json`
//! on stdout, and bad flags failing with exit code 2 and a hint. Leaves out: the timings
//! themselves (machine-dependent; the README has them).

use std::process::{Command, Output};

fn runner(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(args)
        .output()
        .expect("runner runs")
}

/// A sweep of three shapes, one timed step each (in each of the default 2 rounds).
const TINY: [&str; 9] = [
    "parallelism",
    "--seq-lens",
    "8,16",
    "--batch-tokens",
    "32",
    "--b1-seq-lens",
    "16",
    "--steps",
    "1",
];

#[test]
fn writes_the_table_the_json_and_the_chart() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep");
    let mut args = TINY.to_vec();
    args.extend(["--threads", "2,1", "--out", out.to_str().unwrap()]);
    let o = runner(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8(o.stdout).unwrap();
    let md = std::fs::read_to_string(out.join("parallelism.md")).unwrap();
    assert!(
        stdout.starts_with(&md),
        "stdout is the report, then where it went"
    );
    for heading in [
        "## Tokens per second",
        "## Speedup over 1 thread",
        "## Critical path of the backward pass",
        "## What this shows",
    ] {
        assert!(md.contains(heading), "{heading} missing:\n{md}");
    }
    assert!(
        md.contains("| 4 | 8 | 2 |") && md.contains("| 1 | 16 | 1 |"),
        "{md}"
    );
    assert!(
        md.contains("Command: `runner parallelism --seq-lens 8,16"),
        "{md}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("parallelism.json")).unwrap())
            .unwrap();
    assert_eq!(json["threads"], serde_json::json!([1, 2]));
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(
        runs.len(),
        3 * 2 * 2,
        "3 shapes × 2 thread counts × 2 models"
    );
    let launches = |model: &str, t: u64| {
        runs.iter()
            .find(|r| r["model"] == model && r["t"] == t)
            .unwrap()["backward_launches"]
            .as_u64()
            .unwrap()
    };
    // The LSTM's critical path grows by L = 3 per position, the transformer's not at all.
    assert_eq!(launches("lstm", 16) - launches("lstm", 8), 3 * 8);
    assert_eq!(launches("gpt", 16), launches("gpt", 8));
    for r in runs {
        assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(
            r["step_seconds"].as_array().unwrap().len(),
            2,
            "1 step × 2 rounds"
        );
    }

    let svg = std::fs::read_to_string(out.join("parallelism.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("LSTM") && svg.contains("2 threads"),
        "{svg}"
    );
}

#[test]
fn json_flag_prints_the_json() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = TINY.to_vec();
    args.extend([
        "--threads",
        "1",
        "--json",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    let o = runner(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["runs"].as_array().unwrap().len(), 3 * 2);
}

#[test]
fn the_projection_adds_its_section_json_and_chart() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep");
    let o = runner(&[
        "parallelism",
        "--seq-lens",
        "--b1-seq-lens",
        "16",
        "--shapes",
        "2x16",
        "--steps",
        "1",
        "--rounds",
        "1",
        "--threads",
        "1,2",
        "--project",
        "4,1,16,256",
        "--pairs",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = std::fs::read_to_string(out.join("parallelism.md")).unwrap();
    for part in [
        "## Simulated on more cores (a work-span simulation, checked on 2 threads)",
        "| LSTM | 2 | 16 | whole step | 100% |",
        "| 2 | 16 | 256 |",
        "### GEMMs forced into 3 and 5 tasks, on 2 threads",
        "| 3 | 576×512×1024 |",
        "### Tasks per launch: GPT B=2 T=16",
        "### Where the transformer overtakes the LSTM",
        "| 1 | 16 | ",
    ] {
        assert!(md.contains(part), "{part:?} missing:\n{md}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("parallelism.json")).unwrap())
            .unwrap();
    let p = &v["projection"];
    assert_eq!(p["cores"], serde_json::json!([1, 4, 16, 256]));
    // Both models at both shapes, each with its whole-step check first.
    let validation = p["validation"].as_array().unwrap();
    assert_eq!(validation.len(), 4);
    for case in validation {
        assert_eq!(case["checks"][0]["what"], "whole step");
    }
    assert_eq!(p["forced"].as_array().unwrap().len(), 2);
    let shapes = p["shapes"].as_array().unwrap();
    assert_eq!(shapes.len(), 2);
    for s in shapes {
        assert_eq!(s["gpt_tokens_per_s"].as_array().unwrap().len(), 4);
        assert_eq!(s["sensitivity"].as_array().unwrap().len(), 6);
    }
    assert!(p["costs_here"]["barrier_2_s"].as_f64().unwrap() >= 0.0);
    assert!(
        p["costs_here"]["bandwidth_1_thread_bytes_per_s"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let svg = std::fs::read_to_string(out.join("projection.svg")).unwrap();
    assert!(svg.contains("Simulated, B = 2") && svg.contains("cores P"));
}

#[test]
fn bad_flags_fail_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for (args, what) in [
        (vec!["--seq-lens", "100"], "does not divide"),
        (vec!["--batch-tokens", "0"], "does not divide"),
        (vec!["--steps", "0"], "at least 1"),
        (vec!["--rounds", "0"], "at least 1"),
        (vec!["--seq-lens", "--b1-seq-lens"], "nothing to measure"),
        (vec!["--project", "0,4"], "needs core counts of at least 1"),
        (vec!["--shapes", "16by8"], "is not B×T"),
    ] {
        let mut all = vec!["parallelism", "--out", d];
        all.extend(args);
        let o = runner(&all);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{all:?}: {err}");
        assert!(
            err.contains(what) && err.contains("hint:"),
            "{all:?}: {err}"
        );
    }
}
