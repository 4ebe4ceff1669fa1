//! The interface both language models share, so that training, evaluation, scoring, generation
//! and the parallelism benchmark treat the transformer and the LSTM alike.
//!
//! A training step reads like llm.c's:
//!
//! ```text
//! let loss = model.forward(&inputs, &targets, B, T);   // mean NLL, keeps activations
//! model.zero_grad();
//! model.backward();                                     // grads += dLoss/dparams
//! let (params, grads) = model.params_and_grads();
//! optimizer.step(params, grads, lr);
//! ```
//!
//! Leaves out: mixed precision, gradient checkpointing, multi-sequence decoding.

use crate::params::ParamLayout;
use crate::tokenizer::TokenizerKind;
use kernels::Precision;

/// Which architecture a model is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModelKind {
    /// GPT-2-architecture transformer.
    Gpt,
    /// Multi-layer LSTM with an embedding and a linear head.
    Lstm,
}

impl ModelKind {
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Gpt => "gpt",
            ModelKind::Lstm => "lstm",
        }
    }

    /// The architecture's name in prose and messages: `GPT`, `LSTM`.
    pub fn label(self) -> &'static str {
        match self {
            ModelKind::Gpt => "GPT",
            ModelKind::Lstm => "LSTM",
        }
    }

    /// The architecture's preset names, in `--help` order.
    pub fn presets(self) -> &'static [&'static str] {
        match self {
            ModelKind::Gpt => &crate::gpt::GptConfig::PRESETS,
            ModelKind::Lstm => &crate::lstm::LstmConfig::PRESETS,
        }
    }
}

/// What is wrong with a model's configuration (either architecture), the field named.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("config field `{field}` is missing")]
    Missing { field: &'static str },
    #[error("config field `{field}` = {value}: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "there is no {} preset `{name}` (expected one of: {})",
        kind.label(),
        kind.presets().join(", ")
    )]
    UnknownPreset { kind: ModelKind, name: String },
    #[error("{sizes} give {params} parameters, more than a process can address")]
    TooLarge { sizes: String, params: u128 },
}

/// [`ConfigError::Invalid`] from anything printable.
pub(crate) fn invalid(
    field: &'static str,
    value: impl ToString,
    reason: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        field,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// A next-token language model with flat parameters and a hand-written backward pass.
pub trait LanguageModel: Send {
    fn kind(&self) -> ModelKind;

    /// Vocabulary size V: logits have V entries, token ids are `< V`.
    fn vocab_size(&self) -> usize;

    /// Longest window one forward accepts (the transformer's context); `None` if unbounded
    /// (the LSTM).
    fn max_seq_len(&self) -> Option<usize>;

    /// Names, shapes and offsets of every parameter tensor, in checkpoint order.
    fn layout(&self) -> &ParamLayout;

    /// All parameters, flat, in [`Self::layout`] order.
    fn params(&self) -> &[f32];
    fn params_mut(&mut self) -> &mut [f32];

    /// Gradients, same layout as the parameters.
    fn grads(&self) -> &[f32];

    /// Gradients, writable: where a data-parallel reduction leaves the averaged gradient.
    fn grads_mut(&mut self) -> &mut [f32];

    /// Parameters (mutable) and gradients at once, for the optimizer.
    fn params_and_grads(&mut self) -> (&mut [f32], &[f32]);

    fn zero_grad(&mut self);

    /// The precision of the matrix products: [`Precision::F32`] unless set.
    fn precision(&self) -> Precision;

    /// Sets the precision of the matrix products (mixed precision: parameters, gradients,
    /// optimizer state and the pointwise layers stay fp32); returns the one this build runs,
    /// [`Precision::effective`] (bf16 becomes fp32 where the build lacks AVX512_BF16).
    fn set_precision(&mut self, precision: Precision) -> Precision;

    /// Forward over `inputs` (B, T) predicting `targets` (B, T): returns the mean negative
    /// log-likelihood in nats per token and keeps what [`Self::backward`] needs. Panics if a
    /// token id is ≥ V or T exceeds [`Self::max_seq_len`] (callers validate data first, or
    /// call [`Self::try_forward`]).
    fn forward(&mut self, inputs: &[u32], targets: &[u32], b: usize, t: usize) -> f32;

    /// [`Self::forward`] on data from a caller that has not validated it: an [`InputError`]
    /// instead of a panic for lengths that are not B·T, an empty batch, a window longer
    /// than the context, or a token id outside the vocabulary.
    fn try_forward(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        b: usize,
        t: usize,
    ) -> Result<f32, InputError> {
        check_inputs(self.vocab_size(), self.max_seq_len(), inputs, targets, b, t)?;
        Ok(self.forward(inputs, targets, b, t))
    }

    /// Per-position losses −ln p(target | prefix), (B, T), of the last forward.
    fn token_losses(&self) -> &[f32];

    /// The logits (V) the last forward computed for batch row `row` at position `position`.
    /// A forward keeps them (evaluating never destroys them, in either model); [`Self::backward`]
    /// turns them into their gradient in place, after which this panics, as it does for a
    /// (row, position) outside the last forward's (B, T).
    fn position_logits(&self, row: usize, position: usize) -> &[f32];

    /// Accumulates the gradient of the last forward's mean loss into [`Self::grads`].
    fn backward(&mut self);

    /// [`Self::backward`], calling `ready(offset, chunk)` as each part of the gradient
    /// becomes final (`chunk` is `grads[offset..offset + chunk.len()]`), so a data-parallel
    /// reduction can start on it while the rest is computed (as PyTorch's DDP buckets do).
    /// Chunks come back to front: each ends where the one before began, the last starts at 0,
    /// and together they cover the gradient once. The default reports the whole gradient at
    /// the end.
    fn backward_ready(&mut self, ready: &mut dyn FnMut(usize, &[f32])) {
        self.backward();
        ready(0, self.grads());
    }

    /// Forgets recurrent state carried between consecutive windows (no-op for the
    /// transformer, which has none).
    fn reset_state(&mut self) {}

    /// The model's `config.json` (Hugging Face fields for GPT-2, Lanes fields for the LSTM).
    fn config_json(&self) -> serde_json::Value;

    /// A fresh incremental decoder (batch of one): each fed token costs one position.
    fn decoder(&self) -> Box<dyn Decoder + '_>;
}

/// Checks that a config's `vocab_size` is its tokenizer's, when it names one.
pub(crate) fn check_tokenizer(
    tokenizer: Option<TokenizerKind>,
    vocab_size: usize,
) -> Result<(), ConfigError> {
    match tokenizer {
        Some(k) if k.vocab_size() as usize != vocab_size => Err(invalid(
            "vocab_size",
            vocab_size,
            format!("the {k} tokenizer has {} tokens", k.vocab_size()),
        )),
        _ => Ok(()),
    }
}

/// A config.json's `tokenizer` field (absent or null: [`TokenizerKind::infer`] from the
/// vocabulary), for a model of vocabulary `vocab_size`. The name must be a Lanes tokenizer.
pub(crate) fn tokenizer_field(
    field: Option<&serde_json::Value>,
    vocab_size: usize,
) -> Result<Option<TokenizerKind>, ConfigError> {
    match field.filter(|x| !x.is_null()) {
        None => Ok(TokenizerKind::infer(vocab_size)),
        Some(x) => x
            .as_str()
            .and_then(|name| TokenizerKind::from_name(name).ok())
            .map(Some)
            .ok_or_else(|| invalid("tokenizer", x, "expected \"byte\" or \"gpt2\"")),
    }
}

/// What is wrong with tokens a caller handed a model or a decoder. Nothing is computed (and
/// a decoder's state is unchanged) when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("token id {token} is outside the vocabulary of {vocab_size}")]
    TokenOutOfRange { token: u32, vocab_size: usize },
    #[error(
        "{tokens} more tokens do not fit: {position} of the context's {capacity} positions are used (reset the decoder, or slide: feed the last tokens again)"
    )]
    ContextFull {
        position: usize,
        tokens: usize,
        capacity: usize,
    },
    #[error("a window of T = {t} exceeds the context of {capacity} positions")]
    WindowTooLong { t: usize, capacity: usize },
    #[error("{what} has {got} tokens, (B, T) = ({b}, {t}) needs {}", b * t)]
    WrongLength {
        what: &'static str,
        got: usize,
        b: usize,
        t: usize,
    },
    #[error("no tokens: the batch or prompt is empty")]
    Empty,
}

/// The checks of [`LanguageModel::try_forward`], for a model of vocabulary `v` and context
/// `capacity`.
pub fn check_inputs(
    v: usize,
    capacity: Option<usize>,
    inputs: &[u32],
    targets: &[u32],
    b: usize,
    t: usize,
) -> Result<(), InputError> {
    if b == 0 || t == 0 {
        return Err(InputError::Empty);
    }
    for (what, ids) in [("inputs", inputs), ("targets", targets)] {
        if ids.len() != b * t {
            return Err(InputError::WrongLength {
                what,
                got: ids.len(),
                b,
                t,
            });
        }
    }
    if let Some(capacity) = capacity
        && t > capacity
    {
        return Err(InputError::WindowTooLong { t, capacity });
    }
    check_vocab(v, inputs.iter().chain(targets))
}

/// The first token id `≥ v`, as an error.
pub fn check_vocab<'a>(v: usize, ids: impl IntoIterator<Item = &'a u32>) -> Result<(), InputError> {
    match ids.into_iter().find(|&&id| id as usize >= v) {
        Some(&token) => Err(InputError::TokenOutOfRange {
            token,
            vocab_size: v,
        }),
        None => Ok(()),
    }
}

/// Token-by-token inference for generation and streaming scores: the transformer keeps a KV
/// cache, the LSTM its (h, c) state. Errors (a full context, a token outside the vocabulary)
/// leave the state as it was; the policy on a full context is the caller's — start over
/// ([`Decoder::reset`]) on the last tokens, as `runner generate` slides its window.
pub trait Decoder {
    /// Feeds the next token and returns the logits (V) for the token after it.
    fn feed(&mut self, token: u32) -> Result<&[f32], InputError>;

    /// Feeds `tokens` in order and returns the logits after the last: the same logits as
    /// [`Self::feed`] on each (to rounding). The transformer runs a prompt on an empty cache
    /// as one forward pass over its positions (matrix products instead of one row at a
    /// time); otherwise tokens are fed one by one. Checks every token and the room left
    /// before feeding any.
    fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32], InputError> {
        self.check_prefill(tokens)?;
        let (last, rest) = tokens.split_last().expect("checked: not empty");
        for &token in rest {
            self.feed(token)?;
        }
        self.feed(*last)
    }

    /// The checks of [`Self::prefill`].
    fn check_prefill(&self, tokens: &[u32]) -> Result<(), InputError> {
        if tokens.is_empty() {
            return Err(InputError::Empty);
        }
        if let Some(capacity) = self.capacity()
            && self.position() + tokens.len() > capacity
        {
            return Err(InputError::ContextFull {
                position: self.position(),
                tokens: tokens.len(),
                capacity,
            });
        }
        check_vocab(self.vocab_size(), tokens)
    }

    /// Logits per step: the vocabulary size V.
    fn vocab_size(&self) -> usize;

    /// Tokens fed so far.
    fn position(&self) -> usize;

    /// How many tokens fit (`None` if unbounded).
    fn capacity(&self) -> Option<usize>;

    /// Forgets every token fed.
    fn reset(&mut self);
}
