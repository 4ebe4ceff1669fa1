//! The runner's pictures, as SVG: the loss curves of a training run (`out/loss.svg`), an
//! attention heatmap (`runner score --plot-attention`), and tokens/s against T
//! (`runner parallelism`).
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
        .with_context(|| {
            format!(
                "cannot write {}; hint: check the free space and permissions of its folder",
                path.display()
            )
        })
}

fn draw_err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow!("plotting failed: {e}")
}

/// The range of finite `ys` with 5% to spare on each side, never below 0; (0, 1) for none.
fn padded_range(ys: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = ys
        .filter(|y| y.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
            (lo.min(y), hi.max(y))
        });
    if lo.is_finite() {
        (
            0.0f64.max(lo - 0.05 * (hi - lo)),
            hi + 0.05 * (hi - lo) + 1e-3,
        )
    } else {
        (0.0, 1.0)
    }
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
        let (lo, hi) = padded_range(ys);
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

/// One line of [`throughput_panels`]: tokens/s at each sequence length T (or core count).
pub struct Series {
    /// Index into the legend's colours (e.g. one per thread count).
    pub color: usize,
    /// Dashed with triangles, or solid with dots.
    pub dashed: bool,
    pub points: Vec<(usize, f64)>,
}

/// What the colours and the two line styles of [`throughput_panels`] mean.
pub struct Legend {
    /// One name per colour index ("1 thread", "2 threads", …).
    pub colors: Vec<String>,
    /// The solid and the dashed series ("GPT", "LSTM").
    pub solid: String,
    pub dashed: String,
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// Side-by-side panels of training tokens/s against T (or cores: `x_desc` names the x axis),
/// both axes logarithmic (x in doublings), one shared y range so the panels compare at a glance, and one legend strip
/// below them (a legend inside a panel would hide points).
pub fn throughput_panels(
    path: &Path,
    panels: &[(String, Vec<Series>)],
    legend: &Legend,
    x_desc: &str,
) -> Result<()> {
    let ys = panels
        .iter()
        .flat_map(|(_, s)| s.iter().flat_map(|s| s.points.iter().map(|p| p.1)))
        .filter(|y| *y > 0.0 && y.is_finite());
    let y_lo = ys.clone().fold(f64::INFINITY, f64::min).min(1e9) / 1.3;
    let y_hi = ys.fold(1.0, f64::max) * 1.3;
    // 1, 2, 5 × powers of ten.
    let y_ticks: Vec<f64> = (0..10)
        .flat_map(|e| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(e)))
        .filter(|y| (y_lo..=y_hi).contains(y))
        .collect();
    let color = |i: usize| PALETTE[i % PALETTE.len()];
    let mut svg = String::new();
    {
        let width = 480 * panels.len().max(1) as u32;
        let root = SVGBackend::with_string(&mut svg, (width, 470)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (plots, strip) = root.split_vertically(430);
        let areas = plots.split_evenly((1, panels.len().max(1)));
        for ((title, series), area) in panels.iter().zip(&areas) {
            // x is log2 T, so each doubling of T is one labelled step.
            let xs = series.iter().flat_map(|s| s.points.iter());
            let x_lo = xs.clone().map(|p| p.0).min().unwrap_or(1).max(1) as f64;
            let x_hi = xs.map(|p| p.0).max().unwrap_or(1).max(1) as f64;
            let (x_lo, x_hi) = (x_lo.log2(), x_hi.log2());
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(80)
                .build_cartesian_2d(
                    x_lo - 0.5..x_hi + 0.5,
                    (y_lo..y_hi).log_scale().with_key_points(y_ticks.clone()),
                )
                .map_err(draw_err)?;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc("training tokens/s")
                .x_labels((x_hi - x_lo) as usize + 2)
                .x_max_light_lines(0)
                .x_label_formatter(&|x| format!("{:.0}", x.exp2()))
                .y_label_formatter(&|y| crate::ckpt::thousands(y.round() as u64))
                .draw()
                .map_err(draw_err)?;
            for s in series {
                let (c, style) = (color(s.color), color(s.color).stroke_width(2));
                let points: Vec<(f64, f64)> = s
                    .points
                    .iter()
                    .map(|&(t, y)| ((t as f64).log2(), y))
                    .collect();
                if s.dashed {
                    chart
                        .draw_series(DashedLineSeries::new(points.clone(), 8, 5, style))
                        .map_err(draw_err)?;
                    chart
                        .draw_series(
                            points
                                .iter()
                                .map(|&p| TriangleMarker::new(p, 5, c.filled())),
                        )
                        .map_err(draw_err)?;
                } else {
                    chart
                        .draw_series(LineSeries::new(points.clone(), style))
                        .map_err(draw_err)?;
                    chart
                        .draw_series(points.iter().map(|&p| Circle::new(p, 4, c.filled())))
                        .map_err(draw_err)?;
                }
            }
        }
        // The legend strip: the two line styles, then one swatch per colour.
        let font = ("sans-serif", 14).into_font();
        let black = BLACK.stroke_width(2);
        let y = 15;
        let mut x = 20;
        for (name, dashed) in [(&legend.solid, false), (&legend.dashed, true)] {
            let (segments, marker): (&[(i32, i32)], DynElement<_, _>) = if dashed {
                (
                    &[(0, 8), (14, 22), (28, 36)],
                    TriangleMarker::new((x + 18, y), 5, BLACK.filled()).into_dyn(),
                )
            } else {
                (
                    &[(0, 36)],
                    Circle::new((x + 18, y), 4, BLACK.filled()).into_dyn(),
                )
            };
            for &(a, b) in segments {
                strip
                    .draw(&PathElement::new(vec![(x + a, y), (x + b, y)], black))
                    .map_err(draw_err)?;
            }
            strip.draw(&marker).map_err(draw_err)?;
            strip
                .draw(&Text::new(name.clone(), (x + 42, y - 8), font.clone()))
                .map_err(draw_err)?;
            x += 60 + 8 * name.chars().count() as i32;
        }
        x += 20;
        for (i, name) in legend.colors.iter().enumerate() {
            strip
                .draw(&Rectangle::new(
                    [(x, y - 6), (x + 18, y + 6)],
                    color(i).filled(),
                ))
                .map_err(draw_err)?;
            strip
                .draw(&Text::new(name.clone(), (x + 24, y - 8), font.clone()))
                .map_err(draw_err)?;
            x += 40 + 8 * name.chars().count() as i32;
        }
        root.present().map_err(draw_err)?;
    }
    write_atomically(path, &svg)
}

/// One line of [`curve_panels`].
pub struct Curve {
    pub label: String,
    /// Dashed, or solid.
    pub dashed: bool,
    pub points: Vec<(f64, f64)>,
}

/// Side-by-side panels of the same curves against different x axes (e.g. seconds and tokens
/// seen), linear axes, one shared y range, horizontal reference levels (grey, dashed), and a
/// legend in the first panel.
pub fn curve_panels(
    path: &Path,
    title: &str,
    panels: &[(String, Vec<Curve>)],
    y_desc: &str,
    levels: &[(String, f64)],
) -> Result<()> {
    let ys = panels
        .iter()
        .flat_map(|(_, c)| c.iter().flat_map(|c| c.points.iter().map(|p| p.1)))
        .chain(levels.iter().map(|l| l.1))
        .filter(|y| y.is_finite());
    let (lo, hi) = padded_range(ys);
    let mut svg = String::new();
    {
        let width = 520 * panels.len().max(1) as u32;
        let root = SVGBackend::with_string(&mut svg, (width, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let root = root.titled(title, ("sans-serif", 18)).map_err(draw_err)?;
        let areas = root.split_evenly((1, panels.len().max(1)));
        for (n, ((x_desc, curves), area)) in panels.iter().zip(&areas).enumerate() {
            let x_hi = curves
                .iter()
                .flat_map(|c| c.points.iter().map(|p| p.0))
                .filter(|x| x.is_finite())
                .fold(0.0, f64::max)
                .max(1e-9);
            let mut chart = ChartBuilder::on(area)
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(0.0..x_hi * 1.02, lo..hi)
                .map_err(draw_err)?;
            chart
                .configure_mesh()
                .x_desc(x_desc.as_str())
                .y_desc(y_desc)
                .x_label_formatter(&|x| {
                    if x_hi >= 1e7 {
                        format!("{:.0}M", x / 1e6)
                    } else if x_hi >= 1e6 {
                        format!("{:.1}M", x / 1e6)
                    } else if x_hi >= 1e4 {
                        format!("{:.0}k", x / 1e3)
                    } else {
                        format!("{x:.0}")
                    }
                })
                .draw()
                .map_err(draw_err)?;
            for (i, c) in curves.iter().enumerate() {
                let color = PALETTE[i % PALETTE.len()];
                let style = color.stroke_width(2);
                let series = if c.dashed {
                    chart.draw_series(DashedLineSeries::new(c.points.clone(), 8, 5, style))
                } else {
                    chart.draw_series(LineSeries::new(c.points.clone(), style))
                }
                .map_err(draw_err)?;
                if n == 0 {
                    series.label(c.label.clone()).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                }
                chart
                    .draw_series(c.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(draw_err)?;
            }
            for (label, y) in levels {
                let grey = RGBColor(120, 120, 120);
                let line = chart
                    .draw_series(DashedLineSeries::new(
                        vec![(0.0, *y), (x_hi * 1.02, *y)],
                        4,
                        4,
                        grey.stroke_width(1),
                    ))
                    .map_err(draw_err)?;
                if n == 0 {
                    line.label(label.clone()).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(1))
                    });
                }
            }
            if n == 0 {
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .position(SeriesLabelPosition::UpperRight)
                    .draw()
                    .map_err(draw_err)?;
            }
        }
        root.present().map_err(draw_err)?;
    }
    write_atomically(path, &svg)
}
