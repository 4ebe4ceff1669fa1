//! Token-by-token inference for the LSTM: the (h, c) of every layer carried from one fed
//! token to the next, the walk's packed W_hh made once per decoder. Leaves out: batched
//! decoding.

use kernels::embedding::embedding_forward;
use kernels::recurrence::{Forward, PackedWhh, lstm_forward, lstm_pack_forward};
use kernels::{LstmDims, Precision};

use super::{G, Lstm, linear_forward};
use crate::lm::{Decoder, InputError, check_vocab};

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
