//! PCGrad (Yu, Kumar, Gupta, Levine, Hausman & Finn, NeurIPS 2020, arXiv:2001.06782).
//!
//! "Gradient Surgery for Multi-Task Learning".
//!
//! Each task's gradient is projected off every other task's gradient it conflicts with
//! (negative dot product), visiting the others in a random order drawn from the step's key;
//! the shared direction is the sum of the projected gradients, and heads get their own task's
//! unweighted gradient (`head_scale` 1), as in LibMTL. Every projection subtracts a multiple of
//! an original gradient, so the projected gradients stay combinations `Σₖ Cᵢₖ gₖ`; outerloop
//! tracks the coefficients `C` through the Gram matrix instead of model-sized vectors and
//! combines the gradients once at the end. As in the paper's Algorithm 1, a task is only
//! projected off the others; LibMTL's loop also visits the task itself, which changes nothing
//! unless earlier projections turned its gradient against itself.
//!
//! `record`: `weights`, each original gradient's coefficient in `shared`.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{check_input, Combination, StepInput, Weighting, WeightingError};

pub struct PcGrad;

impl Weighting for PcGrad {
    fn name(&self) -> &'static str {
        "pcgrad"
    }

    fn combine(&mut self, input: &StepInput) -> Result<Combination, WeightingError> {
        check_input(self.name(), input, input.tasks())?;
        let m = input.gradients.gram();
        let tasks = m.len();
        let mut rng = ChaCha8Rng::seed_from_u64(input.rng_key);
        let mut weights = vec![0.0; tasks];
        for i in 0..tasks {
            // Row i of C: the projected gradient of task i in terms of the originals.
            let mut row = vec![0.0; tasks];
            row[i] = 1.0;
            let mut others: Vec<usize> = (0..tasks).filter(|&j| j != i).collect();
            others.shuffle(&mut rng);
            for j in others {
                let along: f64 = (0..tasks).map(|k| row[k] * m[k][j]).sum();
                if along < 0.0 {
                    // A negative dot product implies ‖gⱼ‖² > 0.
                    row[j] -= along / m[j][j];
                }
            }
            weights.iter_mut().zip(&row).for_each(|(w, c)| *w += c);
        }
        Ok(Combination {
            shared: input.gradients.combine(&weights),
            head_scale: vec![1.0; tasks],
            record: vec![("weights", weights)],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mtl::weighting::testing::record;
    use crate::mtl::weighting::testing::{assert_task_order_independent, combine as step};

    #[test]
    fn two_conflicting_gradients_by_hand() {
        // g₁ = (1, 0), g₂ = (−1, 1): g₁·g₂ = −1 < 0.
        // g₁' = g₁ − (−1/‖g₂‖²) g₂ = (1, 0) + ½(−1, 1) = (½, ½), orthogonal to g₂;
        // g₂' = g₂ − (−1/‖g₁‖²) g₁ = (−1, 1) + (1, 0) = (0, 1), orthogonal to g₁.
        // shared = (½, 3/2) = 2 g₁ + 3/2 g₂.
        let g = vec![vec![1.0f32, 0.0], vec![-1.0, 1.0]];
        let c = step(&mut PcGrad, 0, &[1.0, 1.0], &g, 0);
        assert_eq!(c.shared, vec![0.5, 1.5]);
        assert_eq!(record(&c, "weights"), &[2.0, 1.5]);
        assert_eq!(c.head_scale, vec![1.0, 1.0]);
    }

    #[test]
    fn gradients_without_conflict_are_summed_unchanged() {
        // Pairwise dot products 0.5, 1 and 0.5 are all ≥ 0 (and one pair is orthogonal).
        let g = vec![
            vec![1.0f32, 0.0, 0.5],
            vec![0.0, 1.0, 1.0],
            vec![0.5, 0.0, 0.0],
        ];
        let c = step(&mut PcGrad, 0, &[1.0; 3], &g, 3);
        assert_eq!(c.shared, vec![1.5, 1.0, 1.5]);
        assert_eq!(record(&c, "weights"), &[1.0, 1.0, 1.0]);
    }

    #[test]
    fn two_tasks_do_not_depend_on_order() {
        // With two tasks each has a single other task, so there is no random order to differ.
        let g = vec![vec![1.0f32, -2.0, 0.5], vec![-0.3, 1.0, 2.0]];
        assert_task_order_independent(|| Box::new(PcGrad), &[(vec![1.0, 1.0], g)], &[1, 0], 1e-7);
    }

    #[test]
    fn the_order_comes_from_the_key_alone() {
        // Three mutually conflicting gradients: the order of the projections matters, so some
        // keys must give different directions while any one key always gives the same one.
        let g = vec![vec![1.0f32, 0.1], vec![-0.8, 0.7], vec![-0.2, -1.0]];
        let run = |key| step(&mut PcGrad, 0, &[1.0; 3], &g, key).shared;
        assert_eq!(run(11), run(11));
        let distinct: std::collections::BTreeSet<Vec<u32>> = (0..16)
            .map(|key| run(key).iter().map(|x| x.to_bits()).collect())
            .collect();
        assert!(distinct.len() > 1, "every key gave the same order");
    }

    #[test]
    fn zero_and_single_gradients_pass_through() {
        let g = vec![vec![0.0f32, 0.0], vec![1.0, -1.0]];
        assert_eq!(
            step(&mut PcGrad, 0, &[1.0; 2], &g, 0).shared,
            vec![1.0, -1.0]
        );
        assert_eq!(
            step(&mut PcGrad, 0, &[1.0], &[vec![2.0, 3.0]], 0).shared,
            vec![2.0, 3.0]
        );
    }
}
