//! `outerloop dataset shapes`: a synthetic multi-task image table (a shape's class, size and position, from noisy 16x16 pictures) written as CSV with one column per pixel, for conv4 shared layers.

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `outerloop dataset shapes`
#[derive(clap::Args)]
pub struct ShapesArgs {
    /// The dataset's directory (its name is the directory's); created if missing. A worker
    /// whose --data-root holds it reads it as the table dataset of that name.
    #[arg(long)]
    out: PathBuf,
    /// Rows (pictures): 10..=1000000.
    #[arg(long, default_value_t = 4_000, value_parser = clap::value_parser!(u64).range(10..=1_000_000))]
    rows: u64,
    /// Every value is a function of the seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Side of each square picture, in pixels: conv4's smallest input (16 -> 1 after four pools).
pub const SIZE: usize = 16;
/// The classes of the `shape` task.
const SHAPES: [&str; 4] = ["square", "disc", "triangle", "cross"];
/// Standard deviation of the noise on every pixel; the shape's pixels are 1, the rest 0.
const NOISE: f64 = 0.3;

pub fn run(args: ShapesArgs) -> anyhow::Result<ExitCode> {
    fs::create_dir_all(&args.out)?;
    let path = args.out.join("data.csv");
    fs::write(&path, generate(args.rows, args.seed))?;
    println!(
        "wrote {} {SIZE}x{SIZE} pictures to {} (pixel columns p0..p{}; tasks: shape {}-class, size and position regression; split column `split`)",
        args.rows,
        path.display(),
        SIZE * SIZE - 1,
        SHAPES.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// Whether the pixel at offset `(dx, dy)` from the centre lies in `shape` of half-extent `r`.
fn inside(shape: usize, dx: f64, dy: f64, r: f64) -> bool {
    match shape {
        0 => dx.abs() <= r && dy.abs() <= r,
        1 => dx * dx + dy * dy <= r * r,
        // Apex up: the width grows from 0 at the top to the base.
        2 => dy.abs() <= r && dx.abs() <= (dy + r) / 2.0,
        _ => {
            let arm = r / 3.0;
            (dx.abs() <= arm && dy.abs() <= r) || (dy.abs() <= arm && dx.abs() <= r)
        }
    }
}

/// The table as CSV text: pixels `p0..p255` (row-major), targets `shape` (text), `size` (the
/// half-extent in pixels), `x` and `y` (the centre, in pixels), and `split` (80% train, 10% val,
/// 10% test, drawn per row).
pub fn generate(rows: u64, seed: u64) -> String {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut csv = String::new();
    let header: Vec<String> = (0..SIZE * SIZE)
        .map(|i| format!("p{i}"))
        .chain(["shape", "size", "x", "y", "split"].map(String::from))
        .collect();
    csv.push_str(&header.join(","));
    csv.push('\n');
    for _ in 0..rows {
        let shape = rng.random_range(0..SHAPES.len());
        let r: f64 = rng.random_range(2.5..6.0);
        let (cx, cy): (f64, f64) = (
            rng.random_range(r..SIZE as f64 - 1.0 - r),
            rng.random_range(r..SIZE as f64 - 1.0 - r),
        );
        for py in 0..SIZE {
            for px in 0..SIZE {
                let on = inside(shape, px as f64 - cx, py as f64 - cy, r);
                let (u1, u2): (f64, f64) = (rng.random(), rng.random());
                let noise = (-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                write!(csv, "{:.5},", f64::from(u8::from(on)) + NOISE * noise)
                    .expect("writing to a String");
            }
        }
        let split = match rng.random::<f64>() {
            u if u < 0.8 => "train",
            u if u < 0.9 => "val",
            _ => "test",
        };
        writeln!(csv, "{},{r:.4},{cx:.4},{cy:.4},{split}", SHAPES[shape])
            .expect("writing to a String");
    }
    csv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pictures_are_a_function_of_the_seed_and_each_shape_is_drawn_where_it_says() {
        let text = generate(40, 3);
        assert_eq!(text, generate(40, 3));
        assert_ne!(text, generate(40, 4));
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!(header.len(), SIZE * SIZE + 5);
        for line in lines {
            let cells: Vec<&str> = line.split(',').collect();
            assert_eq!(cells.len(), header.len());
            let pixels: Vec<f64> = cells[..SIZE * SIZE]
                .iter()
                .map(|c| c.parse().unwrap())
                .collect();
            let (cx, cy): (f64, f64) = (
                cells[SIZE * SIZE + 2].parse().unwrap(),
                cells[SIZE * SIZE + 3].parse().unwrap(),
            );
            // The centre pixel is inside every shape: brighter, on average over its
            // neighbourhood, than the picture's corners.
            let at = |x: usize, y: usize| pixels[y * SIZE + x];
            let (x, y) = (cx.round() as usize, cy.round() as usize);
            let centre =
                (at(x, y) + at(x + 1, y) + at(x, y + 1) + at(x - 1, y) + at(x, y - 1)) / 5.0;
            assert!(SHAPES.contains(&cells[SIZE * SIZE]));
            assert!(centre > 0.5, "{line}");
        }
    }

    #[test]
    fn shapes_differ_where_they_should() {
        // The square's corner is in the square and outside the disc; the cross's arm tip is
        // in the cross and outside the triangle's apex.
        assert!(inside(0, 3.9, 3.9, 4.0) && !inside(1, 3.9, 3.9, 4.0));
        assert!(inside(3, 0.0, -4.0, 4.0) && !inside(2, 1.0, -3.9, 4.0));
        assert!(inside(2, 3.9, 4.0, 4.0) && !inside(3, 3.9, 3.9, 4.0));
    }
}
