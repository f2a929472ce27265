//! What an experiment's name may be: short printable text, since it is shown in `status`, `watch` and logs to everyone.

use super::error::Invalid;

/// The longest name, in characters.
pub const MAX_NAME_CHARS: usize = 128;

/// Refuses an empty name, a long one, and one with control characters (terminal escapes in a
/// name would let its author forge lines in other people's terminals and logs). The error
/// never repeats the name: it may be megabytes long.
pub fn check_name(name: &str) -> Result<(), Invalid> {
    let refuse = |why: String| Err(("name".to_string(), why));
    if name.trim().is_empty() {
        return refuse("must not be empty".into());
    }
    let chars = name.chars().count();
    if chars > MAX_NAME_CHARS {
        return refuse(format!(
            "is {chars} characters long; at most {MAX_NAME_CHARS}"
        ));
    }
    if let Some((at, c)) = name.chars().enumerate().find(|(_, c)| c.is_control()) {
        return refuse(format!(
            "holds the control character U+{:04X} at character {}; a name is printable text",
            c as u32,
            at + 1
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_printable_text_and_errors_never_echo_them() {
        assert!(check_name("sinusoid-maml 5w1s (α=0.4)").is_ok());
        for (name, says) in [
            (String::new(), "must not be empty"),
            ("   ".to_string(), "must not be empty"),
            ("x".repeat(129), "is 129 characters long; at most 128"),
            ("ok\u{1b}[2Jforged".to_string(), "U+001B at character 3"),
            ("two\nlines".to_string(), "U+000A"),
        ] {
            let (field, message) = check_name(&name).unwrap_err();
            assert_eq!(field, "name");
            assert!(message.contains(says), "{message}");
            assert!(name.trim().is_empty() || !message.contains(&name));
        }
    }
}
