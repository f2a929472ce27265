//! What every weighting method's tests share: running one step on plain vectors, task-order
//! independence, saved state, recorded values and a fixed set of gradients.

use std::collections::BTreeMap;

use super::{Combination, StepInput, TaskGradients, Weighting};

/// Runs one step of `method` on `losses` and `gradients` at `step` with key `rng_key`.
pub fn combine(
    method: &mut dyn Weighting,
    step: u64,
    losses: &[f64],
    gradients: &[Vec<f32>],
    rng_key: u64,
) -> Combination {
    method
        .combine(&StepInput {
            step,
            losses,
            gradients: TaskGradients::Dense(gradients),
            rng_key,
        })
        .unwrap_or_else(|e| panic!("{}: {e}", method.name()))
}

/// Asserts that feeding the tasks in the order `permutation` (task `permutation[i]` at
/// position `i`) to fresh methods from `build`, for `steps` steps of the given losses and
/// gradients, gives the same shared direction (within `tolerance`, relative to its norm) and
/// the head scales permuted alike.
pub fn assert_task_order_independent(
    build: impl Fn() -> Box<dyn Weighting>,
    steps: &[(Vec<f64>, Vec<Vec<f32>>)],
    permutation: &[usize],
    tolerance: f64,
) {
    let (mut original, mut permuted) = (build(), build());
    for (step, (losses, gradients)) in steps.iter().enumerate() {
        let a = combine(original.as_mut(), step as u64, losses, gradients, 7);
        let p_losses: Vec<f64> = permutation.iter().map(|&i| losses[i]).collect();
        let p_gradients: Vec<Vec<f32>> =
            permutation.iter().map(|&i| gradients[i].clone()).collect();
        let b = combine(permuted.as_mut(), step as u64, &p_losses, &p_gradients, 7);
        let norm = a
            .shared
            .iter()
            .map(|&x| f64::from(x).powi(2))
            .sum::<f64>()
            .sqrt();
        for (x, y) in a.shared.iter().zip(&b.shared) {
            assert!(
                (f64::from(*x) - f64::from(*y)).abs() <= tolerance * norm.max(1e-12),
                "{}: step {step}: shared direction {:?} becomes {:?} with the tasks reordered",
                original.name(),
                a.shared,
                b.shared
            );
        }
        for (position, &task) in permutation.iter().enumerate() {
            assert!(
                (a.head_scale[task] - b.head_scale[position]).abs()
                    <= tolerance * a.head_scale[task].abs().max(1.0),
                "{}: step {step}: task {task}'s head scale {} becomes {} when reordered",
                original.name(),
                a.head_scale[task],
                b.head_scale[position]
            );
        }
    }
}

/// A method's saved state, as `restore` takes it.
pub fn saved(method: &dyn Weighting) -> BTreeMap<String, Vec<f64>> {
    method
        .state()
        .into_iter()
        .map(|(name, values)| (name.to_string(), values))
        .collect()
}

/// The values a combination recorded under `key`.
pub fn record<'a>(c: &'a Combination, key: &str) -> &'a [f64] {
    &c.record
        .iter()
        .find(|(k, _)| *k == key)
        .unwrap_or_else(|| panic!("nothing recorded under {key}"))
        .1
}

/// Four tasks in six dimensions, none a combination of the others; fixed so a failure
/// reproduces.
pub fn four_tasks() -> Vec<Vec<f32>> {
    vec![
        vec![1.0, -0.5, 0.3, 0.0, 2.0, -1.0],
        vec![-0.7, 1.2, 0.1, 0.9, 0.4, 0.3],
        vec![0.2, 0.3, -1.5, 0.6, -0.2, 0.8],
        vec![0.5, 0.5, 0.5, -1.1, 0.9, 0.1],
    ]
}
