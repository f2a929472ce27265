//! Few-shot image classification episodes, made from the worker's local copy of a dataset.

mod decode;
mod scan;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use outerloop_proto::dataset::Layout;
use outerloop_proto::work::{Episode, ImageFamily, Task, TaskDescriptor};
use tch::{Device, Kind, Tensor};

pub use decode::{decode, ImageCache};
pub use scan::{DataRoot, LocalDataset};

use super::{TaskBatch, TaskSource};
use crate::objective::Objective;

/// Episodes of one dataset at one image size.
pub struct EpisodeSource {
    dataset: Arc<LocalDataset>,
    size: u32,
    channels: u32,
    /// Omniglot's strokes are black on white; inverted (`1 - p/255`) they become 1 on 0, as in
    /// MAML's and learn2learn's pipelines. Other images are `p/255`.
    invert: bool,
    cache: Rc<RefCell<ImageCache>>,
}

impl EpisodeSource {
    /// The source of `family`'s episodes, or why this worker cannot make them.
    pub fn new(
        family: &ImageFamily,
        data: &DataRoot,
        cache: Rc<RefCell<ImageCache>>,
    ) -> Result<EpisodeSource, String> {
        if let Some(refusal) = data.refusal(&family.dataset, &family.fingerprint) {
            return Err(refusal);
        }
        let dataset = Arc::new(data.datasets[&family.dataset].clone());
        if dataset.manifest.layout == Layout::Table {
            return Err(format!(
                "dataset `{}` is a table, not an image dataset",
                family.dataset
            ));
        }
        Ok(EpisodeSource {
            invert: dataset.manifest.layout == Layout::Omniglot,
            dataset,
            size: family.image_size,
            channels: family.channels,
            cache,
        })
    }

    /// The pixels of one image as floats in `[0, 1]`, rotated by `quarter_turns`.
    fn image(
        &self,
        class: u32,
        instance: u32,
        quarter_turns: u32,
        out: &mut Vec<f32>,
    ) -> Result<(), String> {
        let path = self
            .dataset
            .files
            .get(class as usize)
            .and_then(|files| files.get(instance as usize))
            .ok_or_else(|| {
                format!(
                    "dataset `{}` has no image {instance} of class {class}",
                    self.dataset.manifest.name
                )
            })?;
        let pixels = self
            .cache
            .borrow_mut()
            .get(path, self.size, self.channels)?;
        let pixels = decode::rotate(&pixels, self.size as usize, quarter_turns);
        let scale = 1.0 / 255.0;
        if self.invert {
            out.extend(pixels.iter().map(|&p| 1.0 - p as f32 * scale));
        } else {
            out.extend(pixels.iter().map(|&p| p as f32 * scale));
        }
        Ok(())
    }
}

fn episode(d: &TaskDescriptor) -> Result<&Episode, String> {
    match &d.task {
        Task::Episode(e) => Ok(e),
        _ => Err(format!("task {} is not a classification episode", d.index)),
    }
}

impl TaskSource for EpisodeSource {
    /// Support images `[tasks, ways * shots, channels, size, size]` and labels
    /// `[tasks, ways * shots]` (class-major: way 0's shots first), and likewise the queries.
    /// Label `i` is the episode's `i`-th class.
    fn materialise(
        &self,
        tasks: &[TaskDescriptor],
        kind: Kind,
        device: Device,
    ) -> Result<TaskBatch, String> {
        let episodes = tasks.iter().map(episode).collect::<Result<Vec<_>, _>>()?;
        let first = episodes.first().ok_or("a chunk without tasks")?;
        let (ways, shots, queries) = (first.classes.len(), first.shots, first.queries);
        if let Some(e) = episodes
            .iter()
            .find(|e| (e.classes.len(), e.shots, e.queries) != (ways, shots, queries))
        {
            return Err(format!(
                "the episodes of a chunk differ in shape: {ways}-way {shots}-shot {queries}-query and {}-way {}-shot {}-query",
                e.classes.len(), e.shots, e.queries
            ));
        }
        let per_class = (shots + queries) as usize;
        let (mut support, mut query) = (Vec::new(), Vec::new());
        let (mut support_labels, mut query_labels) = (Vec::new(), Vec::new());
        for e in &episodes {
            if e.instances.len() != ways * per_class {
                return Err(format!(
                    "an episode lists {} instances for {ways} classes of {per_class}",
                    e.instances.len()
                ));
            }
            for (label, &class) in e.classes.iter().enumerate() {
                let turns = e.rotations.get(label).copied().unwrap_or(0) as u32;
                let instances = &e.instances[label * per_class..(label + 1) * per_class];
                for (i, &instance) in instances.iter().enumerate() {
                    let (pixels, labels) = if i < shots as usize {
                        (&mut support, &mut support_labels)
                    } else {
                        (&mut query, &mut query_labels)
                    };
                    self.image(class, instance, turns, pixels)?;
                    labels.push(label as i64);
                }
            }
        }
        let (t, s) = (episodes.len() as i64, self.size as i64);
        let images = |pixels: &[f32], per_task: usize| {
            let x =
                Tensor::from_slice(pixels).view([t, per_task as i64, self.channels as i64, s, s]);
            let x = if kind == Kind::Float {
                x
            } else {
                x.to_kind(kind)
            };
            x.to_device(device)
        };
        let labels = |labels: &[i64]| Tensor::from_slice(labels).view([t, -1]).to_device(device);
        Ok(TaskBatch {
            support_x: images(&support, ways * shots as usize),
            support_y: labels(&support_labels),
            query_x: images(&query, ways * queries as usize),
            query_y: labels(&query_labels),
        })
    }

    fn objective(&self) -> Objective {
        Objective::CrossEntropy
    }
}
