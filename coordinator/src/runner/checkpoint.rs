//! The checkpoint every experiment kind writes after a periodic evaluation and resumes from: parameters, optimizer state, step and training time, plus whatever a kind adds to the metadata.

use std::collections::BTreeMap;
use std::io;

use outerloop_proto::model::ParamLayout;

use crate::optimizer::OuterOptimizer;
use crate::safetensors_file::{self, model_tensors, Decoded, NamedTensor};
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

/// Tries of a checkpoint write before the run fails: a full disk or a descriptor shortage may
/// pass, and failing a long run over one write would lose more than waiting.
const WRITE_TRIES: u32 = 4;

/// Writes experiment `id`'s checkpoint: `state`, and `extra` metadata entries of the kind's own.
/// The state is encoded here (a copy); writing and the fsync run on a blocking thread, off the
/// async runtime (a large model's would otherwise hold up heartbeats until workers are
/// dropped). A failed write is tried again, with growing pauses, before its error is returned.
pub(super) async fn write(
    store: &Store,
    id: &str,
    state: RunState<'_>,
    extra: impl IntoIterator<Item = (String, String)>,
) -> io::Result<()> {
    let bytes = encode(state, extra);
    let (store, id) = (store.clone(), id.to_string());
    tokio::task::spawn_blocking(move || {
        let mut pause = std::time::Duration::from_millis(500);
        for try_ in 1.. {
            match store.write_file(&id, CHECKPOINT, &bytes) {
                Ok(_) => return Ok(()),
                Err(e) if try_ < WRITE_TRIES => {
                    tracing::warn!(%id, error = %e, try_, "cannot write the checkpoint; trying again");
                    std::thread::sleep(pause);
                    pause *= 2;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the loop returns")
    })
    .await
    .map_err(io::Error::other)?
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
