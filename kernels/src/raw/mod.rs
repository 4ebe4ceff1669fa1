//! The crate's unsafe core: every raw pointer and every fp32 intrinsic lives here (the bf16
//! leaves aside, see the crate doc), each `unsafe` block with its `SAFETY` comment, behind
//! entry points that check their bounds, so the kernels around it are safe code
//! (`#![deny(unsafe_code)]` in `lib.rs` holds them to it).
//!
//! - `vector`: vector loads and stores through pointers, masked tails, and the AVX-512
//!   intrinsics `wide` lacks (horizontal maximum, `vscalefps`).
//! - `micro`: the one fp32-accumulating micro-kernel, generic over rows × vectors
//!   (`<MR, NV>`) and over its operands (fp32, bf16 pairs), serving the GEMM tile
//!   (`gemm_tile`: 12 × 2 vectors on AVX-512, 6 × 2 on narrower builds) and attention's tile
//!   products (`tile`: 6 × 4).
//! - `dot`, `gemv`: the GEMM's dot-product and one-row kernels for its small shapes.
//! - `matmut`: disjoint writable windows of one matrix handed to threads.
//! - `team`: the LSTM walk's thread team, its spin barrier and the buffer its threads write in
//!   disjoint parts, with slices that cannot outlive a phase.
//!
//! Leaves out: the intrinsics built only with AVX512_BF16 (`crate::bf16` and its leaves).

#![allow(unsafe_code)]

pub(crate) mod dot;
pub(crate) mod gemm_tile;
pub(crate) mod gemv;
pub(crate) mod matmut;
pub(crate) mod micro;
pub(crate) mod team;
pub(crate) mod tile;
pub(crate) mod vector;
