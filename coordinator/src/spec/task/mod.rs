//! `[task]`: which task family to sample and the shape of its tasks; one module per family.

mod images;
mod sinusoid;

use outerloop_proto::dataset::Layout;
use serde::{Deserialize, Serialize};

pub(crate) use images::is_plain_name;
pub use images::ImagesSpec;
pub use sinusoid::SinusoidSpec;

use super::error::Invalid;

/// The resolved `[task]` section: one variant per family, every field filled in.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "family", rename_all = "lowercase")]
pub enum TaskSpec {
    Sinusoid(SinusoidSpec),
    Images(ImagesSpec),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FamilyName {
    Sinusoid,
    Images,
}

/// `[task]` as written. It holds every family's fields so that a mistyped value or an unknown
/// field is reported at its exact line; each family then takes its own and refuses the others.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTask {
    family: FamilyName,
    shots: u32,
    queries: u32,
    amplitude: Option<[f32; 2]>,
    phase: Option<[f32; 2]>,
    x: Option<[f32; 2]>,
    dataset: Option<String>,
    layout: Option<Layout>,
    ways: Option<u32>,
    image_size: Option<u32>,
    channels: Option<u32>,
    rotations: Option<bool>,
    fingerprint: Option<String>,
}

impl RawTask {
    /// The optional fields present in the section.
    fn given(&self) -> Vec<&'static str> {
        [
            ("amplitude", self.amplitude.is_some()),
            ("phase", self.phase.is_some()),
            ("x", self.x.is_some()),
            ("dataset", self.dataset.is_some()),
            ("layout", self.layout.is_some()),
            ("ways", self.ways.is_some()),
            ("image_size", self.image_size.is_some()),
            ("channels", self.channels.is_some()),
            ("rotations", self.rotations.is_some()),
            ("fingerprint", self.fingerprint.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, present)| present.then_some(name))
        .collect()
    }

    /// Refuses fields that `family` has no use for, naming the ones it has.
    fn only(&self, family: &str, fields: &[&str]) -> Result<(), Invalid> {
        match self.given().into_iter().find(|f| !fields.contains(f)) {
            Some(field) => Err((
                format!("task.{field}"),
                format!(
                    "not a field of family \"{family}\"; its fields are family, shots, queries, {}",
                    fields.join(", ")
                ),
            )),
            None => Ok(()),
        }
    }
}

impl TaskSpec {
    pub(super) fn resolve(raw: &RawTask) -> Result<TaskSpec, Invalid> {
        match raw.family {
            FamilyName::Sinusoid => SinusoidSpec::resolve(raw).map(TaskSpec::Sinusoid),
            FamilyName::Images => ImagesSpec::resolve(raw).map(TaskSpec::Images),
        }
    }

    /// The images family's settings, if that is the family.
    pub fn images(&self) -> Option<&ImagesSpec> {
        match self {
            TaskSpec::Images(images) => Some(images),
            TaskSpec::Sinusoid(_) => None,
        }
    }
}
