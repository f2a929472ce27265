//! Text from callers and for callers: bounded in length, control characters escaped.

/// The most of an error message a reply carries: it travels in an HTTP/2 header, and one of
/// tens of kilobytes (a spec error quoting a long line) broke the reply itself.
pub const MAX_MESSAGE_CHARS: usize = 2048;

/// `message`, cut at [`MAX_MESSAGE_CHARS`] with a note that it was.
pub fn bounded(message: String) -> String {
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}… ({} more bytes)", &message[..cut], message.len() - cut),
        None => message,
    }
}

/// Text a caller chose that others will read (a worker's name, a spec's source name): at most
/// `max` characters, control characters (terminal escapes) shown as `\u{..}`.
pub fn printable(text: &str, max: usize) -> String {
    let mut shown = String::new();
    for c in text.chars().take(max) {
        if c.is_control() {
            shown.extend(c.escape_unicode());
        } else {
            shown.push(c);
        }
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_and_callers_text_is_printable() {
        let long = "é".repeat(5000);
        let cut = bounded(long.clone());
        assert!(cut.starts_with(&"é".repeat(MAX_MESSAGE_CHARS)));
        assert!(cut.ends_with(&format!(
            "… ({} more bytes)",
            2 * (5000 - MAX_MESSAGE_CHARS)
        )));
        assert_eq!(bounded("short".into()), "short");
        assert_eq!(
            printable("gpu\u{1b}[31m-box\n", 100),
            "gpu\\u{1b}[31m-box\\u{a}"
        );
        assert_eq!(printable(&"w".repeat(500), 128).len(), 128);
    }
}
