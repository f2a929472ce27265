//! Datasets on the workers' disks as the coordinator knows them: classes, instance counts and a fingerprint, never the images.

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
}

impl Layout {
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Omniglot => "omniglot",
            Layout::Folders => "folders",
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
    pub classes: Vec<ClassEntry>,
}

impl Manifest {
    /// Images in the whole dataset.
    pub fn images(&self) -> u64 {
        self.classes.iter().map(|c| c.instances as u64).sum()
    }

    /// A one-line description for logs and errors.
    pub fn summary(&self) -> String {
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
