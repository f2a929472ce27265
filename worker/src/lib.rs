//! The outerloop worker: pulls work chunks from the coordinator and runs inner loops on libtorch.

pub mod allocator;
pub mod batch;
pub mod client;
pub mod compute;
pub mod device;
pub mod engine;
pub mod maml;
pub mod mlp;
pub mod sinusoid;

pub use client::{serve, WorkerIdentity};
pub use compute::ComputeThread;
pub use device::{device_name, parse_device};
pub use maml::Path;
