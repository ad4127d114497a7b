//! Splitting a document into chunks for embedding: about [`TARGET`]
//! characters each, cut at paragraph and sentence boundaries where
//! possible, each chunk after the first opening with the end of the one
//! before (at most [`OVERLAP`] characters) so that a fact spanning a cut is
//! whole in one of them.
//!
//! Lengths are counted in characters, never bytes, so multi-byte text is
//! never cut inside a character.

/// Most characters in a chunk.
pub const TARGET: usize = 800;
/// Most characters a chunk repeats from the one before.
pub const OVERLAP: usize = 120;

/// A piece of text that is never cut further unless it alone exceeds
/// [`TARGET`]: a paragraph, or a sentence of a long paragraph.
struct Unit {
    text: String,
    /// Whether it opens a paragraph (joined with a blank line, not a space).
    opens_paragraph: bool,
}

fn len(text: &str) -> usize {
    text.chars().count()
}

/// Paragraphs (separated by blank lines), whitespace inside collapsed.
fn paragraphs(text: &str) -> Vec<String> {
    let mut out = vec![];
    let mut current: Vec<&str> = vec![];
    for line in text.lines().map(str::trim) {
        if line.is_empty() {
            if !current.is_empty() {
                out.push(current.join(" "));
                current.clear();
            }
        } else {
            current.push(line);
        }
    }
    if !current.is_empty() {
        out.push(current.join(" "));
    }
    out.into_iter()
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|p| !p.is_empty())
        .collect()
}

/// Sentences of a paragraph: cut after `.`, `!` or `?` followed by a space.
fn sentences(paragraph: &str) -> Vec<String> {
    let mut out = vec![];
    let mut current = String::new();
    let mut chars = paragraph.chars().peekable();
    while let Some(c) = chars.next() {
        current.push(c);
        if matches!(c, '.' | '!' | '?') && chars.peek().is_some_and(|n| n.is_whitespace()) {
            out.push(current.trim().to_string());
            current.clear();
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_string());
    }
    out
}

/// Pieces of at most `max` characters, cut between words (inside a word
/// only when the word alone is longer).
fn pieces(text: &str, max: usize) -> Vec<String> {
    let mut out = vec![];
    let mut current = String::new();
    for word in text.split_whitespace() {
        let mut word = word.to_string();
        while len(&word) > max {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            let head: String = word.chars().take(max).collect();
            word = word.chars().skip(max).collect();
            out.push(head);
        }
        if word.is_empty() {
            continue;
        }
        let extra = if current.is_empty() { 0 } else { 1 };
        if len(&current) + extra + len(&word) > max {
            out.push(std::mem::take(&mut current));
        } else if extra == 1 {
            current.push(' ');
        }
        current.push_str(&word);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn units(text: &str) -> Vec<Unit> {
    let mut out = vec![];
    for paragraph in paragraphs(text) {
        let parts = if len(&paragraph) <= TARGET {
            vec![paragraph]
        } else {
            sentences(&paragraph)
                .into_iter()
                .flat_map(|s| {
                    if len(&s) <= TARGET {
                        vec![s]
                    } else {
                        pieces(&s, TARGET)
                    }
                })
                .collect()
        };
        for (i, text) in parts.into_iter().enumerate() {
            out.push(Unit {
                text,
                opens_paragraph: i == 0,
            });
        }
    }
    out
}

/// The end of `chunk` repeated at the start of the next: its last
/// sentences if they fit in [`OVERLAP`], else its last words that do.
fn overlap(chunk: &str) -> String {
    let chars: Vec<char> = chunk.chars().collect();
    if chars.len() <= OVERLAP {
        return String::new();
    }
    let window_start = chars.len() - OVERLAP;
    // A sentence start inside the window: after ". " (or "! ", "? ").
    for i in window_start..chars.len() {
        if i >= 2 && chars[i - 1] == ' ' && matches!(chars[i - 2], '.' | '!' | '?') {
            return chars[i..].iter().collect();
        }
    }
    // Else the words that fit.
    for i in window_start..chars.len() {
        if i >= 1 && chars[i - 1] == ' ' {
            return chars[i..].iter().collect();
        }
    }
    String::new()
}

/// The chunks of `text`, in order; none is empty or longer than [`TARGET`].
pub fn chunks(text: &str) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    let mut current = String::new();
    for unit in units(text) {
        let separator = match (current.is_empty(), unit.opens_paragraph) {
            (true, _) => "",
            (false, true) => "\n\n",
            (false, false) => " ",
        };
        if !current.is_empty() && len(&current) + len(separator) + len(&unit.text) > TARGET {
            let carried = overlap(&current);
            out.push(std::mem::take(&mut current));
            if !carried.is_empty() && len(&carried) + 1 + len(&unit.text) <= TARGET {
                current = carried;
                current.push(' ');
            }
        } else {
            current.push_str(separator);
        }
        current.push_str(&unit.text);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentence(i: usize) -> String {
        format!("Sentence number {i} says that partner escalations follow the playbook step {i}.")
    }

    #[test]
    fn empty_text_has_no_chunk() {
        assert!(chunks("").is_empty());
        assert!(chunks(" \n\n \t\n").is_empty());
    }

    #[test]
    fn short_text_is_one_chunk_with_whitespace_collapsed() {
        assert_eq!(
            chunks("  Hello   world.\nSecond line.\n\n\nNew paragraph.  "),
            ["Hello world. Second line.\n\nNew paragraph."]
        );
    }

    #[test]
    fn long_text_is_cut_at_sentences_with_overlap() {
        let paragraph: Vec<String> = (0..40).map(sentence).collect();
        let text = format!(
            "{}\n\n{}",
            paragraph[..20].join(" "),
            paragraph[20..].join(" ")
        );
        let chunks = chunks(&text);
        assert!(chunks.len() >= 4, "{chunks:#?}");
        for (i, chunk) in chunks.iter().enumerate() {
            let n = len(chunk);
            assert!(n <= TARGET, "{n}: {chunk}");
            assert!(
                n >= TARGET / 2 || i == chunks.len() - 1,
                "chunks are filled: {n}"
            );
            assert!(chunk.ends_with('.'), "cut at a sentence end: {chunk}");
        }
        for pair in chunks.windows(2) {
            let carried = overlap(&pair[0]);
            assert!(!carried.is_empty() && len(&carried) <= OVERLAP);
            assert!(pair[1].starts_with(&carried), "{pair:#?}");
            // The overlap is whole sentences.
            assert!(carried.starts_with("Sentence number"), "{carried}");
        }
        for s in &paragraph {
            assert!(chunks.iter().any(|c| c.contains(s.as_str())), "{s} is kept");
        }
    }

    #[test]
    fn short_paragraphs_are_packed_together() {
        let text = (0..30)
            .map(|i| format!("Paragraph {i} is short."))
            .collect::<Vec<_>>()
            .join("\n\n");
        let chunks = chunks(&text);
        assert_eq!(chunks.len(), 1, "{chunks:#?}");
        assert!(chunks[0].contains("short.\n\nParagraph 1 "));
    }

    #[test]
    fn a_word_longer_than_a_chunk_is_cut_between_characters() {
        let word = "é".repeat(TARGET * 2 + 10);
        let chunks = chunks(&format!("Before. {word} after."));
        assert!(chunks.iter().all(|c| len(c) <= TARGET));
        let joined: String = chunks.concat();
        assert_eq!(joined.matches('é').count() % (TARGET * 2 + 10), 0);
        assert!(chunks.last().unwrap().ends_with("after."));
    }

    #[test]
    fn sentences_split_only_before_whitespace() {
        assert_eq!(
            sentences("Version 1.2 is out. Really? Yes!"),
            ["Version 1.2 is out.", "Really?", "Yes!"]
        );
    }
}
