//! The outerloop coordinator: owns experiments and the outer loop; never links libtorch.

pub mod aggregate;
pub mod model;
pub mod optimizer;
pub mod sampler;
pub mod spec;
pub mod stats;
