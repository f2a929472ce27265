//! The work as both sides see it: what an experiment is (task family, model, algorithm) and what one task is.

use crate::dataset::Layout;
use crate::model::Model;

/// What a worker needs to know about an experiment, sent once per worker.
#[derive(Clone, Debug, PartialEq)]
pub struct Setup {
    pub experiment_id: String,
    pub family: Family,
    pub model: Model,
    pub algorithm: Algorithm,
    /// Inner-loop SGD step size (Meta-SGD's starting value for its learned ones).
    pub inner_lr: f32,
}

/// Where tasks come from, and how a task's data is made.
#[derive(Clone, Debug, PartialEq)]
pub enum Family {
    Sinusoid(SinusoidFamily),
    Images(ImageFamily),
}

/// Sinusoid regression (Finn et al. 2017): `y = amplitude * sin(x - phase)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SinusoidFamily {
    pub shots: u32,
    pub queries: u32,
    /// Inputs are drawn uniformly from `[low, high)`.
    pub x_range: [f32; 2],
}

/// Few-shot classification episodes on images that every worker reads from its own copy of
/// the dataset (`--data-root/DATASET/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageFamily {
    pub dataset: String,
    pub layout: Layout,
    /// The dataset version the episodes were drawn from.
    pub fingerprint: String,
    /// Images are resized to `image_size x image_size`.
    pub image_size: u32,
    /// 1 (grey) or 3 (RGB).
    pub channels: u32,
}

/// The meta-learning algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// Second-order MAML: the meta-gradient differentiates through the inner loop.
    Maml,
    /// First-order MAML: inner gradients are treated as constants.
    Fomaml,
    /// Meta-SGD (Li et al. 2017): MAML with a learned inner learning rate per parameter value.
    MetaSgd,
    /// ANIL (Raghu et al. 2020): only the head is adapted in the inner loop.
    Anil,
    /// Reptile (Nichol et al. 2018): the meta-update moves toward the adapted weights.
    Reptile,
    /// Prototypical networks (Snell et al. 2017): no inner loop.
    ProtoNet,
}

impl Algorithm {
    /// Whether the algorithm adapts parameters in an inner loop.
    pub fn has_inner_loop(self) -> bool {
        self != Algorithm::ProtoNet
    }
}

/// One task, described rather than shipped: its data is a pure function of the descriptor.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskDescriptor {
    /// Position in its meta-batch or evaluation.
    pub index: u64,
    /// Seeds whatever the task draws on the worker (a sinusoid's points).
    pub data_seed: u64,
    pub task: Task,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Task {
    Sinusoid(SinusoidTask),
    Episode(Episode),
    /// Rows of a multi-task experiment's data.
    Rows(crate::mtl::RowBatch),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SinusoidTask {
    pub amplitude: f32,
    pub phase: f32,
}

/// An N-way few-shot episode: `classes[i]` (an index into the dataset manifest's classes) has
/// label `i`; each class has `shots` support and `queries` query images, whose indices within
/// the class are listed in `instances`, class after class, support first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Episode {
    pub classes: Vec<u32>,
    /// Counter-clockwise quarter turns of each class's images (empty: none).
    pub rotations: Vec<u8>,
    pub shots: u32,
    pub queries: u32,
    pub instances: Vec<u32>,
}
