//! `family = "table"`: multi-task data from CSV or Parquet files that every worker reads from its own disk; the coordinator plans from the table's manifest alone.

use outerloop_proto::dataset::{ColumnEntry, Layout, Manifest, TableManifest, MAX_LEVELS};
use outerloop_proto::mtl::{TableData, TableSplit, TaskLoss};
use outerloop_proto::table::{column_counts, column_names, fraction_counts};
use serde::{Deserialize, Serialize};

use super::MAX_MTL_TASKS;
use crate::spec::error::{out_of_range, Invalid};
use crate::spec::task::is_plain_name;

/// `[data]` of a table: which dataset, its feature columns, its split, and the tasks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// The directory under each worker's `--data-root`; never a path.
    pub dataset: String,
    /// The input columns, in order; when absent, every column that is neither a target nor
    /// the split column (filled in at submission, so the stored spec lists them). An entry
    /// ending in `*` stands for every such column whose name starts with what precedes it, in
    /// the file's order (`"p*"`: the pixel columns `p0`, `p1`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
    /// Instead of features: a text column naming each row's image, a path relative to the
    /// dataset's directory, which is the row's input, decoded to `[model]` conv4's channels
    /// and image size (pixels / 255).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_column: Option<String>,
    /// A column whose values are `train`, `val` and `test`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_column: Option<String>,
    /// Otherwise rows are drawn into (train, val, test) in these proportions by the seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fractions: Option<[f64; 3]>,
    /// Numeric features are standardised with the training rows' mean and deviation.
    #[serde(default = "standardize_by_default")]
    pub standardize: bool,
    /// The version of the table the experiment uses, pinned at submission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    pub tasks: Vec<TableTaskSpec>,
}

fn standardize_by_default() -> bool {
    true
}

/// The split when a spec names neither a column nor fractions.
const DEFAULT_FRACTIONS: [f64; 3] = [0.8, 0.1, 0.1];

/// `[[data.tasks]]`: one task, its target columns, its loss, and its head's width.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableTaskSpec {
    /// Defaults to the target column's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub loss: LossSpec,
    /// The target column (`target`), or several (`targets`: MSE over several outputs, or
    /// one 0/1 label per column for binary cross-entropy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<String>>,
    /// The head's outputs; when given, checked against what the loss needs on this data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<u32>,
}

/// A task's loss, as a spec names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossSpec {
    /// Regression: mean squared error over the target columns; metric MSE.
    Mse,
    /// Classification: softmax over the target column's classes; metric accuracy.
    CrossEntropy,
    /// Multi-label classification: one 0/1 label per target column; metric label accuracy.
    Bce,
}

impl LossSpec {
    pub fn task_loss(self) -> TaskLoss {
        match self {
            LossSpec::Mse => TaskLoss::Mse,
            LossSpec::CrossEntropy => TaskLoss::CrossEntropy,
            LossSpec::Bce => TaskLoss::BinaryCrossEntropy,
        }
    }
}

impl TableTaskSpec {
    /// The target columns, however the spec wrote them.
    pub fn columns(&self) -> Vec<String> {
        self.targets
            .clone()
            .or_else(|| self.target.clone().map(|t| vec![t]))
            .unwrap_or_default()
    }

    /// The task's name (filled in by [`TableSpec::check`]).
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }
}

impl TableSpec {
    /// Checks what can be checked without the table and fills in the tasks' names.
    pub fn check(&mut self) -> Result<(), Invalid> {
        if !is_plain_name(&self.dataset) {
            return Err((
                "data.dataset".into(),
                format!("{:?} is not a dataset name: it must be a directory name directly under each worker's --data-root (letters, digits, '.', '_' and '-', starting with a letter or digit, no \"..\"); a spec never names a path", self.dataset),
            ));
        }
        if self.tasks.is_empty() || self.tasks.len() > MAX_MTL_TASKS {
            return Err(out_of_range(
                "data.tasks",
                self.tasks.len(),
                &format!("list 1 to {MAX_MTL_TASKS} tasks as [[data.tasks]] tables, each with a loss and its target column(s)"),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, task) in self.tasks.iter_mut().enumerate() {
            let at = |key: &str| format!("data.tasks[{i}].{key}");
            let columns = match (&task.target, &task.targets) {
                (Some(_), Some(_)) => {
                    return Err((at("targets"), "give `target` or `targets`, not both".into()))
                }
                (None, None) => {
                    return Err((
                        at("target"),
                        "is required: the column this task predicts (or `targets`, a list)".into(),
                    ))
                }
                (_, Some(t)) if t.is_empty() => {
                    return Err((
                        at("targets"),
                        "lists no column: a task with no target has no data".into(),
                    ))
                }
                _ => task.columns(),
            };
            if task.loss == LossSpec::CrossEntropy && columns.len() != 1 {
                return Err((
                    at("targets"),
                    format!("cross-entropy predicts the classes of one column, not {}; use `bce` for several 0/1 labels", columns.len()),
                ));
            }
            let name = match (&task.name, columns.as_slice()) {
                (Some(name), _) => name.clone(),
                (None, [only]) => only.clone(),
                (None, _) => {
                    return Err((
                        at("name"),
                        "is required for a task of several target columns".into(),
                    ))
                }
            };
            // A task's name is part of its head's parameter names (`heads.NAME.weight`).
            let plain = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !plain {
                return Err((
                    at("name"),
                    format!("{name:?} is not a task name: letters, digits, '_' and '-', at most 64 (give `name` when the column's name is not one)"),
                ));
            }
            if !names.insert(name.clone()) {
                return Err((at("name"), format!("a second task is named {name:?}")));
            }
            task.name = Some(name);
        }
        match (&self.split_column, self.fractions) {
            (Some(_), Some(_)) => {
                return Err((
                    "data.fractions".into(),
                    "give `split_column` or `fractions`, not both".into(),
                ))
            }
            (_, Some(f)) => {
                let sum: f64 = f.iter().sum();
                if f.iter().any(|v| !(v.is_finite() && *v > 0.0)) || (sum - 1.0).abs() > 1e-6 {
                    return Err(out_of_range(
                        "data.fractions",
                        format!("{f:?}"),
                        "give [train, val, test], each above 0 (evaluations score the val and test rows), summing to 1",
                    ));
                }
            }
            _ => {}
        }
        if let Some(image) = &self.image_column {
            if self.features.is_some() {
                return Err((
                    "data.features".into(),
                    "an image table's input is the image `data.image_column` names; leave `features` out".into(),
                ));
            }
            let targets: Vec<String> = self.tasks.iter().flat_map(|t| t.columns()).collect();
            if targets.contains(image) || self.split_column.as_ref() == Some(image) {
                return Err((
                    "data.image_column".into(),
                    format!("`{image}` is a target or the split column: a model must not read what it predicts"),
                ));
            }
        }
        if let Some(features) = &self.features {
            let targets: Vec<String> = self.tasks.iter().flat_map(|t| t.columns()).collect();
            let mut seen = std::collections::BTreeSet::new();
            if features.is_empty() {
                return Err((
                    "data.features".into(),
                    "lists no column; leave it out to use every column that is not a target".into(),
                ));
            }
            for f in features {
                if !seen.insert(f) {
                    return Err(("data.features".into(), format!("lists `{f}` twice")));
                }
                if targets.contains(f) || self.split_column.as_ref() == Some(f) {
                    return Err((
                        "data.features".into(),
                        format!("`{f}` is a target or the split column: a model must not read what it predicts"),
                    ));
                }
            }
        }
        if let Some(f) = &self.fingerprint {
            if f.is_empty() || !f.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err((
                    "data.fingerprint".into(),
                    "must be a dataset fingerprint in hexadecimal, as `outerloop workers` shows it"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// Checks the spec against the table's manifest and fills in what the table decides: the
    /// fingerprint, the feature columns (when left out) and every head's width.
    pub fn check_manifest(&mut self, manifest: &Manifest) -> Result<(), Invalid> {
        let table = match (&manifest.table, manifest.layout) {
            (Some(table), Layout::Table) => table,
            _ => {
                return Err((
                    "data.dataset".into(),
                    format!(
                        "dataset `{}` is an image dataset ({} layout), not a table of CSV or Parquet files",
                        manifest.name,
                        manifest.layout.as_str()
                    ),
                ))
            }
        };
        let column = |field: &str, name: &str| -> Result<&ColumnEntry, Invalid> {
            let entry = table.column(name).ok_or_else(|| {
                (
                    field.to_string(),
                    format!(
                        "dataset `{}` has no column `{name}`; its columns are {}",
                        manifest.name,
                        column_names(table)
                    ),
                )
            })?;
            if entry.missing > 0 {
                return Err((
                    field.to_string(),
                    format!("column `{name}` of dataset `{}` has {} empty cells; features and targets must be complete (fill or drop those rows first)", manifest.name, entry.missing),
                ));
            }
            Ok(entry)
        };
        for (i, task) in self.tasks.iter_mut().enumerate() {
            let field = format!(
                "data.tasks[{i}].{}",
                if task.targets.is_some() {
                    "targets"
                } else {
                    "target"
                }
            );
            let columns = task.columns();
            let mut needed = 0;
            for name in &columns {
                let entry = column(&field, name)?;
                needed = match task.loss {
                    LossSpec::CrossEntropy => match &entry.levels {
                        Some(levels) if levels.len() >= 2 => levels.len() as u32,
                        Some(_) => {
                            return Err((field, format!("column `{name}` holds a single class; cross-entropy needs at least two")))
                        }
                        None => {
                            return Err((field, format!("column `{name}` has more than {MAX_LEVELS} distinct values: too many classes for cross-entropy (is it a regression target?)")))
                        }
                    },
                    LossSpec::Mse | LossSpec::Bce if !entry.numeric => {
                        return Err((field, format!("column `{name}` holds text; {} needs numbers", loss_name(task.loss))))
                    }
                    LossSpec::Bce => {
                        let binary = entry.levels.as_ref().is_some_and(|levels| {
                            levels.iter().all(|l| l.value == "0" || l.value == "1")
                        });
                        if !binary {
                            return Err((field, format!("column `{name}` holds values other than 0 and 1; binary cross-entropy needs 0/1 labels")));
                        }
                        needed + 1
                    }
                    LossSpec::Mse => needed + 1,
                };
            }
            match task.outputs {
                Some(outputs) if outputs != needed => {
                    return Err((
                        format!("data.tasks[{i}].outputs"),
                        format!(
                        "task `{}`: {} on {} needs a head of {needed} output{}, not {outputs}{}",
                        task.name(),
                        loss_name(task.loss),
                        columns
                            .iter()
                            .map(|c| format!("`{c}`"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        if needed == 1 { "" } else { "s" },
                        if task.loss == LossSpec::CrossEntropy {
                            " (one per class)"
                        } else {
                            " (one per target column)"
                        }
                    ),
                    ))
                }
                _ => task.outputs = Some(needed),
            }
        }
        if let Some(image) = &self.image_column {
            let entry = column("data.image_column", image)?;
            if entry.numeric {
                return Err((
                    "data.image_column".into(),
                    format!("column `{image}` holds numbers; an image column holds each row's image path, relative to the dataset's directory"),
                ));
            }
            return self.check_split_counts(manifest, table);
        }
        let targets: Vec<String> = self.tasks.iter().flat_map(|t| t.columns()).collect();
        let readable = |prefix: &str| -> Vec<String> {
            table
                .columns
                .iter()
                .map(|c| c.name.clone())
                .filter(|c| c.starts_with(prefix))
                .filter(|c| !targets.contains(c) && self.split_column.as_ref() != Some(c))
                .collect()
        };
        let features = match &self.features {
            None => readable(""),
            Some(listed) => {
                let mut features = Vec::new();
                for entry in listed {
                    let Some(prefix) = entry.strip_suffix('*') else {
                        features.push(entry.clone());
                        continue;
                    };
                    let matched = readable(prefix);
                    if matched.is_empty() {
                        return Err((
                            "data.features".into(),
                            format!("`{entry}` matches no column of dataset `{}` that is neither a target nor the split column", manifest.name),
                        ));
                    }
                    features.extend(matched);
                }
                let mut seen = std::collections::BTreeSet::new();
                if let Some(twice) = features.iter().find(|f| !seen.insert(*f)) {
                    return Err((
                        "data.features".into(),
                        format!("names `{twice}` twice (by name or by a pattern ending in `*`)"),
                    ));
                }
                features
            }
        };
        if features.is_empty() {
            return Err((
                "data.features".into(),
                format!("dataset `{}` has no column left to read: every column is a target or the split column", manifest.name),
            ));
        }
        for name in &features {
            let entry = column("data.features", name)?;
            if !entry.numeric && entry.levels.is_none() {
                return Err((
                    "data.features".into(),
                    format!("column `{name}` holds text with more than {MAX_LEVELS} distinct values: too many to one-hot encode"),
                ));
            }
        }
        self.features = Some(features);
        self.check_split_counts(manifest, table)
    }

    /// Refuses a split without rows; pins the spec to the manifest's version.
    fn check_split_counts(
        &mut self,
        manifest: &Manifest,
        table: &TableManifest,
    ) -> Result<(), Invalid> {
        let counts = self.split_counts(table)?;
        if counts[0] == 0 {
            return Err((
                self.split_field(),
                format!(
                    "dataset `{}` would have no training rows: the tasks would have no data",
                    manifest.name
                ),
            ));
        }
        for (split, field) in [(1, "eval.rows"), (2, "eval.final_rows")] {
            if counts[split] == 0 {
                return Err((
                    self.split_field(),
                    format!(
                        "dataset `{}` would have no {} rows, which {field} scores",
                        manifest.name,
                        ["train", "validation", "test"][split]
                    ),
                ));
            }
        }
        self.fingerprint = Some(manifest.fingerprint.clone());
        Ok(())
    }

    fn split_field(&self) -> String {
        if self.split_column.is_some() {
            "data.split_column".into()
        } else {
            "data.fractions".into()
        }
    }

    /// Rows of the training, validation and test splits.
    pub fn split_counts(&self, table: &TableManifest) -> Result<[u64; 3], Invalid> {
        match &self.split_column {
            Some(column) => {
                column_counts(table, column).map_err(|e| ("data.split_column".into(), e))
            }
            None => Ok(fraction_counts(table.rows, self.fractions())),
        }
    }

    fn fractions(&self) -> [f64; 3] {
        self.fractions.unwrap_or(DEFAULT_FRACTIONS)
    }

    /// The input width: one value per numeric feature, one per level of a text feature.
    pub fn input_width(&self, table: &TableManifest) -> usize {
        self.features
            .iter()
            .flatten()
            .filter_map(|name| table.column(name))
            .map(|c| match (&c.levels, c.numeric) {
                (_, true) => 1,
                (Some(levels), false) => levels.len(),
                (None, false) => 0,
            })
            .sum()
    }

    /// What workers need to read the table, once [`TableSpec::check_manifest`] has filled
    /// it in; `seed` draws the split and the order of the training rows.
    pub fn data(&self, seed: u64) -> TableData {
        TableData {
            dataset: self.dataset.clone(),
            fingerprint: self.fingerprint.clone().unwrap_or_default(),
            features: self.features.clone().unwrap_or_default(),
            image_column: self.image_column.clone(),
            targets: self.tasks.iter().map(TableTaskSpec::columns).collect(),
            split: match &self.split_column {
                Some(column) => TableSplit::Column(column.clone()),
                None => TableSplit::Fractions(self.fractions()),
            },
            standardize: self.standardize,
            seed,
        }
    }
}

fn loss_name(loss: LossSpec) -> &'static str {
    match loss {
        LossSpec::Mse => "mean squared error",
        LossSpec::CrossEntropy => "cross-entropy",
        LossSpec::Bce => "binary cross-entropy",
    }
}

#[cfg(test)]
mod tests {
    use outerloop_proto::dataset::Level;
    use outerloop_proto::mtl::MtlData;

    use crate::spec::MtlSpec;

    use super::*;

    const TABLE_SPEC: &str = r#"name = "census"
seed = 4
kind = "mtl"

[data]
family = "table"
dataset = "census"
split_column = "fold"

[[data.tasks]]
loss = "mse"
target = "income"

[[data.tasks]]
loss = "cross_entropy"
target = "job"

[[data.tasks]]
name = "tags"
loss = "bce"
targets = ["urban", "married"]

[model]
kind = "mlp"
hidden = [8]

[train]
steps = 10
batch = 16
optimizer = "sgd"
lr = 0.1

[weighting]
method = "ew"

[eval]
every = 5
"#;

    fn column(name: &str, numeric: bool, levels: &[(&str, u64)]) -> ColumnEntry {
        ColumnEntry {
            name: name.into(),
            numeric,
            missing: 0,
            levels: (!levels.is_empty()).then(|| {
                levels
                    .iter()
                    .map(|(v, c)| Level {
                        value: v.to_string(),
                        count: *c,
                    })
                    .collect()
            }),
        }
    }

    fn manifest() -> Manifest {
        Manifest {
            name: "census".into(),
            layout: Layout::Table,
            fingerprint: "beef".into(),
            classes: Vec::new(),
            table: Some(TableManifest {
                rows: 10,
                columns: vec![
                    column("age", true, &[]),
                    column("city", false, &[("a", 5), ("b", 3), ("c", 2)]),
                    column("income", true, &[]),
                    column("job", false, &[("x", 4), ("y", 4), ("z", 1), ("w", 1)]),
                    column("urban", true, &[("0", 4), ("1", 6)]),
                    column("married", true, &[("0", 5), ("1", 5)]),
                    column("fold", false, &[("test", 2), ("train", 6), ("val", 2)]),
                ],
            }),
        }
    }

    fn parse(overrides: &[&str]) -> Result<MtlSpec, String> {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        MtlSpec::parse(TABLE_SPEC, "census.toml", &overrides).map_err(|e| e.to_string())
    }

    fn checked(overrides: &[&str]) -> Result<MtlSpec, String> {
        let mut spec = parse(overrides)?;
        spec.check_dataset(&manifest())
            .map_err(|(field, message)| format!("{field}: {message}"))?;
        Ok(spec)
    }

    #[test]
    fn rows_asked_past_what_the_table_has_are_noted_not_refused() {
        let table = manifest();
        let counts = match &checked(&[]).unwrap().data {
            crate::spec::MtlDataSpec::Table(t) => {
                t.split_counts(table.table.as_ref().unwrap()).unwrap()
            }
            _ => unreachable!("a table spec"),
        };
        let fits = format!("train.batch={}", counts[0]);
        let fits = checked(&[&fits, "train.chunk_rows=1"]).unwrap();
        assert!(
            fits.notes(Some(&table)).is_empty(),
            "every split's rows, and no more"
        );
        let batch = format!("train.batch={}", 2 * counts[0] + 1);
        let rows = format!("eval.rows={}", counts[1] + 5);
        let exact = format!("eval.final_rows={}", counts[2]);
        let notes = checked(&[&batch, &rows, &exact])
            .unwrap()
            .notes(Some(&table));
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[0].starts_with(&format!(
                "train.batch = {} is more than the {} training rows of `census`",
                2 * counts[0] + 1,
                counts[0]
            )) && notes[0].ends_with("about 3 times"),
            "{notes:?}"
        );
        assert_eq!(
            notes[1],
            format!(
                "eval.rows = {} is more than the {} validation rows of `census`: all {} are scored",
                counts[1] + 5,
                counts[1],
                counts[1]
            )
        );
    }

    #[test]
    fn the_manifest_decides_features_heads_and_inputs() {
        let spec = checked(&[]).unwrap();
        assert_eq!(spec.task_names(), ["income", "job", "tags"]);
        let setup = spec.setup("e", Some(&manifest())).unwrap();
        // age (1) + city one-hot (3); the targets and the split column are not features.
        assert_eq!(setup.shared.input(), 4);
        let heads: Vec<(TaskLoss, u32)> = setup.tasks.iter().map(|t| (t.loss, t.outputs)).collect();
        assert_eq!(
            heads,
            [
                (TaskLoss::Mse, 1),
                (TaskLoss::CrossEntropy, 4),
                (TaskLoss::BinaryCrossEntropy, 2)
            ]
        );
        let MtlData::Table(data) = &setup.data else {
            panic!("a table")
        };
        assert_eq!(data.features, ["age", "city"]);
        assert_eq!(data.fingerprint, "beef");
        assert_eq!(data.split, TableSplit::Column("fold".into()));
        assert_eq!(spec.held_out_rows(Some(&manifest())), Ok(Some([2, 2])));
        // The stored spec lists what the table decided, and reads back the same.
        let again = MtlSpec::parse(&spec.to_toml(), "stored.toml", &[]).unwrap();
        assert_eq!(again, spec);
        assert!(spec.to_toml().contains("fingerprint = \"beef\""));
    }

    #[test]
    fn a_pattern_ending_in_a_star_names_every_readable_column_with_its_prefix_in_file_order() {
        let features = |overrides: &[&str]| {
            let spec = checked(overrides)?;
            let MtlData::Table(data) = spec.setup("e", Some(&manifest())).unwrap().data else {
                panic!("a table")
            };
            Ok::<_, String>(data.features)
        };
        // In the patterns' order; `income` is a target, so `i*` matches nothing readable.
        assert_eq!(
            features(&["data.features=[\"c*\", \"a*\"]"]),
            Ok(vec!["city".into(), "age".into()])
        );
        assert_eq!(features(&["data.features=[\"*\"]"]), features(&[]));
        for (overrides, says) in [
            (&["data.features=[\"i*\"]"][..], "`i*` matches no column"),
            (&["data.features=[\"a*\", \"age\"]"], "names `age` twice"),
        ] {
            let error = features(overrides).unwrap_err();
            assert!(
                error.contains("data.features") && error.contains(says),
                "{error}"
            );
        }
    }

    #[test]
    fn fractions_split_by_the_seed_when_no_column_is_named() {
        let mut spec = parse(&["data.split_column=\"\""]).unwrap();
        if let crate::spec::MtlDataSpec::Table(t) = &mut spec.data {
            t.split_column = None;
            t.fractions = Some([0.6, 0.2, 0.2]);
            t.features = Some(vec!["age".into(), "fold".into()]);
        }
        spec.check_dataset(&manifest()).unwrap();
        assert_eq!(spec.held_out_rows(Some(&manifest())), Ok(Some([2, 2])));
        // `fold` is text of three levels: one-hot, 3 wide.
        assert_eq!(
            spec.setup("e", Some(&manifest())).unwrap().shared.input(),
            4
        );
    }

    #[test]
    fn bad_tables_and_tasks_name_the_field_and_the_limit() {
        let cases: [(&[&str], &str); 11] = [
            (
                &["data.tasks[0].outputs=2"],
                "needs a head of 1 output, not 2",
            ),
            (
                &["data.tasks[0].target=\"salary\""],
                "data.tasks[0].target: dataset `census` has no column `salary`; its columns are age, city",
            ),
            (
                &["data.tasks[1].outputs=3"],
                "data.tasks[1].outputs: task `job`: cross-entropy on `job` needs a head of 4 outputs, not 3 (one per class)",
            ),
            (
                &["data.tasks[2].outputs=1"],
                "needs a head of 2 outputs, not 1 (one per target column)",
            ),
            (&["data.tasks[0].target=\"city\""], "column `city` holds text; mean squared error needs numbers"),
            (&["data.tasks[2].targets=[\"age\"]"], "binary cross-entropy needs 0/1 labels"),
            (&["data.tasks[0].target=\"age\"", "data.tasks[0].loss=\"cross_entropy\""], "more than 1024 distinct values"),
            (&["data.features=[\"age\", \"job\"]"], "`job` is a target or the split column"),
            (&["data.features=[\"height\"]"], "data.features: dataset `census` has no column `height`"),
            (&["data.split_column=\"city\""], "column `city` holds `a`; a split column holds only train, val, test"),
            (&["data.dataset=\"../etc\""], "a spec never names a path"),
        ];
        for (overrides, expected) in cases {
            let error = checked(overrides).unwrap_err();
            assert!(error.contains(expected), "{overrides:?}: {error}");
        }
        let mut missing = manifest();
        missing.table.as_mut().unwrap().columns[0].missing = 3;
        let mut spec = parse(&[]).unwrap();
        let (field, message) = spec.check_dataset(&missing).unwrap_err();
        assert_eq!(field, "data.features");
        assert!(
            message.contains("`age`") && message.contains("3 empty cells"),
            "{message}"
        );
        let mut images = manifest();
        images.layout = Layout::Folders;
        let (field, _) = parse(&[]).unwrap().check_dataset(&images).unwrap_err();
        assert_eq!(field, "data.dataset");
    }

    #[test]
    fn encoded_widths_are_bounded_for_the_table_and_for_each_chunk() {
        let mut wide = manifest();
        let zip: Vec<(String, u64)> = (0..1000).map(|i| (format!("z{i:04}"), 1)).collect();
        let zip: Vec<(&str, u64)> = zip.iter().map(|(v, c)| (v.as_str(), *c)).collect();
        wide.table
            .as_mut()
            .unwrap()
            .columns
            .push(column("zip", false, &zip));
        let check = |m: &Manifest, overrides: &[&str]| {
            let mut spec = parse(overrides).unwrap();
            spec.check_dataset(m)
        };
        let (field, message) = check(&wide, &["train.chunk_rows=300000"]).unwrap_err();
        assert_eq!(field, "train.chunk_rows");
        assert!(
            message.contains("1004 inputs") && message.contains("smaller chunks"),
            "{message}"
        );
        wide.table.as_mut().unwrap().rows = 1_000_000;
        let (field, message) = check(&wide, &[]).unwrap_err();
        assert_eq!(field, "data.features");
        assert!(message.contains("1004 inputs per row"), "{message}");
    }

    #[test]
    fn tasks_without_data_or_names_are_refused_before_any_manifest() {
        let cases: [(&[&str], &str); 5] = [
            (
                &["data.tasks[2].targets=[]"],
                "a task with no target has no data",
            ),
            (
                &["data.tasks[1].target=\"income\""],
                "a second task is named \"income\"",
            ),
            (&["data.tasks[2].name=\"a.b\""], "is not a task name"),
            (&["data.fractions=[0.5, 0.5, 0.5]"], "not both"),
            (&["data.tasks[1].loss=\"hinge\""], "mse"),
        ];
        for (overrides, expected) in cases {
            let error = parse(overrides).unwrap_err();
            assert!(error.contains(expected), "{overrides:?}: {error}");
        }
        let no_split =
            TABLE_SPEC.replace("split_column = \"fold\"", "fractions = [0.95, 0.04, 0.01]");
        let mut spec = MtlSpec::parse(&no_split, "t.toml", &[]).unwrap();
        let (field, message) = spec.check_dataset(&manifest()).unwrap_err();
        assert_eq!(field, "data.fractions");
        // Ten rows: 9 for training, none for validation (0.4 rounds down), the rest for test.
        assert!(message.contains("no validation rows"), "{message}");
    }
}
