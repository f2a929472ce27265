//! Summary statistics of per-task losses: the mean and its 95% confidence interval.

/// Mean and half-width of the normal-approximation 95% confidence interval of the mean.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MeanCi {
    pub mean: f64,
    pub ci95: f64,
    pub count: usize,
}

impl MeanCi {
    pub fn of(values: &[f32]) -> MeanCi {
        let n = values.len();
        if n == 0 {
            return MeanCi {
                mean: f64::NAN,
                ci95: f64::NAN,
                count: 0,
            };
        }
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let ci95 = if n < 2 {
            f64::NAN
        } else {
            let var = values
                .iter()
                .map(|&v| (v as f64 - mean).powi(2))
                .sum::<f64>()
                / (n - 1) as f64;
            1.96 * (var / n as f64).sqrt()
        };
        MeanCi {
            mean,
            ci95,
            count: n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_interval_match_hand_computation() {
        // mean 2.5, sample variance 5/3, standard error sqrt(5/12).
        let s = MeanCi::of(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(s.mean, 2.5);
        assert!((s.ci95 - 1.96 * (5.0f64 / 12.0).sqrt()).abs() < 1e-12);
        assert_eq!(s.count, 4);
    }

    #[test]
    fn a_single_value_has_no_interval() {
        assert!(MeanCi::of(&[1.0]).ci95.is_nan());
        assert!(MeanCi::of(&[]).mean.is_nan());
    }
}
