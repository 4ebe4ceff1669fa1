//! # model — Lanes' language models and the data they learn from
//!
//! Tokenizers, llm.c-format token shards read through memory maps, a GPT-2-architecture
//! transformer and a multi-layer LSTM (forward and hand-written backward on the `kernels`
//! crate), optimizers, sampling and checkpoints. No SIMD and no `unsafe` here, except the one
//! audited memory-map function (`data::shard::map_readonly`).
//!
//! ## The data path
//!
//! ```text
//! text ──Tokenizer──▶ ids ──SplitWriter──▶ train_*.bin, val_*.bin, meta.json
//!      ──Dataset::open──▶ TokenStream::train_batch / eval_batch ──▶ (B, T) inputs, targets
//! ```
//!
//! - [`tokenizer`]: `byte` (V = 257) and `gpt2` (V = 50257), encode, decode, streaming decode.
//! - [`data`]: shard format, writers, `meta.json`, the memory-mapped [`data::Dataset`].
//! - [`rng`]: SplitMix64, the reproducible random source of batches, initialization and sampling.
//! - [`sampling`]: greedy, naive, top-k and nucleus sampling with temperature.
//!
//! ## The models
//!
//! - [`gpt`]: the GPT-2-architecture transformer ([`Gpt`]), Hugging Face checkpoints, KV-cache
//!   decoding.
//! - [`lstm`]: the multi-layer LSTM ([`Lstm`]) as PyTorch's `nn.LSTM`, PyTorch checkpoints,
//!   (h, c) decoding, hidden state carried or reset between windows.
//! - [`lm`]: the [`LanguageModel`] and [`Decoder`] interface both implement, and the
//!   [`ConfigError`] both configs return.
//! - [`load`]: one API over both: [`NetConfig::preset`]`(kind, name, tokenizer)`,
//!   [`Net::new`], [`Net::load`], [`Net::save`].
//!
//! ## Training and checkpoints
//!
//! - [`optim`]: AdamW and SGD over the flat parameters, clipping, warmup + cosine schedule, and
//!   their saved state.
//! - [`load`]: whole checkpoint directories for any model ([`Net::load`] and
//!   [`load_checkpoint`] dispatch on `model_type`; [`save_checkpoint`] and [`load_resume`] add
//!   the optimizer and trainer state).
//! - [`train`]: the training loop ([`Trainer`]): batches, steps, evaluation, checkpoints, and
//!   the [`Collective`] hook where data-parallel ranks reduce gradients.
//! - [`checkpoint`] and [`params`]: the generic safetensors/JSON I/O and flat parameter layout.
#![deny(unsafe_code)]

pub mod checkpoint;
pub mod corpus;
pub mod data;
pub mod gpt;
pub mod lm;
pub mod load;
pub mod lstm;
pub mod memory;
pub mod optim;
pub mod params;
pub mod rng;
pub mod sampling;
pub mod tokenizer;
pub mod train;

pub use data::{DataError, Dataset, Split};
pub use gpt::{Gpt, GptConfig};
pub use kernels::Precision;
pub use lm::{ConfigError, Decoder, InputError, LanguageModel, ModelKind};
pub use load::{Net, NetConfig, load_checkpoint, load_resume, save_checkpoint};
pub use lstm::{InputProjection, Lstm, LstmConfig};
pub use optim::{AdamWConfig, Optimizer, OptimizerConfig, Schedule, SgdConfig};
pub use params::{ParamLayout, TensorSpec};
pub use tokenizer::{Tokenizer, TokenizerKind};
pub use train::{Collective, TrainConfig, Trainer};
