//! `runner score` and `runner generate` end to end on tiny trained checkpoints of both
//! kinds: the chain-rule factors checked against the model's own decoder, the sliding window
//! past the context, the attention plot, every sampling rule (greedy = top-k 1 = a tiny
//! nucleus, a seed repeats), sliding generation, and the errors (missing or corrupt
//! checkpoint, tokenizer/vocabulary mismatch, empty text, over-long prompt, bad sampling
//! flags) with exit code 2 and a hint.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use model::{Decoder, Gpt, LanguageModel, Lstm, Precision, Tokenizer, TokenizerKind};

/// Tiny GPT (context 32) and LSTM checkpoints trained 30 steps on a prepared corpus.
fn trained(root: &Path) -> (PathBuf, PathBuf) {
    let data = prepared_corpus(root);
    let extra = ["--eval-every", "30"];
    let (gpt, _) = train_tiny(root, "gpt", "gpt", &data, 30, &extra);
    let (lstm, _) = train_tiny(root, "lstm", "lstm", &data, 30, &extra);
    (gpt, lstm)
}

fn score_json(ckpt: &Path, text: &str, precision: &str) -> serde_json::Value {
    let out = ok(runner_with(
        &["score", "--json", "--precision", precision, "--text", text],
        &["--ckpt".into(), s(ckpt)],
    ));
    serde_json::from_str(&out).unwrap()
}

/// −ln p of each next id of `ids` fed one by one to the model's decoder.
fn decoder_nats(dec: &mut dyn Decoder, ids: &[u32]) -> Vec<f64> {
    let mut out = Vec::new();
    for w in ids.windows(2) {
        let logits = dec.feed(w[0]).unwrap();
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
        let lse = max
            + logits
                .iter()
                .map(|&x| (x as f64 - max).exp())
                .sum::<f64>()
                .ln();
        out.push(lse - logits[w[1] as usize] as f64);
    }
    out
}

#[test]
fn score_is_the_chain_rule_over_tokens_and_the_final_eos() {
    let root = tempfile::tempdir().unwrap();
    let (gpt, lstm) = trained(root.path());
    let text = "The old king sees a river.";
    let byte = Tokenizer::new(TokenizerKind::Byte);
    let mut ids = vec![byte.eos_id()];
    ids.extend(byte.encode(text));
    ids.push(byte.eos_id());
    for ckpt in [&gpt, &lstm] {
        // fp32, to compare with the library's fp32 decoder below.
        let v = score_json(ckpt, text, "fp32");
        assert_eq!(v["precision"], "fp32");
        // The default is the fastest precision; bf16 products move the total by bf16 rounding.
        let fast = score_json(ckpt, text, Precision::fastest().name());
        assert_eq!(fast["precision"], Precision::fastest().name());
        let (a, b) = (
            v["log2_p"].as_f64().unwrap(),
            fast["log2_p"].as_f64().unwrap(),
        );
        assert!(
            (a - b).abs() <= 0.01 * a.abs(),
            "log2 p: fp32 {a} vs bf16 {b}"
        );
        let factors = v["factors"].as_array().unwrap();
        assert_eq!(factors.len(), text.len() + 1, "n tokens + <eos>");
        assert_eq!(factors.last().unwrap()["token"], "<eos>");
        assert_eq!(factors[0]["token"], "T");
        let bits: Vec<f64> = factors
            .iter()
            .map(|f| f["bits"].as_f64().unwrap())
            .collect();
        let total: f64 = bits.iter().sum();
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs().max(1.0);
        assert!(close(v["log2_p"].as_f64().unwrap(), -total));
        assert!(close(
            v["bits_per_byte"].as_f64().unwrap(),
            total / text.len() as f64
        ));
        let nats = total * std::f64::consts::LN_2;
        assert!(close(
            v["perplexity"].as_f64().unwrap(),
            (nats / bits.len() as f64).exp()
        ));
        for f in factors {
            let p = f["p"].as_f64().unwrap();
            assert!(p > 0.0 && p <= 1.0);
        }
        // The same factors from the model's own decoder: p(ids[i+1] | ids[..=i]), starting
        // from <eos>.
        let dir = ckpt.join("checkpoint");
        let want = if ckpt == &gpt {
            let m = Gpt::load(&dir).unwrap();
            decoder_nats(&mut *m.decoder(), &ids)
        } else {
            let m = Lstm::load(&dir).unwrap();
            decoder_nats(&mut *m.decoder(), &ids)
        };
        for (i, (got, want)) in bits.iter().zip(&want).enumerate() {
            let got = got * std::f64::consts::LN_2;
            assert!(
                (got - want).abs() < 1e-3,
                "factor {i}: {got} vs decoder {want}"
            );
        }
        let table = ok(runner_with(
            &["score", "--text", text],
            &["--ckpt".into(), s(ckpt)],
        ));
        for needle in [
            "\"<eos>\"",
            "log2 p(text)",
            "perplexity",
            "bits per byte",
            "27 factors",
        ] {
            assert!(table.contains(needle), "no {needle:?} in\n{table}");
        }
    }
}

#[test]
fn a_text_longer_than_the_context_is_scored_in_sliding_windows() {
    let root = tempfile::tempdir().unwrap();
    let (gpt, lstm) = trained(root.path());
    let long = "The old king sees a river. A small student finds the garden. My horse waits. ";
    assert!(long.len() > 32);
    let v = score_json(&gpt, long, "fp32");
    assert_eq!(v["factors"].as_array().unwrap().len(), long.len() + 1);
    let window = &v["sliding_window"];
    assert_eq!(
        (window["window"].as_u64(), window["stride"].as_u64()),
        (Some(32), Some(16))
    );
    // The first window is an ordinary forward: a prefix that fits scores the same factors.
    let prefix = score_json(&gpt, &long[..31], "fp32");
    assert_eq!(prefix["sliding_window"], serde_json::Value::Null);
    let bits = |v: &serde_json::Value, n: usize| -> Vec<f64> {
        v["factors"].as_array().unwrap()[..n]
            .iter()
            .map(|f| f["bits"].as_f64().unwrap())
            .collect()
    };
    assert_eq!(bits(&v, 31), bits(&prefix, 31));
    let table = ok(runner_with(
        &["score", "--text", long],
        &["--ckpt".into(), s(&gpt)],
    ));
    assert!(
        table.contains("sliding windows of 32 tokens advancing by 16"),
        "{table}"
    );
    // The LSTM has no context limit.
    assert_eq!(
        score_json(&lstm, long, "fp32")["sliding_window"],
        serde_json::Value::Null
    );
}

#[test]
fn attention_heatmap_for_the_transformer_only() {
    let root = tempfile::tempdir().unwrap();
    let (gpt, lstm) = trained(root.path());
    let svg = root.path().join("attn.svg");
    let score = |ckpt: &Path, extra: &[&str]| {
        let mut args = vec!["score", "--text", "The old king."];
        args.extend_from_slice(extra);
        runner_with(
            &args,
            &["--ckpt".into(), s(ckpt), "--plot-attention".into(), s(&svg)],
        )
    };
    let out = ok(score(&gpt, &["--layer", "0", "--head", "3"]));
    assert!(out.contains("attention heatmap written"), "{out}");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("<svg") && text.contains("layer 0, head 3"));
    assert!(fails(score(&lstm, &[])).contains("no attention"));
    assert!(fails(score(&gpt, &["--layer", "2"])).contains("outside the model"));
    let no_plot = runner_with(
        &["score", "--text", "x", "--head", "1"],
        &["--ckpt".into(), s(&gpt)],
    );
    assert!(fails(no_plot).contains("--plot-attention"));
}

/// (stdout, stderr) of a generation.
fn generate(ckpt: &Path, args: &[&str]) -> (String, String) {
    let mut all = vec!["generate", "--prompt", "The old "];
    if !args.contains(&"--max-tokens") {
        all.extend_from_slice(&["--max-tokens", "24"]);
    }
    all.extend_from_slice(args);
    let out = runner_with(&all, &["--ckpt".into(), s(ckpt)]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (ok(out), stderr)
}

#[test]
fn every_sampling_rule_generates_and_greedy_equals_its_limits() {
    let root = tempfile::tempdir().unwrap();
    let (gpt, lstm) = trained(root.path());
    for ckpt in [&gpt, &lstm] {
        let (greedy, stderr) = generate(ckpt, &["--greedy"]);
        assert!(greedy.starts_with("The old "), "{greedy}");
        assert!(
            stderr.contains("24 tokens in") && stderr.contains("tokens/s"),
            "{stderr}"
        );
        assert_eq!(
            generate(ckpt, &["--greedy", "--seed", "9"]).0,
            greedy,
            "no randomness"
        );
        // top-k 1 and a nucleus of one token are greedy decoding.
        assert_eq!(generate(ckpt, &["--top-k", "1"]).0, greedy);
        assert_eq!(generate(ckpt, &["--top-p", "0.000001"]).0, greedy);
        for rule in [
            &[][..],
            &["--temperature", "0.7"],
            &["--top-k", "5"],
            &["--top-p", "0.9"],
            &["--top-k", "20", "--top-p", "0.95", "--temperature", "1.2"],
        ] {
            let mut seeded = rule.to_vec();
            seeded.extend_from_slice(&["--seed", "5"]);
            let a = generate(ckpt, &seeded).0;
            assert_eq!(a, generate(ckpt, &seeded).0, "{rule:?}: a seed repeats");
            assert!(a.starts_with("The old "));
        }
        // A barely trained model's naive samples differ between seeds.
        let one = generate(ckpt, &["--seed", "1", "--max-tokens", "40"]).0;
        let two = generate(ckpt, &["--seed", "2", "--max-tokens", "40"]).0;
        assert_ne!(one, two);
        let (_, stderr) = generate(ckpt, &["--stop-at-eos", "--max-tokens", "5"]);
        assert!(stderr.contains("tokens in"), "{stderr}");
    }
    // Past the GPT's context of 32 the window slides.
    let (text, stderr) = generate(&gpt, &["--max-tokens", "80"]);
    assert!(stderr.contains("the window slid"), "{stderr}");
    assert!(
        stderr.contains("80 tokens in") || text.contains("<eos>"),
        "{stderr}"
    );
}

#[test]
fn bad_checkpoints_texts_and_flags_fail_with_a_hint() {
    let root = tempfile::tempdir().unwrap();
    let (gpt, _) = trained(root.path());
    let with_ckpt = |args: &[&str], ckpt: &Path| runner_with(args, &["--ckpt".into(), s(ckpt)]);

    let missing = root.path().join("nothing");
    assert!(fails(with_ckpt(&["score", "--text", "a"], &missing)).contains("runner train"));
    assert!(fails(with_ckpt(&["generate"], &missing)).contains("not a checkpoint"));
    assert!(fails(with_ckpt(&["score", "--text", ""], &gpt)).contains("empty"));
    let long_prompt = "x".repeat(40);
    let err = fails(with_ckpt(&["generate", "--prompt", &long_prompt], &gpt));
    assert!(
        err.contains("longer than the model's context of 32"),
        "{err}"
    );
    assert!(fails(with_ckpt(&["generate", "--top-p", "1.5"], &gpt)).contains("top-p"));
    assert!(fails(with_ckpt(&["generate", "--temperature", "0"], &gpt)).contains("--greedy"));
    assert!(fails(with_ckpt(&["generate", "--top-k", "0"], &gpt)).contains("top-k"));
    usage_error(
        with_ckpt(&["generate", "--greedy", "--top-k", "3"], &gpt),
        "--top-k",
    );
    usage_error(runner(&["score", "--text", "a"]), "--ckpt");

    // Without a `tokenizer` field, V = 257 needs --tokenizer, and it must fit V.
    let copy = root.path().join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(gpt.join("checkpoint").join(f), copy.join(f)).unwrap();
    }
    let config_path = copy.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config.as_object_mut().unwrap().remove("tokenizer");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let score = |extra: &[&str]| {
        let mut args = vec!["score", "--text", "The"];
        args.extend_from_slice(extra);
        with_ckpt(&args, &copy)
    };
    assert!(fails(score(&[])).contains("--tokenizer"));
    let err = fails(score(&["--tokenizer", "gpt2"]));
    assert!(err.contains("50257") && err.contains("257"), "{err}");
    ok(score(&["--tokenizer", "byte"]));
    // A tokenizer flag that contradicts the checkpoint's field.
    let err = fails(with_ckpt(
        &["score", "--text", "a", "--tokenizer", "gpt2"],
        &gpt,
    ));
    assert!(err.contains("disagrees"), "{err}");

    // Corrupt weights and config.
    std::fs::write(copy.join("model.safetensors"), b"garbage").unwrap();
    let err = fails(score(&["--tokenizer", "byte"]));
    assert!(err.contains("model.safetensors"), "{err}");
    std::fs::write(&config_path, "{ not json").unwrap();
    assert!(fails(score(&[])).contains("config.json"));
}
