//! Checks every weighting method's tests share: task-order independence and a helper to run
//! one step on plain vectors.

use super::{Combination, StepInput, Weighting};

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
            gradients,
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
