//! The outerloop worker: pulls work chunks from the coordinator and runs inner loops on libtorch.

pub mod algorithms;
pub mod allocator;
pub mod client;
pub mod compute;
pub mod data;
pub mod device;
pub mod engine;
pub mod models;
pub mod mtl;
pub mod objective;

pub use algorithms::Path;
pub use client::{serve, WorkerIdentity};
pub use compute::ComputeThread;
pub use device::{device_name, parse_device};
