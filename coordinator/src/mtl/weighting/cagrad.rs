//! CAGrad (Liu, Liu, Jin, Stone & Liu, NeurIPS 2021, arXiv:2110.14048).
//!
//! "Conflict-Averse Gradient Descent for Multi-task Learning".
//!
//! The direction `d` maximises the worst task's improvement `minᵢ gᵢ·d` within a ball of radius
//! `c‖g₀‖` around the average gradient `g₀`. Through its dual, `d = g₀ + (c‖g₀‖ / ‖g_w‖) g_w`
//! with `g_w = Σ wᵢ gᵢ` and `w` on the simplex minimising `g_w·g₀ + c‖g₀‖ ‖g_w‖`; then `d` is
//! divided by the `rescale` factor, as LibMTL's `CAGrad.backward` does. LibMTL hands the dual
//! to scipy's SLSQP with `1e-8` added under the square root and to both norms; here it is solved
//! exactly, by Frank–Wolfe with away steps ([`super::simplex`]) and an exact line search, to a
//! duality gap of `1e-12` times the size of the objective's gradient. Heads get their own
//! task's unweighted gradient (`head_scale` 1), as in LibMTL.
//!
//! `record`: `weights` (each task's coefficient `(1/T + λ wᵢ) / rescale` in `shared`), `w` (the
//! dual's point on the simplex, what LibMTL returns) and `gap` (the solver's duality gap).

use super::linalg::{mat_vec, quadratic};
use super::simplex::{frank_wolfe, Objective};
use super::{check_input, Combination, StepInput, Weighting, WeightingError};

/// The dual's duality gap at which the solver stops, relative to its gradient's size.
const TOLERANCE: f64 = 1e-12;

/// Far more than away-step Frank–Wolfe needs for a few dozen tasks.
const MAX_ITERATIONS: usize = 10_000;

/// What the direction is divided by at the end (LibMTL's `rescale` 0, 1 and 2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rescale {
    /// Nothing (LibMTL `rescale = 0`).
    None,
    /// `1 + c²` (LibMTL `rescale = 1`, its default).
    #[default]
    OnePlusCSquared,
    /// `1 + c` (LibMTL `rescale = 2`).
    OnePlusC,
}

#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The radius of the ball around the average gradient, as a fraction of its norm; the
    /// paper's convergence result needs `0 ≤ c < 1`, and `c = 0` is plain averaging. Default
    /// 0.5, LibMTL's `calpha` default (`LibMTL/config.py`).
    pub c: f64,
    /// `none | one_plus_c_squared | one_plus_c`; default `one_plus_c_squared`, LibMTL's
    /// `rescale = 1` default.
    pub rescale: Rescale,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            c: 0.5,
            rescale: Rescale::OnePlusCSquared,
        }
    }
}

impl Settings {
    pub fn check(&self, _tasks: usize) -> Result<(), String> {
        if !(0.0..1.0).contains(&self.c) {
            return Err(format!("`c` must be in [0, 1), got {}", self.c));
        }
        Ok(())
    }
}

pub struct CaGrad {
    settings: Settings,
}

impl CaGrad {
    pub fn new(settings: Settings) -> Self {
        CaGrad { settings }
    }
}

impl Weighting for CaGrad {
    fn name(&self) -> &'static str {
        "cagrad"
    }

    fn combine(&mut self, input: &StepInput) -> Result<Combination, WeightingError> {
        let tasks = input.tasks();
        check_input(self.name(), input, tasks)?;
        let m = input.gradients.gram();
        let mean = vec![1.0 / tasks as f64; tasks];
        // gᵢ·g₀ for every task, and ‖g₀‖ = √(mean of the Gram matrix).
        let toward_mean = mat_vec(&m, &mean);
        let mean_norm = quadratic(&m, &mean, &mean).max(0.0).sqrt();
        let dual = Dual {
            m: &m,
            toward_mean: &toward_mean,
            c: self.settings.c,
            radius: self.settings.c * mean_norm,
        };
        let size = toward_mean.iter().fold(0.0f64, |a, v| a.max(v.abs()))
            + dual.radius * (0..tasks).map(|i| m[i][i].sqrt()).fold(0.0, f64::max);
        let solution = frank_wolfe(&dual, mean.clone(), TOLERANCE * size, MAX_ITERATIONS);
        let w = solution.x;
        let w_norm = quadratic(&m, &w, &w).max(0.0).sqrt();
        // With g_w = 0 (the origin in the tasks' hull) LibMTL's λ = c‖g₀‖ / (0 + 1e-8) multiplies
        // a zero vector; the direction is g₀ either way.
        let lambda = if w_norm > 0.0 {
            dual.radius / w_norm
        } else {
            0.0
        };
        let rescale = match self.settings.rescale {
            Rescale::None => 1.0,
            Rescale::OnePlusCSquared => 1.0 + self.settings.c * self.settings.c,
            Rescale::OnePlusC => 1.0 + self.settings.c,
        };
        let weights: Vec<f64> = mean
            .iter()
            .zip(&w)
            .map(|(b, w)| (b + lambda * w) / rescale)
            .collect();
        Ok(Combination {
            shared: input.gradients.combine(&weights),
            head_scale: vec![1.0; tasks],
            record: vec![("weights", weights), ("w", w), ("gap", vec![solution.gap])],
        })
    }
}

/// CAGrad's dual, `F(w) = wᵀ M b + r √(wᵀ M w)` with `b` uniform and `r = c‖g₀‖`.
struct Dual<'a> {
    m: &'a [Vec<f64>],
    /// `M b`: each task's gradient dotted with the average gradient.
    toward_mean: &'a [f64],
    c: f64,
    /// `r = c‖g₀‖`.
    radius: f64,
}

impl Objective for Dual<'_> {
    fn gradient(&self, x: &[f64]) -> Vec<f64> {
        let mx = mat_vec(self.m, x);
        let norm = quadratic(self.m, x, x).max(0.0).sqrt();
        if norm > 0.0 {
            self.toward_mean
                .iter()
                .zip(&mx)
                .map(|(a, b)| a + self.radius * b / norm)
                .collect()
        } else {
            // At g_w = 0 the norm has no gradient; r G u with u = −g₀/‖g₀‖ is a subgradient,
            // and G g₀ = M b, so the whole subgradient is (1 − c) M b.
            self.toward_mean
                .iter()
                .map(|a| (1.0 - self.c) * a)
                .collect()
        }
    }

    fn line_search(&self, x: &[f64], direction: &[f64], max: f64) -> f64 {
        // F(x + γd) = F(x) + γ a + r (√q(γ) − √q(0)) with q(γ) = q₀ + 2γq₁ + γ²q₂, convex in
        // γ, so its minimum on [0, max] is where the derivative a + r (q₁ + γq₂) / √q(γ)
        // changes sign: bisection to rounding.
        let a: f64 = direction
            .iter()
            .zip(self.toward_mean)
            .map(|(d, t)| d * t)
            .sum();
        let q0 = quadratic(self.m, x, x);
        let q1 = quadratic(self.m, x, direction);
        let q2 = quadratic(self.m, direction, direction).max(0.0);
        let slope = |g: f64| {
            let q = q0 + 2.0 * g * q1 + g * g * q2;
            let rise = q1 + g * q2;
            // Where the segment passes through g_w = 0 the derivative jumps from −r√q₂ to
            // +r√q₂.
            let ratio = if q > 0.0 {
                rise / q.sqrt()
            } else {
                rise.signum() * q2.sqrt()
            };
            a + self.radius * ratio
        };
        if slope(max) <= 0.0 {
            return max;
        }
        if slope(0.0) >= 0.0 {
            return 0.0;
        }
        let (mut low, mut high) = (0.0, max);
        for _ in 0..200 {
            let middle = 0.5 * (low + high);
            if middle <= low || middle >= high {
                break;
            }
            if slope(middle) < 0.0 {
                low = middle;
            } else {
                high = middle;
            }
        }
        0.5 * (low + high)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mtl::weighting::testing::{assert_task_order_independent, combine as step};
    use crate::mtl::weighting::testing::{four_tasks, record};

    fn cagrad(c: f64) -> CaGrad {
        CaGrad::new(Settings {
            c,
            ..Settings::default()
        })
    }

    #[test]
    fn c_zero_is_the_average_gradient() {
        // With c = 0 the ball is the single point g₀, and the rescale 1 + c² is 1.
        let g = four_tasks();
        let c = step(&mut cagrad(0.0), 0, &[1.0; 4], &g, 0);
        for k in 0..6 {
            let mean = g.iter().map(|gi| f64::from(gi[k])).sum::<f64>() / 4.0;
            assert!(
                (f64::from(c.shared[k]) - mean).abs() < 1e-7,
                "{:?}",
                c.shared
            );
        }
        assert_eq!(record(&c, "weights"), &[0.25; 4]);
    }

    #[test]
    fn two_tasks_by_hand_with_the_dual_at_a_vertex() {
        // g₁ = (2, 0), g₂ = (0, 1): g₀ = (1, ½), ‖g₀‖ = √1.25, r = 0.5 √1.25 = 0.559017.
        // With w = (x, 1 − x): g_w = (2x, 1 − x), g_w·g₀ = ½ + 1.5x and ‖g_w‖ = √(5x² − 2x + 1),
        // so F'(x) = 1.5 + r (5x − 1)/√(5x² − 2x + 1) ≥ 1.5 − r √5 = 0.25 > 0: the minimum is
        // x = 0, w = (0, 1), g_w = g₂, λ = r / ‖g₂‖ = r.
        // d = g₀ + r g₂ = (1, ½ + r); divided by 1 + c² = 1.25: (0.8, 0.847214).
        let g = vec![vec![2.0f32, 0.0], vec![0.0, 1.0]];
        let c = step(&mut cagrad(0.5), 0, &[1.0, 1.0], &g, 0);
        let r = 0.5 * 1.25f64.sqrt();
        assert_eq!(record(&c, "w"), &[0.0, 1.0]);
        let weights = record(&c, "weights");
        assert!((weights[0] - 0.4).abs() < 1e-12, "{weights:?}");
        assert!((weights[1] - (0.5 + r) / 1.25).abs() < 1e-12, "{weights:?}");
        assert!((c.shared[0] - 0.8).abs() < 1e-6 && (c.shared[1] - 0.847_214).abs() < 1e-6);
        assert_eq!(c.head_scale, vec![1.0, 1.0]);
    }

    #[test]
    fn matches_the_primal_problem_by_brute_force() {
        // In two dimensions the primal, max over ‖d − g₀‖ ≤ c‖g₀‖ of minᵢ gᵢ·d, is a search over
        // the circle's angle (the optimum is on the circle when c > 0): an independent check
        // of the dual solution for three conflicting tasks.
        let g = vec![vec![1.0f32, 0.2], vec![-0.6, 1.0], vec![0.3, -0.9]];
        let c = step(
            &mut CaGrad::new(Settings {
                c: 0.4,
                rescale: Rescale::None,
            }),
            0,
            &[1.0; 3],
            &g,
            0,
        );
        let g0: [f64; 2] = [(1.0 - 0.6 + 0.3) / 3.0, (0.2 + 1.0 - 0.9) / 3.0];
        let radius = 0.4 * (g0[0] * g0[0] + g0[1] * g0[1]).sqrt();
        let worst = |d: [f64; 2]| {
            g.iter()
                .map(|gi| f64::from(gi[0]) * d[0] + f64::from(gi[1]) * d[1])
                .fold(f64::INFINITY, f64::min)
        };
        let best = (0..1_000_000)
            .map(|k| {
                let angle = k as f64 * std::f64::consts::TAU / 1e6;
                worst([g0[0] + radius * angle.cos(), g0[1] + radius * angle.sin()])
            })
            .fold(f64::NEG_INFINITY, f64::max);
        let d = [f64::from(c.shared[0]), f64::from(c.shared[1])];
        assert!((worst(d) - best).abs() < 1e-6, "{} vs {best}", worst(d));
        let offset = ((d[0] - g0[0]).powi(2) + (d[1] - g0[1]).powi(2)).sqrt();
        assert!((offset - radius).abs() < 1e-6, "{offset} vs {radius}");
    }

    #[test]
    fn does_not_depend_on_task_order() {
        assert_task_order_independent(
            || Box::new(cagrad(0.5)),
            &[(vec![1.0; 4], four_tasks())],
            &[3, 1, 0, 2],
            1e-6,
        );
    }

    #[test]
    fn degenerate_inputs_give_finite_answers() {
        // Opposite gradients average to zero, and so does CAGrad's direction; one task and
        // identical tasks give that task's gradient, scaled by (1 + c) / (1 + c²).
        let opposite = vec![vec![1.0f32, 2.0], vec![-1.0, -2.0]];
        let c = step(&mut cagrad(0.5), 0, &[1.0, 1.0], &opposite, 0);
        assert_eq!(c.shared, vec![0.0, 0.0]);
        for g in [vec![vec![3.0f32, 4.0]], vec![vec![3.0f32, 4.0]; 3]] {
            let c = step(&mut cagrad(0.5), 0, &vec![1.0; g.len()], &g, 0);
            for (x, want) in c.shared.iter().zip([3.0, 4.0]) {
                assert!(
                    (f64::from(*x) - want * 1.5 / 1.25).abs() < 1e-5,
                    "{:?}",
                    c.shared
                );
            }
        }
        let zero = vec![vec![0.0f32; 2]; 2];
        assert_eq!(
            step(&mut cagrad(0.5), 0, &[1.0, 1.0], &zero, 0).shared,
            vec![0.0, 0.0]
        );
    }

    #[test]
    fn settings_check_names_the_field_and_range() {
        assert_eq!(Settings::default().check(3), Ok(()));
        let err = cagrad_settings(1.5).check(3).unwrap_err();
        assert_eq!(err, "`c` must be in [0, 1), got 1.5");
        assert!(cagrad_settings(f64::NAN).check(3).is_err());
        let parsed: Settings = toml::from_str("c = 0.2\nrescale = \"none\"").unwrap();
        assert_eq!((parsed.c, parsed.rescale), (0.2, Rescale::None));
        assert!(toml::from_str::<Settings>("calpha = 0.2").is_err());
    }

    fn cagrad_settings(c: f64) -> Settings {
        Settings {
            c,
            ..Settings::default()
        }
    }
}
