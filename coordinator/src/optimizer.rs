//! Outer optimizers (SGD with momentum, Adam) on flat f32 parameter buffers, as torch.optim defines them.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::finite::not_finite;
use crate::parallel;
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
        match self {
            OuterOptimizer::Sgd { momentum, velocity } => {
                let rule = Momentum {
                    momentum: *momentum,
                    lr,
                };
                let spread = parallel::worth_it(params.len());
                // The same arithmetic twice: first only to look, then to write.
                let looks = parallel::map(&segments(params.len()), spread, |r| {
                    sgd_stays_finite(
                        rule,
                        &params[r.clone()],
                        &grad[r.clone()],
                        &velocity[r.clone()],
                    )
                });
                if !looks.into_iter().all(|finite| finite) {
                    return Err(rule.first_overflow(params, grad, velocity));
                }
                let mut parts: Vec<_> = (params.chunks_mut(SEGMENT).zip(grad.chunks(SEGMENT)))
                    .zip(velocity.chunks_mut(SEGMENT))
                    .collect();
                parallel::for_each_mut(&mut parts, spread, |_, ((p, g), v)| {
                    sgd_write(rule, p, g, v)
                });
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

/// Values per block of the look before an update: it stops at the first block that would
/// overflow, and within a block it `or`s flags, which vectorises where stopping at the first
/// value cannot (a tenth of a multi-task step's coordinator time at 1M parameters).
const BLOCK: usize = 4096;

/// Values per segment of an update spread over the cores: whole blocks, and so many that the
/// parameters of a large model make a few dozen segments. Each value's update is on its own,
/// so any split gives the same bits.
const SEGMENT: usize = 16 * BLOCK;

/// The segments of `len` values.
fn segments(len: usize) -> Vec<Range<usize>> {
    (0..len)
        .step_by(SEGMENT)
        .map(|start| start..(start + SEGMENT).min(len))
        .collect()
}

/// torch.optim.SGD's update with momentum at one learning rate.
#[derive(Clone, Copy)]
struct Momentum {
    momentum: f32,
    lr: f32,
}

impl Momentum {
    /// `v = momentum * v + g; p -= lr * v`: the new (p, v).
    #[inline(always)]
    fn update(self, p: f32, g: f32, v: f32) -> (f32, f32) {
        let v = self.momentum * v + g;
        (p - self.lr * v, v)
    }

    /// The first value the update would make non-finite, found one value at a time: only
    /// called once [`sgd_stays_finite`] said there is one.
    fn first_overflow(self, params: &[f32], grad: &[f32], velocity: &[f32]) -> Overflow {
        let mut values = params.iter().zip(grad).zip(velocity).enumerate();
        values
            .find_map(|(i, ((&p, &g), &v))| {
                let (p, v) = self.update(p, g, v);
                Overflow::check(i, [("the momentum", v), ("the parameter", p)]).err()
            })
            .expect("a value that overflows")
    }
}

crate::simd::with_avx2! {
    /// Whether `rule` keeps every parameter and velocity finite.
    fn sgd_stays_finite(rule: Momentum, params: &[f32], grad: &[f32], velocity: &[f32]) -> bool {
        let blocks = params.chunks(BLOCK).zip(grad.chunks(BLOCK)).zip(velocity.chunks(BLOCK));
        blocks.into_iter().all(|((p, g), v)| {
            let bad = p.iter().zip(g).zip(v).fold(0u32, |bad, ((&p, &g), &v)| {
                let (p, v) = rule.update(p, g, v);
                bad | not_finite(p) | not_finite(v)
            });
            bad == 0
        })
    }
}

crate::simd::with_avx2! {
    /// Applies `rule` to every parameter and velocity.
    fn sgd_write(rule: Momentum, params: &mut [f32], grad: &[f32], velocity: &mut [f32]) {
        for ((p, &g), v) in params.iter_mut().zip(grad).zip(velocity.iter_mut()) {
            (*p, *v) = rule.update(*p, g, *v);
        }
    }
}

/// torch.optim.Adam's update at one step and learning rate.
#[derive(Clone, Copy)]
struct AdamRule {
    beta1: f32,
    beta2: f32,
    eps: f32,
    /// `lr / (1 - beta1^t)`.
    step_size: f32,
    /// `sqrt(1 - beta2^t)`.
    bias2_sqrt: f32,
}

impl AdamRule {
    /// The new (p, m, v).
    #[inline(always)]
    fn update(self, p: f32, g: f32, m: f32, v: f32) -> (f32, f32, f32) {
        let m = self.beta1 * m + (1.0 - self.beta1) * g;
        let v = self.beta2 * v + (1.0 - self.beta2) * g * g;
        // torch.optim.Adam: denom = sqrt(v) / sqrt(1 - beta2^t) + eps.
        let denom = v.sqrt() / self.bias2_sqrt + self.eps;
        (p - self.step_size * m / denom, m, v)
    }

    /// The first value the update would make non-finite, found one value at a time: only
    /// called once [`adam_stays_finite`] said there is one.
    fn first_overflow(self, params: &[f32], grad: &[f32], m: &[f32], v: &[f32]) -> Overflow {
        let mut values = params.iter().zip(grad).zip(m).zip(v).enumerate();
        values
            .find_map(|(i, (((&p, &g), &m), &v))| {
                let (p, m, v) = self.update(p, g, m, v);
                let named = [
                    ("Adam's first moment", m),
                    ("Adam's second moment", v),
                    ("the parameter", p),
                ];
                Overflow::check(i, named).err()
            })
            .expect("a value that overflows")
    }
}

crate::simd::with_avx2! {
    /// Whether `rule` keeps every parameter and moment finite.
    fn adam_stays_finite(rule: AdamRule, params: &[f32], grad: &[f32], m: &[f32], v: &[f32]) -> bool {
        let blocks = (params.chunks(BLOCK).zip(grad.chunks(BLOCK)))
            .zip(m.chunks(BLOCK).zip(v.chunks(BLOCK)));
        blocks.into_iter().all(|((p, g), (m, v))| {
            let values = p.iter().zip(g).zip(m.iter().zip(v));
            let bad = values.fold(0u32, |bad, ((&p, &g), (&m, &v))| {
                let (p, m, v) = rule.update(p, g, m, v);
                bad | not_finite(p) | not_finite(m) | not_finite(v)
            });
            bad == 0
        })
    }
}

crate::simd::with_avx2! {
    /// Applies `rule` to every parameter and moment.
    fn adam_write(rule: AdamRule, params: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32]) {
        let values = (params.iter_mut().zip(grad)).zip(m.iter_mut().zip(v.iter_mut()));
        for ((p, &g), (m, v)) in values {
            (*p, *m, *v) = rule.update(*p, g, *m, *v);
        }
    }
}

impl Adam {
    fn step(&mut self, params: &mut [f32], grad: &[f32], lr: f32) -> Result<(), Overflow> {
        let t = self.step + 1;
        let rule = AdamRule {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            step_size: lr / (1.0 - self.beta1.powi(t)),
            bias2_sqrt: (1.0 - self.beta2.powi(t)).sqrt(),
        };
        let spread = parallel::worth_it(params.len());
        let (m, v) = (&self.m, &self.v);
        // The same arithmetic twice: first only to look, then to write.
        let looks = parallel::map(&segments(params.len()), spread, |r| {
            let r = || r.clone();
            adam_stays_finite(rule, &params[r()], &grad[r()], &m[r()], &v[r()])
        });
        if !looks.into_iter().all(|finite| finite) {
            return Err(rule.first_overflow(params, grad, m, v));
        }
        self.step = t;
        let mut parts: Vec<_> = (params.chunks_mut(SEGMENT).zip(grad.chunks(SEGMENT)))
            .zip(self.m.chunks_mut(SEGMENT).zip(self.v.chunks_mut(SEGMENT)))
            .collect();
        parallel::for_each_mut(&mut parts, spread, |_, ((p, g), (m, v))| {
            adam_write(rule, p, g, m, v)
        });
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

    /// torch.optim.Adam's update written out one value at a time, as the reference for the
    /// blocked, vectorised loops.
    fn adam_by_value(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], lr: f32, t: i32) {
        let (beta1, beta2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        for i in 0..p.len() {
            m[i] = beta1 * m[i] + (1.0 - beta1) * g[i];
            v[i] = beta2 * v[i] + (1.0 - beta2) * g[i] * g[i];
            let denom = v[i].sqrt() / (1.0 - beta2.powi(t)).sqrt() + eps;
            p[i] -= lr / (1.0 - beta1.powi(t)) * m[i] / denom;
        }
    }

    #[test]
    fn updates_of_many_blocks_have_the_bits_of_the_update_value_by_value() {
        // Three segments and a partial one (spread over the cores), values over many
        // magnitudes.
        let n = 3 * SEGMENT + 17;
        let value = |i: usize, salt: usize| {
            let x = ((i * 2654435761 + salt) % 20011) as f32 / 20011.0 - 0.5;
            x * 10f32.powi((i % 9) as i32 - 4)
        };
        let grads: Vec<Vec<f32>> = (0..3)
            .map(|s| (0..n).map(|i| value(i, s + 1)).collect())
            .collect();
        let mut opt = OuterOptimizer::new(&meta(OptimizerKind::Adam, 0.01, 0.0), n);
        let mut p: Vec<f32> = (0..n).map(|i| value(i, 0)).collect();
        let (mut q, mut m, mut v) = (p.clone(), vec![0.0; n], vec![0.0; n]);
        for (t, g) in grads.iter().enumerate() {
            opt.step(&mut p, g, 0.01).unwrap();
            adam_by_value(&mut q, g, &mut m, &mut v, 0.01, t as i32 + 1);
            let bits = |x: &[f32]| x.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&p), bits(&q), "parameters after step {}", t + 1);
            let (_, state) = opt.state();
            assert_eq!((bits(state[0].1), bits(state[1].1)), (bits(&m), bits(&v)));
        }
        let mut sgd = OuterOptimizer::new(&meta(OptimizerKind::Sgd, 0.1, 0.9), n);
        let (mut p, mut q, mut velocity) = (p.clone(), p, vec![0.0f32; n]);
        for g in &grads {
            sgd.step(&mut p, g, 0.1).unwrap();
            for i in 0..n {
                velocity[i] = 0.9 * velocity[i] + g[i];
                q[i] -= 0.1 * velocity[i];
            }
            assert_eq!(p, q);
        }
    }

    #[test]
    fn the_first_overflow_is_named_even_segments_after_the_start() {
        // The bad values in the second and third of the segments spread over the cores.
        let n = 2 * SEGMENT + 5;
        let mut adam = OuterOptimizer::new(&meta(OptimizerKind::Adam, 0.1, 0.0), n);
        let mut p = vec![1.0f32; n];
        let mut g = vec![0.5f32; n];
        g[SEGMENT + 3] = f32::NAN;
        g[2 * SEGMENT + 1] = 1e30;
        let overflow = adam.step(&mut p, &g, 0.1).unwrap_err();
        assert_eq!(
            (overflow.what, overflow.index),
            ("Adam's first moment", SEGMENT + 3)
        );
        assert!(overflow.value.is_nan());
        assert_eq!(p, vec![1.0; n], "nothing was written");
        let mut sgd = OuterOptimizer::new(&meta(OptimizerKind::Sgd, 0.1, 0.9), n);
        g[SEGMENT + 3] = 0.5;
        g[2 * SEGMENT + 1] = f32::INFINITY;
        let overflow = sgd.step(&mut p, &g, 0.1).unwrap_err();
        assert_eq!(
            (overflow.what, overflow.index),
            ("the momentum", 2 * SEGMENT + 1)
        );
        assert_eq!(p, vec![1.0; n]);
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
