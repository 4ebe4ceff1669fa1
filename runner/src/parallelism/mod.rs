//! `runner parallelism`: when and why the transformer trains faster than the LSTM, measured.
//!
//! Times full training steps (forward, backward, AdamW) of the matched `small` GPT and `small`
//! LSTM (3.3–3.5M parameters each, byte vocabulary, the same random tokens) on explicit rayon pools
//! of each `--threads` count, over two sweeps: T at a fixed number of tokens per step
//! (B = 4096 / T), and T at B = 1, where the LSTM has no batch to spread its recurrence over.
//! For each configuration it also counts the critical path the lecture counts: the kernel
//! launches the backward pass makes one after another ([`kernels::launch`]), where a walk
//! through T time steps counts T. The transformer's is fixed by its layers; the LSTM's grows
//! as L·T.
//!
//! Prints a Markdown report (tokens/s, GPT/LSTM ratio, 1 → N speedups, critical paths, and
//! what the numbers show) and writes it with the raw measurements and a chart under `--out`:
//! `parallelism.md`, `parallelism.json`, `parallelism.svg`.
//!
//! Leaves out: data loading and checkpoints (random tokens, no files read), and the GPT-2
//! vocabulary (the byte vocabulary keeps the head small, so the comparison is about the body).

mod cases;
mod chart;
mod measure;
mod project;
mod report;
mod simulate;

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use clap::Args as ClapArgs;

use crate::{fmt, plot};
use measure::{Machine, Run, WATCH, measure, other_work};
use model::{Gpt, GptConfig, LanguageModel, Lstm, LstmConfig, ModelKind, Precision, TokenizerKind};

use crate::precision::PrecisionArg;
use cases::{Bandwidth, Case, Forced, Pools};
use project::Projection;
use report::{Report, display_name, thousands};

#[derive(ClapArgs)]
pub struct Args {
    /// Sequence lengths T run at --batch-tokens tokens per step (B = batch-tokens / T); the
    /// flag alone, with no list, skips them.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "64,256,1024")]
    seq_lens: Vec<usize>,

    /// Tokens per step B·T of the --seq-lens sweep.
    #[arg(long, default_value_t = 4096)]
    batch_tokens: usize,

    /// Sequence lengths T run at B = 1; the flag alone skips them.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "256,1024")]
    b1_seq_lens: Vec<usize>,

    /// More shapes to measure, as B×T (e.g. 16x256,16x1024).
    #[arg(long, value_delimiter = ',', value_parser = parse_shape, value_name = "BxT")]
    shapes: Vec<Shape>,

    /// Also simulate tokens/s on these core counts (e.g. 1,2,4,8,16,32,64,128,256) from each
    /// step traced task by task on 1 thread as that many threads would split it, checked
    /// first against traced 2-thread steps. Writes projection.svg too.
    #[arg(long, value_delimiter = ',', value_name = "CORES")]
    project: Vec<usize>,

    /// Interleaved pairs (a 1-thread step, then a 2-thread one) per model and shape that
    /// check the simulation on 2 threads.
    #[arg(long, default_value_t = 20)]
    pairs: usize,

    /// Total memory bandwidth of the machine simulated by --project, GB/s (a stated
    /// parameter: no more cores than this machine's were measured).
    #[arg(long, default_value_t = 200.0, value_name = "GB/S")]
    bandwidth: f64,

    /// Thread counts to measure, each on its own rayon pool (e.g. 1,2,4,8,16); 0 = one per
    /// core.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,

    /// Timed training steps per measurement and round; the report gives the median of all
    /// rounds' steps.
    #[arg(long, default_value_t = 5)]
    steps: usize,

    /// Times the whole sweep runs, in turn (a noisy moment then hits every configuration a
    /// little instead of one a lot).
    #[arg(long, default_value_t = 2)]
    rounds: usize,

    /// Untimed steps before them, at least 1 (the first allocates activations, faults pages
    /// in and counts the kernel launches).
    #[arg(long, default_value_t = 1)]
    warmup: usize,

    /// Folder for parallelism.md, parallelism.json and parallelism.svg.
    #[arg(long, default_value = "parallelism")]
    out: PathBuf,

    /// Print the JSON instead of the Markdown report.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    precision: PrecisionArg,
}

/// Learning rate of the timed steps (AdamW, PyTorch's defaults otherwise); it changes no
/// timing, but keeps the weights moving as in real training.
pub(super) const LR: f32 = 1e-3;

/// The LSTM "keeps up" where its tokens/s are at least this fraction of the transformer's.
pub(super) const KEEPS_UP: f64 = 0.8;

/// One shape of training step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Shape {
    pub(super) b: usize,
    pub(super) t: usize,
}

impl Shape {
    pub(super) fn tokens(self) -> usize {
        self.b * self.t
    }

    pub(super) fn label(self) -> String {
        format!("B={} T={}", self.b, self.t)
    }
}

/// The two sweeps: T at B·T = `batch_tokens`, then T at B = 1.
pub(super) fn shapes(args: &Args) -> Result<Vec<Shape>> {
    let mut shapes = Vec::new();
    for &t in &args.seq_lens {
        ensure!(
            t > 0 && t <= args.batch_tokens && args.batch_tokens.is_multiple_of(t),
            "--seq-lens {t} does not divide --batch-tokens {}; hint: use powers of two, e.g. \
             --seq-lens 64,256,1024 --batch-tokens 4096",
            args.batch_tokens
        );
        shapes.push(Shape {
            b: args.batch_tokens / t,
            t,
        });
    }
    for &t in &args.b1_seq_lens {
        ensure!(t > 0, "--b1-seq-lens must be positive; hint: e.g. 256,1024");
        let s = Shape { b: 1, t };
        if !shapes.contains(&s) {
            shapes.push(s);
        }
    }
    for &s in &args.shapes {
        if !shapes.contains(&s) {
            shapes.push(s);
        }
    }
    ensure!(
        !shapes.is_empty(),
        "nothing to measure; hint: give --seq-lens or --b1-seq-lens"
    );
    Ok(shapes)
}

/// `16x1024` → B = 16, T = 1024.
fn parse_shape(s: &str) -> Result<Shape, String> {
    let parse = |x: &str| x.trim().parse::<usize>().ok().filter(|&n| n > 0);
    s.split_once(['x', 'X', '×'])
        .and_then(|(b, t)| {
            Some(Shape {
                b: parse(b)?,
                t: parse(t)?,
            })
        })
        .ok_or_else(|| format!("{s:?} is not B×T; hint: e.g. 16x256"))
}

/// The matched pair: `small` GPT (L=4, C=256, NH=4) with a position table long enough for
/// `t`, and `small` LSTM (L=3, H=360), both over the byte vocabulary.
pub(super) fn build(kind: ModelKind, t: usize, precision: Precision) -> Box<dyn LanguageModel> {
    let mut lm: Box<dyn LanguageModel> = match kind {
        ModelKind::Gpt => {
            let small = GptConfig::preset("small").expect("the small preset exists");
            let cfg = GptConfig {
                n_positions: small.n_positions.max(t),
                ..small
            };
            Box::new(Gpt::new(cfg, 0).expect("a valid config"))
        }
        ModelKind::Lstm => Box::new(Lstm::new(lstm_small(), 0)),
    };
    lm.set_precision(precision);
    lm
}

/// The `small` LSTM of the matched pair, over the byte vocabulary.
pub(super) fn lstm_small() -> LstmConfig {
    LstmConfig::preset("small", TokenizerKind::Byte).expect("the small preset exists")
}

pub(super) const KINDS: [ModelKind; 2] = [ModelKind::Gpt, ModelKind::Lstm];

/// The measurements of `--project` (see `cases.rs`), each case reported as it finishes.
fn simulate_cores(
    args: &Args,
    shapes: &[Shape],
    cores: &[usize],
    precision: Precision,
) -> Result<Projection> {
    let pools = Pools::new()?;
    let bandwidth = Bandwidth::measure(&pools);
    let here = cases::costs_here(&pools, bandwidth);
    let forced = [3, 5]
        .map(|tasks| Forced::measure(tasks, args.pairs, &pools))
        .into();
    let mut all = Vec::new();
    for &shape in shapes {
        for kind in KINDS {
            let start = std::time::Instant::now();
            all.push(Case::measure(
                kind, shape, args.pairs, cores, precision, &pools,
            )?);
            eprintln!(
                "traced {:>4} {:<12} {} pairs and {} notional steps in {:.0} s",
                display_name(kind),
                shape.label(),
                args.pairs,
                cores.iter().filter(|&&p| p != 2).count(),
                start.elapsed().as_secs_f64()
            );
        }
    }
    Ok(Projection {
        here,
        bandwidth,
        bw_total: args.bandwidth * 1e9,
        cores: cores.to_vec(),
        cases: all,
        forced,
    })
}

pub fn run(args: Args) -> Result<()> {
    let shapes = shapes(&args)?;
    let precision = args.precision.or(Precision::fastest()).effective();
    if precision != args.precision.or(Precision::fastest()) {
        eprintln!("{}", crate::precision::fallback_note(Precision::Bf16));
    }
    let mut machine = Machine::detect();
    let mut threads: Vec<usize> = args
        .threads
        .iter()
        .map(|&n| if n == 0 { machine.cores } else { n })
        .collect();
    threads.sort_unstable();
    threads.dedup();
    for &n in &threads {
        crate::threads::check(n, machine.cores)?;
    }
    let mut cores = args.project.clone();
    cores.sort_unstable();
    cores.dedup();
    ensure!(
        cores.is_empty() || (cores[0] > 0 && args.pairs > 0 && args.bandwidth > 0.0),
        "--project needs core counts of at least 1, --pairs of at least 1 and a positive \
         --bandwidth; hint: e.g. --project 1,2,4,8,16 --pairs 20 --bandwidth 200"
    );
    ensure!(
        args.steps > 0 && args.rounds > 0,
        "--steps and --rounds must be at least 1; hint: e.g. --steps 5 --rounds 2"
    );
    std::fs::create_dir_all(&args.out).with_context(|| {
        format!(
            "cannot create {}; hint: choose another --out",
            args.out.display()
        )
    })?;
    if let Some(&n) = threads.iter().find(|&&n| n > machine.cores) {
        eprintln!(
            "warning: {n} threads on {} cores: threads will share cores, and the LSTM's \
             per-step barrier waits for descheduled ones",
            machine.cores
        );
    }
    let command = std::iter::once("runner".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");

    // Rounds sweep everything in turn, so a slow minute of the machine spreads over every
    // configuration instead of spoiling one; each run's steps join its earlier rounds'.
    let mut runs: Vec<Run> = Vec::new();
    for round in 1..=args.rounds {
        for &shape in &shapes {
            for &n in &threads {
                // Both models back to back, so a noisy moment hits them alike.
                for kind in KINDS {
                    let run = measure(kind, shape, n, args.warmup, args.steps, false, precision)?;
                    eprintln!(
                        "round {round}/{}  {:>4} {:<12} {:<10} {:>8} tokens/s",
                        args.rounds,
                        display_name(kind),
                        shape.label(),
                        fmt::threads(n),
                        thousands(run.tokens_per_s())
                    );
                    match runs
                        .iter_mut()
                        .find(|r| (r.kind, r.shape, r.threads) == (kind, shape, n))
                    {
                        Some(earlier) => {
                            earlier.step_seconds.extend(run.step_seconds);
                            earlier.traces.extend(run.traces);
                        }
                        None => runs.push(run),
                    }
                }
            }
        }
    }
    let projection = if cores.is_empty() {
        None
    } else {
        Some(simulate_cores(&args, &shapes, &cores, precision)?)
    };
    machine.other_work[1] = other_work(WATCH);
    let report = Report {
        projection,
        machine,
        precision,
        command,
        steps: args.steps,
        rounds: args.rounds,
        warmup: args.warmup,
        batch_tokens: args.batch_tokens,
        shapes,
        threads,
        runs,
    };

    let markdown = report.markdown();
    let json = serde_json::to_string_pretty(&report.to_json())?;
    let write = |name: &str, text: &str| {
        let path = args.out.join(name);
        std::fs::write(&path, text).with_context(|| {
            format!(
                "cannot write {}; hint: choose another --out",
                path.display()
            )
        })
    };
    write("parallelism.md", &markdown)?;
    write("parallelism.json", &json)?;
    let legend = plot::Legend {
        colors: report.threads.iter().map(|&n| fmt::threads(n)).collect(),
        solid: "GPT".into(),
        dashed: "LSTM".into(),
    };
    plot::throughput_panels(
        &args.out.join("parallelism.svg"),
        &report.chart_panels(),
        &legend,
        "sequence length T",
    )?;
    let mut wrote = "parallelism.md, parallelism.json and parallelism.svg".to_string();
    if let Some(p) = &report.projection {
        let legend = plot::Legend {
            colors: p.seq_lens().iter().map(|t| format!("T = {t}")).collect(),
            solid: "GPT".into(),
            dashed: "LSTM".into(),
        };
        plot::throughput_panels(
            &args.out.join("projection.svg"),
            &p.chart_panels(),
            &legend,
            "cores P (projected by the work-span model)",
        )?;
        wrote = "parallelism.md, parallelism.json, parallelism.svg and projection.svg".into();
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{markdown}");
        println!("\nWrote {wrote} to {}", args.out.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use report::times;

    fn args(seq_lens: &[usize], batch_tokens: usize, b1: &[usize]) -> Args {
        Args {
            seq_lens: seq_lens.to_vec(),
            batch_tokens,
            b1_seq_lens: b1.to_vec(),
            shapes: Vec::new(),
            project: Vec::new(),
            pairs: 1,
            bandwidth: 200.0,
            threads: vec![1],
            steps: 1,
            rounds: 1,
            warmup: 1,
            out: PathBuf::from("unused"),
            json: false,
            precision: PrecisionArg::default(),
        }
    }

    #[test]
    fn shapes_follow_the_flags() {
        let s = shapes(&args(&[64, 1024], 4096, &[256, 1024])).unwrap();
        let want = [(64, 64), (4, 1024), (1, 256), (1, 1024)].map(|(b, t)| Shape { b, t });
        assert_eq!(s, want);
        // B = 1 shapes already in the first sweep are measured once.
        let s = shapes(&args(&[1024], 1024, &[1024])).unwrap();
        assert_eq!(s, [Shape { b: 1, t: 1024 }]);
        let e = shapes(&args(&[100], 4096, &[])).unwrap_err().to_string();
        assert!(e.contains("100") && e.contains("hint:"), "{e}");
        assert!(shapes(&args(&[], 4096, &[])).is_err());
    }

    #[test]
    fn critical_paths_are_counted_from_the_models() {
        let path = |kind, b, t| {
            let run = measure(kind, Shape { b, t }, 1, 1, 1, false, Precision::F32).unwrap();
            assert!(run.tokens_per_s() > 0.0);
            run.backward_launches
        };
        // The transformer's does not depend on the shape; the LSTM's grows by one launch per
        // layer and position, whatever the batch.
        let gpt = path(ModelKind::Gpt, 1, 8);
        assert_eq!(path(ModelKind::Gpt, 4, 32), gpt);
        let layers = lstm_small().num_layers as u64;
        let (short, long) = (path(ModelKind::Lstm, 4, 8), path(ModelKind::Lstm, 1, 32));
        assert_eq!(long - short, layers * 24);
        assert!(long > layers * 32 && gpt < 100, "gpt {gpt}, lstm {long}");
    }

    #[test]
    fn every_launch_of_a_training_step_says_how_it_splits() {
        for kind in KINDS {
            let run = measure(kind, Shape { b: 2, t: 16 }, 1, 1, 2, true, Precision::F32).unwrap();
            assert_eq!(run.traces.len(), 2);
            let launches = &run.traces[0].launches;
            assert!(launches.len() > 10, "{kind:?}: {launches:?}");
            for l in launches {
                assert!(
                    l.ways.is_some(),
                    "{kind:?}: the kernel at {}:{} does not state its ways",
                    l.kernel.file(),
                    l.kernel.line()
                );
            }
            // The LSTM's walks: on one thread each time step is one part
            // (kernels/src/recurrence/split.rs).
            let walks: Vec<_> = launches.iter().filter(|l| l.steps > 1).collect();
            match kind {
                ModelKind::Gpt => assert!(walks.is_empty()),
                ModelKind::Lstm => {
                    assert!(!walks.is_empty());
                    for w in walks {
                        assert_eq!(w.steps, 16);
                        assert_eq!(w.ways, Some(1));
                    }
                }
            }
        }
    }

    #[test]
    fn extra_shapes_parse_and_the_projection_checks_its_flags() {
        assert_eq!(parse_shape("16x1024"), Ok(Shape { b: 16, t: 1024 }));
        assert!(parse_shape("16").unwrap_err().contains("hint:"));
        assert!(parse_shape("0x8").is_err());
        let mut a = args(&[], 4096, &[8]);
        a.shapes = vec![Shape { b: 2, t: 8 }, Shape { b: 1, t: 8 }];
        assert_eq!(
            shapes(&a).unwrap(),
            [Shape { b: 1, t: 8 }, Shape { b: 2, t: 8 }]
        );
        let dir = tempfile::tempdir().unwrap();
        a.out = dir.path().to_path_buf();
        a.project = vec![0, 4];
        let e = run(a).unwrap_err().to_string();
        assert!(
            e.contains("--project needs core counts of at least 1"),
            "{e}"
        );
    }

    /// A report over made-up timings: the GPT at 10,000 tokens/s on 1 thread and 1.9× that on
    /// 2; the LSTM at `lstm[shape]` on 1 thread and `lstm_speedup` times that on 2.
    fn report(lstm: [f64; 2], lstm_speedup: f64) -> Report {
        let shapes = vec![Shape { b: 64, t: 64 }, Shape { b: 1, t: 1024 }];
        let mut runs = Vec::new();
        for (i, &shape) in shapes.iter().enumerate() {
            for threads in [1, 2] {
                for kind in KINDS {
                    let rate = match (kind, threads) {
                        (ModelKind::Gpt, 1) => 10_000.0,
                        (ModelKind::Gpt, _) => 19_000.0,
                        (ModelKind::Lstm, 1) => lstm[i],
                        (ModelKind::Lstm, _) => lstm_speedup * lstm[i],
                    };
                    runs.push(Run {
                        kind,
                        shape,
                        threads,
                        params: 3_300_000,
                        step_seconds: vec![shape.tokens() as f64 / rate; 3],
                        forward_launches: 0,
                        traces: Vec::new(),
                        backward_launches: match kind {
                            ModelKind::Gpt => 77,
                            ModelKind::Lstm => 3 * shape.t as u64 + 18,
                        },
                    });
                }
            }
        }
        Report {
            projection: None,
            machine: Machine {
                cpu: "test CPU".into(),
                cores: 2,
                simd: "test lanes",
                other_work: [Some(0.02), Some(0.01)],
            },
            precision: Precision::F32,
            command: "runner parallelism".into(),
            steps: 3,
            rounds: 1,
            warmup: 1,
            batch_tokens: 4096,
            shapes,
            threads: vec![1, 2],
            runs,
        }
    }

    #[test]
    fn the_report_says_what_the_numbers_show() {
        let r = report([11_000.0, 4_000.0], 1.2);
        let md = r.markdown();
        assert!(
            md.contains("| 64 | 64 | 1 | 10,000 | 11,000 | 0.91× |"),
            "{md}"
        );
        assert!(
            md.contains("| 1 | 1024 | 2 | 19,000 | 4,800 | 3.96× |"),
            "{md}"
        );
        assert!(md.contains("| 1 | 1024 | 1.90× | 1.20× |"), "{md}");
        assert!(md.contains("| 1 | 1024 | 77 | 3,090 | 40× |"), "{md}");
        let f = r.findings().join("\n");
        assert!(
            f.contains("T = 1024 the transformer trains at these multiples of the LSTM's tokens/s: 2.50× on 1 thread, 3.96× on 2 threads."),
            "{f}"
        );
        assert!(
            f.contains("77 kernel launches one after another at every T"),
            "{f}"
        );
        assert!(
            f.contains("from 210 at T = 64 to 3,090 at T = 1024 (3 more per position"),
            "{f}"
        );
        assert!(
            f.contains(
                "transformer's: it keeps up (at least 80% on some thread count) at B=64 T=64 \
                 (1.10× on 1 thread, 0.69× on 2 threads); it falls behind at B=1 T=1024 \
                 (0.40× on 1 thread, 0.25× on 2 threads)."
            ),
            "{f}"
        );
        assert!(!f.contains("is faster at"), "{f}");
        assert!(
            f.contains("A batch turns") && !f.contains("On one thread"),
            "{f}"
        );
        assert!(
            f.contains("speeds up 1.90×, the LSTM 1.20×: the LSTM can split only"),
            "{f}"
        );
        assert!(!f.contains("Caution"), "{f}");

        // Where the LSTM keeps up nowhere, and the machine was busy, the report says so.
        let mut r = report([5_000.0, 4_000.0], 1.2);
        r.machine.other_work[1] = Some(0.4);
        let f = r.findings().join("\n");
        assert!(
            f.contains("nowhere in this sweep") && f.contains("Caution"),
            "{f}"
        );

        // An LSTM that is faster everywhere and scales as well as the transformer.
        let f = report([12_000.0, 11_000.0], 2.0).findings().join("\n");
        assert!(
            f.contains("the LSTM is faster at B=64 T=64 (1.20× on 1 thread, 1.26× on 2 threads)"),
            "{f}"
        );
        assert!(
            f.contains("On one thread the critical path does not matter"),
            "{f}"
        );
        assert!(
            f.contains("the LSTM 2.00×: on 2 threads even a batch of one leaves every time step")
                && f.contains("(518,400 multiply-adds"),
            "{f}"
        );
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.5), "1,000");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(
            (times(3.04), times(40.2)),
            ("3.0×".to_string(), "40×".to_string())
        );
        assert_eq!(fmt::threads(1), "1 thread");
        assert_eq!(fmt::threads(16), "16 threads");
    }
}
