//! `outerloop dataset baseline`: the raw-pixel nearest-neighbour accuracy of a dataset's episodes, the floor a meta-learner must clearly beat.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use outerloop_coordinator::sampling::{EpisodeSampler, Sampler, Split};
use outerloop_coordinator::spec::{EpisodeShape, ImagesSpec};
use outerloop_coordinator::stats::MeanCi;
use outerloop_proto::dataset::Layout;
use outerloop_proto::work::ImageFamily;
use outerloop_worker::data::{DataRoot, EpisodeSource, ImageCache, TaskSource};
use serde_json::json;
use tch::{Device, Kind, Tensor};

/// `outerloop dataset baseline`
#[derive(clap::Args, Debug)]
pub struct BaselineArgs {
    /// The directory holding the dataset (what workers get as --data-root).
    #[arg(long, value_name = "DIR")]
    data_root: PathBuf,
    /// The dataset's directory name under --data-root.
    #[arg(long, default_value = "omniglot")]
    dataset: String,
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..=1000))]
    ways: u32,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    shots: u32,
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..=1000))]
    queries: u32,
    /// Episodes to average over.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(2..=1_000_000))]
    episodes: u32,
    /// Which meta-split the episodes come from.
    #[arg(long, value_enum, default_value_t = SplitArg::Test)]
    split: SplitArg,
    /// Seeds the episodes (the same as an experiment's `seed` gives its own final evaluation's).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object instead of a sentence.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum SplitArg {
    Train,
    Val,
    Test,
}

/// Episodes classified per batch of tensors.
const BATCH: u32 = 100;

pub fn run(args: BaselineArgs) -> anyhow::Result<ExitCode> {
    let data = DataRoot::scan(&args.data_root)
        .with_context(|| format!("cannot read {}", args.data_root.display()))?;
    let Some(dataset) = data.datasets.get(&args.dataset) else {
        bail!(
            "no dataset `{}` under {} (found: {})",
            args.dataset,
            args.data_root.display(),
            data.datasets.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    };
    let manifest = &dataset.manifest;
    let omniglot = manifest.layout == Layout::Omniglot;
    // The pixels an experiment's model would see with the layout's defaults.
    let task = ImagesSpec {
        dataset: args.dataset.clone(),
        layout: manifest.layout,
        ways: args.ways,
        shots: args.shots,
        queries: args.queries,
        image_size: if omniglot { 28 } else { 84 },
        channels: if omniglot { 1 } else { 3 },
        rotations: omniglot,
        fingerprint: Some(manifest.fingerprint.clone()),
    };
    let shape = EpisodeShape {
        ways: args.ways,
        shots: args.shots,
        queries: args.queries,
    };
    let sampler = EpisodeSampler::new(args.seed, &task, manifest, shape, shape);
    let family = ImageFamily {
        dataset: args.dataset.clone(),
        layout: manifest.layout,
        fingerprint: manifest.fingerprint.clone(),
        image_size: task.image_size,
        channels: task.channels,
    };
    let source =
        EpisodeSource::new(&family, &data, ImageCache::shared()).map_err(anyhow::Error::msg)?;
    let split = match args.split {
        SplitArg::Train => Split::Train,
        SplitArg::Val => Split::Eval,
        SplitArg::Test => Split::Final,
    };
    let mut accuracies = Vec::with_capacity(args.episodes as usize);
    for start in (0..args.episodes).step_by(BATCH as usize) {
        let end = (start + BATCH).min(args.episodes);
        let episodes: Vec<_> = (start..end)
            .map(|i| sampler.draw(split, 0, i as u64))
            .collect();
        let batch = source
            .materialise(&episodes, Kind::Float, Device::Cpu)
            .map_err(anyhow::Error::msg)?;
        accuracies.extend(nearest_neighbour_accuracy(
            &batch.support_x,
            &batch.support_y,
            &batch.query_x,
            &batch.query_y,
        ));
    }
    let summary = MeanCi::of(&accuracies);
    if args.json {
        println!(
            "{}",
            json!({"dataset": args.dataset, "ways": args.ways, "shots": args.shots,
                   "queries": args.queries, "episodes": args.episodes,
                   "accuracy_mean": summary.mean, "accuracy_ci95": summary.ci95})
        );
    } else {
        println!(
            "raw-pixel nearest neighbour on {} {}-way {}-shot episodes of `{}` ({} {} per class): accuracy {:.2}% ± {:.2}% (95% CI)",
            args.episodes,
            args.ways,
            args.shots,
            args.dataset,
            args.queries,
            if args.queries == 1 { "query" } else { "queries" },
            100.0 * summary.mean,
            100.0 * summary.ci95
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Each episode's accuracy when a query takes the label of the support image nearest to it
/// in Euclidean distance over raw pixels.
fn nearest_neighbour_accuracy(
    support: &Tensor,
    support_labels: &Tensor,
    query: &Tensor,
    query_labels: &Tensor,
) -> Vec<f32> {
    let support = support.flatten(2, -1);
    let query = query.flatten(2, -1);
    let nearest = Tensor::cdist(&query, &support, 2.0, None).argmin(-1, false);
    let predicted = support_labels.gather(1, &nearest, false);
    let accuracy = predicted
        .eq_tensor(query_labels)
        .to_kind(Kind::Float)
        .mean_dim(1, false, None);
    Vec::<f32>::try_from(accuracy).expect("a float vector")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_take_the_label_of_the_nearest_support_image() {
        // One episode, two classes at 0 and 10 on a line; queries at 1 (class 0), 9 and 4.
        let support = Tensor::from_slice(&[0.0f32, 10.0]).view([1, 2, 1]);
        let labels = Tensor::from_slice(&[0i64, 1]).view([1, 2]);
        let query = Tensor::from_slice(&[1.0f32, 9.0, 4.0]).view([1, 3, 1]);
        let truth = Tensor::from_slice(&[0i64, 1, 1]).view([1, 3]);
        let accuracy = nearest_neighbour_accuracy(&support, &labels, &query, &truth);
        assert!((accuracy[0] - 2.0 / 3.0).abs() < 1e-6, "{accuracy:?}");
    }
}
