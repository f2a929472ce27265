//! Figures a test adds to the trust report (`bench/trust_report.py`): one JSON object per line in the file `OUTERLOOP_TRUST_REPORT` names, when it names one.

use std::io::Write;

/// The variable naming the report file.
pub const REPORT_ENV: &str = "OUTERLOOP_TRUST_REPORT";

/// Appends `figures` (a JSON object with at least `check`) to the report, if one is kept.
pub fn record(figures: serde_json::Value) {
    let Ok(path) = std::env::var(REPORT_ENV) else {
        return;
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot open the trust report {path}: {e}"));
    writeln!(file, "{figures}").expect("write the trust report");
}
