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
    /// token id is ≥ V or T exceeds [`Self::max_seq_len`] (callers validate data first).
    fn forward(&mut self, inputs: &[u32], targets: &[u32], b: usize, t: usize) -> f32;

    /// Per-position losses −ln p(target | prefix), (B, T), of the last forward.
    fn token_losses(&self) -> &[f32];

    /// Accumulates the gradient of the last forward's mean loss into [`Self::grads`].
    fn backward(&mut self);

    /// Forgets recurrent state carried between consecutive windows (no-op for the
    /// transformer, which has none).
    fn reset_state(&mut self) {}

    /// The model's `config.json` (Hugging Face fields for GPT-2, Lanes fields for the LSTM).
    fn config_json(&self) -> serde_json::Value;

    /// A fresh incremental decoder (batch of one): each fed token costs one position.
    fn decoder(&self) -> Box<dyn Decoder + '_>;
}

/// Token-by-token inference for generation and streaming scores: the transformer keeps a KV
/// cache, the LSTM its (h, c) state.
pub trait Decoder {
    /// Feeds the next token and returns the logits (V) for the token after it. Panics if the
    /// context is full (see [`Decoder::capacity`]).
    fn feed(&mut self, token: u32) -> &[f32];

    /// Tokens fed so far.
    fn position(&self) -> usize;

    /// How many tokens fit (`None` if unbounded).
    fn capacity(&self) -> Option<usize>;

    /// Forgets every token fed.
    fn reset(&mut self);
}
