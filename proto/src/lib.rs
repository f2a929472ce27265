//! The outerloop wire protocol: generated gRPC code and the conversions the rest of the code uses.

pub mod convert;
pub mod layout;

/// Generated messages, clients and servers of `outerloop.v1`.
pub mod v1 {
    tonic::include_proto!("outerloop.v1");
}

pub use convert::{f32s_from_bytes, f32s_to_bytes, ExperimentState};
pub use layout::{MlpLayout, ParamSlot};
