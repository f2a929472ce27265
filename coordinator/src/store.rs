//! The on-disk experiment store: one directory per experiment, every file replaced atomically.
//!
//! `DIR/experiments/ID/` holds `spec.toml` (the resolved spec), `state.json` (the record),
//! `metrics.jsonl` (one line per step and per evaluation) and, at the end, `final.safetensors`.
//! Plain files rather than a database: they are what users read and copy anyway, and an atomic
//! rename per record is all the consistency one experiment at a time needs.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use outerloop_proto::dataset::Manifest;
use outerloop_proto::ExperimentState;
use serde::{Deserialize, Serialize};

use crate::safetensors_file::{self, Decoded, NamedTensor};
use crate::spec::ExperimentKind;

/// The dataset manifest of an experiment, in its directory.
const MANIFEST: &str = "manifest.json";

/// An evaluation's summary, as stored and reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: u64,
    #[serde(with = "non_finite_as_null")]
    pub loss_mean: f64,
    /// NaN when there is no interval (a single task).
    #[serde(with = "non_finite_as_null")]
    pub loss_ci95: f64,
    pub tasks: u64,
    #[serde(with = "non_finite_as_null")]
    pub loss_before_mean: f64,
    #[serde(default)]
    pub r#final: bool,
    /// Classification: post-adaptation query accuracy (a fraction in [0, 1]) with its 95%
    /// confidence interval, and the accuracy before adaptation. Named as in `metrics.jsonl`
    /// and `outerloop status --json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_mean: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_ci95: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_before_mean: Option<f64>,
    /// Multi-task: each task's mean loss and metric over the evaluated rows, in task order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_scores: Option<Vec<TaskScore>>,
    /// Multi-task, when the spec gives single-task baselines: Δm% against them (negative is
    /// better; see `mtl::delta_m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_m_percent: Option<f64>,
}

/// One task's evaluation in a multi-task experiment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskScore {
    pub task: String,
    #[serde(with = "non_finite_as_null")]
    pub loss: f64,
    /// MSE for regression tasks, accuracy for classification.
    #[serde(with = "non_finite_as_null")]
    pub metric: f64,
}

/// JSON has no NaN or infinity: they are written as `null` and read back as NaN, so a diverged
/// evaluation or a one-task interval never makes a record unreadable.
mod non_finite_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        match value.is_finite() {
            true => serializer.serialize_f64(*value),
            false => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
    }
}

/// Everything known about an experiment except its spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExperimentRecord {
    pub id: String,
    /// Submission order; ids are `exp-{seq}`.
    pub seq: u64,
    pub name: String,
    /// Meta-learning or multi-task (records written before multi-task existed are meta).
    #[serde(default)]
    pub kind: ExperimentKind,
    pub state: ExperimentState,
    pub step: u64,
    pub steps: u64,
    /// Tasks (meta-learning) or rows (multi-task) trained on so far.
    pub tasks_done: u64,
    pub train_seconds: f64,
    pub meta_loss: Option<f64>,
    /// Classification: mean post-adaptation query accuracy of the last meta-batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_accuracy: Option<f64>,
    pub last_eval: Option<EvalRecord>,
    pub final_eval: Option<EvalRecord>,
    pub error: Option<String>,
    /// Set when a running experiment is cancelled, so that a restart does not run it again.
    #[serde(default)]
    pub cancel_requested: bool,
}

impl ExperimentRecord {
    /// A submitted experiment that has not started; its id is `exp-{seq}`.
    pub fn queued(seq: u64, name: &str, kind: ExperimentKind, steps: u64) -> Self {
        ExperimentRecord {
            id: format!("exp-{seq}"),
            seq,
            name: name.to_string(),
            kind,
            state: ExperimentState::Queued,
            step: 0,
            steps,
            tasks_done: 0,
            train_seconds: 0.0,
            meta_loss: None,
            meta_accuracy: None,
            last_eval: None,
            final_eval: None,
            error: None,
            cancel_requested: false,
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

    /// The highest `exp-N` directory number, readable or not, so that an id is never reused
    /// (and an old experiment's files never mixed with a new one's).
    pub fn highest_seq(&self) -> io::Result<u64> {
        let mut highest = 0;
        for entry in fs::read_dir(&self.root)? {
            let name = entry?.file_name();
            if let Some(seq) = name
                .to_str()
                .and_then(|n| n.strip_prefix("exp-"))
                .and_then(|n| n.parse().ok())
            {
                highest = highest.max(seq);
            }
        }
        Ok(highest)
    }

    /// Creates the experiment's directory with its spec, the manifest of the dataset it
    /// samples from (if any), and its first record; an existing directory is an error, never
    /// overwritten.
    pub fn create(
        &self,
        record: &ExperimentRecord,
        spec_toml: &str,
        manifest: Option<&Manifest>,
    ) -> io::Result<()> {
        let dir = self.dir(&record.id);
        fs::create_dir(&dir)?;
        let written = (|| {
            write_atomically(&dir.join("spec.toml"), spec_toml.as_bytes())?;
            if let Some(manifest) = manifest {
                let json = serde_json::to_vec_pretty(manifest).map_err(io::Error::other)?;
                write_atomically(&dir.join(MANIFEST), &json)?;
            }
            self.save(record)
        })();
        if written.is_err() {
            // Half an experiment would be skipped at the next start, and its id taken by the
            // next submission's directory until then.
            let _ = fs::remove_dir_all(&dir);
        }
        written
    }

    /// The manifest stored with an experiment at submission: its episodes are drawn from it,
    /// whatever the workers report later.
    pub fn manifest(&self, id: &str) -> io::Result<Option<Manifest>> {
        match fs::read(self.dir(id).join(MANIFEST)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(io::Error::other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn save(&self, record: &ExperimentRecord) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        write_atomically(&self.dir(&record.id).join("state.json"), &json)
    }

    /// Opens `metrics.jsonl` for a run starting at `from_step`: afresh at step 0; on resuming,
    /// keeping only the lines up to the checkpoint (an interrupted run wrote some after it,
    /// which it is about to write again). Returns the last evaluation kept.
    pub fn metrics_writer(
        &self,
        id: &str,
        from_step: u64,
    ) -> io::Result<(MetricsWriter, Option<EvalRecord>)> {
        let path = self.dir(id).join("metrics.jsonl");
        let mut last_eval = None;
        if from_step > 0 {
            // Only a missing file is an empty one: any other failure to read (a descriptor
            // shortage, an I/O error) must not cut the history to nothing. Bytes, not text: a
            // line torn inside a character is dropped like any torn line.
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(e),
            };
            let text = String::from_utf8_lossy(&bytes);
            let mut kept = String::new();
            for line in text.lines() {
                let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue; // a line torn by the crash
                };
                if value["step"].as_u64().is_some_and(|step| step <= from_step) {
                    if value["kind"] == "eval" {
                        last_eval = serde_json::from_value(value).ok();
                    }
                    kept.push_str(line);
                    kept.push('\n');
                }
            }
            write_atomically(&path, kept.as_bytes())?;
        }
        let file = if from_step == 0 {
            File::create(&path)?
        } else {
            OpenOptions::new().append(true).open(&path)?
        };
        Ok((MetricsWriter::new(Box::new(file)), last_eval))
    }

    /// Writes F32 tensors as the safetensors file `file_name` in the experiment's directory.
    pub fn write_tensors(
        &self,
        id: &str,
        file_name: &str,
        tensors: &[NamedTensor],
        metadata: &BTreeMap<String, String>,
    ) -> io::Result<PathBuf> {
        self.write_file(id, file_name, &safetensors_file::encode(tensors, metadata))
    }

    /// Replaces the file `file_name` in the experiment's directory with `data`, atomically.
    pub fn write_file(&self, id: &str, file_name: &str, data: &[u8]) -> io::Result<PathBuf> {
        let path = self.dir(id).join(file_name);
        write_atomically(&path, data)?;
        Ok(path)
    }

    /// Reads a safetensors file of the experiment's, if there is one.
    pub fn read_tensors(&self, id: &str, file_name: &str) -> io::Result<Option<Decoded>> {
        let path = self.dir(id).join(file_name);
        match fs::read(&path) {
            Ok(bytes) => safetensors_file::decode(&bytes).map(Some).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Lines of `metrics.jsonl` pending before [`MetricsWriter::write_if_full`] writes them.
const METRICS_BUFFER: usize = 8 * 1024;

/// Appends JSON lines to `metrics.jsonl`: they wait in memory until a buffer's worth is pending
/// or [`flush`](Self::flush) (at evaluations, checkpoints and the end). A failed write keeps
/// every byte it did not write, so that writing again neither loses nor repeats a line.
pub struct MetricsWriter {
    file: Box<dyn Write + Send + Sync>,
    pending: Vec<u8>,
}

impl MetricsWriter {
    fn new(file: Box<dyn Write + Send + Sync>) -> Self {
        Self {
            file,
            pending: Vec::new(),
        }
    }

    /// Adds `line`, whole, to the lines pending.
    pub fn push(&mut self, line: &serde_json::Value) {
        // A `Value` always serialises (its keys are strings) and writing to memory cannot
        // fail, so no half line is ever left pending.
        serde_json::to_writer(&mut self.pending, line).expect("a JSON value serialises");
        self.pending.push(b'\n');
    }

    /// Writes the pending lines once a buffer's worth waits.
    pub fn write_if_full(&mut self) -> io::Result<()> {
        if self.pending.len() >= METRICS_BUFFER {
            self.flush()
        } else {
            Ok(())
        }
    }

    /// Writes every pending line; on an error, what was not written stays pending.
    pub fn flush(&mut self) -> io::Result<()> {
        let mut written = 0;
        let outcome = loop {
            if written == self.pending.len() {
                break self.file.flush();
            }
            match self.file.write(&self.pending[written..]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.pending.drain(..written);
        outcome
    }
}

impl Drop for MetricsWriter {
    /// However a run ends (failed, cancelled), the lines of the steps it took reach the file;
    /// one last try, as `BufWriter` makes.
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "cannot write the last lines of metrics.jsonl");
        }
    }
}

/// Replaces `path` with `data` so that readers see the old or the new content, never a mix,
/// even if the coordinator dies mid-write.
pub(crate) fn write_atomically(path: &Path, data: &[u8]) -> io::Result<()> {
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
        ExperimentRecord::queued(seq, "sin", ExperimentKind::Meta, 10)
    }

    #[test]
    fn records_survive_a_reopen_in_submission_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for seq in [10, 2, 7] {
            store
                .create(&record(seq), "name = \"sin\"\n", None)
                .unwrap();
        }
        let mut finished = record(7);
        finished.state = ExperimentState::Finished;
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
    fn tensors_round_trip_and_a_missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.create(&record(1), "", None).unwrap();
        assert_eq!(
            store
                .read_tensors("exp-1", "checkpoint.safetensors")
                .unwrap(),
            None
        );
        let values = [1.0f32, 2.0, 3.0];
        let tensors = [NamedTensor {
            name: "t".into(),
            shape: vec![3],
            values: &values,
        }];
        let metadata = BTreeMap::from([("step".to_string(), "5".to_string())]);
        store
            .write_tensors("exp-1", "checkpoint.safetensors", &tensors, &metadata)
            .unwrap();
        let back = store
            .read_tensors("exp-1", "checkpoint.safetensors")
            .unwrap()
            .unwrap();
        assert_eq!(
            (back.tensors["t"].as_slice(), &back.metadata),
            (&values[..], &metadata)
        );
        fs::write(store.dir("exp-1").join("bad.safetensors"), b"junk").unwrap();
        let err = store.read_tensors("exp-1", "bad.safetensors").unwrap_err();
        assert!(err.to_string().contains("bad.safetensors"), "{err}");
    }

    #[test]
    fn resuming_keeps_the_metrics_up_to_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.create(&record(1), "", None).unwrap();
        {
            let (mut metrics, last) = store.metrics_writer("exp-1", 0).unwrap();
            assert_eq!(last, None);
            for step in 1..=5 {
                metrics.push(&serde_json::json!({"kind": "train", "step": step}));
                if step % 2 == 0 {
                    let eval = serde_json::json!({"kind": "eval", "step": step, "loss_mean": step as f64,
                        "loss_ci95": 0.1, "tasks": 10, "loss_before_mean": 3.0});
                    metrics.push(&eval);
                }
            }
            metrics.flush().unwrap();
        }
        let path = store.dir("exp-1").join("metrics.jsonl");
        fs::write(
            &path,
            fs::read_to_string(&path).unwrap() + "{\"kind\": \"tr",
        )
        .unwrap(); // torn by a crash

        let (mut metrics, last) = store.metrics_writer("exp-1", 4).unwrap();
        assert_eq!(last.map(|e| (e.step, e.loss_mean)), Some((4, 4.0)));
        metrics.push(&serde_json::json!({"kind": "train", "step": 5}));
        metrics.flush().unwrap();
        let steps: Vec<(String, u64)> = fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| {
                (
                    v["kind"].as_str().unwrap().to_string(),
                    v["step"].as_u64().unwrap(),
                )
            })
            .collect();
        let expected = [
            ("train", 1),
            ("train", 2),
            ("eval", 2),
            ("train", 3),
            ("train", 4),
            ("eval", 4),
            ("train", 5),
        ];
        assert_eq!(steps, expected.map(|(k, s)| (k.to_string(), s)));
    }

    /// A file that takes `room` more bytes, then fails (a full disk) until given more room.
    #[derive(Clone, Default)]
    struct Cramped(std::sync::Arc<std::sync::Mutex<(Vec<u8>, usize)>>);

    impl Write for Cramped {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut disk = self.0.lock().unwrap();
            let (written, room) = &mut *disk;
            if *room == 0 {
                return Err(io::Error::other("No space left on device"));
            }
            let n = buf.len().min(*room);
            written.extend_from_slice(&buf[..n]);
            *room -= n;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failed_metrics_write_neither_loses_nor_repeats_a_line_when_written_again() {
        let disk = Cramped::default();
        // Room for the first line and part of the second (each is 37 bytes).
        disk.0.lock().unwrap().1 = 50;
        let mut metrics = MetricsWriter::new(Box::new(disk.clone()));
        let lines: Vec<serde_json::Value> = (1..=3)
            .map(|step| serde_json::json!({"kind": "train", "step": step, "loss": 0.5}))
            .collect();
        for line in &lines {
            metrics.push(line);
            metrics.write_if_full().unwrap();
        }
        assert!(
            disk.0.lock().unwrap().0.is_empty(),
            "below a buffer's worth, nothing is written"
        );
        assert!(metrics.flush().is_err(), "the disk fills mid-line");
        assert_eq!(disk.0.lock().unwrap().0.len(), 50);
        assert!(metrics.flush().is_err(), "and stays full");
        disk.0.lock().unwrap().1 = usize::MAX;
        metrics.flush().unwrap();
        metrics.flush().unwrap();
        let text = String::from_utf8(disk.0.lock().unwrap().0.clone()).unwrap();
        let read: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(read, lines, "every line once, whole, in order");
        metrics.push(&serde_json::json!({"kind": "train", "step": 4}));
        drop(metrics);
        let text = String::from_utf8(disk.0.lock().unwrap().0.clone()).unwrap();
        assert_eq!(
            text.lines().count(),
            4,
            "a writer dropped writes what is pending"
        );
    }
}
