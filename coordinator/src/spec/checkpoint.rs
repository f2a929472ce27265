//! `[checkpoint]`: how often a run saves what resuming needs, and how many saves it keeps.

use serde::{Deserialize, Serialize};

use super::error::{out_of_range, Invalid};

/// Most checkpoints kept: each holds the parameters and the optimizer's state.
const MAX_KEEP: u32 = 100;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSpec {
    /// Steps between checkpoints; without it (and without `every_seconds`), a checkpoint
    /// follows each periodic evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<u64>,
    /// Seconds of training between checkpoints, beside or instead of `every`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_seconds: Option<f64>,
    /// Checkpoints kept: the newest is always `checkpoint.safetensors` (what a restart
    /// resumes from); with more than one, each is also `checkpoint-STEP.safetensors` and the
    /// oldest numbered ones are deleted past `keep`.
    #[serde(default = "one")]
    pub keep: u32,
}

fn one() -> u32 {
    1
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        CheckpointSpec {
            every: None,
            every_seconds: None,
            keep: 1,
        }
    }
}

impl CheckpointSpec {
    pub fn is_default(&self) -> bool {
        *self == CheckpointSpec::default()
    }

    /// Whether checkpoints follow evaluations (nothing else was asked for).
    pub fn at_evaluations(&self) -> bool {
        self.every.is_none() && self.every_seconds.is_none()
    }

    /// Whether a checkpoint is due after `step` (evaluations aside), `seconds` of training
    /// after the last one.
    pub fn due(&self, step: u64, seconds: f64) -> bool {
        self.every.is_some_and(|every| step.is_multiple_of(every))
            || self.every_seconds.is_some_and(|every| seconds >= every)
    }

    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if self.every == Some(0) {
            return Err(out_of_range(
                "checkpoint.every",
                0,
                "must be at least 1 step",
            ));
        }
        if let Some(seconds) = self.every_seconds {
            if !(seconds.is_finite() && seconds > 0.0) {
                return Err(out_of_range(
                    "checkpoint.every_seconds",
                    seconds,
                    "must be a positive number of seconds",
                ));
            }
        }
        if !(1..=MAX_KEEP).contains(&self.keep) {
            return Err(out_of_range(
                "checkpoint.keep",
                self.keep,
                &format!("must be between 1 and {MAX_KEEP}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_are_due_every_so_many_steps_or_seconds() {
        let steps = CheckpointSpec {
            every: Some(5),
            ..CheckpointSpec::default()
        };
        assert!(!steps.at_evaluations());
        assert_eq!(
            (1..=12).filter(|&s| steps.due(s, 0.0)).collect::<Vec<_>>(),
            [5, 10]
        );
        let seconds = CheckpointSpec {
            every_seconds: Some(60.0),
            ..CheckpointSpec::default()
        };
        assert!(!seconds.due(7, 59.9) && seconds.due(7, 60.0));
        assert!(CheckpointSpec::default().at_evaluations());
        assert!(!CheckpointSpec::default().due(100, 1e9));
    }

    #[test]
    fn bad_values_name_the_field() {
        let bad = |spec: CheckpointSpec| spec.validate().unwrap_err().0;
        assert_eq!(
            bad(CheckpointSpec {
                every: Some(0),
                ..CheckpointSpec::default()
            }),
            "checkpoint.every"
        );
        assert_eq!(
            bad(CheckpointSpec {
                every_seconds: Some(f64::NAN),
                ..CheckpointSpec::default()
            }),
            "checkpoint.every_seconds"
        );
        assert_eq!(
            bad(CheckpointSpec {
                keep: 0,
                ..CheckpointSpec::default()
            }),
            "checkpoint.keep"
        );
    }
}
