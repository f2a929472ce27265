//! Multi-task experiments as both sides see them: the tasks, the data family, how the tasks share layers, and the parameter layout.

use std::ops::Range;

use crate::model::{Conv4, Init, Mlp, ParamLayout, Role};

/// What a worker needs to know about a multi-task experiment, sent once per worker.
#[derive(Clone, Debug, PartialEq)]
pub struct MtlSetup {
    pub experiment_id: String,
    pub data: MtlData,
    /// How the tasks share layers, which decides the representation each head reads.
    pub shared: Shared,
    pub tasks: Vec<MtlTask>,
    /// Training chunks send the shared layers' gradients factored: each layer's input rows
    /// once, and per task the gradient at each layer's output (`Shared::Hard` only). A task's
    /// gradient of a layer's weight is `deltasᵀ inputs`: for batches narrower than the layers
    /// that is far less to compute and send than every task's gradient.
    pub factored: bool,
}

/// The multi-task architecture: what the tasks share and how each task's representation is
/// made from it. Every MLP here has ReLU after every layer, the last one too.
#[derive(Clone, Debug, PartialEq)]
pub enum Shared {
    /// Hard parameter sharing: one MLP whose output every task's head reads.
    Hard(Mlp),
    /// Multi-gate mixture of experts (Ma et al., KDD 2018): `experts` MLPs shaped as `mlp`, and
    /// per task a gate (Linear `input -> experts`, softmax) whose weights mix the experts'
    /// outputs, row by row, into the representation the task's head reads. The gates belong
    /// to their tasks; only the experts are shared.
    Mmoe { experts: usize, mlp: Mlp },
    /// No layers: the shared parameters are a point of the plane, starting at `start`, and
    /// the tasks' losses are functions of it (the two-objective toy problem); no heads.
    Point { start: [f32; 2] },
    /// Hard parameter sharing of conv4's four convolutional blocks (`output` 0): each row's
    /// inputs are an image, `channels x image_size x image_size` values row-major, and every
    /// head reads the flattened features. Batch norm normalises with the statistics of the
    /// rows at hand (a chunk's, at training and at evaluation alike), as conv4 does in
    /// few-shot learning.
    Conv4(Conv4),
}

/// The MLP of an architecture without one.
static NO_LAYERS: Mlp = Mlp {
    input: 0,
    hidden: Vec::new(),
    output: 0,
};

impl Shared {
    /// The MLP of the shared layers, or of each expert.
    pub fn mlp(&self) -> &Mlp {
        match self {
            Shared::Hard(mlp) | Shared::Mmoe { mlp, .. } => mlp,
            Shared::Point { .. } | Shared::Conv4(_) => &NO_LAYERS,
        }
    }

    /// The input width: values per row.
    pub fn input(&self) -> usize {
        match self {
            Shared::Conv4(conv) => conv.input_len(),
            _ => self.mlp().input,
        }
    }

    /// The width of the representation each head reads.
    pub fn width(&self) -> usize {
        match self {
            Shared::Conv4(conv) => conv.features(),
            _ => self.mlp().output,
        }
    }

    /// Values of the shared parameters: the MLP's, every expert's, or conv4's blocks.
    pub fn param_count(&self) -> u64 {
        match self {
            Shared::Hard(mlp) => mlp.param_count(),
            Shared::Mmoe { experts, mlp } => (*experts as u64).saturating_mul(mlp.param_count()),
            Shared::Point { .. } => 2,
            Shared::Conv4(conv) => conv.layout().param_count() as u64,
        }
    }

    /// Values of one task's gate (weight `[experts, input]` and bias); none without gates.
    fn gate_len(&self) -> usize {
        match self {
            Shared::Hard(_) | Shared::Point { .. } | Shared::Conv4(_) => 0,
            Shared::Mmoe { experts, mlp } => experts * (mlp.input + 1),
        }
    }
}

/// Where a multi-task experiment's rows come from.
#[derive(Clone, Debug, PartialEq)]
pub enum MtlData {
    GradNorm(GradNormData),
    Table(TableData),
    /// The two-objective toy problem of CAGrad (Liu et al. 2021): no data, two losses of the
    /// point `Shared::Point` holds.
    ParetoToy,
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
    /// Set: each row's input is the image this text column names, a path relative to the
    /// dataset's directory, decoded to `Shared::Conv4`'s channels and size (pixels / 255);
    /// `features` is empty then.
    pub image_column: Option<String>,
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
    /// The shared values first, then each task's own, contiguous, PyTorch's default Linear
    /// initialisation throughout. Hard sharing: `shared.0.weight`, `shared.0.bias`,
    /// `shared.2.weight`, ..., then per task `heads.NAME.weight`, `heads.NAME.bias`. MMoE: each
    /// expert named the same way under `experts.E.`, expert after expert, then per task
    /// `gates.NAME.weight` `[experts, input]`, `gates.NAME.bias`, `heads.NAME.weight`,
    /// `heads.NAME.bias`. Conv4: its blocks under `shared.` as [`Conv4::layout`] names and
    /// initialises them, then the heads. These are the names a PyTorch module of `nn.Sequential` layers in an
    /// `nn.ModuleList` (experts) and `nn.ModuleDict`s (gates, heads) gives them, so an export
    /// loads into such a module.
    pub fn layout(&self) -> ParamLayout {
        if let Shared::Point { start } = self.shared {
            // `point.x1`, `point.x2`: one slot per coordinate, each starting where it should.
            let mut layout = ParamLayout::default();
            for (name, value) in ["point.x1", "point.x2"].into_iter().zip(start) {
                layout.push(name.to_string(), vec![1], Role::Body, Init::Constant(value));
            }
            return layout;
        }
        let (prefixes, gates) = match self.shared {
            Shared::Point { .. } => unreachable!("returned above"),
            Shared::Hard(_) | Shared::Conv4(_) => (vec!["shared".to_string()], None),
            Shared::Mmoe { experts, .. } => (
                (0..experts).map(|e| format!("experts.{e}")).collect(),
                Some(experts),
            ),
        };
        let mut layout = ParamLayout::default();
        let body = match &self.shared {
            Shared::Conv4(conv) => conv.layout(),
            _ => self.shared.mlp().layout(),
        };
        for prefix in prefixes {
            for slot in &body.slots {
                let name = format!("{prefix}.{}", slot.name);
                layout.push(name, slot.shape.clone(), Role::Body, slot.init);
            }
        }
        for task in &self.tasks {
            if let Some(experts) = gates {
                let gate = format!("gates.{}", task.name);
                push_linear(&mut layout, gate, self.shared.input(), experts);
            }
            let head = format!("heads.{}", task.name);
            push_linear(
                &mut layout,
                head,
                self.shared.width(),
                task.outputs as usize,
            );
        }
        layout
    }

    /// Values of the shared layers (MMoE: the experts), which come first in the layout.
    pub fn shared_len(&self) -> usize {
        self.shared.param_count() as usize
    }

    /// Where task `task`'s own parameters sit in the flat parameter buffer: its head, and
    /// before it its gate when it has one. The weighting methods see only the shared values;
    /// this block is the task's `head_grad` on the wire.
    pub fn head_range(&self, task: usize) -> Range<usize> {
        let width = self.shared.width();
        let own_len = |t: &MtlTask| self.shared.gate_len() + (width + 1) * t.outputs as usize;
        let start = self.shared_len() + self.tasks[..task].iter().map(own_len).sum::<usize>();
        start..start + own_len(&self.tasks[task])
    }
}

/// A task's Linear layer `fan_in -> fan_out` (`PREFIX.weight`, `PREFIX.bias`), with PyTorch's
/// default initialisation.
fn push_linear(layout: &mut ParamLayout, prefix: String, fan_in: usize, fan_out: usize) {
    let init = Init::Uniform {
        bound: 1.0 / (fan_in as f32).sqrt(),
    };
    let weight = format!("{prefix}.weight");
    layout.push(weight, vec![fan_out, fan_in], Role::Head, init);
    layout.push(format!("{prefix}.bias"), vec![fan_out], Role::Head, init);
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
            factored: false,
            experiment_id: "e".into(),
            data: MtlData::GradNorm(GradNormData {
                seed: 1,
                inputs: 3,
                outputs: 2,
                sigmas: vec![1.0, 10.0],
                tasks: Vec::new(),
            }),
            shared: Shared::Hard(Mlp {
                input: 3,
                hidden: vec![5],
                output: 4,
            }),
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

    #[test]
    fn conv4_lays_out_its_blocks_as_the_shared_layers_then_heads_on_its_features() {
        let mut setup = setup();
        let conv = Conv4 {
            channels: 1,
            image_size: 32,
            filters: 4,
            output: 0,
        };
        setup.shared = Shared::Conv4(conv.clone());
        let layout = setup.layout();
        let names: Vec<&str> = layout.slots.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            &names[..6],
            [
                "shared.0.weight",
                "shared.0.bias",
                "shared.1.weight",
                "shared.1.bias",
                "shared.4.weight",
                "shared.4.bias"
            ]
        );
        assert_eq!(
            names[16..],
            [
                "heads.a.weight",
                "heads.a.bias",
                "heads.b.weight",
                "heads.b.bias"
            ]
        );
        // 32 -> 2 after four pools: 4 filters x 2 x 2 = 16 features; 1024 input values.
        assert_eq!((setup.shared.width(), setup.shared.input()), (16, 1024));
        // Block 1: 4x1x3x3 + 4 + 4 + 4 = 48; blocks 2-4: 4x4x3x3 + 12 = 156 each.
        assert_eq!(setup.shared_len(), 48 + 3 * 156);
        assert_eq!(setup.head_range(0), 516..516 + 17 * 2);
        assert_eq!(layout.slots[16].shape, vec![2, 16]);
    }

    #[test]
    fn mmoe_lays_out_the_experts_then_each_tasks_gate_and_head() {
        let mut setup = setup();
        setup.shared = Shared::Mmoe {
            experts: 2,
            mlp: Mlp {
                input: 3,
                hidden: vec![5],
                output: 4,
            },
        };
        let layout = setup.layout();
        let names: Vec<&str> = layout.slots.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "experts.0.0.weight",
                "experts.0.0.bias",
                "experts.0.2.weight",
                "experts.0.2.bias",
                "experts.1.0.weight",
                "experts.1.0.bias",
                "experts.1.2.weight",
                "experts.1.2.bias",
                "gates.a.weight",
                "gates.a.bias",
                "heads.a.weight",
                "heads.a.bias",
                "gates.b.weight",
                "gates.b.bias",
                "heads.b.weight",
                "heads.b.bias"
            ]
        );
        // Two experts of 44 values; gates of (3+1)*2 = 8; heads of (4+1)*2 and (4+1)*7.
        assert_eq!(setup.shared_len(), 88);
        assert_eq!(setup.head_range(0), 88..106);
        assert_eq!(setup.head_range(1), 106..149);
        assert_eq!(layout.param_count(), 149);
        assert_eq!(layout.slots[8].shape, vec![2, 3]);
        assert_eq!(layout.slots[12].offset, 106, "b's gate starts its range");
        assert!(layout.slots[..8].iter().all(|s| s.role == Role::Body));
        assert!(layout.slots[8..].iter().all(|s| s.role == Role::Head));
        // PyTorch's Linear default: the gate's bound is 1/sqrt(input), the head's 1/sqrt(width).
        let values = layout.init(7);
        assert!(layout.slots[8]
            .values(&values)
            .iter()
            .all(|v| v.abs() <= 1.0 / 3f32.sqrt()));
        assert!(layout.slots[10]
            .values(&values)
            .iter()
            .all(|v| v.abs() <= 0.5));
    }
}
