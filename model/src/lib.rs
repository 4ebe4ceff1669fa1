//! # model — Lanes' language models and the data they learn from
//!
//! Tokenizers, llm.c-format token shards read through memory maps, a GPT-2-architecture
//! transformer and a multi-layer LSTM (forward and hand-written backward on the `kernels`
//! crate), optimizers, sampling and checkpoints. No SIMD and no `unsafe` here, except the one
//! audited memory-map function.
#![deny(unsafe_code)]

pub mod checkpoint;
pub mod corpus;
pub mod lm;
pub mod params;
pub mod rng;

pub use lm::{Decoder, LanguageModel, ModelKind};
pub use params::{ParamLayout, TensorSpec};
