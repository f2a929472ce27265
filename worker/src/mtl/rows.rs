//! Rows of a multi-task dataset: what a data family hands the worker for a batch of rows, and which family an experiment reads.

use outerloop_proto::mtl::{MtlData, MtlSetup, TaskLoss};
use tch::{Device, Kind, Tensor};

use super::gradnorm::GradNorm;

/// A batch of rows on the device: inputs `[rows, inputs]` and, for each task asked for, its
/// targets (`[rows, outputs]` values, or `[rows]` int64 class labels).
#[derive(Debug)]
pub struct Rows {
    pub x: Tensor,
    pub targets: Vec<Tensor>,
}

/// A multi-task dataset. Rows are a pure function of (stream, row index), so any worker
/// makes the same rows for the same descriptor.
pub trait RowSource {
    /// Rows `first .. first + count` of `stream`, with the targets of `tasks` (indices the
    /// source was checked against when it was built), floating-point values in `kind`.
    fn rows(
        &self,
        stream: u64,
        first: u64,
        count: usize,
        tasks: &[usize],
        kind: Kind,
        device: Device,
    ) -> Rows;
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

/// The data family of `setup`, or why its tasks and shared layers do not fit it.
pub fn source(setup: &MtlSetup) -> Result<Box<dyn RowSource>, String> {
    match &setup.data {
        MtlData::GradNorm(data) => {
            if data.inputs == 0 || data.outputs == 0 {
                return Err("GradNorm data needs at least one input and one output".into());
            }
            if setup.shared.input != data.inputs as usize {
                return Err(format!(
                    "the shared layers read {} inputs, the GradNorm data has {}",
                    setup.shared.input, data.inputs
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
    }
}
