//! `[meta]`: the meta-learning algorithm, its inner loop and the outer optimizer.

use serde::{Deserialize, Serialize};

use super::error::{out_of_range, Invalid};

/// Most tasks in one meta-batch or one evaluation.
pub const MAX_TASKS: u32 = 10_000_000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaSpec {
    pub algorithm: Algorithm,
    pub steps: u64,
    pub meta_batch: u32,
    /// Inner-loop SGD steps and step size; required by every algorithm with an inner loop
    /// (all but `protonet`, which ignores them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inner_steps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inner_lr: Option<f32>,
    pub optimizer: OptimizerKind,
    pub meta_lr: f32,
    /// How the outer learning rate changes over the run.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// `step` schedule: multiply the learning rate by `lr_decay` every this many steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_decay_every: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_decay: Option<f32>,
    /// SGD momentum (ignored by Adam).
    #[serde(default)]
    pub momentum: f32,
    #[serde(default = "default_betas")]
    pub betas: [f32; 2],
    #[serde(default = "default_eps")]
    pub eps: f32,
    /// Tasks per work chunk. Fixed by the spec, never by the number of workers,
    /// so that the aggregation order (and so the result) does not depend on them.
    #[serde(default = "default_chunk_tasks")]
    pub chunk_tasks: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Maml,
    Fomaml,
    #[serde(rename = "metasgd")]
    MetaSgd,
    Anil,
    Reptile,
    #[serde(rename = "protonet")]
    ProtoNet,
}

impl Algorithm {
    pub fn has_inner_loop(self) -> bool {
        self != Algorithm::ProtoNet
    }
}

/// The outer learning rate over the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// `meta_lr` throughout.
    #[default]
    Constant,
    /// From `meta_lr` down to 0 at the last step, linearly (Reptile's outer step size).
    Linear,
    /// `meta_lr * lr_decay^(step / lr_decay_every)` (prototypical networks halve it every
    /// 2000 episodes).
    Step,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adam,
}

/// Adam's betas and eps by default, torch.optim's (shared by `[meta]` and `[train]`).
pub(super) fn default_betas() -> [f32; 2] {
    [0.9, 0.999]
}
pub(super) fn default_eps() -> f32 {
    1e-8
}
fn default_chunk_tasks() -> u32 {
    25
}

/// Checks an optimizer's settings in `section`: the learning rate (named `lr.0`) finite and
/// positive, momentum and both betas in [0, 1), eps finite and positive.
pub(super) fn check_optimizer(
    section: &str,
    (lr_name, lr): (&str, f32),
    momentum: f32,
    betas: [f32; 2],
    eps: f32,
) -> Result<(), Invalid> {
    let path = |field: &str| format!("{section}.{field}");
    if !(lr.is_finite() && lr > 0.0) {
        return Err(out_of_range(
            &path(lr_name),
            lr,
            "must be a finite number > 0",
        ));
    }
    if !(0.0..1.0).contains(&momentum) {
        return Err(out_of_range(
            &path("momentum"),
            momentum,
            "must be in [0, 1)",
        ));
    }
    if !betas.iter().all(|b| (0.0..1.0).contains(b)) {
        return Err(out_of_range(
            &path("betas"),
            betas,
            "both must be in [0, 1)",
        ));
    }
    if !(eps.is_finite() && eps > 0.0) {
        return Err(out_of_range(
            &path("eps"),
            eps,
            "must be a finite number > 0",
        ));
    }
    Ok(())
}

impl MetaSpec {
    /// Inner steps at training (0 for algorithms without an inner loop).
    pub fn inner_steps(&self) -> u32 {
        self.inner_steps.unwrap_or(0)
    }

    /// The inner step size (0 for algorithms without an inner loop).
    pub fn inner_lr(&self) -> f32 {
        self.inner_lr.unwrap_or(0.0)
    }

    /// The outer learning rate of the update that makes step `step + 1`.
    pub fn lr_at(&self, step: u64) -> f32 {
        match self.lr_schedule {
            LrSchedule::Constant => self.meta_lr,
            LrSchedule::Linear => self.meta_lr * (1.0 - step as f32 / self.steps as f32),
            LrSchedule::Step => {
                let every = self.lr_decay_every.unwrap_or(u64::MAX).max(1);
                let decays = (step / every).min(i32::MAX as u64) as i32;
                self.meta_lr * self.lr_decay.unwrap_or(0.5).powi(decays)
            }
        }
    }

    /// Resolves what depends on the algorithm: the inner loop's fields are required where
    /// there is one and dropped where there is none.
    pub(super) fn resolve(&mut self) -> Result<(), Invalid> {
        if !self.algorithm.has_inner_loop() {
            self.inner_steps = None;
            self.inner_lr = None;
            return Ok(());
        }
        let name = serde_json::to_value(self.algorithm).unwrap_or_default();
        let needed = |path: &str, what: &str| {
            (
                path.to_string(),
                format!("required by algorithm {name}: {what}"),
            )
        };
        if self.inner_steps.is_none() {
            return Err(needed(
                "meta.inner_steps",
                "SGD steps of the inner loop, e.g. 1",
            ));
        }
        if self.inner_lr.is_none() {
            return Err(needed(
                "meta.inner_lr",
                "the inner loop's step size, e.g. 0.01",
            ));
        }
        Ok(())
    }

    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if self.steps == 0 {
            return Err(out_of_range("meta.steps", self.steps, "must be at least 1"));
        }
        if self.meta_batch == 0 {
            return Err(out_of_range(
                "meta.meta_batch",
                self.meta_batch,
                "must be at least 1",
            ));
        }
        if self.meta_batch > MAX_TASKS {
            return Err(out_of_range(
                "meta.meta_batch",
                self.meta_batch,
                &format!("must be at most {MAX_TASKS}"),
            ));
        }
        if let Some(steps) = self.inner_steps {
            if steps == 0 || steps > 1000 {
                return Err(out_of_range(
                    "meta.inner_steps",
                    steps,
                    "must be between 1 and 1000",
                ));
            }
        }
        if let Some(lr) = self.inner_lr {
            if !(lr.is_finite() && lr > 0.0) {
                return Err(out_of_range(
                    "meta.inner_lr",
                    lr,
                    "must be a finite number > 0",
                ));
            }
        }
        match (self.lr_schedule, self.lr_decay_every, self.lr_decay) {
            (LrSchedule::Step, None, _) => {
                return Err((
                    "meta.lr_decay_every".into(),
                    "required by lr_schedule = \"step\": steps between decays, e.g. 2000".into(),
                ))
            }
            (LrSchedule::Step, Some(0), _) => {
                return Err(out_of_range("meta.lr_decay_every", 0, "must be at least 1"))
            }
            (LrSchedule::Step, _, Some(d)) if !(d > 0.0 && d <= 1.0) => {
                return Err(out_of_range("meta.lr_decay", d, "must be in (0, 1]"))
            }
            (LrSchedule::Constant | LrSchedule::Linear, Some(_), _) => {
                return Err((
                    "meta.lr_decay_every".into(),
                    "only used by lr_schedule = \"step\"".into(),
                ))
            }
            (LrSchedule::Constant | LrSchedule::Linear, _, Some(_)) => {
                return Err((
                    "meta.lr_decay".into(),
                    "only used by lr_schedule = \"step\"".into(),
                ))
            }
            _ => {}
        }
        check_optimizer(
            "meta",
            ("meta_lr", self.meta_lr),
            self.momentum,
            self.betas,
            self.eps,
        )?;
        if self.chunk_tasks == 0 {
            return Err(out_of_range(
                "meta.chunk_tasks",
                self.chunk_tasks,
                "must be at least 1",
            ));
        }
        Ok(())
    }
}
