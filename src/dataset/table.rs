//! `outerloop dataset table`: a synthetic multi-task table (regression, classification and multi-label tasks on one shared latent) written as CSV, for tests and demos of table experiments.

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `outerloop dataset table`
#[derive(clap::Args)]
pub struct TableArgs {
    /// The dataset's directory (its name is the directory's); created if missing. A worker
    /// whose --data-root holds it reads it as the table dataset of that name.
    #[arg(long)]
    out: PathBuf,
    /// Rows: 10..=10000000.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(10..=10_000_000))]
    rows: u64,
    /// Every value is a function of the seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Numeric features, and the width of the latent every task reads.
const FEATURES: usize = 8;
const LATENT: usize = 6;
/// The categorical feature's levels.
const REGIONS: [&str; 4] = ["north", "south", "east", "west"];
const SEGMENTS: [&str; 3] = ["budget", "standard", "premium"];
const TAGS: [&str; 3] = ["tag_a", "tag_b", "tag_c"];

pub fn run(args: TableArgs) -> anyhow::Result<ExitCode> {
    fs::create_dir_all(&args.out)?;
    let path = args.out.join("data.csv");
    fs::write(&path, generate(args.rows, args.seed))?;
    println!(
        "wrote {} rows to {} (tasks: price regression, segment 3-class, tags {} labels; split column `split`)",
        args.rows,
        path.display(),
        TAGS.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// The table as CSV text: features `x0..x7` and `region`, targets `price`, `segment` and
/// `tag_a..tag_c`, and `split` (80% train, 10% val, 10% test, drawn per row). Every target is
/// a function of one latent `tanh(A x + b[region])` plus noise, so the tasks share what
/// there is to learn: the case hard parameter sharing is for.
pub fn generate(rows: u64, seed: u64) -> String {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut normal = |rng: &mut ChaCha8Rng| {
        let (u1, u2): (f64, f64) = (rng.random(), rng.random());
        (-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    };
    let matrix = |rng: &mut ChaCha8Rng,
                  rows: usize,
                  cols: usize,
                  normal: &mut dyn FnMut(&mut ChaCha8Rng) -> f64| {
        (0..rows * cols).map(|_| normal(rng)).collect::<Vec<f64>>()
    };
    let a = matrix(&mut rng, LATENT, FEATURES, &mut normal);
    let region_shift = matrix(&mut rng, REGIONS.len(), LATENT, &mut normal);
    let price = matrix(&mut rng, 1, LATENT, &mut normal);
    let segment = matrix(&mut rng, SEGMENTS.len(), LATENT, &mut normal);
    let tags = matrix(&mut rng, TAGS.len(), LATENT, &mut normal);
    let dot = |w: &[f64], h: &[f64]| w.iter().zip(h).map(|(w, h)| w * h).sum::<f64>();

    let mut csv = String::new();
    let header: Vec<String> = (0..FEATURES)
        .map(|i| format!("x{i}"))
        .chain(["region", "price", "segment"].map(String::from))
        .chain(TAGS.map(String::from))
        .chain(["split".to_string()])
        .collect();
    csv.push_str(&header.join(","));
    csv.push('\n');
    for _ in 0..rows {
        let x: Vec<f64> = (0..FEATURES).map(|_| normal(&mut rng)).collect();
        let region = rng.random_range(0..REGIONS.len());
        let h: Vec<f64> = (0..LATENT)
            .map(|j| {
                let pre = dot(&a[j * FEATURES..(j + 1) * FEATURES], &x) / (FEATURES as f64).sqrt();
                (pre + region_shift[region * LATENT + j]).tanh()
            })
            .collect();
        let y = 10.0 * dot(&price, &h) + 0.5 * normal(&mut rng);
        let logits: Vec<f64> = (0..SEGMENTS.len())
            .map(|k| 2.0 * dot(&segment[k * LATENT..(k + 1) * LATENT], &h) + 0.5 * normal(&mut rng))
            .collect();
        let class = (0..SEGMENTS.len())
            .max_by(|&i, &j| logits[i].total_cmp(&logits[j]))
            .expect("three segments");
        for value in &x {
            write!(csv, "{value:.5},").expect("writing to a String");
        }
        write!(csv, "{},{y:.4},{}", REGIONS[region], SEGMENTS[class]).expect("writing to a String");
        for k in 0..TAGS.len() {
            let z = 2.0 * dot(&tags[k * LATENT..(k + 1) * LATENT], &h) + 0.3 * normal(&mut rng);
            write!(csv, ",{}", u8::from(z > 0.0)).expect("writing to a String");
        }
        let split = match rng.random::<f64>() {
            u if u < 0.8 => "train",
            u if u < 0.9 => "val",
            _ => "test",
        };
        writeln!(csv, ",{split}").expect("writing to a String");
    }
    csv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_a_function_of_its_seed_with_every_column_filled() {
        let text = generate(200, 5);
        assert_eq!(text, generate(200, 5));
        assert_ne!(text, generate(200, 6));
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!(header.len(), FEATURES + 1 + 2 + TAGS.len() + 1);
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
        assert_eq!(rows.len(), 200);
        assert!(rows
            .iter()
            .all(|r| r.len() == header.len() && r.iter().all(|v| !v.is_empty())));
        // Every class, label value and split occurs: the tasks are not degenerate.
        let column = |name: &str| {
            let i = header.iter().position(|h| *h == name).unwrap();
            rows.iter()
                .map(|r| r[i])
                .collect::<std::collections::BTreeSet<_>>()
        };
        assert_eq!(column("segment").len(), 3);
        assert_eq!(column("split").len(), 3);
        assert!(TAGS.iter().all(|t| column(t).len() == 2));
    }
}
