//! Which weighting methods reach the Pareto front of CAGrad's two-objective toy problem, and the picture of their paths.
//!
//! `cargo run --release --example pareto_toy [-- STEPS]` runs every weighting method of
//! `coordinator/src/mtl/weighting/` on the toy problem of Liu et al. 2021 (CAGrad,
//! arXiv:2110.14048; `toy.py` in Cranial-XIX/CAGrad), also used by Nash-MTL and FAMO: two
//! losses of a point x in the plane, with the paper's three starting points, torch's Adam at
//! 0.001 and 100,000 steps (the paper's settings). The gradients are the exact ones, written
//! out below and checked against finite differences; each method combines them as the
//! coordinator would in an MTL experiment whose shared parameters are x. Prints each run's
//! end point, its distance to the paper's drawing of the Pareto set (the segment x1 in
//! [-7, 7] at x2 = -8.3552), its Pareto stationarity (the shortest combination of the two
//! gradients relative to the longer one: 0 where no direction improves both losses) and its
//! losses, and writes the paths to `bench/figures/pareto_toy.svg`.
//!
//! The losses dip to -20, and the methods that take logarithms or ratios of losses (UW, DWA,
//! GradNorm, FAMO) need positive ones, so every method is given `loss + 20` (positive on the
//! whole plane); gradients are unchanged by the shift.

use std::fmt::Write as _;

use outerloop_coordinator::mtl::weighting::adam::Adam;
use outerloop_coordinator::mtl::weighting::{Method, StepInput, TaskGradients};
use outerloop_worker::mtl::pareto_toy::{losses, LOSS_SHIFT};

/// The paper's starting points.
const STARTS: [[f64; 2]; 3] = [[-8.5, 7.5], [-8.5, -5.0], [9.0, 9.0]];
/// Height of the Pareto set, from `toy.py`'s plot.
const PARETO_X2: f64 = -8.3552;
/// Points kept per path for the picture.
const PICTURE_POINTS: usize = 250;
const METHODS: [&str; 12] = [
    "ew", "uw", "dwa", "gradnorm", "rlw", "pcgrad", "mgda", "cagrad", "nash_mtl", "imtl_g",
    "gradvac", "famo",
];

/// Euclidean distance from `x` to the Pareto set.
fn distance_to_front(x: [f64; 2]) -> f64 {
    let dx = (x[0].abs() - 7.0).max(0.0);
    (dx * dx + (x[1] - PARETO_X2).powi(2)).sqrt()
}

/// How far `x` is from Pareto stationarity: the norm of the shortest vector in the segment
/// between the two gradients (zero where no direction improves both losses), relative to the
/// longer gradient.
fn stationarity(x: [f64; 2]) -> f64 {
    let (_, [g1, g2]) = losses(x);
    let d = [g1[0] - g2[0], g1[1] - g2[1]];
    let dd = d[0] * d[0] + d[1] * d[1];
    // The point g2 + t (g1 - g2) nearest the origin, t clamped to [0, 1].
    let t = if dd > 0.0 {
        (-(g2[0] * d[0] + g2[1] * d[1]) / dd).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let p = [g2[0] + t * d[0], g2[1] + t * d[1]];
    let longest = g1[0].hypot(g1[1]).max(g2[0].hypot(g2[1]));
    p[0].hypot(p[1]) / longest.max(f64::MIN_POSITIVE)
}

/// One run: the path (every step's point) and how it ended.
struct Run {
    path: Vec<[f64; 2]>,
    stopped: Option<String>,
}

fn run(method: &Method, start: [f64; 2], steps: usize, seed: u64) -> Run {
    let mut weighting = method.build(2);
    let mut adam = Adam::new(0.001, 0.0, 2);
    let mut x = start;
    let mut path = Vec::with_capacity(steps + 1);
    path.push(x);
    for step in 0..steps {
        let (f, g) = losses(x);
        let losses = [f[0] + LOSS_SHIFT, f[1] + LOSS_SHIFT];
        // The shared parameters travel as f32, as an MTL experiment's would.
        let gradients: Vec<Vec<f32>> = g.iter().map(|g| vec![g[0] as f32, g[1] as f32]).collect();
        let input = StepInput {
            step: step as u64,
            losses: &losses,
            gradients: TaskGradients::Dense(&gradients),
            rng_key: seed ^ step as u64,
        };
        let combination = match weighting.combine(&input) {
            Ok(c) => c,
            Err(e) => {
                return Run {
                    path,
                    stopped: Some(format!("step {step}: {e}")),
                }
            }
        };
        let direction: Vec<f64> = combination.shared.iter().map(|&d| f64::from(d)).collect();
        adam.step(&mut x, &direction);
        path.push(x);
    }
    Run {
        path,
        stopped: None,
    }
}

fn main() {
    let steps: usize = std::env::args()
        .nth(1)
        .map_or(100_000, |a| a.parse().expect("STEPS: a whole number"));
    println!(
        "CAGrad's toy problem, Adam 0.001, {steps} steps; distance of the end point to the \
         Pareto set (x1 in [-7, 7], x2 = {PARETO_X2})"
    );
    println!(
        "{:<10} {:>16} {:>10} {:>13} {:>18}   end point",
        "method", "start", "distance", "stationarity", "losses"
    );
    let mut runs = Vec::new();
    for name in METHODS {
        let method: Method = toml::from_str(&format!("method = \"{name}\"")).expect("a method");
        for (i, &start) in STARTS.iter().enumerate() {
            let result = run(&method, start, steps, i as u64);
            let end = *result.path.last().expect("the start at least");
            let (f, _) = losses(end);
            println!(
                "{name:<10} {:>16} {:>10.4} {:>13.1e} {:>18}   ({:.3}, {:.3}){}",
                format!("({}, {})", start[0], start[1]),
                distance_to_front(end),
                stationarity(end),
                format!("({:.3}, {:.3})", f[0], f[1]),
                end[0],
                end[1],
                result
                    .stopped
                    .as_deref()
                    .map_or(String::new(), |s| format!("  stopped at {s}"))
            );
            runs.push((name, result));
        }
    }
    let svg = picture(&runs);
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/figures");
    std::fs::create_dir_all(&out).expect("cannot create bench/figures");
    let file = out.join("pareto_toy.svg");
    std::fs::write(&file, svg).expect("cannot write the picture");
    println!("\nwritten to {}", file.display());
}

/// One panel per method: the Pareto set, the starting points and the three paths.
fn picture(runs: &[(&str, Run)]) -> String {
    const PANEL: f64 = 220.0;
    const COLUMNS: usize = 4;
    const EXTENT: f64 = 11.0;
    const COLOURS: [&str; 3] = ["#d62728", "#1f77b4", "#2ca02c"];
    let rows = METHODS.len().div_ceil(COLUMNS);
    let (width, height) = (PANEL * COLUMNS as f64, PANEL * rows as f64 + 30.0);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r##"<text x="8" y="{}" fill="#444">grey: Pareto set; dots: starts (CAGrad toy problem, Adam 0.001); made by bench/pareto_toy.rs</text>"##,
        height - 10.0
    );
    for (panel, name) in METHODS.iter().enumerate() {
        let (left, top) = (
            (panel % COLUMNS) as f64 * PANEL,
            (panel / COLUMNS) as f64 * PANEL,
        );
        let inner = PANEL - 20.0;
        let at = |p: [f64; 2]| {
            (
                left + 10.0 + (p[0] + EXTENT) / (2.0 * EXTENT) * inner,
                top + 10.0 + (EXTENT - p[1]) / (2.0 * EXTENT) * inner,
            )
        };
        let _ = writeln!(
            svg,
            r##"<rect x="{}" y="{}" width="{inner}" height="{inner}" fill="#fafafa" stroke="#ccc"/>"##,
            left + 10.0,
            top + 10.0
        );
        let (a, b) = (at([-7.0, PARETO_X2]), at([7.0, PARETO_X2]));
        let _ = writeln!(
            svg,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#999" stroke-width="6"/>"##,
            a.0, a.1, b.0, b.1
        );
        let paths = runs.iter().filter(|(n, _)| n == name).map(|(_, r)| r);
        for (run, colour) in paths.zip(COLOURS) {
            let stride = (run.path.len() / PICTURE_POINTS).max(1);
            let mut points = String::new();
            for p in run.path.iter().step_by(stride).chain(run.path.last()) {
                let (x, y) = at(*p);
                let _ = write!(points, "{x:.1},{y:.1} ");
            }
            let _ = writeln!(
                svg,
                r#"<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>"#
            );
            let (x, y) = at(run.path[0]);
            let _ = writeln!(
                svg,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="black"/>"#
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" font-weight="bold">{name}</text>"#,
            left + 16.0,
            top + 28.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}
