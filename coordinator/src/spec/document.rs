//! Reading a spec document of any experiment kind: TOML syntax, `--set` overrides in order, then the kind's own resolution, with errors blamed on the line or the override.

use serde::de::DeserializeOwned;

use super::error::{line_col, locate_key, Invalid, SpecError};
use super::overrides;

/// Parses `text` (named `source_name` in errors) as the raw form `R`, applies `overrides`
/// (`key.path=value`) in order and resolves the result with `resolve`.
pub(super) fn parse<R: DeserializeOwned, S>(
    text: &str,
    source_name: &str,
    overrides: &[String],
    resolve: impl FnOnce(R) -> Result<S, Invalid>,
) -> Result<S, SpecError> {
    let error = |location, message| SpecError::at(text, source_name, location, message);
    let located = |e: toml::de::Error| {
        let message = e.message().trim().to_string();
        let at = e.span().map(|span| field_line(text, span.start, &message));
        error(at, message)
    };
    // The file alone must be well-formed (syntax, unknown fields, types) before overrides
    // are applied, so that an error is blamed on the file or on the `--set` that caused it.
    toml::from_str::<R>(text).map_err(located)?;
    let mut doc: toml::Table = toml::from_str(text).map_err(located)?;
    for assignment in overrides {
        overrides::apply(&mut doc, assignment)
            .map_err(|message| error(None, format!("--set {assignment}: {message}")))?;
        from_table::<R>(&doc)
            .map_err(|e| error(None, format!("--set {assignment}: {}", e.message().trim())))?;
    }
    let raw = from_table::<R>(&doc).expect("checked above");
    resolve(raw).map_err(|invalid| SpecError::blame(text, source_name, overrides, invalid))
}

/// Where an error at byte `start` belongs. A section with variants (`[weighting]`, whose
/// `method` picks its fields) is read whole before its fields are, so the parser blames an
/// unknown field on the section's header; the line that sets the field says more.
fn field_line(text: &str, start: usize, message: &str) -> (usize, usize) {
    let at = line_col(text, start);
    let header = text
        .get(start..)
        .and_then(|t| t.lines().next())
        .unwrap_or("");
    let section = (header.split('#').next().unwrap_or(""))
        .trim()
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .filter(|h| !h.starts_with('['));
    let field = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(field, _)| field);
    match (section, field) {
        (Some(section), Some(field)) => {
            locate_key(text, &format!("{}.{field}", section.trim())).unwrap_or(at)
        }
        _ => at,
    }
}

fn from_table<R: DeserializeOwned>(doc: &toml::Table) -> Result<R, toml::de::Error> {
    toml::Value::Table(doc.clone()).try_into()
}
