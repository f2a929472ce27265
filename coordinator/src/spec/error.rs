//! Spec errors that point at the file, line and column, with the offending line and a caret.

/// A spec that was refused, with where and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{source_name}{}: {message}{}", location.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default(), excerpt.as_deref().unwrap_or_default())]
pub struct SpecError {
    pub source_name: String,
    /// 1-based line and column in the spec file, when the error has one.
    pub location: Option<(usize, usize)>,
    pub message: String,
    /// The offending line with a caret under the column, when there is one.
    pub excerpt: Option<String>,
}

/// A validation failure: the field path (`meta.meta_batch`) and what is wrong with it.
pub type Invalid = (String, String);

/// The standard refusal: the field, the value given, and what is allowed.
pub fn out_of_range<T: std::fmt::Debug>(path: &str, given: T, allowed: &str) -> Invalid {
    (
        path.to_string(),
        format!("{given:?} is out of range: {allowed}"),
    )
}

impl SpecError {
    /// The error for a field that failed validation: blamed on the `--set` that assigned it
    /// when one did, else on the line of `text` where the field is written (if it is).
    pub fn blame(
        text: &str,
        source_name: &str,
        overrides: &[String],
        (path, message): Invalid,
    ) -> SpecError {
        let set_by = overrides
            .iter()
            .rev()
            .find(|o| super::overrides::path_of(o) == Some(path.as_str()));
        match set_by {
            Some(assignment) => SpecError::at(
                text,
                source_name,
                None,
                format!("--set {assignment}: {message}"),
            ),
            None => SpecError::at(
                text,
                source_name,
                locate_key(text, &path),
                format!("{path}: {message}"),
            ),
        }
    }

    /// An error at `location` (if known) in `text`, which was read from `source_name`.
    pub fn at(
        text: &str,
        source_name: &str,
        location: Option<(usize, usize)>,
        message: String,
    ) -> SpecError {
        SpecError {
            source_name: source_name.to_string(),
            location,
            message: shorten(&message),
            excerpt: location.and_then(|at| excerpt(text, at)),
        }
    }
}

/// Characters of the offending line shown on each side of the column: enough to recognise
/// it, and a line of megabytes does not become a message of megabytes.
const EXCERPT_REACH: usize = 60;

/// `\n  9 | shots = = 10\n    |         ^`, a long line cut to the stretch around the column
/// (`…` where it was cut).
fn excerpt(text: &str, (line, col): (usize, usize)) -> Option<String> {
    let source = text.lines().nth(line - 1)?;
    let gutter = line.to_string().len();
    let chars: Vec<char> = source.chars().collect();
    let start = col.saturating_sub(1 + EXCERPT_REACH);
    let end = (col + EXCERPT_REACH).min(chars.len());
    let mut shown: String = chars[start.min(end)..end].iter().collect();
    let mut col = col - start;
    if start > 0 {
        shown.insert(0, '…');
        col += 1;
    }
    if end < chars.len() {
        shown.push('…');
    }
    Some(format!(
        "\n {line} | {shown}\n {:gutter$} | {:>col$}",
        "", "^"
    ))
}

/// Characters of a message kept from each of its ends when it is longer than twice that.
const MESSAGE_REACH: usize = 500;

/// `message` cut to its first and last `MESSAGE_REACH` characters around a `…` when it is
/// longer: messages quote keys, values and `--set` assignments as given (the field at the
/// start, what is allowed at the end), and a value of megabytes must not become a message of
/// megabytes.
fn shorten(message: &str) -> String {
    let chars = message.chars().count();
    if chars <= 2 * MESSAGE_REACH {
        return message.to_string();
    }
    let head = message.chars().take(MESSAGE_REACH);
    let tail = message.chars().skip(chars - MESSAGE_REACH);
    head.chain(['…']).chain(tail).collect()
}

/// 1-based line and column of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Finds where `path` (`meta.meta_batch`) is assigned in a conventionally written spec:
/// `[meta]` followed by `meta_batch = ...`, or a top-level key. Best effort: a spec written
/// with dotted keys or inline tables just gets no line number.
pub fn locate_key(text: &str, path: &str) -> Option<(usize, usize)> {
    let (table, key) = match path.rsplit_once('.') {
        Some((table, key)) => (table, key),
        None => ("", path),
    };
    let mut current = String::new();
    // Array-of-tables headers seen so far: `[[data.tasks]]` opens `data.tasks[0]`, then `[1]`.
    let mut arrays: std::collections::HashMap<String, usize> = Default::default();
    for (i, line) in text.lines().enumerate() {
        // A header may carry a comment after it: `[[data.tasks]] # the price`.
        let trimmed = line.split('#').next().unwrap_or_default().trim();
        if let Some(header) = trimmed
            .strip_prefix("[[")
            .and_then(|h| h.strip_suffix("]]"))
        {
            let header = header.trim().to_string();
            let index = arrays.entry(header.clone()).or_insert(0);
            current = format!("{header}[{index}]");
            *index += 1;
            continue;
        }
        if let Some(header) = trimmed.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            current = header.trim().to_string();
            continue;
        }
        let Some((k, _)) = trimmed.split_once('=') else {
            continue;
        };
        if current == table && k.trim() == key {
            let col = line.len() - line.trim_start().len() + 1;
            return Some((i + 1, col));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_in_their_table() {
        let text = "name = \"a\"\n[task]\nshots = 1\n[meta]\n  shots = 2\n";
        assert_eq!(locate_key(text, "task.shots"), Some((3, 1)));
        let arrays = "[data]\n[[data.tasks]]\nloss = 1\n[[data.tasks]] # two\nloss = 2\n";
        assert_eq!(locate_key(arrays, "data.tasks[1].loss"), Some((5, 1)));
        assert_eq!(locate_key(arrays, "data.tasks[0].loss"), Some((3, 1)));
        assert_eq!(locate_key(text, "meta.shots"), Some((5, 3)));
        assert_eq!(locate_key(text, "name"), Some((1, 1)));
        assert_eq!(locate_key(text, "eval.shots"), None);
    }

    #[test]
    fn a_long_line_is_shown_around_its_column() {
        let line = format!("{}bad{}", "a".repeat(500), "z".repeat(500));
        let shown = excerpt(&line, (1, 501)).unwrap();
        let expected_line = format!("…{}bad{}…", "a".repeat(60), "z".repeat(58));
        assert_eq!(shown, format!("\n 1 | {expected_line}\n   | {:>62}", "^"));
    }

    #[test]
    fn a_long_message_is_cut_to_its_ends() {
        // Found by tests/fuzz_spec.rs: a name or an unknown key of 10 KB made a message of 10 KB.
        let key = "a".repeat(10_000);
        let e = SpecError::at(
            "",
            "s.toml",
            None,
            format!("unknown field `{key}`, expected `b`"),
        );
        let head = format!("unknown field `{}", "a".repeat(485));
        let tail = format!("{}`, expected `b`", "a".repeat(485));
        assert_eq!(e.message, format!("{head}…{tail}"));
        let short = "unknown field `stepz`, expected one of `steps`, `meta_batch`";
        assert_eq!(SpecError::at("", "s", None, short.into()).message, short);
    }

    #[test]
    fn an_error_shows_its_line_with_a_caret() {
        let e = SpecError::at("a = 1\nb = = 2\n", "s.toml", Some((2, 5)), "bad".into());
        assert_eq!(e.to_string(), "s.toml:2:5: bad\n 2 | b = = 2\n   |     ^");
    }
}
