//! The transformer proven correct: against PyTorch (golden fixtures made by
//! `tests/fixtures/make_fixtures.py`), against finite differences, against itself (the KV-cache
//! decoder vs the full forward; 1 vs 2 threads), by learning (overfitting one batch), and
//! through checkpoints (round trip, Hugging Face variants, clear errors).
//!
//! Leaves out: timing (see `benches/benches/train_step.rs`), resume-from-checkpoint
//! determinism (the shared training tests own it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kernels::optim::{AdamW, adamw_step};
use kernels::testutil::{TestRng, assert_close};
use model::checkpoint::{CONFIG_FILE, CheckpointError, MODEL_FILE, read_json, write_json};
use model::{Gpt, GptConfig, InputError, LanguageModel};
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Every tensor of a safetensors file as f32 (int32 tensors converted), by name.
fn read_tensors(path: &Path) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let data = view
                .data()
                .chunks_exact(4)
                .map(|b| {
                    let b = b.try_into().unwrap();
                    match view.dtype() {
                        Dtype::F32 => f32::from_le_bytes(b),
                        Dtype::I32 => i32::from_le_bytes(b) as f32,
                        other => panic!("{name}: unexpected dtype {other:?}"),
                    }
                })
                .collect();
            (name, (view.shape().to_vec(), data))
        })
        .collect()
}

fn max_abs(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, &v| m.max(v.abs()))
}

/// Elementwise `|got − want| ≤ rtol·(|want| + max|want|·0.1)`: relative to each element, with
/// a floor at a tenth of the tensor's scale so that entries near zero are not held to a
/// tolerance finer than f32 summation can give.
#[track_caller]
fn assert_rel(got: &[f32], want: &[f32], rtol: f32, what: &str) {
    assert_close(got, want, rtol, rtol * 0.1 * max_abs(want), what);
}

// ---------------------------------------------------------------- golden tests against PyTorch

/// Loads a fixture's checkpoint, runs forward and backward on its tokens, and compares with
/// PyTorch: logits and loss within 1e-4 relative, gradients within 1e-3.
fn golden(name: &str) {
    let dir = fixture(name);
    let mut model = Gpt::load(&dir).unwrap();
    let g = read_tensors(&dir.join("golden.safetensors"));
    let (shape, inputs) = &g["inputs"];
    let (b, t) = (shape[0], shape[1]);
    let tokens = |x: &[f32]| x.iter().map(|&v| v as u32).collect::<Vec<_>>();
    let (inputs, targets) = (tokens(inputs), tokens(&g["targets"].1));
    let v = model.vocab_size();

    model.zero_grad();
    let loss = model.forward(&inputs, &targets, b, t);
    let (lshape, want_logits) = &g["logits"];
    if lshape.len() == 3 {
        assert_rel(model.logits(), want_logits, 1e-4, "logits");
    } else {
        // Large vocabulary: the fixture keeps the last position of each row.
        let last: Vec<f32> = (0..b)
            .flat_map(|bi| model.logits()[((bi + 1) * t - 1) * v..][..v].to_vec())
            .collect();
        assert_rel(&last, want_logits, 1e-4, "logits[:, -1]");
    }
    assert_close(&[loss], &g["loss"].1, 1e-4, 0.0, "loss");

    model.backward();
    let mut checked = 0;
    for spec in model.layout().tensors() {
        if let Some((_, want)) = g.get(&format!("grad.{}", spec.name)) {
            assert_rel(&model.grads()[spec.range()], want, 1e-3, &spec.name);
            checked += 1;
        }
    }
    let expected = model.layout().tensors().len() - usize::from(lshape.len() == 2);
    assert_eq!(
        checked, expected,
        "every gradient the fixture holds was compared"
    );
}

#[test]
fn matches_pytorch_on_the_byte_vocabulary() {
    golden("gpt2_v257");
}

#[test]
fn matches_pytorch_on_the_gpt2_vocabulary() {
    golden("gpt2_v50257");
}

// ---------------------------------------------------------------- finite differences

/// A tiny model with weights far from init (LayerNorm gains ≠ 1, biases ≠ 0), so that every
/// path of the backward carries signal.
fn perturbed_tiny(seed: u64) -> Gpt {
    let cfg = GptConfig {
        n_layer: 2,
        n_embd: 16,
        n_head: 2,
        n_positions: 8,
        ..GptConfig::preset("tiny").unwrap()
    };
    let mut model = Gpt::new(cfg, seed).unwrap();
    let mut rng = TestRng::new(seed);
    let layout = model.layout().clone();
    for spec in layout.tensors() {
        let gain = spec.name.contains(".ln_") && spec.name.ends_with(".weight");
        for p in &mut model.params_mut()[spec.range()] {
            *p = if gain { 1.0 } else { 0.0 } + 0.3 * rng.uniform();
        }
    }
    model
}

fn random_tokens(rng: &mut TestRng, n: usize, v: usize) -> Vec<u32> {
    (0..n).map(|_| rng.below(v) as u32).collect()
}

/// Loss summed in f64 over the per-token losses (less rounding than the f32 mean).
fn loss_f64(model: &mut Gpt, inputs: &[u32], targets: &[u32], b: usize, t: usize) -> f64 {
    model.forward(inputs, targets, b, t);
    let sum: f64 = model.token_losses().iter().map(|&x| x as f64).sum();
    sum / (b * t) as f64
}

/// Central differences on the largest-gradient coordinate and two random ones of every
/// tensor. The model is f32, so the step is large (1e-2) against rounding noise; the
/// O(eps²) truncation error is then what the 2 % tolerance absorbs.
#[test]
fn gradients_match_finite_differences_for_every_tensor() {
    let (b, t) = (2, 8);
    let mut model = perturbed_tiny(3);
    let mut rng = TestRng::new(11);
    let v = model.vocab_size();
    let inputs = random_tokens(&mut rng, b * t, v);
    let targets = random_tokens(&mut rng, b * t, v);
    model.zero_grad();
    model.forward(&inputs, &targets, b, t);
    model.backward();
    let grads = model.grads().to_vec();
    let eps = 1e-2f32;
    let layout = model.layout().clone();
    let mut worst = (0.0f64, String::new());
    for spec in layout.tensors() {
        let r = spec.range();
        let g = &grads[r.clone()];
        let scale = max_abs(g) as f64;
        let argmax = (0..g.len())
            .max_by(|&i, &j| g[i].abs().total_cmp(&g[j].abs()))
            .unwrap();
        for i in [argmax, rng.below(g.len()), rng.below(g.len())] {
            let k = r.start + i;
            let p0 = model.params()[k];
            model.params_mut()[k] = p0 + eps;
            let up = loss_f64(&mut model, &inputs, &targets, b, t);
            model.params_mut()[k] = p0 - eps;
            let down = loss_f64(&mut model, &inputs, &targets, b, t);
            model.params_mut()[k] = p0;
            let fd = (up - down) / (2.0 * eps as f64);
            let err = (fd - g[i] as f64).abs() / (g[i].abs() as f64 + 0.05 * scale + 1e-6);
            if err > worst.0 {
                worst = (
                    err,
                    format!("{}[{i}]: backward {} vs fd {fd}", spec.name, g[i]),
                );
            }
            assert!(
                err < 2e-2,
                "{}[{i}]: backward {} vs finite difference {fd}",
                spec.name,
                g[i]
            );
        }
    }
    println!("worst relative error {:.2e} at {}", worst.0, worst.1);
}

// ---------------------------------------------------------------- decoder

#[test]
fn decoder_logits_equal_the_full_forward_position_by_position() {
    let mut model = perturbed_tiny(5);
    let t = model.max_seq_len().unwrap();
    let v = model.vocab_size();
    let tokens = random_tokens(&mut TestRng::new(2), t, v);
    model.forward(&tokens, &tokens, 1, t);
    let full = model.logits().to_vec();
    let mut dec = model.decoder();
    for round in 0..2 {
        for (pos, &tok) in tokens.iter().enumerate() {
            assert_eq!(dec.position(), pos);
            let step = dec.feed(tok).unwrap();
            assert_rel(
                step,
                &full[pos * v..][..v],
                1e-4,
                &format!("round {round} position {pos}"),
            );
        }
        assert_eq!(dec.capacity(), Some(t));
        dec.reset();
    }
}

#[test]
fn activations_are_allocated_once_for_the_largest_batch() {
    let mut model = perturbed_tiny(6);
    let tokens = random_tokens(&mut TestRng::new(3), 16, 257);
    model.forward(&tokens, &tokens, 2, 8);
    let bytes = model.activation_bytes();
    assert!(bytes > 0);
    let small = model.forward(&tokens[..4], &tokens[..4], 1, 4);
    model.forward(&tokens, &tokens, 2, 8);
    assert_eq!(
        model.activation_bytes(),
        bytes,
        "a smaller B·T reuses the buffers"
    );
    // The smaller batch's loss did not depend on what the larger one left in the buffers.
    let mut fresh = perturbed_tiny(6);
    assert_eq!(
        small.to_bits(),
        fresh.forward(&tokens[..4], &tokens[..4], 1, 4).to_bits()
    );
}

#[test]
fn decoder_refuses_to_overflow_its_context_with_an_error() {
    let model = perturbed_tiny(5);
    let mut dec = model.decoder();
    for _ in 0..8 {
        dec.feed(1).unwrap();
    }
    let err = dec.feed(1).unwrap_err();
    assert_eq!(
        err,
        InputError::ContextFull {
            position: 8,
            tokens: 1,
            capacity: 8
        }
    );
    assert_eq!(dec.position(), 8, "the state is unchanged");
    dec.reset();
    assert!(matches!(
        dec.prefill(&[1; 9]),
        Err(InputError::ContextFull { tokens: 9, .. })
    ));
    assert!(matches!(
        dec.feed(257),
        Err(InputError::TokenOutOfRange { token: 257, .. })
    ));
    assert!(matches!(
        dec.prefill(&[1, 2, 300]),
        Err(InputError::TokenOutOfRange { .. })
    ));
    assert_eq!(dec.prefill(&[]).unwrap_err(), InputError::Empty);
    assert_eq!(dec.position(), 0, "nothing fed by refused calls");
}

#[test]
fn prefill_gives_the_logits_of_feeding_token_by_token() {
    let model = perturbed_tiny(7);
    let t = model.max_seq_len().unwrap();
    let v = model.vocab_size();
    let tokens = random_tokens(&mut TestRng::new(4), t, v);
    for n in [2, 5, t] {
        let mut one = model.decoder();
        let mut stepwise = Vec::new();
        for &tok in &tokens[..n] {
            stepwise = one.feed(tok).unwrap().to_vec();
        }
        let mut dec = model.decoder();
        let prefilled = dec.prefill(&tokens[..n]).unwrap().to_vec();
        assert_eq!(dec.position(), n);
        assert_rel(&prefilled, &stepwise, 1e-5, &format!("prefill of {n}"));
        // The cache it filled serves the next token as feeding would have.
        if n < t {
            let next = dec.feed(tokens[n]).unwrap().to_vec();
            let want = one.feed(tokens[n]).unwrap().to_vec();
            assert_rel(
                &next,
                &want,
                1e-5,
                &format!("the token after a prefill of {n}"),
            );
        }
    }
}

#[test]
fn prefill_in_mixed_precision_matches_feeding_in_mixed_precision() {
    let mut model = perturbed_tiny(8);
    model.set_precision(model::Precision::Bf16);
    let v = model.vocab_size();
    let tokens = random_tokens(&mut TestRng::new(5), 6, v);
    let mut one = model.decoder();
    let mut stepwise = Vec::new();
    for &tok in &tokens {
        stepwise = one.feed(tok).unwrap().to_vec();
    }
    let prefilled = model.decoder().prefill(&tokens).unwrap().to_vec();
    // The same bf16-rounded operands; only the products' summation order may differ.
    assert_rel(&prefilled, &stepwise, 1e-3, "bf16 prefill");
}

#[test]
fn try_forward_refuses_bad_batches_instead_of_panicking() {
    let mut model = perturbed_tiny(5);
    let ok = [1u32; 8];
    assert!(model.try_forward(&ok, &ok, 1, 8).is_ok());
    assert_eq!(
        model.try_forward(&[], &[], 0, 8).unwrap_err(),
        InputError::Empty
    );
    assert!(matches!(
        model.try_forward(&[1; 9], &[1; 9], 1, 9),
        Err(InputError::WindowTooLong { t: 9, capacity: 8 })
    ));
    assert!(matches!(
        model.try_forward(&ok, &[1; 7], 1, 8),
        Err(InputError::WrongLength {
            what: "targets",
            ..
        })
    ));
    let mut bad = ok;
    bad[3] = 257;
    assert!(matches!(
        model.try_forward(&ok, &bad, 1, 8),
        Err(InputError::TokenOutOfRange { token: 257, .. })
    ));
}

// ---------------------------------------------------------------- training

/// AdamW steps on one batch; returns the loss before each step.
fn train(
    model: &mut Gpt,
    inputs: &[u32],
    targets: &[u32],
    b: usize,
    t: usize,
    steps: u64,
    lr: f32,
) -> Vec<f32> {
    let n = model.params().len();
    let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
    let cfg = AdamW {
        lr,
        weight_decay: 0.0,
        ..AdamW::default()
    };
    (1..=steps)
        .map(|step| {
            let loss = model.forward(inputs, targets, b, t);
            model.zero_grad();
            model.backward();
            let (params, grads) = model.params_and_grads();
            adamw_step(params, &mut m, &mut v, grads, &cfg, step);
            loss
        })
        .collect()
}

#[test]
fn overfits_a_single_batch() {
    let (b, t) = (4, 32);
    let mut model = Gpt::new(GptConfig::preset("tiny").unwrap(), 1).unwrap();
    let mut rng = TestRng::new(9);
    let tokens = random_tokens(&mut rng, b * (t + 1), 257);
    let (inputs, targets): (Vec<u32>, Vec<u32>) = tokens
        .chunks_exact(t + 1)
        .flat_map(|row| row[..t].iter().copied().zip(row[1..].iter().copied()))
        .unzip();
    let losses = train(&mut model, &inputs, &targets, b, t, 300, 1e-2);
    let last = model.forward(&inputs, &targets, b, t);
    println!("loss {:.3} -> {:.4}", losses[0], last);
    assert!(
        (losses[0] - (257f32).ln()).abs() < 0.1,
        "starts near ln V: {}",
        losses[0]
    );
    assert!(
        last < 0.05,
        "after {} steps the loss is {last}",
        losses.len()
    );
}

#[test]
fn training_is_bitwise_identical_on_1_and_2_threads() {
    let (b, t) = (2, 16);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut model = Gpt::new(GptConfig::preset("tiny").unwrap(), 7).unwrap();
            let tokens = random_tokens(&mut TestRng::new(4), 2 * b * t, 257);
            let losses = train(
                &mut model,
                &tokens[..b * t],
                &tokens[b * t..],
                b,
                t,
                5,
                1e-3,
            );
            (losses, model.params().to_vec())
        })
    };
    let (one, two) = (run(1), run(2));
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&one.0), bits(&two.0), "losses");
    assert!(
        bits(&one.1) == bits(&two.1),
        "parameters differ after training"
    );
}

// ---------------------------------------------------------------- checkpoints

#[test]
fn checkpoints_round_trip_exactly() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("ckpt");
    let mut model = perturbed_tiny(8);
    model.save(&dir).unwrap();
    let mut back = Gpt::load(&dir).unwrap();
    assert_eq!(back.config(), model.config());
    assert!(back.params() == model.params());
    let tokens = random_tokens(&mut TestRng::new(1), 8, 257);
    let a = model.forward(&tokens, &tokens, 1, 8);
    assert_eq!(a.to_bits(), back.forward(&tokens, &tokens, 1, 8).to_bits());
    // Saving again replaces the checkpoint.
    back.params_mut()[0] += 1.0;
    back.save(&dir).unwrap();
    assert_eq!(
        Gpt::load(&dir).unwrap().params()[0],
        model.params()[0] + 1.0
    );
}

/// Writes `tensors` (name, shape, data) as a safetensors file.
fn write_tensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), bytemuck::cast_slice(d)).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// The tensors of a model as (name, shape, data).
fn tensors_of(model: &Gpt) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let p = model.params();
    model
        .layout()
        .tensors()
        .iter()
        .map(|s| (s.name.clone(), s.shape.clone(), p[s.range()].to_vec()))
        .collect()
}

#[test]
fn loads_hugging_face_variants_bare_names_mask_buffers_and_tied_head() {
    let root = tempfile::tempdir().unwrap();
    let model = perturbed_tiny(4);
    let c = model.config().n_embd;
    let t = model.config().n_positions;
    let mut tensors: Vec<_> = tensors_of(&model)
        .into_iter()
        .map(|(n, s, d)| (n.strip_prefix("transformer.").unwrap().to_string(), s, d))
        .collect();
    for l in 0..model.config().n_layer {
        tensors.push((
            format!("h.{l}.attn.bias"),
            vec![1, 1, t, t],
            vec![1.0; t * t],
        ));
        tensors.push((format!("h.{l}.attn.masked_bias"), vec![], vec![-1e4]));
    }
    let wte = tensors[0].2.clone();
    tensors.push(("lm_head.weight".into(), vec![257, c], wte));
    write_tensors(&root.path().join(MODEL_FILE), &tensors);
    let mut config = model.config().to_json();
    config.as_object_mut().unwrap().remove("tokenizer");
    write_json(&root.path().join(CONFIG_FILE), &config).unwrap();
    let back = Gpt::load(root.path()).unwrap();
    assert!(back.params() == model.params());
}

#[test]
fn loading_names_what_is_wrong() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let model = perturbed_tiny(4);
    let good = tensors_of(&model);
    let config = model.config().to_json();
    let err_with = |tensors: &[(String, Vec<usize>, Vec<f32>)], config: &serde_json::Value| {
        write_tensors(&dir.join(MODEL_FILE), tensors);
        write_json(&dir.join(CONFIG_FILE), config).unwrap();
        match Gpt::load(dir) {
            Ok(_) => panic!("loaded a broken checkpoint"),
            Err(e) => e,
        }
    };

    let missing: Vec<_> = good
        .iter()
        .filter(|t| !t.0.ends_with("h.1.ln_2.bias"))
        .cloned()
        .collect();
    let e = err_with(&missing, &config);
    assert!(
        matches!(&e, CheckpointError::MissingTensor { name, .. } if name == "transformer.h.1.ln_2.bias"),
        "{e}"
    );

    let mut wider = config.clone();
    wider["n_embd"] = 32.into();
    let e = err_with(&good, &wider);
    // Which mismatching tensor is reported first depends on the file's order; each names both shapes.
    assert!(matches!(&e, CheckpointError::WrongShape { .. }), "{e}");
    assert!(e.to_string().contains("the config implies"), "{e}");

    let mut extra = good.clone();
    extra.push((
        "transformer.h.2.ln_1.weight".into(),
        vec![16],
        vec![1.0; 16],
    ));
    let e = err_with(&extra, &config);
    assert!(
        matches!(&e, CheckpointError::UnexpectedTensor { .. }),
        "{e}"
    );

    let mut bad_heads = config.clone();
    bad_heads["n_head"] = 3.into();
    let e = err_with(&good, &bad_heads);
    assert!(matches!(&e, CheckpointError::Config { .. }), "{e}");
    assert!(
        e.to_string().contains(CONFIG_FILE) && e.to_string().contains("`n_head` = 3"),
        "{e}"
    );

    let mut lstm = config.clone();
    lstm["model_type"] = "lanes-lstm".into();
    let e = err_with(&good, &lstm);
    assert!(e.to_string().contains("expected \"gpt2\""), "{e}");

    let e = Gpt::load(&dir.join("nowhere")).err().unwrap();
    assert!(matches!(e, CheckpointError::NotACheckpoint { .. }), "{e}");

    // A fixture written by Hugging Face still parses after all this.
    assert!(read_json(&fixture("gpt2_v257").join(CONFIG_FILE)).is_ok());
}
