//! The outerloop wire protocol and the domain types both sides share: generated gRPC code, model layouts, work descriptions, and the conversions between them.

pub mod auth;
pub mod codec;
pub mod convert;
pub mod dataset;
pub mod model;
pub mod mtl;
pub mod splitmix;
pub mod state;
pub mod table;
pub mod tls;
pub mod transport;
pub mod work;

/// Generated messages, clients and servers of `outerloop.v1`.
pub mod v1 {
    tonic::include_proto!("outerloop.v1");
}

pub use convert::{f32s_from_bytes, f32s_into_bytes, f32s_to_bytes, WireError};
pub use state::ExperimentState;
