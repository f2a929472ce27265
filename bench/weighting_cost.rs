//! What each MTL weighting method costs the coordinator per step, against copying the gradients once.
//!
//! `cargo run --release --example weighting_cost [-- TASKS PARAMS]` (10 tasks of 1,000,000
//! shared parameters by default, issue 6's benchmark size). Each method combines the same
//! random gradients; the reference is one `memcpy` of all of them, the least any method that
//! reads every gradient can cost. The last column is the same work on gradients of the same
//! size kept factored (`train.shared_gradients = "factored"`). Prints the median of 7
//! repetitions.

use std::time::Instant;

use outerloop_coordinator::mtl::factored::FactoredGradients;
use outerloop_coordinator::mtl::weighting::{Method, StepInput, TaskGradients};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const REPS: usize = 7;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut number = |default: usize| {
        args.next()
            .map_or(default, |a| a.parse().expect("TASKS PARAMS: whole numbers"))
    };
    let (tasks, params) = (number(10), number(1_000_000));
    // As in the coordinator's update: the vector threads spin for work between calls.
    let _awake = outerloop_coordinator::parallel::awake();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    // A shared component plus noise: correlated, partly conflicting gradients, as tasks give.
    let common: Vec<f32> = (0..params).map(|_| rng.random_range(-1.0..1.0)).collect();
    let gradients: Vec<Vec<f32>> = (0..tasks)
        .map(|_| {
            common
                .iter()
                .map(|&c| 0.3 * c + rng.random_range(-1.0f32..1.0))
                .collect()
        })
        .collect();
    let losses: Vec<f64> = (0..tasks).map(|t| 1.0 + t as f64 * 0.1).collect();

    let copy = median(
        (0..REPS)
            .map(|_| {
                let start = Instant::now();
                let copies: Vec<Vec<f32>> = gradients.iter().map(|g| g.to_vec()).collect();
                std::hint::black_box(copies);
                start.elapsed().as_secs_f64()
            })
            .collect(),
    );
    // The same tasks' gradients of issue 6's shared layers 250 -> 1000 -> 750 (1,001,750
    // values each) kept factored, from a batch of 100 rows: what the coordinator holds when
    // `train.shared_gradients` is factored.
    let (layers, rows) = (vec![(250, 1000), (1000, 750)], 100);
    let mut draw = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
    let inputs: Vec<Vec<f32>> = layers.iter().map(|l| draw(rows * l.0)).collect();
    let deltas: Vec<Vec<Vec<f32>>> = (0..tasks)
        .map(|_| layers.iter().map(|l| draw(rows * l.1)).collect())
        .collect();
    let factored = FactoredGradients::new(layers, rows, inputs, deltas).expect("the shapes fit");
    let forms = [
        TaskGradients::Dense(&gradients),
        TaskGradients::Factored(&factored),
    ];
    println!(
        "{tasks} tasks x {params} shared parameters, and x {} kept factored (100 rows, layers \
         250 -> 1000 -> 750); median of {REPS}",
        factored.len()
    );
    println!(
        "{:<10} {:>10} {:>14} {:>12}",
        "method", "ms", "x one memcpy", "factored ms"
    );
    println!("{:<10} {:>10.2} {:>14.1}", "memcpy", copy * 1e3, 1.0);
    let timed = |f: &mut dyn FnMut(usize)| {
        median(
            (0..REPS)
                .map(|rep| {
                    let start = Instant::now();
                    f(rep);
                    start.elapsed().as_secs_f64()
                })
                .collect(),
        )
    };
    let row = |name: &str, [dense, factored]: [f64; 2]| {
        println!(
            "{name:<10} {:>10.2} {:>14.1} {:>12.2}",
            dense * 1e3,
            dense / copy,
            factored * 1e3
        );
    };
    // The two kernels the gradient methods are made of.
    let coefficients: Vec<f64> = (0..tasks).map(|t| 1.0 / (t + 1) as f64).collect();
    row(
        "gram",
        forms.map(|g| timed(&mut |_| drop(std::hint::black_box(g.gram())))),
    );
    row(
        "combine",
        forms.map(|g| timed(&mut |_| drop(std::hint::black_box(g.combine(&coefficients))))),
    );
    let names = [
        "ew", "uw", "dwa", "gradnorm", "rlw", "pcgrad", "mgda", "cagrad", "nash_mtl", "imtl_g",
        "gradvac", "famo",
    ];
    for name in names {
        let method: Method = toml::from_str(&format!("method = \"{name}\"")).expect("a method");
        let seconds = forms.map(|gradients| {
            let mut weighting = method.build(tasks);
            timed(&mut |step| {
                let input = StepInput {
                    step: step as u64,
                    losses: &losses,
                    gradients,
                    rng_key: step as u64,
                };
                std::hint::black_box(weighting.combine(&input).expect("the method combines"));
            })
        });
        row(name, seconds);
    }
}
