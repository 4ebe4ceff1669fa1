//! The LSTM's parameters in one flat buffer: where each tensor sits, in PyTorch's names and
//! `state_dict` order (`emb`, then per layer `lstm.weight_ih_l{l}`, `weight_hh`, `bias_ih`,
//! `bias_hh`, then `head`), so a checkpoint loads into `nn.LSTM` as is. Leaves out: views
//! of several tensors at once (the model splits the buffer with [`Span`]s).

use std::ops::Range;

use super::{G, LstmConfig};
use crate::params::ParamLayout;

/// Where each tensor sits in the flat parameter buffer.
#[derive(Clone, Debug)]
pub(super) struct Layout {
    pub(super) emb: Span,
    pub(super) layers: Vec<LayerParams>,
    pub(super) head_w: Span,
    pub(super) head_b: Span,
}

#[derive(Clone, Debug)]
pub(super) struct LayerParams {
    pub(super) w_ih: Span,
    pub(super) w_hh: Span,
    pub(super) b_ih: Span,
    pub(super) b_hh: Span,
}

/// One tensor's elements in a flat buffer (parameters or gradients).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Span {
    pub(super) start: usize,
    pub(super) len: usize,
}

impl Span {
    pub(super) fn of(self, buf: &[f32]) -> &[f32] {
        &buf[self.start..][..self.len]
    }

    pub(super) fn of_mut(self, buf: &mut [f32]) -> &mut [f32] {
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
    pub(super) fn new(c: &LstmConfig) -> (ParamLayout, Layout) {
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
