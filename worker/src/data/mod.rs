//! Task data on the worker: one module per task source, each turning descriptors into a batch of tensors.

mod batch;
pub mod images;
mod sinusoid;
pub mod table;

use std::cell::RefCell;
use std::rc::Rc;

use outerloop_proto::work::{Family, TaskDescriptor};
use tch::{Device, Kind};

pub use batch::TaskBatch;
pub use images::{DataRoot, EpisodeSource, ImageCache};
pub use sinusoid::{SinusoidFamily, SinusoidTask};

use crate::objective::Objective;

/// Where a family's task data comes from.
pub trait TaskSource {
    /// The support and query sets of `tasks`, stacked along a leading task axis, on `device`;
    /// floating-point data in `kind`. An error says why the tasks cannot be made here.
    fn materialise(
        &self,
        tasks: &[TaskDescriptor],
        kind: Kind,
        device: Device,
    ) -> Result<TaskBatch, String>;

    /// How predictions on this family's tasks are scored.
    fn objective(&self) -> Objective;
}

/// The task source of a family, or why this worker cannot make its tasks (its copy of the
/// dataset is missing or differs from the experiment's).
pub fn source(
    family: &Family,
    data: &DataRoot,
    cache: &Rc<RefCell<ImageCache>>,
) -> Result<Box<dyn TaskSource>, String> {
    Ok(match family {
        Family::Sinusoid(s) => Box::new(SinusoidFamily::from(s)),
        Family::Images(i) => Box::new(EpisodeSource::new(i, data, cache.clone())?),
    })
}
