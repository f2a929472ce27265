//! `[model]`: the network architecture; its input and output sizes come from the task family and the algorithm.

use serde::{Deserialize, Serialize};

use super::error::{out_of_range, Invalid};

/// The resolved `[model]` section.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ModelSpec {
    /// A ReLU MLP `input -> hidden... -> output`.
    Mlp { hidden: Vec<u32> },
    /// Four blocks of [3x3 conv, batch norm, ReLU, 2x2 max-pool] with `filters` channels each,
    /// then a linear head (none for prototypical networks).
    Conv4 { filters: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ModelKind {
    Mlp,
    Conv4,
}

/// `[model]` as written: every kind's fields; `kind` defaults to `mlp`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    kind: Option<ModelKind>,
    hidden: Option<Vec<u32>>,
    filters: Option<u32>,
}

/// Refuses a field that the model kind has no use for.
fn unused<T>(field: &Option<T>, path: &str, kind: &str, fields: &str) -> Result<(), Invalid> {
    match field {
        Some(_) => Err((
            path.to_string(),
            format!("not a field of kind \"{kind}\"; its fields are kind, {fields}"),
        )),
        None => Ok(()),
    }
}

impl ModelSpec {
    pub(super) fn resolve(raw: &RawModel) -> Result<ModelSpec, Invalid> {
        match raw.kind.unwrap_or(ModelKind::Mlp) {
            ModelKind::Mlp => {
                unused(&raw.filters, "model.filters", "mlp", "hidden")?;
                let Some(hidden) = raw.hidden.clone() else {
                    return Err((
                        "model.hidden".into(),
                        "required by kind \"mlp\": the hidden layer widths, e.g. [40, 40]".into(),
                    ));
                };
                if hidden.is_empty() {
                    return Err(out_of_range(
                        "model.hidden",
                        &hidden,
                        "must list at least one hidden layer width, e.g. [40, 40]",
                    ));
                }
                if let Some(w) = hidden.iter().find(|&&w| w == 0 || w > 65_536) {
                    return Err(out_of_range(
                        "model.hidden",
                        w,
                        "each width must be between 1 and 65536",
                    ));
                }
                Ok(ModelSpec::Mlp { hidden })
            }
            ModelKind::Conv4 => {
                unused(&raw.hidden, "model.hidden", "conv4", "filters")?;
                let filters = raw.filters.unwrap_or(64);
                if !(1..=4096).contains(&filters) {
                    return Err(out_of_range(
                        "model.filters",
                        filters,
                        "must be between 1 and 4096",
                    ));
                }
                Ok(ModelSpec::Conv4 { filters })
            }
        }
    }

    /// The field that sizes this model, blamed when it is too large.
    pub fn size_field(&self) -> &'static str {
        match self {
            ModelSpec::Mlp { .. } => "model.hidden",
            ModelSpec::Conv4 { .. } => "model.filters",
        }
    }
}
