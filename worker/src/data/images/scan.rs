//! Finds the datasets under a worker's `--data-root`: image datasets' files in canonical order with a fingerprint of paths and sizes, and tables read into memory.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use outerloop_proto::dataset::{ClassEntry, Layout, Manifest, Partition};
use sha2::{Digest, Sha256};

use crate::data::table::{self, Table};

/// One dataset as found on disk: its manifest and, for images, the files of every class in
/// the manifest's order (class index, then instance index), or, for a table, its data.
#[derive(Clone, Debug)]
pub struct LocalDataset {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// Empty for a table.
    pub files: Vec<Vec<PathBuf>>,
    /// None for images.
    pub table: Option<Arc<Table>>,
}

/// The datasets of a data root, by name (the directory's name).
#[derive(Clone, Debug, Default)]
pub struct DataRoot {
    pub root: Option<PathBuf>,
    pub datasets: BTreeMap<String, LocalDataset>,
    /// Directories that looked like datasets but could not be read, with why.
    pub skipped: Vec<(PathBuf, String)>,
}

/// The file extensions read as images.
const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];

impl DataRoot {
    /// A worker without data.
    pub fn empty() -> Self {
        DataRoot::default()
    }

    /// Scans every directory directly under `root`: one holding `images_background/` or
    /// `images_evaluation/` is an Omniglot-layout dataset, one holding `train/`, `val/` or
    /// `test/` a class-folder dataset, and one holding neither but `*.csv` or `*.parquet` files
    /// a table; anything else is ignored.
    pub fn scan(root: &Path) -> io::Result<DataRoot> {
        let mut found = DataRoot {
            root: Some(root.to_path_buf()),
            ..DataRoot::default()
        };
        for dir in sorted_dirs(root)? {
            let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
                continue;
            };
            let Some(layout) = detect_layout(&dir) else {
                continue;
            };
            match scan_dataset(&dir, &name, layout) {
                Ok(dataset) => {
                    found.datasets.insert(name, dataset);
                }
                Err(e) => found.skipped.push((dir, e.to_string())),
            }
        }
        Ok(found)
    }

    pub fn manifests(&self) -> Vec<Manifest> {
        self.datasets.values().map(|d| d.manifest.clone()).collect()
    }

    /// Why this worker cannot serve `name` at `fingerprint`, if it cannot.
    pub fn refusal(&self, name: &str, fingerprint: &str) -> Option<String> {
        let Some(root) = &self.root else {
            return Some(format!(
                "dataset `{name}` is not available: this worker was started without --data-root"
            ));
        };
        match self.datasets.get(name) {
            None => Some(format!(
                "dataset `{name}` is not under --data-root {} (expected {})",
                root.display(),
                root.join(name).display()
            )),
            Some(d) if d.manifest.fingerprint != fingerprint => Some(format!(
                "this worker's copy of dataset `{name}` ({}) differs from the experiment's (fingerprint {fingerprint}): different files or sizes",
                d.manifest.summary()
            )),
            Some(_) => None,
        }
    }
}

fn detect_layout(dir: &Path) -> Option<Layout> {
    let has = |sub: &str| dir.join(sub).is_dir();
    if has("images_background") || has("images_evaluation") {
        Some(Layout::Omniglot)
    } else if has("train") || has("val") || has("test") {
        Some(Layout::Folders)
    } else if table::holds_table_files(dir) {
        Some(Layout::Table)
    } else {
        None
    }
}

/// Subdirectories of `dir`, sorted by name so every worker lists them in the same order.
fn sorted_dirs(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            dirs.push(path);
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Image files directly in `dir`, sorted by name.
fn sorted_images(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let is_image = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        if is_image && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The class folders of a layout, in canonical order, with their partition.
fn class_dirs(dir: &Path, layout: Layout) -> io::Result<Vec<(PathBuf, Partition)>> {
    let mut classes = Vec::new();
    match layout {
        Layout::Omniglot => {
            for (part, partition) in [
                ("images_background", Partition::Background),
                ("images_evaluation", Partition::Evaluation),
            ] {
                let part = dir.join(part);
                if !part.is_dir() {
                    continue;
                }
                for alphabet in sorted_dirs(&part)? {
                    for character in sorted_dirs(&alphabet)? {
                        classes.push((character, partition));
                    }
                }
            }
        }
        Layout::Folders => {
            for (part, partition) in [
                ("train", Partition::Train),
                ("val", Partition::Val),
                ("test", Partition::Test),
            ] {
                let part = dir.join(part);
                if !part.is_dir() {
                    continue;
                }
                for class in sorted_dirs(&part)? {
                    classes.push((class, partition));
                }
            }
        }
        Layout::Table => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a table dataset has no class folders",
            ))
        }
    }
    Ok(classes)
}

fn scan_dataset(dir: &Path, name: &str, layout: Layout) -> io::Result<LocalDataset> {
    if layout == Layout::Table {
        let (manifest, table) = table::read_table(dir, name)?;
        return Ok(LocalDataset {
            dir: dir.to_path_buf(),
            manifest,
            files: Vec::new(),
            table: Some(Arc::new(table)),
        });
    }
    let mut hasher = Sha256::new();
    hasher.update(layout.as_str().as_bytes());
    let (mut classes, mut files) = (Vec::new(), Vec::new());
    for (class_dir, partition) in class_dirs(dir, layout)? {
        let images = sorted_images(&class_dir)?;
        if images.is_empty() {
            // An empty folder is not a class (and would make every episode sampler trip).
            continue;
        }
        let relative = |p: &Path| {
            p.strip_prefix(dir)
                .unwrap_or(p)
                .to_string_lossy()
                .replace('\\', "/")
        };
        for image in &images {
            let size = fs::metadata(image)?.len();
            hasher.update(format!("\n{}\t{size}", relative(image)).as_bytes());
        }
        classes.push(ClassEntry {
            name: relative(&class_dir),
            partition,
            instances: images.len() as u32,
        });
        files.push(images);
    }
    if classes.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "no class folders with images in the {} layout",
                layout.as_str()
            ),
        ));
    }
    let digest = hasher.finalize();
    let fingerprint = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    Ok(LocalDataset {
        dir: dir.to_path_buf(),
        manifest: Manifest {
            name: name.to_string(),
            layout,
            fingerprint,
            classes,
            table: None,
        },
        files,
        table: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path, bytes: usize) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, vec![0u8; bytes]).unwrap();
    }

    fn omniglot(root: &Path) {
        let d = root.join("omniglot");
        for (part, alphabet, character, file) in [
            ("images_evaluation", "Zeta", "character01", "0002_01.png"),
            ("images_background", "Beta", "character02", "0003_01.png"),
            ("images_background", "Beta", "character01", "0001_02.png"),
            ("images_background", "Beta", "character01", "0001_01.png"),
        ] {
            touch(&d.join(part).join(alphabet).join(character).join(file), 10);
        }
        touch(&d.join("images_background/Beta/character01/notes.txt"), 3);
    }

    #[test]
    fn both_layouts_are_found_in_canonical_order() {
        let root = tempfile::tempdir().unwrap();
        omniglot(root.path());
        touch(&root.path().join("mini/train/n01/a.jpg"), 5);
        touch(&root.path().join("mini/test/n02/b.PNG"), 5);
        fs::create_dir_all(root.path().join("mini/val/empty")).unwrap();
        fs::create_dir_all(root.path().join("not-a-dataset/stuff")).unwrap();

        let found = DataRoot::scan(root.path()).unwrap();
        assert_eq!(
            found.datasets.keys().collect::<Vec<_>>(),
            ["mini", "omniglot"]
        );
        let omni = &found.datasets["omniglot"];
        let names: Vec<&str> = omni
            .manifest
            .classes
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "images_background/Beta/character01",
                "images_background/Beta/character02",
                "images_evaluation/Zeta/character01"
            ]
        );
        assert_eq!(
            omni.manifest.classes[0].instances, 2,
            "text files are not images"
        );
        assert_eq!(omni.manifest.classes[2].partition, Partition::Evaluation);
        assert!(omni.files[0][0].ends_with("0001_01.png"));
        let mini = &found.datasets["mini"].manifest;
        assert_eq!(mini.layout, Layout::Folders);
        assert_eq!(mini.classes.len(), 2, "empty folders are not classes");
        assert_eq!(mini.classes[1].partition, Partition::Test);
    }

    #[test]
    fn the_fingerprint_follows_the_files_and_their_sizes() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        omniglot(a.path());
        omniglot(b.path());
        let fingerprint = |root: &Path| {
            DataRoot::scan(root).unwrap().datasets["omniglot"]
                .manifest
                .fingerprint
                .clone()
        };
        assert_eq!(
            fingerprint(a.path()),
            fingerprint(b.path()),
            "same files, same print"
        );
        assert_eq!(fingerprint(a.path()).len(), 16);
        touch(
            &b.path()
                .join("omniglot/images_background/Beta/character01/0001_01.png"),
            11,
        );
        assert_ne!(
            fingerprint(a.path()),
            fingerprint(b.path()),
            "a size changed"
        );
        let found = DataRoot::scan(b.path()).unwrap();
        let refusal = found.refusal("omniglot", &fingerprint(a.path())).unwrap();
        assert!(
            refusal.contains("differs from the experiment's"),
            "{refusal}"
        );
        let missing = found.refusal("mini", "x").unwrap();
        assert!(
            missing.contains("dataset `mini` is not under --data-root"),
            "{missing}"
        );
        assert!(DataRoot::empty()
            .refusal("mini", "x")
            .unwrap()
            .contains("without --data-root"));
    }

    #[test]
    fn a_directory_of_table_files_is_a_table_dataset() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("iris")).unwrap();
        fs::write(root.path().join("iris/a.csv"), "x,species\n1.5,setosa\n").unwrap();
        fs::write(root.path().join("iris/b.csv"), "x,species\n2,virginica\n").unwrap();
        fs::create_dir_all(root.path().join("broken")).unwrap();
        fs::write(root.path().join("broken/a.csv"), "x\n").unwrap();
        // An image layout wins over stray table files beside it.
        touch(&root.path().join("mini/train/n01/a.jpg"), 5);
        fs::write(root.path().join("mini/labels.csv"), "x\n1\n").unwrap();

        let found = DataRoot::scan(root.path()).unwrap();
        assert_eq!(found.datasets.keys().collect::<Vec<_>>(), ["iris", "mini"]);
        assert_eq!(found.datasets["mini"].manifest.layout, Layout::Folders);
        assert!(found.datasets["mini"].table.is_none());
        let iris = &found.datasets["iris"];
        assert_eq!(iris.manifest.layout, Layout::Table);
        assert!(iris.files.is_empty() && iris.manifest.classes.is_empty());
        assert_eq!(iris.manifest.table.as_ref().unwrap().rows, 2);
        assert_eq!(iris.table.as_ref().unwrap().rows, 2);
        let (skipped, why) = &found.skipped[0];
        assert!(
            skipped.ends_with("broken") && why.contains("no rows"),
            "{why}"
        );

        assert_eq!(found.refusal("iris", &iris.manifest.fingerprint), None);
        let refusal = found.refusal("iris", "0123456789abcdef").unwrap();
        assert!(
            refusal.contains("differs from the experiment's")
                && refusal.contains("table layout, 2 rows"),
            "{refusal}"
        );
    }
}
