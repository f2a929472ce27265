//! `[scheduling]`: the experiment's share of the workers while other experiments run beside it.

use serde::{Deserialize, Serialize};

use super::error::{out_of_range, Invalid};

/// The largest weight: a thousand to one is already "this one first".
const MAX_WEIGHT: f64 = 1000.0;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulingSpec {
    /// The experiment's share of the workers' time against the other running experiments'
    /// weights: with weights 2 and 1, the first gets two thirds while both have work waiting.
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

impl Default for SchedulingSpec {
    fn default() -> Self {
        SchedulingSpec { weight: 1.0 }
    }
}

impl SchedulingSpec {
    pub fn is_default(&self) -> bool {
        *self == SchedulingSpec::default()
    }

    pub(super) fn validate(&self) -> Result<(), Invalid> {
        let weight = self.weight;
        if !(weight.is_finite() && weight > 0.0 && weight <= MAX_WEIGHT) {
            return Err(out_of_range(
                "scheduling.weight",
                weight,
                &format!("must be a number above 0 and at most {MAX_WEIGHT}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_must_be_positive_finite_and_bounded() {
        for weight in [0.5, 1.0, 1000.0] {
            assert!(SchedulingSpec { weight }.validate().is_ok(), "{weight}");
        }
        for weight in [0.0, -1.0, 1000.5, f64::NAN, f64::INFINITY] {
            let (field, message) = SchedulingSpec { weight }.validate().unwrap_err();
            assert_eq!(field, "scheduling.weight");
            assert!(message.contains("at most 1000"), "{message}");
        }
    }
}
