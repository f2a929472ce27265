//! The outerloop worker: pulls work chunks from the coordinator and runs inner loops on libtorch.

pub mod batch;
pub mod maml;
pub mod mlp;
pub mod sinusoid;
