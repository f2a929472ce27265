//! The checkpoint every experiment kind writes after a periodic evaluation and resumes from: parameters, optimizer state, step and training time, plus whatever a kind adds to the metadata.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;

use outerloop_proto::model::ParamLayout;

use super::retry;
use crate::optimizer::OuterOptimizer;
use crate::safetensors_file::{self, model_tensors, Decoded, NamedTensor};
use crate::spec::CheckpointSpec;
use crate::store::Store;

/// Written after every periodic evaluation; a restarted coordinator resumes from it.
const CHECKPOINT: &str = "checkpoint.safetensors";

/// What a run is at when it checkpoints.
pub(super) struct RunState<'a> {
    pub layout: &'a ParamLayout,
    pub params: &'a [f32],
    pub optimizer: &'a OuterOptimizer,
    pub step: u64,
    pub train_seconds: f64,
}

/// Writes experiment `id`'s checkpoint: `state`, and `extra` metadata entries of the kind's own.
/// The state is encoded here (a copy); writing and the fsync run on a blocking thread, off the
/// async runtime (a large model's would otherwise hold up heartbeats until workers are
/// dropped). A failed write is tried again ([`retry`]) before its error is returned.
/// With `keep` above one, the checkpoint is also kept as `checkpoint-STEP.safetensors`, and
/// the oldest numbered ones past `keep` are deleted.
pub(super) async fn write(
    store: &Store,
    id: &str,
    state: RunState<'_>,
    keep: u32,
    extra: impl IntoIterator<Item = (String, String)>,
) -> io::Result<()> {
    let step = state.step;
    let bytes = encode(state, extra);
    let (store, id) = (store.clone(), id.to_string());
    tokio::task::spawn_blocking(move || {
        retry::retrying_blocking(&id, "the checkpoint", || {
            let latest = store.write_file(&id, CHECKPOINT, &bytes)?;
            keep_numbered(&latest, step, keep)
        })
    })
    .await
    .map_err(io::Error::other)?
}

/// Whether to checkpoint after `step`: after an evaluation when the spec asks for nothing
/// else, or when it says so (`since_last`: seconds of training since the last checkpoint).
pub(super) fn due(spec: &CheckpointSpec, step: u64, evaluated: bool, since_last: f64) -> bool {
    (evaluated && spec.at_evaluations()) || spec.due(step, since_last)
}

/// Links the checkpoint just written at `latest` as `checkpoint-STEP.safetensors` and deletes
/// the oldest numbered checkpoints past `keep` (none are kept with `keep` at one: the latest
/// is the only one).
fn keep_numbered(latest: &Path, step: u64, keep: u32) -> io::Result<()> {
    let dir = latest
        .parent()
        .expect("a checkpoint lives in its experiment's directory");
    let numbered = |step: u64| dir.join(format!("checkpoint-{step:010}.safetensors"));
    if keep > 1 {
        let this = numbered(step);
        let _ = fs::remove_file(&this);
        // A second name for the same bytes; a copy where links are not supported.
        if fs::hard_link(latest, &this).is_err() {
            fs::copy(latest, &this)?;
        }
    }
    let mut steps: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.strip_prefix("checkpoint-")?
                .strip_suffix(".safetensors")?
                .parse()
                .ok()
        })
        .collect();
    steps.sort_unstable();
    let keep = if keep > 1 { keep as usize } else { 0 };
    for &old in &steps[..steps.len().saturating_sub(keep)] {
        fs::remove_file(numbered(old))?;
    }
    Ok(())
}

/// A checkpoint of `state`, as the bytes of its file.
fn encode(state: RunState, extra: impl IntoIterator<Item = (String, String)>) -> Vec<u8> {
    let (updates, buffers) = state.optimizer.state();
    let mut tensors = model_tensors(state.layout, state.params);
    tensors.extend(buffers.into_iter().map(|(name, values)| NamedTensor {
        name: name.to_string(),
        shape: vec![values.len()],
        values,
    }));
    let mut metadata = BTreeMap::from([
        ("step".to_string(), state.step.to_string()),
        ("optimizer_updates".to_string(), updates.to_string()),
        ("train_seconds".to_string(), state.train_seconds.to_string()),
    ]);
    metadata.extend(extra);
    safetensors_file::encode(&tensors, &metadata)
}

/// A checkpoint read back: the parameters in `layout`, the step and training time, and what
/// else it saved for the optimizer and the kind.
pub(super) struct Checkpoint {
    pub params: Vec<f32>,
    pub step: u64,
    pub train_seconds: f64,
    saved: Decoded,
}

impl Checkpoint {
    /// Experiment `id`'s checkpoint, if it has one; an error says why it is unusable.
    pub fn read(store: &Store, id: &str, layout: &ParamLayout) -> Result<Option<Self>, String> {
        let Some(saved) = store
            .read_tensors(id, CHECKPOINT)
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        let mut params = Vec::with_capacity(layout.param_count());
        for slot in &layout.slots {
            match saved.tensors.get(&slot.name) {
                Some(values) if values.len() == slot.len() => params.extend_from_slice(values),
                _ => {
                    return Err(format!(
                        "checkpoint tensor {} is missing or of the wrong size",
                        slot.name
                    ))
                }
            }
        }
        let number = |key: &str| -> Result<f64, String> {
            saved
                .metadata
                .get(key)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("checkpoint metadata lacks {key}"))
        };
        Ok(Some(Checkpoint {
            params,
            step: number("step")? as u64,
            train_seconds: number("train_seconds")?,
            saved,
        }))
    }

    /// Puts the saved optimizer state into `optimizer`, built for the same layout.
    pub fn restore_optimizer(&self, optimizer: &mut OuterOptimizer) -> Result<(), String> {
        let updates = self
            .metadata("optimizer_updates")?
            .parse()
            .map_err(|_| "checkpoint metadata optimizer_updates is not a number".to_string())?;
        optimizer.restore(updates, &self.saved.tensors)
    }

    /// A metadata entry the kind wrote.
    pub fn metadata(&self, key: &str) -> Result<&str, String> {
        self.saved
            .metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| format!("checkpoint metadata lacks {key}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_checkpoints_past_keep_are_deleted_and_none_are_kept_with_one() {
        let dir = tempfile::tempdir().unwrap();
        let latest = dir.path().join(CHECKPOINT);
        let numbered = || {
            let mut names: Vec<String> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.starts_with("checkpoint-"))
                .collect();
            names.sort();
            names
        };
        // Written as the store writes it: a new file renamed over the old.
        let write = |text: &str| crate::store::write_atomically(&latest, text.as_bytes()).unwrap();
        for step in [10, 20, 30] {
            write(&step.to_string());
            keep_numbered(&latest, step, 2).unwrap();
        }
        assert_eq!(
            numbered(),
            [
                "checkpoint-0000000020.safetensors",
                "checkpoint-0000000030.safetensors"
            ]
        );
        // Each numbered file holds the bytes of its own step, not the latest's.
        let read = |name: &str| fs::read_to_string(dir.path().join(name)).unwrap();
        assert_eq!(read("checkpoint-0000000020.safetensors"), "20");
        write("40");
        keep_numbered(&latest, 40, 1).unwrap();
        assert!(numbered().is_empty());
        assert_eq!(read(CHECKPOINT), "40");
    }
}
