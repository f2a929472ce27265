//! Drawing strokes with a round pen into an anti-aliased ink-coverage buffer.

use std::ops::{Add, Mul, Sub};

/// A point in the plane: in frame units (0 to 1 across the image) while a glyph is shaped,
/// in pixels once drawn, where pixel (x, y) covers [x, x+1) × [y, y+1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub x: f32,
    pub y: f32,
}

impl Point {
    pub const fn new(x: f32, y: f32) -> Self {
        Point { x, y }
    }

    pub fn dot(self, other: Point) -> f32 {
        self.x * other.x + self.y * other.y
    }

    pub fn length(self) -> f32 {
        self.dot(self).sqrt()
    }
}

impl Add for Point {
    type Output = Point;
    fn add(self, other: Point) -> Point {
        Point::new(self.x + other.x, self.y + other.y)
    }
}

impl Sub for Point {
    type Output = Point;
    fn sub(self, other: Point) -> Point {
        Point::new(self.x - other.x, self.y - other.y)
    }
}

impl Mul<f32> for Point {
    type Output = Point;
    fn mul(self, factor: f32) -> Point {
        Point::new(self.x * factor, self.y * factor)
    }
}

/// How much ink covers each pixel of a square image: 0 (bare paper) to 1 (fully inked).
pub struct Coverage {
    size: usize,
    ink: Vec<f32>,
}

impl Coverage {
    pub fn new(size: usize) -> Self {
        Coverage {
            size,
            ink: vec![0.0; size * size],
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Row-major coverage, `size × size` values.
    pub fn ink(&self) -> &[f32] {
        &self.ink
    }

    /// Draws a pen of `radius` pixels along the polyline `path` (in pixels).
    ///
    /// Each segment is a capsule whose coverage falls from 1 to 0 across the pixel at its
    /// edge, which anti-aliases the outline. Overlaps keep the larger coverage rather than
    /// adding up, so that crossings and the joints between segments stay as dark as the rest
    /// of the stroke instead of blotting.
    pub fn draw_stroke(&mut self, path: &[Point], radius: f32) {
        match path {
            [] => {}
            [dot] => self.draw_segment(*dot, *dot, radius),
            _ => {
                for pair in path.windows(2) {
                    self.draw_segment(pair[0], pair[1], radius);
                }
            }
        }
    }

    fn draw_segment(&mut self, a: Point, b: Point, radius: f32) {
        let reach = radius + 0.5;
        let (Some(xs), Some(ys)) = (
            self.pixel_span(a.x.min(b.x) - reach, a.x.max(b.x) + reach),
            self.pixel_span(a.y.min(b.y) - reach, a.y.max(b.y) + reach),
        ) else {
            return;
        };
        let along = b - a;
        let length_squared = along.dot(along);
        for y in ys {
            let row = &mut self.ink[y * self.size..(y + 1) * self.size];
            for x in xs.clone() {
                let centre = Point::new(x as f32 + 0.5, y as f32 + 0.5);
                let t = if length_squared > 0.0 {
                    ((centre - a).dot(along) / length_squared).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let distance = (centre - (a + along * t)).length();
                let cover = (reach - distance).clamp(0.0, 1.0);
                if cover > row[x] {
                    row[x] = cover;
                }
            }
        }
    }

    /// The pixel indices whose centres can lie in [low, high], or None if none is in the image.
    fn pixel_span(&self, low: f32, high: f32) -> Option<std::ops::Range<usize>> {
        let first = low.floor().max(0.0);
        let end = (high.ceil() + 1.0).min(self.size as f32);
        (first < end).then_some(first as usize..end as usize)
    }

    /// Black ink on white paper, one byte per pixel.
    pub fn to_grey(&self) -> Vec<u8> {
        self.ink
            .iter()
            .map(|&cover| (255.0 * (1.0 - cover)).round() as u8)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_horizontal_stroke_inks_its_band_fully_and_the_rest_not_at_all() {
        let mut canvas = Coverage::new(20);
        canvas.draw_stroke(&[Point::new(4.0, 10.25), Point::new(16.0, 10.25)], 2.0);
        let at = |x: usize, y: usize| canvas.ink()[y * 20 + x];
        assert_eq!(at(10, 9), 1.0);
        assert_eq!(at(10, 10), 1.0);
        assert_eq!(at(10, 7), 0.0);
        assert_eq!(at(0, 10), 0.0);
        // Edge pixels are covered by the part of them inside the pen: anti-aliasing.
        assert_eq!(at(10, 8), 0.75);
        assert_eq!(at(10, 12), 0.25);
        // Round caps reach past the end points by the radius.
        assert!(at(17, 10) > 0.0);
    }

    #[test]
    fn strokes_running_off_the_image_are_clipped_not_a_panic() {
        let mut canvas = Coverage::new(8);
        canvas.draw_stroke(&[Point::new(-20.0, -20.0), Point::new(30.0, 30.0)], 3.0);
        canvas.draw_stroke(&[Point::new(100.0, 100.0)], 3.0);
        assert!(canvas.ink().iter().any(|&c| c > 0.0));
        let grey = canvas.to_grey();
        assert_eq!(grey.len(), 64);
        assert!(grey.contains(&0) && grey.contains(&255));
    }
}
