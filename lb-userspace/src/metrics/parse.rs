//! A strict parser of the Prometheus text format subset `render` produces, for tests.

use std::collections::{BTreeMap, HashSet};

/// One parsed sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

const BLANK: [char; 2] = [' ', '\t'];

/// A strict parser of the text format subset `render` produces: blank lines, comments,
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
