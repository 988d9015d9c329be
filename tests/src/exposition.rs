//! Reading the daemon's Prometheus exposition in tests: a strict parser of the text format
//! 0.0.4 subset it serves, and Prometheus' own checker (`promtool check metrics`).
//!
//! The parser stays hand-written: the crates that parse the format are either lenient (regular
//! expressions that split a label value at `}` and keep its escapes) or LGPL-licensed, and the
//! tests need exact label values and a clear error for a malformed line. promtool, from
//! Debian's prometheus package (scripts/setup.sh), is the reference for what Prometheus accepts.

use std::{
    collections::{BTreeMap, HashSet},
    io::Write,
    process::{Command, Stdio},
};

/// Runs `promtool check metrics` on `text`: Ok when Prometheus' parser and linter find nothing,
/// else what promtool said.
pub fn promtool_check(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running promtool ({e}); scripts/setup.sh installs it"))?;
    let written = child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes());
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    written.map_err(|e| format!("writing to promtool: {e}"))?;
    if out.status.success() && out.stdout.is_empty() && out.stderr.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "promtool check metrics ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// One parsed sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn new(name: &str, labels: &[(&str, &str)], value: f64) -> Self {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self {
            name: name.into(),
            labels,
            value,
        }
    }
}

const BLANK: [char; 2] = [' ', '\t'];

/// A strict parser of the text format subset the daemon serves: blank lines, comments,
/// HELP/TYPE lines and samples with optional labels and escaped label values, but no
/// timestamps. Every line must end with a newline. Errors name the 1-based line number.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    // (keyword, metric name): a family described twice means the producer split it.
    let mut described = HashSet::new();
    let mut lines = 0;
    for (i, line) in text.split_terminator('\n').enumerate() {
        lines = i + 1;
        let parsed = parse_line(line, &mut described).map_err(|e| format!("line {lines}: {e}"))?;
        samples.extend(parsed);
    }
    if !text.is_empty() && !text.ends_with('\n') {
        return Err(format!("line {lines}: missing final newline"));
    }
    Ok(samples)
}

fn parse_line<'a>(
    line: &'a str,
    described: &mut HashSet<(&'a str, &'a str)>,
) -> Result<Option<Sample>, String> {
    if line.trim_matches(BLANK).is_empty() {
        return Ok(None);
    }
    if let Some(comment) = line.strip_prefix('#') {
        parse_comment(comment, described)?;
        return Ok(None);
    }
    let (name, mut rest) = split_name(line, true);
    if name.is_empty() {
        return Err(format!("expected a metric name at {line:?}"));
    }
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.trim_start_matches(BLANK).strip_prefix('{') {
        (labels, rest) = parse_labels(after_brace)?;
    }
    let rest = rest
        .strip_prefix(BLANK)
        .ok_or_else(|| format!("expected a blank before the value of {name}"))?
        .trim_start_matches(BLANK);
    let (value, trailing) = rest.split_once(BLANK).unwrap_or((rest, ""));
    if !trailing.trim_matches(BLANK).is_empty() {
        return Err(format!(
            "unexpected text after the value of {name} (timestamps are not supported)"
        ));
    }
    Ok(Some(Sample {
        name: name.to_string(),
        labels,
        value: parse_value(value).ok_or_else(|| format!("invalid value {value:?} for {name}"))?,
    }))
}

/// `comment` is the line after '#'. Plain comments are accepted as they are; HELP and TYPE
/// lines are checked.
fn parse_comment<'a>(
    comment: &'a str,
    described: &mut HashSet<(&'a str, &'a str)>,
) -> Result<(), String> {
    let mut words = comment.trim_start_matches(BLANK).splitn(2, BLANK);
    let keyword = words.next().unwrap_or_default();
    if keyword != "HELP" && keyword != "TYPE" {
        return Ok(());
    }
    let rest = words.next().unwrap_or_default().trim_start_matches(BLANK);
    let (name, rest) = split_name(rest, true);
    if name.is_empty() {
        return Err(format!("expected a metric name after {keyword}"));
    }
    if !rest.is_empty() && !rest.starts_with(BLANK) {
        return Err(format!("invalid metric name in {keyword} line"));
    }
    let rest = rest.trim_matches(BLANK);
    if keyword == "TYPE" {
        const TYPES: [&str; 5] = ["counter", "gauge", "histogram", "summary", "untyped"];
        if !TYPES.contains(&rest) {
            return Err(format!("invalid type {rest:?} for {name}"));
        }
    } else {
        // HELP text may only escape a backslash or a newline.
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            if c == '\\' && !matches!(chars.next(), Some('\\' | 'n')) {
                return Err(format!("invalid escape in HELP text of {name}"));
            }
        }
    }
    if !described.insert((keyword, name)) {
        return Err(format!("duplicate {keyword} line for {name}"));
    }
    Ok(())
}

/// Splits a leading metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`) or, without `colon`, a label name
/// (`[a-zA-Z_][a-zA-Z0-9_]*`) off `s`; the name is empty when `s` does not start with one.
fn split_name(s: &str, colon: bool) -> (&str, &str) {
    let ok = |i: usize, c: char| {
        c.is_ascii_alphabetic() || c == '_' || (colon && c == ':') || (i > 0 && c.is_ascii_digit())
    };
    let end = s
        .char_indices()
        .find(|&(i, c)| !ok(i, c))
        .map_or(s.len(), |(i, _)| i);
    s.split_at(end)
}

/// Parses `name="value",...}` (the part after '{') and returns the labels and the rest.
fn parse_labels(mut rest: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        rest = rest.trim_start_matches(BLANK);
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (name, after) = split_name(rest, false);
        if name.is_empty() {
            return Err(format!("expected a label name or '}}' at {rest:?}"));
        }
        let after = after.trim_start_matches(BLANK);
        let after = after
            .strip_prefix('=')
            .ok_or_else(|| format!("expected '=' after label {name}"))?
            .trim_start_matches(BLANK);
        let after = after
            .strip_prefix('"')
            .ok_or_else(|| format!("expected '\"' to open the value of label {name}"))?;
        let (value, after) = parse_label_value(after).map_err(|e| format!("label {name}: {e}"))?;
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("duplicate label {name}"));
        }
        rest = after.trim_start_matches(BLANK);
        match rest.strip_prefix(',') {
            Some(after) => rest = after,
            None if rest.starts_with('}') => {}
            None => return Err(format!("expected ',' or '}}' after label {name}")),
        }
    }
}

/// Unescapes a label value up to its closing quote; returns it and the rest after the quote.
fn parse_label_value(s: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, 'n')) => value.push('\n'),
                _ => return Err("invalid escape sequence".into()),
            },
            c => value.push(c),
        }
    }
    Err("unterminated value".into())
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        // Rust also reads "inf", "nan" and overflows as non-finite; the format does not.
        _ => s.parse().ok().filter(|v: &f64| v.is_finite()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_the_format_around_samples() {
        let text = "# a plain comment\n\n# HELP x Help with \\\\ and \\n.\n# TYPE x counter\n\
                    x{} 1\nx{a=\"1\",b=\"2\",} -2.5e3\ny +Inf\n";
        let samples = parse(text).unwrap();
        assert_eq!(
            samples,
            vec![
                Sample::new("x", &[], 1.0),
                Sample::new("x", &[("a", "1"), ("b", "2")], -2500.0),
                Sample::new("y", &[], f64::INFINITY),
            ]
        );
        assert_eq!(parse(""), Ok(vec![]));
    }

    #[test]
    fn parse_rejects_malformed_lines_naming_the_line() {
        let cases = [
            ("x\n", 1, "expected a blank before the value"),
            ("ok 1\nx{a=\"b\" 1\n", 2, "expected ',' or '}'"),
            ("1x 1\n", 1, "expected a metric name"),
            ("x{a=b} 1\n", 1, "expected '\"'"),
            ("x{a=\"b\\q\"} 1\n", 1, "invalid escape"),
            ("x{a=\"b} 1\n", 1, "unterminated value"),
            ("x{a=\"1\",a=\"2\"} 1\n", 1, "duplicate label a"),
            ("x{1a=\"v\"} 1\n", 1, "expected a label name"),
            ("x{a=\"v\"}1\n", 1, "expected a blank before the value"),
            ("ok 1\n\nx one\n", 3, "invalid value \"one\""),
            ("x inf\n", 1, "invalid value"),
            ("x 1 1700000000\n", 1, "timestamps are not supported"),
            ("x 1\r\n", 1, "invalid value"),
            ("# TYPE x countr\n", 1, "invalid type"),
            (
                "# TYPE x counter\nx 1\n# TYPE x counter\n",
                3,
                "duplicate TYPE line for x",
            ),
            ("# HELP x bad \\t escape\n", 1, "invalid escape in HELP"),
            ("# HELP\n", 1, "expected a metric name after HELP"),
            ("ok 1\nx 1", 2, "missing final newline"),
        ];
        for (text, line, fragment) in cases {
            let err = parse(text).expect_err(text);
            assert!(
                err.starts_with(&format!("line {line}: ")),
                "{text:?}: {err}"
            );
            assert!(err.contains(fragment), "{text:?}: {err}");
        }
    }
}
