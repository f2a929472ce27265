//! Where a worker's time goes in one conv4 second-order MAML chunk: the phases of `Maml::run`, timed one by one.
//!
//! `cargo run --release --example conv4_phases [-- TASKS]` (one libtorch thread, 64 filters,
//! 28x28 images, 5-way 1-shot with one query per class, one inner step; chunks of 8 tasks by
//! default, as `make bench-fewshot` runs them). Prints the median of 15 repetitions of each
//! phase and of the whole chunk.

use std::time::Instant;

use outerloop_proto::model::Conv4 as Conv4Layout;
use outerloop_worker::algorithms::{
    adapt, query_scores, Algorithm, Context, Maml, Order, Path, StepSize,
};
use outerloop_worker::data::TaskBatch;
use outerloop_worker::engine::leaf_parameters;
use outerloop_worker::models::{Conv4, Model};
use outerloop_worker::objective::Objective;
use tch::{Device, Kind, Tensor};

const REPS: usize = 15;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let tasks: i64 = std::env::args()
        .nth(1)
        .map_or(8, |a| a.parse().expect("TASKS: a number"));
    outerloop_worker::allocator::keep_freed_memory();
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let layout = Conv4Layout {
        channels: 1,
        image_size: 28,
        filters: 64,
        output: 5,
    }
    .layout();
    let theta = leaf_parameters(&layout, &layout.init(0), Device::Cpu);
    let images = || {
        (Tensor::rand([tasks, 5, 1, 28, 28], (Kind::Float, Device::Cpu)).gt(0.8))
            .to_kind(Kind::Float)
    };
    let labels = Tensor::arange(5, (Kind::Int64, Device::Cpu))
        .unsqueeze(0)
        .repeat([tasks, 1]);
    let batch = TaskBatch {
        support_x: images(),
        support_y: labels.shallow_clone(),
        query_x: images(),
        query_y: labels,
    };
    let cx = Context {
        model: &Conv4 as &dyn Model,
        objective: Objective::CrossEntropy,
        inner_steps: 1,
        inner_lr: 0.4,
        path: Path::Batched,
    };
    let maml = Maml {
        order: Order::Second,
    };
    for _ in 0..3 {
        maml.run(&cx, &theta, &batch, true);
    }
    let phases = [
        "metrics before adaptation",
        "inner step (explicit backward)",
        "query forward at the fast weights",
        "meta-gradient backward",
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); phases.len() + 1];
    for _ in 0..REPS {
        let t0 = Instant::now();
        let _ = query_scores(&cx, &theta, &batch);
        let t1 = Instant::now();
        let fast = adapt(&cx, &theta, &batch, StepSize::Fixed(cx.inner_lr), true);
        let t2 = Instant::now();
        let loss = cx
            .objective
            .per_task(&cx.model.forward(&fast, &batch.query_x), &batch.query_y);
        let t3 = Instant::now();
        let _ = Tensor::run_backward(&[loss.sum(None)], &theta, false, false);
        let t4 = Instant::now();
        let _ = maml.run(&cx, &theta, &batch, true);
        let t5 = Instant::now();
        for (i, (a, b)) in [(t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5)]
            .into_iter()
            .enumerate()
        {
            times[i].push((b - a).as_secs_f64() * 1e3);
        }
    }
    let whole = median(times[phases.len()].clone());
    println!("conv4 second-order MAML, a chunk of {tasks} tasks, one thread: {whole:.1} ms ({:.1} episodes/s)", tasks as f64 / whole * 1e3);
    for (name, t) in phases.iter().zip(&times) {
        let ms = median(t.clone());
        println!("  {name:<36} {ms:>7.1} ms  {:>4.0}%", 100.0 * ms / whole);
    }
}
