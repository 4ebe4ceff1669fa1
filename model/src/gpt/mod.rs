//! A GPT-2-architecture transformer: forward, hand-written backward, checkpoints, a KV-cache
//! decoder. Reads like llm.c's `train_gpt2.c`.
//!
//! ```text
//! x = wte[tokens] + wpe[0..T]                                    (B, T, C)
//! L × { x = x + c_proj(attention(c_attn(ln_1(x))))               pre-LN, causal, NH heads
//!       x = x + c_proj(gelu_tanh(c_fc(ln_2(x)))) }               MLP 4C wide
//! logits = ln_f(x) · wteᵀ                                        (B, T, V), tied head
//! loss = mean over B·T of −ln softmax(logits)[target]
//! ```
//!
//! Parameters and gradients are flat buffers with named views ([`tensors`]) in Hugging Face
//! GPT-2's names and order. Every activation backward needs is kept in one `Activations` set,
//! allocated for the largest B·T seen (no allocation per step); backward turns the logits into
//! their gradient in place, so the biggest buffer (B·T·V) exists once. `backward()` is
//! `forward()` read in reverse, one kernel call per line. Results do not depend on the thread
//! count because every kernel's do not. Leaves out: dropout, activation
//! recomputation, batched decoding.
//!
//! Mixed precision: with [`Gpt::set_precision`]`(Precision::Bf16)` every matrix product runs
//! with bf16 operands and fp32 accumulation (the weights packed once per optimizer step, see
//! `packed.rs`); parameters, gradients, optimizer state and every other layer stay fp32.

pub mod config;
mod decoder;
mod io;
mod packed;
pub mod tensors;

use config::LAYER_NORM_EPS as EPS;
pub use config::{ConfigError, GptConfig};
pub use decoder::GptDecoder;

use kernels::Transpose::{No, Yes};
use kernels::attention::{attention_backward, attention_forward};
use kernels::cross_entropy::{cross_entropy_forward, cross_entropy_fused_inplace};
use kernels::elementwise::{add_assign, bias_backward, bias_forward};
use kernels::embedding::{encoder_backward, encoder_forward};
use kernels::gelu::{gelu_backward, gelu_forward};
use kernels::layernorm::{layernorm_backward, layernorm_forward};
use kernels::{AttnDims, Precision, gemm, gemm_packed, sgemm};

use crate::lm::{Decoder, LanguageModel, ModelKind};
use crate::params::ParamLayout;
use crate::rng::SplitMix64;

use packed::{PackedPair, PackedWeights};
use tensors::{Block, Tensors, block_len};

/// GPT-2's initializer standard deviation.
const INIT_STD: f32 = 0.02;

/// The transformer with its parameters, gradients and the activations of the last forward.
pub struct Gpt {
    config: GptConfig,
    layout: ParamLayout,
    params: Vec<f32>, // (num_params), in `layout` order
    grads: Vec<f32>,  // (num_params)
    acts: Activations,
    /// Tokens of the last forward, (B, T) each.
    inputs: Vec<u32>,
    targets: Vec<u32>,
    /// B and T of the last forward.
    b: usize,
    t: usize,
    /// Whether `acts.logits` holds logits (after forward) or their gradient (after backward).
    logits_are_grads: bool,
    /// The precision of the matrix products (the one this build runs, see `set_precision`).
    precision: Precision,
    /// In bf16, the weight matrices packed for the products; re-packed when stale.
    packed: PackedWeights,
}

/// Saved forward activations and backward scratch, all sized for `bt` = B·T positions;
/// per-layer buffers hold L such slabs, layer-major.
#[derive(Default)]
struct Activations {
    bt: usize,
    encoded: Vec<f32>,   // (B, T, C)      wte + wpe
    ln1: Vec<f32>,       // (L, B, T, C)
    ln1_mean: Vec<f32>,  // (L, B, T)
    ln1_rstd: Vec<f32>,  // (L, B, T)
    qkv: Vec<f32>,       // (L, B, T, 3C)
    atty: Vec<f32>,      // (L, B, T, C)   attention output, heads side by side
    att_lse: Vec<f32>,   // (L, B, NH, T)  softmax log-normalizers for the attention backward
    residual2: Vec<f32>, // (L, B, T, C)   after the attention branch
    ln2: Vec<f32>,       // (L, B, T, C)
    ln2_mean: Vec<f32>,  // (L, B, T)
    ln2_rstd: Vec<f32>,  // (L, B, T)
    fch: Vec<f32>,       // (L, B, T, 4C)  before GELU
    fch_gelu: Vec<f32>,  // (L, B, T, 4C)
    residual3: Vec<f32>, // (L, B, T, C)   block output
    lnf: Vec<f32>,       // (B, T, C)
    lnf_mean: Vec<f32>,  // (B, T)
    lnf_rstd: Vec<f32>,  // (B, T)
    logits: Vec<f32>,    // (B, T, V)      dlogits in place after backward
    losses: Vec<f32>,    // (B, T)
    // Backward scratch: gradients of activations, reused by every layer.
    dresidual: Vec<f32>, // (B, T, C)      gradient of the residual stream
    dln: Vec<f32>,       // (B, T, C)      of a LayerNorm output (or of atty)
    dtmp: Vec<f32>,      // (B, T, C)      a LayerNorm input's, before joining dresidual
    dqkv: Vec<f32>,      // (B, T, 3C)
    dfch_gelu: Vec<f32>, // (B, T, 4C)
    dfch: Vec<f32>,      // (B, T, 4C)
}

impl Activations {
    /// Makes room for `bt` positions; reallocates only when `bt` exceeds what is there.
    fn reserve(&mut self, cfg: &GptConfig, bt: usize) {
        if bt <= self.bt {
            return;
        }
        let (l, c, nh, v) = (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.vocab_size);
        let z = |n: usize| vec![0.0f32; n];
        *self = Activations {
            bt,
            encoded: z(bt * c),
            ln1: z(l * bt * c),
            ln1_mean: z(l * bt),
            ln1_rstd: z(l * bt),
            qkv: z(l * bt * 3 * c),
            atty: z(l * bt * c),
            att_lse: z(l * bt * nh),
            residual2: z(l * bt * c),
            ln2: z(l * bt * c),
            ln2_mean: z(l * bt),
            ln2_rstd: z(l * bt),
            fch: z(l * bt * 4 * c),
            fch_gelu: z(l * bt * 4 * c),
            residual3: z(l * bt * c),
            lnf: z(bt * c),
            lnf_mean: z(bt),
            lnf_rstd: z(bt),
            logits: z(bt * v),
            losses: z(bt),
            dresidual: z(bt * c),
            dln: z(bt * c),
            dtmp: z(bt * c),
            dqkv: z(bt * 3 * c),
            dfch_gelu: z(bt * 4 * c),
            dfch: z(bt * 4 * c),
        };
    }

    /// Bytes held.
    fn bytes(&self) -> usize {
        let floats = [
            &self.encoded,
            &self.ln1,
            &self.ln1_mean,
            &self.ln1_rstd,
            &self.qkv,
            &self.atty,
            &self.att_lse,
            &self.residual2,
            &self.ln2,
            &self.ln2_mean,
            &self.ln2_rstd,
            &self.fch,
            &self.fch_gelu,
            &self.residual3,
            &self.lnf,
            &self.lnf_mean,
            &self.lnf_rstd,
            &self.logits,
            &self.losses,
            &self.dresidual,
            &self.dln,
            &self.dtmp,
            &self.dqkv,
            &self.dfch_gelu,
            &self.dfch,
        ]
        .iter()
        .map(|v| v.len())
        .sum::<usize>();
        floats * std::mem::size_of::<f32>()
    }
}

/// Layer `l`'s slab of a per-layer buffer whose slabs are `n` long.
fn layer(buf: &[f32], l: usize, n: usize) -> &[f32] {
    &buf[l * n..][..n]
}

fn layer_mut(buf: &mut [f32], l: usize, n: usize) -> &mut [f32] {
    &mut buf[l * n..][..n]
}

/// `out` (N, OC) = `inp` (N, IC) · `w` (IC, OC) + `b` (OC): a Conv1D (Hugging Face's layout).
/// With `pk` (the packings of `w`), the product runs in bf16.
#[allow(clippy::too_many_arguments)]
fn matmul_forward(
    out: &mut [f32],
    inp: &[f32],
    w: &[f32],
    b: &[f32],
    n: usize,
    ic: usize,
    oc: usize,
    pk: Option<&PackedPair>,
) {
    match pk {
        Some(pk) => gemm_packed(No, n, 1.0, inp, ic, &pk.fwd, 0.0, out, oc),
        None => sgemm(No, No, n, oc, ic, 1.0, inp, ic, w, oc, 0.0, out, oc),
    }
    bias_forward(out, b, n, oc);
}

/// `out` = `residual` + `inp` · `w` + `b`: a projection added onto the residual stream, with
/// no buffer for the projection itself (the GEMM accumulates into `out`, beta = 1).
#[allow(clippy::too_many_arguments)]
fn matmul_residual_forward(
    out: &mut [f32],
    residual: &[f32],
    inp: &[f32],
    w: &[f32],
    b: &[f32],
    n: usize,
    ic: usize,
    oc: usize,
    pk: Option<&PackedPair>,
) {
    kernels::elementwise::copy(out, residual);
    bias_forward(out, b, n, oc);
    match pk {
        Some(pk) => gemm_packed(No, n, 1.0, inp, ic, &pk.fwd, 1.0, out, oc),
        None => sgemm(No, No, n, oc, ic, 1.0, inp, ic, w, oc, 1.0, out, oc),
    }
}

/// Gradient of [`matmul_forward`]: `dinp = dout · wᵀ` (overwritten), `dw += inpᵀ · dout`,
/// `db += Σ_rows dout`. With `pk`, both products run in bf16 (the gradients stay fp32).
#[allow(clippy::too_many_arguments)]
fn matmul_backward(
    dinp: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    w: &[f32],
    n: usize,
    ic: usize,
    oc: usize,
    pk: Option<&PackedPair>,
) {
    match pk {
        Some(pk) => gemm_packed(No, n, 1.0, dout, oc, &pk.bwd, 0.0, dinp, ic),
        None => sgemm(No, Yes, n, ic, oc, 1.0, dout, oc, w, oc, 0.0, dinp, ic),
    }
    let precision = if pk.is_some() {
        Precision::Bf16
    } else {
        Precision::F32
    };
    gemm(
        precision, Yes, No, ic, oc, n, 1.0, inp, ic, dout, oc, 1.0, dw, oc,
    );
    bias_backward(db, dout, n, oc);
}

impl Gpt {
    /// A freshly initialized model: GPT-2's init, drawn from `seed` in layout order —
    /// weights and embeddings normal(0, 0.02), the two residual projections of every block
    /// (`attn.c_proj`, `mlp.c_proj`) normal(0, 0.02/√(2L)), biases 0, LayerNorm gains 1.
    pub fn new(config: GptConfig, seed: u64) -> Result<Gpt, ConfigError> {
        let mut model = Gpt::zeroed(config)?;
        let mut rng = SplitMix64::new(seed);
        let proj_std = INIT_STD / (2.0 * model.config.n_layer as f32).sqrt();
        for t in model.layout.tensors() {
            let p = &mut model.params[t.range()];
            let name = &t.name;
            if name.ends_with(".bias") {
                p.fill(0.0);
            } else if name.contains(".ln_") {
                p.fill(1.0);
            } else if name.ends_with("c_proj.weight") {
                rng.fill_normal(p, proj_std);
            } else {
                rng.fill_normal(p, INIT_STD);
            }
        }
        Ok(model)
    }

    /// All parameters zero (to be filled from a checkpoint).
    fn zeroed(config: GptConfig) -> Result<Gpt, ConfigError> {
        config.validate()?;
        let layout = tensors::layout(&config);
        let n = layout.len();
        Ok(Gpt {
            config,
            layout,
            params: vec![0.0; n],
            grads: vec![0.0; n],
            acts: Activations::default(),
            inputs: Vec::new(),
            targets: Vec::new(),
            b: 0,
            t: 0,
            logits_are_grads: false,
            precision: Precision::F32,
            packed: PackedWeights::default(),
        })
    }

    pub fn config(&self) -> &GptConfig {
        &self.config
    }

    /// The packed weights, when the model runs in bf16 and they match the parameters.
    fn packed(&self) -> Option<&PackedWeights> {
        self.packed.fresh.then_some(&self.packed)
    }

    /// Logits (B, T, V) of the last forward. Panics after `backward`, which overwrites them
    /// with their gradient.
    pub fn logits(&self) -> &[f32] {
        assert!(
            !self.logits_are_grads,
            "Gpt::logits: backward has overwritten the logits with their gradient"
        );
        &self.acts.logits[..self.b * self.t * self.config.vocab_size]
    }

    /// The (T, T) causal attention probabilities of head `head` in block `layer` for batch
    /// row `row` of the last forward, row-major (`probs[i·T + j]` = how much position i
    /// attends to j ≤ i), recomputed from the saved q and k by
    /// [`kernels::attention::attention_probs`]. For plots (`runner score --plot-attention`).
    pub fn attention_probs(&self, probs: &mut [f32], layer: usize, head: usize, row: usize) {
        let cfg = &self.config;
        let (b, t, c) = (self.b, self.t, cfg.n_embd);
        assert!(b * t > 0, "Gpt::attention_probs: needs a forward first");
        assert!(
            layer < cfg.n_layer,
            "Gpt::attention_probs: layer {layer} of {}",
            cfg.n_layer
        );
        let qkv = self::layer(&self.acts.qkv, layer, b * t * 3 * c); // (B, T, 3C)
        let dims = AttnDims {
            b,
            t,
            c,
            nh: cfg.n_head,
        };
        kernels::attention::attention_probs(probs, qkv, dims, row, head);
    }

    /// Bytes of activation and scratch memory held (grows with the largest B·T seen), and of
    /// the bf16 packings of the weights.
    pub fn activation_bytes(&self) -> usize {
        self.acts.bytes() + self.packed.bytes()
    }

    /// The forward pass up to the logits, keeping every activation backward needs.
    #[rustfmt::skip] // one kernel call per line, as in llm.c, so forward and backward mirror
    fn forward_logits(&mut self, inputs: &[u32], b: usize, t: usize) {
        let cfg = &self.config;
        let (l_n, c, nh, v) = (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.vocab_size);
        assert_eq!(inputs.len(), b * t, "Gpt::forward: inputs must be (B, T) = ({b}, {t})");
        assert!(
            t <= cfg.n_positions,
            "Gpt::forward: T = {t} exceeds the context of {} positions",
            cfg.n_positions
        );
        if let Some(&bad) = inputs.iter().find(|&&tok| tok as usize >= v) {
            panic!("Gpt::forward: token id {bad} is outside the vocabulary of {v}");
        }
        let bt = b * t;
        if self.precision == Precision::Bf16 && !self.packed.fresh {
            self.packed.pack(&self.params, cfg);
        }
        self.acts.reserve(cfg, bt);
        self.inputs.clear();
        self.inputs.extend_from_slice(inputs);
        (self.b, self.t, self.logits_are_grads) = (b, t, false);

        let p = Tensors::split(&self.params[..], cfg);
        let pk = self.packed.fresh.then_some(&self.packed);
        let prec = self.precision;
        let a = &mut self.acts;
        let (btc, bt3c, bt4c) = (bt * c, bt * 3 * c, bt * 4 * c);

        encoder_forward(&mut a.encoded[..btc], inputs, p.wte, p.wpe, b, t, c);
        for l in 0..l_n {
            let w = Block::of(p.h, l, c);
            let wp = pk.map(|pk| &pk.blocks[l]);
            let residual = if l == 0 {
                &a.encoded[..btc]
            } else {
                layer(&a.residual3, l - 1, btc)
            };
            let ln1 = layer_mut(&mut a.ln1, l, btc); // (B, T, C)
            let ln1_mean = layer_mut(&mut a.ln1_mean, l, bt);
            let ln1_rstd = layer_mut(&mut a.ln1_rstd, l, bt);
            let qkv = layer_mut(&mut a.qkv, l, bt3c); // (B, T, 3C)
            let atty = layer_mut(&mut a.atty, l, btc); // (B, T, C)
            let att_lse = layer_mut(&mut a.att_lse, l, bt * nh); // (B, NH, T)
            let residual2 = layer_mut(&mut a.residual2, l, btc); // (B, T, C)
            let ln2 = layer_mut(&mut a.ln2, l, btc);
            let ln2_mean = layer_mut(&mut a.ln2_mean, l, bt);
            let ln2_rstd = layer_mut(&mut a.ln2_rstd, l, bt);
            let fch = layer_mut(&mut a.fch, l, bt4c); // (B, T, 4C)
            let fch_gelu = layer_mut(&mut a.fch_gelu, l, bt4c); // (B, T, 4C)

            layernorm_forward(ln1, ln1_mean, ln1_rstd, residual, w.ln1_w, w.ln1_b, bt, c, EPS);
            matmul_forward(qkv, ln1, w.qkv_w, w.qkv_b, bt, c, 3 * c, wp.map(|p| &p.qkv));
            attention_forward(atty, att_lse, qkv, AttnDims { b, t, c, nh }, prec);
            matmul_residual_forward(residual2, residual, atty, w.attproj_w, w.attproj_b, bt, c, c, wp.map(|p| &p.attproj));
            layernorm_forward(ln2, ln2_mean, ln2_rstd, residual2, w.ln2_w, w.ln2_b, bt, c, EPS);
            matmul_forward(fch, ln2, w.fc_w, w.fc_b, bt, c, 4 * c, wp.map(|p| &p.fc));
            gelu_forward(fch_gelu, fch);
            let residual3 = layer_mut(&mut a.residual3, l, btc); // (B, T, C)
            matmul_residual_forward(residual3, residual2, fch_gelu, w.fcproj_w, w.fcproj_b, bt, 4 * c, c, wp.map(|p| &p.fcproj));
        }
        let residual = layer(&a.residual3, l_n - 1, btc);
        let lnf = &mut a.lnf[..btc]; // (B, T, C)
        layernorm_forward(lnf, &mut a.lnf_mean[..bt], &mut a.lnf_rstd[..bt], residual, p.lnf_w, p.lnf_b, bt, c, EPS);
        let logits = &mut a.logits[..bt * v]; // (B, T, V)
        match pk {
            Some(pk) => gemm_packed(No, bt, 1.0, lnf, c, &pk.wte.fwd, 0.0, logits, v),
            None => sgemm(No, Yes, bt, v, c, 1.0, lnf, c, p.wte, c, 0.0, logits, v),
        }
    }
}

impl LanguageModel for Gpt {
    fn kind(&self) -> ModelKind {
        ModelKind::Gpt
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn max_seq_len(&self) -> Option<usize> {
        Some(self.config.n_positions)
    }

    fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    fn params(&self) -> &[f32] {
        &self.params
    }

    fn params_mut(&mut self) -> &mut [f32] {
        self.packed.fresh = false;
        &mut self.params
    }

    fn grads(&self) -> &[f32] {
        &self.grads
    }

    fn grads_mut(&mut self) -> &mut [f32] {
        &mut self.grads
    }

    fn params_and_grads(&mut self) -> (&mut [f32], &[f32]) {
        self.packed.fresh = false;
        (&mut self.params, &self.grads)
    }

    fn zero_grad(&mut self) {
        kernels::elementwise::fill(&mut self.grads, 0.0);
    }

    /// The precision of the matrix products: fp32 (the default), or bf16 operands with fp32
    /// accumulation. Parameters, gradients, LayerNorm, GELU, softmax and the loss stay fp32
    /// either way (mixed precision with fp32 master weights).
    fn precision(&self) -> Precision {
        self.precision
    }

    /// Sets the precision of the matrix products; returns the one this build runs
    /// ([`Precision::effective`]: bf16 becomes fp32 where the build lacks AVX512_BF16). In
    /// bf16 the weight matrices are packed now, and again after every change of the
    /// parameters (`params_mut`), at the next forward.
    fn set_precision(&mut self, precision: Precision) -> Precision {
        self.precision = precision.effective();
        match self.precision {
            Precision::Bf16 => self.packed.pack(&self.params, &self.config),
            Precision::F32 => self.packed.clear(),
        }
        self.precision
    }

    fn forward(&mut self, inputs: &[u32], targets: &[u32], b: usize, t: usize) -> f32 {
        let v = self.config.vocab_size;
        assert_eq!(
            targets.len(),
            b * t,
            "Gpt::forward: targets must be (B, T) = ({b}, {t})"
        );
        if let Some(&bad) = targets.iter().find(|&&tok| tok as usize >= v) {
            panic!("Gpt::forward: target id {bad} is outside the vocabulary of {v}");
        }
        self.forward_logits(inputs, b, t);
        self.targets.clear();
        self.targets.extend_from_slice(targets);
        let bt = b * t;
        let a = &mut self.acts;
        cross_entropy_forward(
            &mut a.losses[..bt],
            &a.logits[..bt * v],
            targets,
            bt,
            v,
            None,
        )
    }

    fn token_losses(&self) -> &[f32] {
        &self.acts.losses[..self.b * self.t]
    }

    fn position_logits(&self, row: usize, position: usize) -> &[f32] {
        let (b, t, v) = (self.b, self.t, self.config.vocab_size);
        assert!(
            row < b && position < t,
            "Gpt::position_logits: ({row}, {position}) is outside the last forward's (B, T) = ({b}, {t})"
        );
        &self.logits()[(row * t + position) * v..][..v] // (B, T, V)
    }

    fn backward(&mut self) {
        self.backward_ready(&mut |_, _| {});
    }

    /// Reports, back to front: ln_f (bias, then gain) once its backward is done, each block
    /// after its own, then wpe and wte (wte also receives the head's gradient, so it is final
    /// only after the encoder's backward).
    #[rustfmt::skip] // one kernel call per line, as in llm.c, so forward and backward mirror
    fn backward_ready(&mut self, ready: &mut dyn FnMut(usize, &[f32])) {
        assert!(
            self.b * self.t > 0 && !self.logits_are_grads,
            "Gpt::backward: needs a forward (with targets) since the last backward"
        );
        let Gpt { config: cfg, params, grads, acts: a, inputs, targets, b, t, packed, .. } = self;
        let pk = packed.fresh.then_some(&*packed);
        let prec = if pk.is_some() { Precision::Bf16 } else { Precision::F32 };
        let (b, t) = (*b, *t);
        let (l_n, c, nh, v) = (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.vocab_size);
        let bt = b * t;
        let (btc, bt3c, bt4c) = (bt * c, bt * 3 * c, bt * 4 * c);
        let p = Tensors::split(&params[..], cfg);
        let g = Tensors::split(&mut grads[..], cfg);
        let dresidual = &mut a.dresidual[..btc]; // (B, T, C)
        let dln = &mut a.dln[..btc]; // (B, T, C)
        let dtmp = &mut a.dtmp[..btc]; // (B, T, C)
        let dqkv = &mut a.dqkv[..bt3c]; // (B, T, 3C)
        let dfch_gelu = &mut a.dfch_gelu[..bt4c]; // (B, T, 4C)
        let dfch = &mut a.dfch[..bt4c]; // (B, T, 4C)

        // loss = mean NLL: dlogits = (softmax − onehot) / (B·T), in place of the logits.
        let dlogits = &mut a.logits[..bt * v]; // (B, T, V)
        cross_entropy_fused_inplace(dlogits, &mut a.losses[..bt], targets, bt, v, None);
        let dlogits = &*dlogits;
        // logits = lnf · wteᵀ
        let lnf = &a.lnf[..btc];
        match pk {
            Some(pk) => gemm_packed(No, bt, 1.0, dlogits, v, &pk.wte.bwd, 0.0, dln, c),
            None => sgemm(No, No, bt, c, v, 1.0, dlogits, v, p.wte, c, 0.0, dln, c),
        }
        gemm(prec, Yes, No, v, c, bt, 1.0, dlogits, v, lnf, c, 1.0, g.wte, c);
        let residual = layer(&a.residual3, l_n - 1, btc);
        layernorm_backward(dresidual, g.lnf_w, g.lnf_b, dln, residual, p.lnf_w, &a.lnf_mean[..bt], &a.lnf_rstd[..bt], bt, c);
        // Offsets in the flat gradient (tensors.rs): wte (V, C), wpe (T, C), L blocks, ln_f.
        let (wpe_at, h_at) = (v * c, v * c + cfg.n_positions * c);
        let (block, lnf_at) = (block_len(c), h_at + l_n * block_len(c));
        ready(lnf_at + c, g.lnf_b);
        ready(lnf_at, g.lnf_w);

        for l in (0..l_n).rev() {
            let w = Block::of(p.h, l, c);
            let wp = pk.map(|pk| &pk.blocks[l]);
            let gw = Block::of(&mut *g.h, l, c);
            let residual = if l == 0 {
                &a.encoded[..btc]
            } else {
                layer(&a.residual3, l - 1, btc)
            };
            let ln1 = layer(&a.ln1, l, btc);
            let ln1_mean = layer(&a.ln1_mean, l, bt);
            let ln1_rstd = layer(&a.ln1_rstd, l, bt);
            let qkv = layer(&a.qkv, l, bt3c);
            let atty = layer(&a.atty, l, btc);
            let att_lse = layer(&a.att_lse, l, bt * nh);
            let residual2 = layer(&a.residual2, l, btc);
            let ln2 = layer(&a.ln2, l, btc);
            let ln2_mean = layer(&a.ln2_mean, l, bt);
            let ln2_rstd = layer(&a.ln2_rstd, l, bt);
            let fch = layer(&a.fch, l, bt4c);
            let fch_gelu = layer(&a.fch_gelu, l, bt4c);

            // dresidual holds d(residual3); the MLP branch, in reverse:
            matmul_backward(dfch_gelu, gw.fcproj_w, gw.fcproj_b, dresidual, fch_gelu, w.fcproj_w, bt, 4 * c, c, wp.map(|p| &p.fcproj));
            gelu_backward(dfch, dfch_gelu, fch);
            matmul_backward(dln, gw.fc_w, gw.fc_b, dfch, ln2, w.fc_w, bt, c, 4 * c, wp.map(|p| &p.fc));
            layernorm_backward(dtmp, gw.ln2_w, gw.ln2_b, dln, residual2, w.ln2_w, ln2_mean, ln2_rstd, bt, c);
            add_assign(dresidual, dtmp); // now d(residual2)
            // the attention branch, in reverse (dln holds d(atty)):
            matmul_backward(dln, gw.attproj_w, gw.attproj_b, dresidual, atty, w.attproj_w, bt, c, c, wp.map(|p| &p.attproj));
            attention_backward(dqkv, dln, qkv, atty, att_lse, AttnDims { b, t, c, nh }, prec);
            matmul_backward(dln, gw.qkv_w, gw.qkv_b, dqkv, ln1, w.qkv_w, bt, c, 3 * c, wp.map(|p| &p.qkv));
            layernorm_backward(dtmp, gw.ln1_w, gw.ln1_b, dln, residual, w.ln1_w, ln1_mean, ln1_rstd, bt, c);
            add_assign(dresidual, dtmp); // now d(residual) = d(block input)
            ready(h_at + l * block, &g.h[l * block..(l + 1) * block]);
        }
        encoder_backward(g.wte, g.wpe, dresidual, inputs, b, t, c);
        ready(wpe_at, g.wpe);
        ready(0, g.wte);
        self.logits_are_grads = true;
    }

    fn config_json(&self) -> serde_json::Value {
        self.config.to_json()
    }

    fn decoder(&self) -> Box<dyn Decoder + '_> {
        Box::new(GptDecoder::new(self))
    }
}
