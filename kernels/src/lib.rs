//! # kernels — explicit-SIMD fp32 kernels for training language models on the CPU
//!
//! Hand-written with [`wide`] lanes and parallelized with [`rayon`]:
//!
//! - [`sgemm`]: BLAS-style row-major GEMM, `C = alpha·op(A)·op(B) + beta·C`; [`gemm()`] the
//!   same in a chosen [`Precision`] (bf16 operands with fp32 accumulation on AVX512_BF16), and
//!   [`gemm_packed`] with a [`PackedB`] converted once and reused.
//! - [`attention`]: fused causal multi-head self-attention, forward and backward.
//! - [`math`]: vectorized `exp`, `sigmoid`, `tanh` with stated ulp bounds.
//! - [`softmax`]: row-wise softmax and log-softmax (online softmax), forward and backward.
//! - [`cross_entropy`]: the classifier loss fused with its softmax, forward and backward in
//!   one sweep per row, optionally writing the gradient over the logits.
//! - [`layernorm`], [`gelu`] (tanh approximation), [`elementwise`] (residual add, bias and its
//!   gradient), [`embedding`] (lookup, deterministic scatter-add, GPT's token + position
//!   encoder): the transformer's pointwise layers.
//! - [`lstm_cell`]: one LSTM step's gate activations and cell update, forward and backward.
//! - [`recurrence`]: an LSTM layer walked through time, recurrent product and cell fused,
//!   forward and backward.
//! - [`attention_pool`]: attention pooling against a learned vector (the lecture's first
//!   attention).
//! - [`optim`]: AdamW and SGD with momentum (PyTorch semantics), global gradient norm, clipping.
//! - [`parallel`]: how kernels size their split, for the live pool or for one they are asked
//!   to plan for (a trace of a 64-core split on one thread).
//! - `launch` (feature `trace`): kernel launches counted per thread, the critical path of a
//!   computation in kernels (the LSTM walk counts one launch per time step). Without the
//!   feature the counting is compiled out.
//! - `testutil` (feature `testutil`): the seeded RNG, `assert_close` and awkward lengths the
//!   kernels' tests use, for downstream tests and benches.
//!
//! ## Which SIMD path a build uses
//!
//! `wide` chooses the instruction set at compile time, from the target features. [`simd::PATH`]
//! names the path this build took (AVX-512 with 16 lanes, AVX2 with 8, or 128-bit with 4).
//! Build for the CPU you run on to get the widest path:
//!
//! ```text
//! RUSTFLAGS="-C target-cpu=native" cargo build --release
//! ```
//!
//! (Lanes' own workspace sets this in `.cargo/config.toml`; a crate depending on `kernels`
//! should do the same.) A binary built for a newer CPU than it runs on would crash with an
//! illegal instruction, so call [`cpu::check`] first: it returns an error naming the missing
//! features instead.
//!
//! ## Conventions
//!
//! - Row-major buffers, shapes in comments as `(B, T, C)`; names from the papers (B, T, C, NH,
//!   HS, V; H for the LSTM hidden size, never a head).
//! - One argument order for every kernel: first the buffers it writes (outputs, buffers
//!   updated in place, accumulated gradients), then the buffers it only reads (in a backward,
//!   the incoming gradient `dout` first, then what the forward read and saved), then the
//!   dimensions, then scalars and settings (`eps`, [`Precision`], optimizer configs):
//!   `layernorm_forward(out, mean, rstd, inp, weight, bias, n, c, eps)`,
//!   `gelu_backward(dinp, dout, inp)`, `adamw_step(params, m, v, grads, &cfg, t)`. The one
//!   exception is the GEMM family ([`sgemm`], [`gemm()`], [`gemm_packed`]), which keeps BLAS's
//!   order (`sgemm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)`), so that
//!   it reads like `cblas_sgemm`.
//! - Attention, the LSTM walk and its cell, and attention pooling take their dimensions as
//!   one struct ([`AttnDims`], [`LstmDims`], [`PoolDims`]), so sizes cannot be swapped;
//!   `AttnDims::new` / `LstmDims::new` check them, and every entry point checks them again
//!   (`validate`), so one built field by field is checked too.
//! - Activation gradients are overwritten; parameter gradients are accumulated (`+=`), so
//!   gradients can be summed over micro-batches.
//! - A broken precondition (a slice of the wrong length) is a bug in the caller and panics
//!   with a message naming the argument.
//! - Results do not depend on the number of rayon threads: work is split so that every
//!   output element is computed by the same sequence of operations on any pool size.
//!
//! ## Where `unsafe` lives
//!
//! The crate denies `unsafe_code` except in its unsafe core, `raw/` (pointer loads and
//! stores, the fp32 intrinsics, the shared micro-kernel, the disjoint-write views and the LSTM
//! walk's thread team), and in the leaves built only with AVX512_BF16 (`bf16.rs`,
//! `gemm/bf16/kernel.rs`, `recurrence/bf16.rs`), plus the LSTM step code (`recurrence/step.rs`),
//! which reads and writes the walk's shared buffers through `raw::team`'s `unsafe` getters.
//! Every `unsafe` block carries a `SAFETY` comment (`clippy::undocumented_unsafe_blocks` is
//! denied).

#![deny(unsafe_code)]

pub mod attention;
pub mod attention_pool;
#[cfg(all(target_arch = "x86_64", target_feature = "avx512bf16"))]
mod bf16;
pub mod cpu;
pub mod cross_entropy;
pub mod elementwise;
pub mod embedding;
pub mod gelu;
pub mod gemm;
mod lanes;
#[cfg(feature = "trace")]
pub mod launch;
#[cfg(not(feature = "trace"))]
mod launch;
pub mod layernorm;
pub mod lstm_cell;
pub mod math;
pub mod optim;
pub mod parallel;
pub mod precision;
mod raw;
pub mod recurrence;
pub mod simd;
pub mod softmax;
#[cfg(any(test, feature = "testutil"))]
pub mod testutil;

pub use attention::AttnDims;
pub use attention_pool::PoolDims;
pub use gemm::{PackedB, Transpose, gemm, gemm_packed, sgemm};
pub use precision::Precision;
pub use recurrence::LstmDims;
