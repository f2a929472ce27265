//! Multi-task experiments as both sides see them: the tasks, the data family, and the layout of shared layers and heads.

use std::ops::Range;

use crate::model::{Init, Mlp, ParamLayout, Role};

/// What a worker needs to know about a multi-task experiment, sent once per worker.
#[derive(Clone, Debug, PartialEq)]
pub struct MtlSetup {
    pub experiment_id: String,
    pub data: MtlData,
    /// The shared layers, with ReLU after every layer (the last one too): `shared.output` is
    /// the width of the representation every head reads.
    pub shared: Mlp,
    pub tasks: Vec<MtlTask>,
}

/// Where a multi-task experiment's rows come from.
#[derive(Clone, Debug, PartialEq)]
pub enum MtlData {
    GradNorm(GradNormData),
    Table(TableData),
}

/// Rows of a table under each worker's `--data-root`.
#[derive(Clone, Debug, PartialEq)]
pub struct TableData {
    pub dataset: String,
    /// The manifest the experiment was planned from; another copy is refused.
    pub fingerprint: String,
    /// Feature columns in input order: numeric ones standardised when `standardize` is set
    /// (the training rows' mean and standard deviation), text ones one-hot over their levels.
    pub features: Vec<String>,
    /// Each task's target columns, in task order.
    pub targets: Vec<Vec<String>>,
    pub split: TableSplit,
    pub standardize: bool,
    /// Draws the fractions split and each epoch's order of the training rows.
    pub seed: u64,
}

/// How a table's rows are divided into training, validation and test rows.
#[derive(Clone, Debug, PartialEq)]
pub enum TableSplit {
    /// A column whose values are `train`, `val` and `test`.
    Column(String),
    /// Rows drawn by the seed in these proportions (train, val, test), summing to 1.
    Fractions([f64; 3]),
}

/// Which split a batch of rows comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowSplit {
    Train,
    Val,
    Test,
}

/// The regression family of GradNorm (Chen et al. 2018, section 4): task `i`'s target is
/// `sigmas[i] * tanh((B + eps_i) x)`.
#[derive(Clone, Debug, PartialEq)]
pub struct GradNormData {
    /// Draws `B` and every `eps_i`.
    pub seed: u64,
    pub inputs: u32,
    pub outputs: u32,
    /// One output scale per task of the family.
    pub sigmas: Vec<f32>,
    /// The family's tasks that are the experiment's tasks, by index into `sigmas`, in task
    /// order; every task of the family, in order, when empty.
    pub tasks: Vec<u32>,
}

impl GradNormData {
    /// The family's index of each of the experiment's tasks.
    pub fn family_tasks(&self) -> Vec<usize> {
        if self.tasks.is_empty() {
            (0..self.sigmas.len()).collect()
        } else {
            self.tasks.iter().map(|&t| t as usize).collect()
        }
    }
}

/// One task: a Linear head from the representation to `outputs`, scored by `loss`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MtlTask {
    pub name: String,
    pub loss: TaskLoss,
    pub outputs: u32,
}

/// How a task scores its predictions, and the metric that goes with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskLoss {
    /// Mean squared error over the outputs; the metric is the same MSE (lower is better).
    Mse,
    /// Softmax cross-entropy over `outputs` classes; the metric is accuracy (higher is better).
    CrossEntropy,
    /// Binary cross-entropy on each of `outputs` 0/1 labels (multi-label classification); the
    /// metric is the accuracy over the labels (higher is better).
    BinaryCrossEntropy,
}

impl TaskLoss {
    /// Whether a larger metric is better (accuracy) rather than worse (an error).
    pub fn higher_is_better(self) -> bool {
        self != TaskLoss::Mse
    }
}

/// `count` consecutive rows from `first` of one stream of rows, scored for each of `tasks`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowBatch {
    pub tasks: Vec<u32>,
    pub first: u64,
    pub count: u32,
    pub split: RowSplit,
}

impl MtlSetup {
    /// The shared layers (`shared.0.weight`, `shared.0.bias`, `shared.2.weight`, ...) then each
    /// task's head (`heads.NAME.weight`, `heads.NAME.bias`), PyTorch's default Linear
    /// initialisation throughout.
    pub fn layout(&self) -> ParamLayout {
        let mut layout = ParamLayout::default();
        for slot in self.shared.layout().slots {
            let name = format!("shared.{}", slot.name);
            layout.push(name, slot.shape, Role::Body, slot.init);
        }
        let width = self.shared.output;
        let init = Init::Uniform {
            bound: 1.0 / (width as f32).sqrt(),
        };
        for task in &self.tasks {
            let outputs = task.outputs as usize;
            let prefix = format!("heads.{}", task.name);
            layout.push(
                format!("{prefix}.weight"),
                vec![outputs, width],
                Role::Head,
                init,
            );
            layout.push(format!("{prefix}.bias"), vec![outputs], Role::Head, init);
        }
        layout
    }

    /// Values of the shared layers, which come first in the layout.
    pub fn shared_len(&self) -> usize {
        self.shared.param_count() as usize
    }

    /// Where task `task`'s head sits in the flat parameter buffer.
    pub fn head_range(&self, task: usize) -> Range<usize> {
        let width = self.shared.output;
        let head_len = |t: &MtlTask| (width + 1) * t.outputs as usize;
        let start = self.shared_len() + self.tasks[..task].iter().map(head_len).sum::<usize>();
        start..start + head_len(&self.tasks[task])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> MtlSetup {
        let task = |name: &str, outputs| MtlTask {
            name: name.into(),
            loss: TaskLoss::Mse,
            outputs,
        };
        MtlSetup {
            experiment_id: "e".into(),
            data: MtlData::GradNorm(GradNormData {
                seed: 1,
                inputs: 3,
                outputs: 2,
                sigmas: vec![1.0, 10.0],
                tasks: Vec::new(),
            }),
            shared: Mlp {
                input: 3,
                hidden: vec![5],
                output: 4,
            },
            tasks: vec![task("a", 2), task("b", 7)],
        }
    }

    #[test]
    fn shared_layers_come_first_then_one_head_per_task() {
        let setup = setup();
        let layout = setup.layout();
        let names: Vec<&str> = layout.slots.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "shared.0.weight",
                "shared.0.bias",
                "shared.2.weight",
                "shared.2.bias",
                "heads.a.weight",
                "heads.a.bias",
                "heads.b.weight",
                "heads.b.bias"
            ]
        );
        // (3+1)*5 + (5+1)*4 = 44 shared values; heads of (4+1)*2 and (4+1)*7.
        assert_eq!(setup.shared_len(), 44);
        assert_eq!(setup.head_range(0), 44..54);
        assert_eq!(setup.head_range(1), 54..89);
        assert_eq!(layout.param_count(), 89);
        assert!(layout.slots[..4].iter().all(|s| s.role == Role::Body));
        assert!(layout.slots[4..].iter().all(|s| s.role == Role::Head));
        assert_eq!(layout.slots[6].shape, vec![7, 4]);
    }
}
