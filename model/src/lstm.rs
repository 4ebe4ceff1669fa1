//! The LSTM language model: token embedding (V, H), `L` stacked LSTM layers exactly as
//! PyTorch's `nn.LSTM` (gate order i, f, g, o; both biases b_ih and b_hh), and a linear head
//! (V, H) + bias to the vocabulary, trained by the mean next-token cross-entropy.
//!
//! ```text
//! x_0 = emb[tokens]                                  (T, B, H)
//! for each layer l:
//!     a   = x_l·W_ihᵀ + b_ih + b_hh                  (T·B, 4H)  one GEMM for all steps
//!     h,c = walk(a, W_hh, h_0, c_0)                  (T+1, B, H) the only sequential part
//!     x_{l+1} = h_1..T
//! logits = x_L·W_headᵀ + b_head                      (T·B, V)
//! loss   = mean cross-entropy(logits, targets)
//! ```
//!
//! Activations are kept time-major, (T, B, ·), so that each step of the walk reads and writes
//! contiguous (B, ·) blocks; token ids and per-token losses are transposed at the edges.
//! Backward is the forward read in reverse: the head's three products, then per layer the
//! backward walk through time (kernels::recurrence) followed by dW_hh, dW_ih (one GEMM each
//! over all steps: the saved h_{t-1} and the layer input against dgates), the bias
//! gradients and the input gradient (one GEMM), and finally the embedding scatter-add.
//!
//! Hidden state between windows: by default every forward starts from zeros. With
//! [`Lstm::set_carry_state`] the final (h, c) of each layer seeds the next forward of the same
//! batch size, detached (no gradient flows into the previous window: truncated BPTT), for
//! training on consecutive windows of long streams.
//!
//! Leaves out: dropout, bidirectional and projected (LSTMP) layers, input size ≠ H, and
//! gradient through the carried state.

use std::ops::Range;
use std::path::Path;

use kernels::recurrence::{
    lstm_backward, lstm_forward, lstm_pack_backward, lstm_pack_forward, lstm_packed_len,
};
use kernels::{Transpose, sgemm};
use serde_json::json;

use crate::checkpoint::{self, CheckpointError};
use crate::lm::{Decoder, LanguageModel, ModelKind};
use crate::params::ParamLayout;
use crate::pending::{
    bias_backward, cross_entropy_fused_inplace, embedding_backward, embedding_forward,
};
use crate::rng::SplitMix64;

/// `model_type` in an LSTM checkpoint's config.json.
pub const MODEL_TYPE: &str = "lanes-lstm";

/// Gates per hidden unit (i, f, g, o).
const G: usize = 4;

/// Architecture of an LSTM language model (the fields of its config.json).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LstmConfig {
    /// V: vocabulary size.
    pub vocab_size: usize,
    /// H: hidden size, also the embedding width and every layer's input size.
    pub hidden_size: usize,
    /// L: stacked LSTM layers.
    pub num_layers: usize,
    /// Tokenizer the model was trained with (`byte` or `gpt2`).
    pub tokenizer: String,
}

impl LstmConfig {
    pub fn new(vocab_size: usize, hidden_size: usize, num_layers: usize) -> Self {
        let tokenizer = if vocab_size == 257 { "byte" } else { "gpt2" };
        LstmConfig {
            vocab_size,
            hidden_size,
            num_layers,
            tokenizer: tokenizer.into(),
        }
    }

    /// Tests: 2 layers of 32 units (two SIMD panels, so the walk's threading is exercised).
    pub fn tiny(vocab_size: usize) -> Self {
        Self::new(vocab_size, 32, 2)
    }

    /// 3 layers of 360 units: 3.30M parameters with the byte vocabulary, matched to the
    /// `small` transformer.
    pub fn small(vocab_size: usize) -> Self {
        Self::new(vocab_size, 360, 3)
    }

    /// A preset by name (`tiny`, `small`).
    pub fn preset(name: &str, vocab_size: usize) -> Option<Self> {
        match name {
            "tiny" => Some(Self::tiny(vocab_size)),
            "small" => Some(Self::small(vocab_size)),
            _ => None,
        }
    }

    /// Parameter count: V·H + L·(2·4H·H + 2·4H) + V·H + V.
    pub fn num_params(&self) -> usize {
        Layout::new(self).0.len()
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "model_type": MODEL_TYPE,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "tokenizer": self.tokenizer,
        })
    }

    /// Parses a config.json (read from `path`, which error messages name).
    pub fn from_json(value: &serde_json::Value, path: &Path) -> Result<Self, CheckpointError> {
        let err = |message: String| CheckpointError::Config {
            path: path.to_path_buf(),
            message,
        };
        let model_type = value.get("model_type").and_then(|v| v.as_str());
        if model_type != Some(MODEL_TYPE) {
            return Err(err(format!(
                "model_type is {model_type:?}, expected \"{MODEL_TYPE}\""
            )));
        }
        let size = |field: &str| -> Result<usize, CheckpointError> {
            match value.get(field).and_then(|v| v.as_u64()) {
                Some(n) if n > 0 => Ok(n as usize),
                _ => Err(err(format!(
                    "field `{field}` must be a positive integer, got {}",
                    value.get(field).unwrap_or(&serde_json::Value::Null)
                ))),
            }
        };
        let mut config = LstmConfig::new(
            size("vocab_size")?,
            size("hidden_size")?,
            size("num_layers")?,
        );
        if let Some(t) = value.get("tokenizer") {
            config.tokenizer = t
                .as_str()
                .ok_or_else(|| err(format!("field `tokenizer` must be a string, got {t}")))?
                .to_string();
        }
        Ok(config)
    }
}

/// Where each tensor sits in the flat parameter buffer.
#[derive(Clone, Debug)]
struct Layout {
    emb: Range<usize>,
    layers: Vec<LayerParams>,
    head_w: Range<usize>,
    head_b: Range<usize>,
}

#[derive(Clone, Debug)]
struct LayerParams {
    w_ih: Range<usize>,
    w_hh: Range<usize>,
    b_ih: Range<usize>,
    b_hh: Range<usize>,
}

impl Layout {
    /// PyTorch's names and state-dict order, so the checkpoint loads into `nn.LSTM` as is.
    fn new(c: &LstmConfig) -> (ParamLayout, Layout) {
        let (v, h) = (c.vocab_size, c.hidden_size);
        let mut p = ParamLayout::new();
        let emb = p.push("emb.weight", &[v, h]);
        let layers = (0..c.num_layers)
            .map(|l| LayerParams {
                w_ih: p.push(format!("lstm.weight_ih_l{l}"), &[G * h, h]),
                w_hh: p.push(format!("lstm.weight_hh_l{l}"), &[G * h, h]),
                b_ih: p.push(format!("lstm.bias_ih_l{l}"), &[G * h]),
                b_hh: p.push(format!("lstm.bias_hh_l{l}"), &[G * h]),
            })
            .collect();
        let head_w = p.push("head.weight", &[v, h]);
        let head_b = p.push("head.bias", &[v]);
        let at = Layout {
            emb,
            layers,
            head_w,
            head_b,
        };
        (p, at)
    }
}

/// Everything forward keeps for backward, sized for one (B, T); reallocated only when the
/// shape changes.
#[derive(Default)]
struct Activations {
    b: usize,
    t: usize,
    inputs: Vec<u32>,       // (T, B) time-major token ids
    targets: Vec<u32>,      // (T, B)
    x0: Vec<f32>,           // (T, B, H) embedded inputs
    gates: Vec<f32>,        // (L, T, B, 4H) input projections, then activated gates
    hs: Vec<f32>,           // (L, T+1, B, H) h_0 (initial state) .. h_T
    cs: Vec<f32>,           // (L, T+1, B, H) c_0 .. c_T
    logits: Vec<f32>,       // (T·B, V) logits, then dlogits (the loss writes over them)
    losses: Vec<f32>,       // (T, B) per-token loss
    token_losses: Vec<f32>, // (B, T) the same, batch-major for callers
    dgates: Vec<f32>,       // (T, B, 4H) one layer's gate gradients
    dh: Vec<f32>,           // (T, B, H) gradient into a layer's output, then its input
    dh0: Vec<f32>,          // (B, H) gradient into the initial state (dropped: detached)
    dc0: Vec<f32>,          // (B, H)
    dbias: Vec<f32>,        // (4H) one layer's bias gradient (b_ih and b_hh share it)
    packed: Vec<f32>,       // W_hh packed for the walk, one layer at a time
    bias: Vec<f32>,         // (4H) b_ih + b_hh of one layer
}

impl Activations {
    fn resize(&mut self, c: &LstmConfig, b: usize, t: usize) {
        let (v, h, l) = (c.vocab_size, c.hidden_size, c.num_layers);
        let n = b * t;
        if (self.b, self.t) != (b, t) || self.packed.len() != lstm_packed_len(h) {
            *self = Activations {
                b,
                t,
                inputs: vec![0; n],
                targets: vec![0; n],
                x0: vec![0.0; n * h],
                gates: vec![0.0; l * n * G * h],
                hs: vec![0.0; l * (t + 1) * b * h],
                cs: vec![0.0; l * (t + 1) * b * h],
                logits: vec![0.0; n * v],
                losses: vec![0.0; n],
                token_losses: vec![0.0; n],
                dgates: vec![0.0; n * G * h],
                dh: vec![0.0; n * h],
                dh0: vec![0.0; b * h],
                dc0: vec![0.0; b * h],
                dbias: vec![0.0; G * h],
                packed: vec![0.0; lstm_packed_len(h)],
                bias: vec![0.0; G * h],
            };
        }
    }
}

/// Final (h, c) of every layer, the initial state of the next window when carrying.
#[derive(Default)]
struct Carried {
    b: usize,
    h: Vec<f32>, // (L, B, H)
    c: Vec<f32>, // (L, B, H)
}

/// The LSTM language model with flat parameters and gradients.
pub struct Lstm {
    config: LstmConfig,
    layout: ParamLayout,
    at: Layout,
    params: Vec<f32>,
    grads: Vec<f32>,
    carry_state: bool,
    carried: Option<Carried>,
    acts: Activations,
    /// Whether `acts` holds a forward that backward has not consumed yet.
    ready_for_backward: bool,
}

impl Lstm {
    /// A freshly initialized model, as PyTorch initializes the same modules: the embedding
    /// N(0, 1), every LSTM weight and bias and the head U(−1/√H, 1/√H). Draws come from a
    /// seeded generator in layout order, so a seed gives the same model everywhere.
    pub fn new(config: LstmConfig, seed: u64) -> Self {
        let mut model = Self::zeros(config);
        let mut rng = SplitMix64::new(seed);
        let bound = 1.0 / (model.config.hidden_size as f64).sqrt();
        let emb = model.at.emb.clone();
        for t in model.layout.tensors() {
            let p = &mut model.params[t.range()];
            if t.range() == emb {
                p.iter_mut().for_each(|x| *x = normal(&mut rng) as f32);
            } else {
                p.iter_mut()
                    .for_each(|x| *x = (bound * (2.0 * rng.next_f64() - 1.0)) as f32);
            }
        }
        model
    }

    /// A model with every parameter zero (to be filled, e.g. from a checkpoint).
    pub fn zeros(config: LstmConfig) -> Self {
        let (layout, at) = Layout::new(&config);
        let n = layout.len();
        Lstm {
            config,
            layout,
            at,
            params: vec![0.0; n],
            grads: vec![0.0; n],
            carry_state: false,
            carried: None,
            acts: Activations::default(),
            ready_for_backward: false,
        }
    }

    /// Loads `dir/config.json` and `dir/model.safetensors` (PyTorch `nn.LSTM` names), checking
    /// every name, shape and dtype against the config.
    pub fn load(dir: &Path) -> Result<Self, CheckpointError> {
        let path = dir.join(checkpoint::CONFIG_FILE);
        let config = LstmConfig::from_json(&checkpoint::read_json(&path)?, &path)?;
        let mut model = Self::zeros(config);
        checkpoint::read_safetensors(
            &dir.join(checkpoint::MODEL_FILE),
            &model.layout,
            &mut model.params,
            |name| Some(name.to_string()),
        )?;
        Ok(model)
    }

    pub fn config(&self) -> &LstmConfig {
        &self.config
    }

    /// Carry each layer's final (h, c) into the next forward (detached), or start every
    /// forward from zeros (the default). Turning it off also forgets the carried state.
    pub fn set_carry_state(&mut self, carry: bool) {
        self.carry_state = carry;
        if !carry {
            self.carried = None;
        }
    }

    pub fn carries_state(&self) -> bool {
        self.carry_state
    }

    fn p(&self, r: &Range<usize>) -> &[f32] {
        &self.params[r.clone()]
    }
}

impl LanguageModel for Lstm {
    fn kind(&self) -> ModelKind {
        ModelKind::Lstm
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn max_seq_len(&self) -> Option<usize> {
        None
    }

    fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    fn params(&self) -> &[f32] {
        &self.params
    }

    fn params_mut(&mut self) -> &mut [f32] {
        &mut self.params
    }

    fn grads(&self) -> &[f32] {
        &self.grads
    }

    fn params_and_grads(&mut self) -> (&mut [f32], &[f32]) {
        (&mut self.params, &self.grads)
    }

    fn zero_grad(&mut self) {
        self.grads.fill(0.0);
    }

    fn forward(&mut self, inputs: &[u32], targets: &[u32], b: usize, t: usize) -> f32 {
        let (v, h, nl) = (
            self.config.vocab_size,
            self.config.hidden_size,
            self.config.num_layers,
        );
        let n = b * t;
        assert_eq!(
            inputs.len(),
            n,
            "Lstm::forward: inputs is not (B, T) = ({b}, {t})"
        );
        assert_eq!(
            targets.len(),
            n,
            "Lstm::forward: targets is not (B, T) = ({b}, {t})"
        );
        if let Some(bad) = inputs.iter().chain(targets).find(|&&x| x as usize >= v) {
            panic!("Lstm::forward: token id {bad} is out of range for V = {v}");
        }
        self.acts.resize(&self.config, b, t);
        let a = &mut self.acts;
        let (p, at) = (&self.params, &self.at);
        for (bi, (inp, tgt)) in inputs
            .chunks_exact(t.max(1))
            .zip(targets.chunks_exact(t.max(1)))
            .enumerate()
        {
            for ti in 0..t {
                a.inputs[ti * b + bi] = inp[ti];
                a.targets[ti * b + bi] = tgt[ti];
            }
        }
        let carried = self
            .carried
            .as_ref()
            .filter(|c| self.carry_state && c.b == b);

        embedding_forward(&mut a.x0, &a.inputs, &p[at.emb.clone()], n, h);
        let state = (t + 1) * b * h; // one layer's hs or cs
        for (l, lp) in at.layers.iter().enumerate() {
            let (below, here) = a.hs.split_at_mut(l * state);
            let hs = &mut here[..state];
            let cs = &mut a.cs[l * state..][..state];
            let x = if l == 0 {
                &a.x0[..]
            } else {
                &below[(l - 1) * state + b * h..]
            };
            let gates = &mut a.gates[l * n * G * h..][..n * G * h];
            // gates = b_ih + b_hh + x·W_ihᵀ: the input projection of all T steps at once.
            for ((s, &bi), &bh) in a
                .bias
                .iter_mut()
                .zip(&p[lp.b_ih.clone()])
                .zip(&p[lp.b_hh.clone()])
            {
                *s = bi + bh;
            }
            gates
                .chunks_exact_mut(G * h)
                .for_each(|row| row.copy_from_slice(&a.bias));
            let w_ih = &p[lp.w_ih.clone()];
            sgemm(
                Transpose::No,
                Transpose::Yes,
                n,
                G * h,
                h,
                1.0,
                x,
                h,
                w_ih,
                h,
                1.0,
                gates,
                G * h,
            );
            match carried {
                Some(c) => {
                    hs[..b * h].copy_from_slice(&c.h[l * b * h..][..b * h]);
                    cs[..b * h].copy_from_slice(&c.c[l * b * h..][..b * h]);
                }
                None => {
                    hs[..b * h].fill(0.0);
                    cs[..b * h].fill(0.0);
                }
            }
            lstm_pack_forward(&mut a.packed, &p[lp.w_hh.clone()], h);
            lstm_forward(hs, cs, gates, &a.packed, b, t, h);
        }
        let x_top = &a.hs[(nl - 1) * state + b * h..][..n * h]; // (T, B, H)
        a.logits
            .chunks_exact_mut(v)
            .for_each(|row| row.copy_from_slice(&p[at.head_b.clone()]));
        sgemm(
            Transpose::No,
            Transpose::Yes,
            n,
            v,
            h,
            1.0,
            x_top,
            h,
            &p[at.head_w.clone()],
            h,
            1.0,
            &mut a.logits,
            v,
        );
        let loss =
            cross_entropy_fused_inplace(&mut a.logits, &mut a.losses, &a.targets, n, v, None);
        for bi in 0..b {
            for ti in 0..t {
                a.token_losses[bi * t + ti] = a.losses[ti * b + bi];
            }
        }

        if self.carry_state {
            let c = self.carried.get_or_insert_with(Carried::default);
            c.b = b;
            c.h.resize(nl * b * h, 0.0);
            c.c.resize(nl * b * h, 0.0);
            for l in 0..nl {
                let last = l * state + t * b * h;
                c.h[l * b * h..][..b * h].copy_from_slice(&a.hs[last..][..b * h]);
                c.c[l * b * h..][..b * h].copy_from_slice(&a.cs[last..][..b * h]);
            }
        }
        self.ready_for_backward = true;
        loss
    }

    fn token_losses(&self) -> &[f32] {
        &self.acts.token_losses
    }

    fn backward(&mut self) {
        assert!(
            self.ready_for_backward,
            "Lstm::backward: call forward first (each forward supports one backward)"
        );
        self.ready_for_backward = false;
        let (v, h, nl) = (
            self.config.vocab_size,
            self.config.hidden_size,
            self.config.num_layers,
        );
        let a = &mut self.acts;
        let (b, t) = (a.b, a.t);
        let n = b * t;
        let state = (t + 1) * b * h;
        let (p, at, d) = (&self.params, &self.at, &mut self.grads);

        // Head: dW_head += dlogitsᵀ·x_L, db_head += Σ dlogits, dx_L = dlogits·W_head.
        let dlogits = &a.logits; // (T·B, V), written by the loss
        let x_top = &a.hs[(nl - 1) * state + b * h..][..n * h];
        sgemm(
            Transpose::Yes,
            Transpose::No,
            v,
            h,
            n,
            1.0,
            dlogits,
            v,
            x_top,
            h,
            1.0,
            &mut d[at.head_w.clone()],
            h,
        );
        bias_backward(&mut d[at.head_b.clone()], dlogits, n, v);
        sgemm(
            Transpose::No,
            Transpose::No,
            n,
            h,
            v,
            1.0,
            dlogits,
            v,
            &p[at.head_w.clone()],
            h,
            0.0,
            &mut a.dh,
            h,
        );

        for (l, lp) in at.layers.iter().enumerate().rev() {
            let hs = &a.hs[l * state..][..state];
            let cs = &a.cs[l * state..][..state];
            let x = if l == 0 {
                &a.x0[..]
            } else {
                &a.hs[(l - 1) * state + b * h..][..n * h]
            };
            let gates = &a.gates[l * n * G * h..][..n * G * h];
            // Through time: dgates from dh (the gradient into this layer's outputs).
            lstm_pack_backward(&mut a.packed, &p[lp.w_hh.clone()], h);
            lstm_backward(
                &mut a.dgates,
                &mut a.dh0,
                &mut a.dc0,
                &a.dh,
                gates,
                cs,
                &a.packed,
                b,
                t,
                h,
            );
            // dW_hh += dgatesᵀ·h_{t-1} and dW_ih += dgatesᵀ·x over all steps at once.
            sgemm(
                Transpose::Yes,
                Transpose::No,
                G * h,
                h,
                n,
                1.0,
                &a.dgates,
                G * h,
                &hs[..n * h],
                h,
                1.0,
                &mut d[lp.w_hh.clone()],
                h,
            );
            sgemm(
                Transpose::Yes,
                Transpose::No,
                G * h,
                h,
                n,
                1.0,
                &a.dgates,
                G * h,
                x,
                h,
                1.0,
                &mut d[lp.w_ih.clone()],
                h,
            );
            // Both biases receive the gate gradient.
            a.dbias.fill(0.0);
            bias_backward(&mut a.dbias, &a.dgates, n, G * h);
            for r in [&lp.b_ih, &lp.b_hh] {
                d[r.clone()]
                    .iter_mut()
                    .zip(&a.dbias)
                    .for_each(|(g, &s)| *g += s);
            }
            // dx = dgates·W_ih: the gradient into the layer below's outputs (or the embedding).
            sgemm(
                Transpose::No,
                Transpose::No,
                n,
                h,
                G * h,
                1.0,
                &a.dgates,
                G * h,
                &p[lp.w_ih.clone()],
                h,
                0.0,
                &mut a.dh,
                h,
            );
        }
        embedding_backward(&mut d[at.emb.clone()], &a.dh, &a.inputs, n, h);
    }

    fn reset_state(&mut self) {
        self.carried = None;
    }

    fn config_json(&self) -> serde_json::Value {
        self.config.to_json()
    }

    fn decoder(&self) -> Box<dyn Decoder + '_> {
        Box::new(LstmDecoder::new(self))
    }
}

/// Token-by-token inference with the (h, c) of every layer: the same computation as
/// [`Lstm::forward`] with B = T = 1, W_hh packed once for the decoder's lifetime.
pub struct LstmDecoder<'a> {
    model: &'a Lstm,
    packed: Vec<f32>, // (L, packed_len)
    bias: Vec<f32>,   // (L, 4H) b_ih + b_hh
    hs: Vec<f32>,     // (L, 2, H) per layer: h_{t-1}, h_t
    cs: Vec<f32>,     // (L, 2, H)
    gates: Vec<f32>,  // (4H)
    x: Vec<f32>,      // (H)
    logits: Vec<f32>, // (V)
    position: usize,
}

impl<'a> LstmDecoder<'a> {
    pub fn new(model: &'a Lstm) -> Self {
        let (v, h, nl) = (
            model.config.vocab_size,
            model.config.hidden_size,
            model.config.num_layers,
        );
        let plen = lstm_packed_len(h);
        let mut packed = vec![0.0; nl * plen];
        let mut bias = vec![0.0; nl * G * h];
        for (l, lp) in model.at.layers.iter().enumerate() {
            lstm_pack_forward(&mut packed[l * plen..][..plen], model.p(&lp.w_hh), h);
            let pairs = model.p(&lp.b_ih).iter().zip(model.p(&lp.b_hh));
            for (s, (&bi, &bh)) in bias[l * G * h..].iter_mut().zip(pairs) {
                *s = bi + bh;
            }
        }
        LstmDecoder {
            model,
            packed,
            bias,
            hs: vec![0.0; nl * 2 * h],
            cs: vec![0.0; nl * 2 * h],
            gates: vec![0.0; G * h],
            x: vec![0.0; h],
            logits: vec![0.0; v],
            position: 0,
        }
    }
}

impl Decoder for LstmDecoder<'_> {
    fn feed(&mut self, token: u32) -> &[f32] {
        let m = self.model;
        let (v, h) = (m.config.vocab_size, m.config.hidden_size);
        assert!(
            (token as usize) < v,
            "LstmDecoder::feed: token id {token} is out of range for V = {v}"
        );
        let plen = lstm_packed_len(h);
        embedding_forward(&mut self.x, &[token], m.p(&m.at.emb), 1, h);
        for (l, lp) in m.at.layers.iter().enumerate() {
            self.gates.copy_from_slice(&self.bias[l * G * h..][..G * h]);
            sgemm(
                Transpose::No,
                Transpose::Yes,
                1,
                G * h,
                h,
                1.0,
                &self.x,
                h,
                m.p(&lp.w_ih),
                h,
                1.0,
                &mut self.gates,
                G * h,
            );
            let (hs, cs) = (
                &mut self.hs[l * 2 * h..][..2 * h],
                &mut self.cs[l * 2 * h..][..2 * h],
            );
            lstm_forward(
                hs,
                cs,
                &mut self.gates,
                &self.packed[l * plen..][..plen],
                1,
                1,
                h,
            );
            hs.copy_within(h.., 0);
            cs.copy_within(h.., 0);
            self.x.copy_from_slice(&hs[..h]);
        }
        self.logits.copy_from_slice(m.p(&m.at.head_b));
        sgemm(
            Transpose::No,
            Transpose::Yes,
            1,
            v,
            h,
            1.0,
            &self.x,
            h,
            m.p(&m.at.head_w),
            h,
            1.0,
            &mut self.logits,
            v,
        );
        self.position += 1;
        &self.logits
    }

    fn position(&self) -> usize {
        self.position
    }

    fn capacity(&self) -> Option<usize> {
        None
    }

    fn reset(&mut self) {
        self.hs.fill(0.0);
        self.cs.fill(0.0);
        self.position = 0;
    }
}

/// A standard normal draw from two uniforms (Box–Muller, one of the pair kept).
fn normal(rng: &mut SplitMix64) -> f64 {
    let u1 = 1.0 - rng.next_f64(); // (0, 1]: ln is finite
    let u2 = rng.next_f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_preset_has_the_advertised_size() {
        // emb 257·360 + 3·(2·1440·360 + 2·1440) + head 257·360 + 257
        assert_eq!(LstmConfig::small(257).num_params(), 3_304_337);
    }

    #[test]
    fn config_json_round_trips_and_names_bad_fields() {
        let c = LstmConfig::tiny(257);
        let p = Path::new("config.json");
        assert_eq!(LstmConfig::from_json(&c.to_json(), p).unwrap(), c);
        let mut bad = c.to_json();
        bad["hidden_size"] = json!(0);
        let e = LstmConfig::from_json(&bad, p).unwrap_err().to_string();
        assert!(
            e.contains("hidden_size") && e.contains("config.json"),
            "{e}"
        );
        bad["model_type"] = json!("gpt2");
        let e = LstmConfig::from_json(&bad, p).unwrap_err().to_string();
        assert!(e.contains("model_type"), "{e}");
    }

    #[test]
    fn init_follows_pytorch_scales() {
        let m = Lstm::new(LstmConfig::new(50, 64, 2), 1);
        let bound = 1.0 / 8.0;
        for t in m.layout().tensors() {
            let x = &m.params()[t.range()];
            let max = x.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
            if t.name == "emb.weight" {
                let var = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len() as f64;
                assert!((var - 1.0).abs() < 0.1, "{}: variance {var}", t.name);
            } else {
                assert!(
                    max <= bound && max > 0.9 * bound,
                    "{}: max |w| {max}",
                    t.name
                );
            }
        }
        assert_eq!(
            m.params(),
            Lstm::new(LstmConfig::new(50, 64, 2), 1).params()
        );
    }
}
