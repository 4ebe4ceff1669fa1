//! The runner's two pictures, as SVG: the loss curves of a training run (`out/loss.svg`) and
//! an attention heatmap (`runner score --plot-attention`).
//!
//! Files are written to a temporary name and renamed, so a browser reloading `loss.svg`
//! during training never sees half a file. Leaves out: raster formats, interactive plots.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;

/// Writes `svg` to `path` through a temporary file and a rename.
fn write_atomically(path: &Path, svg: &str) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, svg)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot write {}", path.display()))
}

fn draw_err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow!("plotting failed: {e}")
}

/// A horizontal reference line on the loss plot.
pub struct Level {
    pub label: String,
    pub nats: f64,
}

/// Loss curves in nats per token against the step: training loss per step (thin), validation
/// loss at each evaluation (points joined by a line), and reference levels (dashed), e.g. the
/// unigram model's loss and the source's entropy rate.
pub fn loss_curves(
    path: &Path,
    title: &str,
    train: &[(u64, f32)],
    val: &[(u64, f64)],
    levels: &[Level],
) -> Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 540)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let x_max = train
            .iter()
            .map(|p| p.0)
            .chain(val.iter().map(|p| p.0))
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let ys = train
            .iter()
            .map(|p| f64::from(p.1))
            .chain(val.iter().map(|p| p.1))
            .chain(levels.iter().map(|l| l.nats))
            .filter(|y| y.is_finite());
        let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
            (lo.min(y), hi.max(y))
        });
        let (lo, hi) = if lo.is_finite() {
            (
                0.0f64.max(lo - 0.05 * (hi - lo)),
                hi + 0.05 * (hi - lo) + 1e-3,
            )
        } else {
            (0.0, 1.0)
        };
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, lo..hi)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss (nats/token)")
            .draw()
            .map_err(draw_err)?;
        let train_color = RGBColor(120, 150, 210);
        chart
            .draw_series(LineSeries::new(
                train.iter().map(|&(s, l)| (s as f64, f64::from(l))),
                train_color.stroke_width(1),
            ))
            .map_err(draw_err)?
            .label("train (per step)")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], train_color));
        let val_color = RGBColor(200, 60, 30);
        chart
            .draw_series(LineSeries::new(
                val.iter().map(|&(s, l)| (s as f64, l)),
                val_color.stroke_width(2),
            ))
            .map_err(draw_err)?
            .label("validation")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], val_color));
        chart
            .draw_series(
                val.iter()
                    .map(|&(s, l)| Circle::new((s as f64, l), 3, val_color.filled())),
            )
            .map_err(draw_err)?;
        let palette = [RGBColor(90, 90, 90), RGBColor(40, 140, 60)];
        for (level, &color) in levels.iter().zip(palette.iter().cycle()) {
            let dashes = (0..40).map(|i| {
                let a = x_max * i as f64 / 40.0;
                PathElement::new(
                    vec![(a, level.nats), (a + x_max / 80.0, level.nats)],
                    color.stroke_width(1),
                )
            });
            chart
                .draw_series(dashes)
                .map_err(draw_err)?
                .label(level.label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 8, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    write_atomically(path, &svg)
}

/// A (T, T) attention matrix as a heatmap: row i = query position, column j = key position,
/// darker = more weight; `labels` (T) name the tokens along both axes (when they fit).
pub fn attention_heatmap(
    path: &Path,
    probs: &[f32],
    labels: &[String],
    layer: usize,
    head: usize,
) -> Result<()> {
    let t = labels.len();
    assert_eq!(
        probs.len(),
        t * t,
        "attention_heatmap: probs must be (T, T)"
    );
    let cell = (720 / t.max(1)).clamp(2, 28) as i32;
    let show_labels = cell >= 8;
    let margin = if show_labels { 80 } else { 10 }; // room for 10-character labels
    let side = cell * t as i32;
    let (w, h) = (
        (margin + side + 20).max(640) as u32,
        (margin + side + 50) as u32,
    );
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let title = format!(
            "attention, layer {layer}, head {head}: row = query, column = key, darker = more weight"
        );
        root.draw(&Text::new(title, (10, 10), ("sans-serif", 14)))
            .map_err(draw_err)?;
        let (x0, y0) = (margin, margin + 34);
        for i in 0..t {
            for j in 0..t {
                let p = f64::from(probs[i * t + j]).clamp(0.0, 1.0);
                let shade = |full: f64| (255.0 - p * (255.0 - full)) as u8;
                let color = RGBColor(shade(20.0), shade(50.0), shade(140.0));
                let (x, y) = (x0 + j as i32 * cell, y0 + i as i32 * cell);
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    color.filled(),
                ))
                .map_err(draw_err)?;
            }
        }
        if show_labels {
            let font = ("monospace", (cell - 2).min(13)).into_font();
            for (k, label) in labels.iter().enumerate() {
                let label: String = match label.as_str() {
                    " " => "␣".to_string(), // a space would be invisible
                    l => l.chars().take(10).collect(),
                };
                let mid = k as i32 * cell + cell / 2;
                // Rows on the left, columns along the top (rotated).
                root.draw(&Text::new(
                    label.clone(),
                    (4, y0 + mid - cell / 3),
                    font.clone(),
                ))
                .map_err(draw_err)?;
                root.draw(&Text::new(
                    label,
                    (x0 + mid - cell / 3, 30),
                    font.clone().transform(FontTransform::Rotate90),
                ))
                .map_err(draw_err)?;
            }
        }
        root.draw(&Rectangle::new(
            [(x0, y0), (x0 + side, y0 + side)],
            BLACK.stroke_width(1),
        ))
        .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    write_atomically(path, &svg)
}
