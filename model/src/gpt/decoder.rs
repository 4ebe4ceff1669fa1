//! Token-by-token inference with a key/value cache: feeding the token at position `pos` runs
//! every layer on that one position and attends over the cached keys and values of positions
//! 0..=pos, so a token costs O(L·(C² + pos·C)) instead of a whole forward.
//!
//! The same kernels as training, with B·T = 1; the logits equal the full forward's at each
//! position up to rounding (tested). Leaves out: batches of sequences, prompt prefill in one
//! call (a prompt is fed token by token), sliding the window past the context.

use kernels::Transpose::{No, Yes};
use kernels::{gemm_packed, sgemm};

use kernels::attention::attention_decode;
use kernels::embedding::encoder_forward;
use kernels::gelu::gelu_forward;
use kernels::layernorm::layernorm_forward;

use super::tensors::{Block, Tensors};
use super::{EPS, Gpt, matmul_forward, matmul_residual_forward};
use crate::lm::Decoder;

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
        }
    }
}

impl Decoder for GptDecoder<'_> {
    #[rustfmt::skip] // one kernel call per line, mirroring `Gpt::forward_logits`
    fn feed(&mut self, token: u32) -> &[f32] {
        let cfg = &self.model.config;
        let (c, nh, v, t_max) = (cfg.n_embd, cfg.n_head, cfg.vocab_size, cfg.n_positions);
        let pos = self.pos;
        assert!(pos < t_max, "GptDecoder::feed: the context of {t_max} tokens is full");
        assert!((token as usize) < v, "GptDecoder::feed: token {token} is outside the vocabulary of {v}");
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
            attention_decode(&mut self.atty, k_cache, v_cache, &self.qkv, pos, 1, t_max, c, nh);
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
        &self.logits
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
