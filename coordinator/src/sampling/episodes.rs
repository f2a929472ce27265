//! Few-shot episodes: N classes of a split and K + Q images of each, drawn without replacement from the dataset's manifest.

use std::collections::HashMap;

use outerloop_proto::dataset::Manifest;
use outerloop_proto::work::{Episode, Task, TaskDescriptor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::class_splits::{class_splits, SplitClasses};
use super::{task_key, Sampler, Split};
use crate::spec::{EpisodeShape, ImagesSpec};

/// Draws episodes of an image dataset; never reads an image, only the manifest's counts.
pub struct EpisodeSampler {
    seed: u64,
    rotations: bool,
    /// The classes of the training, validation (periodic evaluations) and test (final
    /// evaluation) splits.
    splits: [SplitClasses; 3],
    shapes: [EpisodeShape; 3],
}

impl EpisodeSampler {
    pub fn new(
        seed: u64,
        task: &ImagesSpec,
        manifest: &Manifest,
        train: EpisodeShape,
        eval: EpisodeShape,
    ) -> Self {
        let splits = class_splits(manifest, task.rotations);
        EpisodeSampler {
            seed,
            rotations: task.rotations,
            splits: [splits.train, splits.validation, splits.test],
            shapes: [train, eval, eval],
        }
    }
}

/// `k` distinct values of `0..n` in random order (a partial Fisher-Yates shuffle that only
/// remembers the positions it swapped, so it costs O(k) whatever `n` is).
fn distinct(rng: &mut ChaCha8Rng, n: u32, k: u32) -> Vec<u32> {
    let mut swapped: HashMap<u32, u32> = HashMap::new();
    (0..k)
        .map(|i| {
            let j = rng.random_range(i..n);
            let at_j = *swapped.get(&j).unwrap_or(&j);
            let at_i = *swapped.get(&i).unwrap_or(&i);
            swapped.insert(j, at_i);
            at_j
        })
        .collect()
}

impl Sampler for EpisodeSampler {
    fn draw(&self, split: Split, step: u64, index: u64) -> TaskDescriptor {
        let mut rng = ChaCha8Rng::seed_from_u64(task_key(self.seed, split, step, index));
        let (classes, shape) = (
            &self.splits[split as usize].classes,
            self.shapes[split as usize],
        );
        let per_class = shape.shots + shape.queries;
        let chosen = distinct(&mut rng, classes.len() as u32, shape.ways);
        let mut episode = Episode {
            classes: Vec::with_capacity(chosen.len()),
            rotations: Vec::new(),
            shots: shape.shots,
            queries: shape.queries,
            instances: Vec::with_capacity((shape.ways * per_class) as usize),
        };
        for c in chosen {
            let class = classes[c as usize];
            episode.classes.push(class.class);
            if self.rotations {
                episode.rotations.push(class.rotation);
            }
            episode
                .instances
                .extend(distinct(&mut rng, class.instances, per_class));
        }
        TaskDescriptor {
            index,
            data_seed: rng.random(),
            task: Task::Episode(episode),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::class_splits::tests::manifest;
    use outerloop_proto::dataset::Layout;

    fn sampler(rotations: bool) -> (EpisodeSampler, Manifest) {
        let m = manifest(Layout::Omniglot, 100, 20);
        let task = ImagesSpec {
            dataset: "omniglot".into(),
            layout: Layout::Omniglot,
            ways: 5,
            shots: 1,
            queries: 3,
            image_size: 28,
            channels: 1,
            rotations,
            fingerprint: None,
        };
        let train = EpisodeShape {
            ways: 5,
            shots: 1,
            queries: 3,
        };
        let eval = EpisodeShape {
            ways: 20,
            shots: 2,
            queries: 1,
        };
        (EpisodeSampler::new(3, &task, &m, train, eval), m)
    }

    fn episode(d: &TaskDescriptor) -> &Episode {
        match &d.task {
            Task::Episode(e) => e,
            _ => panic!("not an episode"),
        }
    }

    #[test]
    fn distinct_draws_are_distinct_and_cover_the_range_uniformly() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut counts = [0u32; 10];
        for _ in 0..10_000 {
            let draw = distinct(&mut rng, 10, 4);
            let mut sorted = draw.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), 4);
            for v in draw {
                counts[v as usize] += 1;
            }
        }
        // Each value is drawn 4000 times in expectation; the standard deviation is about 55.
        assert!(
            counts.iter().all(|&c| (3700..4300).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(distinct(&mut rng, 5, 5).len(), 5);
    }

    #[test]
    fn episodes_are_pure_functions_of_their_coordinate_with_the_splits_shape() {
        let (s, m) = sampler(true);
        let a = s.draw(Split::Train, 4, 2);
        assert_eq!(a, s.draw(Split::Train, 4, 2));
        assert_ne!(a, s.draw(Split::Train, 4, 3));
        let e = episode(&a);
        assert_eq!(
            (e.classes.len(), e.rotations.len(), e.instances.len()),
            (5, 5, 20)
        );
        let mut pairs: Vec<(u32, u8)> = e
            .classes
            .iter()
            .copied()
            .zip(e.rotations.iter().copied())
            .collect();
        pairs.sort();
        pairs.dedup();
        assert_eq!(pairs.len(), 5, "distinct classes");
        for chunk in e.instances.chunks(4) {
            let mut sorted = chunk.to_vec();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), 4, "distinct images of a class");
            assert!(chunk.iter().all(|&i| i < 20));
        }
        let eval = episode(&s.draw(Split::Eval, 0, 0)).clone();
        assert_eq!((eval.classes.len(), eval.shots, eval.queries), (20, 2, 1));

        // Each split draws only its own classes.
        let splits = class_splits(&m, true);
        for (split, classes) in [(Split::Train, &splits.train), (Split::Final, &splits.test)] {
            for index in 0..50 {
                let d = s.draw(split, 1, index);
                let e = episode(&d);
                for (&c, &r) in e.classes.iter().zip(&e.rotations) {
                    assert!(classes
                        .classes
                        .iter()
                        .any(|x| x.class == c && x.rotation == r));
                }
            }
        }
    }

    #[test]
    fn without_rotations_no_rotations_are_sent() {
        let (s, _) = sampler(false);
        assert!(episode(&s.draw(Split::Train, 0, 0)).rotations.is_empty());
    }
}
