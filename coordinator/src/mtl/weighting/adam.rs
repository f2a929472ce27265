//! The small f64 Adam that the learned loss weightings (UW, GradNorm, FAMO) step their own
//! few parameters with, as `torch.optim.Adam` defines it.

use std::collections::BTreeMap;

use super::saved_state::entry;

/// `torch.optim.Adam` with the default betas (0.9, 0.999) and eps 1e-8, and its coupled
/// (L2) weight decay: the methods it serves were all published with torch's Adam.
#[derive(Clone, Debug, PartialEq)]
pub struct Adam {
    lr: f64,
    weight_decay: f64,
    steps: u64,
    m: Vec<f64>,
    v: Vec<f64>,
}

/// The names one method saves its Adam under: first moments, second moments, updates so far.
pub type AdamNames = [&'static str; 3];

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

impl Adam {
    pub fn new(lr: f64, weight_decay: f64, len: usize) -> Self {
        Adam {
            lr,
            weight_decay,
            steps: 0,
            m: vec![0.0; len],
            v: vec![0.0; len],
        }
    }

    /// One descent step of `params` along `grad`.
    pub fn step(&mut self, params: &mut [f64], grad: &[f64]) {
        self.steps += 1;
        let t = self.steps as f64;
        let bias1 = 1.0 - BETA1.powf(t);
        let bias2_sqrt = (1.0 - BETA2.powf(t)).sqrt();
        for (((p, &g), m), v) in params
            .iter_mut()
            .zip(grad)
            .zip(&mut self.m)
            .zip(&mut self.v)
        {
            // torch's `weight_decay` adds the L2 term to the gradient before the moments.
            let g = g + self.weight_decay * *p;
            *m = BETA1 * *m + (1.0 - BETA1) * g;
            *v = BETA2 * *v + (1.0 - BETA2) * g * g;
            *p -= self.lr / bias1 * *m / (v.sqrt() / bias2_sqrt + EPS);
        }
    }

    pub fn state(&self, names: AdamNames) -> Vec<(&'static str, Vec<f64>)> {
        vec![
            (names[0], self.m.clone()),
            (names[1], self.v.clone()),
            (names[2], vec![self.steps as f64]),
        ]
    }

    pub fn restore(
        &mut self,
        names: AdamNames,
        state: &BTreeMap<String, Vec<f64>>,
    ) -> Result<(), String> {
        let m = entry(state, names[0], self.m.len())?;
        let v = entry(state, names[1], self.v.len())?;
        let steps = entry(state, names[2], 1)?[0];
        if m.iter().any(|x| !x.is_finite()) {
            return Err(format!("{} is not finite", names[0]));
        }
        // A negative second moment would make every later step NaN.
        if v.iter().any(|x| !(x.is_finite() && *x >= 0.0)) {
            return Err(format!("{} must be finite and >= 0", names[1]));
        }
        if !(steps >= 0.0 && steps.fract() == 0.0 && steps < 2f64.powi(53)) {
            return Err(format!(
                "{} must be a whole number of updates, got {steps}",
                names[2]
            ));
        }
        self.m.copy_from_slice(m);
        self.v.copy_from_slice(v);
        self.steps = steps as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adam_matches_hand_computation() {
        let mut adam = Adam::new(0.01, 0.0, 2);
        let mut p = [1.0, -1.0];
        // The first step moves every coordinate by lr·|g|/(|g| + eps) against its gradient.
        adam.step(&mut p, &[3.0, -0.5]);
        let first = |g: f64| 0.01 * g / (g.abs() + 1e-8);
        assert!(
            (p[0] - (1.0 - first(3.0))).abs() < 1e-15
                && (p[1] - (-1.0 - first(-0.5))).abs() < 1e-15,
            "{p:?}"
        );
        // Second step, first coordinate, gradient 1: m = 0.9·0.3 + 0.1·1 = 0.37,
        // v = 0.999·0.009 + 0.001·1 = 0.009991, p = 0.99 − 0.01·(0.37/0.19)/(√(v/0.001999) + eps).
        adam.step(&mut p, &[1.0, -0.5]);
        let expected =
            1.0 - first(3.0) - 0.01 * (0.37 / 0.19) / ((0.009991f64 / 0.001999).sqrt() + 1e-8);
        assert!((p[0] - expected).abs() < 1e-14, "{} vs {expected}", p[0]);
    }

    #[test]
    fn weight_decay_is_added_to_the_gradient() {
        // With gradient 0 and decay 0.5 at p = 2 the effective gradient is +1: the first step
        // moves p down by lr·1/(1 + eps).
        let mut adam = Adam::new(0.1, 0.5, 1);
        let mut p = [2.0];
        adam.step(&mut p, &[0.0]);
        assert!((p[0] - (2.0 - 0.1 / (1.0 + 1e-8))).abs() < 1e-15, "{p:?}");
    }

    #[test]
    fn restore_continues_exactly_and_refuses_bad_entries() {
        const NAMES: AdamNames = ["t.m", "t.v", "t.steps"];
        let mut original = Adam::new(0.05, 0.01, 2);
        let mut p = [0.3, -0.2];
        original.step(&mut p, &[0.4, 1.5]);
        original.step(&mut p, &[-0.1, 0.7]);
        let saved: BTreeMap<String, Vec<f64>> = original
            .state(NAMES)
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .collect();
        let mut restored = Adam::new(0.05, 0.01, 2);
        restored.restore(NAMES, &saved).unwrap();
        let (mut a, mut b) = (p, p);
        original.step(&mut a, &[0.2, -0.9]);
        restored.step(&mut b, &[0.2, -0.9]);
        assert_eq!(a, b);

        let err = Adam::new(0.05, 0.01, 3).restore(NAMES, &saved).unwrap_err();
        assert!(err.contains("t.m has 2 values, expected 3"), "{err}");
        let mut missing = saved.clone();
        missing.remove("t.steps");
        let err = restored.restore(NAMES, &missing).unwrap_err();
        assert!(err.contains("t.steps is missing"), "{err}");
        let mut fractional = saved.clone();
        fractional.insert("t.steps".into(), vec![1.5]);
        assert!(restored.restore(NAMES, &fractional).is_err());
        let mut negative = saved.clone();
        negative.insert("t.v".into(), vec![0.0, -1e-9]);
        let err = restored.restore(NAMES, &negative).unwrap_err();
        assert!(err.contains("t.v must be finite and >= 0"), "{err}");
        let mut infinite = saved;
        infinite.insert("t.m".into(), vec![0.0, f64::INFINITY]);
        assert!(restored.restore(NAMES, &infinite).is_err());
    }
}
