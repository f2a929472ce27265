//! `family = "sinusoid"`: regression on `y = amplitude * sin(x - phase)` (Finn et al. 2017).

use serde::Serialize;

use super::RawTask;
use crate::spec::error::{out_of_range, Invalid};

/// Most points per task (support or query).
const MAX_POINTS: u32 = 100_000;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SinusoidSpec {
    /// Support points per task (K).
    pub shots: u32,
    /// Query points per task.
    pub queries: u32,
    pub amplitude: [f32; 2],
    pub phase: [f32; 2],
    pub x: [f32; 2],
}

impl SinusoidSpec {
    pub(super) fn resolve(raw: &RawTask) -> Result<SinusoidSpec, Invalid> {
        raw.only("sinusoid", &["amplitude", "phase", "x"])?;
        let spec = SinusoidSpec {
            shots: raw.shots,
            queries: raw.queries,
            amplitude: raw.amplitude.unwrap_or([0.1, 5.0]),
            phase: raw.phase.unwrap_or([0.0, std::f32::consts::PI]),
            x: raw.x.unwrap_or([-5.0, 5.0]),
        };
        spec.validate()?;
        Ok(spec)
    }

    fn validate(&self) -> Result<(), Invalid> {
        for (path, n) in [("task.shots", self.shots), ("task.queries", self.queries)] {
            if n == 0 {
                return Err(out_of_range(path, n, "must be at least 1"));
            }
            // Upper bounds catch typos that would make a worker allocate billions of points.
            if n > MAX_POINTS {
                return Err(out_of_range(
                    path,
                    n,
                    &format!("must be at most {MAX_POINTS}"),
                ));
            }
        }
        for (path, r) in [
            ("task.amplitude", self.amplitude),
            ("task.phase", self.phase),
            ("task.x", self.x),
        ] {
            if !(r[0].is_finite() && r[1].is_finite() && r[0] <= r[1]) {
                return Err(out_of_range(
                    path,
                    r,
                    "expected [low, high] with finite low <= high",
                ));
            }
        }
        Ok(())
    }
}
