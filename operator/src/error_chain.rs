//! The message conditions and Events carry for an error: its cause chain,
//! each cause once, at most 1 KiB.

/// `error` and its causes, joined by `: `, truncated to 1 KiB.
pub fn message(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    if text.len() > 1024 {
        let mut cut = 1021;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}
