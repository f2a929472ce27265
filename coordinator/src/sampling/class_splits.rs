//! Which classes of a dataset are meta-training, meta-validation and meta-test classes.

use outerloop_proto::dataset::{Layout, Manifest, Partition};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// One class as the episode sampler sees it: a class of the manifest, possibly rotated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassRef {
    /// Index into the manifest's classes.
    pub class: u32,
    /// Counter-clockwise quarter turns (0 unless rotations make classes).
    pub rotation: u8,
    pub instances: u32,
}

/// The classes of one meta-split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitClasses {
    /// "meta-training split", for messages.
    pub name: &'static str,
    /// How the classes were counted, for messages (" (5 characters x 4 rotations)").
    pub note: String,
    pub classes: Vec<ClassRef>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassSplits {
    pub train: SplitClasses,
    pub validation: SplitClasses,
    pub test: SplitClasses,
}

/// Omniglot's customary split (Vinyals et al. 2016; Finn et al. 2017): of its 1623 characters,
/// 1200 for meta-training (here 1100 of them, and 100 held out for validation, as learn2learn
/// does) and 423 for meta-testing.
const OMNIGLOT_SPLIT: [usize; 3] = [1100, 100, 423];
/// The seed of the one shuffle that assigns Omniglot's characters to splits: fixed, so the
/// split is a property of the dataset, the same for every experiment.
const OMNIGLOT_SPLIT_SEED: u64 = 0;

/// The meta-splits of `manifest`. Omniglot-layout datasets pool the characters of both halves
/// in canonical order, shuffle them once with a fixed seed (as Finn et al.'s code does) and
/// cut them in the proportions 1100 : 100 : 423 (exactly those counts for the real dataset's
/// 1623 characters). Class-folder datasets use their `train/`, `val/` and `test/` folders.
/// With `rotations`, each class's rotations by 0, 90, 180 and 270 degrees are four classes of
/// the same split.
pub fn class_splits(manifest: &Manifest, rotations: bool) -> ClassSplits {
    let all: Vec<u32> = (0..manifest.classes.len() as u32).collect();
    let [train, validation, test] = match manifest.layout {
        Layout::Omniglot => {
            let mut order = all;
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(OMNIGLOT_SPLIT_SEED));
            let n = order.len();
            let total: usize = OMNIGLOT_SPLIT.iter().sum();
            let train = (n * OMNIGLOT_SPLIT[0] + total / 2) / total;
            let validation = (n * OMNIGLOT_SPLIT[1] + total / 2) / total;
            let rest = order.split_off(train);
            let (validation, test) = rest.split_at(validation.min(rest.len()));
            [order, validation.to_vec(), test.to_vec()]
        }
        // A table has no classes (its specs are refused before sampling): empty splits.
        Layout::Folders | Layout::Table => {
            [Partition::Train, Partition::Val, Partition::Test].map(|partition| {
                all.iter()
                    .copied()
                    .filter(|&c| manifest.classes[c as usize].partition == partition)
                    .collect()
            })
        }
    };
    let turns: &[u8] = if rotations { &[0, 1, 2, 3] } else { &[0] };
    let split = |name: &'static str, classes: Vec<u32>| {
        let unit = match manifest.layout {
            Layout::Omniglot => "characters",
            Layout::Folders | Layout::Table => "classes",
        };
        SplitClasses {
            name,
            note: if rotations {
                format!(" ({} {unit} x 4 rotations)", classes.len())
            } else {
                String::new()
            },
            classes: classes
                .iter()
                .flat_map(|&class| {
                    turns.iter().map(move |&rotation| ClassRef {
                        class,
                        rotation,
                        instances: manifest.classes[class as usize].instances,
                    })
                })
                .collect(),
        }
    };
    ClassSplits {
        train: split("meta-training split", train),
        validation: split("meta-validation split", validation),
        test: split("meta-test split", test),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use outerloop_proto::dataset::ClassEntry;

    pub(crate) fn manifest(layout: Layout, classes: usize, instances: u32) -> Manifest {
        Manifest {
            name: "data".into(),
            layout,
            fingerprint: "00".into(),
            classes: (0..classes)
                .map(|i| ClassEntry {
                    name: format!("class{i:04}"),
                    partition: match (layout, i % 5) {
                        (Layout::Omniglot, 0 | 1) => Partition::Evaluation,
                        (Layout::Omniglot, _) => Partition::Background,
                        (Layout::Folders, 0) => Partition::Val,
                        (Layout::Folders, 1) => Partition::Test,
                        (Layout::Folders | Layout::Table, _) => Partition::Train,
                    },
                    instances,
                })
                .collect(),
            table: None,
        }
    }

    #[test]
    fn omniglot_gets_the_customary_counts_from_a_fixed_shuffle() {
        let m = manifest(Layout::Omniglot, 1623, 20);
        let splits = class_splits(&m, false);
        let sizes = [&splits.train, &splits.validation, &splits.test].map(|s| s.classes.len());
        assert_eq!(sizes, [1100, 100, 423]);
        assert_eq!(splits, class_splits(&m, false), "the same split every time");
        let mut all: Vec<u32> = [&splits.train, &splits.validation, &splits.test]
            .iter()
            .flat_map(|s| s.classes.iter().map(|c| c.class))
            .collect();
        all.sort();
        assert_eq!(
            all,
            (0..1623).collect::<Vec<_>>(),
            "every character exactly once"
        );
        assert_ne!(
            splits.train.classes[..5]
                .iter()
                .map(|c| c.class)
                .collect::<Vec<_>>(),
            [0, 1, 2, 3, 4],
            "shuffled"
        );
        // A smaller dataset keeps the proportions.
        let small = class_splits(&manifest(Layout::Omniglot, 200, 20), false);
        let sizes = [&small.train, &small.validation, &small.test].map(|s| s.classes.len());
        assert_eq!(sizes, [136, 12, 52]);
    }

    #[test]
    fn rotations_make_four_classes_of_each_in_its_own_split() {
        let m = manifest(Layout::Omniglot, 40, 20);
        let plain = class_splits(&m, false);
        let rotated = class_splits(&m, true);
        assert_eq!(rotated.train.classes.len(), 4 * plain.train.classes.len());
        assert_eq!(
            rotated.test.note,
            format!(" ({} characters x 4 rotations)", plain.test.classes.len())
        );
        let first = plain.train.classes[0].class;
        let turns: Vec<u8> = rotated
            .train
            .classes
            .iter()
            .filter(|c| c.class == first)
            .map(|c| c.rotation)
            .collect();
        assert_eq!(turns, [0, 1, 2, 3]);
    }

    #[test]
    fn class_folders_keep_their_own_splits() {
        let m = manifest(Layout::Folders, 100, 600);
        let splits = class_splits(&m, false);
        let sizes = [&splits.train, &splits.validation, &splits.test].map(|s| s.classes.len());
        assert_eq!(sizes, [60, 20, 20]);
        assert!(splits
            .validation
            .classes
            .iter()
            .all(|c| m.classes[c.class as usize].partition == Partition::Val));
    }
}
