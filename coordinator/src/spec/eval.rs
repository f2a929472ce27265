//! `[eval]`: held-out evaluation during and after meta-training.

use serde::{Deserialize, Serialize};

use super::error::{out_of_range, Invalid};
use super::meta::MAX_TASKS;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSpec {
    pub every: u64,
    pub tasks: u32,
    pub final_tasks: u32,
    /// Inner steps at evaluation; defaults to `meta.inner_steps`.
    #[serde(default)]
    pub inner_steps: Option<u32>,
    /// Tasks per evaluation chunk; defaults to 250 sinusoids, or to `meta.chunk_tasks` episodes.
    #[serde(default)]
    pub chunk_tasks: Option<u32>,
    /// Episode shape at evaluation, for image families; default to the task's. Prototypical
    /// networks train with more ways than they are tested with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ways: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shots: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queries: Option<u32>,
}

impl EvalSpec {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if self.every == 0 {
            return Err(out_of_range("eval.every", self.every, "must be at least 1"));
        }
        for (path, n) in [
            ("eval.tasks", self.tasks),
            ("eval.final_tasks", self.final_tasks),
        ] {
            if n == 0 {
                return Err(out_of_range(path, n, "must be at least 1"));
            }
            if n > MAX_TASKS {
                return Err(out_of_range(
                    path,
                    n,
                    &format!("must be at most {MAX_TASKS}"),
                ));
            }
        }
        if let Some(s) = self.inner_steps {
            if s == 0 || s > 1000 {
                return Err(out_of_range(
                    "eval.inner_steps",
                    s,
                    "must be between 1 and 1000",
                ));
            }
        }
        if self.chunk_tasks == Some(0) {
            return Err(out_of_range("eval.chunk_tasks", 0, "must be at least 1"));
        }
        Ok(())
    }
}
