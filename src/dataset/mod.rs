//! `outerloop dataset`: tools for the datasets workers read (generating the synthetic benchmark data).

use std::process::ExitCode;

/// `outerloop dataset ...`
#[derive(clap::Args)]
pub struct DatasetArgs {
    #[command(subcommand)]
    command: DatasetCommand,
}

#[derive(clap::Subcommand)]
enum DatasetCommand {}

pub fn run(args: DatasetArgs) -> anyhow::Result<ExitCode> {
    match args.command {}
}
