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
//!
//! Files: `config.rs` (hyperparameters, presets, config.json), `tensors.rs` (the flat
//! parameter layout), `io.rs` (loading a checkpoint), `decoder.rs` (token-by-token
//! inference); this file holds the model, its forward and its backward.

pub mod config;
mod decoder;
mod io;
mod tensors;

pub use config::{LstmConfig, MODEL_TYPE};
pub use decoder::LstmDecoder;

use kernels::Transpose::{No, Yes};
use kernels::cross_entropy::{cross_entropy_forward, cross_entropy_fused_inplace};
use kernels::elementwise::{bias_backward, bias_forward};
use kernels::embedding::{embedding_backward, embedding_forward};
use kernels::recurrence::{
    Backward, Forward, PackedWhh, lstm_backward, lstm_forward, lstm_pack_backward,
    lstm_pack_forward,
};
use kernels::{LstmDims, Precision, gemm};

use crate::lm::{Decoder, LanguageModel, ModelKind};
use crate::params::ParamLayout;
use crate::rng::SplitMix64;
use tensors::{Layout, Span};

/// Gates per hidden unit (i, f, g, o).
const G: usize = 4;

/// How layer 0 computes its input projection `emb[tokens]·W_ihᵀ` and its gradients.
///
/// Layer 0's input is an embedding lookup, and a lookup followed by a linear map is a lookup
/// in the mapped table: `emb[tok]·W_ihᵀ = (emb·W_ihᵀ)[tok]`. So when the vocabulary is smaller
/// than the batch (the byte vocabulary, V = 257, against B·T = 4096 tokens), the forward
/// projects the (V, H) table once and gathers rows of the (V, 4H) result, and the backward
/// scatter-adds dgates per token into S (V, 4H) and takes `dW_ih += Sᵀ·emb` and
/// `demb += S·W_ih`: three GEMMs over V rows instead of B·T (about 15% of the `small`
/// model's FLOPs at B·T = 4096). With GPT-2's vocabulary the direct way is the cheap one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InputProjection {
    /// The table when V < B·T, else direct.
    #[default]
    Auto,
    /// Embed the B·T tokens, then one GEMM over them.
    Direct,
    /// Project the embedding table, then look the tokens up in it.
    Table,
}

impl InputProjection {
    fn uses_table(self, v: usize, n: usize) -> bool {
        match self {
            InputProjection::Auto => v < n,
            InputProjection::Direct => false,
            InputProjection::Table => true,
        }
    }
}

/// Everything forward keeps for backward, allocated for the largest B·T (and B) seen and
/// reused for any smaller shape (no allocation per step, as the transformer's), each buffer
/// used through its first (B, T)-sized part. Shapes are (T, B, ·) for the current (B, T).
#[derive(Default)]
struct Activations {
    b: usize,               // current batch
    t: usize,               // current window
    n_cap: usize,           // B·T the buffers hold
    b_cap: usize,           // B the buffers hold
    inputs: Vec<u32>,       // (T, B) time-major token ids
    targets: Vec<u32>,      // (T, B)
    x0: Vec<f32>,           // (T, B, H) embedded inputs (direct input projection)
    table: Vec<f32>,        // (V, 4H) projected embedding, then dgates summed per token
    gates: Vec<f32>,        // (L, T, B, 4H) input projections, then activated gates
    hs: Vec<f32>,           // (L, T+1, B, H) h_0 (initial state) .. h_T
    cs: Vec<f32>,           // (L, T+1, B, H) c_0 .. c_T
    logits: Vec<f32>,       // (T·B, V) logits; backward turns them into dlogits in place
    losses: Vec<f32>,       // (T, B) per-token loss
    token_losses: Vec<f32>, // (B, T) the same, batch-major for callers
    dgates: Vec<f32>,       // (T, B, 4H) one layer's gate gradients
    dh: Vec<f32>,           // (T, B, H) gradient into a layer's output, then its input
    dh0: Vec<f32>,          // (B, H) gradient into the initial state (dropped: detached)
    dc0: Vec<f32>,          // (B, H)
    dbias: Vec<f32>,        // (4H) one layer's bias gradient (b_ih and b_hh share it)
    packed: PackedPair,     // W_hh packed for the walks, one layer at a time
    bias: Vec<f32>,         // (4H) b_ih + b_hh of one layer
}

/// W_hh of one layer packed for the forward and the backward walk.
#[derive(Default)]
struct PackedPair {
    fwd: PackedWhh<Forward>,
    bwd: PackedWhh<Backward>,
}

impl Activations {
    /// Makes room for a (B, T) forward; reallocates only when B·T or B exceeds what is there
    /// (every per-layer slab is laid out for the current (B, T), and L·(T+1)·B·H ≤
    /// L·(B·T + B)·H of the largest seen).
    fn reserve(&mut self, c: &LstmConfig, b: usize, t: usize) {
        let (v, h, l) = (c.vocab_size, c.hidden_size, c.num_layers);
        let n = b * t;
        (self.b, self.t) = (b, t);
        if n <= self.n_cap && b <= self.b_cap && self.bias.len() == G * h {
            return;
        }
        let (n, b) = (n.max(self.n_cap), b.max(self.b_cap));
        *self = Activations {
            b: self.b,
            t: self.t,
            n_cap: n,
            b_cap: b,
            inputs: vec![0; n],
            targets: vec![0; n],
            x0: vec![0.0; n * h],
            table: vec![0.0; v * G * h],
            gates: vec![0.0; l * n * G * h],
            hs: vec![0.0; l * (n + b) * h],
            cs: vec![0.0; l * (n + b) * h],
            logits: vec![0.0; n * v],
            losses: vec![0.0; n],
            token_losses: vec![0.0; n],
            dgates: vec![0.0; n * G * h],
            dh: vec![0.0; n * h],
            dh0: vec![0.0; b * h],
            dc0: vec![0.0; b * h],
            dbias: vec![0.0; G * h],
            packed: std::mem::take(&mut self.packed),
            bias: vec![0.0; G * h],
        };
    }

    /// Bytes held.
    fn bytes(&self) -> usize {
        let ids = self.inputs.len() + self.targets.len();
        let floats = [
            &self.x0,
            &self.table,
            &self.gates,
            &self.hs,
            &self.cs,
            &self.logits,
            &self.losses,
            &self.token_losses,
            &self.dgates,
            &self.dh,
            &self.dh0,
            &self.dc0,
            &self.dbias,
            &self.bias,
        ]
        .iter()
        .map(|v| v.len())
        .sum::<usize>();
        (ids + floats) * std::mem::size_of::<f32>() // u32 ids are as wide
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
    input_projection: InputProjection,
    acts: Activations,
    /// Whether `acts` holds a forward that backward has not consumed yet.
    ready_for_backward: bool,
    /// The precision of the matrix products (see `set_precision`).
    precision: Precision,
}

impl Lstm {
    /// A freshly initialized model, as PyTorch initializes the same modules: the embedding
    /// N(0, 1), every LSTM weight and bias and the head U(−1/√H, 1/√H). Draws come from a
    /// seeded generator in layout order, so a seed gives the same model everywhere.
    pub fn new(config: LstmConfig, seed: u64) -> Self {
        let mut model = Self::zeros(config);
        let mut rng = SplitMix64::new(seed);
        let bound = 1.0 / (model.config.hidden_size as f64).sqrt();
        let emb = model.at.emb;
        for t in model.layout.tensors() {
            let p = &mut model.params[t.range()];
            if Span::from(t.range()) == emb {
                p.iter_mut().for_each(|x| *x = rng.next_normal() as f32);
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
            input_projection: InputProjection::Auto,
            acts: Activations::default(),
            ready_for_backward: false,
            precision: Precision::F32,
        }
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

    /// Bytes of activation and scratch memory held: grows with the largest B·T (and B) seen,
    /// never shrinks.
    pub fn activation_bytes(&self) -> usize {
        self.acts.bytes()
    }

    /// How layer 0 projects its input ([`InputProjection::Auto`] unless set). Both ways give
    /// the same results up to rounding; this exists to test and measure them.
    pub fn set_input_projection(&mut self, how: InputProjection) {
        self.input_projection = how;
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

    fn grads_mut(&mut self) -> &mut [f32] {
        &mut self.grads
    }

    fn params_and_grads(&mut self) -> (&mut [f32], &[f32]) {
        (&mut self.params, &self.grads)
    }

    fn zero_grad(&mut self) {
        kernels::elementwise::fill(&mut self.grads, 0.0);
    }

    /// The precision of the matrix products: fp32 (the default), or bf16 operands with fp32
    /// accumulation. Parameters, gradients, gates, the cell state and the loss stay fp32.
    fn precision(&self) -> Precision {
        self.precision
    }

    /// Sets the precision of the matrix products; returns the one this build runs
    /// ([`Precision::effective`]: bf16 becomes fp32 where the build lacks AVX512_BF16).
    fn set_precision(&mut self, precision: Precision) -> Precision {
        self.precision = precision.effective();
        self.precision
    }

    #[rustfmt::skip] // one kernel call per line, as in llm.c, so forward and backward mirror
    fn forward(&mut self, inputs: &[u32], targets: &[u32], b: usize, t: usize) -> f32 {
        let (v, h, nl) = (self.config.vocab_size, self.config.hidden_size, self.config.num_layers);
        let n = b * t;
        assert_eq!(inputs.len(), n, "Lstm::forward: inputs is not (B, T) = ({b}, {t})");
        assert_eq!(targets.len(), n, "Lstm::forward: targets is not (B, T) = ({b}, {t})");
        if let Some(bad) = inputs.iter().chain(targets).find(|&&x| x as usize >= v) {
            panic!("Lstm::forward: token id {bad} is out of range for V = {v}");
        }
        self.acts.reserve(&self.config, b, t);
        let carried = self.carried.as_ref().filter(|c| self.carry_state && c.b == b);
        let table = self.input_projection.uses_table(v, n);
        let (a, p, at, prec) = (&mut self.acts, &self.params, &self.at, self.precision);
        let state = (t + 1) * b * h; // one layer's hs or cs
        let ids = &mut a.inputs[..n]; // (T, B)
        let tgt = &mut a.targets[..n]; // (T, B)
        let x0 = &mut a.x0[..n * h]; // (T, B, H)
        let all_gates = &mut a.gates[..nl * n * G * h]; // (L, T, B, 4H)
        let all_hs = &mut a.hs[..nl * state]; // (L, T+1, B, H)
        let all_cs = &mut a.cs[..nl * state]; // (L, T+1, B, H)
        let logits = &mut a.logits[..n * v]; // (T·B, V)
        let losses = &mut a.losses[..n]; // (T, B)
        transpose(ids, inputs, b, t); // (B, T) -> (T, B)
        transpose(tgt, targets, b, t);

        if !table {
            embedding_forward(x0, ids, at.emb.of(p), h);
        }
        for (l, lp) in at.layers.iter().enumerate() {
            let (below, here) = all_hs.split_at_mut(l * state);
            let (hs, cs) = (&mut here[..state], &mut all_cs[l * state..][..state]);
            let gates = &mut all_gates[l * n * G * h..][..n * G * h];
            sum_into(&mut a.bias, lp.b_ih.of(p), lp.b_hh.of(p));
            if l == 0 && table {
                linear_forward(&mut a.table, at.emb.of(p), lp.w_ih.of(p), &a.bias, v, h, G * h, prec); // emb·W_ihᵀ + b
                embedding_forward(gates, ids, &a.table, G * h); // ... looked up per token
            } else {
                let x = if l == 0 { &x0[..] } else { &below[(l - 1) * state + b * h..] };
                linear_forward(gates, x, lp.w_ih.of(p), &a.bias, n, h, G * h, prec); // all T steps at once
            }
            initial_state(&mut hs[..b * h], &mut cs[..b * h], carried.map(|c| (&c.h[l * b * h..][..b * h], &c.c[l * b * h..][..b * h])));
            lstm_pack_forward(&mut a.packed.fwd, lp.w_hh.of(p), h, prec);
            lstm_forward(hs, cs, gates, &a.packed.fwd, LstmDims { b, t, h }); // the walk through time
        }
        let x_top = &all_hs[(nl - 1) * state + b * h..][..n * h]; // (T, B, H)
        linear_forward(logits, x_top, at.head_w.of(p), at.head_b.of(p), n, h, v, prec);
        let loss = cross_entropy_forward(losses, logits, tgt, n, v, None); // the logits stay
        transpose(&mut a.token_losses[..n], losses, t, b); // (T, B) -> (B, T)

        if self.carry_state {
            let c = self.carried.get_or_insert_with(Carried::default);
            c.b = b;
            c.h.resize(nl * b * h, 0.0);
            c.c.resize(nl * b * h, 0.0);
            for l in 0..nl {
                let last = l * state + t * b * h;
                c.h[l * b * h..][..b * h].copy_from_slice(&all_hs[last..][..b * h]);
                c.c[l * b * h..][..b * h].copy_from_slice(&all_cs[last..][..b * h]);
            }
        }
        self.ready_for_backward = true;
        loss
    }

    fn token_losses(&self) -> &[f32] {
        &self.acts.token_losses[..self.acts.b * self.acts.t]
    }

    fn position_logits(&self, row: usize, position: usize) -> &[f32] {
        let (b, t, v) = (self.acts.b, self.acts.t, self.config.vocab_size);
        assert!(
            row < b && position < t,
            "Lstm::position_logits: ({row}, {position}) is outside the last forward's (B, T) = ({b}, {t})"
        );
        assert!(
            self.ready_for_backward,
            "Lstm::position_logits: backward has overwritten the logits with their gradient"
        );
        &self.acts.logits[(position * b + row) * v..][..v] // (T·B, V): time-major
    }

    #[rustfmt::skip] // one kernel call per line: forward read in reverse
    fn backward(&mut self) {
        assert!(self.ready_for_backward, "Lstm::backward: call forward first (each forward supports one backward)");
        self.ready_for_backward = false;
        let (v, h, nl) = (self.config.vocab_size, self.config.hidden_size, self.config.num_layers);
        let (b, t) = (self.acts.b, self.acts.t);
        let (n, state) = (b * t, (t + 1) * b * h);
        let table = self.input_projection.uses_table(v, n);
        let (a, p, at, d) = (&mut self.acts, &self.params, &self.at, &mut self.grads);
        let prec = self.precision;
        let ids = &a.inputs[..n]; // (T, B)
        let x0 = &a.x0[..n * h]; // (T, B, H)
        let all_gates = &a.gates[..nl * n * G * h]; // (L, T, B, 4H)
        let all_hs = &a.hs[..nl * state]; // (L, T+1, B, H)
        let all_cs = &a.cs[..nl * state]; // (L, T+1, B, H)
        let dgates = &mut a.dgates[..n * G * h]; // (T, B, 4H)
        let dh = &mut a.dh[..n * h]; // (T, B, H)
        let (dh0, dc0) = (&mut a.dh0[..b * h], &mut a.dc0[..b * h]); // (B, H)

        // loss = mean NLL: dlogits = (softmax − onehot) / (B·T), in place of the logits.
        let dlogits = &mut a.logits[..n * v]; // (T·B, V)
        cross_entropy_fused_inplace(dlogits, &mut a.losses[..n], &a.targets[..n], n, v, None);
        let x_top = &all_hs[(nl - 1) * state + b * h..][..n * h];
        let (dw_head, db_head) = two_mut(d, at.head_w, at.head_b);
        linear_backward(dh, dw_head, db_head, dlogits, x_top, at.head_w.of(p), n, h, v, prec);
        for (l, lp) in at.layers.iter().enumerate().rev() {
            let hs = &all_hs[l * state..][..state];
            let cs = &all_cs[l * state..][..state];
            let gates = &all_gates[l * n * G * h..][..n * G * h];
            lstm_pack_backward(&mut a.packed.bwd, lp.w_hh.of(p), h, prec);
            lstm_backward(dgates, dh0, dc0, dh, gates, cs, &a.packed.bwd, LstmDims { b, t, h }); // back through time
            linear_weight_backward(lp.w_hh.of_mut(d), dgates, &hs[..n * h], n, h, G * h, prec); // h_{t-1}, all steps
            a.dbias.fill(0.0);
            if l == 0 && table {
                // S = dgates summed per token (V, 4H); then dW_ih += Sᵀ·emb and demb += S·W_ih.
                a.table.fill(0.0);
                embedding_backward(&mut a.table, dgates, ids, G * h);
                let (demb, dw_ih) = two_mut(d, at.emb, lp.w_ih);
                linear_weight_backward(dw_ih, &a.table, at.emb.of(p), v, h, G * h, prec);
                bias_backward(&mut a.dbias, &a.table, v, G * h);
                gemm(prec, No, No, v, h, G * h, 1.0, &a.table, G * h, lp.w_ih.of(p), h, 1.0, demb, h);
            } else {
                let x = if l == 0 { x0 } else { &all_hs[(l - 1) * state + b * h..][..n * h] };
                linear_backward(dh, lp.w_ih.of_mut(d), &mut a.dbias, dgates, x, lp.w_ih.of(p), n, h, G * h, prec);
            }
            add_into(lp.b_ih.of_mut(d), &a.dbias); // both biases get the gate gradient
            add_into(lp.b_hh.of_mut(d), &a.dbias);
        }
        if !table {
            embedding_backward(at.emb.of_mut(d), dh, ids, h);
        }
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

/// `out` (N, OC) = `inp` (N, IC) · `w`ᵀ + `bias`, with `w` (OC, IC) in `nn.Linear`'s layout,
/// the product in `prec`.
#[allow(clippy::too_many_arguments)]
fn linear_forward(
    out: &mut [f32],
    inp: &[f32],
    w: &[f32],
    bias: &[f32],
    n: usize,
    ic: usize,
    oc: usize,
    prec: Precision,
) {
    gemm(prec, No, Yes, n, oc, ic, 1.0, inp, ic, w, ic, 0.0, out, oc);
    bias_forward(out, bias, n, oc);
}

/// Gradient of [`linear_forward`]: `dinp = dout · w` (overwritten), `dw += doutᵀ · inp`,
/// `dbias += Σ_rows dout`.
#[allow(clippy::too_many_arguments)]
fn linear_backward(
    dinp: &mut [f32],
    dw: &mut [f32],
    dbias: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    w: &[f32],
    n: usize,
    ic: usize,
    oc: usize,
    prec: Precision,
) {
    gemm(prec, No, No, n, ic, oc, 1.0, dout, oc, w, ic, 0.0, dinp, ic);
    linear_weight_backward(dw, dout, inp, n, ic, oc, prec);
    bias_backward(dbias, dout, n, oc);
}

/// `dw` (OC, IC) += `dout`ᵀ (OC, N) · `inp` (N, IC), the product in `prec`.
fn linear_weight_backward(
    dw: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    n: usize,
    ic: usize,
    oc: usize,
    prec: Precision,
) {
    gemm(
        prec, Yes, No, oc, ic, n, 1.0, dout, oc, inp, ic, 1.0, dw, ic,
    );
}

/// `out` (C, R) = `inp` (R, C)ᵀ: token ids and losses between batch- and time-major.
fn transpose<T: Copy>(out: &mut [T], inp: &[T], r: usize, c: usize) {
    for (i, row) in inp.chunks_exact(c.max(1)).take(r).enumerate() {
        for (j, &x) in row.iter().enumerate() {
            out[j * r + i] = x;
        }
    }
}

/// `out = a + b`, elementwise (a layer's two biases, 4H numbers).
fn sum_into(out: &mut [f32], a: &[f32], b: &[f32]) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x + y;
    }
}

/// `acc += x`, elementwise (a bias gradient, 4H numbers).
fn add_into(acc: &mut [f32], x: &[f32]) {
    acc.iter_mut().zip(x).for_each(|(a, &b)| *a += b);
}

/// Two disjoint tensors of a flat buffer, mutably (`first` lies before `second`).
fn two_mut(buf: &mut [f32], first: Span, second: Span) -> (&mut [f32], &mut [f32]) {
    let (lo, hi) = buf.split_at_mut(second.start);
    (first.of_mut(lo), &mut hi[..second.len])
}

/// A layer's initial state (h_0, c_0), (B, H) each: the carried state, or zeros.
fn initial_state(h0: &mut [f32], c0: &mut [f32], carried: Option<(&[f32], &[f32])>) {
    match carried {
        Some((h, c)) => {
            h0.copy_from_slice(h);
            c0.copy_from_slice(c);
        }
        None => {
            h0.fill(0.0);
            c0.fill(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
