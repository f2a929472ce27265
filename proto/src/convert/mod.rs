//! Conversions between wire messages and domain types, in one place: the rest of the code speaks domain types.

mod dataset;
mod mtl;
mod setup;
mod task;
mod tensor;

pub use tensor::{f32s_from_bytes, f32s_to_bytes};

/// A wire message that does not describe a valid domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("{field} has the unknown value {value}")]
    UnknownValue { field: &'static str, value: i32 },
    #[error("{field} is {value}: {allowed}")]
    OutOfRange {
        field: &'static str,
        value: u64,
        allowed: &'static str,
    },
    #[error("{0}")]
    Inconsistent(&'static str),
}
