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
        match kind_of(text, source_name, overrides)? {
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

    /// What the submitter should know about how the spec reads its data, though nothing in
    /// it is wrong (a multi-task table with fewer rows than the spec asks for).
    pub fn notes(&self, manifest: Option<&Manifest>) -> Vec<String> {
        match self {
            Self::Meta(_) => Vec::new(),
            Self::Mtl(spec) => spec.notes(manifest),
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

/// The kind the spec names, as the file and the overrides set it (`meta` where neither does).
/// A kind that is neither is refused here, naming the field: read as the default, its spec
/// would be blamed for the sections of the kind it meant (`unknown field data`).
fn kind_of(
    text: &str,
    source_name: &str,
    assignments: &[String],
) -> Result<ExperimentKind, SpecError> {
    // A file that does not parse is reported by the kind's own parser, with its line.
    let Ok(mut doc) = toml::from_str::<toml::Table>(text) else {
        return Ok(ExperimentKind::Meta);
    };
    for assignment in assignments {
        let _ = overrides::apply(&mut doc, assignment);
    }
    match doc.get("kind") {
        None => Ok(ExperimentKind::Meta),
        Some(toml::Value::String(kind)) if kind == "meta" => Ok(ExperimentKind::Meta),
        Some(toml::Value::String(kind)) if kind == "mtl" => Ok(ExperimentKind::Mtl),
        Some(other) => Err(SpecError::blame(
            text,
            source_name,
            assignments,
            (
                "kind".into(),
                format!(
                    "{other} is not a kind of experiment: give \"meta\" (meta-learning, the \
                     default) or \"mtl\" (multi-task learning)"
                ),
            ),
        )),
    }
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
            unknown.to_string().contains("--set kind=\"rl\"")
                && unknown.to_string().contains(
                    "\"rl\" is not a kind of experiment: give \"meta\" (meta-learning, the default) or \"mtl\""
                ),
            "{unknown}"
        );
    }

    #[test]
    fn a_misspelt_kind_is_blamed_rather_than_the_sections_it_meant() {
        // Read as the default kind, this spec's `[data]` would be the error.
        let text = MTL_SPEC.replace("kind = \"mtl\"", "kind = \"MTL\"");
        assert_ne!(text, MTL_SPEC);
        let error = ExperimentSpec::parse(&text, "b.toml", &[])
            .unwrap_err()
            .to_string();
        let line = text.lines().position(|l| l.starts_with("kind")).unwrap() + 1;
        assert!(error.starts_with(&format!("b.toml:{line}:")), "{error}");
        assert!(
            error.contains("\"MTL\" is not a kind of experiment"),
            "{error}"
        );
        assert!(!error.contains("unknown field"), "{error}");
    }
}
