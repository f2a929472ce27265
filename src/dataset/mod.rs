//! `outerloop dataset`: tools for the datasets workers read (generating the synthetic benchmark data, measuring a baseline).

mod baseline;
mod shapes;
mod synth;
mod table;

use std::process::ExitCode;

/// `outerloop dataset ...`
#[derive(clap::Args)]
pub struct DatasetArgs {
    #[command(subcommand)]
    command: DatasetCommand,
}

#[derive(clap::Subcommand)]
enum DatasetCommand {
    /// Generate a synthetic few-shot image dataset (procedurally drawn glyphs) as PNG files in
    /// Omniglot's layout or the class-per-folder layout of mini-ImageNet.
    Synth(synth::SynthArgs),
    /// Generate a synthetic multi-task table (regression, 3-class and multi-label tasks on a
    /// shared latent) as CSV, for table experiments (`kind = "mtl"`, `family = "table"`).
    Table(table::TableArgs),
    /// Generate a synthetic multi-task image table (noisy 16x16 pictures of four shapes; tasks
    /// shape, size, position) as CSV with a column per pixel, for conv4 shared layers.
    Shapes(shapes::ShapesArgs),
    /// Measure the raw-pixel nearest-neighbour accuracy of a dataset's few-shot episodes, the
    /// floor a meta-learner must clearly beat.
    Baseline(baseline::BaselineArgs),
}

pub fn run(args: DatasetArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        DatasetCommand::Synth(args) => synth::run(args),
        DatasetCommand::Baseline(args) => baseline::run(args),
        DatasetCommand::Table(args) => table::run(args),
        DatasetCommand::Shapes(args) => shapes::run(args),
    }
}
