//! The stroke model: an alphabet's style, a character's shape in that style, and one drawer's
//! jittered rendition of it.

use std::f32::consts::PI;

use rand::Rng;

use super::raster::Point;

/// Longer side of a character's control-point box before jitter, as a fraction of the frame:
/// room for the largest scale and rotation before the frame fit has to shrink anything.
const GLYPH_EXTENT: f32 = 0.62;
/// Where a character's strokes may start, in frame units before the character is scaled.
const STARTS: std::ops::Range<f32> = 0.2..0.8;
/// How far strokes may wander before they bounce back: well outside the starting area, as a
/// bounce folds a stroke back on itself and should stay rare.
const CANVAS: std::ops::RangeInclusive<f32> = -0.2..=1.2;
/// Least paper between ink and the frame's edge, as a fraction of the frame.
const FRAME_MARGIN: f32 = 0.03;
/// The image size that the pen widths below are given for (Omniglot's).
const REFERENCE_SIZE: f32 = 105.0;
/// Pen width range at the reference size, in pixels; it scales with the image.
const PEN_WIDTH: (f32, f32) = (2.5, 4.5);
const MAX_ROTATION: f32 = 12.0 * PI / 180.0;
const SCALE: (f32, f32) = (0.85, 1.15);
const MAX_SHEAR: f32 = 0.1;
const MAX_TRANSLATION: f32 = 0.08;
/// Standard deviation of the noise on each control point, as a fraction of the frame.
const POINT_NOISE: f32 = 0.02;
/// How far a stroke's end may be pulled back (positive) or pushed on (negative), as a
/// fraction of its end segment.
const END_VARIATION: (f32, f32) = (-0.15, 0.15);
/// Polyline pieces per spline segment: at most this long, in pixels, so curves look smooth.
const SAMPLE_SPACING_PX: f32 = 1.5;

/// What the characters of one alphabet have in common, so that they look alike and telling
/// them apart has to be learned rather than read off gross statistics.
#[derive(Clone, Debug)]
pub struct AlphabetStyle {
    strokes: (u32, u32),
    points_per_stroke: (u32, u32),
    /// Typical distance between consecutive control points, in frame units.
    step: f32,
    /// The directions strokes tend to follow (radians; a stroke may run either way).
    headings: Vec<f32>,
    heading_spread: f32,
    /// Mean turn of a stroke's heading at each control point (radians): its curvature.
    turn: f32,
    turn_spread: f32,
    /// Chance that a stroke turns the other way at every point (wiggles) instead of arcing.
    wiggle: f32,
    /// Chance that a stroke starts on an earlier stroke rather than anywhere.
    attach: f32,
}

impl AlphabetStyle {
    pub fn random(rng: &mut impl Rng) -> Self {
        let min_strokes = rng.random_range(2..=3);
        let max_strokes = rng.random_range(min_strokes + 1..=5);
        let min_points = rng.random_range(3..=4);
        let max_points = rng.random_range(min_points..=5);
        let heading_count = rng.random_range(2..=4);
        AlphabetStyle {
            strokes: (min_strokes, max_strokes),
            points_per_stroke: (min_points, max_points),
            step: rng.random_range(0.14..0.28),
            headings: (0..heading_count)
                .map(|_| rng.random_range(0.0..PI))
                .collect(),
            heading_spread: rng.random_range(0.1..0.35),
            turn: rng.random_range(0.0..1.0),
            turn_spread: rng.random_range(0.1..0.4),
            wiggle: rng.random_range(0.0..1.0),
            attach: rng.random_range(0.3..0.9),
        }
    }
}

/// A character's ideal shape: each stroke's control points, in frame units.
#[derive(Clone, Debug)]
pub struct Character {
    strokes: Vec<Vec<Point>>,
}

/// One drawer's rendition of a character, ready for the pen: paths in pixels.
pub struct Drawing {
    pub strokes: Vec<Vec<Point>>,
    pub pen_radius: f32,
}

impl Character {
    pub fn random(style: &AlphabetStyle, rng: &mut impl Rng) -> Self {
        let stroke_count = rng.random_range(style.strokes.0..=style.strokes.1);
        let mut strokes: Vec<Vec<Point>> = Vec::with_capacity(stroke_count as usize);
        for _ in 0..stroke_count {
            let start = if !strokes.is_empty() && rng.random::<f32>() < style.attach {
                let earlier = &strokes[rng.random_range(0..strokes.len())];
                let i = rng.random_range(0..earlier.len() - 1);
                lerp(earlier[i], earlier[i + 1], rng.random())
            } else {
                Point::new(rng.random_range(STARTS), rng.random_range(STARTS))
            };
            let points = rng.random_range(style.points_per_stroke.0..=style.points_per_stroke.1);
            strokes.push(Self::random_stroke(style, start, points, rng));
        }
        let mut character = Character { strokes };
        character.fit(GLYPH_EXTENT);
        character
    }

    /// A stroke that walks from `start` along one of the style's headings, turning as the
    /// style does at each control point.
    fn random_stroke(
        style: &AlphabetStyle,
        start: Point,
        points: u32,
        rng: &mut impl Rng,
    ) -> Vec<Point> {
        let preferred = style.headings[rng.random_range(0..style.headings.len())];
        let reversed = if rng.random_bool(0.5) { PI } else { 0.0 };
        let mut heading = preferred + reversed + style.heading_spread * gaussian(rng);
        let mut turn = style.turn * if rng.random_bool(0.5) { 1.0 } else { -1.0 }
            + style.turn_spread * gaussian(rng);
        let wiggles = rng.random::<f32>() < style.wiggle;
        let mut stroke = vec![start];
        let mut at = start;
        for _ in 1..points {
            let step = style.step * rng.random_range(0.6..1.4);
            let mut next = at + Point::new(heading.cos(), heading.sin()) * step;
            // Bounce off the canvas edge rather than run far out: a glyph is compact.
            if !CANVAS.contains(&next.x) {
                heading = PI - heading;
                next.x = at.x + heading.cos() * step;
            }
            if !CANVAS.contains(&next.y) {
                heading = -heading;
                next.y = at.y + heading.sin() * step;
            }
            stroke.push(next);
            at = next;
            heading += turn;
            if wiggles {
                turn = -turn;
            }
        }
        stroke
    }

    /// Centres the control points on the frame and scales their box's longer side to `extent`.
    fn fit(&mut self, extent: f32) {
        let (low, high) = bounds(self.strokes.iter().flatten());
        let size = (high - low).x.max((high - low).y).max(1e-3);
        let centre = lerp(low, high, 0.5);
        let mid = Point::new(0.5, 0.5);
        for point in self.strokes.iter_mut().flatten() {
            *point = mid + (*point - centre) * (extent / size);
        }
    }

    /// One drawer's rendition at `size` pixels: the whole glyph moved by a random affine map,
    /// each control point nudged, stroke ends varied, and a pen of its own width.
    pub fn draw(&self, size: u32, rng: &mut impl Rng) -> Drawing {
        let size = size as f32;
        let rotation = rng.random_range(-MAX_ROTATION..MAX_ROTATION);
        let scale = Point::new(
            rng.random_range(SCALE.0..SCALE.1),
            rng.random_range(SCALE.0..SCALE.1),
        );
        let shear = rng.random_range(-MAX_SHEAR..MAX_SHEAR);
        let shift = Point::new(
            rng.random_range(-MAX_TRANSLATION..MAX_TRANSLATION),
            rng.random_range(-MAX_TRANSLATION..MAX_TRANSLATION),
        );
        let pen_width = rng.random_range(PEN_WIDTH.0..PEN_WIDTH.1) * size / REFERENCE_SIZE;
        let (sin, cos) = rotation.sin_cos();
        let mid = Point::new(0.5, 0.5);
        let affine = |p: Point| {
            let p = p - mid;
            let p = Point::new((p.x + shear * p.y) * scale.x, p.y * scale.y);
            mid + Point::new(cos * p.x - sin * p.y, sin * p.x + cos * p.y) + shift
        };
        let mut paths: Vec<Vec<Point>> = self
            .strokes
            .iter()
            .map(|stroke| {
                let mut control: Vec<Point> = stroke
                    .iter()
                    .map(|&p| p + Point::new(gaussian(rng), gaussian(rng)) * POINT_NOISE)
                    .collect();
                vary_end(&mut control, 0, 1, rng);
                let last = control.len() - 1;
                vary_end(&mut control, last, last - 1, rng);
                let control: Vec<Point> = control.into_iter().map(affine).collect();
                catmull_rom(&control, size)
            })
            .collect();
        let pen_radius_frame = pen_width / 2.0 / size;
        keep_in_frame(&mut paths, FRAME_MARGIN + pen_radius_frame);
        for point in paths.iter_mut().flatten() {
            *point = *point * size;
        }
        Drawing {
            strokes: paths,
            pen_radius: pen_width / 2.0,
        }
    }
}

/// Moves the stroke end `end` along the segment towards `inner`: a drawer who starts or
/// stops a little early or late.
fn vary_end(control: &mut [Point], end: usize, inner: usize, rng: &mut impl Rng) {
    let t = rng.random_range(END_VARIATION.0..END_VARIATION.1);
    control[end] = lerp(control[end], control[inner], t);
}

/// A dense polyline through every control point (a uniform Catmull–Rom spline), in the
/// control points' units; `size` converts to pixels only to choose the sampling density.
fn catmull_rom(control: &[Point], size: f32) -> Vec<Point> {
    let n = control.len();
    let at = |i: isize| control[i.clamp(0, n as isize - 1) as usize];
    let mut path = vec![control[0]];
    for i in 0..n as isize - 1 {
        let (p0, p1, p2, p3) = (at(i - 1), at(i), at(i + 1), at(i + 2));
        let pieces = (((p2 - p1).length() * size / SAMPLE_SPACING_PX).ceil() as usize).max(1);
        for k in 1..=pieces {
            let t = k as f32 / pieces as f32;
            let (t2, t3) = (t * t, t * t * t);
            let point = (p1 * 2.0
                + (p2 - p0) * t
                + (p0 * 2.0 - p1 * 5.0 + p2 * 4.0 - p3) * t2
                + (p1 * 3.0 - p0 - p2 * 3.0 + p3) * t3)
                * 0.5;
            path.push(point);
        }
    }
    path
}

/// Shrinks (about its centre) and shifts the drawing so that all of it lies at least
/// `margin` inside the unit frame.
fn keep_in_frame(paths: &mut [Vec<Point>], margin: f32) {
    let (low, high) = bounds(paths.iter().flatten());
    let room = 1.0 - 2.0 * margin;
    let extent = (high - low).x.max((high - low).y);
    let shrink = if extent > room { room / extent } else { 1.0 };
    let centre = lerp(low, high, 0.5);
    let (low, high) = (
        centre + (low - centre) * shrink,
        centre + (high - centre) * shrink,
    );
    let push = |low: f32, high: f32| {
        if low < margin {
            margin - low
        } else if high > 1.0 - margin {
            1.0 - margin - high
        } else {
            0.0
        }
    };
    let shift = Point::new(push(low.x, high.x), push(low.y, high.y));
    for point in paths.iter_mut().flatten() {
        *point = centre + (*point - centre) * shrink + shift;
    }
}

fn bounds<'a>(points: impl Iterator<Item = &'a Point>) -> (Point, Point) {
    points.fold(
        (
            Point::new(f32::INFINITY, f32::INFINITY),
            Point::new(f32::NEG_INFINITY, f32::NEG_INFINITY),
        ),
        |(low, high), p| {
            (
                Point::new(low.x.min(p.x), low.y.min(p.y)),
                Point::new(high.x.max(p.x), high.y.max(p.y)),
            )
        },
    )
}

fn lerp(a: Point, b: Point, t: f32) -> Point {
    a + (b - a) * t
}

/// A standard normal draw (Box–Muller), so as to need no distributions crate.
fn gaussian(rng: &mut impl Rng) -> f32 {
    let u: f32 = 1.0 - rng.random::<f32>(); // in (0, 1]: the logarithm stays finite
    let v: f32 = rng.random();
    (-2.0 * u.ln()).sqrt() * (2.0 * PI * v).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::synth::keyed_rng::{keyed_rng, Purpose};

    fn character(index: u64) -> Character {
        let style = AlphabetStyle::random(&mut keyed_rng(1, Purpose::AlphabetStyle, &[0]));
        Character::random(&style, &mut keyed_rng(1, Purpose::CharacterShape, &[index]))
    }

    #[test]
    fn characters_have_two_to_five_strokes_of_three_to_five_points() {
        for index in 0..200 {
            let character = character(index);
            assert!((2..=5).contains(&character.strokes.len()));
            for stroke in &character.strokes {
                assert!((3..=5).contains(&stroke.len()));
            }
        }
    }

    #[test]
    fn every_drawing_stays_inside_the_frame() {
        for index in 0..200 {
            for size in [28, 105] {
                let drawing = character(index)
                    .draw(size, &mut keyed_rng(1, Purpose::InstanceJitter, &[index]));
                let radius = drawing.pen_radius;
                let (low, high) = bounds(drawing.strokes.iter().flatten());
                assert!(low.x - radius >= 0.0 && low.y - radius >= 0.0, "{low:?}");
                let size = size as f32;
                assert!(
                    high.x + radius <= size && high.y + radius <= size,
                    "{high:?}"
                );
            }
        }
    }

    #[test]
    fn the_spline_passes_through_its_control_points() {
        let control = [
            Point::new(0.1, 0.1),
            Point::new(0.5, 0.3),
            Point::new(0.7, 0.9),
        ];
        let path = catmull_rom(&control, 100.0);
        for point in control {
            assert!(path.iter().any(|p| (*p - point).length() < 1e-5));
        }
        for pair in path.windows(2) {
            assert!((pair[1] - pair[0]).length() * 100.0 <= 2.0 * SAMPLE_SPACING_PX);
        }
    }
}
