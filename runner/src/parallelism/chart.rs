//! `parallelism.svg`: tokens/s against T, one panel per sweep.
//!
//! Leaves out: the drawing itself (`crate::plot`).

use model::ModelKind;

use super::report::{Report, thousands};
use super::{KINDS, Shape};
use crate::plot;

impl Report {
    /// `parallelism.svg`: one panel per sweep (B·T fixed, B = 1), one colour per thread
    /// count, the transformer solid, the LSTM dashed.
    pub(super) fn chart_panels(&self) -> Vec<(String, Vec<plot::Series>)> {
        let panel = |title: String, shapes: Vec<Shape>| {
            let mut series = Vec::new();
            for (color, &n) in self.threads.iter().enumerate() {
                for kind in KINDS {
                    series.push(plot::Series {
                        color,
                        dashed: kind == ModelKind::Lstm,
                        points: shapes
                            .iter()
                            .map(|&s| (s.t, self.rate(kind, s, n)))
                            .collect(),
                    });
                }
            }
            (title, shapes, series)
        };
        let fixed = self
            .shapes
            .iter()
            .copied()
            .filter(|s| s.tokens() == self.batch_tokens);
        let b1 = self.shapes.iter().copied().filter(|s| s.b == 1);
        [
            panel(
                format!(
                    "B·T = {} tokens per step",
                    thousands(self.batch_tokens as f64)
                ),
                fixed.collect(),
            ),
            panel("B = 1".to_string(), b1.collect()),
        ]
        .into_iter()
        .filter(|(_, shapes, _)| !shapes.is_empty())
        .map(|(title, _, series)| (title, series))
        .collect()
    }
}
