//! What each MTL weighting method costs the coordinator per step, against copying the gradients once.
//!
//! `cargo run --release --example weighting_cost [-- TASKS PARAMS]` (10 tasks of 1,000,000
//! shared parameters by default, issue 6's benchmark size). Each method combines the same
//! random gradients; the reference is one `memcpy` of all of them, the least any method that
//! reads every gradient can cost. Prints the median of 7 repetitions.

use std::time::Instant;

use outerloop_coordinator::mtl::weighting::{linalg, Method, StepInput};
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
    println!("{tasks} tasks x {params} shared parameters; median of {REPS}");
    println!("{:<10} {:>10} {:>14}", "method", "ms", "x one memcpy");
    println!("{:<10} {:>10.2} {:>14.1}", "memcpy", copy * 1e3, 1.0);
    // The two kernels the gradient methods are made of.
    let coefficients: Vec<f64> = (0..tasks).map(|t| 1.0 / (t + 1) as f64).collect();
    let kernels: [(&str, &dyn Fn()); 2] = [
        ("gram", &|| {
            drop(std::hint::black_box(linalg::gram(&gradients)))
        }),
        ("combine", &|| {
            drop(std::hint::black_box(linalg::combine(
                &coefficients,
                &gradients,
            )))
        }),
    ];
    for (name, kernel) in kernels {
        let seconds = median(
            (0..REPS)
                .map(|_| {
                    let start = Instant::now();
                    kernel();
                    start.elapsed().as_secs_f64()
                })
                .collect(),
        );
        println!(
            "{name:<10} {:>10.2} {:>14.1}",
            seconds * 1e3,
            seconds / copy
        );
    }
    let names = [
        "ew", "uw", "dwa", "gradnorm", "rlw", "pcgrad", "mgda", "cagrad", "nash_mtl", "imtl_g",
        "gradvac", "famo",
    ];
    for name in names {
        let method: Method = toml::from_str(&format!("method = \"{name}\"")).expect("a method");
        let mut weighting = method.build(tasks);
        let seconds = median(
            (0..REPS)
                .map(|step| {
                    let input = StepInput {
                        step: step as u64,
                        losses: &losses,
                        gradients: &gradients,
                        rng_key: step as u64,
                    };
                    let start = Instant::now();
                    let combination = weighting.combine(&input);
                    let elapsed = start.elapsed().as_secs_f64();
                    std::hint::black_box(combination.expect("the method combines"));
                    elapsed
                })
                .collect(),
        );
        println!(
            "{name:<10} {:>10.2} {:>14.1}",
            seconds * 1e3,
            seconds / copy
        );
    }
}
