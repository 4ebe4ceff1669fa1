//! Parameters in one flat buffer with named views, as llm.c lays them out.
//!
//! A model declares its tensors once ([`ParamLayout::push`]) with the names and shapes its
//! checkpoint uses (Hugging Face GPT-2 names for the transformer, PyTorch `nn.LSTM` names for
//! the LSTM); parameters, gradients and optimizer moments are then flat `Vec<f32>` of the same
//! length, and every tensor is a range of them. One allocation per buffer, nothing per step, and
//! the optimizer runs over a single slice. Leaves out: dtypes other than f32.

use std::ops::Range;

/// One named tensor inside the flat parameter buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Checkpoint name, e.g. `transformer.h.0.attn.c_attn.weight`.
    pub name: String,
    /// Row-major shape, e.g. `[C, 3C]`.
    pub shape: Vec<usize>,
    /// First element in the flat buffer.
    pub offset: usize,
}

impl TensorSpec {
    /// Number of elements (product of the shape).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The elements this tensor occupies in the flat buffer.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.numel()
    }

    /// Whether AdamW's weight decay applies: matrices and embeddings decay, biases and
    /// LayerNorm gains do not (GPT-2/nanoGPT convention).
    pub fn decays(&self) -> bool {
        self.shape.len() >= 2
    }
}

/// The ordered list of a model's tensors; builds offsets as tensors are declared.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParamLayout {
    tensors: Vec<TensorSpec>,
    len: usize,
}

impl ParamLayout {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a tensor and returns its range in the flat buffer.
    pub fn push(&mut self, name: impl Into<String>, shape: &[usize]) -> Range<usize> {
        let spec = TensorSpec {
            name: name.into(),
            shape: shape.to_vec(),
            offset: self.len,
        };
        debug_assert!(
            self.get(&spec.name).is_none(),
            "duplicate tensor name {}",
            spec.name
        );
        let range = spec.range();
        self.len = range.end;
        self.tensors.push(spec);
        range
    }

    /// Total number of parameters.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn tensors(&self) -> &[TensorSpec] {
        &self.tensors
    }

    pub fn get(&self, name: &str) -> Option<&TensorSpec> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// One f32 per element: 1.0 where weight decay applies, 0.0 elsewhere.
    pub fn decay_mask(&self) -> Vec<f32> {
        let mut mask = vec![0.0; self.len];
        for t in &self.tensors {
            if t.decays() {
                mask[t.range()].fill(1.0);
            }
        }
        mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_follow_declaration_order() {
        let mut l = ParamLayout::new();
        let a = l.push("a.weight", &[3, 4]);
        let b = l.push("a.bias", &[4]);
        assert_eq!((a, b.clone()), (0..12, 12..16));
        assert_eq!(l.len(), 16);
        assert_eq!(l.get("a.bias").unwrap().range(), b);
        let mask = l.decay_mask();
        assert!(mask[..12].iter().all(|&m| m == 1.0) && mask[12..].iter().all(|&m| m == 0.0));
    }
}
