//! The transformer's parameter tensors: their Hugging Face names and shapes in checkpoint
//! order, and named views into the flat buffers that hold them.
//!
//! One list ([`block_tensors`]) fixes the order of a block's tensors; both the [`ParamLayout`]
//! and the views are built from it, so a view can never point at the wrong range. Views are
//! plain struct fields (`w.c_attn_w`), taken by splitting the flat slice front to back, with no
//! allocation: the same code gives `&[f32]` views of the parameters and `&mut [f32]` views of the
//! gradients. Leaves out: any tensor GPT-2 stores that is not a parameter (`attn.bias` masks).

use crate::gpt::GptConfig;
use crate::params::ParamLayout;

/// The name prefix Hugging Face's `GPT2LMHeadModel` gives the transformer's tensors.
pub const PREFIX: &str = "transformer.";

/// A block's tensors as (name suffix, shape), in Hugging Face's order. Conv1D weights are
/// stored (in, out), so every projection's forward is `x · W` (NN in sgemm).
pub fn block_tensors(c: usize) -> [(&'static str, Vec<usize>); 12] {
    [
        ("ln_1.weight", vec![c]),
        ("ln_1.bias", vec![c]),
        ("attn.c_attn.weight", vec![c, 3 * c]),
        ("attn.c_attn.bias", vec![3 * c]),
        ("attn.c_proj.weight", vec![c, c]),
        ("attn.c_proj.bias", vec![c]),
        ("ln_2.weight", vec![c]),
        ("ln_2.bias", vec![c]),
        ("mlp.c_fc.weight", vec![c, 4 * c]),
        ("mlp.c_fc.bias", vec![4 * c]),
        ("mlp.c_proj.weight", vec![4 * c, c]),
        ("mlp.c_proj.bias", vec![c]),
    ]
}

/// Elements in one block: 12C² + 13C.
pub fn block_len(c: usize) -> usize {
    12 * c * c + 13 * c
}

/// Every tensor of the model, in checkpoint order: wte, wpe, the L blocks, ln_f.
pub fn layout(cfg: &GptConfig) -> ParamLayout {
    let (c, v, t) = (cfg.n_embd, cfg.vocab_size, cfg.n_positions);
    let mut layout = ParamLayout::new();
    layout.push(format!("{PREFIX}wte.weight"), &[v, c]);
    layout.push(format!("{PREFIX}wpe.weight"), &[t, c]);
    for l in 0..cfg.n_layer {
        for (name, shape) in block_tensors(c) {
            layout.push(format!("{PREFIX}h.{l}.{name}"), &shape);
        }
    }
    layout.push(format!("{PREFIX}ln_f.weight"), &[c]);
    layout.push(format!("{PREFIX}ln_f.bias"), &[c]);
    layout
}

/// A slice that can give away its first `n` elements: `&[f32]` and `&mut [f32]` alike.
pub trait SplitFront: Sized {
    fn split_front(&mut self, n: usize) -> Self;
}

impl SplitFront for &[f32] {
    fn split_front(&mut self, n: usize) -> Self {
        let (head, tail) = self.split_at(n);
        *self = tail;
        head
    }
}

impl SplitFront for &mut [f32] {
    fn split_front(&mut self, n: usize) -> Self {
        let (head, tail) = std::mem::take(self).split_at_mut(n);
        *self = tail;
        head
    }
}

/// The whole model's tensors (`S` = `&[f32]` or `&mut [f32]`); the blocks stay one region
/// (`h`, L × [`block_len`]) to be viewed one at a time with [`Block::of`].
pub struct Tensors<S> {
    pub wte: S,   // (V, C)
    pub wpe: S,   // (maxT, C)
    pub h: S,     // L blocks
    pub lnf_w: S, // (C)
    pub lnf_b: S, // (C)
}

impl<S: SplitFront> Tensors<S> {
    /// Views of the flat buffer `flat` laid out by [`layout`].
    pub fn split(mut flat: S, cfg: &GptConfig) -> Self {
        let c = cfg.n_embd;
        Tensors {
            wte: flat.split_front(cfg.vocab_size * c),
            wpe: flat.split_front(cfg.n_positions * c),
            h: flat.split_front(cfg.n_layer * block_len(c)),
            lnf_w: flat.split_front(c),
            lnf_b: flat.split_front(c),
        }
    }
}

/// One block's tensors, named as in llm.c's `train_gpt2.c`.
pub struct Block<S> {
    pub ln1_w: S,     // (C)
    pub ln1_b: S,     // (C)
    pub qkv_w: S,     // (C, 3C)  attn.c_attn
    pub qkv_b: S,     // (3C)
    pub attproj_w: S, // (C, C)   attn.c_proj
    pub attproj_b: S, // (C)
    pub ln2_w: S,     // (C)
    pub ln2_b: S,     // (C)
    pub fc_w: S,      // (C, 4C)  mlp.c_fc
    pub fc_b: S,      // (4C)
    pub fcproj_w: S,  // (4C, C)  mlp.c_proj
    pub fcproj_b: S,  // (C)
}

impl<S: SplitFront> Block<S> {
    /// Views of block `l` inside the blocks region `h` of [`Tensors`].
    pub fn of(mut h: S, l: usize, c: usize) -> Self {
        let _skipped = h.split_front(l * block_len(c));
        let [s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11] =
            block_tensors(c).map(|(_, shape)| h.split_front(shape.iter().product()));
        Block {
            ln1_w: s0,
            ln1_b: s1,
            qkv_w: s2,
            qkv_b: s3,
            attproj_w: s4,
            attproj_b: s5,
            ln2_w: s6,
            ln2_b: s7,
            fc_w: s8,
            fc_b: s9,
            fcproj_w: s10,
            fcproj_b: s11,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The views cover exactly the layout's ranges: fill each tensor with its index in the
    /// layout and check that every view sees only its own index.
    #[test]
    fn views_agree_with_the_layout() {
        let cfg = GptConfig::preset("tiny").unwrap();
        let layout = layout(&cfg);
        assert_eq!(layout.len(), cfg.num_params());
        let mut flat = vec![0.0f32; layout.len()];
        for (i, t) in layout.tensors().iter().enumerate() {
            flat[t.range()].fill(i as f32);
        }
        let id = |name: String| {
            layout
                .tensors()
                .iter()
                .position(|t| t.name == name)
                .unwrap()
        };
        let all = |s: &[f32], name: String| {
            let want = id(name.clone()) as f32;
            assert!(s.iter().all(|&x| x == want), "{name}");
        };
        let p = Tensors::split(&flat[..], &cfg);
        all(p.wte, format!("{PREFIX}wte.weight"));
        all(p.wpe, format!("{PREFIX}wpe.weight"));
        all(p.lnf_b, format!("{PREFIX}ln_f.bias"));
        for l in 0..cfg.n_layer {
            let b = Block::of(p.h, l, cfg.n_embd);
            all(b.ln1_w, format!("{PREFIX}h.{l}.ln_1.weight"));
            all(b.qkv_w, format!("{PREFIX}h.{l}.attn.c_attn.weight"));
            all(b.attproj_b, format!("{PREFIX}h.{l}.attn.c_proj.bias"));
            all(b.fc_b, format!("{PREFIX}h.{l}.mlp.c_fc.bias"));
            all(b.fcproj_w, format!("{PREFIX}h.{l}.mlp.c_proj.weight"));
            all(b.fcproj_b, format!("{PREFIX}h.{l}.mlp.c_proj.bias"));
        }
        let mut grads = vec![0.0f32; layout.len()];
        let g = Tensors::split(&mut grads[..], &cfg);
        Block::of(g.h, 1, cfg.n_embd).ln2_b.fill(1.0);
        let r = layout
            .get(&format!("{PREFIX}h.1.ln_2.bias"))
            .unwrap()
            .range();
        assert!(grads[r.clone()].iter().all(|&x| x == 1.0));
        assert_eq!(grads.iter().sum::<f32>(), r.len() as f32);
    }
}
