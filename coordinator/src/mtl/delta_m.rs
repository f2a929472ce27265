//! Δm%: a multi-task model's mean relative change against single-task baselines, the figure MTL papers compare methods by.

/// `100/T · Σ_t s_t (M_t − B_t) / B_t`, where `s_t` is −1 for a metric where higher is better
/// (accuracy) and +1 otherwise (an error): negative means better than the single-task
/// baselines on average. This is the Δm% of Maninis et al. (2019) and Nash-MTL's tables;
/// LibMTL prints its negation as Δp.
pub fn delta_m_percent(metrics: &[f64], baselines: &[f64], higher_is_better: &[bool]) -> f64 {
    let tasks = metrics.len() as f64;
    let sum: f64 = metrics
        .iter()
        .zip(baselines)
        .zip(higher_is_better)
        .map(|((&m, &b), &higher)| {
            let sign = if higher { -1.0 } else { 1.0 };
            sign * (m - b) / b
        })
        .sum();
    100.0 * sum / tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_cases() {
        // An error 10% lower and an accuracy 5% higher: both better, Δm = -(10 + 5)/2 = -7.5.
        let d = delta_m_percent(&[0.9, 0.84], &[1.0, 0.8], &[false, true]);
        assert!((d + 7.5).abs() < 1e-12, "{d}");
        // Equal to the baselines: 0.
        assert_eq!(
            delta_m_percent(&[2.0, 0.5], &[2.0, 0.5], &[false, true]),
            0.0
        );
        // One task 20% worse, one unchanged: +10.
        let d = delta_m_percent(&[1.2, 3.0], &[1.0, 3.0], &[false, false]);
        assert!((d - 10.0).abs() < 1e-12, "{d}");
    }
}
