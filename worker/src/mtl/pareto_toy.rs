//! The two-objective toy problem of CAGrad (Liu et al. 2021, arXiv:2110.14048, Figure 1; `toy.py` in Cranial-XIX/CAGrad), also in the Nash-MTL and FAMO papers: two losses of a point in the plane and their exact gradients.
//!
//! A multi-task experiment of `family = "pareto_toy"` has this point as its shared
//! parameters; `bench/pareto_toy.rs` runs every weighting method on it in-process.

/// `toy.py`'s floor under the logarithms' arguments.
const LOWER: f64 = 5e-6;

/// Added to both losses where a weighting method sees them: the losses dip to -20, and the
/// methods that take logarithms or ratios of losses (UW, DWA, GradNorm, FAMO) need positive
/// ones. Gradients are unchanged by the shift.
pub const LOSS_SHIFT: f64 = 20.0;

/// The two losses at `x` and their gradients (`grads[task][coordinate]`).
pub fn losses(x: [f64; 2]) -> ([f64; 2], [[f64; 2]; 2]) {
    let [x1, x2] = x;
    let (t, dt) = (x2.tanh(), 1.0 - x2.tanh().powi(2));
    // The two logarithmic valleys, each with its derivative; clamped below LOWER they are
    // flat, as torch's clamp makes them.
    let log_part = |a: f64, da: [f64; 2]| -> (f64, [f64; 2]) {
        if a.abs() > LOWER {
            (a.abs().ln() + 6.0, [da[0] / a, da[1] / a])
        } else {
            (LOWER.ln() + 6.0, [0.0, 0.0])
        }
    };
    // 0.5(-x1 - 7) - tanh(-x2) and 0.5(-x1 + 3) + tanh(-x2) + 2.
    let (l1, dl1) = log_part(-0.5 * x1 - 3.5 + t, [-0.5, dt]);
    let (l2, dl2) = log_part(-0.5 * x1 + 3.5 - t, [-0.5, -dt]);
    let h = (0.5 * x2).tanh();
    let dh = 0.5 * (1.0 - h * h);
    // c1 = max(tanh(x2/2), 0) weighs the valleys above the x1 axis, c2 = max(-tanh(x2/2), 0)
    // the bowls below it.
    let (c1, dc1) = if h > 0.0 { (h, dh) } else { (0.0, 0.0) };
    let (c2, dc2) = if h < 0.0 { (-h, -dh) } else { (0.0, 0.0) };
    let bowl = |centre: f64| {
        let value = ((x1 - centre).powi(2) + 0.1 * (x2 + 8.0).powi(2)) / 10.0 - 20.0;
        (value, [0.2 * (x1 - centre), 0.02 * (x2 + 8.0)])
    };
    let (s1, ds1) = bowl(7.0);
    let (s2, ds2) = bowl(-7.0);
    let combine = |l: f64, dl: [f64; 2], s: f64, ds: [f64; 2]| {
        (
            l * c1 + s * c2,
            [
                dl[0] * c1 + ds[0] * c2,
                dl[1] * c1 + l * dc1 + ds[1] * c2 + s * dc2,
            ],
        )
    };
    let (f1, g1) = combine(l1, dl1, s1, ds1);
    let (f2, g2) = combine(l2, dl2, s2, ds2);
    ([f1, f2], [g1, g2])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The analytic gradients against central differences, at points in each region of the
    /// plane; the benchmark refuses to run on wrong gradients.
    #[test]
    fn the_gradients_are_those_of_central_differences() {
        let h = 1e-6;
        for x in [
            [-8.5, 7.5],
            [-8.5, -5.0],
            [9.0, 9.0],
            [0.3, -8.0],
            [2.0, 0.7],
            [-6.0, -0.2],
        ] {
            let (_, g) = losses(x);
            for coordinate in 0..2 {
                let (mut up, mut down) = (x, x);
                up[coordinate] += h;
                down[coordinate] -= h;
                let (fu, fd) = (losses(up).0, losses(down).0);
                for task in 0..2 {
                    let numeric = (fu[task] - fd[task]) / (2.0 * h);
                    assert!(
                        (numeric - g[task][coordinate]).abs() <= 1e-6 * numeric.abs().max(1.0),
                        "loss {task}'s gradient at {x:?} along x{}: analytic {} but central \
                         differences {numeric}",
                        coordinate + 1,
                        g[task][coordinate]
                    );
                }
            }
        }
    }
}
