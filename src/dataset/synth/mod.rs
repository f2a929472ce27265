//! `outerloop dataset synth`: its arguments and their checks, and writing every image of a
//! layout with a few threads.

mod glyph;
mod keyed_rng;
mod layout;
mod palette;
mod raster;
mod render;

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{bail, Context};

use layout::{Layout, Plan, FOLDERS_CLASSES, OMNIGLOT_CHARACTERS};
use render::ClassArt;

/// Threads that draw and write images. Files do not depend on it.
const THREADS: usize = 2;

/// `outerloop dataset synth`
#[derive(clap::Args, Debug)]
pub struct SynthArgs {
    /// Directory to write into; created if missing.
    #[arg(long)]
    out: PathBuf,
    /// Which published on-disk layout to write.
    #[arg(long, value_enum, default_value_t = Layout::Omniglot)]
    layout: Layout,
    /// Classes (Omniglot: characters): 2..=9999 for omniglot, 3..=9999 for folders
    /// [default: 1623 for omniglot, 100 for folders].
    #[arg(long, value_name = "N", allow_negative_numbers = true,
          value_parser = whole_number::<u32>("2..=9999 (omniglot) or 3..=9999 (folders)"))]
    classes: Option<u32>,
    /// Images per class (Omniglot: drawers): 1..=99 for omniglot, 1..=9999 for folders
    /// [default: 20 for omniglot, 600 for folders].
    #[arg(long, value_name = "K", allow_negative_numbers = true,
          value_parser = whole_number::<u32>("1..=99 (omniglot) or 1..=9999 (folders)"))]
    instances: Option<u32>,
    /// Any whole number: every image is a function of the seed and its place in the layout.
    #[arg(long, value_name = "S", default_value_t = 0, allow_negative_numbers = true,
          value_parser = whole_number::<u64>("0..=18446744073709551615"))]
    seed: u64,
    /// Side of the square images in pixels: 16..=1024 [default: 105 for omniglot, 84 for
    /// folders].
    #[arg(long, value_name = "PX", allow_negative_numbers = true,
          value_parser = whole_number::<u32>("16..=1024"))]
    image_size: Option<u32>,
    /// Write into a non-empty --out, replacing the layout's split folders there
    /// (images_background/ and images_evaluation/, or train/, val/ and test/).
    #[arg(long)]
    force: bool,
}

/// A parser of whole numbers whose error says what is allowed (clap's own would only say
/// "invalid digit found in string"); the ranges themselves are checked in `settings`.
fn whole_number<T: std::str::FromStr>(
    allowed: &'static str,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static {
    move |text| {
        text.parse()
            .map_err(|_| format!("expected a whole number in {allowed}"))
    }
}

/// Checked arguments: everything that decides the files' contents.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Settings {
    layout: Layout,
    classes: u32,
    instances: u32,
    seed: u64,
    image_size: u32,
}

/// What a layout allows and defaults to.
struct Limits {
    name: &'static str,
    classes: RangeInclusive<u32>,
    default_classes: u32,
    instances: RangeInclusive<u32>,
    default_instances: u32,
    default_image_size: u32,
}

impl Limits {
    // Least counts give every split a class; the most keep the published names' digit
    // counts: four-digit class numbers, two-digit Omniglot drawer numbers, four-digit
    // folders-layout image numbers.
    fn of(layout: Layout) -> Self {
        match layout {
            Layout::Omniglot => Limits {
                name: "omniglot",
                classes: 2..=9999,
                default_classes: OMNIGLOT_CHARACTERS,
                instances: 1..=99,
                default_instances: 20,
                default_image_size: 105,
            },
            Layout::Folders => Limits {
                name: "folders",
                classes: 3..=9999,
                default_classes: FOLDERS_CLASSES,
                instances: 1..=9999,
                default_instances: 600,
                default_image_size: 84,
            },
        }
    }
}

/// Small enough to rasterise the pen (about a pixel wide at 16), large enough for any learner.
const IMAGE_SIZES: RangeInclusive<u32> = 16..=1024;

impl SynthArgs {
    fn settings(&self) -> anyhow::Result<Settings> {
        let limits = Limits::of(self.layout);
        let layout = limits.name;
        let classes = self.classes.unwrap_or(limits.default_classes);
        if !limits.classes.contains(&classes) {
            bail!(
                "--classes must be in {:?} for the {layout} layout, got {classes}",
                limits.classes
            );
        }
        let instances = self.instances.unwrap_or(limits.default_instances);
        if !limits.instances.contains(&instances) {
            bail!(
                "--instances must be in {:?} for the {layout} layout, got {instances}",
                limits.instances
            );
        }
        let image_size = self.image_size.unwrap_or(limits.default_image_size);
        if !IMAGE_SIZES.contains(&image_size) {
            bail!("--image-size must be in {IMAGE_SIZES:?} pixels, got {image_size}");
        }
        Ok(Settings {
            layout: self.layout,
            classes,
            instances,
            seed: self.seed,
            image_size,
        })
    }
}

pub fn run(args: SynthArgs) -> anyhow::Result<ExitCode> {
    let settings = args.settings()?;
    let plan = Plan::new(settings.layout, settings.classes, settings.instances);
    prepare_out(&args.out, &plan, args.force)?;
    let started = Instant::now();
    generate(&args.out, &settings, &plan, THREADS)?;
    let seconds = started.elapsed().as_secs_f64();
    let (class_word, instance_word, colour) = match settings.layout {
        Layout::Omniglot => ("characters", "drawers", "grey"),
        Layout::Folders => ("classes", "instances", "RGB"),
    };
    println!(
        "wrote {} images to {} in {seconds:.1} s: {} {class_word} × {} {instance_word}, \
         {px}×{px} {colour} PNG, seed {}",
        plan.images(),
        args.out.display(),
        settings.classes,
        settings.instances,
        settings.seed,
        px = settings.image_size,
    );
    for split in &plan.splits {
        let groups = match settings.layout {
            Layout::Omniglot => format!(" in {} alphabets", split.alphabets),
            Layout::Folders => String::new(),
        };
        println!(
            "  {}: {} {class_word}{groups}",
            args.out.join(split.name).display(),
            split.classes,
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Refuses a non-empty `out` unless `force`, in which case the layout's split folders there
/// are removed: stale classes from an earlier, larger generation would otherwise mix in.
fn prepare_out(out: &Path, plan: &Plan, force: bool) -> anyhow::Result<()> {
    if out.exists() {
        if !out.is_dir() {
            bail!("--out {} exists and is not a directory", out.display());
        }
        let mut entries = std::fs::read_dir(out)
            .with_context(|| format!("cannot read --out {}", out.display()))?;
        if entries.next().is_some() {
            if !force {
                bail!(
                    "--out {} exists and is not empty; pass --force to replace its {}",
                    out.display(),
                    split_names(plan)
                );
            }
            for split in &plan.splits {
                let dir = out.join(split.name);
                if dir.exists() {
                    std::fs::remove_dir_all(&dir)
                        .with_context(|| format!("cannot remove {}", dir.display()))?;
                }
            }
        }
    }
    Ok(())
}

/// "a/ and b/", "a/, b/ and c/".
fn split_names(plan: &Plan) -> String {
    let names: Vec<String> = plan.splits.iter().map(|s| format!("{}/", s.name)).collect();
    match names.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// Writes every image of `plan` under `out` with `threads` threads, each taking the next
/// class not yet taken. Every file is a function of the settings and its place alone.
fn generate(out: &Path, settings: &Settings, plan: &Plan, threads: usize) -> anyhow::Result<()> {
    for class in &plan.classes {
        let dir = out.join(&class.dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let next_class = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let write_classes = || -> anyhow::Result<()> {
        while !failed.load(Ordering::Relaxed) {
            let Some(class) = plan.classes.get(next_class.fetch_add(1, Ordering::Relaxed)) else {
                break;
            };
            let art = ClassArt::new(settings.seed, settings.layout, settings.image_size, class);
            for instance in 0..plan.instances {
                let path = out.join(plan.image_path(class, instance));
                let written = art
                    .png(instance)
                    .and_then(|png| Ok(std::fs::write(&path, png)?))
                    .with_context(|| format!("cannot write {}", path.display()));
                if written.is_err() {
                    // The other threads stop at their next class rather than write on.
                    failed.store(true, Ordering::Relaxed);
                }
                written?;
            }
        }
        Ok(())
    };
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads).map(|_| scope.spawn(write_classes)).collect();
        // Join every thread before reporting, and report the first error in thread order.
        let results: Vec<anyhow::Result<()>> = workers
            .into_iter()
            .map(|worker| match worker.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect();
        results.into_iter().collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Command {
        #[command(flatten)]
        args: SynthArgs,
    }

    fn parse(flags: &[&str]) -> SynthArgs {
        let argv = std::iter::once("synth").chain(flags.iter().copied());
        match Command::try_parse_from(argv) {
            Ok(command) => command.args,
            Err(e) => panic!("{flags:?} did not parse: {e}"),
        }
    }

    fn settings_error(flags: &[&str]) -> String {
        match parse(flags).settings() {
            Ok(settings) => panic!("{flags:?} was accepted as {settings:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// Every file under `dir`, by relative path, with its bytes.
    fn files(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
        let mut found = std::collections::BTreeMap::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(current) = pending.pop() {
            for entry in std::fs::read_dir(&current).expect("readable") {
                let path = entry.expect("an entry").path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    let bytes = std::fs::read(&path).expect("readable");
                    found.insert(path.strip_prefix(dir).expect("inside").to_path_buf(), bytes);
                }
            }
        }
        found
    }

    #[test]
    fn defaults_follow_the_layout() {
        let omniglot = parse(&["--out", "x"]).settings().expect("valid");
        assert_eq!(
            omniglot,
            Settings {
                layout: Layout::Omniglot,
                classes: 1623,
                instances: 20,
                seed: 0,
                image_size: 105
            }
        );
        let folders = parse(&["--out", "x", "--layout", "folders"])
            .settings()
            .expect("valid");
        assert_eq!(
            (folders.classes, folders.instances, folders.image_size),
            (100, 600, 84)
        );
    }

    #[test]
    fn bad_values_are_refused_naming_the_flag_and_the_range() {
        let error = settings_error(&["--out", "x", "--classes", "1"]);
        assert!(error.contains("--classes must be in 2..=9999"), "{error}");
        let error = settings_error(&["--out", "x", "--layout", "folders", "--classes", "2"]);
        assert!(error.contains("--classes must be in 3..=9999"), "{error}");
        let error = settings_error(&["--out", "x", "--instances", "100"]);
        assert!(error.contains("--instances must be in 1..=99"), "{error}");
        let error = settings_error(&["--out", "x", "--instances", "0"]);
        assert!(error.contains("--instances must be in 1..=99"), "{error}");
        let error = settings_error(&["--out", "x", "--image-size", "8"]);
        assert!(
            error.contains("--image-size must be in 16..=1024"),
            "{error}"
        );
        // What is not a number at all clap refuses, naming the flag.
        let Err(error) = Command::try_parse_from(["synth", "--out", "x", "--classes", "many"])
        else {
            panic!("a word parsed as a count");
        };
        assert!(error.to_string().contains("--classes"), "{error}");
        let Err(error) = Command::try_parse_from(["synth", "--out", "x", "--layout", "tiles"])
        else {
            panic!("an unknown layout parsed");
        };
        assert!(error.to_string().contains("omniglot, folders"), "{error}");
    }

    #[test]
    fn a_non_empty_out_is_refused_without_force_and_its_splits_replaced_with_it() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let plan = Plan::new(Layout::Omniglot, 2, 1);
        let stale = dir.path().join("images_background/stale.png");
        std::fs::create_dir_all(stale.parent().expect("a parent")).expect("created");
        std::fs::write(&stale, b"old").expect("written");
        std::fs::write(dir.path().join("README"), b"mine").expect("written");
        let error = prepare_out(dir.path(), &plan, false)
            .expect_err("refused")
            .to_string();
        assert!(
            error.contains("pass --force to replace its images_background/ and images_evaluation/"),
            "{error}"
        );
        prepare_out(dir.path(), &plan, true).expect("allowed");
        assert!(!stale.exists());
        assert!(dir.path().join("README").exists());
        prepare_out(&dir.path().join("new"), &plan, false).expect("a missing --out is fine");
    }

    #[test]
    fn generation_is_byte_identical_whatever_the_threading() {
        for layout in [Layout::Omniglot, Layout::Folders] {
            let settings = Settings {
                layout,
                classes: 12,
                instances: 3,
                seed: 5,
                image_size: 40,
            };
            let plan = Plan::new(layout, settings.classes, settings.instances);
            let one = tempfile::tempdir().expect("a temporary directory");
            let two = tempfile::tempdir().expect("a temporary directory");
            generate(one.path(), &settings, &plan, 1).expect("generated");
            generate(two.path(), &settings, &plan, 3).expect("generated");
            let (one, two) = (files(one.path()), files(two.path()));
            assert_eq!(one.len(), 36);
            assert!(one == two, "{layout:?}: the files differ between runs");
            let decoded = image::load_from_memory(&one[&plan.image_path(&plan.classes[0], 0)])
                .expect("a PNG");
            assert_eq!((decoded.width(), decoded.height()), (40, 40));
            let expected = match layout {
                Layout::Omniglot => image::ColorType::L8,
                Layout::Folders => image::ColorType::Rgb8,
            };
            assert_eq!(decoded.color(), expected);
        }
    }

    #[test]
    fn another_seed_gives_other_images() {
        let plan = Plan::new(Layout::Omniglot, 2, 1);
        let art = |seed| ClassArt::new(seed, Layout::Omniglot, 105, &plan.classes[0]).pixels(0);
        assert_ne!(art(0), art(1));
    }
}
