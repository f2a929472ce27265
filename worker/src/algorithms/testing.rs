//! Shared fixtures of the algorithm tests: small parameter sets, task batches, finite differences.

use tch::{Device, Kind, Tensor};

use crate::data::{SinusoidFamily, SinusoidTask, TaskBatch};

/// Random leaf tensors of the given shapes (scaled to keep activations moderate).
pub fn params(shapes: &[&[i64]], seed: i64, kind: Kind) -> Vec<Tensor> {
    tch::manual_seed(seed);
    shapes
        .iter()
        .map(|shape| (Tensor::randn(*shape, (kind, Device::Cpu)) * 0.7).set_requires_grad(true))
        .collect()
}

/// A tiny 1 -> 4 -> 3 -> 1 MLP's parameters.
pub fn theta(seed: i64, kind: Kind) -> Vec<Tensor> {
    params(&[&[4, 1], &[4], &[3, 4], &[3], &[1, 3], &[1]], seed, kind)
}

pub fn sinusoid_batch(tasks: usize, kind: Kind) -> TaskBatch {
    let family = SinusoidFamily {
        shots: 5,
        queries: 6,
        x_range: [-5.0, 5.0],
    };
    let tasks: Vec<SinusoidTask> = (0..tasks)
        .map(|i| SinusoidTask {
            amplitude: 0.5 + i as f32,
            phase: 0.3 * i as f32,
            data_seed: 100 + i as u64,
        })
        .collect();
    family.points(&tasks, kind, Device::Cpu)
}

/// Every value of `tensors`, in order, as f64.
pub fn flat(tensors: &[Tensor]) -> Vec<f64> {
    let parts: Vec<Tensor> = tensors
        .iter()
        .map(|t| t.detach().flatten(0, -1).to_kind(Kind::Double))
        .collect();
    Vec::<f64>::try_from(Tensor::cat(&parts, 0)).unwrap()
}

/// Central differences of `f` with respect to every coordinate of `theta`.
pub fn finite_differences(theta: &[Tensor], f: impl Fn(&[Tensor]) -> f64) -> Vec<f64> {
    let eps = 1e-6;
    let mut out = Vec::new();
    for (i, p) in theta.iter().enumerate() {
        for j in 0..p.numel() as i64 {
            let shifted = |delta: f64| {
                let moved: Vec<Tensor> = theta.iter().map(|t| t.detach().copy()).collect();
                let flat = moved[i].view([-1]);
                let _ = flat.get(j).g_add_scalar_(delta);
                f(&moved)
            };
            out.push((shifted(eps) - shifted(-eps)) / (2.0 * eps));
        }
    }
    out
}

/// Every coordinate within `rel` times the largest magnitude of `want`.
pub fn assert_close(got: &[f64], want: &[f64], rel: f64) {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= rel * scale,
            "coordinate {i}: {g} vs {w} (scale {scale})"
        );
    }
}

/// A small conv4 on 16x16 RGB images: 3 filters, 2 classes (`classes` 0: no head), with
/// batch-norm scales near 1 and shifts near 0 as initialised, which keeps every unit alive.
pub fn conv4_theta(seed: i64, kind: Kind) -> Vec<Tensor> {
    conv4_theta_with(seed, kind, 2)
}

pub fn conv4_theta_with(seed: i64, kind: Kind, classes: i64) -> Vec<Tensor> {
    let mut shapes: Vec<Vec<i64>> = Vec::new();
    for _ in 0..4 {
        shapes.extend([vec![3, 3, 3, 3], vec![3], vec![3], vec![3]]);
    }
    if classes > 0 {
        shapes.extend([vec![classes, 3], vec![classes]]);
    }
    let shapes: Vec<&[i64]> = shapes.iter().map(Vec::as_slice).collect();
    params(&shapes, seed, kind)
        .into_iter()
        .enumerate()
        .map(|(i, p)| match (i < 16, i % 4) {
            (true, 2) => (p.detach().abs() * 0.2 + 0.9).set_requires_grad(true),
            (true, 3) => (p.detach() * 0.1).set_requires_grad(true),
            _ => p,
        })
        .collect()
}

/// `tasks` episodes of 16x16 RGB noise, `ways` classes with `shots` support and `queries`
/// query images each, labelled class-major.
pub fn image_batch(tasks: i64, ways: i64, shots: i64, queries: i64, kind: Kind) -> TaskBatch {
    tch::manual_seed(21);
    let labels = |per_class: i64| {
        Tensor::arange(ways, (Kind::Int64, Device::Cpu))
            .repeat_interleave_self_int(per_class, None, None)
            .unsqueeze(0)
            .repeat([tasks, 1])
    };
    let images =
        |per_class: i64| Tensor::rand([tasks, ways * per_class, 3, 16, 16], (kind, Device::Cpu));
    TaskBatch {
        support_x: images(shots),
        support_y: labels(shots),
        query_x: images(queries),
        query_y: labels(queries),
    }
}
