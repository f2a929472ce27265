//! Multi-task learning on the coordinator: how the tasks' losses and gradients become one update.

pub mod delta_m;
pub mod factored;
mod pair_sums;
mod product;
pub mod reduce;
pub mod weighting;
