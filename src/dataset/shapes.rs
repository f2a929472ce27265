//! `outerloop dataset shapes`: a synthetic multi-task image table (a shape's class, size and position, from noisy 16x16 pictures) written as CSV with one column per pixel, or with a column naming each picture's PNG file, for conv4 shared layers.

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
    /// Write each picture as a greyscale PNG under `images/` and name it in an `image`
    /// column, instead of one column per pixel (the layout of CelebA-style image tables).
    #[arg(long)]
    images: bool,
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
    let pictures = Pictures::draw(args.rows, args.seed);
    let inputs = if args.images {
        let dir = args.out.join("images");
        fs::create_dir_all(&dir)?;
        for (index, pixels) in pictures.pixels.iter().enumerate() {
            fs::write(dir.join(image_name(index)), png(pixels)?)?;
        }
        "an `image` column naming images/NNNNN.png".to_string()
    } else {
        format!("pixel columns p0..p{}", SIZE * SIZE - 1)
    };
    fs::write(&path, pictures.csv(args.images))?;
    println!(
        "wrote {} {SIZE}x{SIZE} pictures to {} ({inputs}; tasks: shape {}-class, size and position regression; split column `split`)",
        args.rows,
        path.display(),
        SHAPES.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// A picture's file under `images/`.
fn image_name(index: usize) -> String {
    format!("{index:05}.png")
}

/// A picture as an 8-bit greyscale PNG: its values in [0, 1] (clamped) times 255.
fn png(pixels: &[f64]) -> anyhow::Result<Vec<u8>> {
    use image::{ExtendedColorType, ImageEncoder};
    let bytes: Vec<u8> = pixels
        .iter()
        .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png).write_image(
        &bytes,
        SIZE as u32,
        SIZE as u32,
        ExtendedColorType::L8,
    )?;
    Ok(png)
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

/// The pictures and their targets, each row a function of the seed.
struct Pictures {
    /// Row-major `SIZE x SIZE` values: 1 on the shape, 0 off it, plus noise.
    pixels: Vec<Vec<f64>>,
    /// The rest of each row's CSV line: `shape,size,x,y,split`.
    labels: Vec<String>,
}

impl Pictures {
    /// `rows` pictures: a shape (four kinds) of half-extent `size` centred at (`x`, `y`) in
    /// pixels, and a split (80% train, 10% val, 10% test), drawn per row.
    fn draw(rows: u64, seed: u64) -> Pictures {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut pixels, mut labels) = (Vec::new(), Vec::new());
        for _ in 0..rows {
            let shape = rng.random_range(0..SHAPES.len());
            let r: f64 = rng.random_range(2.5..6.0);
            let (cx, cy): (f64, f64) = (
                rng.random_range(r..SIZE as f64 - 1.0 - r),
                rng.random_range(r..SIZE as f64 - 1.0 - r),
            );
            let mut picture = Vec::with_capacity(SIZE * SIZE);
            for py in 0..SIZE {
                for px in 0..SIZE {
                    let on = inside(shape, px as f64 - cx, py as f64 - cy, r);
                    let (u1, u2): (f64, f64) = (rng.random(), rng.random());
                    let noise =
                        (-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                    picture.push(f64::from(u8::from(on)) + NOISE * noise);
                }
            }
            let split = match rng.random::<f64>() {
                u if u < 0.8 => "train",
                u if u < 0.9 => "val",
                _ => "test",
            };
            pixels.push(picture);
            labels.push(format!("{},{r:.4},{cx:.4},{cy:.4},{split}", SHAPES[shape]));
        }
        Pictures { pixels, labels }
    }

    /// The table as CSV text: the inputs (pixels `p0..p255` row-major, or `image`, the
    /// picture's file), then `shape` (text), `size` (the half-extent in pixels), `x` and `y`
    /// (the centre, in pixels) and `split`.
    fn csv(&self, images: bool) -> String {
        let inputs: Vec<String> = if images {
            vec!["image".into()]
        } else {
            (0..SIZE * SIZE).map(|i| format!("p{i}")).collect()
        };
        let mut csv = inputs.join(",") + ",shape,size,x,y,split\n";
        for (index, (pixels, labels)) in self.pixels.iter().zip(&self.labels).enumerate() {
            if images {
                write!(csv, "images/{},", image_name(index)).expect("writing to a String");
            } else {
                for value in pixels {
                    write!(csv, "{value:.5},").expect("writing to a String");
                }
            }
            writeln!(csv, "{labels}").expect("writing to a String");
        }
        csv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pictures_are_a_function_of_the_seed_and_each_shape_is_drawn_where_it_says() {
        let generate = |rows, seed| Pictures::draw(rows, seed).csv(false);
        let text = generate(40, 3);
        assert_eq!(text, generate(40, 3));
        assert_ne!(text, generate(40, 4));
        // The image layout names a file where the pixels were, and keeps the rest.
        let named = Pictures::draw(40, 3).csv(true);
        let (first, second) = (text.lines().nth(1).unwrap(), named.lines().nth(1).unwrap());
        assert!(second.starts_with("images/00000.png,"), "{second}");
        assert!(
            first.ends_with(second.split_once(',').unwrap().1),
            "{first}"
        );
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
