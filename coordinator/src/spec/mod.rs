//! Experiment specs: the TOML schema (one module per section), `--set` overrides, validation, and errors that point at the line.

mod checkpoint;
mod document;
mod error;
mod eval;
mod experiment;
mod meta;
mod model;
mod mtl;
mod name;
mod overrides;
mod scheduling;
mod task;

use outerloop_proto::dataset::Manifest;
use outerloop_proto::model::{Conv4, Mlp, Model, ParamLayout};
use outerloop_proto::work::{self, Setup};
use serde::{Deserialize, Serialize};

pub use checkpoint::CheckpointSpec;
pub use error::{Invalid, SpecError};
pub use eval::EvalSpec;
pub use experiment::ExperimentSpec;
pub use meta::{Algorithm, LrSchedule, MetaSpec, OptimizerKind};
pub use model::ModelSpec;
pub use mtl::{MtlDataSpec, MtlEvalSpec, MtlSpec, SharedSpec, TrainSpec};
pub use scheduling::SchedulingSpec;
pub use task::{ImagesSpec, SinusoidSpec, TaskSpec};

use error::out_of_range;

/// Most model parameters: the parameters travel whole in one message.
const MAX_PARAMS: u64 = 64 << 20;
/// Most input values (pixels) in one work chunk: 1 GiB of f32, so that a valid spec cannot
/// make a worker run out of memory materialising a chunk.
const MAX_CHUNK_VALUES: u64 = 1 << 28;

/// The shape of the episodes of one split: N-way, K-shot, Q queries per class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpisodeShape {
    pub ways: u32,
    pub shots: u32,
    pub queries: u32,
}

/// A fully resolved experiment spec: every field has a value and has been validated.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Spec {
    pub name: String,
    pub seed: u64,
    pub kind: ExperimentKind,
    pub task: TaskSpec,
    pub model: ModelSpec,
    pub meta: MetaSpec,
    pub eval: EvalSpec,
    #[serde(skip_serializing_if = "CheckpointSpec::is_default")]
    pub checkpoint: CheckpointSpec,
    #[serde(skip_serializing_if = "SchedulingSpec::is_default")]
    pub scheduling: SchedulingSpec,
}

/// What an experiment trains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExperimentKind {
    /// Meta-learning: an outer loop over meta-batches of tasks, each adapted in an inner loop.
    #[default]
    Meta,
    /// Multi-task learning: shared layers and one head per task, trained on every task's
    /// loss at once through a weighting method.
    Mtl,
}

/// The spec as written; sections with variants are resolved by their own modules.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: String,
    seed: u64,
    kind: Option<ExperimentKind>,
    task: task::RawTask,
    model: model::RawModel,
    meta: MetaSpec,
    eval: EvalSpec,
    #[serde(default)]
    checkpoint: CheckpointSpec,
    #[serde(default)]
    scheduling: SchedulingSpec,
}

impl ExperimentKind {
    /// The name a spec gives the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            ExperimentKind::Meta => "meta",
            ExperimentKind::Mtl => "mtl",
        }
    }
}

impl Spec {
    /// Parses `text` (named `source_name` in errors), applies `overrides` (`key.path=value`) in
    /// order and validates the result.
    pub fn parse(text: &str, source_name: &str, overrides: &[String]) -> Result<Spec, SpecError> {
        document::parse(text, source_name, overrides, Spec::resolve)
    }

    fn resolve(raw: RawSpec) -> Result<Spec, Invalid> {
        name::check_name(&raw.name)?;
        let mut spec = Spec {
            name: raw.name,
            seed: raw.seed,
            kind: raw.kind.unwrap_or(ExperimentKind::Meta),
            task: TaskSpec::resolve(&raw.task)?,
            model: ModelSpec::resolve(&raw.model)?,
            meta: raw.meta,
            eval: raw.eval,
            checkpoint: raw.checkpoint,
            scheduling: raw.scheduling,
        };
        spec.meta.validate()?;
        spec.checkpoint.validate()?;
        spec.scheduling.validate()?;
        spec.meta.resolve()?;
        spec.eval.validate()?;
        spec.resolve_across_sections()?;
        let params = spec.layout().param_count() as u64;
        if params > MAX_PARAMS {
            let allowed = format!("the network would have {params} parameters; at most {MAX_PARAMS} (256 MiB of f32) are supported");
            return Err((
                spec.model.size_field().to_string(),
                format!("is too large: {allowed}"),
            ));
        }
        Ok(spec)
    }

    /// Checks and defaults that involve more than one section.
    fn resolve_across_sections(&mut self) -> Result<(), Invalid> {
        let algorithm = self.meta.algorithm;
        if let (ModelSpec::Mlp { hidden }, true) = (&self.model, algorithm == Algorithm::ProtoNet) {
            if hidden.len() < 2 {
                return Err(out_of_range(
                    "model.hidden",
                    hidden,
                    "protonet embeds with the MLP itself (its last width is the embedding): list at least two widths",
                ));
            }
        }
        let eval_chunk = match &self.task {
            TaskSpec::Sinusoid(_) => 250,
            TaskSpec::Images(_) => self.meta.chunk_tasks,
        };
        let eval_chunk = *self.eval.chunk_tasks.get_or_insert(eval_chunk);
        match &self.task {
            TaskSpec::Sinusoid(_) => {
                if let ModelSpec::Conv4 { .. } = self.model {
                    return Err((
                        "model.kind".into(),
                        "\"conv4\" takes images; family \"sinusoid\" needs kind = \"mlp\"".into(),
                    ));
                }
                if algorithm == Algorithm::ProtoNet {
                    return Err((
                        "meta.algorithm".into(),
                        "\"protonet\" classifies; family \"sinusoid\" is regression (use maml, fomaml, metasgd, anil or reptile)".into(),
                    ));
                }
                for (path, given) in [
                    ("eval.ways", self.eval.ways),
                    ("eval.shots", self.eval.shots),
                    ("eval.queries", self.eval.queries),
                ] {
                    if given.is_some() {
                        return Err((path.into(), "only used by family \"images\"".into()));
                    }
                }
            }
            TaskSpec::Images(images) => {
                if let ModelSpec::Conv4 { .. } = self.model {
                    if Conv4::final_size(images.image_size as usize) == 0 {
                        return Err(out_of_range(
                            "task.image_size",
                            images.image_size,
                            "conv4's four 2x2 max-pools need images of at least 16x16",
                        ));
                    }
                }
                let eval = EpisodeShape {
                    ways: self.eval.ways.unwrap_or(images.ways),
                    shots: self.eval.shots.unwrap_or(images.shots),
                    queries: self.eval.queries.unwrap_or(images.queries),
                };
                if algorithm != Algorithm::ProtoNet && eval.ways != images.ways {
                    return Err(out_of_range(
                        "eval.ways",
                        eval.ways,
                        &format!("{algorithm:?} adapts a head of task.ways = {} outputs; evaluation must use as many ways (only protonet can change them)", images.ways),
                    ));
                }
                for (path, n) in [
                    ("eval.ways", eval.ways),
                    ("eval.shots", eval.shots),
                    ("eval.queries", eval.queries),
                ] {
                    if !(1..=1000).contains(&n) || (path == "eval.ways" && n < 2) {
                        return Err(out_of_range(
                            path,
                            n,
                            "must be between 1 (2 for ways) and 1000",
                        ));
                    }
                }
                (self.eval.ways, self.eval.shots, self.eval.queries) =
                    (Some(eval.ways), Some(eval.shots), Some(eval.queries));
                let pixels = (images.channels * images.image_size * images.image_size) as u64;
                for (path, tasks, shape) in [
                    (
                        "meta.chunk_tasks",
                        self.meta.chunk_tasks,
                        self.episode_shape(false),
                    ),
                    ("eval.chunk_tasks", eval_chunk, eval),
                ] {
                    let images_per_chunk =
                        tasks as u64 * shape.ways as u64 * (shape.shots + shape.queries) as u64;
                    if images_per_chunk * pixels > MAX_CHUNK_VALUES {
                        return Err(out_of_range(
                            path,
                            tasks,
                            &format!("a chunk of {tasks} episodes would hold {images_per_chunk} images of {pixels} values, over the limit of {MAX_CHUNK_VALUES} values (1 GiB); use smaller chunks"),
                        ));
                    }
                }
            }
        }
        // Resolve defaults that depend on other fields, so the stored spec says what ran.
        if algorithm.has_inner_loop() {
            self.eval.inner_steps = Some(self.eval_inner_steps());
        } else {
            self.eval.inner_steps = None;
        }
        Ok(())
    }

    /// The episodes of meta-training (`eval == false`) or of evaluation; the sinusoid family
    /// has none.
    pub fn episode_shape(&self, eval: bool) -> EpisodeShape {
        let images = self.task.images();
        let (ways, shots, queries) = images.map_or((0, 0, 0), |i| (i.ways, i.shots, i.queries));
        if eval {
            EpisodeShape {
                ways: self.eval.ways.unwrap_or(ways),
                shots: self.eval.shots.unwrap_or(shots),
                queries: self.eval.queries.unwrap_or(queries),
            }
        } else {
            EpisodeShape {
                ways,
                shots,
                queries,
            }
        }
    }

    /// Checks the spec against the manifest of the dataset it names (enough classes in each
    /// split for the ways, enough images in every class for the shots and queries) and pins
    /// the dataset's version. The error names the field and the limit.
    pub fn check_dataset(&mut self, manifest: &Manifest) -> Result<(), Invalid> {
        let (train, eval) = (self.episode_shape(false), self.episode_shape(true));
        let TaskSpec::Images(images) = &mut self.task else {
            return Ok(());
        };
        if manifest.layout != images.layout {
            return Err((
                "task.layout".into(),
                format!(
                    "\"{}\" is not the layout of dataset `{}`, which workers hold in the \"{}\" layout",
                    images.layout.as_str(),
                    manifest.name,
                    manifest.layout.as_str()
                ),
            ));
        }
        let splits = crate::sampling::class_splits(manifest, images.rotations);
        for (split, shape, ways_path, shots_path, queries_path) in [
            (
                &splits.train,
                train,
                "task.ways",
                "task.shots",
                "task.queries",
            ),
            (
                &splits.validation,
                eval,
                "eval.ways",
                "eval.shots",
                "eval.queries",
            ),
            (
                &splits.test,
                eval,
                "eval.ways",
                "eval.shots",
                "eval.queries",
            ),
        ] {
            if (split.classes.len() as u64) < shape.ways as u64 {
                return Err(out_of_range(
                    ways_path,
                    shape.ways,
                    &format!(
                        "the {} of dataset `{}` has {} classes{}",
                        split.name,
                        manifest.name,
                        split.classes.len(),
                        split.note
                    ),
                ));
            }
            let per_class = shape.shots + shape.queries;
            if let Some(smallest) = split.classes.iter().map(|c| c.instances).min() {
                if smallest < per_class {
                    let path = if shape.queries > 1 {
                        queries_path
                    } else {
                        shots_path
                    };
                    return Err(out_of_range(
                        path,
                        if path == queries_path { shape.queries } else { shape.shots },
                        &format!(
                            "{} shots + {} queries = {per_class} images per class, but a class of the {} of dataset `{}` has only {smallest}",
                            shape.shots, shape.queries, split.name, manifest.name
                        ),
                    ));
                }
            }
        }
        images.fingerprint = Some(manifest.fingerprint.clone());
        Ok(())
    }

    /// The spec as resolved (defaults filled in), as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a spec always serializes")
    }

    /// Inner steps used at evaluation.
    pub fn eval_inner_steps(&self) -> u32 {
        self.eval.inner_steps.unwrap_or(self.meta.inner_steps())
    }

    /// The network this experiment trains: its input from the task family, its output from
    /// the family and the algorithm (prototypical networks embed; they have no head).
    pub fn model(&self) -> Model {
        let embed = self.meta.algorithm == Algorithm::ProtoNet;
        match (&self.task, &self.model) {
            (TaskSpec::Sinusoid(_), ModelSpec::Mlp { hidden }) => Model::Mlp(Mlp {
                input: 1,
                hidden: hidden.iter().map(|&w| w as usize).collect(),
                output: 1,
            }),
            (TaskSpec::Images(i), ModelSpec::Mlp { hidden }) => {
                let mut hidden: Vec<usize> = hidden.iter().map(|&w| w as usize).collect();
                let output = if embed {
                    hidden.pop().expect("validated: at least two widths")
                } else {
                    i.ways as usize
                };
                Model::Mlp(Mlp {
                    input: (i.channels * i.image_size * i.image_size) as usize,
                    hidden,
                    output,
                })
            }
            (TaskSpec::Images(i), ModelSpec::Conv4 { filters }) => Model::Conv4(Conv4 {
                channels: i.channels as usize,
                image_size: i.image_size as usize,
                filters: *filters as usize,
                output: if embed { 0 } else { i.ways as usize },
            }),
            (TaskSpec::Sinusoid(_), ModelSpec::Conv4 { .. }) => {
                unreachable!("validated: conv4 takes images")
            }
        }
    }

    /// The flat layout of everything the outer loop learns: the model's parameters, then for
    /// Meta-SGD one learned inner learning rate per parameter value.
    pub fn layout(&self) -> ParamLayout {
        let model = self.model().layout();
        match self.meta.algorithm {
            Algorithm::MetaSgd => model.with_inner_lrs(self.meta.inner_lr()),
            _ => model,
        }
    }

    /// What workers need to know to compute this experiment's tasks.
    pub fn setup(&self, experiment_id: &str) -> Setup {
        let family = match &self.task {
            TaskSpec::Sinusoid(s) => work::Family::Sinusoid(work::SinusoidFamily {
                shots: s.shots,
                queries: s.queries,
                x_range: s.x,
            }),
            TaskSpec::Images(i) => work::Family::Images(work::ImageFamily {
                dataset: i.dataset.clone(),
                layout: i.layout,
                fingerprint: i.fingerprint.clone().unwrap_or_default(),
                image_size: i.image_size,
                channels: i.channels,
            }),
        };
        Setup {
            experiment_id: experiment_id.to_string(),
            family,
            model: self.model(),
            algorithm: match self.meta.algorithm {
                Algorithm::Maml => work::Algorithm::Maml,
                Algorithm::Fomaml => work::Algorithm::Fomaml,
                Algorithm::MetaSgd => work::Algorithm::MetaSgd,
                Algorithm::Anil => work::Algorithm::Anil,
                Algorithm::Reptile => work::Algorithm::Reptile,
                Algorithm::ProtoNet => work::Algorithm::ProtoNet,
            },
            inner_lr: self.meta.inner_lr(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use outerloop_proto::dataset::Layout;

    pub(crate) const SPEC: &str = r#"name = "sin"
seed = 7

[task]
family = "sinusoid"
shots = 10
queries = 10

[model]
hidden = [40, 40]

[meta]
algorithm = "maml"
steps = 100
meta_batch = 25
inner_steps = 1
inner_lr = 0.01
optimizer = "adam"
meta_lr = 0.001

[eval]
every = 50
tasks = 100
final_tasks = 200
"#;

    fn parse(text: &str, overrides: &[&str]) -> Result<Spec, SpecError> {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        Spec::parse(text, "spec.toml", &overrides)
    }

    fn sinusoid(spec: &Spec) -> &SinusoidSpec {
        match &spec.task {
            TaskSpec::Sinusoid(s) => s,
            TaskSpec::Images(_) => panic!("not a sinusoid spec"),
        }
    }

    #[test]
    fn a_valid_spec_fills_in_defaults() {
        let spec = parse(SPEC, &[]).unwrap();
        assert_eq!(spec.meta.chunk_tasks, 25);
        assert_eq!(sinusoid(&spec).amplitude, [0.1, 5.0]);
        assert_eq!(
            spec.eval.inner_steps,
            Some(1),
            "resolved from meta.inner_steps"
        );
        assert_eq!(spec.meta.optimizer, OptimizerKind::Adam);
        assert_eq!(spec.kind, ExperimentKind::Meta);
        assert_eq!(
            spec.model,
            ModelSpec::Mlp {
                hidden: vec![40, 40]
            },
            "kind defaults to mlp"
        );
        assert_eq!(spec.layout().param_count(), 1761);
    }

    #[test]
    fn resolved_spec_round_trips() {
        let spec = parse(SPEC, &[]).unwrap();
        let text = spec.to_toml();
        assert!(
            text.contains("family = \"sinusoid\"") && text.contains("kind = \"mlp\""),
            "{text}"
        );
        assert_eq!(parse(&text, &[]).unwrap(), spec);
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let broken = SPEC.replace("shots = 10", "shots = = 10");
        let e = parse(&broken, &[]).unwrap_err();
        assert_eq!(e.location.map(|(l, _)| l), Some(6), "{e}");
        assert!(e.to_string().starts_with("spec.toml:6:9: "), "{e}");
        assert!(
            e.to_string()
                .ends_with("\n 6 | shots = = 10\n   |         ^"),
            "{e}"
        );
    }

    #[test]
    fn unknown_fields_are_refused_with_their_line() {
        let e = parse(&SPEC.replace("steps = 100", "stepz = 100"), &[]).unwrap_err();
        assert!(e.message.contains("unknown field `stepz`"), "{e}");
        assert!(
            e.message.contains("meta_batch"),
            "lists allowed fields: {e}"
        );
        assert_eq!(e.location.map(|(l, _)| l), Some(14), "{e}");

        let e = parse(&SPEC.replace("queries = 10", "queries = 10\nwayz = 5"), &[]).unwrap_err();
        assert!(e.message.contains("unknown field `wayz`"), "{e}");
        assert_eq!(e.location.map(|(l, _)| l), Some(8), "{e}");
    }

    #[test]
    fn out_of_range_values_name_field_given_and_allowed() {
        let e = parse(&SPEC.replace("meta_batch = 25", "meta_batch = 0"), &[]).unwrap_err();
        assert_eq!(e.location, Some((15, 1)), "{e}");
        assert!(e.message.contains("meta.meta_batch"), "{e}");
        assert!(
            e.message.contains("0 is out of range: must be at least 1"),
            "{e}"
        );

        let e = parse(&SPEC.replace("inner_lr = 0.01", "inner_lr = -0.5"), &[]).unwrap_err();
        assert!(e.message.contains("meta.inner_lr: -0.5"), "{e}");

        let e = parse(SPEC, &["meta.meta_batch=20000000"]).unwrap_err();
        assert!(
            e.message
                .ends_with("20000000 is out of range: must be at most 10000000"),
            "{e}"
        );

        let e = parse(SPEC, &["model.hidden=[8192, 8192]"]).unwrap_err();
        assert!(
            e.message.contains("67141633 parameters; at most 67108864"),
            "{e}"
        );

        let e = parse(&SPEC.replace("hidden = [40, 40]", "hidden = []"), &[]).unwrap_err();
        assert!(e.message.contains("model.hidden: []"), "{e}");
        assert_eq!(e.location.map(|(l, _)| l), Some(10), "{e}");
    }

    #[test]
    fn wrong_enum_values_list_the_allowed_ones() {
        let e = parse(&SPEC.replace("\"maml\"", "\"reptilian\""), &[]).unwrap_err();
        assert!(
            e.message.contains("maml") && e.message.contains("fomaml"),
            "{e}"
        );
        assert_eq!(e.location.map(|(l, _)| l), Some(13), "{e}");
    }

    #[test]
    fn overrides_apply_and_are_validated_like_the_file() {
        let spec = parse(
            SPEC,
            &[
                "meta.steps=2000",
                "meta.algorithm=fomaml",
                "model.hidden=[8]",
            ],
        )
        .unwrap();
        assert_eq!(spec.meta.steps, 2000);
        assert_eq!(spec.meta.algorithm, Algorithm::Fomaml);
        assert_eq!(spec.model, ModelSpec::Mlp { hidden: vec![8] });

        let e = parse(SPEC, &["meta.stepz=3"]).unwrap_err();
        assert!(
            e.message
                .starts_with("--set meta.stepz=3: unknown field `stepz`"),
            "{e}"
        );

        let e = parse(SPEC, &["meta.meta_batch=0"]).unwrap_err();
        assert!(e.message.starts_with("--set meta.meta_batch=0:"), "{e}");

        let e = parse(SPEC, &["seed.x=1"]).unwrap_err();
        assert!(e.message.contains("`seed` is a value, not a table"), "{e}");

        let e = parse(SPEC, &["meta.steps"]).unwrap_err();
        assert!(e.message.contains("expected key.path=value"), "{e}");
    }

    #[test]
    fn an_optional_field_can_be_set_without_being_in_the_file() {
        let spec = parse(SPEC, &["meta.chunk_tasks=5", "eval.inner_steps=10"]).unwrap();
        assert_eq!(spec.meta.chunk_tasks, 5);
        assert_eq!(spec.eval_inner_steps(), 10);
    }

    #[test]
    fn the_setup_carries_the_model_the_family_needs() {
        let setup = parse(SPEC, &[]).unwrap().setup("exp-1");
        assert_eq!(setup.experiment_id, "exp-1");
        assert_eq!(setup.model.layout().param_count(), 1761);
        assert_eq!(setup.algorithm, work::Algorithm::Maml);
    }
    pub(crate) const IMAGES: &str = r#"name = "omniglot"
seed = 1

[task]
family = "images"
dataset = "omniglot"
ways = 5
shots = 1
queries = 15

[model]
kind = "conv4"

[meta]
algorithm = "maml"
steps = 10
meta_batch = 4
inner_steps = 1
inner_lr = 0.4
optimizer = "adam"
meta_lr = 0.001

[eval]
every = 5
tasks = 20
final_tasks = 20
"#;

    fn images(spec: &Spec) -> &ImagesSpec {
        spec.task.images().expect("an images spec")
    }

    #[test]
    fn image_specs_take_the_papers_defaults_for_their_layout() {
        let spec = parse(IMAGES, &[]).unwrap();
        let i = images(&spec);
        assert_eq!(
            (i.layout, i.image_size, i.channels, i.rotations),
            (Layout::Omniglot, 28, 1, true)
        );
        assert_eq!(spec.model, ModelSpec::Conv4 { filters: 64 });
        assert_eq!(
            spec.episode_shape(true),
            EpisodeShape {
                ways: 5,
                shots: 1,
                queries: 15
            }
        );
        let Model::Conv4(conv4) = spec.model() else {
            panic!("conv4")
        };
        assert_eq!((conv4.channels, conv4.image_size, conv4.output), (1, 28, 5));

        let mini = parse(IMAGES, &["task.dataset=mini-imagenet", "model.filters=32"]).unwrap();
        let i = images(&mini);
        assert_eq!(
            (i.layout, i.image_size, i.channels, i.rotations),
            (Layout::Folders, 84, 3, false)
        );
        let Model::Conv4(conv4) = mini.model() else {
            panic!("conv4")
        };
        assert_eq!(conv4.features(), 800);
        assert_eq!(
            parse(&mini.to_toml(), &[]).unwrap(),
            mini,
            "the resolved spec round-trips"
        );
    }

    #[test]
    fn image_specs_refuse_what_cannot_work() {
        let e = parse(IMAGES, &["task.image_size=12"]).unwrap_err();
        assert!(
            e.message.contains(
                "12 is out of range: conv4's four 2x2 max-pools need images of at least 16x16"
            ),
            "{e}"
        );
        let e = parse(
            &IMAGES.replace("\"omniglot\"\nways", "\"../../etc\"\nways"),
            &[],
        )
        .unwrap_err();
        assert!(
            e.message
                .starts_with("task.dataset: \"../../etc\" is not a dataset name"),
            "{e}"
        );
        assert_eq!(e.location.map(|(l, _)| l), Some(6), "{e}");
        let e = parse(IMAGES, &["eval.ways=20"]).unwrap_err();
        assert!(
            e.message.contains("evaluation must use as many ways"),
            "{e}"
        );
        let e = parse(IMAGES, &["model.kind=conv5"]).unwrap_err();
        assert!(
            e.message
                .contains("unknown variant `conv5`, expected `mlp` or `conv4`"),
            "{e}"
        );
        let e = parse(IMAGES, &["meta.algorithm=reptil"]).unwrap_err();
        assert!(
            e.message.contains("`reptile`") && e.message.contains("`protonet`"),
            "{e}"
        );
        let e = parse(IMAGES, &["task.family=imagez"]).unwrap_err();
        assert!(e.message.contains("`sinusoid` or `images`"), "{e}");
        let e = parse(IMAGES, &["task.amplitude=[1.0, 2.0]"]).unwrap_err();
        assert!(
            e.message.contains("not a field of family \"images\""),
            "{e}"
        );
        let e = parse(&SPEC.replace("hidden = [40, 40]", "kind = \"conv4\""), &[]).unwrap_err();
        assert!(e.message.contains("conv4\" takes images"), "{e}");
        let e = parse(IMAGES, &["model.hidden=[8]"]).unwrap_err();
        assert!(e.message.contains("not a field of kind \"conv4\""), "{e}");
        let e = parse(IMAGES, &["meta.chunk_tasks=100000"]).unwrap_err();
        assert!(
            e.message.contains("over the limit of 268435456 values"),
            "{e}"
        );
    }

    #[test]
    fn algorithms_resolve_what_they_need() {
        let protonet = parse(IMAGES, &["meta.algorithm=protonet", "eval.ways=20"]).unwrap();
        assert_eq!(
            (
                protonet.meta.inner_steps,
                protonet.meta.inner_lr,
                protonet.eval.inner_steps
            ),
            (None, None, None)
        );
        assert_eq!(
            protonet.episode_shape(true).ways,
            20,
            "protonet may test with other ways"
        );
        let Model::Conv4(conv4) = protonet.model() else {
            panic!("conv4")
        };
        assert_eq!(conv4.output, 0, "an embedding: no head");
        let metasgd = parse(IMAGES, &["meta.algorithm=metasgd"]).unwrap();
        let layout = metasgd.layout();
        assert_eq!(
            layout.param_count(),
            2 * metasgd.model().layout().param_count()
        );
        assert!(layout.slots.last().unwrap().name.starts_with("inner_lr."));
        let e = parse(&IMAGES.replace("inner_lr = 0.4\n", ""), &[]).unwrap_err();
        assert!(
            e.message
                .starts_with("meta.inner_lr: required by algorithm \"maml\""),
            "{e}"
        );
        let e = parse(SPEC, &["meta.algorithm=protonet"]).unwrap_err();
        assert!(e.message.contains("protonet\" classifies"), "{e}");
        let e = parse(IMAGES, &["meta.lr_schedule=step"]).unwrap_err();
        assert!(
            e.message.starts_with("--set meta.lr_schedule=step: ")
                || e.message.contains("meta.lr_decay_every: required"),
            "{e}"
        );
    }

    #[test]
    fn a_dataset_manifest_bounds_ways_shots_and_queries() {
        use crate::sampling::class_splits;
        // 40 characters: 27 / 2 / 11 per split, x 4 rotations; 20 images each.
        let manifest = crate::sampling::tests_support::manifest(Layout::Omniglot, 40, 20);
        let splits = class_splits(&manifest, true);
        assert_eq!(splits.validation.classes.len(), 8);
        let mut spec = parse(IMAGES, &[]).unwrap();
        spec.check_dataset(&manifest).unwrap();
        assert_eq!(images(&spec).fingerprint.as_deref(), Some("00"), "pinned");

        let mut wide = parse(IMAGES, &["task.ways=10"]).unwrap();
        let (path, message) = wide.check_dataset(&manifest).unwrap_err();
        assert_eq!(path, "eval.ways");
        assert!(message.contains("10 is out of range: the meta-validation split of dataset `data` has 8 classes (2 characters x 4 rotations)"), "{message}");

        let mut deep = parse(IMAGES, &["task.queries=19", "task.shots=2"]).unwrap();
        let (path, message) = deep.check_dataset(&manifest).unwrap_err();
        assert_eq!(path, "task.queries");
        assert!(message.contains("2 shots + 19 queries = 21 images per class, but a class of the meta-training split of dataset `data` has only 20"), "{message}");

        let mut folders = parse(IMAGES, &["task.layout=folders"]).unwrap();
        let (path, _) = folders.check_dataset(&manifest).unwrap_err();
        assert_eq!(path, "task.layout");
    }
}
