//! Outer optimizers (SGD with momentum, Adam) on flat f32 parameter buffers, as torch.optim defines them.

use std::collections::BTreeMap;

use crate::spec::{MetaSpec, OptimizerKind};

/// An outer optimizer: one update of `params` from the meta-gradient `grad`. The learning rate
/// is given at each step, so a schedule needs no state of its own (and resumes exactly).
#[derive(Clone, Debug)]
pub enum OuterOptimizer {
    Sgd { momentum: f32, velocity: Vec<f32> },
    Adam(Adam),
}

#[derive(Clone, Debug)]
pub struct Adam {
    beta1: f32,
    beta2: f32,
    eps: f32,
    step: i32,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl OuterOptimizer {
    /// The outer optimizer a meta-learning spec names.
    pub fn new(meta: &MetaSpec, param_count: usize) -> Self {
        Self::with(
            meta.optimizer,
            meta.momentum,
            meta.betas,
            meta.eps,
            param_count,
        )
    }

    /// An optimizer of `kind` with its settings (momentum for SGD, betas and eps for Adam).
    pub fn with(
        kind: OptimizerKind,
        momentum: f32,
        betas: [f32; 2],
        eps: f32,
        param_count: usize,
    ) -> Self {
        match kind {
            OptimizerKind::Sgd => OuterOptimizer::Sgd {
                momentum,
                velocity: vec![0.0; param_count],
            },
            OptimizerKind::Adam => OuterOptimizer::Adam(Adam {
                beta1: betas[0],
                beta2: betas[1],
                eps,
                step: 0,
                m: vec![0.0; param_count],
                v: vec![0.0; param_count],
            }),
        }
    }

    /// The state a checkpoint must keep: updates applied so far and the named buffers.
    pub fn state(&self) -> (u64, Vec<(&'static str, &[f32])>) {
        match self {
            OuterOptimizer::Sgd { velocity, .. } => (0, vec![("optimizer.velocity", velocity)]),
            OuterOptimizer::Adam(adam) => (
                adam.step as u64,
                vec![("optimizer.m", &adam.m), ("optimizer.v", &adam.v)],
            ),
        }
    }

    /// Restores what `state` returned; refuses buffers that are missing or of the wrong size.
    pub fn restore(
        &mut self,
        updates: u64,
        buffers: &BTreeMap<String, Vec<f32>>,
    ) -> Result<(), String> {
        let take = |name: &str, into: &mut Vec<f32>| match buffers.get(name) {
            Some(values) if values.len() == into.len() => {
                into.copy_from_slice(values);
                Ok(())
            }
            Some(values) => Err(format!(
                "{name} has {} values, expected {}",
                values.len(),
                into.len()
            )),
            None => Err(format!("{name} is missing")),
        };
        match self {
            OuterOptimizer::Sgd { velocity, .. } => take("optimizer.velocity", velocity),
            OuterOptimizer::Adam(adam) => {
                adam.step = i32::try_from(updates)
                    .map_err(|_| format!("{updates} Adam steps is too many"))?;
                take("optimizer.m", &mut adam.m)?;
                take("optimizer.v", &mut adam.v)
            }
        }
    }

    /// One update with learning rate `lr`, or, when it would make a parameter or the
    /// optimizer's state infinite or NaN (a gradient so large that Adam's second moment
    /// overflows, after which every update is zero and a run would finish on a frozen model),
    /// no change at all and what overflowed.
    pub fn step(&mut self, params: &mut [f32], grad: &[f32], lr: f32) -> Result<(), Overflow> {
        assert_eq!(
            params.len(),
            grad.len(),
            "gradient and parameters differ in length"
        );
        // The same arithmetic twice: first only to look, then to write.
        match self {
            OuterOptimizer::Sgd { momentum, velocity } => {
                let update = |p: f32, g: f32, v: f32| {
                    // torch.optim.SGD: v = momentum * v + g; p -= lr * v.
                    let v = *momentum * v + g;
                    (p - lr * v, v)
                };
                for (i, ((&p, &g), &v)) in params.iter().zip(grad).zip(velocity.iter()).enumerate()
                {
                    let (p, v) = update(p, g, v);
                    Overflow::check(i, [("the momentum", v), ("the parameter", p)])?;
                }
                for ((p, &g), v) in params.iter_mut().zip(grad).zip(velocity.iter_mut()) {
                    (*p, *v) = update(*p, g, *v);
                }
                Ok(())
            }
            OuterOptimizer::Adam(adam) => adam.step(params, grad, lr),
        }
    }
}

/// What an update would have made non-finite: the first value, and which.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{what} at index {index} would become {value}")]
pub struct Overflow {
    pub what: &'static str,
    pub index: usize,
    pub value: f32,
}

impl Overflow {
    fn check<const N: usize>(
        index: usize,
        values: [(&'static str, f32); N],
    ) -> Result<(), Overflow> {
        match values.into_iter().find(|(_, v)| !v.is_finite()) {
            Some((what, value)) => Err(Overflow { what, index, value }),
            None => Ok(()),
        }
    }
}

impl Adam {
    fn step(&mut self, params: &mut [f32], grad: &[f32], lr: f32) -> Result<(), Overflow> {
        let t = self.step + 1;
        let bias1 = 1.0 - self.beta1.powi(t);
        let bias2_sqrt = (1.0 - self.beta2.powi(t)).sqrt();
        let step_size = lr / bias1;
        let (beta1, beta2, eps) = (self.beta1, self.beta2, self.eps);
        let update = |p: f32, g: f32, m: f32, v: f32| {
            let m = beta1 * m + (1.0 - beta1) * g;
            let v = beta2 * v + (1.0 - beta2) * g * g;
            // torch.optim.Adam: denom = sqrt(v) / sqrt(1 - beta2^t) + eps.
            let denom = v.sqrt() / bias2_sqrt + eps;
            (p - step_size * m / denom, m, v)
        };
        for (i, (((&p, &g), &m), &v)) in params
            .iter()
            .zip(grad)
            .zip(&self.m)
            .zip(&self.v)
            .enumerate()
        {
            let (p, m, v) = update(p, g, m, v);
            Overflow::check(
                i,
                [
                    ("Adam's first moment", m),
                    ("Adam's second moment", v),
                    ("the parameter", p),
                ],
            )?;
        }
        self.step = t;
        for (((p, &g), m), v) in params
            .iter_mut()
            .zip(grad)
            .zip(&mut self.m)
            .zip(&mut self.v)
        {
            (*p, *m, *v) = update(*p, g, *m, *v);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Algorithm, LrSchedule, MetaSpec};

    fn meta(optimizer: OptimizerKind, lr: f32, momentum: f32) -> MetaSpec {
        MetaSpec {
            algorithm: Algorithm::Maml,
            steps: 1,
            meta_batch: 1,
            inner_steps: Some(1),
            inner_lr: Some(0.1),
            optimizer,
            meta_lr: lr,
            lr_schedule: LrSchedule::Constant,
            lr_decay_every: None,
            lr_decay: None,
            momentum,
            betas: [0.9, 0.999],
            eps: 1e-8,
            chunk_tasks: 1,
        }
    }

    #[test]
    fn sgd_with_momentum_matches_hand_computation() {
        let opt_lr = 0.1;
        let mut opt = OuterOptimizer::new(&meta(OptimizerKind::Sgd, opt_lr, 0.5), 1);
        let mut p = [1.0f32];
        opt.step(&mut p, &[2.0], opt_lr).unwrap(); // v = 2, p = 1 - 0.2
        assert!((p[0] - 0.8).abs() < 1e-7);
        opt.step(&mut p, &[2.0], opt_lr).unwrap(); // v = 0.5 * 2 + 2 = 3, p = 0.8 - 0.3
        assert!((p[0] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn adam_matches_hand_computation() {
        let opt_lr = 0.01;
        let mut opt = OuterOptimizer::new(&meta(OptimizerKind::Adam, opt_lr, 0.0), 2);
        let mut p = [1.0f32, -1.0];
        // The first Adam step moves every coordinate by lr in the direction against its gradient.
        opt.step(&mut p, &[3.0, -0.5], opt_lr).unwrap();
        assert!(
            (p[0] - 0.99).abs() < 1e-6 && (p[1] + 0.99).abs() < 1e-6,
            "{p:?}"
        );
        // Second step, by hand for the first coordinate with gradient 1:
        // m = 0.9*0.3 + 0.1*1 = 0.37, v = 0.999*0.009 + 0.001*1 = 0.009991,
        // m_hat = 0.37/0.19, v_hat = 0.009991/0.001999, p = 0.99 - 0.01*m_hat/(sqrt(v_hat)+eps).
        opt.step(&mut p, &[1.0, -0.5], opt_lr).unwrap();
        let expected = 0.99 - 0.01 * (0.37 / 0.19) / ((0.009991f64 / 0.001999).sqrt() + 1e-8);
        assert!(
            (p[0] as f64 - expected).abs() < 1e-6,
            "{} vs {expected}",
            p[0]
        );
    }

    #[test]
    fn a_restored_optimizer_continues_exactly_where_the_saved_one_was() {
        for kind in [OptimizerKind::Adam, OptimizerKind::Sgd] {
            let spec = meta(kind, 0.01, 0.9);
            let mut original = OuterOptimizer::new(&spec, 2);
            let mut p = [1.0f32, -2.0];
            original.step(&mut p, &[0.3, -0.7], 0.01).unwrap();
            original.step(&mut p, &[0.1, 0.2], 0.01).unwrap();
            let (updates, buffers) = original.state();
            let saved: BTreeMap<String, Vec<f32>> = buffers
                .iter()
                .map(|(n, b)| (n.to_string(), b.to_vec()))
                .collect();
            let mut restored = OuterOptimizer::new(&spec, 2);
            restored.restore(updates, &saved).unwrap();
            let (mut a, mut b) = (p, p);
            original.step(&mut a, &[0.5, 0.5], 0.01).unwrap();
            restored.step(&mut b, &[0.5, 0.5], 0.01).unwrap();
            assert_eq!(a, b, "{kind:?}");
            assert!(OuterOptimizer::new(&spec, 3)
                .restore(updates, &saved)
                .unwrap_err()
                .contains("expected 3"));
        }
    }

    #[test]
    fn an_update_that_would_overflow_changes_nothing_and_says_what() {
        let mut adam = OuterOptimizer::new(&meta(OptimizerKind::Adam, 0.1, 0.0), 2);
        let mut p = [1.0f32, 2.0];
        adam.step(&mut p, &[0.5, -0.5], 0.1).unwrap();
        let (before, state) = (
            p,
            adam.state()
                .1
                .iter()
                .map(|(_, b)| b.to_vec())
                .collect::<Vec<_>>(),
        );
        // 1e30 squared overflows f32: the second moment would be infinite, every later update 0.
        let overflow = adam.step(&mut p, &[0.5, 1e30], 0.1).unwrap_err();
        assert_eq!(
            (overflow.what, overflow.index, overflow.value),
            ("Adam's second moment", 1, f32::INFINITY)
        );
        assert_eq!(p, before);
        assert_eq!(adam.state().0, 1, "the step was not counted");
        assert_eq!(
            adam.state()
                .1
                .iter()
                .map(|(_, b)| b.to_vec())
                .collect::<Vec<_>>(),
            state
        );
        let mut sgd = OuterOptimizer::new(&meta(OptimizerKind::Sgd, 1e30, 0.9), 1);
        let mut q = [1.0f32];
        let overflow = sgd.step(&mut q, &[1e10], 1e30).unwrap_err();
        assert_eq!(overflow.what, "the parameter");
        assert_eq!(q, [1.0]);
    }
}

#[cfg(test)]
mod schedule_tests {
    use crate::spec::{LrSchedule, MetaSpec};

    fn meta(schedule: LrSchedule, every: Option<u64>) -> MetaSpec {
        MetaSpec {
            algorithm: crate::spec::Algorithm::Reptile,
            steps: 100,
            meta_batch: 1,
            inner_steps: Some(1),
            inner_lr: Some(0.1),
            optimizer: crate::spec::OptimizerKind::Sgd,
            meta_lr: 1.0,
            lr_schedule: schedule,
            lr_decay_every: every,
            lr_decay: every.map(|_| 0.5),
            momentum: 0.0,
            betas: [0.9, 0.999],
            eps: 1e-8,
            chunk_tasks: 1,
        }
    }

    #[test]
    fn schedules_follow_their_definitions() {
        let constant = meta(LrSchedule::Constant, None);
        assert_eq!((constant.lr_at(0), constant.lr_at(99)), (1.0, 1.0));
        // Reptile: linear from the initial step size to 0 at the end of the run.
        let linear = meta(LrSchedule::Linear, None);
        assert_eq!(linear.lr_at(0), 1.0);
        assert!((linear.lr_at(50) - 0.5).abs() < 1e-7);
        assert!((linear.lr_at(99) - 0.01).abs() < 1e-6);
        // Prototypical networks: halved every `lr_decay_every` steps.
        let step = meta(LrSchedule::Step, Some(20));
        assert_eq!(
            [0, 19, 20, 45, 99].map(|s| step.lr_at(s)),
            [1.0, 1.0, 0.5, 0.25, 0.0625]
        );
    }
}
