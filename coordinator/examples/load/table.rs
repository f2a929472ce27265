//! The printed table: one row per worker count, printed as each run ends.

use std::time::Duration;

/// What one run measured.
#[derive(Debug, Default)]
pub struct Row {
    pub workers: usize,
    pub chunks_per_s: f64,
    pub steps_per_s: f64,
    /// Sorted lease round trips that carried chunks.
    pub lease_round_trips: Vec<Duration>,
    /// CPU time over wall time in the measured window: the coordinator's threads, and the
    /// whole process (the coordinator and every worker client).
    pub coordinator_cpu: Option<f64>,
    pub process_cpu: Option<f64>,
    /// VmHWM since the run started (`None` where it could not be reset: since the process did).
    pub peak_mib: Option<f64>,
    pub rss_before_mib: Option<f64>,
    pub rss_after_mib: Option<f64>,
    pub lost: Option<u64>,
    pub counted_twice: Option<u64>,
}

pub const HEADER: &str = "workers  chunks/s  steps/s  lease p50  lease p99  coord CPU  all CPU  peak RSS  RSS before → after  lost  twice";

impl Row {
    pub fn line(&self) -> String {
        let ms = |q| match percentile(&self.lease_round_trips, q) {
            Some(d) => format!("{:.1} ms", d.as_secs_f64() * 1e3),
            None => "-".to_string(),
        };
        let percent = |f: Option<f64>| f.map_or("-".to_string(), |f| format!("{:.0}%", f * 100.0));
        let mib = |m: Option<f64>| m.map_or("-".to_string(), |m| format!("{m:.0}"));
        let count = |c: Option<u64>| c.map_or("FAIL".to_string(), |c| c.to_string());
        format!(
            "{:>7}  {:>8.0}  {:>7.1}  {:>9}  {:>9}  {:>9}  {:>7}  {:>4} MiB  {:>6} → {:>4} MiB  {:>4}  {:>5}",
            self.workers,
            self.chunks_per_s,
            self.steps_per_s,
            ms(50),
            ms(99),
            percent(self.coordinator_cpu),
            percent(self.process_cpu),
            mib(self.peak_mib),
            mib(self.rss_before_mib),
            mib(self.rss_after_mib),
            count(self.lost),
            count(self.counted_twice),
        )
    }
}

impl Row {
    /// The row as JSON, for the trust report (`bench/trust_report.py`).
    pub fn json(&self) -> serde_json::Value {
        let ms = |q| percentile(&self.lease_round_trips, q).map(|d| d.as_secs_f64() * 1e3);
        serde_json::json!({
            "check": "load",
            "workers": self.workers,
            "chunks_per_s": self.chunks_per_s,
            "steps_per_s": self.steps_per_s,
            "lease_p50_ms": ms(50),
            "lease_p99_ms": ms(99),
            "peak_mib": self.peak_mib,
            "lost": self.lost,
            "counted_twice": self.counted_twice,
        })
    }
}

/// The nearest-rank `q`th percentile of sorted `values`.
fn percentile(values: &[Duration], q: usize) -> Option<Duration> {
    let rank = (values.len() * q).div_ceil(100).max(1);
    values.get(rank - 1).copied()
}
