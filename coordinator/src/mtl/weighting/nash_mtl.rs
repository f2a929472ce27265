//! Nash-MTL (Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, ICML 2022).
//!
//! "Multi-Task Learning as a Bargaining Game", arXiv:2202.01017.
//!
//! The task weights `α > 0` solve `(G Gᵀ α)ᵢ = 1/αᵢ`; the shared direction is `Σ αᵢ gᵢ`, clipped
//! to norm `max_norm`, and each head's gradient is scaled by its `αᵢ`. As in the official code
//! (AvivNavon/nash-mtl, `NashMTL` in `methods/weight_methods.py`, which LibMTL copies), the
//! system is solved on the Gram matrix divided by its Frobenius norm `s` and the weights scaled
//! back by `1/√s` (the official constraint carries `s` for the same purpose), so the direction's
//! squared norm `αᵀMα` is the number of tasks; the weights multiply the losses (so heads get
//! `αᵢ` too: `head_scale` is `α`, not 1), and the shared parameters' gradient is then clipped
//! the way `torch.nn.utils.clip_grad_norm_` does it (`max_norm / (‖d‖ + 1e-6)` when below 1);
//! the weights are recomputed on steps that are multiples of `update_weights_every` and kept
//! in between.
//!
//! Where outerloop departs: the official code approximates the solution with up to
//! `optim_niter` = 20 rounds of a linearised convex program (cvxpy/ECOS), warm-started from
//! the previous step's `α` and stopped at a residual of 1e-3. Here the system is solved
//! exactly: it is the stationarity condition of the strictly convex
//! `f(α) = ½ αᵀMα − Σ log αᵢ`, which damped Newton minimises to rounding (`|αᵢ(Mα)ᵢ − 1|` below
//! 1e-12), so there is no `optim_niter` and no dependence on the previous step. The update
//! schedule counts `StepInput::step`, not calls, so a resumed run updates on the same steps.
//! When no positive solution exists, because a task's gradient is zero or zero lies in the
//! convex hull of the gradients (a Pareto-stationary point, which training approaches), the
//! previous weights are kept, as the official code keeps its last iterate when its solver
//! fails.
//!
//! `record`: `weights` (each task's coefficient in `shared`, `α` times the clipping factor),
//! `alpha` (the solved weights, also the head scales) and `clip` (the clipping factor, 1 when
//! the direction was short enough).

use std::collections::BTreeMap;

use super::linalg::{mat_vec, norm, solve};
use super::{check_input, Combination, StepInput, Weighting, WeightingError};

/// Newton iterations before the solver gives up; a solvable problem needs a few dozen at most.
const MAX_ITERATIONS: usize = 500;

/// `max |αᵢ (Mα)ᵢ − 1|` at which the solution is taken: `Mα = 1/α` to rounding.
const TOLERANCE: f64 = 1e-12;
/// The residual a solution that stopped improving must still meet to be taken.
const SETTLED: f64 = 1e-9;

#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Recompute the weights every this many steps and keep them in between. Default 1, the
    /// official code's and LibMTL's default.
    pub update_weights_every: u64,
    /// Clip the shared direction to this norm; 0 turns clipping off. Default 1.0, the
    /// official code's and LibMTL's default.
    pub max_norm: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            update_weights_every: 1,
            max_norm: 1.0,
        }
    }
}

impl Settings {
    pub fn check(&self, _tasks: usize) -> Result<(), String> {
        if self.update_weights_every == 0 {
            return Err("`update_weights_every` must be at least 1, got 0".to_string());
        }
        if !(self.max_norm.is_finite() && self.max_norm >= 0.0) {
            return Err(format!(
                "`max_norm` must be a finite number ≥ 0 (0 turns clipping off), got {}",
                self.max_norm
            ));
        }
        Ok(())
    }
}

pub struct NashMtl {
    settings: Settings,
    /// The latest solved weights; ones until the first solve, as in the official code.
    alpha: Vec<f64>,
}

impl NashMtl {
    pub fn new(settings: Settings, tasks: usize) -> Self {
        NashMtl {
            settings,
            alpha: vec![1.0; tasks],
        }
    }
}

impl Weighting for NashMtl {
    fn name(&self) -> &'static str {
        "nash_mtl"
    }

    fn combine(&mut self, input: &StepInput) -> Result<Combination, WeightingError> {
        let tasks = self.alpha.len();
        check_input(self.name(), input, tasks)?;
        if input
            .step
            .is_multiple_of(self.settings.update_weights_every.max(1))
        {
            let mut m = input.gradients.gram();
            // A zero gradient, or the origin in the gradients' hull (a Pareto-stationary
            // point, which training approaches), leaves the bargaining problem without a
            // solution; the previous weights stay, as the official code keeps its last ones.
            if (0..tasks).all(|i| m[i][i] > 0.0) {
                // Solved on M/s, better conditioned, then scaled back: (M/s)β = 1/β makes
                // α = β/√s solve Mα = 1/α, the paper's system, which the official code's
                // constraint `α_i s ((M/s)α)_i ≥ 1` also solves.
                let frobenius = m.iter().flatten().map(|v| v * v).sum::<f64>().sqrt();
                m.iter_mut().flatten().for_each(|v| *v /= frobenius);
                match bargaining_weights(&m) {
                    Ok(beta) => {
                        let scale = frobenius.sqrt();
                        self.alpha = beta.iter().map(|b| b / scale).collect();
                    }
                    Err(e) => {
                        tracing::debug!(step = input.step, error = %e, "nash_mtl keeps its previous weights")
                    }
                }
            }
        }
        let alpha = self.alpha.clone();
        let direction = input.gradients.combine(&alpha);
        let clip = if self.settings.max_norm > 0.0 {
            (self.settings.max_norm / (norm(&direction) + 1e-6)).min(1.0)
        } else {
            1.0
        };
        let (shared, weights) = if clip < 1.0 {
            let weights: Vec<f64> = alpha.iter().map(|a| a * clip).collect();
            (input.gradients.combine(&weights), weights)
        } else {
            (direction, alpha.clone())
        };
        Ok(Combination {
            shared,
            head_scale: alpha.clone(),
            record: vec![("weights", weights), ("alpha", alpha), ("clip", vec![clip])],
        })
    }

    fn state(&self) -> Vec<(&'static str, Vec<f64>)> {
        vec![("nash_mtl.alpha", self.alpha.clone())]
    }

    fn restore(&mut self, state: &BTreeMap<String, Vec<f64>>) -> Result<(), String> {
        match state.get("nash_mtl.alpha") {
            Some(alpha)
                if alpha.len() == self.alpha.len()
                    && alpha.iter().all(|a| a.is_finite() && *a > 0.0) =>
            {
                self.alpha.copy_from_slice(alpha);
                Ok(())
            }
            Some(alpha) => Err(format!(
                "nash_mtl.alpha must hold {} positive finite values, got {alpha:?}",
                self.alpha.len()
            )),
            None => Err("nash_mtl.alpha is missing".to_string()),
        }
    }
}

/// The `α > 0` with `(M α)ᵢ = 1/αᵢ` for a Gram matrix `m` with a positive diagonal: the minimiser
/// of `f(α) = ½ αᵀMα − Σ log αᵢ`, by Newton's method with a backtracking line search that keeps
/// `α` positive.
pub fn bargaining_weights(m: &[Vec<f64>]) -> Result<Vec<f64>, String> {
    let n = m.len();
    let objective = |alpha: &[f64]| {
        let ma = mat_vec(m, alpha);
        0.5 * alpha.iter().zip(&ma).map(|(a, b)| a * b).sum::<f64>()
            - alpha.iter().map(|a| a.ln()).sum::<f64>()
    };
    let worst_of = |alpha: &[f64]| {
        let ma = mat_vec(m, alpha);
        alpha
            .iter()
            .zip(&ma)
            .map(|(a, b)| (a * b - 1.0).abs())
            .fold(0.0, f64::max)
    };
    // Exact when the gradients are orthogonal, and the right scale otherwise.
    let mut alpha: Vec<f64> = (0..n).map(|i| 1.0 / m[i][i].sqrt()).collect();
    for _ in 0..MAX_ITERATIONS {
        let ma = mat_vec(m, &alpha);
        let worst = worst_of(&alpha);
        if worst <= TOLERANCE {
            return Ok(alpha);
        }
        // ∇f = Mα − 1/α, ∇²f = M + diag(1/α²), positive definite for α > 0.
        let residual: Vec<f64> = ma.iter().zip(&alpha).map(|(b, a)| b - 1.0 / a).collect();
        let mut hessian = m.to_vec();
        for (i, row) in hessian.iter_mut().enumerate() {
            row[i] += 1.0 / (alpha[i] * alpha[i]);
        }
        let negative: Vec<f64> = residual.iter().map(|r| -r).collect();
        let step = solve(&hessian, &negative, 0.0)
            .ok_or_else(|| "the Newton system is singular".to_string())?;
        let decrease: f64 = residual.iter().zip(&step).map(|(r, s)| r * s).sum();
        // A step below α's last bits changes nothing: an ill-conditioned M (nearly parallel
        // gradients) can leave the residual there a little above TOLERANCE.
        if alpha
            .iter()
            .zip(&step)
            .all(|(a, s)| s.abs() <= 4.0 * f64::EPSILON * a)
        {
            return settled(alpha, worst);
        }
        let current = objective(&alpha);
        let mut t = 1.0;
        let mut accepted = None;
        for _ in 0..60 {
            let next: Vec<f64> = alpha.iter().zip(&step).map(|(a, s)| a + t * s).collect();
            // Sufficient decrease of f, or, where f is flat to rounding near the minimum, of
            // the residual: Newton still converges there though f no longer tells.
            if next.iter().all(|&a| a > 0.0)
                && (objective(&next) <= current + 0.25 * t * decrease || worst_of(&next) < worst)
            {
                accepted = Some(next);
                break;
            }
            t *= 0.5;
        }
        match accepted {
            Some(next) => alpha = next,
            // Within rounding of the minimum, f cannot decrease any further.
            None => return settled(alpha, worst),
        }
    }
    let worst = worst_of(&alpha);
    settled(alpha, worst).map_err(|_| {
        format!(
            "no positive solution of Mα = 1/α after {MAX_ITERATIONS} Newton steps: the origin \
             lies in (or next to) the convex hull of the task gradients, so no direction \
             improves every task"
        )
    })
}

/// Where Newton stopped making progress: the solution if the equations hold to `SETTLED`.
fn settled(alpha: Vec<f64>, worst: f64) -> Result<Vec<f64>, String> {
    if worst <= SETTLED {
        Ok(alpha)
    } else {
        Err(format!(
            "Newton's method stalled with Mα = 1/α off by {worst:e}: the origin lies in (or \
             next to) the convex hull of the task gradients, so no direction improves every task"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mtl::weighting::linalg::gram;
    use crate::mtl::weighting::linalg::{dot, quadratic};
    use crate::mtl::weighting::testing::{assert_task_order_independent, combine as step};
    use crate::mtl::weighting::testing::{four_tasks, record};

    #[test]
    fn nearly_parallel_gradients_are_solved_not_refused() {
        // Gradients of CAGrad's toy problem (bench/pareto_toy.rs) at its first steps, where
        // Newton used to circle the solution with the residual just above 1e-12 until it gave
        // up. The solution exists: no combination with positive weights is zero.
        for g in [
            [[-0.28556105f32, 0.007262585], [-0.074002974, 0.00875675]],
            [[-2.8522236, 0.03305285], [-0.06314821, 0.11283191]],
            [[0.07149238, 0.00199207], [0.25094125, 0.0016772733]],
        ] {
            let g: Vec<Vec<f32>> = g.iter().map(|row| row.to_vec()).collect();
            let mut m = gram(&g);
            let frobenius = m.iter().flatten().map(|v| v * v).sum::<f64>().sqrt();
            m.iter_mut().flatten().for_each(|v| *v /= frobenius);
            let alpha = bargaining_weights(&m).unwrap_or_else(|e| panic!("{g:?}: {e}"));
            let ma = mat_vec(&m, &alpha);
            for (a, b) in alpha.iter().zip(&ma) {
                assert!((a * b - 1.0).abs() <= SETTLED, "{g:?}: α {alpha:?}");
            }
        }
    }

    #[test]
    fn orthogonal_gradients_get_the_inverse_of_their_norms() {
        // M = diag(‖gᵢ‖²) makes (Mα)ᵢ = ‖gᵢ‖² αᵢ = 1/αᵢ, so αᵢ = 1/‖gᵢ‖: ⅓ and ¼ for (3, 0, 0)
        // and (0, 4, 0).
        let g = vec![vec![3.0f32, 0.0, 0.0], vec![0.0, 4.0, 0.0]];
        let alpha = bargaining_weights(&gram(&g)).unwrap();
        assert!((alpha[0] - 1.0 / 3.0).abs() < 1e-15 && (alpha[1] - 0.25).abs() < 1e-15);
        // The method solves on M/‖M‖_F and scales back, so its weights are the same; unclipped,
        // shared = (3/3, 4/4, 0) = (1, 1, 0).
        let mut method = NashMtl::new(
            Settings {
                max_norm: 0.0,
                ..Settings::default()
            },
            2,
        );
        let c = step(&mut method, 0, &[1.0, 1.0], &g, 0);
        let alpha = record(&c, "alpha");
        assert!((alpha[0] - 1.0 / 3.0).abs() < 1e-12 && (alpha[1] - 0.25).abs() < 1e-12);
        assert_eq!(c.head_scale, alpha);
        for (x, want) in c.shared.iter().zip([1.0, 1.0, 0.0]) {
            assert!((f64::from(*x) - want).abs() < 1e-6, "{:?}", c.shared);
        }
    }

    #[test]
    fn the_solution_satisfies_the_bargaining_equations() {
        let m = gram(&four_tasks());
        let alpha = bargaining_weights(&m).unwrap();
        let ma = mat_vec(&m, &alpha);
        for (i, (a, b)) in alpha.iter().zip(&ma).enumerate() {
            assert!(*a > 0.0);
            assert!(
                (b - 1.0 / a).abs() < 1e-9,
                "task {i}: (Mα) = {b}, 1/α = {}",
                1.0 / a
            );
        }
        // Badly scaled gradients (norms 1e-3 to 1e3) still solve to the same relative accuracy.
        let scaled: Vec<Vec<f32>> = four_tasks()
            .into_iter()
            .zip([1e-3f32, 1.0, 10.0, 1e3])
            .map(|(g, s)| g.into_iter().map(|x| x * s).collect())
            .collect();
        let m = gram(&scaled);
        let alpha = bargaining_weights(&m).unwrap();
        for (a, b) in alpha.iter().zip(mat_vec(&m, &alpha)) {
            assert!((a * b - 1.0).abs() < 1e-9, "{a} · {b}");
        }
    }

    #[test]
    fn the_direction_is_clipped_to_max_norm() {
        // ‖Σ αᵢ gᵢ‖² = αᵀMα = Σ αᵢ (Mα)ᵢ = T: 4 here, so max_norm 1 clips it.
        let g = four_tasks();
        let c = step(
            &mut NashMtl::new(Settings::default(), 4),
            0,
            &[1.0; 4],
            &g,
            0,
        );
        let alpha = record(&c, "alpha");
        let m = gram(&g);
        assert!((quadratic(&m, alpha, alpha) - 4.0).abs() < 1e-9);
        assert!((dot(&c.shared, &c.shared).sqrt() - 1.0).abs() < 1e-5);
        let clip = record(&c, "clip")[0];
        assert!(clip < 1.0);
        for (w, a) in record(&c, "weights").iter().zip(alpha) {
            assert_eq!(*w, a * clip);
        }
    }

    #[test]
    fn does_not_depend_on_task_order() {
        for max_norm in [0.0, 1.0] {
            assert_task_order_independent(
                || {
                    Box::new(NashMtl::new(
                        Settings {
                            max_norm,
                            ..Settings::default()
                        },
                        4,
                    ))
                },
                &[(vec![1.0; 4], four_tasks())],
                &[1, 3, 0, 2],
                1e-6,
            );
        }
    }

    #[test]
    fn weights_are_kept_between_updates_and_survive_a_restore() {
        let settings = Settings {
            update_weights_every: 3,
            ..Settings::default()
        };
        let g = four_tasks();
        let shifted: Vec<Vec<f32>> = g.iter().rev().cloned().collect();
        let mut original = NashMtl::new(settings.clone(), 4);
        let first = step(&mut original, 0, &[1.0; 4], &g, 0);
        step(&mut original, 1, &[1.0; 4], &shifted, 0);
        let state: BTreeMap<String, Vec<f64>> = original
            .state()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let mut restored = NashMtl::new(settings, 4);
        restored.restore(&state).unwrap();
        let a = step(&mut original, 2, &[1.0; 4], &shifted, 0);
        let b = step(&mut restored, 2, &[1.0; 4], &shifted, 0);
        assert_eq!(a, b);
        // Steps 1 and 2 are not multiples of 3: the weights are step 0's.
        assert_eq!(record(&a, "alpha"), record(&first, "alpha"));
        // Step 3 solves again, for the new gradients.
        let c = step(&mut original, 3, &[1.0; 4], &shifted, 0);
        assert_ne!(record(&c, "alpha"), record(&first, "alpha"));
    }

    #[test]
    fn restore_refuses_missing_or_misshapen_state() {
        let mut method = NashMtl::new(Settings::default(), 2);
        assert!(method.restore(&BTreeMap::new()).is_err());
        let short = BTreeMap::from([("nash_mtl.alpha".to_string(), vec![1.0])]);
        assert!(method.restore(&short).is_err());
        let negative = BTreeMap::from([("nash_mtl.alpha".to_string(), vec![1.0, -1.0])]);
        assert!(method.restore(&negative).is_err());
    }

    #[test]
    fn unsolvable_steps_keep_the_previous_weights() {
        // A zero gradient, and two opposite gradients (the origin is their midpoint): no
        // positive solution, so the weights solved at the step before stay.
        let solvable = vec![vec![3.0f32, 0.0], vec![0.0, 4.0]];
        for g in [
            vec![vec![0.0f32, 0.0], vec![1.0, 0.0]],
            vec![vec![1.0f32, 2.0], vec![-1.0, -2.0]],
        ] {
            let mut method = NashMtl::new(Settings::default(), 2);
            let before = step(&mut method, 0, &[1.0, 1.0], &solvable, 0);
            let after = step(&mut method, 1, &[1.0, 1.0], &g, 0);
            assert_eq!(record(&after, "alpha"), record(&before, "alpha"));
            assert!(after.shared.iter().all(|x| x.is_finite()));
            assert!(bargaining_weights(&gram(&g)).is_err() || g[0] == [0.0, 0.0]);
        }
    }

    #[test]
    fn one_task_gets_the_inverse_of_its_norm() {
        // M = [‖g‖²] = [0.25], so α = 1/‖g‖ = 2 and the direction g/‖g‖ has norm 1, which
        // clip_grad_norm_'s rule scales by 1/(1 + 1e-6) all the same.
        let c = step(
            &mut NashMtl::new(Settings::default(), 1),
            0,
            &[1.0],
            &[vec![0.3, 0.4]],
            0,
        );
        assert!((record(&c, "alpha")[0] - 2.0).abs() < 1e-6);
        assert!((record(&c, "clip")[0] - 1.0 / (1.0 + 1e-6)).abs() < 1e-6);
    }

    #[test]
    fn settings_check_names_the_field() {
        assert_eq!(Settings::default().check(2), Ok(()));
        let zero = Settings {
            update_weights_every: 0,
            ..Settings::default()
        };
        assert!(zero
            .check(2)
            .unwrap_err()
            .contains("`update_weights_every`"));
        let negative = Settings {
            max_norm: -1.0,
            ..Settings::default()
        };
        assert!(negative.check(2).unwrap_err().contains("`max_norm`"));
        assert!(toml::from_str::<Settings>("optim_niter = 20").is_err());
    }
}
