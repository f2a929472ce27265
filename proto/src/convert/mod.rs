//! Conversions between wire messages and domain types, in one place: the rest of the code speaks domain types.

mod dataset;
mod mtl;
mod setup;
mod task;
mod tensor;

pub use tensor::{f32s_from_bytes, f32s_into_bytes, f32s_to_bytes};

use crate::transport::MAX_MESSAGE_BYTES;

/// Most values a model's parameters, or one input example, may have when they come from the
/// wire: parameters travel whole in one message of at most [`MAX_MESSAGE_BYTES`], 4 bytes a
/// value. Sizes computed from values below it cannot overflow.
pub const MAX_WIRE_VALUES: usize = MAX_MESSAGE_BYTES / 4;

/// Refuses a size (a parameter count, an example's values) over [`MAX_WIRE_VALUES`].
fn within_wire_values(field: &'static str, values: usize) -> Result<(), WireError> {
    if values > MAX_WIRE_VALUES {
        return Err(WireError::OutOfRange {
            field,
            value: values as u64,
            allowed: "at most 2^28 values, what one message can carry",
        });
    }
    Ok(())
}

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
