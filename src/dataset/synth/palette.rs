//! The folders layout's colours: each class's ink and textured paper, and each instance's
//! small shifts of colour, brightness and texture phase.

use std::f32::consts::TAU;

use rand::Rng;

use super::raster::{Coverage, Point};

type Rgb = [f32; 3];

/// Least luminance difference between ink and either paper colour.
const MIN_CONTRAST: f32 = 0.3;

/// The pattern of a class's paper, as a blend weight between its two paper colours.
#[derive(Clone, Debug)]
enum Texture {
    Stripes { direction: Point, period: f32 },
    Checks { direction: Point, period: f32 },
    Rings { centre: Point, period: f32 },
}

impl Texture {
    /// The blend weight (0 to 1) at `p` in frame units, with the pattern moved by `phase`
    /// (a fraction of its period).
    fn weight(&self, p: Point, phase: f32) -> f32 {
        let wave = |distance: f32, period: f32| (TAU * (distance / period + phase)).sin();
        let value = match *self {
            Texture::Stripes { direction, period } => wave(p.dot(direction), period),
            Texture::Checks { direction, period } => {
                let across = Point::new(-direction.y, direction.x);
                wave(p.dot(direction), period) * wave(p.dot(across), period)
            }
            Texture::Rings { centre, period } => wave((p - centre).length(), period),
        };
        0.5 + 0.5 * value
    }
}

/// What every image of a class shares: ink colour, paper colours and paper texture.
#[derive(Clone, Debug)]
pub struct ClassPalette {
    ink: Rgb,
    paper: Rgb,
    paper_alternate: Rgb,
    texture: Texture,
}

impl ClassPalette {
    pub fn random(rng: &mut impl Rng) -> Self {
        // Light paper with dark ink or dark paper with light ink, redrawn until the glyph
        // stands out in luminance (value alone does not ensure it: saturated blue is dark).
        loop {
            let palette = Self::candidate(rng);
            let ink = luminance(palette.ink);
            if [palette.paper, palette.paper_alternate]
                .iter()
                .all(|&paper| (luminance(paper) - ink).abs() >= MIN_CONTRAST)
            {
                return palette;
            }
        }
    }

    fn candidate(rng: &mut impl Rng) -> Self {
        let (paper_value, ink_value) = if rng.random_bool(0.5) {
            (rng.random_range(0.7..0.95f32), rng.random_range(0.05..0.35))
        } else {
            (rng.random_range(0.15..0.35), rng.random_range(0.75..1.0))
        };
        let paper_hue: f32 = rng.random_range(0.0..1.0);
        let paper_saturation = rng.random_range(0.15..0.6);
        let alternate_hue = (paper_hue + rng.random_range(-0.08..0.08)).rem_euclid(1.0);
        let alternate_value = (paper_value + rng.random_range(-0.15..0.15)).clamp(0.0, 1.0);
        let angle = rng.random_range(0.0..TAU);
        let direction = Point::new(angle.cos(), angle.sin());
        let period = rng.random_range(0.08..0.3);
        let texture = match rng.random_range(0..3) {
            0 => Texture::Stripes { direction, period },
            1 => Texture::Checks { direction, period },
            _ => Texture::Rings {
                centre: Point::new(rng.random_range(0.0..1.0), rng.random_range(0.0..1.0)),
                period,
            },
        };
        ClassPalette {
            ink: hsv(
                rng.random_range(0.0..1.0),
                rng.random_range(0.4..1.0),
                ink_value,
            ),
            paper: hsv(paper_hue, paper_saturation, paper_value),
            paper_alternate: hsv(alternate_hue, paper_saturation, alternate_value),
            texture,
        }
    }

    /// RGB bytes of the glyph in `coverage` on this class's paper, with one instance's colour
    /// jitter drawn from `rng`.
    pub fn paint(&self, coverage: &Coverage, rng: &mut impl Rng) -> Vec<u8> {
        let brightness = rng.random_range(0.9..1.1);
        let tint: Rgb = std::array::from_fn(|_| rng.random_range(-0.04..0.04));
        let phase = rng.random_range(0.0..1.0);
        let size = coverage.size();
        let mut bytes = Vec::with_capacity(size * size * 3);
        for (i, &cover) in coverage.ink().iter().enumerate() {
            let p = Point::new(
                ((i % size) as f32 + 0.5) / size as f32,
                ((i / size) as f32 + 0.5) / size as f32,
            );
            let blend = self.texture.weight(p, phase);
            let channels = self.paper.iter().zip(&self.paper_alternate).zip(&self.ink);
            for (((&paper, &alternate), &ink), &tint) in channels.zip(&tint) {
                let colour = mix(mix(paper, alternate, blend), ink, cover);
                let shifted = (colour * brightness + tint).clamp(0.0, 1.0);
                bytes.push((shifted * 255.0).round() as u8);
            }
        }
        bytes
    }
}

/// Perceived brightness (Rec. 601 weights).
fn luminance(colour: Rgb) -> f32 {
    0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
}

fn mix(a: f32, b: f32, t: f32) -> f32 {
    a + (b - a) * t
}

/// Hue, saturation and value (all 0 to 1) to RGB.
fn hsv(hue: f32, saturation: f32, value: f32) -> Rgb {
    let sector = hue * 6.0;
    let channel = |offset: f32| {
        let k = (offset + sector).rem_euclid(6.0);
        value - value * saturation * k.min(4.0 - k).clamp(0.0, 1.0)
    };
    [channel(5.0), channel(3.0), channel(1.0)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::synth::keyed_rng::{keyed_rng, Purpose};

    #[test]
    fn hsv_gives_the_primaries_and_greys() {
        assert_eq!(hsv(0.0, 1.0, 1.0), [1.0, 0.0, 0.0]);
        assert_eq!(hsv(1.0 / 3.0, 1.0, 1.0), [0.0, 1.0, 0.0]);
        assert_eq!(hsv(2.0 / 3.0, 1.0, 1.0), [0.0, 0.0, 1.0]);
        assert_eq!(hsv(0.4, 0.0, 0.5), [0.5, 0.5, 0.5]);
    }

    #[test]
    fn the_ink_stands_out_from_the_paper() {
        for class in 0..100 {
            let palette = ClassPalette::random(&mut keyed_rng(3, Purpose::ClassPalette, &[class]));
            let ink = luminance(palette.ink);
            for paper in [palette.paper, palette.paper_alternate] {
                assert!(
                    (ink - luminance(paper)).abs() >= MIN_CONTRAST,
                    "{palette:?}"
                );
            }
        }
    }
}
