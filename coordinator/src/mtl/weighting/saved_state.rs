//! Reading a method's saved state back: named entries, refused when missing or misshapen.

use std::collections::BTreeMap;

/// The saved entry `name`, refused when missing or not `len` values long.
pub fn entry<'a>(
    state: &'a BTreeMap<String, Vec<f64>>,
    name: &str,
    len: usize,
) -> Result<&'a [f64], String> {
    match state.get(name) {
        Some(values) if values.len() == len => Ok(values),
        Some(values) => Err(format!(
            "{name} has {} values, expected {len}",
            values.len()
        )),
        None => Err(format!("{name} is missing")),
    }
}

/// Like [`entry`], but an empty entry is taken too: what a method saves before its first step
/// (FAMO's previous losses, GradNorm's initial ones).
pub fn entry_or_empty<'a>(
    state: &'a BTreeMap<String, Vec<f64>>,
    name: &str,
    len: usize,
) -> Result<&'a [f64], String> {
    match state.get(name) {
        Some(values) if values.is_empty() => Ok(values),
        _ => entry(state, name, len),
    }
}
