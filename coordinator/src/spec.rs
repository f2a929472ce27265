//! Experiment specs: the TOML schema, `--set` overrides, validation, and errors that point at the line.

use serde::{Deserialize, Serialize};

/// A fully resolved experiment spec: every field has a value and has been validated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub name: String,
    pub seed: u64,
    pub task: TaskSpec,
    pub model: ModelSpec,
    pub meta: MetaSpec,
    pub eval: EvalSpec,
}

/// `[task]`: which task family to sample and its shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub family: Family,
    pub shots: u32,
    pub queries: u32,
    #[serde(default = "default_amplitude")]
    pub amplitude: [f32; 2],
    #[serde(default = "default_phase")]
    pub phase: [f32; 2],
    #[serde(default = "default_x")]
    pub x: [f32; 2],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Sinusoid,
}

/// `[model]`: a ReLU MLP `1 -> hidden... -> 1` for the sinusoid family.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub hidden: Vec<u32>,
}

/// `[meta]`: the outer loop and the inner loop it differentiates through.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaSpec {
    pub algorithm: Algorithm,
    pub steps: u64,
    pub meta_batch: u32,
    pub inner_steps: u32,
    pub inner_lr: f32,
    pub optimizer: OptimizerKind,
    pub meta_lr: f32,
    /// SGD momentum (ignored by Adam).
    #[serde(default)]
    pub momentum: f32,
    #[serde(default = "default_betas")]
    pub betas: [f32; 2],
    #[serde(default = "default_eps")]
    pub eps: f32,
    /// Tasks per work chunk. Fixed by the spec, never by the number of workers,
    /// so that the aggregation order (and so the result) does not depend on them.
    #[serde(default = "default_chunk_tasks")]
    pub chunk_tasks: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Maml,
    Fomaml,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adam,
}

/// `[eval]`: held-out evaluation during and after meta-training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSpec {
    pub every: u64,
    pub tasks: u32,
    pub final_tasks: u32,
    /// Inner steps at evaluation; defaults to `meta.inner_steps`.
    #[serde(default)]
    pub inner_steps: Option<u32>,
    #[serde(default = "default_eval_chunk_tasks")]
    pub chunk_tasks: u32,
}

fn default_amplitude() -> [f32; 2] {
    [0.1, 5.0]
}
fn default_phase() -> [f32; 2] {
    [0.0, std::f32::consts::PI]
}
fn default_x() -> [f32; 2] {
    [-5.0, 5.0]
}
fn default_betas() -> [f32; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f32 {
    1e-8
}
fn default_chunk_tasks() -> u32 {
    25
}
fn default_eval_chunk_tasks() -> u32 {
    250
}

/// Most points per task (support or query).
const MAX_POINTS: u32 = 100_000;
/// Most model parameters: the parameters travel whole in one message.
const MAX_PARAMS: u64 = 64 << 20;
/// Most tasks in one meta-batch or one evaluation.
const MAX_TASKS: u32 = 10_000_000;

/// A spec that was refused, with where and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{source_name}{}: {message}{}", location.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default(), excerpt.as_deref().unwrap_or_default())]
pub struct SpecError {
    pub source_name: String,
    /// 1-based line and column in the spec file, when the error has one.
    pub location: Option<(usize, usize)>,
    pub message: String,
    /// The offending line with a caret under the column, when there is one.
    pub excerpt: Option<String>,
}

/// `\n  9 | shots = = 10\n    |         ^`
fn excerpt(text: &str, (line, col): (usize, usize)) -> Option<String> {
    let source = text.lines().nth(line - 1)?;
    let gutter = line.to_string().len();
    Some(format!(
        "\n {line} | {source}\n {:gutter$} | {:>col$}",
        "", "^"
    ))
}

impl Spec {
    /// Parses `text` (named `source_name` in errors), applies `overrides` (`key.path=value`) in
    /// order and validates the result.
    pub fn parse(text: &str, source_name: &str, overrides: &[String]) -> Result<Spec, SpecError> {
        let err = |location: Option<(usize, usize)>, message: String| SpecError {
            source_name: source_name.to_string(),
            location,
            message,
            excerpt: location.and_then(|at| excerpt(text, at)),
        };
        let located = |e: toml::de::Error| {
            err(
                e.span().map(|span| line_col(text, span.start)),
                e.message().trim().to_string(),
            )
        };
        // The file alone must be well-formed (syntax, unknown fields, types) before overrides
        // are applied, so that an error is blamed on the file or on the `--set` that caused it.
        toml::from_str::<Spec>(text).map_err(located)?;
        let mut doc: toml::Table = toml::from_str(text).map_err(located)?;
        for assignment in overrides {
            apply_override(&mut doc, assignment)
                .map_err(|message| err(None, format!("--set {assignment}: {message}")))?;
            Spec::from_table(&doc)
                .map_err(|e| err(None, format!("--set {assignment}: {}", e.message().trim())))?;
        }
        let mut spec = Spec::from_table(&doc).expect("checked above");
        spec.validate().map_err(|(path, message)| {
            let set_by = overrides
                .iter()
                .rev()
                .find(|o| o.split_once('=').map(|(k, _)| k.trim()) == Some(path.as_str()));
            match set_by {
                Some(assignment) => err(None, format!("--set {assignment}: {message}")),
                None => err(locate_key(text, &path), format!("{path}: {message}")),
            }
        })?;
        // Resolve defaults that depend on other fields, so the stored spec says what ran.
        spec.eval.inner_steps = Some(spec.eval_inner_steps());
        Ok(spec)
    }

    fn from_table(doc: &toml::Table) -> Result<Spec, toml::de::Error> {
        toml::Value::Table(doc.clone()).try_into()
    }

    /// The spec as resolved (defaults filled in), as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a spec always serializes")
    }

    /// Inner steps used at evaluation.
    pub fn eval_inner_steps(&self) -> u32 {
        self.eval.inner_steps.unwrap_or(self.meta.inner_steps)
    }

    /// Checks every range; the error names the field path, what was given and what is allowed.
    fn validate(&self) -> Result<(), (String, String)> {
        fn fail<T: std::fmt::Debug>(
            path: &str,
            given: T,
            allowed: &str,
        ) -> Result<(), (String, String)> {
            Err((
                path.to_string(),
                format!("{given:?} is out of range: {allowed}"),
            ))
        }
        fn range(path: &str, r: [f32; 2]) -> Result<(), (String, String)> {
            if !(r[0].is_finite() && r[1].is_finite() && r[0] <= r[1]) {
                return fail(path, r, "expected [low, high] with finite low <= high");
            }
            Ok(())
        }
        let t = &self.task;
        let m = &self.meta;
        let e = &self.eval;
        if self.name.trim().is_empty() {
            return fail("name", &self.name, "must not be empty");
        }
        if t.shots == 0 {
            return fail("task.shots", t.shots, "must be at least 1");
        }
        if t.queries == 0 {
            return fail("task.queries", t.queries, "must be at least 1");
        }
        // Upper bounds catch typos that would otherwise make the coordinator or a worker
        // allocate for billions of tasks or points.
        if t.shots > MAX_POINTS || t.queries > MAX_POINTS {
            let (path, given) = if t.shots > MAX_POINTS {
                ("task.shots", t.shots)
            } else {
                ("task.queries", t.queries)
            };
            return fail(path, given, &format!("must be at most {MAX_POINTS}"));
        }
        range("task.amplitude", t.amplitude)?;
        range("task.phase", t.phase)?;
        range("task.x", t.x)?;
        if self.model.hidden.is_empty() {
            return fail(
                "model.hidden",
                &self.model.hidden,
                "must list at least one hidden layer width, e.g. [40, 40]",
            );
        }
        if let Some(w) = self.model.hidden.iter().find(|&&w| w == 0 || w > 65_536) {
            return fail("model.hidden", w, "each width must be between 1 and 65536");
        }
        let widths: Vec<u64> = std::iter::once(1)
            .chain(self.model.hidden.iter().map(|&w| w as u64))
            .chain([1])
            .collect();
        let params: u64 = widths.windows(2).map(|p| (p[0] + 1) * p[1]).sum();
        if params > MAX_PARAMS {
            let allowed = format!("the network would have {params} parameters; at most {MAX_PARAMS} (256 MiB of f32) are supported");
            return fail("model.hidden", &self.model.hidden, &allowed);
        }
        if m.steps == 0 {
            return fail("meta.steps", m.steps, "must be at least 1");
        }
        if m.meta_batch == 0 {
            return fail("meta.meta_batch", m.meta_batch, "must be at least 1");
        }
        if m.meta_batch > MAX_TASKS {
            return fail(
                "meta.meta_batch",
                m.meta_batch,
                &format!("must be at most {MAX_TASKS}"),
            );
        }
        if m.inner_steps == 0 || m.inner_steps > 1000 {
            return fail(
                "meta.inner_steps",
                m.inner_steps,
                "must be between 1 and 1000",
            );
        }
        if !(m.inner_lr.is_finite() && m.inner_lr > 0.0) {
            return fail("meta.inner_lr", m.inner_lr, "must be a finite number > 0");
        }
        if !(m.meta_lr.is_finite() && m.meta_lr > 0.0) {
            return fail("meta.meta_lr", m.meta_lr, "must be a finite number > 0");
        }
        if !(0.0..1.0).contains(&m.momentum) {
            return fail("meta.momentum", m.momentum, "must be in [0, 1)");
        }
        if !m.betas.iter().all(|b| (0.0..1.0).contains(b)) {
            return fail("meta.betas", m.betas, "both must be in [0, 1)");
        }
        if !(m.eps.is_finite() && m.eps > 0.0) {
            return fail("meta.eps", m.eps, "must be a finite number > 0");
        }
        if m.chunk_tasks == 0 {
            return fail("meta.chunk_tasks", m.chunk_tasks, "must be at least 1");
        }
        if e.every == 0 {
            return fail("eval.every", e.every, "must be at least 1");
        }
        if e.tasks == 0 {
            return fail("eval.tasks", e.tasks, "must be at least 1");
        }
        if e.final_tasks == 0 {
            return fail("eval.final_tasks", e.final_tasks, "must be at least 1");
        }
        if let Some((path, given)) = [("eval.tasks", e.tasks), ("eval.final_tasks", e.final_tasks)]
            .into_iter()
            .find(|&(_, n)| n > MAX_TASKS)
        {
            return fail(path, given, &format!("must be at most {MAX_TASKS}"));
        }
        if let Some(s) = e.inner_steps {
            if s == 0 || s > 1000 {
                return fail("eval.inner_steps", s, "must be between 1 and 1000");
            }
        }
        if e.chunk_tasks == 0 {
            return fail("eval.chunk_tasks", e.chunk_tasks, "must be at least 1");
        }
        Ok(())
    }
}

/// Applies one `key.path=value` assignment. The value is read as a TOML value
/// (`3`, `0.5`, `"adam"`, `[40, 40]`); a bare word that is not one is taken as a string.
fn apply_override(doc: &mut toml::Table, assignment: &str) -> Result<(), String> {
    let (path, raw) = assignment
        .split_once('=')
        .ok_or_else(|| "expected key.path=value".to_string())?;
    let path = path.trim();
    let raw = raw.trim();
    let value = parse_value(raw);
    let keys: Vec<&str> = path.split('.').collect();
    if keys.iter().any(|k| k.is_empty()) {
        return Err(format!("`{path}` is not a field path like meta.steps"));
    }
    let (last, parents) = keys.split_last().expect("split yields at least one key");
    let mut table = doc;
    for (depth, key) in parents.iter().enumerate() {
        let entry = table
            .entry(key.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{}` is a value, not a table", keys[..=depth].join(".")))?;
    }
    table.insert(last.to_string(), value);
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Finds where `path` (`meta.meta_batch`) is assigned in a conventionally written spec:
/// `[meta]` followed by `meta_batch = ...`, or a top-level key. Best effort: a spec written
/// with dotted keys or inline tables just gets no line number.
fn locate_key(text: &str, path: &str) -> Option<(usize, usize)> {
    let (table, key) = match path.rsplit_once('.') {
        Some((table, key)) => (table, key),
        None => ("", path),
    };
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(header) = trimmed.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            current = header.trim().to_string();
            continue;
        }
        let Some((k, _)) = trimmed.split_once('=') else {
            continue;
        };
        if current == table && k.trim() == key {
            let col = line.len() - line.trim_start().len() + 1;
            return Some((i + 1, col));
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

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

    #[test]
    fn a_valid_spec_fills_in_defaults() {
        let spec = parse(SPEC, &[]).unwrap();
        assert_eq!(spec.meta.chunk_tasks, 25);
        assert_eq!(spec.task.amplitude, [0.1, 5.0]);
        assert_eq!(
            spec.eval.inner_steps,
            Some(1),
            "resolved from meta.inner_steps"
        );
        assert_eq!(spec.meta.optimizer, OptimizerKind::Adam);
    }

    #[test]
    fn resolved_spec_round_trips() {
        let spec = parse(SPEC, &[]).unwrap();
        assert_eq!(parse(&spec.to_toml(), &[]).unwrap(), spec);
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
        let e = parse(&SPEC.replace("\"maml\"", "\"reptile\""), &[]).unwrap_err();
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
        assert_eq!(spec.model.hidden, vec![8]);

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
}
