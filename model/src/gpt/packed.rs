//! The transformer's weight matrices packed for bf16 products: each one once for the forward
//! product `x·W` and once for the input gradient `dy·Wᵀ`, converted once per optimizer step
//! (when the parameters change), not once per call. Leaves out: the weight gradients
//! (`xᵀ·dy`), whose operands are activations, packed per call by `kernels::gemm`.

use kernels::{PackedB, Transpose};

use super::GptConfig;
use super::tensors::{Block, Tensors};

/// One weight matrix `W` (IC, OC) as the B operand of both products that read it.
#[derive(Clone, Debug, Default)]
pub(super) struct PackedPair {
    /// `op(B) = W` (IC × OC): the forward `x·W`.
    pub fwd: PackedB,
    /// `op(B) = Wᵀ` (OC × IC): the input gradient `dy·Wᵀ`.
    pub bwd: PackedB,
}

impl PackedPair {
    /// Packs a stored (IC, OC) matrix.
    fn pack(&mut self, w: &[f32], ic: usize, oc: usize) {
        self.fwd.pack(Transpose::No, ic, oc, w, oc);
        self.bwd.pack(Transpose::Yes, oc, ic, w, oc);
    }

    fn bytes(&self) -> usize {
        self.fwd.bytes() + self.bwd.bytes()
    }
}

/// A block's four projections.
#[derive(Clone, Debug, Default)]
pub(super) struct PackedBlock {
    pub qkv: PackedPair,
    pub attproj: PackedPair,
    pub fc: PackedPair,
    pub fcproj: PackedPair,
}

/// Every weight matrix of the model, packed; `fresh` says whether they match the parameters.
#[derive(Clone, Debug, Default)]
pub(super) struct PackedWeights {
    pub blocks: Vec<PackedBlock>,
    /// The tied head: `fwd` is `wteᵀ` (C × V) for `logits = lnf·wteᵀ`, `bwd` is `wte` (V × C)
    /// for `dlnf = dlogits·wte`.
    pub wte: PackedPair,
    pub fresh: bool,
}

impl PackedWeights {
    /// Re-packs every matrix from `params` (reusing the allocations) and marks them fresh.
    pub fn pack(&mut self, params: &[f32], cfg: &GptConfig) {
        let p = Tensors::split(params, cfg);
        let (c, v) = (cfg.n_embd, cfg.vocab_size);
        self.blocks.resize_with(cfg.n_layer, PackedBlock::default);
        for (l, pb) in self.blocks.iter_mut().enumerate() {
            let w = Block::of(p.h, l, c);
            pb.qkv.pack(w.qkv_w, c, 3 * c);
            pb.attproj.pack(w.attproj_w, c, c);
            pb.fc.pack(w.fc_w, c, 4 * c);
            pb.fcproj.pack(w.fcproj_w, 4 * c, c);
        }
        // wte is stored (V, C): as the head's B operand it is read transposed.
        self.wte.fwd.pack(Transpose::Yes, c, v, p.wte, c);
        self.wte.bwd.pack(Transpose::No, v, c, p.wte, c);
        self.fresh = true;
    }

    /// Drops the packings (fp32 runs hold none).
    pub fn clear(&mut self) {
        *self = PackedWeights::default();
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        let blocks: usize = self
            .blocks
            .iter()
            .map(|b| b.qkv.bytes() + b.attproj.bytes() + b.fc.bytes() + b.fcproj.bytes())
            .sum();
        blocks + self.wte.bytes()
    }
}
