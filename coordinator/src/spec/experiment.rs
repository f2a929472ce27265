//! Any experiment spec: its `kind` picks the schema the document is read with.

use outerloop_proto::dataset::Manifest;
use serde::Serialize;

use super::mtl::MtlSpec;
use super::{overrides, ExperimentKind, Invalid, Spec, SpecError};

/// The dataset on the workers' disks a spec reads: its name, the version it pins (if any),
/// and the spec fields to blame when either cannot be found.
pub struct DatasetRef {
    pub name: String,
    pub pinned: Option<String>,
    pub name_field: &'static str,
    pub pin_field: &'static str,
}

/// A resolved spec of either experiment kind.
#[derive(Clone, Debug, PartialEq)]
pub enum ExperimentSpec {
    Meta(Spec),
    Mtl(MtlSpec),
}

impl ExperimentSpec {
    /// Parses a spec of either kind; `kind` (default `meta`) decides which, as the file and
    /// the overrides set it. Errors are those of the kind's own parser.
    pub fn parse(text: &str, source_name: &str, overrides: &[String]) -> Result<Self, SpecError> {
        match kind_of(text, overrides) {
            ExperimentKind::Mtl => MtlSpec::parse(text, source_name, overrides).map(Self::Mtl),
            ExperimentKind::Meta => Spec::parse(text, source_name, overrides).map(Self::Meta),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Self::Meta(spec) => &spec.name,
            Self::Mtl(spec) => &spec.name,
        }
    }

    pub fn kind(&self) -> ExperimentKind {
        match self {
            Self::Meta(_) => ExperimentKind::Meta,
            Self::Mtl(_) => ExperimentKind::Mtl,
        }
    }

    /// The experiment's share of the workers against the other running experiments'.
    pub fn weight(&self) -> f64 {
        match self {
            Self::Meta(spec) => spec.scheduling.weight,
            Self::Mtl(spec) => spec.scheduling.weight,
        }
    }

    /// Outer steps the experiment runs.
    pub fn steps(&self) -> u64 {
        match self {
            Self::Meta(spec) => spec.meta.steps,
            Self::Mtl(spec) => spec.train.steps,
        }
    }

    /// Tasks (meta-learning) or rows (multi-task) one outer step trains on.
    pub fn items_per_step(&self) -> u64 {
        match self {
            Self::Meta(spec) => spec.meta.meta_batch as u64,
            Self::Mtl(spec) => spec.train.batch as u64,
        }
    }

    /// The dataset on the workers' disks this spec reads, if any.
    pub fn dataset(&self) -> Option<DatasetRef> {
        match self {
            Self::Meta(spec) => spec.task.images().map(|images| DatasetRef {
                name: images.dataset.clone(),
                pinned: images.fingerprint.clone(),
                name_field: "task.dataset",
                pin_field: "task.fingerprint",
            }),
            Self::Mtl(spec) => spec.table().map(|table| DatasetRef {
                name: table.dataset.clone(),
                pinned: table.fingerprint.clone(),
                name_field: "data.dataset",
                pin_field: "data.fingerprint",
            }),
        }
    }

    /// Checks the spec against its dataset's manifest and pins it to that version.
    pub fn check_dataset(&mut self, manifest: &Manifest) -> Result<(), Invalid> {
        match self {
            Self::Meta(spec) => spec.check_dataset(manifest),
            Self::Mtl(spec) => spec.check_dataset(manifest),
        }
    }

    /// The spec as resolved (defaults filled in), as TOML that parses back to it.
    pub fn to_toml(&self) -> String {
        match self {
            Self::Meta(spec) => spec.to_toml(),
            Self::Mtl(spec) => spec.to_toml(),
        }
    }
}

/// The kind a document declares once overrides are applied; a document that does not parse
/// or names no known kind is read as `meta`, whose parser then reports what is wrong.
fn kind_of(text: &str, assignments: &[String]) -> ExperimentKind {
    #[derive(serde::Deserialize)]
    struct Kind {
        kind: Option<ExperimentKind>,
    }
    let Ok(mut doc) = toml::from_str::<toml::Table>(text) else {
        return ExperimentKind::Meta;
    };
    for assignment in assignments {
        let _ = overrides::apply(&mut doc, assignment);
    }
    toml::Value::Table(doc)
        .try_into::<Kind>()
        .ok()
        .and_then(|k| k.kind)
        .unwrap_or(ExperimentKind::Meta)
}

impl Serialize for ExperimentSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Meta(spec) => spec.serialize(serializer),
            Self::Mtl(spec) => spec.serialize(serializer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::mtl::tests::MTL_SPEC;
    use crate::spec::tests::SPEC;

    #[test]
    fn the_kind_picks_the_schema() {
        let meta = ExperimentSpec::parse(SPEC, "a.toml", &[]).unwrap();
        assert!(matches!(meta, ExperimentSpec::Meta(_)));
        assert_eq!(
            (meta.name(), meta.steps(), meta.items_per_step()),
            ("sin", 100, 25)
        );
        let mtl = ExperimentSpec::parse(MTL_SPEC, "b.toml", &[]).unwrap();
        assert!(matches!(mtl, ExperimentSpec::Mtl(_)));
        assert_eq!((mtl.steps(), mtl.items_per_step()), (20, 32));
        for spec in [meta, mtl] {
            assert_eq!(
                ExperimentSpec::parse(&spec.to_toml(), "stored", &[]),
                Ok(spec)
            );
        }
    }

    #[test]
    fn a_meta_document_made_mtl_by_an_override_is_read_as_mtl() {
        let error = ExperimentSpec::parse(SPEC, "a.toml", &["kind=\"mtl\"".into()]).unwrap_err();
        // The meta-learning sections are unknown to the multi-task schema.
        assert!(error.to_string().contains("unknown field"), "{error}");
        let unknown = ExperimentSpec::parse(SPEC, "a.toml", &["kind=\"rl\"".into()]).unwrap_err();
        assert!(
            unknown.to_string().contains("expected `meta` or `mtl`"),
            "{unknown}"
        );
    }
}
