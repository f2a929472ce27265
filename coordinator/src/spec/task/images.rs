//! `family = "images"`: N-way K-shot classification episodes on a dataset that every worker reads from its own disk.

use outerloop_proto::dataset::Layout;
use serde::Serialize;

use super::RawTask;
use crate::spec::error::{out_of_range, Invalid};

/// Most classes per episode, and most images per class in an episode.
const MAX_WAYS: u32 = 1000;
const MAX_PER_CLASS: u32 = 1000;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ImagesSpec {
    /// The directory under each worker's `--data-root`; never a path.
    pub dataset: String,
    pub layout: Layout,
    /// Classes per episode (N).
    pub ways: u32,
    /// Support images per class (K).
    pub shots: u32,
    /// Query images per class.
    pub queries: u32,
    /// Images are resized to `image_size x image_size`.
    pub image_size: u32,
    /// 1 (grey) or 3 (RGB).
    pub channels: u32,
    /// Each class's images rotated by 90, 180 and 270 degrees are classes of their own.
    pub rotations: bool,
    /// The version of the dataset the experiment uses, pinned when it is submitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// Whether `name` can only name a directory directly under `--data-root`.
pub(crate) fn is_plain_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !name.contains("..")
}

impl ImagesSpec {
    pub(super) fn resolve(raw: &RawTask) -> Result<ImagesSpec, Invalid> {
        raw.only(
            "images",
            &[
                "dataset",
                "layout",
                "ways",
                "image_size",
                "channels",
                "rotations",
                "fingerprint",
            ],
        )?;
        let Some(dataset) = raw.dataset.clone() else {
            return Err((
                "task.dataset".into(),
                "required by family \"images\": the dataset's directory name under each worker's --data-root, e.g. \"omniglot\"".into(),
            ));
        };
        if !is_plain_name(&dataset) {
            return Err((
                "task.dataset".into(),
                format!("{dataset:?} is not a dataset name: it must be a directory name directly under each worker's --data-root (letters, digits, '.', '_' and '-', starting with a letter or digit, no \"..\"); a spec never names a path"),
            ));
        }
        // Omniglot's defaults are the papers' (28x28 grey, rotations as new classes); any
        // other dataset is a class-folder one at mini-ImageNet's 84x84 RGB by default.
        let layout = raw.layout.unwrap_or(if dataset == "omniglot" {
            Layout::Omniglot
        } else {
            Layout::Folders
        });
        let omniglot = layout == Layout::Omniglot;
        let Some(ways) = raw.ways else {
            return Err((
                "task.ways".into(),
                "required by family \"images\": classes per episode (N of N-way)".into(),
            ));
        };
        let spec = ImagesSpec {
            dataset,
            layout,
            ways,
            shots: raw.shots,
            queries: raw.queries,
            image_size: raw.image_size.unwrap_or(if omniglot { 28 } else { 84 }),
            channels: raw.channels.unwrap_or(if omniglot { 1 } else { 3 }),
            rotations: raw.rotations.unwrap_or(omniglot),
            fingerprint: raw.fingerprint.clone(),
        };
        spec.validate()?;
        Ok(spec)
    }

    fn validate(&self) -> Result<(), Invalid> {
        if !(2..=MAX_WAYS).contains(&self.ways) {
            return Err(out_of_range(
                "task.ways",
                self.ways,
                &format!("must be between 2 and {MAX_WAYS}"),
            ));
        }
        for (path, n) in [("task.shots", self.shots), ("task.queries", self.queries)] {
            if !(1..=MAX_PER_CLASS).contains(&n) {
                return Err(out_of_range(
                    path,
                    n,
                    &format!("must be between 1 and {MAX_PER_CLASS}"),
                ));
            }
        }
        if !(1..=1024).contains(&self.image_size) {
            return Err(out_of_range(
                "task.image_size",
                self.image_size,
                "must be between 1 and 1024 pixels",
            ));
        }
        if ![1, 3].contains(&self.channels) {
            return Err(out_of_range(
                "task.channels",
                self.channels,
                "must be 1 (grey) or 3 (RGB)",
            ));
        }
        if let Some(f) = &self.fingerprint {
            if f.is_empty() || !f.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(out_of_range(
                    "task.fingerprint",
                    f,
                    "must be a dataset fingerprint in hexadecimal, as `outerloop workers` shows it",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::is_plain_name;

    #[test]
    fn dataset_names_cannot_leave_the_data_root() {
        for good in ["omniglot", "mini-imagenet", "tiered_imagenet.v2", "A1"] {
            assert!(is_plain_name(good), "{good}");
        }
        for bad in [
            "", "../etc", "..", "a/b", "/abs", ".hidden", "a..b", "a\\b", "sp ace",
        ] {
            assert!(!is_plain_name(bad), "{bad}");
        }
    }
}
