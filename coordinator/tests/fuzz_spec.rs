//! Property tests of the spec parser: arbitrary and mutated documents and `--set` overrides are refused with a short, located message or parse to a spec that round-trips, and never panic.

mod fuzz_config;

use outerloop_coordinator::spec::{ExperimentSpec, Spec, SpecError};
use proptest::prelude::*;
use proptest::sample::{select, Index};

/// Every spec shipped in `configs/`: real documents for the mutations to start from.
const CORPUS: &[&str] = &[
    include_str!("../../configs/miniimagenet_5w1s_anil.toml"),
    include_str!("../../configs/miniimagenet_5w1s_fomaml.toml"),
    include_str!("../../configs/miniimagenet_5w1s_maml.toml"),
    include_str!("../../configs/miniimagenet_5w1s_metasgd.toml"),
    include_str!("../../configs/miniimagenet_5w1s_protonet.toml"),
    include_str!("../../configs/miniimagenet_5w1s_reptile.toml"),
    include_str!("../../configs/miniimagenet_5w5s_anil.toml"),
    include_str!("../../configs/miniimagenet_5w5s_fomaml.toml"),
    include_str!("../../configs/miniimagenet_5w5s_maml.toml"),
    include_str!("../../configs/miniimagenet_5w5s_metasgd.toml"),
    include_str!("../../configs/miniimagenet_5w5s_protonet.toml"),
    include_str!("../../configs/miniimagenet_5w5s_reptile.toml"),
    include_str!("../../configs/mtl_gradnorm.toml"),
    include_str!("../../configs/mtl_pareto_toy.toml"),
    include_str!("../../configs/mtl_shapes_conv4.toml"),
    include_str!("../../configs/mtl_shapes_images.toml"),
    include_str!("../../configs/mtl_table.toml"),
    include_str!("../../configs/omniglot_20w1s_maml.toml"),
    include_str!("../../configs/omniglot_20w1s_protonet.toml"),
    include_str!("../../configs/omniglot_5w1s_maml.toml"),
    include_str!("../../configs/omniglot_5w1s_protonet.toml"),
    include_str!("../../configs/sinusoid_maml.toml"),
];

/// Characters of the offending line an excerpt may show (the parser's `EXCERPT_REACH` on each
/// side of the column, and an ellipsis at each cut), plus the gutter.
const MAX_EXCERPT_LINE_CHARS: usize = 2 * 60 + 2 + 32;

/// Characters of a message the parser keeps: 500 from each end, and a `…` between.
const MAX_MESSAGE_CHARS: usize = 2 * 500 + 1;

/// The most an error may take to show, location and excerpt included, whatever the input.
const MAX_SHOWN_BYTES: usize = 10 * 1024;

/// Text that breaks TOML or stretches what the parser and the validation accept.
const HOSTILE: &[&str] = &[
    "=",
    "==",
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    ",",
    ".",
    "..",
    "#",
    "\"",
    "'",
    "\"\"\"",
    "'''",
    "\\",
    "\\u",
    "\\U0010FFFF",
    "\n",
    "\r",
    "\r\n",
    "\t",
    " ",
    "\0",
    "\u{7f}",
    "\u{1b}[31m",
    "\u{feff}",
    "\u{202e}",
    "\u{3000}",
    "\u{a0}",
    "é",
    "🦀",
    "\u{10ffff}",
    "\u{fffd}",
    "0",
    "-1",
    "-0.0",
    "+inf",
    "-inf",
    "nan",
    "1e400",
    "-1e400",
    "1e-400",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "-9223372036854775808",
    "99999999999999999999999999",
    "0x7fffffff",
    "0o777",
    "0b1",
    "1_000_000",
    "3.4028236e38",
    "1979-05-27T07:32:00Z",
    "true",
    "[]",
    "{}",
    "\"\"",
    "[8192, 8192, 8192]",
    "[0]",
    "[1, -1]",
    "\"../../etc/passwd\"",
    "kind = \"mtl\"",
    "[meta]",
    "[[data.tasks]]",
    "[task]\n",
    "a.b.c = 1",
    "x = {a = {b = 1}}",
];

/// Section and field names of the schemas, so that generated paths often hit real fields.
const FIELDS: &[&str] = &[
    "name",
    "seed",
    "kind",
    "task",
    "model",
    "meta",
    "eval",
    "data",
    "train",
    "weighting",
    "family",
    "dataset",
    "ways",
    "shots",
    "queries",
    "hidden",
    "filters",
    "algorithm",
    "steps",
    "meta_batch",
    "inner_steps",
    "inner_lr",
    "optimizer",
    "meta_lr",
    "chunk_tasks",
    "every",
    "tasks",
    "final_tasks",
    "image_size",
    "channels",
    "layout",
    "rotations",
    "amplitude",
    "phase",
    "x",
    "lr",
    "batch",
    "chunk_rows",
    "method",
    "target",
    "targets",
    "loss",
    "outputs",
    "features",
    "split_column",
    "fractions",
    "experts",
    "fingerprint",
    "lr_schedule",
    "",
];

/// One edit of a document.
#[derive(Clone, Debug)]
enum Mutation {
    /// Flips one bit of one byte (the result read back as UTF-8, lossily).
    FlipBit { at: Index, bit: u8 },
    /// Cuts the document at a character.
    Truncate { at: Index },
    /// Inserts text at a character.
    Insert { at: Index, text: String },
    /// Replaces a run of digits with other text (a huge number, a string, punctuation).
    ReplaceNumber { nth: Index, with: String },
    /// Removes a line.
    DeleteLine { line: Index },
    /// Repeats a line (a duplicate key or section).
    DuplicateLine { line: Index },
}

/// Text to insert: hostile fragments, long runs, deep nesting, unicode and control characters.
fn insertion() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(HOSTILE).prop_map(str::to_string),
        1 => (1usize..4000).prop_map(|n| format!("x = {}{}", "[".repeat(n), "]".repeat(n))),
        1 => (1usize..4000).prop_map(|n| format!("x = {}1{}", "{a = ".repeat(n), "}".repeat(n))),
        1 => (1usize..4000).prop_map(|n| format!("\n{} = 1\n", vec!["a"; n].join("."))),
        1 => (1usize..4000).prop_map(|n| format!("\n[{}]\n", vec!["a"; n].join("."))),
        1 => (1usize..20_000).prop_map(|n| "a".repeat(n)),
        1 => (1usize..20_000).prop_map(|n| "9".repeat(n)),
        1 => prop::collection::vec(any::<char>(), 1..8).prop_map(String::from_iter),
        1 => "[\\x00-\\x1f\\x7f]{1,4}",
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        1 => any::<Index>().prop_map(|at| Mutation::Truncate { at }),
        4 => (any::<Index>(), insertion()).prop_map(|(at, text)| Mutation::Insert { at, text }),
        3 => (any::<Index>(), insertion()).prop_map(|(nth, with)| Mutation::ReplaceNumber { nth, with }),
        1 => any::<Index>().prop_map(|line| Mutation::DeleteLine { line }),
        1 => any::<Index>().prop_map(|line| Mutation::DuplicateLine { line }),
    ]
}

/// The byte offset of the character `at` picks (or the end of the text).
fn char_boundary(text: &str, at: &Index) -> usize {
    let boundaries: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .collect();
    boundaries[at.index(boundaries.len())]
}

fn apply(text: &str, mutation: &Mutation) -> String {
    match mutation {
        Mutation::FlipBit { at, bit } => {
            let mut bytes = text.as_bytes().to_vec();
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] ^= 1 << bit;
            }
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Mutation::Truncate { at } => text[..char_boundary(text, at)].to_string(),
        Mutation::Insert { at, text: inserted } => {
            let at = char_boundary(text, at);
            format!("{}{inserted}{}", &text[..at], &text[at..])
        }
        Mutation::ReplaceNumber { nth, with } => {
            let runs: Vec<(usize, usize)> = digit_runs(text);
            if runs.is_empty() {
                return text.to_string();
            }
            let (start, end) = runs[nth.index(runs.len())];
            format!("{}{with}{}", &text[..start], &text[end..])
        }
        Mutation::DeleteLine { line } => {
            let mut lines: Vec<&str> = text.split('\n').collect();
            lines.remove(line.index(lines.len()));
            lines.join("\n")
        }
        Mutation::DuplicateLine { line } => {
            let mut lines: Vec<&str> = text.split('\n').collect();
            let i = line.index(lines.len());
            lines.insert(i, lines[i]);
            lines.join("\n")
        }
    }
}

/// Byte ranges of the runs of ASCII digits in `text`.
fn digit_runs(text: &str) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut start = None;
    for (i, b) in text.bytes().enumerate().chain([(text.len(), b' ')]) {
        match (b.is_ascii_digit(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                runs.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    runs
}

/// A real spec after a few mutations.
fn mutated_spec() -> impl Strategy<Value = String> {
    (select(CORPUS), prop::collection::vec(mutation(), 1..5)).prop_map(|(seed, mutations)| {
        mutations
            .iter()
            .fold(seed.to_string(), |text, m| apply(&text, m))
    })
}

/// Text of no particular shape: any characters, or TOML's own alphabet, which gets further.
fn arbitrary_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z_=\\[\\]{}\"'.,#0-9 \\n+-]{0,400}",
        prop::collection::vec(select(HOSTILE), 0..40).prop_map(|parts| parts.concat()),
    ]
}

/// A `--set` assignment: usually `path=value` with a real-looking path (array indices, huge
/// indices, empty segments, long chains), sometimes anything at all.
fn assignment() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        6 => select(FIELDS).prop_map(str::to_string),
        1 => (select(FIELDS), any::<u64>()).prop_map(|(f, i)| format!("{f}[{i}]")),
        1 => (select(FIELDS), 0u64..4).prop_map(|(f, i)| format!("{f}[{i}]")),
        1 => "[a-z\\[\\]. =\"]{0,6}",
    ];
    let path = prop_oneof![
        8 => prop::collection::vec(segment, 1..4).prop_map(|s| s.join(".")),
        1 => (1usize..3000).prop_map(|n| vec!["a"; n].join(".")),
        1 => (1usize..3000).prop_map(|n| vec!["data.tasks[0]"; n].join(".")),
    ];
    let value = prop_oneof![
        4 => select(HOSTILE).prop_map(str::to_string),
        1 => (1usize..3000).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n))),
        1 => ".{0,30}",
    ];
    prop_oneof![
        8 => (path, value).prop_map(|(p, v)| format!("{p}={v}")),
        1 => ".{0,40}",
    ]
}

fn overrides() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(assignment(), 0..4)
}

/// What any outcome of parsing must satisfy: a refusal says something, briefly, and points
/// inside the document; an acceptance is a spec that reads back as itself.
fn check_outcome(
    text: &str,
    outcome: Result<ExperimentSpec, SpecError>,
) -> Result<(), TestCaseError> {
    match outcome {
        Ok(spec) => {
            // What the store keeps is `to_toml`: it must give back the same spec.
            let stored = spec.to_toml();
            let again = ExperimentSpec::parse(&stored, "stored", &[]);
            prop_assert_eq!(again.as_ref(), Ok(&spec), "stored as:\n{}", stored);
        }
        Err(e) => check_error(text, &e)?,
    }
    Ok(())
}

fn check_error(text: &str, e: &SpecError) -> Result<(), TestCaseError> {
    let shown = e.to_string();
    prop_assert!(!e.message.trim().is_empty(), "an empty message: {:?}", e);
    prop_assert!(shown.starts_with(&e.source_name), "{}", shown);
    // The parser cuts a message to its first and last 500 characters; the excerpt is cut too.
    prop_assert!(
        e.message.chars().count() <= MAX_MESSAGE_CHARS,
        "a message of {} characters: {:.300}",
        e.message.chars().count(),
        e.message
    );
    prop_assert!(shown.len() < MAX_SHOWN_BYTES, "{} bytes shown", shown.len());
    if let Some((line, column)) = e.location {
        let lines: Vec<&str> = text.split('\n').collect();
        prop_assert!(
            (1..=lines.len()).contains(&line),
            "line {} of {}: {}",
            line,
            lines.len(),
            shown
        );
        let chars = lines[line - 1].chars().count();
        prop_assert!(
            (1..=chars + 1).contains(&column),
            "column {} of a line of {} characters: {}",
            column,
            chars,
            shown
        );
    }
    if let Some(excerpt) = &e.excerpt {
        prop_assert!(e.location.is_some(), "an excerpt without a location");
        for shown_line in excerpt.lines() {
            prop_assert!(
                shown_line.chars().count() <= MAX_EXCERPT_LINE_CHARS,
                "an excerpt line of {} characters",
                shown_line.chars().count()
            );
        }
    }
    Ok(())
}

/// Parses with both entry points: any kind, and the meta-learning parser alone.
fn parse_both(text: &str, overrides: &[String]) -> Result<(), TestCaseError> {
    let any_kind = ExperimentSpec::parse(text, "fuzz.toml", overrides);
    check_outcome(text, any_kind)?;
    if let Err(e) = Spec::parse(text, "fuzz.toml", overrides) {
        check_error(text, &e)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(fuzz_config::config(1000))]

    #[test]
    fn arbitrary_text_is_refused_cleanly(text in arbitrary_text(), overrides in overrides()) {
        parse_both(&text, &overrides)?;
    }

    #[test]
    fn mutated_specs_are_refused_cleanly_or_round_trip(text in mutated_spec()) {
        parse_both(&text, &[])?;
    }

    #[test]
    fn arbitrary_overrides_of_real_specs_are_refused_cleanly_or_round_trip(
        text in select(CORPUS),
        overrides in overrides(),
    ) {
        parse_both(text, &overrides)?;
    }

    #[test]
    fn mutated_specs_with_overrides_are_refused_cleanly(
        text in mutated_spec(),
        overrides in overrides(),
    ) {
        parse_both(&text, &overrides)?;
    }
}

/// Every shipped spec parses: the corpus is worth mutating.
#[test]
fn the_corpus_parses() {
    for text in CORPUS {
        let parsed = ExperimentSpec::parse(text, "corpus.toml", &[]);
        assert!(parsed.is_ok(), "{parsed:?}");
    }
}
