//! Frank–Wolfe with away steps over the probability simplex, for CAGrad's dual.
//!
//! Lacoste-Julien & Jaggi, "On the Global Linear Convergence of Frank–Wolfe Optimization
//! Variants" (NeurIPS 2015), for convex objectives given by a gradient and an exact line
//! search; it stands in for the scipy call the Python reference uses.
//!
//! Plain Frank–Wolfe only moves towards vertices, so when the solution lies inside a face it
//! zig-zags and converges like 1/k; away steps (moving weight off the worst vertex in use)
//! make it converge linearly on polytopes, so a duality gap near rounding is within reach.

/// A convex function on the simplex, with what Frank–Wolfe needs of it.
pub trait Objective {
    /// A (sub)gradient at `x`.
    fn gradient(&self, x: &[f64]) -> Vec<f64>;

    /// The step `γ ∈ [0, max]` minimising the function at `x + γ·direction`, exactly or to
    /// rounding.
    fn line_search(&self, x: &[f64], direction: &[f64], max: f64) -> f64;
}

/// Where the solver stopped.
#[derive(Clone, Debug, PartialEq)]
pub struct Solution {
    /// The point on the simplex.
    pub x: Vec<f64>,
    /// Its Frank–Wolfe duality gap `max_s ∇f(x)·(x − s)`, an upper bound on `f(x) − min f`.
    pub gap: f64,
    /// Frank–Wolfe iterations taken.
    pub iterations: usize,
}

/// Minimises `objective` over the simplex from `start` (a point on it) until the duality gap
/// is at most `tolerance`, the line search makes no progress (rounding), or `max_iterations`
/// have run; the caller judges the returned gap.
pub fn frank_wolfe(
    objective: &impl Objective,
    start: Vec<f64>,
    tolerance: f64,
    max_iterations: usize,
) -> Solution {
    let mut x = start;
    let n = x.len();
    let mut iterations = 0;
    loop {
        let gradient = objective.gradient(&x);
        let at_x: f64 = gradient.iter().zip(&x).map(|(g, x)| g * x).sum();
        // Ties go to the lowest index, so the solver is deterministic.
        let Some(toward) = (0..n).min_by(|&i, &j| gradient[i].total_cmp(&gradient[j])) else {
            return Solution {
                x,
                gap: 0.0,
                iterations,
            };
        };
        let gap = at_x - gradient[toward];
        if gap <= tolerance || iterations == max_iterations {
            return Solution { x, gap, iterations };
        }
        let away = (0..n)
            .filter(|&i| x[i] > 0.0)
            .max_by(|&i, &j| gradient[i].total_cmp(&gradient[j]))
            .unwrap_or(toward);
        let away_gap = gradient[away] - at_x;
        let (direction, max, drops) = if gap >= away_gap || x[away] >= 1.0 {
            let mut d: Vec<f64> = x.iter().map(|&v| -v).collect();
            d[toward] += 1.0;
            (d, 1.0, None)
        } else {
            let mut d = x.clone();
            d[away] -= 1.0;
            (d, x[away] / (1.0 - x[away]), Some(away))
        };
        let step = objective.line_search(&x, &direction, max);
        if step.is_nan() || step <= 0.0 {
            return Solution { x, gap, iterations };
        }
        for (v, d) in x.iter_mut().zip(&direction) {
            *v = (*v + step * d).max(0.0);
        }
        if let Some(vertex) = drops.filter(|_| step >= max) {
            // A full away step removes the vertex; rounding must not leave a trace of it.
            x[vertex] = 0.0;
        }
        let total: f64 = x.iter().sum();
        x.iter_mut().for_each(|v| *v /= total);
        iterations += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `f(x) = ‖x − target‖²` with its exact line search.
    struct Distance(Vec<f64>);

    impl Objective for Distance {
        fn gradient(&self, x: &[f64]) -> Vec<f64> {
            x.iter().zip(&self.0).map(|(x, t)| 2.0 * (x - t)).collect()
        }

        fn line_search(&self, x: &[f64], d: &[f64], max: f64) -> f64 {
            let slope: f64 = x
                .iter()
                .zip(&self.0)
                .zip(d)
                .map(|((x, t), d)| (x - t) * d)
                .sum();
            let curvature: f64 = d.iter().map(|d| d * d).sum();
            (-slope / curvature).clamp(0.0, max)
        }
    }

    #[test]
    fn finds_an_interior_point_of_a_face_to_the_tolerance() {
        // The nearest point of the simplex to (0.5, 0.3, 0.2, -1) is (0.5, 0.3, 0.2, 0): it sums
        // to one and lies in the face x₄ = 0, where plain Frank–Wolfe would zig-zag.
        let solution = frank_wolfe(
            &Distance(vec![0.5, 0.3, 0.2, -1.0]),
            vec![0.25; 4],
            1e-14,
            1000,
        );
        for (x, want) in solution.x.iter().zip([0.5, 0.3, 0.2, 0.0]) {
            assert!((x - want).abs() < 1e-6, "{:?}", solution);
        }
        assert!(solution.gap <= 1e-14, "{solution:?}");
        assert!(solution.iterations < 100, "{solution:?}");
    }
}
