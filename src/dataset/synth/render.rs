//! One image: a class's character as one drawer draws it, in its layout's colours, as PNG.

use anyhow::Context;
use image::{ExtendedColorType, ImageEncoder};

use super::glyph::{AlphabetStyle, Character};
use super::keyed_rng::{keyed_rng, Purpose};
use super::layout::{Class, Layout};
use super::palette::Palette;
use super::raster::Coverage;

/// What every image of one class shares, computed once per class: its character.
pub struct ClassArt {
    seed: u64,
    index: u32,
    size: u32,
    character: Character,
    layout: Layout,
}

impl ClassArt {
    pub fn new(seed: u64, layout: Layout, size: u32, class: &Class) -> Self {
        let index = u64::from(class.index);
        let style = AlphabetStyle::random(&mut keyed_rng(
            seed,
            Purpose::AlphabetStyle,
            &[u64::from(class.alphabet)],
        ));
        let character = Character::random(
            &style,
            &mut keyed_rng(seed, Purpose::CharacterShape, &[index]),
        );
        ClassArt {
            seed,
            index: class.index,
            size,
            character,
            layout,
        }
    }

    /// Row-major pixels of one instance (0-based): one grey byte each, or three for RGB.
    pub fn pixels(&self, instance: u32) -> Vec<u8> {
        let key = [u64::from(self.index), u64::from(instance)];
        let drawing = self.character.draw(
            self.size,
            &mut keyed_rng(self.seed, Purpose::InstanceJitter, &key),
        );
        let mut coverage = Coverage::new(self.size as usize);
        for stroke in &drawing.strokes {
            coverage.draw_stroke(stroke, drawing.pen_radius);
        }
        match self.layout {
            // Black ink on white paper, as Omniglot's scans are.
            Layout::Omniglot => coverage.to_grey(),
            Layout::Folders => {
                Palette::random(&mut keyed_rng(self.seed, Purpose::ImagePalette, &key))
                    .paint(&coverage)
            }
        }
    }

    pub fn png(&self, instance: u32) -> anyhow::Result<Vec<u8>> {
        let colour = match self.layout {
            Layout::Omniglot => ExtendedColorType::L8,
            Layout::Folders => ExtendedColorType::Rgb8,
        };
        let mut png = Vec::new();
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(&self.pixels(instance), self.size, self.size, colour)
            .context("cannot encode a PNG")?;
        Ok(png)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::synth::layout::Plan;

    /// Mean Euclidean distance between the grey pixels of every pair drawn from `a` and `b`
    /// (pairs of distinct images only when they are the same set).
    fn mean_distance(a: &[Vec<u8>], b: &[Vec<u8>], same: bool) -> f64 {
        let mut total = 0.0;
        let mut pairs = 0;
        for (i, x) in a.iter().enumerate() {
            for (j, y) in b.iter().enumerate() {
                if same && i >= j {
                    continue;
                }
                let squared: f64 = x
                    .iter()
                    .zip(y)
                    .map(|(&p, &q)| (f64::from(p) - f64::from(q)).powi(2))
                    .sum();
                total += squared.sqrt();
                pairs += 1;
            }
        }
        total / f64::from(pairs)
    }

    #[test]
    fn a_characters_instances_differ_but_resemble_each_other_more_than_its_alphabets_others() {
        let plan = Plan::new(Layout::Omniglot, 200, 6);
        let alphabets = plan.splits.iter().map(|split| split.alphabets).sum::<u32>();
        for alphabet in 0..alphabets {
            let instances: Vec<Vec<Vec<u8>>> = plan
                .classes
                .iter()
                .filter(|class| class.alphabet == alphabet)
                .take(8)
                .map(|class| {
                    // At the resolution few-shot learners read, where pixel distance means
                    // something; at full size thin strokes rarely overlap at all.
                    let art = ClassArt::new(0, Layout::Omniglot, 28, class);
                    (0..plan.instances).map(|i| art.pixels(i)).collect()
                })
                .collect();
            for character in &instances {
                for (i, a) in character.iter().enumerate() {
                    for b in &character[i + 1..] {
                        assert_ne!(a, b, "two drawers drew the very same image");
                    }
                }
            }
            let mut within = 0.0;
            let mut between = 0.0;
            for (i, character) in instances.iter().enumerate() {
                within += mean_distance(character, character, true);
                for other in &instances[i + 1..] {
                    between += mean_distance(character, other, false);
                }
            }
            let n = instances.len() as f64;
            let (within, between) = (within / n, between / (n * (n - 1.0) / 2.0));
            assert!(
                within < 0.95 * between,
                "alphabet {alphabet}: the same character's drawings are {within:.0} apart on \
                 average, other characters' {between:.0}"
            );
        }
    }

    /// Mean colour of an RGB image's pixels.
    fn mean_colour(rgb: &[u8]) -> [f64; 3] {
        let pixels = (rgb.len() / 3) as f64;
        std::array::from_fn(|c| {
            rgb.iter()
                .skip(c)
                .step_by(3)
                .map(|&v| f64::from(v))
                .sum::<f64>()
                / pixels
        })
    }

    #[test]
    fn a_folders_images_colours_say_nothing_about_its_class() {
        let plan = Plan::new(Layout::Folders, 30, 8);
        let colours: Vec<Vec<[f64; 3]>> = plan
            .classes
            .iter()
            .map(|class| {
                let art = ClassArt::new(0, Layout::Folders, 28, class);
                (0..plan.instances)
                    .map(|i| mean_colour(&art.pixels(i)))
                    .collect()
            })
            .collect();
        let distance = |a: &[f64; 3], b: &[f64; 3]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let (mut within, mut within_pairs, mut between, mut between_pairs) = (0.0, 0, 0.0, 0);
        for (i, class) in colours.iter().enumerate() {
            for (j, a) in class.iter().enumerate() {
                for b in &class[j + 1..] {
                    within += distance(a, b);
                    within_pairs += 1;
                }
                for other in &colours[i + 1..] {
                    for b in other {
                        between += distance(a, b);
                        between_pairs += 1;
                    }
                }
            }
        }
        let (within, between) = (within / within_pairs as f64, between / between_pairs as f64);
        // With a palette per class, images of one class were seven times closer in colour.
        assert!(
            within > 0.85 * between,
            "images of one class are {within:.1} apart in mean colour, of different classes \
             {between:.1}"
        );
    }

    #[test]
    fn folders_images_are_rgb_and_omniglot_images_black_on_white() {
        let plan = Plan::new(Layout::Omniglot, 2, 1);
        let grey = ClassArt::new(0, Layout::Omniglot, 50, &plan.classes[0]).pixels(0);
        assert_eq!(grey.len(), 50 * 50);
        assert!(grey.contains(&0) && grey.contains(&255));
        let rgb = ClassArt::new(0, Layout::Folders, 50, &plan.classes[0]).pixels(0);
        assert_eq!(rgb.len(), 50 * 50 * 3);
    }
}
