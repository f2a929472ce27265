//! Rows of a multi-task dataset: what a data family hands the worker for a batch of rows, and which family an experiment reads.

use outerloop_proto::mtl::{GradNormData, MtlData, MtlSetup, RowBatch, Shared, TaskLoss};
use tch::{Device, Kind, Tensor};

use super::gradnorm::GradNorm;
use super::table::TableRows;
use crate::data::DataRoot;
use crate::engine::EngineError;

/// A batch of rows on the device: inputs `[rows, inputs]` and, for each task asked for, its
/// targets (`[rows, outputs]` values, or `[rows]` int64 class labels).
#[derive(Debug)]
pub struct Rows {
    pub x: Tensor,
    pub targets: Vec<Tensor>,
}

/// A multi-task dataset. Rows are a pure function of (stream, split, row index), so any
/// worker makes the same rows for the same descriptor.
pub trait RowSource {
    /// The rows `batch` names in `stream`, with the targets of `tasks` (indices the source
    /// was checked against when it was built), floating-point values in `kind`; or why the
    /// data has no such rows.
    fn rows(
        &self,
        stream: u64,
        batch: &RowBatch,
        tasks: &[usize],
        kind: Kind,
        device: Device,
    ) -> Result<Rows, String>;
}

/// Row-major `values` as a tensor of `shape`, in `kind` on `device`.
pub fn tensor(values: &[f32], shape: &[usize], kind: Kind, device: Device) -> Tensor {
    let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    let t = Tensor::from_slice(values).view(shape.as_slice());
    // Skip no-op conversions: each op call costs microseconds at these sizes.
    let t = if kind == Kind::Float {
        t
    } else {
        t.to_kind(kind)
    };
    if device == Device::Cpu {
        t
    } else {
        t.to_device(device)
    }
}

/// The data of `setup`: refused when this worker lacks the table or holds another version
/// of it, invalid when the tasks and shared layers do not fit the data.
pub fn source(setup: &MtlSetup, data: &DataRoot) -> Result<Box<dyn RowSource>, EngineError> {
    match &setup.data {
        MtlData::Table(table) => {
            if let Some(refusal) = data.refusal(&table.dataset, &table.fingerprint) {
                return Err(EngineError::Refused(refusal));
            }
            let dataset = data.datasets.get(&table.dataset);
            let local = dataset.and_then(|d| d.table.clone()).ok_or_else(|| {
                EngineError::Refused(format!(
                    "dataset `{}` on this worker is not a table",
                    table.dataset
                ))
            })?;
            Ok(Box::new(
                TableRows::new(&local, &dataset.expect("found above").dir, table, setup)
                    .map_err(EngineError::Invalid)?,
            ))
        }
        MtlData::GradNorm(data) => gradnorm(setup, data).map_err(EngineError::Invalid),
        MtlData::ParetoToy => {
            if !matches!(setup.shared, Shared::Point { .. }) || setup.tasks.len() != 2 {
                return Err(EngineError::Invalid(
                    "the toy problem has two tasks of a point, not layers".into(),
                ));
            }
            Ok(Box::new(NoRows))
        }
    }
}

/// The toy problem's data: none; its losses are functions of the point alone.
struct NoRows;

impl RowSource for NoRows {
    fn rows(&self, _: u64, _: &RowBatch, _: &[usize], _: Kind, _: Device) -> Result<Rows, String> {
        Err("the toy problem has no rows: its tasks are scored at the point".into())
    }
}

fn gradnorm(setup: &MtlSetup, data: &GradNormData) -> Result<Box<dyn RowSource>, String> {
    if data.inputs == 0 || data.outputs == 0 {
        return Err("GradNorm data needs at least one input and one output".into());
    }
    if setup.shared.input() != data.inputs as usize {
        return Err(format!(
            "the shared layers read {} inputs, the GradNorm data has {}",
            setup.shared.input(),
            data.inputs
        ));
    }
    let family = data.family_tasks();
    if family.len() != setup.tasks.len() {
        return Err(format!(
            "GradNorm data names {} of its tasks for {} tasks",
            family.len(),
            setup.tasks.len()
        ));
    }
    if let Some(bad) = family.iter().find(|&&t| t >= data.sigmas.len()) {
        return Err(format!(
            "GradNorm data names task {bad} of a family of {}",
            data.sigmas.len()
        ));
    }
    for task in &setup.tasks {
        if task.loss != TaskLoss::Mse || task.outputs != data.outputs {
            return Err(format!(
                "task {:?}: GradNorm data only has mean-squared-error tasks of {} outputs",
                task.name, data.outputs
            ));
        }
    }
    Ok(Box::new(GradNorm::new(data)))
}
