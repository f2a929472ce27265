//! The life cycle of an experiment, as stored and as shown to users.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExperimentState {
    Queued,
    Running,
    Finished,
    Failed,
    Cancelled,
    /// Stopped because its results could not be written (a full or failing disk): nothing is
    /// lost, and `outerloop resume` queues it again to continue from its last checkpoint.
    Paused,
}

impl ExperimentState {
    pub fn as_str(self) -> &'static str {
        match self {
            ExperimentState::Queued => "queued",
            ExperimentState::Running => "running",
            ExperimentState::Finished => "finished",
            ExperimentState::Failed => "failed",
            ExperimentState::Cancelled => "cancelled",
            ExperimentState::Paused => "paused",
        }
    }

    /// Whether the experiment will never run again.
    pub fn is_over(self) -> bool {
        matches!(
            self,
            ExperimentState::Finished | ExperimentState::Failed | ExperimentState::Cancelled
        )
    }
}

impl fmt::Display for ExperimentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
