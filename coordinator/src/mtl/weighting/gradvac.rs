//! GradVac (Wang, Tsvetkov, Firat & Cao, ICLR 2021, arXiv:2010.05874).
//!
//! "Gradient Vaccine: Investigating and Improving Multi-task Optimization in Massively
//! Multilingual Models".
//!
//! For each task `i` and every other task `j`, in a random order drawn from the step's key, the
//! cosine `φᵢⱼ` between task `i`'s (already adjusted) gradient and `gⱼ` is compared with a
//! target `φ̂ᵢⱼ`, an exponential moving average of past cosines that starts at 0; below it, a
//! multiple of `gⱼ` is added that raises the cosine exactly to the target. The shared direction
//! is the sum of the adjusted gradients; heads get their own task's unweighted gradient
//! (`head_scale` 1), as in LibMTL. Granularity is the whole model (LibMTL's
//! `GradVac_group_type = 0`): one cosine per pair over all shared parameters. As in PCGrad,
//! the adjusted gradients are tracked as coefficients of the originals through the Gram matrix.
//!
//! Departures from LibMTL's `GradVac.backward`: the moving average absorbs every observed
//! cosine, `φ̂ ← (1 − β) φ̂ + β φ`, as the paper defines it, where LibMTL updates it only when a
//! correction was made (so there its targets can only fall and never leave 0 for tasks that
//! agree); the correction uses the target from before the update, as LibMTL does. LibMTL's
//! `1e-8` guards are replaced by skipping a pair whose cosine is undefined (a zero gradient:
//! no correction, no update) and skipping the correction, not the update, when the target is
//! ±1, where no finite multiple of `gⱼ` reaches it.
//!
//! `record`: `weights`, each original gradient's coefficient in `shared`. State:
//! `gradvac.target_similarity`, the `T × T` targets row by row (`φ̂ᵢⱼ` at `i·T + j`).

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::linalg::quadratic;
use super::{check_input, Combination, StepInput, Weighting, WeightingError};

#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The moving average's step: `φ̂ ← (1 − beta) φ̂ + beta φ`; 0 keeps every target at 0,
    /// which is PCGrad. Default 0.5, LibMTL's `GradVac_beta` default (`LibMTL/config.py`).
    pub beta: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { beta: 0.5 }
    }
}

impl Settings {
    pub fn check(&self, _tasks: usize) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.beta) {
            return Err(format!("`beta` must be in [0, 1], got {}", self.beta));
        }
        Ok(())
    }
}

pub struct GradVac {
    settings: Settings,
    tasks: usize,
    /// `φ̂ᵢⱼ` at `i·tasks + j`.
    targets: Vec<f64>,
}

impl GradVac {
    pub fn new(settings: Settings, tasks: usize) -> Self {
        GradVac {
            settings,
            tasks,
            targets: vec![0.0; tasks * tasks],
        }
    }
}

impl Weighting for GradVac {
    fn name(&self) -> &'static str {
        "gradvac"
    }

    fn combine(&mut self, input: &StepInput) -> Result<Combination, WeightingError> {
        let tasks = self.tasks;
        check_input(self.name(), input, tasks)?;
        let m = input.gradients.gram();
        let beta = self.settings.beta;
        let mut rng = ChaCha8Rng::seed_from_u64(input.rng_key);
        let mut weights = vec![0.0; tasks];
        for i in 0..tasks {
            // Task i's adjusted gradient as Σₖ row[k] gₖ.
            let mut row = vec![0.0; tasks];
            row[i] = 1.0;
            let mut others: Vec<usize> = (0..tasks).filter(|&j| j != i).collect();
            others.shuffle(&mut rng);
            for j in others {
                let norm_i = quadratic(&m, &row, &row).max(0.0).sqrt();
                let norm_j = m[j][j].sqrt();
                if norm_i == 0.0 || norm_j == 0.0 {
                    continue;
                }
                let along: f64 = (0..tasks).map(|k| row[k] * m[k][j]).sum();
                let cosine = (along / (norm_i * norm_j)).clamp(-1.0, 1.0);
                let target = self.targets[i * tasks + j];
                let target_sine = (1.0 - target * target).max(0.0).sqrt();
                // A target within rounding of ±1 would divide the correction by a sine near 0
                // and blow the gradient up; such a pair is already as aligned as it can be.
                if cosine < target && target_sine > 1e-6 {
                    // Adding w gⱼ turns the angle to gⱼ from arccos φ to arccos φ̂ (the paper's
                    // equation 2, from the law of sines in the plane of the two vectors).
                    let sine = (1.0 - cosine * cosine).sqrt();
                    row[j] +=
                        norm_i * (target * sine - cosine * target_sine) / (norm_j * target_sine);
                }
                self.targets[i * tasks + j] = (1.0 - beta) * target + beta * cosine;
            }
            weights.iter_mut().zip(&row).for_each(|(w, c)| *w += c);
        }
        Ok(Combination {
            shared: input.gradients.combine(&weights),
            head_scale: vec![1.0; tasks],
            record: vec![("weights", weights)],
        })
    }

    fn state(&self) -> Vec<(&'static str, Vec<f64>)> {
        vec![("gradvac.target_similarity", self.targets.clone())]
    }

    fn restore(&mut self, state: &BTreeMap<String, Vec<f64>>) -> Result<(), String> {
        match state.get("gradvac.target_similarity") {
            Some(targets)
                if targets.len() == self.targets.len()
                    && targets.iter().all(|t| (-1.0..=1.0).contains(t)) =>
            {
                self.targets.copy_from_slice(targets);
                Ok(())
            }
            Some(targets) => Err(format!(
                "gradvac.target_similarity must hold {} cosines in [-1, 1], got {} values",
                self.targets.len(),
                targets.len()
            )),
            None => Err("gradvac.target_similarity is missing".to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mtl::weighting::testing::combine as step;
    use crate::mtl::weighting::testing::{record, saved};

    #[test]
    fn two_orthogonal_tasks_are_raised_to_a_known_target() {
        // Targets φ̂ = ½ for both pairs; g₁ = (1, 0), g₂ = (0, 1) have cosine 0 < ½.
        // w = ‖g₁‖ (½ · √(1 − 0) − 0 · √(1 − ¼)) / (‖g₂‖ √(1 − ¼)) = ½ / (√3/2) = 1/√3, so
        // g₁' = (1, 1/√3), whose cosine with g₂ is (1/√3) / √(4/3) = ½: the target, exactly.
        // By symmetry g₂' = (1/√3, 1); shared = (1 + 1/√3)(1, 1). The targets then move to
        // (1 − β) ½ + β · 0 = ¼ with β = ½.
        let mut method = GradVac::new(Settings::default(), 2);
        let half = BTreeMap::from([(
            "gradvac.target_similarity".to_string(),
            vec![0.0, 0.5, 0.5, 0.0],
        )]);
        method.restore(&half).unwrap();
        let g = vec![vec![1.0f32, 0.0], vec![0.0, 1.0]];
        let c = step(&mut method, 0, &[1.0, 1.0], &g, 0);
        let w = 1.0 / 3f64.sqrt();
        let weights = record(&c, "weights");
        assert!((weights[0] - (1.0 + w)).abs() < 1e-15 && (weights[1] - (1.0 + w)).abs() < 1e-15);
        for x in &c.shared {
            assert!((f64::from(*x) - (1.0 + w)).abs() < 1e-6, "{:?}", c.shared);
        }
        assert_eq!(
            saved(&method)["gradvac.target_similarity"],
            vec![0.0, 0.25, 0.25, 0.0]
        );
    }

    #[test]
    fn gradients_above_their_targets_are_summed_unchanged() {
        // Fresh targets are 0 and the pairwise cosines are positive: no correction. The targets
        // still learn the observed cosines: ½ · cos = ½ · 0.7 / (√1.04 · √1.25) for the pair.
        let g = vec![vec![1.0f32, 0.2], vec![0.5, 1.0]];
        let mut method = GradVac::new(Settings::default(), 2);
        let c = step(&mut method, 0, &[1.0, 1.0], &g, 5);
        assert_eq!(c.shared, vec![1.5, 1.2]);
        assert_eq!(record(&c, "weights"), &[1.0, 1.0]);
        assert_eq!(c.head_scale, vec![1.0, 1.0]);
        let cosine = 0.7 / (1.04f64.sqrt() * 1.25f64.sqrt());
        let targets = &saved(&method)["gradvac.target_similarity"];
        assert!(
            (targets[1] - 0.5 * cosine).abs() < 1e-7 && (targets[2] - 0.5 * cosine).abs() < 1e-7
        );
    }

    #[test]
    fn with_zero_targets_conflicts_are_projected_away_like_pcgrad() {
        // Target 0 makes w = ‖g₁‖ (−φ) / ‖g₂‖ = −g₁·g₂ / ‖g₂‖², PCGrad's projection: for
        // g₁ = (1, 0), g₂ = (−1, 1), shared = 2 g₁ + 3/2 g₂ = (½, 3/2).
        let g = vec![vec![1.0f32, 0.0], vec![-1.0, 1.0]];
        let c = step(
            &mut GradVac::new(Settings { beta: 0.0 }, 2),
            0,
            &[1.0; 2],
            &g,
            0,
        );
        let weights = record(&c, "weights");
        assert!((weights[0] - 2.0).abs() < 1e-15 && (weights[1] - 1.5).abs() < 1e-15);
    }

    #[test]
    fn state_roundtrip_continues_bit_identically() {
        let steps: Vec<Vec<Vec<f32>>> = vec![
            vec![
                vec![1.0, 0.1, -0.3],
                vec![-0.8, 0.7, 0.2],
                vec![-0.2, -1.0, 0.4],
            ],
            vec![
                vec![0.9, 0.3, 0.1],
                vec![-0.5, 0.9, -0.2],
                vec![0.1, -0.8, 0.7],
            ],
            vec![
                vec![1.1, -0.2, 0.2],
                vec![-0.7, 0.6, 0.5],
                vec![-0.4, -0.9, 0.1],
            ],
        ];
        let mut original = GradVac::new(Settings::default(), 3);
        for (step_index, g) in steps.iter().enumerate().take(2) {
            step(
                &mut original,
                step_index as u64,
                &[1.0; 3],
                g,
                step_index as u64,
            );
        }
        let mut restored = GradVac::new(Settings::default(), 3);
        restored.restore(&saved(&original)).unwrap();
        let a = step(&mut original, 2, &[1.0; 3], &steps[2], 2);
        let b = step(&mut restored, 2, &[1.0; 3], &steps[2], 2);
        assert_eq!(a, b);
        assert_eq!(saved(&original), saved(&restored));
        // The targets moved off zero, so the roundtrip carried something.
        assert!(saved(&original)["gradvac.target_similarity"]
            .iter()
            .any(|t| *t != 0.0));
    }

    #[test]
    fn restore_refuses_missing_or_misshapen_state() {
        let mut method = GradVac::new(Settings::default(), 2);
        assert!(method.restore(&BTreeMap::new()).is_err());
        let name = "gradvac.target_similarity".to_string();
        assert!(method
            .restore(&BTreeMap::from([(name.clone(), vec![0.0; 3])]))
            .is_err());
        assert!(method
            .restore(&BTreeMap::from([(name, vec![0.0, 2.0, 0.0, 0.0])]))
            .is_err());
    }

    #[test]
    fn same_key_same_direction() {
        let g = vec![vec![1.0f32, 0.1], vec![-0.8, 0.7], vec![-0.2, -1.0]];
        let run = |key| {
            step(
                &mut GradVac::new(Settings::default(), 3),
                0,
                &[1.0; 3],
                &g,
                key,
            )
        };
        assert_eq!(run(4), run(4));
    }

    #[test]
    fn degenerate_inputs_give_finite_answers() {
        // A zero gradient has no cosine: nothing is corrected against it or learned about it.
        // Identical gradients have cosine 1: no correction, and the target moves to ½.
        let mut method = GradVac::new(Settings::default(), 2);
        let c = step(
            &mut method,
            0,
            &[1.0; 2],
            &[vec![0.0, 0.0], vec![1.0, 2.0]],
            0,
        );
        assert_eq!(c.shared, vec![1.0, 2.0]);
        assert_eq!(saved(&method)["gradvac.target_similarity"], vec![0.0; 4]);
        let c = step(
            &mut method,
            1,
            &[1.0; 2],
            &[vec![1.0, 2.0], vec![1.0, 2.0]],
            0,
        );
        assert_eq!(c.shared, vec![2.0, 4.0]);
        let targets = &saved(&method)["gradvac.target_similarity"];
        assert!((targets[1] - 0.5).abs() < 1e-12, "{targets:?}");
    }

    #[test]
    fn settings_check_names_the_field() {
        assert_eq!(Settings::default().check(2), Ok(()));
        assert_eq!(
            Settings { beta: 1.5 }.check(2).unwrap_err(),
            "`beta` must be in [0, 1], got 1.5"
        );
    }
}
