//! A file's text as documents. YAML is split at its document markers before parsing, each
//! document on its own, because serde_yaml's stream stops at the first syntax error and every
//! later document would be lost. JSON (one value, or a stream of them as `jq -c` prints, which
//! is no YAML) goes to serde_json. Positions in messages are the file's, not the document's.

use serde::Deserialize;
use serde_yaml::Value;

/// One document: its 1-based index in the file, its text, and its value or why it has none.
pub(super) struct Document<'a> {
    pub index: usize,
    pub text: &'a str,
    pub value: Result<Value, String>,
}

/// Hand each document of `text` to `each`, in order.
pub(super) fn each(text: &str, each: &mut dyn FnMut(Document)) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if looks_like_json(text) {
        json(text, each)
    } else {
        yaml(text, each)
    }
}

/// An object (`{"`) or an array of them (`[{"`): JSON, not YAML's flow style (`{name: x}`).
fn looks_like_json(text: &str) -> bool {
    let text = text.trim_start();
    let text = text.strip_prefix('[').map_or(text, str::trim_start);
    text.strip_prefix('{')
        .is_some_and(|rest| rest.trim_start().starts_with('"'))
}

fn yaml(text: &str, each: &mut dyn FnMut(Document)) {
    let chunks = Chunks {
        rest: text,
        line: 1,
    };
    for (i, chunk) in chunks.enumerate() {
        let value = Value::deserialize(serde_yaml::Deserializer::from_str(chunk.text))
            .map_err(|e| yaml_error(&e, &chunk));
        each(Document {
            index: i + 1,
            text: chunk.text,
            value,
        });
    }
}

/// serde_yaml's message with the file's positions: it counted lines from the document's
/// first, gives a reader error's byte offset instead, and omits a position at its very start.
fn yaml_error(e: &serde_yaml::Error, chunk: &Chunk) -> String {
    let message = e.to_string();
    let offset = message
        .rsplit_once(" at position ")
        .and_then(|(head, n)| Some((head, n.parse::<usize>().ok()?)));
    if let Some((head, offset)) = offset {
        let (line, column) = line_column(chunk.text, offset);
        return format!("{head} at line {} column {column}", line + chunk.line - 1);
    }
    let mut message = shift_lines(&message, chunk.line - 1);
    if let Some(at) = e.location().filter(|_| !message.contains(" at line ")) {
        let line = at.line() + chunk.line - 1;
        message += &format!(" at line {line} column {}", at.column());
    }
    message
}

/// The 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (before.matches('\n').count() + 1, column)
}

/// A stream of JSON values. After a syntax error, parsing resumes at the next line that
/// starts with `{`: where `jq` starts each top-level object.
fn json(text: &str, each: &mut dyn FnMut(Document)) {
    let (mut from, mut line, mut index) = (0, 1, 0);
    while from < text.len() {
        let mut values = serde_json::Deserializer::from_str(&text[from..]).into_iter::<Value>();
        let failed = loop {
            let start = skip_whitespace(text, from + values.byte_offset());
            index += 1;
            match values.next() {
                None => return,
                Some(Ok(value)) => {
                    let text = &text[start..from + values.byte_offset()];
                    each(Document {
                        index,
                        text,
                        value: Ok(value),
                    });
                }
                Some(Err(e)) => break (start, e),
            }
        };
        let (start, e) = failed;
        let end = next_line_starting_with(text, start, '{');
        let value = Err(json_error(&e, &text[from..], line));
        each(Document {
            index,
            text: &text[start..end],
            value,
        });
        line += text[from..end].matches('\n').count();
        from = end;
    }
}

/// serde_json's message with the file's position: it counted lines from `text`, at line
/// `first_line`, and puts an error at a line's end at column 0 of the next one.
fn json_error(e: &serde_json::Error, text: &str, first_line: usize) -> String {
    let message = e.to_string();
    let (line, column) = (e.line(), e.column());
    let Some(bare) = message.strip_suffix(&format!(" at line {line} column {column}")) else {
        return message;
    };
    let previous = line.checked_sub(2).and_then(|n| text.lines().nth(n));
    let (line, column) = match previous {
        Some(previous) if column == 0 => (line - 1, previous.chars().count() + 1),
        _ => (line, column),
    };
    format!("{bare} at line {} column {column}", line + first_line - 1)
}

fn skip_whitespace(text: &str, at: usize) -> usize {
    text.len() - text[at..].trim_start().len()
}

/// The offset of the first line after `at` that starts with `c`, or the end of `text`.
fn next_line_starting_with(text: &str, at: usize, c: char) -> usize {
    let mut pattern = [0; 5];
    let pattern = format!("\n{}", c.encode_utf8(&mut pattern));
    text[at..].find(&pattern).map_or(text.len(), |i| at + i + 1)
}

/// `message` with the line of each position (`at line N column M`) moved `by` lines down: the
/// parser counted from the first line of what it was given.
fn shift_lines(message: &str, by: usize) -> String {
    const AT: &str = " at line ";
    let mut out = String::with_capacity(message.len() + 4);
    let mut rest = message;
    while let Some(i) = rest.find(AT) {
        let (before, after) = rest.split_at(i + AT.len());
        out.push_str(before);
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        match after[..digits].parse::<usize>() {
            Ok(n) if after[digits..].starts_with(" column ") => out.push_str(&(n + by).to_string()),
            _ => out.push_str(&after[..digits]),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// A YAML document's text and the file line it starts on.
struct Chunk<'a> {
    text: &'a str,
    line: usize,
}

/// YAML text cut at the document markers at column 0: before a `---` (alone on its line or
/// followed by a space and content) and after a `...`. Comments and directives before a `---`
/// belong to its document; a part with nothing else is no document, as for libyaml. Column 0
/// is safe: a block scalar's lines are indented, and a quoted scalar cannot hold a marker.
struct Chunks<'a> {
    rest: &'a str,
    line: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Marker {
    Start,
    End,
}

impl<'a> Iterator for Chunks<'a> {
    type Item = Chunk<'a>;

    fn next(&mut self) -> Option<Chunk<'a>> {
        let (mut content, mut len, mut lines) = (false, 0, 0);
        for line in self.rest.split_inclusive('\n') {
            let marker = marker(line);
            if content && marker == Some(Marker::Start) {
                break;
            }
            len += line.len();
            lines += 1;
            if content && marker == Some(Marker::End) {
                break;
            }
            content |= match marker {
                Some(m) => m == Marker::Start,
                None => !preamble(line),
            };
        }
        let (text, rest) = self.rest.split_at(len);
        let chunk = Chunk {
            text,
            line: self.line,
        };
        self.rest = rest;
        self.line += lines;
        // Without content the loop ran to the end of the text.
        content.then_some(chunk)
    }
}

fn marker(line: &str) -> Option<Marker> {
    let line = line.trim_end_matches(['\n', '\r']);
    let marker = match line.get(..3)? {
        "---" => Marker::Start,
        "..." => Marker::End,
        _ => return None,
    };
    let after = &line[3..];
    (after.is_empty() || after.starts_with([' ', '\t'])).then_some(marker)
}

/// A blank line, a comment or a directive: no document by itself.
fn preamble(line: &str) -> bool {
    let trimmed = line.trim_start();
    trimmed.is_empty() || trimmed.starts_with('#') || line.starts_with('%')
}
