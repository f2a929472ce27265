//! Task sampling: every task descriptor is a pure function of (seed, split, step, task index); one sampler per task family.

mod class_splits;
mod episodes;
mod key;
mod sinusoid;

use outerloop_proto::dataset::Manifest;
use outerloop_proto::work::TaskDescriptor;

pub use class_splits::{class_splits, ClassRef, ClassSplits, SplitClasses};
pub use episodes::EpisodeSampler;
pub use key::{data_seed, init_seed, row_stream, task_key, Split};
pub use sinusoid::SinusoidSampler;

use crate::spec::{Spec, TaskSpec};

/// Draws the tasks of an experiment.
pub trait Sampler: Send + Sync {
    /// The descriptor of task `index` of `split` at outer step `step`.
    fn draw(&self, split: Split, step: u64, index: u64) -> TaskDescriptor;
}

/// The sampler of `spec`'s task family; image families sample from their dataset's manifest.
pub fn for_spec(spec: &Spec, manifest: Option<&Manifest>) -> Result<Box<dyn Sampler>, String> {
    Ok(match &spec.task {
        TaskSpec::Sinusoid(task) => Box::new(SinusoidSampler::new(spec.seed, task)),
        TaskSpec::Images(task) => {
            let manifest = manifest
                .ok_or_else(|| format!("the manifest of dataset `{}` is missing", task.dataset))?;
            Box::new(EpisodeSampler::new(
                spec.seed,
                task,
                manifest,
                spec.episode_shape(false),
                spec.episode_shape(true),
            ))
        }
    })
}

/// Fixtures other modules' tests share.
#[cfg(test)]
pub(crate) mod tests_support {
    pub(crate) use super::class_splits::tests::manifest;
}
