//! The on-disk experiment store: one directory per experiment, every file replaced atomically.
//!
//! `DIR/experiments/ID/` holds `spec.toml` (the resolved spec), `state.json` (the record),
//! `metrics.jsonl` (one line per step and per evaluation) and, at the end, `final.safetensors`.
//! Plain files rather than a database: they are what users read and copy anyway, and an atomic
//! rename per record is all the consistency one experiment at a time needs.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use outerloop_proto::ExperimentState;
use serde::{Deserialize, Serialize};

use outerloop_proto::MlpLayout;

use crate::safetensors_file;

/// An evaluation's summary, as stored and reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: u64,
    pub loss_mean: f64,
    pub loss_ci95: f64,
    pub tasks: u64,
    pub loss_before_mean: f64,
    #[serde(default)]
    pub r#final: bool,
}

/// Everything known about an experiment except its spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExperimentRecord {
    pub id: String,
    /// Submission order; ids are `exp-{seq}`.
    pub seq: u64,
    pub name: String,
    pub state: String,
    pub step: u64,
    pub steps: u64,
    pub tasks_done: u64,
    pub train_seconds: f64,
    pub meta_loss: Option<f64>,
    pub last_eval: Option<EvalRecord>,
    pub final_eval: Option<EvalRecord>,
    pub error: Option<String>,
}

impl ExperimentRecord {
    /// A submitted experiment that has not started; its id is `exp-{seq}`.
    pub fn queued(seq: u64, name: &str, steps: u64) -> Self {
        ExperimentRecord {
            id: format!("exp-{seq}"),
            seq,
            name: name.to_string(),
            state: ExperimentState::Queued.to_string(),
            step: 0,
            steps,
            tasks_done: 0,
            train_seconds: 0.0,
            meta_loss: None,
            last_eval: None,
            final_eval: None,
            error: None,
        }
    }
}

/// The experiments directory of a coordinator's state directory.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn open(state_dir: &Path) -> io::Result<Store> {
        let root = state_dir.join("experiments");
        fs::create_dir_all(&root)?;
        Ok(Store { root })
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Every stored experiment with its resolved spec text, in submission order. A directory
    /// that cannot be read is reported and skipped rather than stopping the coordinator.
    pub fn load_all(&self) -> io::Result<Vec<(ExperimentRecord, String)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.root)? {
            let dir = entry?.path();
            let loaded = fs::read_to_string(dir.join("state.json")).and_then(|state| {
                let record: ExperimentRecord =
                    serde_json::from_str(&state).map_err(io::Error::other)?;
                Ok((record, fs::read_to_string(dir.join("spec.toml"))?))
            });
            match loaded {
                Ok(pair) => out.push(pair),
                Err(e) => {
                    tracing::error!(dir = %dir.display(), error = %e, "skipping unreadable experiment")
                }
            }
        }
        out.sort_by_key(|(record, _)| record.seq);
        Ok(out)
    }

    /// Creates the experiment's directory with its spec and first record.
    pub fn create(&self, record: &ExperimentRecord, spec_toml: &str) -> io::Result<()> {
        let dir = self.dir(&record.id);
        fs::create_dir_all(&dir)?;
        write_atomically(&dir.join("spec.toml"), spec_toml.as_bytes())?;
        self.save(record)
    }

    pub fn save(&self, record: &ExperimentRecord) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        write_atomically(&self.dir(&record.id).join("state.json"), &json)
    }

    /// Opens `metrics.jsonl` afresh (a restarted experiment rewrites its metrics).
    pub fn metrics_writer(&self, id: &str) -> io::Result<MetricsWriter> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(self.dir(id).join("metrics.jsonl"))?;
        Ok(MetricsWriter {
            out: BufWriter::new(file),
        })
    }

    /// Writes `params` as `file_name` (safetensors), named as PyTorch's `nn.Sequential` names them.
    pub fn write_parameters(
        &self,
        id: &str,
        file_name: &str,
        layout: &MlpLayout,
        params: &[f32],
        metadata: &BTreeMap<String, String>,
    ) -> io::Result<PathBuf> {
        let path = self.dir(id).join(file_name);
        write_atomically(&path, &safetensors_file::encode(layout, params, metadata))?;
        Ok(path)
    }
}

/// Appends JSON lines to `metrics.jsonl`, buffered; flushed at evaluations and at the end.
pub struct MetricsWriter {
    out: BufWriter<File>,
}

impl MetricsWriter {
    pub fn append(&mut self, line: &serde_json::Value) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, line)?;
        self.out.write_all(b"\n")
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Replaces `path` with `data` so that readers see the old or the new content, never a mix,
/// even if the coordinator dies mid-write.
fn write_atomically(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = File::create(&tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64) -> ExperimentRecord {
        ExperimentRecord::queued(seq, "sin", 10)
    }

    #[test]
    fn records_survive_a_reopen_in_submission_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for seq in [10, 2, 7] {
            store.create(&record(seq), "name = \"sin\"\n").unwrap();
        }
        let mut finished = record(7);
        finished.state = "finished".into();
        finished.meta_loss = Some(0.5);
        store.save(&finished).unwrap();
        fs::create_dir_all(dir.path().join("experiments/garbage")).unwrap();

        let loaded = Store::open(dir.path()).unwrap().load_all().unwrap();
        let seqs: Vec<u64> = loaded.iter().map(|(r, _)| r.seq).collect();
        assert_eq!(seqs, [2, 7, 10]);
        assert_eq!(loaded[1].0, finished);
        assert_eq!(loaded[0].1, "name = \"sin\"\n");
    }

    #[test]
    fn parameters_are_written_as_named_safetensors() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.create(&record(1), "").unwrap();
        let layout = MlpLayout::new(1, &[2], 1);
        let params: Vec<f32> = (0..layout.param_count()).map(|i| i as f32).collect();
        let path = store
            .write_parameters(
                "exp-1",
                "final.safetensors",
                &layout,
                &params,
                &BTreeMap::new(),
            )
            .unwrap();
        let bytes = fs::read(path).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let bias = file.tensor("2.bias").unwrap();
        assert_eq!(bias.shape(), [1]);
        assert_eq!(bias.data(), 6.0f32.to_le_bytes());
        assert_eq!(file.tensor("0.weight").unwrap().shape(), [2, 1]);
    }
}
