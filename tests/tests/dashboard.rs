//! The Grafana dashboard (scripts/grafana/xdplb-dashboard.json) against what the daemon exports.
//!
//! Every query of the dashboard is scanned with a small PromQL lexer: the metrics it names must
//! be exported by `metrics::render` (the text format 0.0.4, clean for promtool), the labels it
//! filters or groups on must exist on those metrics, literal label values must be values the
//! daemon produces, counters may only be read through `rate`/`irate`/`increase`, and every
//! exported family must be shown by some panel. No root, no network: the exported metrics come
//! from rendering a snapshot in memory. Last, a real Prometheus on loopback scrapes the metrics
//! server serving that snapshot and answers every panel's and variable's query with data (an
//! annotation's condition need not hold, its query must only run).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
    sync::Arc,
};

use lb_common::stats::{self, EVENT_BASE, EVENT_COUNT, VERDICT_COUNT};
use lb_tests::{
    exposition,
    prometheus::{sample_value, Prometheus},
};
use lb_userspace::metrics::{
    self, BackendMetrics, Format, MetricsSnapshot, NodeMetrics, VipMetrics,
};
use serde_json::Value;

const DASHBOARD: &str = "../scripts/grafana/xdplb-dashboard.json";

/// Labels Prometheus attaches to every scraped series: not in the daemon's output.
const SCRAPE_LABELS: [&str; 2] = ["instance", "job"];

/// Variables Grafana defines itself.
const BUILTIN_VARIABLES: [&str; 6] = [
    "__rate_interval",
    "__interval",
    "__interval_ms",
    "__range",
    "__range_s",
    "__all",
];

/// Functions that make sense only for counters.
const COUNTER_FUNCTIONS: [&str; 4] = ["rate", "irate", "increase", "resets"];

/// Clauses that name labels in parentheses.
const GROUPING: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Identifiers before '(' that are not function calls (besides `GROUPING`).
const NOT_FUNCTIONS: [&str; 5] = ["and", "or", "unless", "bool", "offset"];

// ---------------------------------------------------------------------------------------------
// The dashboard

fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DASHBOARD);
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

/// Every panel, rows included, with the panels of collapsed rows.
fn panels(dash: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

fn is_row(panel: &Value) -> bool {
    panel["type"] == "row"
}

fn panel_name(panel: &Value) -> String {
    format!(
        "panel {} {:?}",
        panel["id"],
        panel["title"].as_str().unwrap_or("")
    )
}

/// A PromQL text the dashboard sends to Prometheus.
struct Query {
    /// Where it is, for messages.
    place: String,
    expr: String,
    /// `legendFormat`, `textFormat` or `titleFormat`: may name labels as `{{label}}`.
    formats: Vec<String>,
    /// For `label_values(SELECTOR, LABEL)` variables: LABEL (`expr` is SELECTOR then).
    values_of: Option<String>,
    /// In a panel target (as opposed to a variable or an annotation).
    in_panel: bool,
}

fn queries(dash: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    for panel in panels(dash) {
        for t in panel["targets"].as_array().into_iter().flatten() {
            out.push(Query {
                place: format!("{} target {}", panel_name(panel), t["refId"]),
                expr: t["expr"].as_str().unwrap_or_default().to_string(),
                formats: t["legendFormat"]
                    .as_str()
                    .map(String::from)
                    .into_iter()
                    .collect(),
                values_of: None,
                in_panel: true,
            });
        }
    }
    for var in dash["templating"]["list"].as_array().into_iter().flatten() {
        if var["type"] != "query" {
            continue;
        }
        let place = format!("variable {}", var["name"]);
        // Grafana accepts the query as a string or as {"query": "..."}.
        let query = var["query"]
            .as_str()
            .or_else(|| var["query"]["query"].as_str())
            .unwrap_or_default();
        let Some((selector, label)) = query
            .trim()
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','))
        else {
            panic!("{place}: expected label_values(SELECTOR, LABEL), got {query:?}");
        };
        out.push(Query {
            place,
            expr: selector.to_string(),
            formats: vec![],
            values_of: Some(label.trim().to_string()),
            in_panel: false,
        });
    }
    for (i, a) in dash["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(expr) = a["expr"].as_str() {
            let formats = ["textFormat", "titleFormat"]
                .iter()
                .filter_map(|k| a[k].as_str().map(String::from))
                .collect();
            out.push(Query {
                place: format!("annotation {i} {}", a["name"]),
                expr: expr.to_string(),
                formats,
                values_of: None,
                in_panel: false,
            });
        }
    }
    out
}

/// Template variables by name: whether a selection may hold several values (multi or All),
/// which Grafana then interpolates as a regex alternation.
fn variables(dash: &Value) -> BTreeMap<String, bool> {
    dash["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            let several = v["multi"] == true || v["includeAll"] == true;
            (v["name"].as_str().unwrap_or_default().to_string(), several)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// What the daemon exports

/// A snapshot like a daemon with an IPv4 L2 VIP, an IPv6 L3 VIP and an all-ports UDP VIP would
/// give, with a healthy, a draining and a down backend, and every verdict and event.
fn snapshot() -> MetricsSnapshot {
    let vip = |vip: &str, mode: &str, packets: u64| VipMetrics {
        vip: vip.into(),
        mode: mode.into(),
        packets,
        bytes: packets * 700,
        new_flows: packets / 20,
        reply_packets: packets * 2,
        reply_bytes: packets * 2000,
    };
    let backend = |vip: &str, backend: &str, weight, up, packets: u64| BackendMetrics {
        vip: vip.into(),
        backend: backend.into(),
        weight,
        up,
        draining: weight == 0,
        packets,
        bytes: packets * 700,
        new_flows: packets / 20,
        reply_packets: packets * 2,
        reply_bytes: packets * 2000,
    };
    let (v4, v6, all) = (
        "10.0.0.100:80/tcp",
        "[2001:db8::100]:443/tcp",
        "10.0.0.101:*/udp",
    );
    let names = |range: std::ops::Range<u32>| -> Vec<(String, u64)> {
        range
            .map(|i| {
                let name = stats::name(i).unwrap_or_else(|| panic!("stats slot {i} has no name"));
                (name.to_string(), u64::from(i) * 1000 + 7)
            })
            .collect()
    };
    MetricsSnapshot {
        vips: vec![
            vip(v4, "l2", 40_000),
            vip(v6, "l3", 25_000),
            vip(all, "l2", 900),
        ],
        backends: vec![
            backend(v4, "10.0.1.1", 1, true, 20_000),
            backend(v4, "10.0.1.2", 2, true, 19_000),
            backend(v4, "10.0.1.3", 0, true, 1_000),
            backend(v6, "2001:db8:1::1", 1, true, 25_000),
            backend(v6, "2001:db8:1::2", 1, false, 0),
            backend(all, "10.0.2.1", 1, true, 900),
        ],
        verdicts: names(0..VERDICT_COUNT),
        events: names(EVENT_BASE..EVENT_BASE + EVENT_COUNT),
        uptime_seconds: 86_400.25,
        maps_in_sync: true,
        node: Some(NodeMetrics {
            drained: false,
            announced: vec![
                ("10.0.0.100/32".into(), true),
                ("2001:db8::100/128".into(), true),
                ("10.0.0.101/32".into(), false),
            ],
        }),
    }
}

/// The exported families: type and, per label, the values seen.
struct Exported {
    kinds: BTreeMap<String, String>,
    labels: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

impl Exported {
    fn has_label(&self, metric: &str, label: &str) -> bool {
        SCRAPE_LABELS.contains(&label)
            || self
                .labels
                .get(metric)
                .is_some_and(|l| l.contains_key(label))
    }

    fn describe_labels(&self, metric: &str) -> String {
        let labels: Vec<&str> = self.labels[metric].keys().map(String::as_str).collect();
        format!("{metric} has labels {labels:?} (plus {SCRAPE_LABELS:?} from the scrape)")
    }
}

fn exported() -> Exported {
    let text = metrics::render(&snapshot(), Format::Prometheus).unwrap();
    exposition::promtool_check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let samples = exposition::parse(&text).unwrap_or_else(|e| panic!("render output: {e}\n{text}"));
    let mut kinds = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line with name and type");
            kinds.insert(name.to_string(), kind.to_string());
        }
    }
    let mut labels: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for s in samples {
        assert!(kinds.contains_key(&s.name), "{} has no TYPE line", s.name);
        let family = labels.entry(s.name).or_default();
        for (k, v) in s.labels {
            family.entry(k).or_default().insert(v);
        }
    }
    assert_eq!(
        kinds.keys().collect::<Vec<_>>(),
        labels.keys().collect::<Vec<_>>(),
        "every family of the snapshot has samples"
    );
    Exported { kinds, labels }
}

// ---------------------------------------------------------------------------------------------
// A PromQL lexer and scanner, just enough for dashboard queries

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    /// Metric, label, function and keyword names.
    Ident(String),
    /// A quoted string, as written (escapes kept).
    Str(String),
    /// The text between '[' and ']'.
    Range(String),
    Num(String),
    /// A Grafana variable outside strings: `$name` or `${name}`.
    Var(String),
    Punct(String),
}

fn tokenize(expr: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = expr.chars().collect();
    let take_while = |i: &mut usize, ok: &dyn Fn(char) -> bool| {
        let start = *i;
        while *i < chars.len() && ok(chars[*i]) {
            *i += 1;
        }
        chars[start..*i].iter().collect::<String>()
    };
    let mut toks = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            c if c.is_whitespace() => {}
            '#' => {
                take_while(&mut i, &|c| c != '\n');
            }
            '"' | '\'' | '`' => {
                let mut s = String::new();
                loop {
                    match chars.get(i) {
                        None => return Err(format!("unterminated string {c}{s}")),
                        Some(&q) if q == c => break,
                        Some('\\') if c != '`' => {
                            s.push('\\');
                            s.extend(chars.get(i + 1));
                            i += 1;
                        }
                        Some(&other) => s.push(other),
                    }
                    i += 1;
                }
                i += 1;
                toks.push(Tok::Str(s));
            }
            '[' => {
                let range = take_while(&mut i, &|c| c != ']');
                if i == chars.len() {
                    return Err(format!("unterminated range [{range}"));
                }
                i += 1;
                toks.push(Tok::Range(range));
            }
            '$' => {
                let name = if chars.get(i) == Some(&'{') {
                    i += 1;
                    let name = take_while(&mut i, &|c| c != '}');
                    i += 1;
                    name.split(':').next().unwrap_or_default().to_string()
                } else {
                    take_while(&mut i, &|c| c.is_ascii_alphanumeric() || c == '_')
                };
                toks.push(Tok::Var(name));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                i -= 1;
                let ident = take_while(&mut i, &|c| {
                    c.is_ascii_alphanumeric() || c == '_' || c == ':'
                });
                toks.push(Tok::Ident(ident));
            }
            c if c.is_ascii_digit() || c == '.' => {
                i -= 1;
                toks.push(Tok::Num(take_while(&mut i, &|c| {
                    c.is_ascii_alphanumeric() || c == '.'
                })));
            }
            '=' | '!' | '<' | '>' => {
                let mut op = c.to_string();
                if let Some(&next @ ('=' | '~')) = chars.get(i) {
                    op.push(next);
                    i += 1;
                }
                toks.push(Tok::Punct(op));
            }
            '(' | ')' | '{' | '}' | ',' | '+' | '-' | '*' | '/' | '%' | '^' | '@' => {
                toks.push(Tok::Punct(c.to_string()));
            }
            other => return Err(format!("unexpected character {other:?}")),
        }
    }
    Ok(toks)
}

fn punct(t: Option<&Tok>) -> Option<&str> {
    match t {
        Some(Tok::Punct(p)) => Some(p),
        _ => None,
    }
}

fn ident(t: Option<&Tok>) -> Option<&str> {
    match t {
        Some(Tok::Ident(s)) => Some(s),
        _ => None,
    }
}

#[derive(Debug)]
struct Matcher {
    label: String,
    op: String,
    value: String,
}

/// One use of an xdplb metric.
#[derive(Debug)]
struct Selector {
    metric: String,
    matchers: Vec<Matcher>,
    range: Option<String>,
    /// The function whose argument list the selector is directly in.
    function: Option<String>,
}

/// `by`, `without`, `on`, `ignoring`, `group_left` or `group_right` with its labels, and the
/// metrics it applies to: for `by`/`without` those inside the aggregated expression, for the
/// vector-matching clauses those of the whole query.
#[derive(Debug)]
struct Grouping {
    keyword: String,
    labels: Vec<String>,
    metrics: Vec<String>,
}

#[derive(Debug, Default)]
struct Scan {
    selectors: Vec<Selector>,
    groupings: Vec<Grouping>,
}

fn is_metric(t: &Tok) -> bool {
    matches!(t, Tok::Ident(s) if s.starts_with("xdplb_"))
}

fn scan(expr: &str) -> Result<Scan, String> {
    let toks = tokenize(expr)?;
    // The innermost '(' around each token, and the partner of each parenthesis.
    let mut open = Vec::new();
    let mut enclosing = vec![None; toks.len()];
    let mut partner = vec![0; toks.len()];
    let mut in_braces = false;
    for (i, t) in toks.iter().enumerate() {
        enclosing[i] = open.last().copied();
        match punct(Some(t)) {
            Some("(") => open.push(i),
            Some(")") => {
                let o = open.pop().ok_or("unbalanced ')'")?;
                partner[o] = i;
                partner[i] = o;
            }
            Some("{") if in_braces => return Err("nested '{'".into()),
            Some("{") => in_braces = true,
            Some("}") if !in_braces => return Err("unbalanced '}'".into()),
            Some("}") => in_braces = false,
            _ => {}
        }
    }
    if !open.is_empty() {
        return Err("unbalanced '('".into());
    }
    if in_braces {
        return Err("unbalanced '{'".into());
    }
    let metrics_in = |from: usize, to: usize| -> Vec<String> {
        toks[from..=to]
            .iter()
            .filter(|t| is_metric(t))
            .filter_map(|t| ident(Some(t)).map(String::from))
            .collect()
    };
    let all_metrics = if toks.is_empty() {
        vec![]
    } else {
        metrics_in(0, toks.len() - 1)
    };

    let mut out = Scan::default();
    for (i, t) in toks.iter().enumerate() {
        let Some(name) = ident(Some(t)) else { continue };
        if is_metric(t) {
            let mut j = i + 1;
            let mut matchers = Vec::new();
            if punct(toks.get(j)) == Some("{") {
                j += 1;
                while punct(toks.get(j)) != Some("}") {
                    let (Some(label), Some(op), Some(Tok::Str(value))) =
                        (ident(toks.get(j)), punct(toks.get(j + 1)), toks.get(j + 2))
                    else {
                        return Err(format!("malformed label matcher in {name}{{...}}"));
                    };
                    if !["=", "!=", "=~", "!~"].contains(&op) {
                        return Err(format!("invalid matcher operator {op} in {name}{{...}}"));
                    }
                    matchers.push(Matcher {
                        label: label.into(),
                        op: op.into(),
                        value: value.clone(),
                    });
                    j += 3;
                    if punct(toks.get(j)) == Some(",") {
                        j += 1;
                    }
                }
                j += 1;
            }
            let range = match toks.get(j) {
                Some(Tok::Range(r)) => Some(r.clone()),
                _ => None,
            };
            let function = enclosing[i]
                .and_then(|o| o.checked_sub(1))
                .and_then(|f| ident(toks.get(f)))
                .filter(|f| !NOT_FUNCTIONS.contains(f) && !GROUPING.contains(f))
                .map(String::from);
            out.selectors.push(Selector {
                metric: name.into(),
                matchers,
                range,
                function,
            });
        } else if GROUPING.contains(&name) && punct(toks.get(i + 1)) == Some("(") {
            let close = partner[i + 1];
            let mut labels = Vec::new();
            for t in &toks[i + 2..close] {
                match t {
                    Tok::Ident(l) => labels.push(l.clone()),
                    Tok::Punct(p) if p == "," => {}
                    other => return Err(format!("unexpected {other:?} in {name}(...)")),
                }
            }
            let metrics = if name == "by" || name == "without" {
                // `sum by (l) (expr)` or `sum (expr) by (l)`.
                if punct(toks.get(close + 1)) == Some("(") {
                    metrics_in(close + 1, partner[close + 1])
                } else if i > 0 && punct(toks.get(i - 1)) == Some(")") {
                    metrics_in(partner[i - 1], i - 1)
                } else {
                    return Err(format!("{name}(...) without an aggregated expression"));
                }
            } else {
                all_metrics.clone()
            };
            out.groupings.push(Grouping {
                keyword: name.into(),
                labels,
                metrics,
            });
        }
    }
    Ok(out)
}

/// Grafana variables (`$name`, `${name}`, `${name:format}`) named anywhere in `text`.
fn variables_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        rest = &rest[pos + 1..];
        let name = if let Some(braced) = rest.strip_prefix('{') {
            let end = braced.find('}').unwrap_or(braced.len());
            braced[..end].split(':').next().unwrap_or_default()
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        };
        out.push(name.to_string());
    }
    out
}

/// `{{label}}` references in a legend or annotation format.
fn format_labels(format: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = format;
    while let Some(start) = rest.find("{{") {
        rest = &rest[start + 2..];
        let Some(end) = rest.find("}}") else { break };
        out.push(rest[..end].trim().to_string());
        rest = &rest[end + 2..];
    }
    out
}

/// Whether the literal regex `pattern` (fully anchored, as in PromQL) matches one of `values`.
/// Understands alternations of plain names with an optional trailing `.*` or `.+`; anything
/// else is reported so that the check cannot pass by accident.
fn regex_matches_some(pattern: &str, values: &BTreeSet<String>) -> Result<bool, String> {
    if pattern == ".*" || pattern == ".+" {
        return Ok(!values.is_empty());
    }
    let plain = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    for alt in pattern.split('|') {
        // The shortest suffix a value may have after `prefix`, if any.
        let (prefix, min_suffix) = if let Some(p) = alt.strip_suffix(".*") {
            (p, Some(0))
        } else if let Some(p) = alt.strip_suffix(".+") {
            (p, Some(1))
        } else {
            (alt, None)
        };
        if !plain(prefix) {
            return Err(format!(
                "regex {pattern:?} is beyond this test (alternatives of names with an optional \
                 trailing .* or .+)"
            ));
        }
        let hit = values.iter().any(|v| match min_suffix {
            Some(n) => v.starts_with(prefix) && v.len() >= prefix.len() + n,
            None => v == prefix,
        });
        if !hit {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Every problem of one query against the exported metrics and the dashboard's variables.
fn check_query(q: &Query, exported: &Exported, vars: &BTreeMap<String, bool>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut problem = |msg: String| problems.push(format!("{}: {msg} in `{}`", q.place, q.expr));
    let scanned = match scan(&q.expr) {
        Ok(s) => s,
        Err(e) => {
            problem(format!("cannot scan the query: {e}"));
            return problems;
        }
    };
    if scanned.selectors.is_empty() {
        problem("queries no xdplb metric".into());
    }
    // Every occurrence of "xdplb_" must be a metric the scanner saw (none hidden in strings).
    if q.expr.matches("xdplb_").count() != scanned.selectors.len() {
        problem("names xdplb_ outside a metric selector".into());
    }
    let used: BTreeSet<String> = q
        .formats
        .iter()
        .chain([&q.expr])
        .flat_map(|t| variables_in(t))
        .collect();
    for var in used {
        if !vars.contains_key(&var) && !BUILTIN_VARIABLES.contains(&var.as_str()) {
            problem(format!("uses undefined variable ${var}"));
        }
    }
    for s in &scanned.selectors {
        let metric = &s.metric;
        let Some(kind) = exported.kinds.get(metric) else {
            let known: Vec<&String> = exported.kinds.keys().collect();
            problem(format!(
                "metric {metric} is not exported by the daemon (it exports {known:?})"
            ));
            continue;
        };
        for m in &s.matchers {
            if !exported.has_label(metric, &m.label) {
                problem(format!(
                    "filters on label {:?}, which {metric} does not have: {}",
                    m.label,
                    exported.describe_labels(metric)
                ));
                continue;
            }
            let vars_used = variables_in(&m.value);
            if !vars_used.is_empty() {
                // A multi-value or All selection is interpolated as a regex alternation.
                let several = vars_used.iter().any(|v| vars.get(v) == Some(&true));
                if several && !m.op.ends_with('~') {
                    problem(format!(
                        "{metric}{{{}{}\"{}\"}} needs =~ or !~: the variable may hold several \
                         values",
                        m.label, m.op, m.value
                    ));
                }
                continue;
            }
            let Some(values) = exported.labels[metric].get(&m.label) else {
                continue; // A scrape label: its values are not known here.
            };
            let hit = if m.op.ends_with('~') {
                regex_matches_some(&m.value, values)
            } else {
                Ok(values.contains(&m.value))
            };
            match hit {
                Ok(true) => {}
                Ok(false) => problem(format!(
                    "{metric}{{{}{}\"{}\"}} matches none of the exported values {values:?}",
                    m.label, m.op, m.value
                )),
                Err(e) => problem(e),
            }
        }
        // label_values() is a series lookup, not PromQL evaluation: any type will do there.
        if q.values_of.is_some() {
            continue;
        }
        let function = s.function.as_deref().unwrap_or("");
        if kind == "counter" {
            if !["rate", "irate", "increase"].contains(&function) || s.range.is_none() {
                problem(format!(
                    "counter {metric} must be read through rate/irate/increase over a range, \
                     not {}",
                    if function.is_empty() {
                        "used bare".into()
                    } else {
                        format!("inside {function}()")
                    }
                ));
            }
        } else if COUNTER_FUNCTIONS.contains(&function) {
            problem(format!(
                "{kind} {metric} is inside {function}(), which is for counters"
            ));
        }
    }
    for g in &scanned.groupings {
        for label in &g.labels {
            let ok = if g.keyword == "by" || g.keyword == "without" {
                g.metrics.iter().all(|m| exported.has_label(m, label))
            } else {
                g.metrics.iter().any(|m| exported.has_label(m, label))
            };
            if !ok && g.metrics.iter().all(|m| exported.kinds.contains_key(m)) {
                problem(format!(
                    "{} ({label}): label {label:?} is missing on {:?}",
                    g.keyword, g.metrics
                ));
            }
        }
    }
    // A format may name the labels of the result: after `by` aggregations, only those kept.
    let metrics: BTreeSet<&String> = scanned.selectors.iter().map(|s| &s.metric).collect();
    let kept: BTreeSet<&String> = scanned
        .groupings
        .iter()
        .filter(|g| g.keyword == "by")
        .flat_map(|g| &g.labels)
        .collect();
    for label in q.formats.iter().flat_map(|f| format_labels(f)) {
        if !metrics.iter().any(|m| exported.has_label(m, &label)) {
            problem(format!(
                "format names label {label:?}, which none of {metrics:?} has"
            ));
        } else if !kept.is_empty() && !kept.contains(&label) {
            problem(format!(
                "format names label {label:?}, which the aggregation drops (by {kept:?})"
            ));
        }
    }
    if let Some(label) = &q.values_of {
        for s in &scanned.selectors {
            if exported.kinds.contains_key(&s.metric) && !exported.has_label(&s.metric, label) {
                problem(format!(
                    "label_values of {label:?}: {}",
                    exported.describe_labels(&s.metric)
                ));
            }
        }
    }
    problems
}

fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn the_snapshot_covers_every_verdict_and_event() {
    let exported = exported();
    let verdicts: BTreeSet<String> = (0..VERDICT_COUNT)
        .filter_map(stats::name)
        .map(String::from)
        .collect();
    let events: BTreeSet<String> = (EVENT_BASE..EVENT_BASE + EVENT_COUNT)
        .filter_map(stats::name)
        .map(String::from)
        .collect();
    assert_eq!(verdicts.len(), VERDICT_COUNT as usize);
    assert_eq!(events.len(), EVENT_COUNT as usize);
    assert_eq!(exported.labels["xdplb_verdicts_total"]["reason"], verdicts);
    assert_eq!(exported.labels["xdplb_events_total"]["event"], events);
    let vips = &exported.labels["xdplb_vip_packets_total"]["vip"];
    assert!(
        vips.iter().any(|v| v.starts_with('[')),
        "an IPv6 VIP: {vips:?}"
    );
    assert!(
        vips.iter().any(|v| !v.starts_with('[')),
        "an IPv4 VIP: {vips:?}"
    );
    assert!(exported.labels["xdplb_backend_up"]["backend"].len() >= 2);
}

#[test]
fn the_dashboard_is_a_grafana_dashboard() {
    let dash = dashboard();
    let mut problems = Vec::new();
    for key in ["title", "uid"] {
        if dash[key].as_str().is_none_or(str::is_empty) {
            problems.push(format!("no {key}"));
        }
    }
    if dash["schemaVersion"].as_u64().is_none_or(|v| v < 36) {
        problems.push(format!(
            "schemaVersion {} (want >= 36)",
            dash["schemaVersion"]
        ));
    }
    let panels = panels(&dash);
    if panels.iter().filter(|p| !is_row(p)).count() < 10 {
        problems.push(format!("only {} panels", panels.len()));
    }

    // The data source is chosen with a `datasource` variable of Prometheus data sources.
    let vars = dash["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let var = |name: &str| vars.iter().find(|v| v["name"] == name);
    match var("datasource") {
        Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
        other => problems.push(format!("no Prometheus datasource variable: {other:?}")),
    }
    for name in ["instance", "vip", "backend"] {
        match var(name) {
            Some(v) if v["type"] == "query" => {
                let def = v["definition"].as_str().unwrap_or_default();
                if !def.starts_with("label_values(") || !def.ends_with(&format!(", {name})")) {
                    problems.push(format!("variable {name}: definition {def:?}"));
                }
            }
            other => problems.push(format!("no query variable {name}: {other:?}")),
        }
    }
    let ds = serde_json::json!({"type": "prometheus", "uid": "${datasource}"});
    for v in vars.iter().filter(|v| v["type"] == "query") {
        if v["datasource"] != ds {
            problems.push(format!(
                "variable {}: datasource {}",
                v["name"], v["datasource"]
            ));
        }
    }

    let mut ids = BTreeSet::new();
    let mut boxes = Vec::new();
    for p in &panels {
        let name = panel_name(p);
        if !ids.insert(p["id"].as_u64().unwrap_or(0)) || p["id"].as_u64().is_none() {
            problems.push(format!("{name}: missing or duplicate id"));
        }
        if p["title"].as_str().is_none_or(str::is_empty) {
            problems.push(format!("{name}: no title"));
        }
        let g = &p["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| g[k].as_u64());
        match (x, y, w, h) {
            (Some(x), Some(y), Some(w @ 1..), Some(h @ 1..)) if x + w <= 24 => {
                boxes.push((name.clone(), x, y, w, h));
            }
            _ => problems.push(format!("{name}: bad gridPos {g}")),
        }
        if is_row(p) {
            continue;
        }
        if p["datasource"] != ds {
            problems.push(format!(
                "{name}: datasource {} (want {ds})",
                p["datasource"]
            ));
        }
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("{name}: no targets"));
        }
        let mut refs = BTreeSet::new();
        for t in &targets {
            if !refs.insert(t["refId"].to_string()) {
                problems.push(format!("{name}: duplicate refId {}", t["refId"]));
            }
            if t["datasource"] != ds {
                problems.push(format!("{name}: target datasource {}", t["datasource"]));
            }
            if t["expr"].as_str().is_none_or(|e| e.trim().is_empty()) {
                problems.push(format!("{name}: target {} has no expr", t["refId"]));
            }
        }
    }
    // Panels must not overlap (Grafana would move them around).
    for (i, a) in boxes.iter().enumerate() {
        for b in &boxes[i + 1..] {
            if a.1 < b.1 + b.3 && b.1 < a.1 + a.3 && a.2 < b.2 + b.4 && b.2 < a.2 + a.4 {
                problems.push(format!("{} overlaps {}", a.0, b.0));
            }
        }
    }
    assert_no_problems("dashboard structure", &problems);
}

#[test]
fn every_metric_and_label_the_dashboard_queries_is_exported() {
    let dash = dashboard();
    let exported = exported();
    let vars = variables(&dash);
    let queries = queries(&dash);
    assert!(queries.iter().filter(|q| q.in_panel).count() >= 10);
    let problems: Vec<String> = queries
        .iter()
        .flat_map(|q| check_query(q, &exported, &vars))
        .collect();
    assert_no_problems("dashboard queries", &problems);
}

#[test]
fn every_exported_family_is_on_a_panel() {
    let dash = dashboard();
    let exported = exported();
    let mut shown = BTreeSet::new();
    for q in queries(&dash).iter().filter(|q| q.in_panel) {
        let scanned = scan(&q.expr).unwrap_or_else(|e| panic!("{}: {e}", q.place));
        shown.extend(scanned.selectors.into_iter().map(|s| s.metric));
    }
    let missing: Vec<&String> = exported
        .kinds
        .keys()
        .filter(|m| !shown.contains(*m))
        .collect();
    assert!(
        missing.is_empty(),
        "exported but on no panel of {DASHBOARD}: {missing:?}"
    );
}

/// The checks above must be able to fail: each broken query is caught, for the right reason.
#[test]
fn the_checks_catch_broken_queries() {
    let exported = exported();
    let vars: BTreeMap<String, bool> = [("vip", true), ("backend", true), ("instance", true)]
        .map(|(k, v)| (k.to_string(), v))
        .into();
    let query = |expr: &str, legend: &str| Query {
        place: "test".into(),
        expr: expr.into(),
        formats: vec![legend.into()],
        values_of: None,
        in_panel: true,
    };
    let good = [
        (
            r#"sum by (vip, backend) (rate(xdplb_backend_packets_total{vip=~"$vip", backend=~"$backend"}[$__rate_interval]))"#,
            "{{backend}} @ {{vip}}",
        ),
        (
            r#"sum(rate(xdplb_events_total{event="conntrack_hit"}[5m])) / sum(rate(xdplb_events_total{event=~"conntrack_.*"}[5m]))"#,
            "",
        ),
        (
            r#"sum by (reason) (rate(xdplb_verdicts_total{reason=~"tx|redirect|drop_.*"}[5m]))"#,
            "{{reason}}",
        ),
        (
            "max_over_time(xdplb_up[1h]) or xdplb_uptime_seconds",
            "{{instance}}",
        ),
        (
            r#"sum(increase(xdplb_vip_bytes_total{vip="[2001:db8::100]:443/tcp", mode!="l2"}[1h])) by (vip)"#,
            "{{vip}}",
        ),
    ];
    for (expr, legend) in good {
        assert_eq!(
            check_query(&query(expr, legend), &exported, &vars),
            Vec::<String>::new()
        );
    }
    let bad = [
        (
            "sum(rate(xdplb_vip_packts_total[5m]))",
            "",
            "xdplb_vip_packts_total is not exported",
        ),
        (
            "sum by (vip) (xdplb_vip_packets_total)",
            "",
            "must be read through rate",
        ),
        ("sum(xdplb_verdicts_total)", "", "inside sum()"),
        ("xdplb_events_total", "", "used bare"),
        (
            "rate(xdplb_backend_up[5m])",
            "",
            "gauge xdplb_backend_up is inside rate()",
        ),
        (
            r#"xdplb_backend_up{backnd=~"$backend"}"#,
            "",
            "filters on label \"backnd\"",
        ),
        (r#"xdplb_up{vip=~"$vip"}"#, "", "filters on label \"vip\""),
        (
            r#"rate(xdplb_verdicts_total{reason="txx"}[5m])"#,
            "",
            "matches none of the exported values",
        ),
        (
            r#"rate(xdplb_events_total{event=~"nat_rev"}[5m])"#,
            "",
            "matches none of the exported values",
        ),
        (
            r#"rate(xdplb_events_total{event=~"nat_(reverse)"}[5m])"#,
            "",
            "beyond this test",
        ),
        (
            "sum by (reson) (rate(xdplb_verdicts_total[5m]))",
            "",
            "by (reson)",
        ),
        (
            "xdplb_backend_up / on (vpi) group_left sum by (vip) (xdplb_backend_up)",
            "",
            "on (vpi)",
        ),
        (
            "sum by (vip) (rate(xdplb_backend_packets_total[5m]))",
            "{{backend}}",
            "which the aggregation drops",
        ),
        (
            "xdplb_backend_up",
            "{{backend}} {{reason}}",
            "format names label \"reason\"",
        ),
        (
            r#"xdplb_up{instance=~"$nope"}"#,
            "",
            "undefined variable $nope",
        ),
        (r#"xdplb_backend_up{vip="$vip"}"#, "", "needs =~ or !~"),
        ("sum(rate(xdplb_verdicts_total[5m])", "", "unbalanced '('"),
        (r#"xdplb_up{instance="x}"#, "", "unterminated string"),
        ("vector(1)", "", "queries no xdplb metric"),
        (
            r#"xdplb_up{job="xdplb_up"}"#,
            "",
            "outside a metric selector",
        ),
    ];
    for (expr, legend, fragment) in bad {
        let problems = check_query(&query(expr, legend), &exported, &vars);
        assert!(
            problems.iter().any(|p| p.contains(fragment)),
            "`{expr}`: expected a problem containing {fragment:?}, got {problems:?}"
        );
    }
}

/// What the dashboard sends once Grafana has filled in its variables: every selection "All"
/// (`.*`, the variables are only used with `=~`), ranges of a minute.
fn interpolate(expr: &str) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let end = after
            .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .unwrap_or(after.len());
        out.push_str(match &after[..end] {
            "__rate_interval" | "__range" => "1m",
            "__interval" => "1s",
            _ => ".*",
        });
        rest = &after[end..];
    }
    out + rest
}

#[test]
fn a_real_prometheus_scrapes_the_server_and_answers_every_dashboard_query() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let target = listener.local_addr().unwrap();
    let server = runtime.spawn(metrics::serve(listener, Arc::new(|| Ok(snapshot()))));
    let prometheus = Prometheus::start(target).unwrap();
    prometheus.wait_for_scrapes(3).unwrap();

    // Prometheus asked for OpenMetrics and got it: a counter's family is named without
    // `_total` there, and every family has the type of the 0.0.4 text.
    let metadata = prometheus.api("/api/v1/metadata").unwrap();
    for (name, kind) in exported().kinds {
        let family = match kind.as_str() {
            "counter" => name.strip_suffix("_total").expect("counters end in _total"),
            _ => &name,
        };
        assert_eq!(
            metadata[family][0]["type"],
            kind.as_str(),
            "{family}: {metadata}"
        );
    }
    for v in snapshot().vips {
        let series = prometheus
            .query(&format!("xdplb_vip_packets_total{{vip=\"{}\"}}", v.vip))
            .unwrap();
        assert_eq!(series.len(), 1, "{}", v.vip);
        assert_eq!(sample_value(&series[0]).unwrap(), v.packets as f64);
    }

    let mut problems = Vec::new();
    for q in queries(&dashboard()) {
        let expr = interpolate(&q.expr);
        match prometheus.query(&expr) {
            Err(e) => problems.push(format!("{}: {expr}: {e}", q.place)),
            Ok(series) if series.is_empty() && !q.place.starts_with("annotation") => {
                problems.push(format!("{}: {expr} returns nothing", q.place))
            }
            Ok(series) => {
                if let Some(label) = &q.values_of {
                    if series.iter().any(|s| s["metric"][label].is_null()) {
                        problems.push(format!("{}: {expr} has series without {label}", q.place));
                    }
                }
            }
        }
    }
    assert_no_problems(
        "the dashboard's queries against a real Prometheus",
        &problems,
    );
    server.abort();
}
