//! Multi-task learning on the coordinator: how the tasks' losses and gradients become one update.

pub mod weighting;
