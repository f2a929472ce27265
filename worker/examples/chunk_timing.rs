//! Times the worker's batched MAML chunk computation alone (no RPC), per phase.
use outerloop_worker::maml::{run, InnerLoop, Order, Path};
use outerloop_worker::sinusoid::{SinusoidFamily, SinusoidTask};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn main() {
    outerloop_worker::allocator::keep_freed_memory();
    tch::set_num_threads(1);
    let family = SinusoidFamily {
        shots: 10,
        queries: 10,
        x_range: [-5.0, 5.0],
    };
    let tasks: Vec<SinusoidTask> = (0..25)
        .map(|i| SinusoidTask {
            amplitude: 1.0 + i as f32 * 0.1,
            phase: 0.5,
            data_seed: i,
        })
        .collect();
    let shapes = [
        vec![40i64, 1],
        vec![40],
        vec![40, 40],
        vec![40],
        vec![1, 40],
        vec![1],
    ];
    let theta: Vec<Tensor> = shapes
        .iter()
        .map(|s| {
            (Tensor::randn(s.as_slice(), (Kind::Float, Device::Cpu)) * 0.3).set_requires_grad(true)
        })
        .collect();
    let order = if std::env::args().any(|a| a == "first") {
        Order::First
    } else {
        Order::Second
    };
    let inner = InnerLoop {
        steps: 1,
        lr: 0.01,
        order,
    };
    let paths = if std::env::args().any(|a| a == "batched") {
        vec![Path::Batched]
    } else {
        vec![Path::Batched, Path::PerTask]
    };
    for path in paths {
        let n = 2000;
        let mut t_mat = 0.0;
        let mut t_run = 0.0;
        for _ in 0..n {
            let a = Instant::now();
            let batch = family.materialise(&tasks, Kind::Float, Device::Cpu);
            let b = Instant::now();
            let out = run(&theta, &batch, inner, true, path);
            let g = out.grad_sum.unwrap();
            let _ = Vec::<f32>::try_from(Tensor::cat(
                &g.iter().map(|g| g.flatten(0, -1)).collect::<Vec<_>>(),
                0,
            ))
            .unwrap();
            let c = Instant::now();
            t_mat += (b - a).as_secs_f64();
            t_run += (c - b).as_secs_f64();
        }
        println!(
            "{path:?}: materialise {:.1} us, run {:.1} us per chunk of 25",
            t_mat / n as f64 * 1e6,
            t_run / n as f64 * 1e6
        );
    }
}
