//! Datasets on the workers' disks as the coordinator knows them: classes and instance counts (images) or rows and columns (tables), and a fingerprint, never the data.

use serde::{Deserialize, Serialize};

/// How a dataset's files are arranged under `--data-root/NAME/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Omniglot as published: `images_background/` and `images_evaluation/`, each
    /// `ALPHABET/CHARACTER/*.png`; a character is a class.
    Omniglot,
    /// One folder per class under `train/`, `val/` and `test/` (mini-ImageNet as users
    /// unpack it, or any image collection).
    Folders,
    /// A table: one or more `*.csv` or `*.parquet` files directly in the dataset's directory,
    /// with the same columns, read as one table in file-name order.
    Table,
}

impl Layout {
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Omniglot => "omniglot",
            Layout::Folders => "folders",
            Layout::Table => "table",
        }
    }
}

/// Where a class sits in the published layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Partition {
    /// Omniglot's `images_background/`.
    Background,
    /// Omniglot's `images_evaluation/`.
    Evaluation,
    Train,
    Val,
    Test,
}

/// One class: its folder (relative to the dataset's directory), where it sits, and how many
/// images it has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassEntry {
    pub name: String,
    pub partition: Partition,
    pub instances: u32,
}

/// A dataset as a worker found it: its classes in canonical order (sorted by folder), and a
/// fingerprint of every file's path and size. Two copies with the same fingerprint list the
/// same files in the same order, so a class index and an instance index name the same image
/// on every worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub layout: Layout,
    pub fingerprint: String,
    /// Image layouts only.
    pub classes: Vec<ClassEntry>,
    /// The table layout only: its rows and columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<TableManifest>,
}

/// Unreadable folders a worker's registration lists, at most, and the characters of each
/// reason: the worker cuts what it sends to these, and the coordinator keeps no more.
pub const MAX_SKIPPED_DATASETS: usize = 16;
pub const MAX_SKIP_REASON_CHARS: usize = 256;

/// Most distinct values a manifest lists for one column: enough for any categorical target
/// or split column, small enough that a column of floats does not list every row.
pub const MAX_LEVELS: usize = 1024;

/// A table as the coordinator plans from it: how many rows, and what each column holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableManifest {
    pub rows: u64,
    pub columns: Vec<ColumnEntry>,
}

/// One column of a table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnEntry {
    pub name: String,
    /// Every present value is a number (CSV cells that parse as one; Parquet integers,
    /// floats and booleans); otherwise the column is text.
    pub numeric: bool,
    /// Empty cells (CSV) or nulls (Parquet).
    pub missing: u64,
    /// The distinct present values with their counts, in canonical order (numbers by value,
    /// written as Rust's shortest round-trip form; text by bytes), when there are at most
    /// [`MAX_LEVELS`]; `None` when there are more.
    pub levels: Option<Vec<Level>>,
}

/// One distinct value of a column and how many rows hold it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Level {
    pub value: String,
    pub count: u64,
}

impl TableManifest {
    pub fn column(&self, name: &str) -> Option<&ColumnEntry> {
        self.columns.iter().find(|c| c.name == name)
    }
}

impl Manifest {
    /// Images in the whole dataset.
    pub fn images(&self) -> u64 {
        self.classes.iter().map(|c| c.instances as u64).sum()
    }

    /// A one-line description for logs and errors.
    pub fn summary(&self) -> String {
        if let Some(table) = &self.table {
            return format!(
                "{} (table layout, {} rows, {} columns, fingerprint {})",
                self.name,
                table.rows,
                table.columns.len(),
                self.fingerprint
            );
        }
        format!(
            "{} ({} layout, {} classes, {} images, fingerprint {})",
            self.name,
            self.layout.as_str(),
            self.classes.len(),
            self.images(),
            self.fingerprint
        )
    }
}
