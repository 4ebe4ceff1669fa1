//! The LSTM language model against PyTorch and against itself: the golden fixture (logits,
//! loss and every gradient of a PyTorch `nn.LSTM` LM, made by `fixtures/make_fixtures.py`),
//! finite-difference gradients of every parameter group, the decoder against the full
//! forward, carried against reset state, and checkpoint round trips and errors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kernels::testutil::{TestRng, assert_close};
use model::checkpoint::{self, CheckpointError};
use model::{
    InputProjection, LanguageModel, Lstm, LstmConfig, ModelKind, load_checkpoint, save_checkpoint,
};
use safetensors::SafeTensors;
use safetensors::tensor::Dtype;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lstm")
}

/// golden.safetensors as f32 tensors (int32 token tensors converted) with their shapes.
fn golden() -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(fixture_dir().join("golden.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let words = view.data().chunks_exact(4).map(|b| b.try_into().unwrap());
            let data = match view.dtype() {
                Dtype::F32 => words.map(f32::from_le_bytes).collect(),
                Dtype::I32 => words.map(|w| i32::from_le_bytes(w) as f32).collect(),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (name, (view.shape().to_vec(), data))
        })
        .collect()
}

fn tokens(v: &[f32]) -> Vec<u32> {
    v.iter().map(|&x| x as u32).collect()
}

/// Random tokens, (B, T) inputs and targets.
fn batch(rng: &mut TestRng, b: usize, t: usize, v: usize) -> (Vec<u32>, Vec<u32>) {
    let mut draw = || (0..b * t).map(|_| rng.below(v) as u32).collect::<Vec<_>>();
    (draw(), draw())
}

/// A tiny model with weights well away from init (0.3·U(−1, 1)) so every path matters.
fn perturbed(config: LstmConfig, seed: u64) -> Lstm {
    let mut m = Lstm::new(config, seed);
    let mut rng = TestRng::new(seed);
    m.params_mut()
        .iter_mut()
        .for_each(|p| *p = 0.3 * rng.uniform());
    m
}

/// Both ways of projecting layer 0's input (see `InputProjection`) are checked.
const PROJECTIONS: [InputProjection; 2] = [InputProjection::Direct, InputProjection::Table];

#[test]
fn golden_loss_logits_and_gradients_match_pytorch() {
    for how in PROJECTIONS {
        golden_matches_pytorch(how);
    }
}

fn golden_matches_pytorch(how: InputProjection) {
    let g = golden();
    let mut m = Lstm::load(&fixture_dir()).unwrap();
    m.set_input_projection(how);
    let (shape, inputs) = &g["inputs"];
    let (b, t) = (shape[0], shape[1]);
    let (inputs, targets) = (tokens(inputs), tokens(&g["targets"].1));
    let v = m.vocab_size();

    let loss = m.forward(&inputs, &targets, b, t);
    let want = g["loss"].1[0];
    assert!(
        ((loss - want) / want).abs() < 1e-4,
        "{how:?}: loss {loss} vs PyTorch {want}"
    );
    // The forward keeps the logits (B, T, V): reading them costs nothing.
    let logits = &g["logits"].1;
    for bi in 0..b {
        for ti in 0..t {
            let want = &logits[(bi * t + ti) * v..][..v];
            let got = m.position_logits(bi, ti);
            assert_close(
                got,
                want,
                1e-4,
                1e-5,
                &format!("{how:?}: forward's logits[{bi}, {ti}]"),
            );
        }
    }
    m.zero_grad();
    m.backward();
    for spec in m.layout().tensors() {
        let (shape, want) = &g[&format!("grad.{}", spec.name)];
        assert_eq!(shape, &spec.shape, "{}", spec.name);
        let scale = want.iter().fold(0.0f32, |a, &x| a.max(x.abs()));
        assert_close(
            &m.grads()[spec.range()],
            want,
            1e-3,
            1e-3 * scale,
            &format!("{how:?}: grad.{}", spec.name),
        );
    }

    // And from the decoder, position by position.
    for bi in 0..b {
        let mut dec = m.decoder();
        for ti in 0..t {
            let got = dec.feed(inputs[bi * t + ti]).unwrap();
            let want = &logits[(bi * t + ti) * v..][..v];
            assert_close(got, want, 1e-4, 1e-5, &format!("logits[{bi}, {ti}]"));
        }
    }
}

/// The activations are allocated for the largest (B, T) seen, as the transformer's: a smaller
/// batch reuses them (no reallocation), and what it computes is what a fresh model computes
/// for it (nothing left from the larger batch leaks in), its gradient included.
#[test]
fn activations_only_grow_and_smaller_shapes_compute_as_on_a_fresh_model() {
    for how in PROJECTIONS {
        let config = LstmConfig::new(13, 5, 2);
        let mut m = perturbed(config.clone(), 4);
        m.set_input_projection(how);
        let mut rng = TestRng::new(9);
        let (big, small, wide) = ((4, 6), (2, 3), (6, 2)); // B·T = 24, 6, 12 (B = 6 > 4)
        let step = |m: &mut Lstm, (b, t): (usize, usize), data: &(Vec<u32>, Vec<u32>)| {
            let loss = m.forward(&data.0, &data.1, b, t);
            let losses = m.token_losses().to_vec();
            m.zero_grad();
            m.backward();
            (loss, losses, m.grads().to_vec(), m.activation_bytes())
        };
        let big_data = batch(&mut rng, big.0, big.1, 13);
        let small_data = batch(&mut rng, small.0, small.1, 13);
        let wide_data = batch(&mut rng, wide.0, wide.1, 13);
        let first = step(&mut m, big, &big_data);
        let shrunk = step(&mut m, small, &small_data);
        assert_eq!(shrunk.3, first.3, "{how:?}: a smaller (B, T) reallocated");
        let mut fresh = perturbed(config.clone(), 4);
        fresh.set_input_projection(how);
        let want = step(&mut fresh, small, &small_data);
        assert!(
            want.3 < first.3,
            "{how:?}: the fresh model is sized for the small batch"
        );
        assert_eq!(shrunk.0, want.0, "{how:?}: loss after shrinking");
        assert_eq!(shrunk.1, want.1, "{how:?}: token losses after shrinking");
        assert_eq!(shrunk.2, want.2, "{how:?}: gradient after shrinking");
        let again = step(&mut m, big, &big_data);
        assert_eq!(again.3, first.3, "{how:?}: growing back reallocated");
        assert_eq!(
            (again.0, &again.1, &again.2),
            (first.0, &first.1, &first.2),
            "{how:?}"
        );
        // A wider batch with fewer positions still fits B·T but not B: it grows, once.
        let wide_out = step(&mut m, wide, &wide_data);
        assert!(
            wide_out.3 > first.3,
            "{how:?}: B = 6 needs more initial-state rows"
        );
        let mut fresh = perturbed(config, 4);
        fresh.set_input_projection(how);
        assert_eq!(wide_out.2, step(&mut fresh, wide, &wide_data).2, "{how:?}");
    }
}

/// Central differences of the mean loss, in f32 with ε = 1e-2 on weights of order 0.3 (the
/// loss is smooth; f32 rounding of the loss contributes ~1e-5 to each estimate).
#[test]
fn gradients_match_finite_differences_for_every_parameter_group() {
    for how in PROJECTIONS {
        finite_differences(how);
    }
}

fn finite_differences(how: InputProjection) {
    let config = LstmConfig::new(13, 5, 2);
    let mut m = perturbed(config, 3);
    m.set_input_projection(how);
    let (b, t) = (2, 4);
    let mut rng = TestRng::new(11);
    let (inputs, targets) = batch(&mut rng, b, t, 13);
    m.forward(&inputs, &targets, b, t);
    m.zero_grad();
    m.backward();
    let analytic = m.grads().to_vec();
    let eps = 1e-2;
    let layout = m.layout().clone();
    for spec in layout.tensors() {
        // The entries with the largest gradients plus a few random ones.
        let range = spec.range();
        let mut idx: Vec<usize> = range.clone().collect();
        idx.sort_by(|&i, &j| analytic[j].abs().total_cmp(&analytic[i].abs()));
        idx.truncate(4);
        idx.extend((0..4).map(|_| range.start + rng.below(range.len())));
        for i in idx {
            let orig = m.params()[i];
            m.params_mut()[i] = orig + eps;
            let up = m.forward(&inputs, &targets, b, t) as f64;
            m.params_mut()[i] = orig - eps;
            let down = m.forward(&inputs, &targets, b, t) as f64;
            m.params_mut()[i] = orig;
            let fd = ((up - down) / (2.0 * eps as f64)) as f32;
            let an = analytic[i];
            assert!(
                (fd - an).abs() <= 2e-2 * an.abs().max(fd.abs()) + 2e-4,
                "{how:?}: {}[{}]: analytic {an}, finite difference {fd}",
                spec.name,
                i - range.start
            );
        }
    }
}

#[test]
fn decoder_equals_the_full_forward_position_by_position() {
    let mut m = perturbed(LstmConfig::new(29, 2 * kernels::simd::LANES + 3, 3), 5);
    let (b, t, v) = (3, 9, 29);
    let (inputs, targets) = batch(&mut TestRng::new(2), b, t, v);
    m.forward(&inputs, &targets, b, t);
    let want = m.token_losses().to_vec();
    let mut got = vec![0.0; b * t];
    let mut dec = m.decoder();
    for bi in 0..b {
        dec.reset();
        for ti in 0..t {
            let logits = dec.feed(inputs[bi * t + ti]).unwrap();
            let max = logits.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
            let lse = max + logits.iter().map(|&x| (x - max).exp()).sum::<f32>().ln();
            got[bi * t + ti] = lse - logits[targets[bi * t + ti] as usize];
        }
        assert_eq!(dec.position(), t);
    }
    assert_close(&got, &want, 1e-5, 1e-5, "token losses");
    assert_eq!(dec.capacity(), None);
}

#[test]
fn carried_state_continues_the_sequence_and_reset_forgets_it() {
    let config = LstmConfig::new(17, 21, 2);
    let (b, t, v) = (2, 6, 17);
    let (inputs, targets) = batch(&mut TestRng::new(4), b, 2 * t, v);
    let half = |x: &[u32], k: usize| -> Vec<u32> {
        x.chunks_exact(2 * t)
            .flat_map(|row| row[k * t..][..t].to_vec())
            .collect()
    };
    let (in1, in2) = (half(&inputs, 0), half(&inputs, 1));
    let (tg1, tg2) = (half(&targets, 0), half(&targets, 1));

    // One window of 2T == two windows of T with the state carried.
    let mut whole = perturbed(config.clone(), 9);
    whole.forward(&inputs, &targets, b, 2 * t);
    let want = half_losses(whole.token_losses(), 2 * t, t);
    let mut m = perturbed(config.clone(), 9);
    m.set_carry_state(true);
    m.forward(&in1, &tg1, b, t);
    m.forward(&in2, &tg2, b, t);
    assert_close(m.token_losses(), &want, 1e-5, 1e-6, "carried second window");
    // The carried state is detached: backward still works on the second window alone.
    m.zero_grad();
    m.backward();
    assert!(m.grads().iter().all(|g| g.is_finite()));

    // Reset (or no carrying) starts from zeros: the same as a fresh model.
    let mut fresh = perturbed(config, 9);
    fresh.forward(&in2, &tg2, b, t);
    m.reset_state();
    m.forward(&in2, &tg2, b, t);
    assert_eq!(m.token_losses(), fresh.token_losses());
    m.set_carry_state(false);
    m.forward(&in2, &tg2, b, t);
    assert_eq!(m.token_losses(), fresh.token_losses());
    assert!(m.token_losses() != want.as_slice());
}

/// The second half (positions T..2T) of each row of (B, 2T) losses.
fn half_losses(l: &[f32], row: usize, t: usize) -> Vec<f32> {
    l.chunks_exact(row).flat_map(|r| r[t..].to_vec()).collect()
}

#[test]
fn checkpoint_round_trips_through_load_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let mut m = perturbed(LstmConfig::tiny(257), 1);
    save_checkpoint(&ckpt, &m, None).unwrap();
    let mut back = load_checkpoint(&ckpt).unwrap();
    assert_eq!(back.params(), m.params());
    assert_eq!(back.config_json(), m.config_json());
    let (inputs, targets) = batch(&mut TestRng::new(1), 2, 5, 257);
    assert_eq!(
        back.forward(&inputs, &targets, 2, 5),
        m.forward(&inputs, &targets, 2, 5)
    );
    // PyTorch's own file loads as well (the fixture's config.json + model.safetensors), and
    // the dispatch picks the transformer for a Hugging Face GPT-2 directory.
    assert_eq!(
        load_checkpoint(&fixture_dir()).unwrap().kind(),
        ModelKind::Lstm
    );
    let gpt2 = fixture_dir().with_file_name("gpt2_v257");
    assert_eq!(load_checkpoint(&gpt2).unwrap().kind(), ModelKind::Gpt);
}

#[test]
fn bad_checkpoints_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let m = Lstm::new(LstmConfig::new(11, 8, 1), 0);
    let err = |e: CheckpointError| e.to_string();

    let e = err(load_checkpoint(&ckpt).err().unwrap());
    assert!(e.contains("not a checkpoint directory"), "{e}");

    save_checkpoint(&ckpt, &m, None).unwrap();
    let config_path = ckpt.join(checkpoint::CONFIG_FILE);
    let good = checkpoint::read_json(&config_path).unwrap();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = good.clone();
        f(&mut c);
        checkpoint::write_json(&config_path, &c).unwrap();
        err(load_checkpoint(&ckpt).err().unwrap())
    };
    let e = with(&|c| c["model_type"] = "rnn".into());
    assert!(e.contains("unknown model_type") && e.contains("rnn"), "{e}");
    let e = with(&|c| c["num_layers"] = "three".into());
    assert!(e.contains("num_layers") && e.contains("config.json"), "{e}");
    let e = with(&|c| c["hidden_size"] = 9.into());
    // Whichever tensor the file lists first is named, with both shapes.
    assert!(
        e.contains("has shape")
            && e.contains("the config implies")
            && e.contains("model.safetensors"),
        "{e}"
    );
    let e = with(&|c| c["num_layers"] = 2.into());
    assert!(
        e.contains("lstm.weight_ih_l1") && e.contains("missing"),
        "{e}"
    );
    checkpoint::write_json(&config_path, &good).unwrap();
    let weights = ckpt.join(checkpoint::MODEL_FILE);
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let e = err(load_checkpoint(&ckpt).err().unwrap());
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
    // A valid file with no tensors (8-byte header length, then the JSON header `{}`).
    std::fs::write(&weights, b"\x02\0\0\0\0\0\0\0{}").unwrap();
    let e = err(load_checkpoint(&ckpt).err().unwrap());
    assert!(e.contains("`emb.weight` is missing"), "{e}");
}

#[test]
fn empty_windows_are_harmless_and_bad_tokens_are_named() {
    let mut m = Lstm::new(LstmConfig::new(7, 4, 2), 0);
    for (b, t) in [(0, 5), (3, 0)] {
        assert_eq!(m.forward(&[], &[], b, t), 0.0);
        m.zero_grad();
        m.backward();
        assert!(m.grads().iter().all(|&g| g == 0.0));
        assert!(m.token_losses().is_empty());
    }
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        m.forward(&[1, 7], &[0, 0], 1, 2);
    }))
    .unwrap_err();
    let msg = err.downcast_ref::<String>().unwrap();
    assert!(msg.contains("token id 7") && msg.contains("V = 7"), "{msg}");
}
