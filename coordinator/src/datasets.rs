//! The datasets workers have reported: their manifests, kept on disk, so experiments can be sampled and checked without a single image.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use outerloop_proto::dataset::Manifest;

/// Every dataset version any worker has reported, by name and fingerprint. Manifests are
/// written to `STATE_DIR/datasets/NAME-FINGERPRINT.json` when first seen, so a coordinator
/// restarted while no worker is connected still knows them.
#[derive(Debug)]
pub struct Catalog {
    dir: PathBuf,
    known: Mutex<BTreeMap<(String, String), Known>>,
}

#[derive(Debug)]
struct Known {
    manifest: Arc<Manifest>,
    /// When this version was last reported, in report order (higher is later).
    reported: u64,
}

impl Catalog {
    /// Opens the catalog in `state_dir`, loading the manifests stored there. An unreadable
    /// file is reported and skipped.
    pub fn open(state_dir: &Path) -> io::Result<Catalog> {
        let dir = state_dir.join("datasets");
        fs::create_dir_all(&dir)?;
        let mut known = BTreeMap::new();
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let loaded = fs::read(&path).and_then(|bytes| {
                serde_json::from_slice::<Manifest>(&bytes).map_err(io::Error::other)
            });
            match loaded {
                Ok(manifest) => {
                    let key = (manifest.name.clone(), manifest.fingerprint.clone());
                    let manifest = Arc::new(manifest);
                    known.insert(
                        key,
                        Known {
                            manifest,
                            reported: 0,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "skipping unreadable dataset manifest")
                }
            }
        }
        Ok(Catalog {
            dir,
            known: Mutex::new(known),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Known>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the manifests a worker reported; returns the versions not seen before, which
    /// [`Catalog::store`] keeps for the next start (it writes: from a blocking thread, and
    /// not under this catalog's lock, which the async runtime takes).
    pub fn report(&self, manifests: &[Manifest]) -> Vec<Arc<Manifest>> {
        let mut known = self.lock();
        let next = known.values().map(|k| k.reported).max().unwrap_or(0) + 1;
        let mut new = Vec::new();
        for manifest in manifests {
            let key = (manifest.name.clone(), manifest.fingerprint.clone());
            if let Some(k) = known.get_mut(&key) {
                k.reported = next;
                continue;
            }
            tracing::info!(dataset = %manifest.summary(), "new dataset version");
            let manifest = Arc::new(manifest.clone());
            new.push(manifest.clone());
            known.insert(
                key,
                Known {
                    manifest,
                    reported: next,
                },
            );
        }
        new
    }

    /// Writes `manifests` to the catalog's directory, logging any that cannot be written
    /// (they are known until the coordinator stops, and reported again by their workers).
    pub fn store(&self, manifests: &[Arc<Manifest>]) {
        for manifest in manifests {
            if let Err(e) = self.write(manifest) {
                tracing::error!(dataset = %manifest.summary(), error = %e, "could not store the dataset manifest");
            }
        }
    }

    fn write(&self, manifest: &Manifest) -> io::Result<()> {
        let name = format!("{}-{}.json", manifest.name, manifest.fingerprint);
        let json = serde_json::to_vec(manifest).map_err(io::Error::other)?;
        crate::store::write_atomically(&self.dir.join(name), &json)
    }

    /// The manifest an experiment on dataset `name` uses: the version `pinned` when given;
    /// otherwise the version held by the most live workers (`holders`: fingerprint to count),
    /// then the most recently reported one. The error says what is known instead.
    pub fn resolve(
        &self,
        name: &str,
        pinned: Option<&str>,
        holders: &BTreeMap<String, usize>,
    ) -> Result<Arc<Manifest>, String> {
        let known = self.lock();
        let versions: Vec<&Known> = known
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, k)| k)
            .collect();
        if let Some(fingerprint) = pinned {
            return versions
                .iter()
                .find(|k| k.manifest.fingerprint == fingerprint)
                .map(|k| k.manifest.clone())
                .ok_or_else(|| {
                    let seen: Vec<&str> = versions
                        .iter()
                        .map(|k| k.manifest.fingerprint.as_str())
                        .collect();
                    format!(
                        "no worker has reported version {fingerprint} of dataset `{name}`{}",
                        if seen.is_empty() {
                            String::new()
                        } else {
                            format!(" (versions seen: {})", seen.join(", "))
                        }
                    )
                });
        }
        versions
            .iter()
            .max_by_key(|k| (holders.get(&k.manifest.fingerprint).copied().unwrap_or(0), k.reported))
            .map(|k| k.manifest.clone())
            .ok_or_else(|| {
                let names: std::collections::BTreeSet<&str> = known.keys().map(|(n, _)| n.as_str()).collect();
                format!(
                    "no worker has reported a dataset named `{name}`; {}. Start a worker whose --data-root holds {name}/ (Omniglot's published layout, train/, val/ and test/ class folders, or CSV or Parquet files) and submit again",
                    if names.is_empty() {
                        "no worker has reported any dataset yet".to_string()
                    } else {
                        format!("datasets known: {}", names.into_iter().collect::<Vec<_>>().join(", "))
                    }
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outerloop_proto::dataset::{ClassEntry, Layout, Partition};

    fn manifest(name: &str, fingerprint: &str) -> Manifest {
        Manifest {
            name: name.into(),
            layout: Layout::Folders,
            fingerprint: fingerprint.into(),
            classes: vec![ClassEntry {
                name: "train/a".into(),
                partition: Partition::Train,
                instances: 3,
            }],
            table: None,
        }
    }

    #[test]
    fn the_most_held_version_wins_and_pins_are_honoured() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        catalog.report(&[manifest("mini", "aa")]);
        catalog.report(&[manifest("mini", "bb")]);
        let none = BTreeMap::new();
        assert_eq!(
            catalog.resolve("mini", None, &none).unwrap().fingerprint,
            "bb",
            "latest"
        );
        let holders = BTreeMap::from([("aa".to_string(), 2), ("bb".to_string(), 1)]);
        assert_eq!(
            catalog.resolve("mini", None, &holders).unwrap().fingerprint,
            "aa",
            "most held"
        );
        assert_eq!(
            catalog
                .resolve("mini", Some("bb"), &holders)
                .unwrap()
                .fingerprint,
            "bb"
        );
        let e = catalog.resolve("mini", Some("cc"), &holders).unwrap_err();
        assert!(e.contains("version cc") && e.contains("aa, bb"), "{e}");
        let e = catalog.resolve("omniglot", None, &none).unwrap_err();
        assert!(
            e.contains("`omniglot`") && e.contains("datasets known: mini"),
            "{e}"
        );
    }

    #[test]
    fn manifests_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        let new = catalog.report(&[manifest("mini", "aa")]);
        assert_eq!(new.len(), 1);
        assert!(
            catalog.report(&[manifest("mini", "aa")]).is_empty(),
            "known"
        );
        catalog.store(&new);
        std::fs::write(dir.path().join("datasets/junk.json"), "{").unwrap();
        let reopened = Catalog::open(dir.path()).unwrap();
        let m = reopened.resolve("mini", None, &BTreeMap::new()).unwrap();
        assert_eq!(*m, manifest("mini", "aa"));
    }
}
