//! Multi-task specs (`kind = "mtl"`): the data and its tasks, the architecture, training, the weighting method, and evaluation.

mod table;

use std::collections::BTreeMap;

use outerloop_proto::dataset::{Manifest, TableManifest};
use outerloop_proto::model::{Conv4, Mlp, ParamLayout};
use outerloop_proto::mtl::{GradNormData, MtlData, MtlSetup, MtlTask, Shared, TaskLoss};
use serde::{Deserialize, Serialize};

pub use table::TableSpec;

use super::error::{out_of_range, Invalid, SpecError};
use super::meta::{check_optimizer, default_betas, default_eps, OptimizerKind};
use super::{CheckpointSpec, ExperimentKind, SchedulingSpec, MAX_CHUNK_VALUES, MAX_PARAMS};
use crate::mtl::weighting::Method;

/// Most tasks in one multi-task experiment.
pub const MAX_MTL_TASKS: usize = 256;
/// Most values of a table a worker encodes for one experiment (1 GiB of `f32`).
const MAX_TABLE_VALUES: u64 = 1 << 28;
/// Most rows in one step's batch or one evaluation.
const MAX_ROWS: u32 = 10_000_000;
/// Most experts of a mixture: far beyond the few to tens that MMoE is used with.
const MAX_EXPERTS: u32 = 64;

/// A fully resolved multi-task spec.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MtlSpec {
    pub name: String,
    pub seed: u64,
    /// Always `mtl`; written so that the stored spec reads back as what it is.
    pub kind: ExperimentKind,
    pub data: MtlDataSpec,
    pub model: SharedSpec,
    pub train: TrainSpec,
    pub weighting: Method,
    pub eval: MtlEvalSpec,
    #[serde(skip_serializing_if = "CheckpointSpec::is_default")]
    pub checkpoint: CheckpointSpec,
    #[serde(skip_serializing_if = "SchedulingSpec::is_default")]
    pub scheduling: SchedulingSpec,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMtlSpec {
    name: String,
    seed: u64,
    #[allow(dead_code)]
    kind: ExperimentKind,
    data: MtlDataSpec,
    model: RawShared,
    train: TrainSpec,
    weighting: Method,
    eval: MtlEvalSpec,
    #[serde(default)]
    checkpoint: CheckpointSpec,
    #[serde(default)]
    scheduling: SchedulingSpec,
}

/// `[data]`: where the rows come from, which fixes the tasks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "lowercase", deny_unknown_fields)]
pub enum MtlDataSpec {
    /// GradNorm's regression family (Chen et al. 2018, section 4): one task per entry of
    /// `sigmas`, task `i`'s target `sigmas[i] * tanh((B + eps_i) x)`, named `t0`, `t1`, ...
    #[serde(rename = "gradnorm")]
    GradNorm {
        sigmas: Vec<f32>,
        /// The family's tasks this experiment trains, by index into `sigmas` (a single-task
        /// baseline names one); all of them when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tasks: Option<Vec<u32>>,
        #[serde(default = "default_inputs")]
        inputs: u32,
        #[serde(default = "default_outputs")]
        outputs: u32,
    },
    /// CSV or Parquet files under every worker's `--data-root`, with the tasks' columns.
    Table(TableSpec),
    /// The two-objective toy problem of CAGrad (Liu et al. 2021, Figure 1): tasks `f1` and
    /// `f2` are two losses of a point of the plane (`[model] kind = "point"`) that starts at
    /// `start`; no rows.
    #[serde(rename = "pareto_toy")]
    ParetoToy {
        #[serde(default = "default_start")]
        start: [f32; 2],
    },
}

/// The first of the CAGrad paper's three starting points.
fn default_start() -> [f32; 2] {
    [-8.5, 7.5]
}

fn default_inputs() -> u32 {
    250
}
fn default_outputs() -> u32 {
    100
}

/// `[model]`: how the tasks share layers; every task's head is a Linear layer on its
/// representation.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SharedSpec {
    /// Linear layers of the given widths, ReLU after each; the last width is the
    /// representation the heads read (hard parameter sharing).
    Mlp { hidden: Vec<u32> },
    /// Multi-gate mixture of experts (Ma et al., KDD 2018): `experts` MLPs of the given
    /// widths, ReLU after each layer, and per task a softmax gate over them on the input that
    /// mixes their outputs into the task's representation.
    Mmoe { experts: u32, hidden: Vec<u32> },
    /// No layers: the shared parameters are the toy problem's point, and there are no heads.
    Point,
    /// conv4's four blocks of [3x3 convolution with `filters` channels, batch norm, ReLU, 2x2
    /// max-pool], reading each row's inputs as a `channels x image_size x image_size` image
    /// (row-major: a table's pixel columns in order); the heads read the flattened features.
    Conv4 {
        channels: u32,
        image_size: u32,
        filters: u32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SharedKind {
    Mlp,
    Mmoe,
    Point,
    Conv4,
}

/// conv4's filters when the spec names none: the paper's Omniglot setting, as in few-shot specs.
const DEFAULT_FILTERS: u32 = 64;
/// Bounds of conv4's shape: an image must survive four 2x2 pools.
const MIN_IMAGE_SIZE: u32 = 16;
const MAX_IMAGE_SIZE: u32 = 512;
const MAX_CHANNELS: u32 = 16;
const MAX_FILTERS: u32 = 1024;

/// `[model]` as written: every kind's fields, checked against the kind once the overrides are
/// applied, so that `--set` can switch the kind and add its fields in either order.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShared {
    kind: SharedKind,
    hidden: Option<Vec<u32>>,
    experts: Option<u32>,
    channels: Option<u32>,
    image_size: Option<u32>,
    filters: Option<u32>,
}

impl SharedSpec {
    fn resolve(raw: RawShared) -> Result<SharedSpec, Invalid> {
        let conv_field = [
            ("model.channels", raw.channels.is_some()),
            ("model.image_size", raw.image_size.is_some()),
            ("model.filters", raw.filters.is_some()),
        ]
        .into_iter()
        .find(|(_, given)| *given);
        if raw.kind == SharedKind::Conv4 {
            return Self::resolve_conv4(&raw);
        }
        if let Some((field, _)) = conv_field {
            return Err((
                field.into(),
                "a field of kind \"conv4\" only (its fields are kind, channels, image_size, filters)"
                    .into(),
            ));
        }
        if raw.kind == SharedKind::Point {
            return match (&raw.hidden, raw.experts) {
                (None, None) => Ok(SharedSpec::Point),
                _ => Err((
                    if raw.hidden.is_some() {
                        "model.hidden"
                    } else {
                        "model.experts"
                    }
                    .into(),
                    "not a field of kind \"point\", which has no layers (its only field is kind)"
                        .into(),
                )),
            };
        }
        let Some(hidden) = raw.hidden else {
            return Err((
                "model.hidden".into(),
                "is required: the widths of the shared layers or of each expert".into(),
            ));
        };
        match (raw.kind, raw.experts) {
            (SharedKind::Mlp, None) => Ok(SharedSpec::Mlp { hidden }),
            (SharedKind::Mlp, Some(_)) => Err((
                "model.experts".into(),
                "not a field of kind \"mlp\"; its fields are kind, hidden (kind \"mmoe\" has experts)"
                    .into(),
            )),
            (SharedKind::Mmoe, None) => Err((
                "model.experts".into(),
                format!("required by kind \"mmoe\": the number of experts, 1 to {MAX_EXPERTS}"),
            )),
            (SharedKind::Mmoe, Some(experts)) if !(1..=MAX_EXPERTS).contains(&experts) => {
                Err(out_of_range(
                    "model.experts",
                    experts,
                    &format!("must be between 1 and {MAX_EXPERTS}"),
                ))
            }
            (SharedKind::Mmoe, Some(experts)) => Ok(SharedSpec::Mmoe { experts, hidden }),
            (SharedKind::Point | SharedKind::Conv4, _) => unreachable!("resolved above"),
        }
    }

    fn resolve_conv4(raw: &RawShared) -> Result<SharedSpec, Invalid> {
        for (field, given) in [
            ("model.hidden", raw.hidden.is_some()),
            ("model.experts", raw.experts.is_some()),
        ] {
            if given {
                return Err((
                    field.into(),
                    "not a field of kind \"conv4\"; its fields are kind, channels, image_size, filters".into(),
                ));
            }
        }
        let Some(image_size) = raw.image_size else {
            return Err((
                "model.image_size".into(),
                format!("is required by kind \"conv4\": the side of each row's square image, {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}"),
            ));
        };
        let (channels, filters) = (
            raw.channels.unwrap_or(1),
            raw.filters.unwrap_or(DEFAULT_FILTERS),
        );
        for (field, value, low, high, why) in [
            (
                "model.image_size",
                image_size,
                MIN_IMAGE_SIZE,
                MAX_IMAGE_SIZE,
                " (an image must survive four 2x2 pools)",
            ),
            ("model.channels", channels, 1, MAX_CHANNELS, ""),
            ("model.filters", filters, 1, MAX_FILTERS, ""),
        ] {
            if !(low..=high).contains(&value) {
                return Err(out_of_range(
                    field,
                    value,
                    &format!("must be between {low} and {high}{why}"),
                ));
            }
        }
        Ok(SharedSpec::Conv4 {
            channels,
            image_size,
            filters,
        })
    }

    /// The widths of the shared MLP, or of each expert; none for a point or conv4.
    pub fn hidden(&self) -> &[u32] {
        match self {
            SharedSpec::Mlp { hidden } | SharedSpec::Mmoe { hidden, .. } => hidden,
            SharedSpec::Point | SharedSpec::Conv4 { .. } => &[],
        }
    }

    /// Values per row conv4 reads (`channels x image_size x image_size`); None for MLPs.
    fn image_values(&self) -> Option<u64> {
        match *self {
            SharedSpec::Conv4 {
                channels,
                image_size,
                ..
            } => Some(channels as u64 * image_size as u64 * image_size as u64),
            _ => None,
        }
    }
}

/// `[train]`: the batch, how it is cut, and the optimizer of shared layers and heads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    pub steps: u64,
    /// Rows per step; every task is scored on the same rows.
    pub batch: u32,
    /// Rows per work chunk. Fixed by the spec, never by the number of workers, so that the
    /// order in which chunks are added (and so the result) does not depend on them.
    #[serde(default = "default_chunk_rows")]
    pub chunk_rows: u32,
    pub optimizer: OptimizerKind,
    pub lr: f32,
    /// SGD momentum (ignored by Adam).
    #[serde(default)]
    pub momentum: f32,
    #[serde(default = "default_betas")]
    pub betas: [f32; 2],
    #[serde(default = "default_eps")]
    pub eps: f32,
    /// How workers send each task's gradient of the shared layers.
    #[serde(default)]
    pub shared_gradients: SharedGradients,
}

/// `train.shared_gradients`: the form in which a training chunk's per-task shared-layer
/// gradients travel from the workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SharedGradients {
    /// `factored` where it is cheaper (see [`MtlSpec::factored`]), else `dense`.
    #[default]
    Auto,
    /// Every task's gradient, one value per shared parameter.
    Dense,
    /// Each layer's input rows once, and per task its gradient at each layer's output: the
    /// coordinator forms the Gram matrix and the combined direction from these (hard sharing
    /// of an MLP only).
    Factored,
}

fn default_chunk_rows() -> u32 {
    64
}

/// `[eval]`: held-out rows scored every `every` steps and at the end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlEvalSpec {
    pub every: u64,
    /// Validation rows of each periodic evaluation (the same rows each time). Required for
    /// generated data; a table's whole validation split when absent (and at most that).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u32>,
    /// Test rows of the final evaluation, likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_rows: Option<u32>,
    #[serde(default = "default_eval_chunk_rows")]
    pub chunk_rows: u32,
    /// Each task's test metric in a single-task baseline run, by task name: when given, the
    /// final evaluation reports Δm%, the mean relative change against them (as LibMTL does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baselines: Option<BTreeMap<String, f64>>,
}

fn default_eval_chunk_rows() -> u32 {
    1024
}

impl MtlSpec {
    pub fn parse(text: &str, source_name: &str, overrides: &[String]) -> Result<Self, SpecError> {
        super::document::parse(text, source_name, overrides, MtlSpec::resolve)
    }

    fn resolve(raw: RawMtlSpec) -> Result<MtlSpec, Invalid> {
        super::name::check_name(&raw.name)?;
        let mut spec = MtlSpec {
            name: raw.name,
            seed: raw.seed,
            kind: ExperimentKind::Mtl,
            data: raw.data,
            model: SharedSpec::resolve(raw.model)?,
            train: raw.train,
            weighting: raw.weighting,
            eval: raw.eval,
            checkpoint: raw.checkpoint,
            scheduling: raw.scheduling,
        };
        spec.checkpoint.validate()?;
        spec.scheduling.validate()?;
        if let MtlDataSpec::Table(table) = &mut spec.data {
            table.check()?;
        }
        spec.validate()?;
        Ok(spec)
    }

    /// The table this spec reads, if it reads one.
    pub fn table(&self) -> Option<&TableSpec> {
        match &self.data {
            MtlDataSpec::Table(table) => Some(table),
            MtlDataSpec::GradNorm { .. } | MtlDataSpec::ParetoToy { .. } => None,
        }
    }

    /// Checks a table spec against its dataset's manifest and pins it to that version,
    /// filling in what the table decides (features, head widths).
    pub fn check_dataset(&mut self, manifest: &Manifest) -> Result<(), Invalid> {
        let MtlDataSpec::Table(table) = &mut self.data else {
            return Ok(());
        };
        table.check_manifest(manifest)?;
        let table = self.table().expect("matched above");
        let shape = manifest
            .table
            .as_ref()
            .expect("checked: a table's manifest");
        // What workers will hold: the encoded table, and each chunk's inputs and targets.
        let width = self.table_input_width(table, shape) as u64;
        if let Some(image) = self.model.image_values().filter(|&n| n != width) {
            return Err((
                "data.features".into(),
                format!("encode to {width} inputs per row (text columns one-hot), but model kind \"conv4\" reads each row as an image of {image} values (model.channels x model.image_size x model.image_size): name exactly the image's pixel columns, in row-major order"),
            ));
        }
        let targets: u64 = table.tasks.iter().map(|t| t.columns().len() as u64).sum();
        let encoded = shape.rows * (width + targets);
        if table.image_column.is_some() {
            // Decoded images are cached as bytes, one per value: four times as many fit.
            if shape.rows * width > 4 * MAX_TABLE_VALUES {
                return Err((
                    "model.image_size".into(),
                    format!("decodes the table's {} images to {} bytes, over the limit of {} (1 GiB) a worker caches; use smaller images", shape.rows, shape.rows * width, 4 * MAX_TABLE_VALUES),
                ));
            }
        } else if encoded > MAX_TABLE_VALUES {
            return Err((
                "data.features".into(),
                format!("encode to {width} inputs per row (text columns one-hot), {encoded} values for the table's {} rows with the targets: over the limit of {MAX_TABLE_VALUES} (1 GiB of f32) a worker holds; name fewer or narrower features", shape.rows),
            ));
        }
        for (path, rows) in [
            ("train.chunk_rows", self.train.chunk_rows),
            ("eval.chunk_rows", self.eval.chunk_rows),
        ] {
            let values = rows as u64 * (width + targets);
            if values > MAX_CHUNK_VALUES {
                return Err(out_of_range(
                    path,
                    rows,
                    &format!("a chunk of {rows} rows of {width} inputs and {targets} targets would hold {values} values, over the limit of {MAX_CHUNK_VALUES} (1 GiB); use smaller chunks"),
                ));
            }
        }
        let params = self
            .setup("", Some(manifest))
            .map(|s| s.layout().param_count() as u64)
            .unwrap_or(0);
        if params > MAX_PARAMS {
            return Err((
                "model.hidden".into(),
                format!("is too large: on {width} inputs (data.features, text columns one-hot) the network would have {params} parameters; at most {MAX_PARAMS} (256 MiB of f32) are supported"),
            ));
        }
        Ok(())
    }

    /// Inputs per row of a table: its encoded features, or the image conv4 reads.
    fn table_input_width(&self, table: &TableSpec, manifest: &TableManifest) -> usize {
        match (&table.image_column, self.model.image_values()) {
            (Some(_), Some(image)) => image as usize,
            _ => table.input_width(manifest),
        }
    }

    /// Values of inputs and targets in one row, as far as is known without the table's
    /// manifest (a table's features are bounded later, by its chunks' rows).
    fn row_values(&self) -> u64 {
        match &self.data {
            MtlDataSpec::GradNorm {
                sigmas,
                inputs,
                outputs,
                ..
            } => *inputs as u64 + *outputs as u64 * sigmas.len() as u64,
            MtlDataSpec::Table(table) => {
                table.tasks.len() as u64 + table.features.as_ref().map_or(1, |f| f.len() as u64)
            }
            MtlDataSpec::ParetoToy { .. } => 0,
        }
    }

    fn validate(&self) -> Result<(), Invalid> {
        match &self.data {
            MtlDataSpec::GradNorm {
                sigmas,
                tasks,
                inputs,
                outputs,
            } => {
                Self::validate_gradnorm(sigmas, tasks, *inputs, *outputs)?;
                if let Some(image) = self.model.image_values().filter(|&n| n != *inputs as u64) {
                    return Err(out_of_range(
                        "data.inputs",
                        inputs,
                        &format!("must equal the {image} values of model kind \"conv4\"'s image (model.channels x model.image_size x model.image_size)"),
                    ));
                }
            }
            MtlDataSpec::Table(table) => {
                if table.image_column.is_some() {
                    match self.model {
                        SharedSpec::Conv4 { channels, .. } if channels != 1 && channels != 3 => {
                            return Err(out_of_range(
                                "model.channels",
                                channels,
                                "images are read in 1 (grey) or 3 (RGB) channels",
                            ))
                        }
                        SharedSpec::Conv4 { .. } => {}
                        _ => {
                            return Err((
                                "data.image_column".into(),
                                "needs model.kind = \"conv4\", whose channels and image_size say how to decode the images".into(),
                            ))
                        }
                    }
                }
            }
            MtlDataSpec::ParetoToy { start } => {
                if start.iter().any(|c| !c.is_finite()) {
                    return Err(out_of_range(
                        "data.start",
                        format!("{start:?}"),
                        "must be two finite coordinates",
                    ));
                }
            }
        }
        // The toy problem and the point go together, and only together.
        let toy = matches!(self.data, MtlDataSpec::ParetoToy { .. });
        if toy != (self.model == SharedSpec::Point) {
            return Err((
                "model.kind".into(),
                if toy {
                    "must be \"point\" for the toy problem: its tasks are losses of a point, not of rows".into()
                } else {
                    "\"point\" is the toy problem's model (data.family = \"pareto_toy\"); data of rows needs \"mlp\", \"mmoe\" or \"conv4\"".into()
                },
            ));
        }
        let generated = matches!(self.data, MtlDataSpec::GradNorm { .. });
        for (field, rows) in [
            ("eval.rows", self.eval.rows),
            ("eval.final_rows", self.eval.final_rows),
        ] {
            if generated && rows.is_none() {
                return Err((
                    field.into(),
                    "is required: generated data has no end, so say how many rows to score".into(),
                ));
            }
        }
        self.validate_model_and_training()
    }

    fn validate_gradnorm(
        sigmas: &[f32],
        tasks: &Option<Vec<u32>>,
        inputs: u32,
        outputs: u32,
    ) -> Result<(), Invalid> {
        if let Some(tasks) = tasks {
            let family = sigmas.len() as u32;
            let mut seen = std::collections::BTreeSet::new();
            if tasks.is_empty() {
                return Err(out_of_range(
                    "data.tasks",
                    tasks,
                    "name at least one task, or leave it out for all",
                ));
            }
            if let Some(bad) = tasks.iter().find(|&&t| t >= family) {
                return Err(out_of_range(
                    "data.tasks",
                    bad,
                    &format!("each must be a distinct index into data.sigmas, below {family}"),
                ));
            }
            if let Some(twice) = tasks.iter().find(|&&t| !seen.insert(t)) {
                return Err((
                    "data.tasks".into(),
                    format!("task {twice} is listed twice: each must be a distinct index into data.sigmas"),
                ));
            }
        }
        if sigmas.is_empty() || sigmas.len() > MAX_MTL_TASKS {
            return Err(out_of_range(
                "data.sigmas",
                sigmas.len(),
                &format!("list one output scale per task, 1 to {MAX_MTL_TASKS} of them"),
            ));
        }
        if let Some(bad) = sigmas.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(out_of_range(
                "data.sigmas",
                bad,
                "every scale must be finite and positive",
            ));
        }
        for (path, n) in [("data.inputs", inputs), ("data.outputs", outputs)] {
            if !(1..=65_536).contains(&n) {
                return Err(out_of_range(path, n, "must be between 1 and 65536"));
            }
        }
        Ok(())
    }

    fn validate_model_and_training(&self) -> Result<(), Invalid> {
        let hidden = self.model.hidden();
        let layers = matches!(self.model, SharedSpec::Mlp { .. } | SharedSpec::Mmoe { .. });
        if layers && (hidden.is_empty() || hidden.iter().any(|&w| !(1..=65_536).contains(&w))) {
            return Err(out_of_range(
                "model.hidden",
                hidden,
                "list the widths of the shared layers or of each expert (the last is the representation), each between 1 and 65536",
            ));
        }
        let train = &self.train;
        if train.steps == 0 {
            return Err(out_of_range(
                "train.steps",
                train.steps,
                "must be at least 1",
            ));
        }
        for (path, n) in [
            ("train.batch", Some(train.batch)),
            ("train.chunk_rows", Some(train.chunk_rows)),
            ("eval.rows", self.eval.rows),
            ("eval.final_rows", self.eval.final_rows),
            ("eval.chunk_rows", Some(self.eval.chunk_rows)),
        ] {
            let Some(n) = n else { continue };
            if !(1..=MAX_ROWS).contains(&n) {
                return Err(out_of_range(
                    path,
                    n,
                    &format!("must be between 1 and {MAX_ROWS}"),
                ));
            }
            let values = n as u64 * self.row_values();
            if path.ends_with("chunk_rows") && values > MAX_CHUNK_VALUES {
                return Err(out_of_range(
                    path,
                    n,
                    &format!("a chunk of {n} rows would hold {values} values of inputs and targets, over the limit of {MAX_CHUNK_VALUES} (1 GiB); use smaller chunks"),
                ));
            }
        }
        check_optimizer(
            "train",
            ("lr", train.lr),
            train.momentum,
            train.betas,
            train.eps,
        )?;
        if self.eval.every == 0 {
            return Err(out_of_range(
                "eval.every",
                self.eval.every,
                "must be at least 1",
            ));
        }
        if train.shared_gradients == SharedGradients::Factored
            && !matches!(self.model, SharedSpec::Mlp { .. })
        {
            return Err((
                "train.shared_gradients".into(),
                "\"factored\" needs model kind \"mlp\" (hard sharing of an MLP); use \"auto\" or \"dense\""
                    .into(),
            ));
        }
        let tasks = self.task_names();
        self.weighting.check(tasks.len()).map_err(|message| {
            // Methods name the setting they refuse in backticks: blame that key.
            let field = message.split('`').nth(1).unwrap_or("method");
            (format!("weighting.{field}"), message.clone())
        })?;
        if let Some(baselines) = &self.eval.baselines {
            for name in baselines.keys() {
                if !tasks.contains(name) {
                    return Err((
                        format!("eval.baselines.{name}"),
                        format!(
                            "is not a task of this experiment; its tasks are {}",
                            tasks.join(", ")
                        ),
                    ));
                }
            }
            if let Some(missing) = tasks.iter().find(|t| !baselines.contains_key(*t)) {
                return Err((
                    "eval.baselines".into(),
                    format!("lacks task {missing}: give every task's baseline metric, or none"),
                ));
            }
            if let Some((name, value)) = baselines
                .iter()
                .find(|(_, v)| !(v.is_finite() && **v != 0.0))
            {
                return Err(out_of_range(
                    &format!("eval.baselines.{name}"),
                    value,
                    "must be finite and non-zero (Δm% divides by it)",
                ));
            }
        }
        let params = match self.table() {
            // A table's width is known from its manifest: checked at submission.
            Some(_) => 0,
            None => self.layout().param_count() as u64,
        };
        if params > MAX_PARAMS {
            return Err((
                "model.hidden".into(),
                format!("is too large: the network would have {params} parameters; at most {MAX_PARAMS} (256 MiB of f32) are supported"),
            ));
        }
        Ok(())
    }

    /// The tasks' names, in task order.
    pub fn task_names(&self) -> Vec<String> {
        match &self.data {
            MtlDataSpec::GradNorm { .. } => self
                .family_tasks()
                .iter()
                .map(|i| format!("t{i}"))
                .collect(),
            MtlDataSpec::Table(table) => table.tasks.iter().map(|t| t.name().to_string()).collect(),
            MtlDataSpec::ParetoToy { .. } => vec!["f1".into(), "f2".into()],
        }
    }

    /// The indices of the family's tasks this experiment trains, in task order (generated
    /// data; a table's tasks are its own).
    pub fn family_tasks(&self) -> Vec<u32> {
        match &self.data {
            MtlDataSpec::GradNorm { sigmas, tasks, .. } => tasks
                .clone()
                .unwrap_or_else(|| (0..sigmas.len() as u32).collect()),
            MtlDataSpec::Table(table) => (0..table.tasks.len() as u32).collect(),
            MtlDataSpec::ParetoToy { .. } => vec![0, 1],
        }
    }

    /// What the submitter should know about rows asked for that the table does not have: an
    /// evaluation scores all of its split, a step larger than the training split passes over
    /// it more than once. Nothing for generated data, whose streams do not end.
    pub fn notes(&self, manifest: Option<&Manifest>) -> Vec<String> {
        let MtlDataSpec::Table(table) = &self.data else {
            return Vec::new();
        };
        let Some(Ok(counts)) =
            (manifest.and_then(|m| m.table.as_ref())).map(|t| table.split_counts(t))
        else {
            return Vec::new();
        };
        let name = &table.dataset;
        let mut notes = Vec::new();
        let batch = u64::from(self.train.batch);
        if batch > counts[0] {
            notes.push(format!(
                "train.batch = {batch} is more than the {} training rows of `{name}`: each step passes over them about {} times",
                counts[0],
                batch.div_ceil(counts[0].max(1))
            ));
        }
        for (asked, split, field, which) in [
            (self.eval.rows, counts[1], "eval.rows", "validation"),
            (self.eval.final_rows, counts[2], "eval.final_rows", "test"),
        ] {
            if let Some(asked) = asked.map(u64::from).filter(|&a| a > split) {
                notes.push(format!(
                    "{field} = {asked} is more than the {split} {which} rows of `{name}`: all {split} are scored"
                ));
            }
        }
        notes
    }

    /// Rows of the validation and test splits when the data has an end (a table's, from its
    /// manifest); `None` for generated data, whose streams do not end.
    pub fn held_out_rows(&self, manifest: Option<&Manifest>) -> Result<Option<[u64; 2]>, String> {
        let table = match &self.data {
            MtlDataSpec::GradNorm { .. } => return Ok(None),
            // Every row scores the same losses of the point: one is all there is to score.
            MtlDataSpec::ParetoToy { .. } => return Ok(Some([1, 1])),
            MtlDataSpec::Table(table) => table,
        };
        let shape = manifest
            .and_then(|m| m.table.as_ref())
            .ok_or_else(|| format!("the manifest of table `{}` is missing", table.dataset))?;
        let counts = table
            .split_counts(shape)
            .map_err(|(field, message)| format!("{field}: {message}"))?;
        Ok(Some([counts[1], counts[2]]))
    }

    /// What workers need to know to compute this experiment's chunks. A table's spec needs
    /// the manifest it was checked against; the error says so when it is missing.
    pub fn setup(
        &self,
        experiment_id: &str,
        manifest: Option<&Manifest>,
    ) -> Result<MtlSetup, String> {
        let (data, input, tasks) = match &self.data {
            MtlDataSpec::GradNorm {
                sigmas,
                inputs,
                outputs,
                tasks,
            } => {
                let data = MtlData::GradNorm(GradNormData {
                    seed: crate::sampling::data_seed(self.seed),
                    inputs: *inputs,
                    outputs: *outputs,
                    sigmas: sigmas.clone(),
                    // Every task of the family, in order, is written as none.
                    tasks: tasks.clone().unwrap_or_default(),
                });
                let tasks = self
                    .task_names()
                    .into_iter()
                    .map(|name| MtlTask {
                        name,
                        loss: TaskLoss::Mse,
                        outputs: *outputs,
                    })
                    .collect();
                (data, *inputs as usize, tasks)
            }
            MtlDataSpec::Table(table) => {
                let manifest = manifest.and_then(|m| m.table.as_ref()).ok_or_else(|| {
                    format!("the manifest of table `{}` is missing", table.dataset)
                })?;
                let tasks = table
                    .tasks
                    .iter()
                    .map(|t| MtlTask {
                        name: t.name().to_string(),
                        loss: t.loss.task_loss(),
                        outputs: t.outputs.unwrap_or_default(),
                    })
                    .collect();
                let data = MtlData::Table(table.data(crate::sampling::data_seed(self.seed)));
                (data, self.table_input_width(table, manifest), tasks)
            }
            MtlDataSpec::ParetoToy { start } => {
                let tasks = self
                    .task_names()
                    .into_iter()
                    .map(|name| MtlTask {
                        name,
                        loss: TaskLoss::Mse,
                        outputs: 0,
                    })
                    .collect();
                return Ok(MtlSetup {
                    factored: false,
                    experiment_id: experiment_id.to_string(),
                    data: MtlData::ParetoToy,
                    shared: Shared::Point { start: *start },
                    tasks,
                });
            }
        };
        if let SharedSpec::Conv4 {
            channels,
            image_size,
            filters,
        } = self.model
        {
            let conv = Conv4 {
                channels: channels as usize,
                image_size: image_size as usize,
                filters: filters as usize,
                output: 0,
            };
            if conv.channels * conv.image_size * conv.image_size != input {
                return Err(format!(
                    "model kind \"conv4\" reads {channels} x {image_size} x {image_size} = {} values per row, the data has {input}",
                    conv.channels * conv.image_size * conv.image_size
                ));
            }
            return Ok(MtlSetup {
                factored: false,
                experiment_id: experiment_id.to_string(),
                data,
                shared: Shared::Conv4(conv),
                tasks,
            });
        }
        let widths: Vec<usize> = self.model.hidden().iter().map(|&w| w as usize).collect();
        let (output, hidden) = widths.split_last().expect("validated: at least one width");
        let mlp = Mlp {
            input,
            hidden: hidden.to_vec(),
            output: *output,
        };
        let shared = match self.model {
            SharedSpec::Mlp { .. } => Shared::Hard(mlp),
            SharedSpec::Mmoe { experts, .. } => Shared::Mmoe {
                experts: experts as usize,
                mlp,
            },
            SharedSpec::Point => unreachable!("validated: a point goes with the toy problem"),
            SharedSpec::Conv4 { .. } => unreachable!("returned above"),
        };
        Ok(MtlSetup {
            factored: self.factored(&shared),
            experiment_id: experiment_id.to_string(),
            data,
            shared,
            tasks,
        })
    }

    /// Whether training chunks send the shared layers' gradients factored (`shared` is the
    /// architecture [`MtlSpec::setup`] built): as `train.shared_gradients` says, and under
    /// `auto` for hard sharing of an MLP each of whose layers reads at least twice as many
    /// inputs as a step has rows. Then a task's gradient of a layer, `deltasᵀ inputs`, takes
    /// the workers `rows · inputs` multiply-adds per output that they no longer do, the
    /// coordinator's Gram matrix `rows · rows` (at most half as many), and the wire carries
    /// `rows · (inputs + tasks · outputs)` values instead of `tasks · outputs · inputs`.
    pub fn factored(&self, shared: &Shared) -> bool {
        let Shared::Hard(mlp) = shared else {
            return false;
        };
        match self.train.shared_gradients {
            SharedGradients::Dense => false,
            SharedGradients::Factored => true,
            SharedGradients::Auto => {
                let widths = mlp.widths();
                let narrowest_input = widths[..widths.len() - 1].iter().min().copied();
                narrowest_input.is_some_and(|w| 2 * self.train.batch as usize <= w)
            }
        }
    }

    /// Shared layers, then each task's own (gate and head), of generated data (a table's layout depends on
    /// its manifest: use [`MtlSpec::setup`]).
    pub fn layout(&self) -> ParamLayout {
        self.setup("", None)
            .expect("generated data needs no manifest")
            .layout()
    }

    /// The spec as resolved (defaults filled in), as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a spec always serializes")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const MTL_SPEC: &str = r#"name = "gradnorm-ew"
seed = 3
kind = "mtl"

[data]
family = "gradnorm"
sigmas = [1.0, 10.0, 100.0]
inputs = 20
outputs = 5

[model]
kind = "mlp"
hidden = [16, 16]

[train]
steps = 20
batch = 32
chunk_rows = 8
optimizer = "adam"
lr = 0.001

[weighting]
method = "ew"

[eval]
every = 10
rows = 64
final_rows = 128
"#;

    fn parse(text: &str, overrides: &[&str]) -> Result<MtlSpec, SpecError> {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        MtlSpec::parse(text, "mtl.toml", &overrides)
    }

    #[test]
    fn an_unknown_setting_of_a_method_is_blamed_on_its_own_line() {
        let text = MTL_SPEC
            .replace(
                "method = \"ew\"",
                "method = \"cagrad\"\nc = 0.4\nalpha = 1.5",
            )
            .replace("[weighting]", "[weighting] # how the tasks combine");
        let line = text.lines().position(|l| l.starts_with("alpha")).unwrap() + 1;
        let error = parse(&text, &[]).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("mtl.toml:{line}:1: unknown field `alpha`")),
            "{error}"
        );
        assert!(error.contains("alpha = 1.5"), "the line is shown: {error}");
    }

    #[test]
    fn a_valid_spec_resolves_its_tasks_layout_and_defaults() {
        let spec = parse(MTL_SPEC, &[]).unwrap();
        assert_eq!(spec.task_names(), ["t0", "t1", "t2"]);
        assert_eq!(spec.eval.chunk_rows, 1024);
        assert_eq!(spec.train.betas, [0.9, 0.999]);
        // Shared (20+1)*16 + (16+1)*16 = 608, heads 3 * (16+1)*5 = 255.
        assert_eq!(spec.layout().param_count(), 863);
        let setup = spec.setup("e", None).unwrap();
        assert_eq!(
            setup.shared,
            Shared::Hard(Mlp {
                input: 20,
                hidden: vec![16],
                output: 16
            })
        );
        assert_eq!(setup.tasks.len(), 3);
    }

    const MMOE: [&str; 3] = ["model.kind=\"mmoe\"", "model.experts=3", "model.hidden=[8]"];

    /// `MTL_SPEC` with conv4 shared layers on 1 x 16 x 16 rows.
    fn conv4_spec() -> String {
        MTL_SPEC.replace("inputs = 20", "inputs = 256").replace(
            "kind = \"mlp\"\nhidden = [16, 16]",
            "kind = \"conv4\"\nimage_size = 16\nfilters = 4",
        )
    }

    #[test]
    fn a_conv4_spec_reads_rows_as_images_and_its_bad_shapes_are_refused() {
        let spec = parse(&conv4_spec(), &[]).unwrap();
        assert_eq!(
            spec.model,
            SharedSpec::Conv4 {
                channels: 1,
                image_size: 16,
                filters: 4
            }
        );
        let setup = spec.setup("e", None).unwrap();
        // 16 -> 1 after four pools: the heads read 4 features.
        assert_eq!(setup.shared.width(), 4);
        assert_eq!(parse(&spec.to_toml(), &[]).unwrap(), spec);
        for (overrides, field, says) in [
            (
                &["model.image_size=15"][..],
                "model.image_size",
                "four 2x2 pools",
            ),
            (&["model.filters=0"], "model.filters", "between 1 and 1024"),
            (
                &["model.experts=2"],
                "model.experts",
                "not a field of kind \"conv4\"",
            ),
            (&["data.inputs=255"], "data.inputs", "256 values"),
            (&["model.channels=3"], "data.inputs", "768 values"),
        ] {
            let error = parse(&conv4_spec(), overrides).unwrap_err().to_string();
            assert!(
                error.contains(field) && error.contains(says),
                "{overrides:?}: {error}"
            );
        }
        let no_size = conv4_spec().replace("image_size = 16\n", "");
        let error = parse(&no_size, &[]).unwrap_err().to_string();
        assert!(
            error.contains("model.image_size") && error.contains("required"),
            "{error}"
        );
        let error = parse(MTL_SPEC, &["model.filters=8"])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("model.filters") && error.contains("kind \"conv4\" only"),
            "{error}"
        );
    }

    #[test]
    fn an_mmoe_spec_lays_out_its_experts_then_each_tasks_gate_and_head() {
        let spec = parse(MTL_SPEC, &MMOE).unwrap();
        assert_eq!(
            spec.model,
            SharedSpec::Mmoe {
                experts: 3,
                hidden: vec![8]
            }
        );
        // Experts 3 * (20+1)*8 = 504; per task a gate (20+1)*3 = 63 and a head (8+1)*5 = 45.
        let setup = spec.setup("e", None).unwrap();
        assert_eq!(setup.shared_len(), 504);
        assert_eq!(setup.head_range(0), 504..612);
        assert_eq!(setup.head_range(2), 720..828);
        assert_eq!(spec.layout().param_count(), 504 + 3 * (63 + 45));
        let Shared::Mmoe { experts: 3, mlp } = &setup.shared else {
            panic!("{:?}", setup.shared)
        };
        assert_eq!((mlp.input, mlp.output), (20, 8));
        // The kind and its field may be set in either order; the spec round-trips.
        let swapped = parse(MTL_SPEC, &[MMOE[1], MMOE[0], MMOE[2]]).unwrap();
        assert_eq!(swapped, spec);
        assert_eq!(parse(&spec.to_toml(), &[]).unwrap(), spec);
    }

    #[test]
    fn bad_mixtures_name_the_field_and_what_is_allowed() {
        for (overrides, expected) in [
            (&[MMOE[0]][..], "model.experts: required by kind \"mmoe\""),
            (&[MMOE[0], "model.experts=0"], "between 1 and 64"),
            (&[MMOE[0], "model.experts=65"], "between 1 and 64"),
            (&["model.experts=2"], "not a field of kind \"mlp\""),
            (&[MMOE[0], MMOE[1], "model.hidden=[]"], "model.hidden"),
        ] {
            let error = parse(MTL_SPEC, overrides).unwrap_err().to_string();
            assert!(error.contains(expected), "{overrides:?}: {error}");
        }
        let written = MTL_SPEC.replace("kind = \"mlp\"", "kind = \"mmoe\"\nexperts = 0");
        let error = parse(&written, &[]).unwrap_err();
        assert!(error.message.contains("model.experts"), "{error}");
        assert_eq!(error.location.map(|l| l.0), Some(13), "{error}");
        let huge = parse(
            MTL_SPEC,
            &[MMOE[0], "model.experts=64", "model.hidden=[4096, 4096]"],
        )
        .unwrap_err()
        .to_string();
        assert!(huge.contains("too large"), "{huge}");
    }

    #[test]
    fn a_single_task_baseline_names_its_task_of_the_family() {
        let spec = parse(MTL_SPEC, &["data.tasks=[2]"]).unwrap();
        assert_eq!(spec.task_names(), ["t2"]);
        assert_eq!(spec.family_tasks(), [2]);
        assert_eq!(spec.setup("e", None).unwrap().tasks.len(), 1);
    }

    #[test]
    fn the_resolved_spec_round_trips() {
        let spec = parse(
            MTL_SPEC,
            &["weighting.method=\"cagrad\"", "weighting.c=0.2"],
        )
        .unwrap();
        let again = parse(&spec.to_toml(), &[]).unwrap();
        assert_eq!(again, spec);
        assert!(spec.to_toml().contains("kind = \"mtl\""));
    }

    #[test]
    fn bad_values_name_the_field_and_what_is_allowed() {
        let cases: [(&[&str], &str); 9] = [
            (
                &["data.tasks=[3]"],
                "distinct index into data.sigmas, below 3",
            ),
            (&["data.tasks=[1, 1]"], "task 1 is listed twice"),
            (&["data.sigmas=[]"], "data.sigmas"),
            (
                &["data.sigmas=[1.0, -2.0]"],
                "every scale must be finite and positive",
            ),
            (&["model.hidden=[]"], "model.hidden"),
            (&["train.batch=0"], "train.batch"),
            (&["train.lr=0.0"], "train.lr"),
            (
                &["weighting.method=\"fixed\"", "weighting.weights=[1.0]"],
                "one weight per task (3)",
            ),
            (
                &["weighting.method=\"cagrad\"", "weighting.c=1.5"],
                "weighting.c",
            ),
        ];
        for (overrides, expected) in cases {
            let error = parse(MTL_SPEC, overrides).unwrap_err().to_string();
            assert!(error.contains(expected), "{overrides:?}: {error}");
        }
        let unknown = parse(MTL_SPEC, &["weighting.method=\"sum\""])
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("pcgrad"), "{unknown}");
        let stray = MTL_SPEC.replace("lr = 0.001", "lr = 0.001\nmeta_lr = 0.1");
        let error = parse(&stray, &[]).unwrap_err();
        assert_eq!(error.location.map(|l| l.0), Some(21), "{error}");
    }

    #[test]
    fn baselines_must_name_every_task_and_only_them() {
        let with = |b: &str| {
            MTL_SPEC.replace(
                "final_rows = 128",
                &format!("final_rows = 128\nbaselines = {b}"),
            )
        };
        assert!(parse(&with("{ t0 = 0.1, t1 = 2.0, t2 = 30.0 }"), &[]).is_ok());
        let extra = parse(&with("{ t0 = 0.1, t1 = 2.0, t2 = 3.0, t9 = 1.0 }"), &[]).unwrap_err();
        assert!(extra.to_string().contains("eval.baselines.t9"), "{extra}");
        let missing = parse(&with("{ t0 = 0.1, t1 = 2.0 }"), &[]).unwrap_err();
        assert!(missing.to_string().contains("lacks task t2"), "{missing}");
        let zero = parse(&with("{ t0 = 0.0, t1 = 2.0, t2 = 3.0 }"), &[]).unwrap_err();
        assert!(zero.to_string().contains("non-zero"), "{zero}");
    }
}

#[cfg(test)]
mod toy_tests {
    use super::*;

    const TOY: &str = r#"name = "toy"
seed = 0
kind = "mtl"

[data]
family = "pareto_toy"

[model]
kind = "point"

[train]
steps = 10
batch = 1
optimizer = "adam"
lr = 0.001

[weighting]
method = "mgda"

[eval]
every = 5
"#;

    fn parse(overrides: &[&str]) -> Result<MtlSpec, String> {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        MtlSpec::parse(TOY, "toy.toml", &overrides).map_err(|e| e.to_string())
    }

    #[test]
    fn the_toy_problem_is_two_tasks_of_a_point_that_starts_where_asked() {
        let spec = parse(&["data.start=[9.0, 9.0]"]).unwrap();
        assert_eq!(spec.task_names(), ["f1", "f2"]);
        let setup = spec.setup("e", None).unwrap();
        assert_eq!(setup.shared, Shared::Point { start: [9.0, 9.0] });
        let layout = setup.layout();
        assert_eq!(layout.param_count(), 2);
        assert_eq!(layout.init(0), [9.0, 9.0]);
        assert_eq!((setup.shared_len(), setup.head_range(1)), (2, 2..2));
        assert_eq!(spec.held_out_rows(None), Ok(Some([1, 1])));
        let again = MtlSpec::parse(&spec.to_toml(), "stored.toml", &[]).unwrap();
        assert_eq!(again, spec);
    }

    #[test]
    fn the_point_and_the_toy_problem_go_together_only() {
        let cases: [(&[&str], &str); 3] = [
            (
                &["model.kind=\"mlp\"", "model.hidden=[4]"],
                "must be \"point\" for the toy problem",
            ),
            (
                &["model.hidden=[4]"],
                "model.hidden=[4]: not a field of kind \"point\"",
            ),
            (&["data.start=[1.0, nan]"], "data.start"),
        ];
        for (overrides, expected) in cases {
            let error = parse(overrides).unwrap_err();
            assert!(error.contains(expected), "{overrides:?}: {error}");
        }
        let rows = TOY
            .replace(
                "family = \"pareto_toy\"",
                "family = \"gradnorm\"\nsigmas = [1.0]",
            )
            .replace("every = 5", "every = 5\nrows = 4\nfinal_rows = 4");
        let error = MtlSpec::parse(&rows, "rows.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("\"point\" is the toy problem's model"),
            "{error}"
        );
    }
}
