//! Token-by-token inference with a key/value cache: feeding the token at position `pos` runs
//! every layer on that one position and attends over the cached keys and values of positions
//! 0..=pos, so a token costs O(L·(C² + pos·C)) instead of a whole forward.
//!
//! A prompt on an empty cache is prefilled in one pass over its P positions (the training
//! forward's kernels with B = 1, T = P: matrix products of P rows, flash attention), writing
//! every layer's keys and values into the cache; only the last position's logits are made.
//! The same kernels as training, with B·T = 1 per fed token; the logits equal the full
//! forward's at each position up to rounding (tested). A full context is an error, not a
//! panic: the caller decides whether to slide. Leaves out: batches of sequences, prefill
//! after tokens already fed (those prompts go token by token).

use kernels::Transpose::{No, Yes};
use kernels::{AttnDims, Precision, gemm_packed, sgemm};

use kernels::attention::{attention_decode, attention_forward, kv_cache_write};
use kernels::embedding::encoder_forward;
use kernels::gelu::gelu_forward;
use kernels::layernorm::layernorm_forward;

use super::tensors::{Block, Tensors};
use super::{EPS, Gpt, matmul_forward, matmul_residual_forward};
use crate::lm::{Decoder, InputError};

/// A [`Decoder`] over a borrowed [`Gpt`]; all buffers are allocated once, at creation.
pub struct GptDecoder<'a> {
    model: &'a Gpt,
    pos: usize,
    k_cache: Vec<f32>,  // (L, maxT, C)
    v_cache: Vec<f32>,  // (L, maxT, C)
    x: Vec<f32>,        // (C)   residual stream at this position
    x2: Vec<f32>,       // (C)   after the attention branch
    ln: Vec<f32>,       // (C)   a LayerNorm's output
    stats: [f32; 2],    // mean, rstd of the last LayerNorm
    qkv: Vec<f32>,      // (3C)
    atty: Vec<f32>,     // (C)
    fch: Vec<f32>,      // (4C)
    fch_gelu: Vec<f32>, // (4C)
    logits: Vec<f32>,   // (V)
    prefill: Prefill,
}

/// Buffers of a prefill over P positions, allocated at the first prefill and grown to the
/// longest; one layer's worth (nothing is kept for a backward).
#[derive(Default)]
struct Prefill {
    p: usize,
    x: Vec<f32>,        // (P, C)  residual stream
    x2: Vec<f32>,       // (P, C)  after the attention branch
    ln: Vec<f32>,       // (P, C)
    mean: Vec<f32>,     // (P)
    rstd: Vec<f32>,     // (P)
    qkv: Vec<f32>,      // (P, 3C)
    atty: Vec<f32>,     // (P, C)
    lse: Vec<f32>,      // (NH, P)
    fch: Vec<f32>,      // (P, 4C)
    fch_gelu: Vec<f32>, // (P, 4C)
}

impl Prefill {
    fn reserve(&mut self, p: usize, c: usize, nh: usize) {
        if p <= self.p {
            return;
        }
        let z = |n: usize| vec![0.0f32; n];
        *self = Prefill {
            p,
            x: z(p * c),
            x2: z(p * c),
            ln: z(p * c),
            mean: z(p),
            rstd: z(p),
            qkv: z(p * 3 * c),
            atty: z(p * c),
            lse: z(nh * p),
            fch: z(p * 4 * c),
            fch_gelu: z(p * 4 * c),
        };
    }
}

impl<'a> GptDecoder<'a> {
    pub fn new(model: &'a Gpt) -> Self {
        let cfg = &model.config;
        let (c, cache) = (cfg.n_embd, cfg.n_layer * cfg.n_positions * cfg.n_embd);
        GptDecoder {
            model,
            pos: 0,
            k_cache: vec![0.0; cache],
            v_cache: vec![0.0; cache],
            x: vec![0.0; c],
            x2: vec![0.0; c],
            ln: vec![0.0; c],
            stats: [0.0; 2],
            qkv: vec![0.0; 3 * c],
            atty: vec![0.0; c],
            fch: vec![0.0; 4 * c],
            fch_gelu: vec![0.0; 4 * c],
            logits: vec![0.0; cfg.vocab_size],
            prefill: Prefill::default(),
        }
    }
}

impl Decoder for GptDecoder<'_> {
    #[rustfmt::skip] // one kernel call per line, mirroring `Gpt::forward_logits`
    fn feed(&mut self, token: u32) -> Result<&[f32], InputError> {
        self.check_prefill(&[token])?;
        let cfg = &self.model.config;
        let (c, nh, v, t_max) = (cfg.n_embd, cfg.n_head, cfg.vocab_size, cfg.n_positions);
        let pos = self.pos;
        let p = Tensors::split(&self.model.params[..], cfg);
        let pk = self.model.packed();
        let [mean, rstd] = &mut self.stats;
        let (mean, rstd) = (std::slice::from_mut(mean), std::slice::from_mut(rstd));

        encoder_forward(&mut self.x, &[token], p.wte, &p.wpe[pos * c..][..c], 1, 1, c);
        for l in 0..cfg.n_layer {
            let w = Block::of(p.h, l, c);
            let wp = pk.map(|pk| &pk.blocks[l]);
            let k_cache = &mut self.k_cache[l * t_max * c..][..t_max * c]; // (maxT, C)
            let v_cache = &mut self.v_cache[l * t_max * c..][..t_max * c]; // (maxT, C)
            layernorm_forward(&mut self.ln, mean, rstd, &self.x, w.ln1_w, w.ln1_b, 1, c, EPS);
            matmul_forward(&mut self.qkv, &self.ln, w.qkv_w, w.qkv_b, 1, c, 3 * c, wp.map(|p| &p.qkv));
            attention_decode(&mut self.atty, k_cache, v_cache, &self.qkv, AttnDims { b: 1, t: t_max, c, nh }, pos);
            matmul_residual_forward(&mut self.x2, &self.x, &self.atty, w.attproj_w, w.attproj_b, 1, c, c, wp.map(|p| &p.attproj));
            layernorm_forward(&mut self.ln, mean, rstd, &self.x2, w.ln2_w, w.ln2_b, 1, c, EPS);
            matmul_forward(&mut self.fch, &self.ln, w.fc_w, w.fc_b, 1, c, 4 * c, wp.map(|p| &p.fc));
            gelu_forward(&mut self.fch_gelu, &self.fch);
            matmul_residual_forward(&mut self.x, &self.x2, &self.fch_gelu, w.fcproj_w, w.fcproj_b, 1, 4 * c, c, wp.map(|p| &p.fcproj));
        }
        layernorm_forward(&mut self.ln, mean, rstd, &self.x, p.lnf_w, p.lnf_b, 1, c, EPS);
        match pk {
            Some(pk) => gemm_packed(No, 1, 1.0, &self.ln, c, &pk.wte.fwd, 0.0, &mut self.logits, v),
            None => sgemm(No, Yes, 1, v, c, 1.0, &self.ln, c, p.wte, c, 0.0, &mut self.logits, v),
        }
        self.pos += 1;
        Ok(&self.logits)
    }

    /// On an empty cache: one forward pass over the prompt's P positions, every layer's keys
    /// and values written to the cache, the logits of the last position. Else token by token.
    #[rustfmt::skip] // one kernel call per line, mirroring `Gpt::forward_logits`
    fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32], InputError> {
        self.check_prefill(tokens)?;
        if self.pos > 0 || tokens.len() == 1 {
            let (last, rest) = tokens.split_last().expect("checked: not empty");
            for &token in rest {
                self.feed(token)?;
            }
            return self.feed(*last);
        }
        let cfg = &self.model.config;
        let (c, nh, v, t_max) = (cfg.n_embd, cfg.n_head, cfg.vocab_size, cfg.n_positions);
        let n = tokens.len();
        self.prefill.reserve(n, c, nh);
        let p = Tensors::split(&self.model.params[..], cfg);
        let pk = self.model.packed();
        let f = &mut self.prefill;
        let (x, x2, ln) = (&mut f.x[..n * c], &mut f.x2[..n * c], &mut f.ln[..n * c]); // (P, C)
        let (mean, rstd) = (&mut f.mean[..n], &mut f.rstd[..n]); // (P)
        let qkv = &mut f.qkv[..n * 3 * c]; // (P, 3C)
        let atty = &mut f.atty[..n * c]; // (P, C)
        let lse = &mut f.lse[..nh * n]; // (NH, P)
        let (fch, fch_gelu) = (&mut f.fch[..n * 4 * c], &mut f.fch_gelu[..n * 4 * c]); // (P, 4C)

        encoder_forward(x, tokens, p.wte, p.wpe, 1, n, c);
        for l in 0..cfg.n_layer {
            let w = Block::of(p.h, l, c);
            let wp = pk.map(|pk| &pk.blocks[l]);
            let k_cache = &mut self.k_cache[l * t_max * c..][..t_max * c]; // (maxT, C)
            let v_cache = &mut self.v_cache[l * t_max * c..][..t_max * c]; // (maxT, C)
            layernorm_forward(ln, mean, rstd, x, w.ln1_w, w.ln1_b, n, c, EPS);
            matmul_forward(qkv, ln, w.qkv_w, w.qkv_b, n, c, 3 * c, wp.map(|p| &p.qkv));
            kv_cache_write(k_cache, v_cache, qkv, AttnDims { b: 1, t: t_max, c, nh }, 0..n);
            attention_forward(atty, lse, qkv, AttnDims { b: 1, t: n, c, nh }, Precision::F32); // fp32, as attention_decode: a prefilled cache serves the next token as feeding would
            matmul_residual_forward(x2, x, atty, w.attproj_w, w.attproj_b, n, c, c, wp.map(|p| &p.attproj));
            layernorm_forward(ln, mean, rstd, x2, w.ln2_w, w.ln2_b, n, c, EPS);
            matmul_forward(fch, ln, w.fc_w, w.fc_b, n, c, 4 * c, wp.map(|p| &p.fc));
            gelu_forward(fch_gelu, fch);
            matmul_residual_forward(x, x2, fch_gelu, w.fcproj_w, w.fcproj_b, n, 4 * c, c, wp.map(|p| &p.fcproj));
        }
        // Only the last position's logits: what generation samples from.
        let [m, r] = &mut self.stats;
        let (m, r) = (std::slice::from_mut(m), std::slice::from_mut(r));
        layernorm_forward(&mut self.ln, m, r, &x[(n - 1) * c..], p.lnf_w, p.lnf_b, 1, c, EPS);
        match pk {
            Some(pk) => gemm_packed(No, 1, 1.0, &self.ln, c, &pk.wte.fwd, 0.0, &mut self.logits, v),
            None => sgemm(No, Yes, 1, v, c, 1.0, &self.ln, c, p.wte, c, 0.0, &mut self.logits, v),
        }
        self.pos = n;
        Ok(&self.logits)
    }

    fn vocab_size(&self) -> usize {
        self.model.config.vocab_size
    }

    fn position(&self) -> usize {
        self.pos
    }

    fn capacity(&self) -> Option<usize> {
        Some(self.model.config.n_positions)
    }

    fn reset(&mut self) {
        // Rows past `pos` are never read, so the cache need not be cleared.
        self.pos = 0;
    }
}
