//! Where each image goes: the splits, class folders and file names of the Omniglot layout and
//! of the class-per-folder layout (mini-ImageNet's), and how classes are grouped into alphabets.

use std::path::PathBuf;

/// The on-disk layouts, both as their real datasets are published, so that one reader serves
/// real and synthetic data alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// `images_background/<alphabet>/characterNN/NNNN_DD.png` and `images_evaluation/...`:
    /// grey glyphs as Omniglot has them.
    Omniglot,
    /// `train/<class>/<class>_NNNN.png`, `val/...`, `test/...`: RGB images, one folder per class.
    Folders,
}

/// Omniglot as published: 1623 characters, 964 of them in 30 background alphabets and 659 in
/// 20 evaluation alphabets.
pub const OMNIGLOT_CHARACTERS: u32 = 1623;
const OMNIGLOT_BACKGROUND_CHARACTERS: u32 = 964;
const OMNIGLOT_BACKGROUND_ALPHABETS: u32 = 30;
const OMNIGLOT_EVALUATION_CHARACTERS: u32 = 659;
const OMNIGLOT_EVALUATION_ALPHABETS: u32 = 20;
/// mini-ImageNet's split of its 100 classes.
pub const FOLDERS_CLASSES: u32 = 100;
const FOLDERS_VAL_PER_100: u32 = 16;
const FOLDERS_TEST_PER_100: u32 = 20;
/// Classes per style group in the folders layout: Omniglot's mean alphabet size.
const FOLDERS_CLASSES_PER_GROUP: u32 = 32;

/// One split's top-level folder and how many classes and alphabets it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    pub name: &'static str,
    pub classes: u32,
    pub alphabets: u32,
}

/// One class (an Omniglot character) and the folder its images go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Class {
    /// 0-based, across all splits: the key of the class's shape.
    pub index: u32,
    /// 0-based, across all splits: the key of the style the class shares with its alphabet.
    pub alphabet: u32,
    /// Relative to the output directory.
    pub dir: PathBuf,
}

/// Every split and class of one layout at given counts.
#[derive(Clone, Debug)]
pub struct Plan {
    pub layout: Layout,
    pub splits: Vec<Split>,
    pub classes: Vec<Class>,
    pub instances: u32,
}

impl Plan {
    /// The plan for `classes` classes of `instances` images each; the counts must have passed
    /// the argument checks (at least one class per split).
    pub fn new(layout: Layout, classes: u32, instances: u32) -> Self {
        let splits = match layout {
            Layout::Omniglot => {
                let background = round_div(
                    classes * OMNIGLOT_BACKGROUND_CHARACTERS,
                    OMNIGLOT_CHARACTERS,
                )
                .clamp(1, classes - 1);
                let evaluation = classes - background;
                // Alphabet counts follow each half's own mean alphabet size, so that the
                // published counts come out exactly at the default size.
                vec![
                    Split {
                        name: "images_background",
                        classes: background,
                        alphabets: round_div(
                            background * OMNIGLOT_BACKGROUND_ALPHABETS,
                            OMNIGLOT_BACKGROUND_CHARACTERS,
                        )
                        .max(1),
                    },
                    Split {
                        name: "images_evaluation",
                        classes: evaluation,
                        alphabets: round_div(
                            evaluation * OMNIGLOT_EVALUATION_ALPHABETS,
                            OMNIGLOT_EVALUATION_CHARACTERS,
                        )
                        .max(1),
                    },
                ]
            }
            Layout::Folders => {
                let val = round_div(classes * FOLDERS_VAL_PER_100, 100).max(1);
                let test = round_div(classes * FOLDERS_TEST_PER_100, 100).max(1);
                [
                    ("train", classes - val - test),
                    ("val", val),
                    ("test", test),
                ]
                .into_iter()
                .map(|(name, classes)| Split {
                    name,
                    classes,
                    alphabets: round_div(classes, FOLDERS_CLASSES_PER_GROUP).max(1),
                })
                .collect()
            }
        };
        let mut all = Vec::with_capacity(classes as usize);
        let mut first_alphabet = 0;
        for split in &splits {
            for (alphabet, members) in even_shares(split.classes, split.alphabets).enumerate() {
                let alphabet = first_alphabet + alphabet as u32;
                for member in 0..members {
                    let index = all.len() as u32;
                    let dir = match layout {
                        Layout::Omniglot => PathBuf::from(split.name)
                            .join(format!("Synthetic_Alphabet_{:02}", alphabet + 1))
                            .join(format!("character{:02}", member + 1)),
                        Layout::Folders => PathBuf::from(split.name).join(folder_class_name(index)),
                    };
                    all.push(Class {
                        index,
                        alphabet,
                        dir,
                    });
                }
            }
            first_alphabet += split.alphabets;
        }
        Plan {
            layout,
            splits,
            classes: all,
            instances,
        }
    }

    /// The path of one image relative to the output directory (`instance` is 0-based).
    pub fn image_path(&self, class: &Class, instance: u32) -> PathBuf {
        let name = match self.layout {
            Layout::Omniglot => format!("{:04}_{:02}.png", class.index + 1, instance + 1),
            Layout::Folders => {
                format!("{}_{:04}.png", folder_class_name(class.index), instance + 1)
            }
        };
        class.dir.join(name)
    }

    pub fn images(&self) -> u64 {
        self.classes.len() as u64 * u64::from(self.instances)
    }
}

/// A folders-layout class name: a letter and digits, like mini-ImageNet's WordNet ids.
fn folder_class_name(index: u32) -> String {
    format!("synth{:04}", index + 1)
}

/// `total` split into `parts` counts that differ by at most one, the larger first.
fn even_shares(total: u32, parts: u32) -> impl Iterator<Item = u32> {
    (0..parts).map(move |part| total / parts + u32::from(part < total % parts))
}

fn round_div(numerator: u32, denominator: u32) -> u32 {
    (numerator + denominator / 2) / denominator
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(plan: &Plan) -> Vec<String> {
        plan.classes
            .iter()
            .flat_map(|class| (0..plan.instances).map(move |i| plan.image_path(class, i)))
            .map(|path| path.display().to_string())
            .collect()
    }

    fn split_counts(plan: &Plan) -> Vec<(&'static str, u32, u32)> {
        plan.splits
            .iter()
            .map(|split| (split.name, split.classes, split.alphabets))
            .collect()
    }

    #[test]
    fn the_default_omniglot_layout_has_omniglots_counts_and_names() {
        let plan = Plan::new(Layout::Omniglot, OMNIGLOT_CHARACTERS, 20);
        assert_eq!(
            split_counts(&plan),
            [
                ("images_background", 964, 30),
                ("images_evaluation", 659, 20)
            ]
        );
        assert_eq!(plan.images(), 32_460);
        let paths = paths(&plan);
        assert_eq!(paths.len(), 32_460);
        assert_eq!(
            paths[0],
            "images_background/Synthetic_Alphabet_01/character01/0001_01.png"
        );
        assert_eq!(
            paths[19],
            "images_background/Synthetic_Alphabet_01/character01/0001_20.png"
        );
        // 964 = 30 × 32 + 4: the first four background alphabets have 33 characters.
        assert_eq!(
            paths[33 * 20],
            "images_background/Synthetic_Alphabet_02/character01/0034_01.png"
        );
        assert_eq!(
            paths[964 * 20],
            "images_evaluation/Synthetic_Alphabet_31/character01/0965_01.png"
        );
        // 659 = 20 × 32 + 19: every evaluation alphabet but the last has 33.
        assert_eq!(
            paths.last().map(String::as_str),
            Some("images_evaluation/Synthetic_Alphabet_50/character32/1623_20.png")
        );
        let unique: std::collections::HashSet<_> = paths.iter().collect();
        assert_eq!(unique.len(), paths.len());
    }

    #[test]
    fn smaller_omniglot_layouts_keep_alphabet_sizes_and_the_split_proportion() {
        let plan = Plan::new(Layout::Omniglot, 200, 20);
        assert_eq!(
            split_counts(&plan),
            [("images_background", 119, 4), ("images_evaluation", 81, 2)]
        );
        assert_eq!(plan.classes.len(), 200);
        assert_eq!(plan.classes.last().map(|c| c.alphabet), Some(5));
        // Even the smallest has an alphabet in each half.
        let plan = Plan::new(Layout::Omniglot, 2, 1);
        assert_eq!(
            split_counts(&plan),
            [("images_background", 1, 1), ("images_evaluation", 1, 1)]
        );
        assert_eq!(
            paths(&plan),
            [
                "images_background/Synthetic_Alphabet_01/character01/0001_01.png",
                "images_evaluation/Synthetic_Alphabet_02/character01/0002_01.png",
            ]
        );
    }

    #[test]
    fn the_folders_layout_splits_like_mini_imagenet() {
        let plan = Plan::new(Layout::Folders, FOLDERS_CLASSES, 600);
        assert_eq!(
            split_counts(&plan),
            [("train", 64, 2), ("val", 16, 1), ("test", 20, 1)]
        );
        assert_eq!(plan.images(), 60_000);
        let paths = paths(&plan);
        assert_eq!(paths[0], "train/synth0001/synth0001_0001.png");
        assert_eq!(paths[599], "train/synth0001/synth0001_0600.png");
        assert_eq!(paths[64 * 600], "val/synth0065/synth0065_0001.png");
        assert_eq!(
            paths.last().map(String::as_str),
            Some("test/synth0100/synth0100_0600.png")
        );
        // Style groups never straddle splits.
        let groups = |split: &str| -> std::collections::BTreeSet<u32> {
            plan.classes
                .iter()
                .filter(|c| c.dir.starts_with(split))
                .map(|c| c.alphabet)
                .collect()
        };
        assert_eq!(groups("train"), [0, 1].into());
        assert_eq!(groups("val"), [2].into());
        assert_eq!(groups("test"), [3].into());
    }

    #[test]
    fn smaller_folders_layouts_keep_a_class_in_every_split() {
        let plan = Plan::new(Layout::Folders, 3, 2);
        assert_eq!(
            split_counts(&plan),
            [("train", 1, 1), ("val", 1, 1), ("test", 1, 1)]
        );
        assert_eq!(
            paths(&plan),
            [
                "train/synth0001/synth0001_0001.png",
                "train/synth0001/synth0001_0002.png",
                "val/synth0002/synth0002_0001.png",
                "val/synth0002/synth0002_0002.png",
                "test/synth0003/synth0003_0001.png",
                "test/synth0003/synth0003_0002.png",
            ]
        );
        let plan = Plan::new(Layout::Folders, 30, 1);
        assert_eq!(
            split_counts(&plan),
            [("train", 19, 1), ("val", 5, 1), ("test", 6, 1)]
        );
    }

    #[test]
    fn even_shares_add_up_and_differ_by_at_most_one() {
        let shares: Vec<u32> = even_shares(964, 30).collect();
        assert_eq!(shares.iter().sum::<u32>(), 964);
        assert_eq!(shares.iter().filter(|&&s| s == 33).count(), 4);
        assert_eq!(shares.iter().filter(|&&s| s == 32).count(), 26);
    }
}
