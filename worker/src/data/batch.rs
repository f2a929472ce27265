//! A batch of materialised tasks: support and query sets stacked along a leading task axis.

use tch::Tensor;

/// The tensors of one chunk, task axis first: inputs `[tasks, points, ...]` (values, or images
/// `[channels, size, size]`) and targets `[tasks, points, outputs]` (regression) or class
/// labels `[tasks, points]` (classification).
#[derive(Debug)]
pub struct TaskBatch {
    pub support_x: Tensor,
    pub support_y: Tensor,
    pub query_x: Tensor,
    pub query_y: Tensor,
}

impl TaskBatch {
    pub fn tasks(&self) -> usize {
        self.support_x.size()[0] as usize
    }

    /// Task `t` alone, as a batch of one (used by the per-task reference path).
    pub fn task(&self, t: usize) -> TaskBatch {
        let pick = |x: &Tensor| x.narrow(0, t as i64, 1);
        TaskBatch {
            support_x: pick(&self.support_x),
            support_y: pick(&self.support_y),
            query_x: pick(&self.query_x),
            query_y: pick(&self.query_y),
        }
    }
}
