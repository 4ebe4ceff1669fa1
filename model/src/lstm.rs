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

use kernels::Transpose::{No, Yes};
use kernels::cross_entropy::{cross_entropy_forward, cross_entropy_fused_inplace};
use kernels::elementwise::{bias_backward, bias_forward};
use kernels::embedding::{embedding_backward, embedding_forward};
use kernels::recurrence::{
    Backward, Forward, PackedWhh, lstm_backward, lstm_forward, lstm_pack_backward,
    lstm_pack_forward,
};
use kernels::{LstmDims, Precision, gemm};
use serde_json::json;

use crate::checkpoint::{self, CheckpointError};
use crate::lm::{
    ConfigError, Decoder, InputError, LanguageModel, ModelKind, check_tokenizer, check_vocab,
    invalid, tokenizer_field,
};
use crate::memory::Sat;
use crate::params::ParamLayout;
use crate::rng::SplitMix64;
use crate::tokenizer::TokenizerKind;

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
    /// Tokenizer the model was trained with (`byte` or `gpt2`); `None` when not known (see
    /// [`TokenizerKind::infer`]).
    pub tokenizer: Option<TokenizerKind>,
}

impl LstmConfig {
    /// The preset names, in `--help` order.
    pub const PRESETS: [&'static str; 2] = ["tiny", "small"];

    /// A model of vocabulary `vocab_size`, its tokenizer [`TokenizerKind::infer`]red (known
    /// only for GPT-2's vocabulary; set the field, or use [`Self::preset`], for another).
    pub fn new(vocab_size: usize, hidden_size: usize, num_layers: usize) -> Self {
        LstmConfig {
            vocab_size,
            hidden_size,
            num_layers,
            tokenizer: TokenizerKind::infer(vocab_size),
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

    /// A preset by name ([`Self::PRESETS`]) for `tokenizer`'s vocabulary.
    pub fn preset(name: &str, tokenizer: TokenizerKind) -> Result<Self, ConfigError> {
        let v = tokenizer.vocab_size() as usize;
        let config = match name {
            "tiny" => Self::tiny(v),
            "small" => Self::small(v),
            _ => {
                return Err(ConfigError::UnknownPreset {
                    kind: ModelKind::Lstm,
                    name: name.to_string(),
                });
            }
        };
        Ok(LstmConfig {
            tokenizer: Some(tokenizer),
            ..config
        })
    }

    /// Checks the invariants the model relies on: every size at least 1, parameters a
    /// process can address, token ids that fit `u32`, the tokenizer's vocabulary.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_layers", self.num_layers),
        ] {
            if value == 0 {
                return Err(invalid(field, value, "must be at least 1"));
            }
        }
        let params = self.num_params_u128();
        if params > (isize::MAX as u128) / 8 {
            return Err(ConfigError::TooLarge {
                sizes: format!(
                    "hidden_size {} and num_layers {}",
                    self.hidden_size, self.num_layers
                ),
                params,
            });
        }
        if self.vocab_size > u32::MAX as usize {
            return Err(invalid("vocab_size", self.vocab_size, "token ids are u32"));
        }
        check_tokenizer(self.tokenizer, self.vocab_size)
    }

    /// Parameter count: V·H + L·(2·4H·H + 2·4H) + V·H + V.
    pub fn num_params(&self) -> usize {
        Layout::new(self).0.len()
    }

    /// [`Self::num_params`] without overflow, for sizes not yet validated:
    /// 2·V·H + L·(8H² + 8H) + V.
    pub fn num_params_u128(&self) -> u128 {
        let (v, h, l) = self.sizes_u128();
        (Sat(2) * v * h + l * (Sat(8) * h * h + Sat(8) * h) + v).0
    }

    /// (V, H, L) for saturating size arithmetic.
    fn sizes_u128(&self) -> (Sat, Sat, Sat) {
        (
            Sat(self.vocab_size as u128),
            Sat(self.hidden_size as u128),
            Sat(self.num_layers as u128),
        )
    }

    /// Floats of activations and scratch for a (B, T) forward and backward, as `Lstm`
    /// allocates them (ids counted as floats): per position 6H + 6LH + V + 4, plus the
    /// projected table 4VH, the states' extra row 2LBH, the walk's packed 4H·H and 2BH + 12H.
    pub fn activation_floats(&self, b: usize, t: usize) -> u128 {
        let (v, h, l) = self.sizes_u128();
        let (b, n) = (Sat(b as u128), Sat(b as u128) * Sat(t as u128));
        let per_position = Sat(6) * h + Sat(6) * l * h + v + Sat(4);
        let fixed = Sat(4) * v * h + Sat(2) * l * b * h + Sat(4) * h * h + Sat(2) * b * h;
        (n * per_position + fixed + Sat(12) * h).0
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "model_type": MODEL_TYPE,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "tokenizer": self.tokenizer.map(TokenizerKind::name),
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
        let field = value.get("tokenizer");
        // Lanes once wrote `gpt2` for every vocabulary but 257: such a name says nothing.
        let legacy = field.and_then(|t| t.as_str()) == Some(TokenizerKind::Gpt2.name())
            && config.vocab_size != TokenizerKind::Gpt2.vocab_size() as usize;
        if !legacy {
            config.tokenizer =
                tokenizer_field(field, config.vocab_size).map_err(|e| err(e.to_string()))?;
        }
        config.validate().map_err(|e| err(e.to_string()))?;
        Ok(config)
    }
}

/// Where each tensor sits in the flat parameter buffer.
#[derive(Clone, Debug)]
struct Layout {
    emb: Span,
    layers: Vec<LayerParams>,
    head_w: Span,
    head_b: Span,
}

#[derive(Clone, Debug)]
struct LayerParams {
    w_ih: Span,
    w_hh: Span,
    b_ih: Span,
    b_hh: Span,
}

/// One tensor's elements in a flat buffer (parameters or gradients).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: usize,
    len: usize,
}

impl Span {
    fn of(self, buf: &[f32]) -> &[f32] {
        &buf[self.start..][..self.len]
    }

    fn of_mut(self, buf: &mut [f32]) -> &mut [f32] {
        &mut buf[self.start..][..self.len]
    }
}

impl From<Range<usize>> for Span {
    fn from(r: Range<usize>) -> Self {
        Span {
            start: r.start,
            len: r.len(),
        }
    }
}

impl Layout {
    /// PyTorch's names and state-dict order, so the checkpoint loads into `nn.LSTM` as is.
    fn new(c: &LstmConfig) -> (ParamLayout, Layout) {
        let (v, h) = (c.vocab_size, c.hidden_size);
        let mut p = ParamLayout::new();
        let emb = p.push("emb.weight", &[v, h]).into();
        let layers = (0..c.num_layers)
            .map(|l| LayerParams {
                w_ih: p.push(format!("lstm.weight_ih_l{l}"), &[G * h, h]).into(),
                w_hh: p.push(format!("lstm.weight_hh_l{l}"), &[G * h, h]).into(),
                b_ih: p.push(format!("lstm.bias_ih_l{l}"), &[G * h]).into(),
                b_hh: p.push(format!("lstm.bias_hh_l{l}"), &[G * h]).into(),
            })
            .collect();
        let head_w = p.push("head.weight", &[v, h]).into();
        let head_b = p.push("head.bias", &[v]).into();
        let at = Layout {
            emb,
            layers,
            head_w,
            head_b,
        };
        (p, at)
    }
}

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

    /// Loads `dir/config.json` and `dir/model.safetensors` (PyTorch `nn.LSTM` names), checking
    /// every name, shape and dtype against the config. A `dir` that an interrupted save left
    /// without its files is read from the `.prev` copy beside it.
    pub fn load(dir: &Path) -> Result<Self, CheckpointError> {
        let dir = checkpoint::resolve(dir)?;
        let path = dir.join(checkpoint::CONFIG_FILE);
        let config = LstmConfig::from_json(&checkpoint::read_json(&path)?, &path)?;
        let file = dir.join(checkpoint::MODEL_FILE);
        checkpoint::check_before_loading(
            &file,
            &Layout::new(&config).0,
            |name| Some(name.to_string()),
            config.num_params_u128(),
        )?;
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
        self.grads.fill(0.0);
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

/// Token-by-token inference with the (h, c) of every layer: the same computation as
/// [`Lstm::forward`] with B = T = 1, W_hh packed once for the decoder's lifetime. Its
/// one-row products run in fp32 whatever the model's precision: a bf16 product would round
/// W_ih and the head to bf16 again at every token, costing more than the product saves.
pub struct LstmDecoder<'a> {
    model: &'a Lstm,
    packed: Vec<PackedWhh<Forward>>, // (L) W_hh of each layer
    bias: Vec<f32>,                  // (L, 4H) b_ih + b_hh
    hs: Vec<f32>,                    // (L, 2, H) per layer: h_{t-1}, h_t
    cs: Vec<f32>,                    // (L, 2, H)
    gates: Vec<f32>,                 // (4H)
    x: Vec<f32>,                     // (H)
    logits: Vec<f32>,                // (V)
    position: usize,
}

impl<'a> LstmDecoder<'a> {
    pub fn new(model: &'a Lstm) -> Self {
        let (v, h, nl) = (
            model.config.vocab_size,
            model.config.hidden_size,
            model.config.num_layers,
        );
        let mut packed: Vec<_> = (0..nl).map(|_| PackedWhh::new()).collect();
        let mut bias = vec![0.0; nl * G * h];
        for (l, lp) in model.at.layers.iter().enumerate() {
            let w_hh = lp.w_hh.of(&model.params);
            lstm_pack_forward(&mut packed[l], w_hh, h, Precision::F32);
            let pairs = lp
                .b_ih
                .of(&model.params)
                .iter()
                .zip(lp.b_hh.of(&model.params));
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
    #[rustfmt::skip] // one kernel call per line, mirroring `Lstm::forward` with B = T = 1
    fn feed(&mut self, token: u32) -> Result<&[f32], InputError> {
        let m = self.model;
        let (v, h) = (m.config.vocab_size, m.config.hidden_size);
        check_vocab(v, &[token])?;
        embedding_forward(&mut self.x, &[token], m.at.emb.of(&m.params), h);
        for (l, lp) in m.at.layers.iter().enumerate() {
            let (hs, cs) = (&mut self.hs[l * 2 * h..][..2 * h], &mut self.cs[l * 2 * h..][..2 * h]);
            linear_forward(&mut self.gates, &self.x, lp.w_ih.of(&m.params), &self.bias[l * G * h..][..G * h], 1, h, G * h, Precision::F32);
            lstm_forward(hs, cs, &mut self.gates, &self.packed[l], LstmDims { b: 1, t: 1, h });
            hs.copy_within(h.., 0); // h_t becomes h_{t-1} of the next token
            cs.copy_within(h.., 0);
            self.x.copy_from_slice(&hs[..h]);
        }
        linear_forward(&mut self.logits, &self.x, m.at.head_w.of(&m.params), m.at.head_b.of(&m.params), 1, h, v, Precision::F32);
        self.position += 1;
        Ok(&self.logits)
    }

    fn vocab_size(&self) -> usize {
        self.model.config.vocab_size
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
    fn the_tokenizer_is_typed_and_inferred_by_the_one_rule() {
        let p = Path::new("config.json");
        // V = 1000 is no Lanes tokenizer's vocabulary (it was once called gpt2).
        let odd = LstmConfig::new(1000, 8, 1);
        assert_eq!(odd.tokenizer, None);
        assert!(odd.to_json()["tokenizer"].is_null());
        assert_eq!(LstmConfig::from_json(&odd.to_json(), p).unwrap(), odd);
        let mut legacy = odd.to_json();
        legacy["tokenizer"] = json!("gpt2"); // as checkpoints before the type were written
        assert_eq!(LstmConfig::from_json(&legacy, p).unwrap(), odd);
        legacy["tokenizer"] = json!("byte"); // a real contradiction is refused
        let e = LstmConfig::from_json(&legacy, p).unwrap_err().to_string();
        assert!(
            e.contains("byte tokenizer has 257") && e.contains("config.json"),
            "{e}"
        );
        legacy["tokenizer"] = json!("bpe");
        let e = LstmConfig::from_json(&legacy, p).unwrap_err().to_string();
        assert!(e.contains("`tokenizer`"), "{e}");
        assert_eq!(
            LstmConfig::new(50257, 8, 1).tokenizer,
            Some(TokenizerKind::Gpt2)
        );
        // 257 alone does not say `byte`; the preset for the byte tokenizer does, on disk too.
        assert_eq!(LstmConfig::new(257, 8, 1).tokenizer, None);
        let byte = LstmConfig::preset("tiny", TokenizerKind::Byte).unwrap();
        assert_eq!(
            (byte.vocab_size, byte.tokenizer),
            (257, Some(TokenizerKind::Byte))
        );
        assert_eq!(byte.to_json()["tokenizer"], "byte");
        assert_eq!(LstmConfig::from_json(&byte.to_json(), p).unwrap(), byte);
        let bad = LstmConfig {
            vocab_size: 300,
            ..byte
        };
        assert!(bad.validate().unwrap_err().to_string().contains("257"));
    }

    #[test]
    fn presets_share_the_transformers_error_type() {
        let gpt2 = LstmConfig::preset("small", TokenizerKind::Gpt2).unwrap();
        assert_eq!((gpt2.vocab_size, gpt2.hidden_size), (50257, 360));
        let e: ConfigError = LstmConfig::preset("gpt2", TokenizerKind::Byte).unwrap_err();
        assert_eq!(
            e,
            ConfigError::UnknownPreset {
                kind: ModelKind::Lstm,
                name: "gpt2".into()
            }
        );
        assert!(
            e.to_string().contains("no LSTM preset `gpt2`")
                && e.to_string().contains("tiny, small")
        );
        let e: ConfigError = crate::GptConfig::preset("huge").unwrap_err();
        assert!(e.to_string().contains("no GPT preset `huge`"), "{e}");
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
