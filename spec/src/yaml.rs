//! A YAML reader that keeps the position of every node and refuses hostile input.
//!
//! The parser is `saphyr-parser` (pure Rust, event based). On top of its events we build a
//! small tree of [`Node`]s, each with its 1-based line and column, resolving plain scalars
//! with the YAML 1.2 core schema and *strict* booleans (`yes`/`on` stay strings, as in
//! Kubernetes). Aliases are shared (`Rc`), never copied, and every alias is charged the size
//! of what it expands to against [`Limits::max_nodes`], so an alias bomb is refused after a
//! few thousand events instead of exhausting memory. Nesting deeper than
//! [`Limits::max_depth`] and inputs larger than [`Limits::max_bytes`] are refused before they
//! can hurt.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span};

type ParseResult<'i> = Result<(Event<'i>, Span), ScanError>;

/// A 1-based line and column in a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Resource limits applied while reading YAML.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted input, in bytes.
    pub max_bytes: usize,
    /// Deepest accepted nesting of sequences and mappings.
    pub max_depth: usize,
    /// Most nodes the input may expand to (all its documents together), each node counted
    /// once and every alias as the size of its target. This also bounds memory: a node costs
    /// at most about 100 bytes besides its text.
    pub max_nodes: usize,
    /// Most characters the parser may read past the end of the last value it gave: the
    /// longest flow collection (`{...}` or `[...]`, JSON included) where a mapping key could
    /// start, or the longest scalar. saphyr-parser holds every token of such a flow
    /// collection until it closes (it may turn out to be a key), about 100 bytes a
    /// character, so this bounds the parser's own memory. Kubernetes objects are at most
    /// 1.5 MiB, so a manifest written as JSON fits.
    pub max_value_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 64 << 20,
            max_depth: 64,
            max_nodes: 5_000_000,
            max_value_chars: 2 << 20,
        }
    }
}

/// What went wrong while reading YAML. Every variant says where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum YamlError {
    #[error("the file is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("{pos}: YAML syntax error: {message}")]
    Syntax { pos: Pos, message: String },
    #[error("{pos}: nesting deeper than {limit} levels")]
    TooDeep { pos: Pos, limit: usize },
    #[error("{pos}: {}", too_many_nodes(*.limit, *.through_alias))]
    TooManyNodes {
        pos: Pos,
        limit: usize,
        /// Whether aliases took the count over the limit (an alias/anchor bomb).
        through_alias: bool,
    },
    #[error(
        "{pos}: a value longer than {limit} characters starts here (a flow collection `{{...}}` or `[...]`, or one scalar); the YAML reader holds such a value whole, so split it or write it in block style"
    )]
    ValueTooLong { pos: Pos, limit: usize },
    #[error("{pos}: alias refers to an unknown anchor")]
    UnknownAnchor { pos: Pos },
    #[error("{pos}: duplicate key {key:?} (first at line {first_line})")]
    DuplicateKey {
        pos: Pos,
        key: String,
        first_line: usize,
    },
    #[error("{pos}: mapping keys must be plain strings or numbers")]
    ComplexKey { pos: Pos },
    #[error("{pos}: expected one YAML document, found another one here")]
    MultipleDocuments { pos: Pos },
}

fn too_many_nodes(limit: usize, through_alias: bool) -> String {
    if through_alias {
        format!(
            "the document expands to more than {limit} nodes through its aliases (an alias/anchor bomb?); refusing it"
        )
    } else {
        format!("the input has more than {limit} nodes (values); refusing it")
    }
}

impl YamlError {
    /// Where the error is, when it has a place.
    pub fn pos(&self) -> Option<Pos> {
        match self {
            YamlError::TooLarge { .. } => None,
            YamlError::Syntax { pos, .. }
            | YamlError::TooDeep { pos, .. }
            | YamlError::TooManyNodes { pos, .. }
            | YamlError::ValueTooLong { pos, .. }
            | YamlError::UnknownAnchor { pos }
            | YamlError::DuplicateKey { pos, .. }
            | YamlError::ComplexKey { pos }
            | YamlError::MultipleDocuments { pos } => Some(*pos),
        }
    }

    /// The message without the position prefix.
    pub fn message(&self) -> String {
        let full = self.to_string();
        match self.pos() {
            Some(p) => full
                .strip_prefix(&format!("{p}: "))
                .unwrap_or(&full)
                .to_string(),
            None => full,
        }
    }
}

/// The value of a node.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Rc<Node>>),
    /// Entries in document order; keys are unique.
    Map(Vec<(Key, Rc<Node>)>),
}

/// A mapping key: its text and where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub pos: Pos,
}

/// A YAML node with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
}

impl Node {
    /// A short name of the node's type, for messages ("a mapping", "a string", ...).
    pub fn type_name(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The entry for `key` when this node is a mapping.
    pub fn get(&self, key: &str) -> Option<&Rc<Node>> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Converts to JSON (for free-form values such as merge patches and Jsonnet arguments).
    pub fn to_json(&self) -> serde_json::Value {
        match &self.value {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Str(s) => serde_json::Value::String(s.clone()),
            Value::Seq(items) => {
                serde_json::Value::Array(items.iter().map(|n| n.to_json()).collect())
            }
            Value::Map(entries) => serde_json::Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.name.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Rc<Node>>,
        weight: usize,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<(Key, Rc<Node>)>,
        /// Built only for large mappings; small ones are scanned for duplicate keys.
        index: Option<HashMap<String, usize>>,
        pending_key: Option<Key>,
        weight: usize,
    },
}

fn pos_of(m: &saphyr_parser::Marker) -> Pos {
    Pos {
        line: u32::try_from(m.line()).unwrap_or(u32::MAX),
        column: u32::try_from(m.col() + 1).unwrap_or(u32::MAX),
    }
}

/// Parses one YAML document (an empty input is `Null`).
pub fn parse(text: &str, limits: &Limits) -> Result<Node, YamlError> {
    let mut docs = parse_stream(text, limits, false)?;
    Ok(docs.pop().unwrap_or(Node {
        value: Value::Null,
        pos: Pos { line: 1, column: 1 },
    }))
}

/// Parses every document of a multi-document YAML stream.
pub fn parse_all(text: &str, limits: &Limits) -> Result<Vec<Node>, YamlError> {
    parse_stream(text, limits, true)
}

fn parse_stream(text: &str, limits: &Limits, many: bool) -> Result<Vec<Node>, YamlError> {
    if text.len() > limits.max_bytes {
        return Err(YamlError::TooLarge {
            size: text.len(),
            limit: limits.max_bytes,
        });
    }
    // The parser reads through `Metered`, which stops feeding it (as if the text ended) once
    // it has read `max_value_chars` past the end of the last event it gave: only a flow
    // collection (whose tokens it holds until the collection closes) or one long scalar makes
    // it read that far ahead, so its memory stays bounded by the limit.
    let read = Cell::new(0usize);
    let given = Cell::new(0usize);
    let cut = Cell::new(None);
    let mut parser = Parser::new_from_iter(Metered {
        chars: text.chars(),
        read: &read,
        given: &given,
        cut: &cut,
        lead: limits.max_value_chars,
    });
    let events = std::iter::from_fn(|| {
        let ev = parser.next_event();
        if let Some(Ok((_, span))) = &ev {
            given.set(span.end.index().max(given.get()));
        }
        ev
    });
    let built = build(events, limits, many);
    if let Some(at) = cut.get() {
        return Err(YamlError::ValueTooLong {
            pos: value_start(text, at),
            limit: limits.max_value_chars,
        });
    }
    built.map_err(|e| match e {
        YamlError::Syntax { pos, message } => match unclosed_bracket(text, pos) {
            Some((bracket, at)) => YamlError::Syntax {
                pos,
                message: format!(
                    "{message} (the `{bracket}` opened at line {}, column {} is never closed)",
                    at.line, at.column
                ),
            },
            None => YamlError::Syntax { pos, message },
        },
        e => e,
    })
}

/// The text as characters, counted; ends early (sets `cut` to where the last event ended)
/// once the parser has read `lead` characters past the end of the last event it gave.
struct Metered<'a, I> {
    chars: I,
    read: &'a Cell<usize>,
    given: &'a Cell<usize>,
    cut: &'a Cell<Option<usize>>,
    lead: usize,
}

impl<I: Iterator<Item = char>> Iterator for Metered<'_, I> {
    type Item = char;

    fn next(&mut self) -> Option<char> {
        if self.cut.get().is_some() {
            return None;
        }
        if self.read.get().saturating_sub(self.given.get()) > self.lead {
            self.cut.set(Some(self.given.get()));
            return None;
        }
        let c = self.chars.next()?;
        self.read.set(self.read.get() + 1);
        Some(c)
    }
}

/// Where the value that follows character `from` starts: the first character at or after it
/// that is neither white space, a comment, nor YAML punctuation between values (`:`, `-`,
/// `?`, `,`).
fn value_start(text: &str, from: usize) -> Pos {
    let (mut line, mut column) = (1u32, 1u32);
    let mut comment = false;
    let mut prev = ' ';
    for (i, ch) in text.chars().enumerate() {
        if ch == '\n' {
            comment = false;
        } else if i >= from && !comment {
            if ch == '#' && prev.is_whitespace() {
                comment = true;
            } else if !ch.is_whitespace() && !matches!(ch, ':' | '-' | '?' | ',') {
                return Pos { line, column };
            }
        }
        prev = if ch == '\n' { ' ' } else { ch };
        if ch == '\n' {
            line = line.saturating_add(1);
            column = 1;
        } else {
            column = column.saturating_add(1);
        }
    }
    Pos { line, column }
}

/// The innermost flow bracket (`{` or `[`) still open at `upto`, and where it was opened: a
/// syntax error after one is most likely that bracket's. Quoted text and comments are
/// skipped; a bracket counts only where a flow collection can start (after `:`, `-`, `,`,
/// `?`, another bracket, or at the start of a line), not inside a plain scalar (`a[1]`).
fn unclosed_bracket(text: &str, upto: Pos) -> Option<(char, Pos)> {
    let mut open: Vec<(char, Pos)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line_no = u32::try_from(n + 1).unwrap_or(u32::MAX);
        if line_no > upto.line {
            break;
        }
        let mut quote: Option<char> = None;
        let mut prev: Option<char> = None;
        for (c, ch) in line.chars().enumerate() {
            let column = u32::try_from(c + 1).unwrap_or(u32::MAX);
            if line_no == upto.line && column >= upto.column {
                break;
            }
            match quote {
                Some(q) if ch == q => quote = None,
                Some(_) => {}
                None => match ch {
                    '\'' | '"' if prev.is_none_or(|p| " \t:,[{-?".contains(p)) => quote = Some(ch),
                    '#' if prev.is_none_or(|p| p == ' ' || p == '\t') => break,
                    '{' | '[' if prev.is_none_or(|p| ":-,?[{".contains(p)) => open.push((
                        ch,
                        Pos {
                            line: line_no,
                            column,
                        },
                    )),
                    '}' | ']' if !open.is_empty() => {
                        open.pop();
                    }
                    _ => {}
                },
            }
            if !ch.is_whitespace() {
                prev = Some(ch);
            }
        }
    }
    open.pop()
}

fn build<'i>(
    mut events: impl Iterator<Item = ParseResult<'i>>,
    limits: &Limits,
    many: bool,
) -> Result<Vec<Node>, YamlError> {
    let mut docs = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, (Rc<Node>, usize)> = HashMap::new();
    let mut total: usize = 0;
    let mut aliased: usize = 0;

    loop {
        let (event, span) = match events.next() {
            None => break,
            Some(Ok(ev)) => ev,
            Some(Err(e)) => {
                return Err(YamlError::Syntax {
                    pos: pos_of(e.marker()),
                    message: e.info().to_string(),
                });
            }
        };
        let pos = pos_of(&span.start);
        // (node, weight = the nodes it expands to, anchor, charge = the nodes it adds now:
        // a container's children were charged as they finished).
        let finished: Option<(Rc<Node>, usize, usize, usize)> = match event {
            Event::StreamStart | Event::Nothing | Event::DocumentEnd => None,
            Event::StreamEnd => break,
            Event::DocumentStart(_) => {
                if !docs.is_empty() && !many {
                    return Err(YamlError::MultipleDocuments { pos });
                }
                None
            }
            Event::Alias(id) => {
                let (node, weight) = anchors
                    .get(&id)
                    .cloned()
                    .ok_or(YamlError::UnknownAnchor { pos })?;
                aliased = aliased.saturating_add(weight);
                Some((node, weight, 0, weight))
            }
            Event::Scalar(text, style, anchor, tag) => {
                // `!!str 1` is the string "1"; other tags are ignored (the schema decides).
                let value = if tag.is_some_and(|t| t.is_yaml_core_schema() && t.suffix == "str") {
                    Value::Str(text.into_owned())
                } else {
                    resolve_scalar(text, style)
                };
                Some((Rc::new(Node { value, pos }), 1, anchor, 1))
            }
            Event::SequenceStart(anchor, _) => {
                if stack.len() >= limits.max_depth {
                    return Err(YamlError::TooDeep {
                        pos,
                        limit: limits.max_depth,
                    });
                }
                stack.push(Frame::Seq {
                    pos,
                    anchor,
                    items: Vec::new(),
                    weight: 1,
                });
                None
            }
            Event::MappingStart(anchor, _) => {
                if stack.len() >= limits.max_depth {
                    return Err(YamlError::TooDeep {
                        pos,
                        limit: limits.max_depth,
                    });
                }
                stack.push(Frame::Map {
                    pos,
                    anchor,
                    entries: Vec::new(),
                    index: None,
                    pending_key: None,
                    weight: 1,
                });
                None
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq {
                    pos,
                    anchor,
                    items,
                    weight,
                }) => Some((
                    Rc::new(Node {
                        value: Value::Seq(items),
                        pos,
                    }),
                    weight,
                    anchor,
                    1,
                )),
                _ => {
                    return Err(YamlError::Syntax {
                        pos,
                        message: "unbalanced sequence".into(),
                    });
                }
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map {
                    pos,
                    anchor,
                    entries,
                    weight,
                    ..
                }) => Some((
                    Rc::new(Node {
                        value: Value::Map(entries),
                        pos,
                    }),
                    weight,
                    anchor,
                    1,
                )),
                _ => {
                    return Err(YamlError::Syntax {
                        pos,
                        message: "unbalanced mapping".into(),
                    });
                }
            },
        };
        let Some((node, weight, anchor, charge)) = finished else {
            continue;
        };
        // Charge the node (an alias costs what it expands to) before keeping it.
        total = total.saturating_add(charge);
        if total > limits.max_nodes {
            return Err(YamlError::TooManyNodes {
                pos,
                limit: limits.max_nodes,
                through_alias: aliased > 0,
            });
        }
        if anchor != 0 {
            anchors.insert(anchor, (node.clone(), weight));
        }
        match stack.last_mut() {
            None => docs.push(unwrap_rc(node)),
            Some(Frame::Seq {
                items, weight: w, ..
            }) => {
                *w = w.saturating_add(weight);
                items.push(node);
            }
            Some(Frame::Map {
                entries,
                index,
                pending_key,
                weight: w,
                ..
            }) => match pending_key.take() {
                None => {
                    let name = match &node.value {
                        Value::Str(s) => s.clone(),
                        Value::Int(i) => i.to_string(),
                        Value::Float(f) => f.to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Null => "null".to_string(),
                        Value::Seq(_) | Value::Map(_) => {
                            return Err(YamlError::ComplexKey { pos: node.pos });
                        }
                    };
                    let first = match index {
                        Some(idx) => idx.get(&name).copied(),
                        None => entries.iter().position(|(k, _)| k.name == name),
                    };
                    if let Some(first) = first {
                        return Err(YamlError::DuplicateKey {
                            pos: node.pos,
                            key: name,
                            first_line: entries[first].0.pos.line as usize,
                        });
                    }
                    *pending_key = Some(Key {
                        name,
                        pos: node.pos,
                    });
                }
                Some(key) => {
                    *w = w.saturating_add(weight.saturating_add(1));
                    const SCAN_LIMIT: usize = 16;
                    if entries.len() >= SCAN_LIMIT {
                        let idx = index.get_or_insert_with(|| {
                            entries
                                .iter()
                                .enumerate()
                                .map(|(i, (k, _))| (k.name.clone(), i))
                                .collect()
                        });
                        idx.insert(key.name.clone(), entries.len());
                    }
                    entries.push((key, node));
                }
            },
        }
    }
    Ok(docs)
}

fn unwrap_rc(node: Rc<Node>) -> Node {
    Rc::try_unwrap(node).unwrap_or_else(|shared| (*shared).clone())
}

/// YAML 1.2 core schema for plain scalars, with strict booleans.
fn resolve_scalar(cow: std::borrow::Cow<'_, str>, style: ScalarStyle) -> Value {
    if style != ScalarStyle::Plain {
        return Value::Str(cow.into_owned());
    }
    let text: &str = &cow;
    // Most plain scalars are words: skip the number checks for them.
    if text.bytes().next().is_some_and(|b| b.is_ascii_alphabetic()) && !matches!(text.len(), 4 | 5)
    {
        return Value::Str(cow.into_owned());
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    let bytes = text.as_bytes();
    let digits_start = usize::from(matches!(bytes.first(), Some(b'-' | b'+')));
    let body = &text[digits_start..];
    if !body.is_empty()
        && body.bytes().all(|b| b.is_ascii_digit())
        && let Ok(i) = text.parse::<i64>()
    {
        return Value::Int(i);
    }
    if let Some(hex) = text.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return Value::Int(i);
    }
    if let Some(oct) = text.strip_prefix("0o")
        && let Ok(i) = i64::from_str_radix(oct, 8)
    {
        return Value::Int(i);
    }
    if looks_like_float(body)
        && let Ok(f) = text.parse::<f64>()
    {
        return Value::Float(f);
    }
    Value::Str(cow.into_owned())
}

/// `[0-9]*(\.[0-9]*)?([eE][-+]?[0-9]+)?` with at least one digit (YAML 1.2 core float).
fn looks_like_float(s: &str) -> bool {
    let mut chars = s.chars().peekable();
    let mut digits = 0;
    while chars.peek().is_some_and(|c| c.is_ascii_digit()) {
        chars.next();
        digits += 1;
    }
    if chars.peek() == Some(&'.') {
        chars.next();
        while chars.peek().is_some_and(|c| c.is_ascii_digit()) {
            chars.next();
            digits += 1;
        }
    }
    if digits == 0 {
        return false;
    }
    if matches!(chars.peek(), Some('e' | 'E')) {
        chars.next();
        if matches!(chars.peek(), Some('+' | '-')) {
            chars.next();
        }
        let mut exp = 0;
        while chars.peek().is_some_and(|c| c.is_ascii_digit()) {
            chars.next();
            exp += 1;
        }
        if exp == 0 {
            return false;
        }
    }
    chars.next().is_none()
}

/// The position of the node at a JSON pointer, or of its closest existing ancestor.
pub fn pos_at(root: &Node, pointer: &str) -> Pos {
    let mut node = root;
    if pointer.is_empty() {
        return node.pos;
    }
    // A mapping or list reached through a key is pointed at by its key: the collection's own
    // position would be that of its first child.
    let mut key_pos = None;
    for raw in pointer.split('/').skip(1) {
        let seg = raw.replace("~1", "/").replace("~0", "~");
        let next = match &node.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.name == seg)
                .map(|(k, v)| (Some(k.pos), v)),
            Value::Seq(items) => seg
                .parse::<usize>()
                .ok()
                .and_then(|i| items.get(i))
                .map(|v| (None, v)),
            _ => None,
        };
        match next {
            Some((k, n)) => {
                node = n;
                key_pos = k;
            }
            None => {
                key_pos = None;
                break;
            }
        }
    }
    match (&node.value, key_pos) {
        (Value::Map(_) | Value::Seq(_), Some(k)) => k,
        _ => node.pos,
    }
}

#[doc(hidden)]
pub fn count_events_for_bench(text: &str) -> usize {
    let mut p = Parser::new_from_str(text);
    let mut n = 0;
    while let Some(Ok(_)) = p.next_event() {
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Node, YamlError> {
        parse(s, &Limits::default())
    }

    #[test]
    fn an_unclosed_bracket_is_named_with_where_it_opened() {
        for (text, bracket, at) in [
            ("a: 1\nb: {c: 1, d: 2\ne: 3\n", '{', "line 2, column 4"),
            ("a:\n  - [1, 2\n  - 3\nb: 4\n", '[', "line 2, column 5"),
            ("a: {b: [1, 2], c: 'x}'\nd: 1\n", '{', "line 1, column 4"),
        ] {
            let e = p(text).expect_err(text).to_string();
            let want = format!("the `{bracket}` opened at {at} is never closed");
            assert!(e.contains(&want), "{text:?}: {e}");
        }
        // Brackets inside plain scalars and comments are not flow collections.
        let e = p("a: x[1]  # {\nb: [1\nc: 2\n").expect_err("unclosed");
        assert!(e.to_string().contains("opened at line 2, column 4"), "{e}");
    }

    #[test]
    fn positions_are_one_based() {
        let n = p("a: 1\nb:\n  - x\n").expect("parses");
        let b = n.get("b").expect("b");
        assert_eq!(b.pos, Pos { line: 3, column: 3 });
        let Value::Map(entries) = &n.value else {
            panic!("map")
        };
        assert_eq!(entries[1].0.pos, Pos { line: 2, column: 1 });
    }

    #[test]
    fn strict_scalars() {
        let n = p("a: yes\nb: on\nc: true\nd: 0777\ne: '1'\nf: 1.5\ng: ~\nh: 1e3\ni: !!str 2\n")
            .expect("parses");
        assert_eq!(n.get("i").map(|n| &n.value), Some(&Value::Str("2".into())));
        assert_eq!(
            n.get("a").map(|n| &n.value),
            Some(&Value::Str("yes".into()))
        );
        assert_eq!(n.get("b").map(|n| &n.value), Some(&Value::Str("on".into())));
        assert_eq!(n.get("c").map(|n| &n.value), Some(&Value::Bool(true)));
        assert_eq!(n.get("d").map(|n| &n.value), Some(&Value::Int(777)));
        assert_eq!(n.get("e").map(|n| &n.value), Some(&Value::Str("1".into())));
        assert_eq!(n.get("f").map(|n| &n.value), Some(&Value::Float(1.5)));
        assert_eq!(n.get("g").map(|n| &n.value), Some(&Value::Null));
        assert_eq!(n.get("h").map(|n| &n.value), Some(&Value::Float(1000.0)));
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let e = p("a: 1\nb: 2\na: 3\n").expect_err("dup");
        assert_eq!(
            e,
            YamlError::DuplicateKey {
                pos: Pos { line: 3, column: 1 },
                key: "a".into(),
                first_line: 1
            }
        );
    }

    #[test]
    fn alias_bomb_is_refused_quickly() {
        let mut s = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..30 {
            let prev = format!("*a{}", i - 1);
            s.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
        }
        let start = std::time::Instant::now();
        let e = p(&s).expect_err("bomb");
        assert!(
            matches!(
                e,
                YamlError::TooManyNodes {
                    through_alias: true,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("alias"), "{e}");
        // Not a timing assertion of the product's speed: a guard that expansion never happens.
        assert!(start.elapsed().as_secs() < 5);
    }

    #[test]
    fn nodes_are_charged_once_however_deep() {
        // 4 million plain scalars nested a few levels deep: under the 5M limit, and no
        // "alias bomb" (each node used to be charged once per enclosing level).
        // Block style: a flow collection this long is refused by `max_value_chars`.
        let inner = format!("  - [{}]\n", vec!["a"; 1000].join(","));
        let s = format!("- - {}\n", "x") + &inner.repeat(4000);
        let n = p(&s).expect("4M scalars fit");
        assert!(matches!(n.value, Value::Seq(_)));
    }

    #[test]
    fn a_value_longer_than_the_limit_is_refused_where_it_starts() {
        let limits = Limits {
            max_value_chars: 1000,
            ..Limits::default()
        };
        // A flow collection where a key could start is held whole by the parser (a block
        // mapping's value is not: its items come out as they are read).
        let s = format!("# c\n  [{}]\n", vec!["{}"; 2000].join(","));
        let e = parse(&s, &limits).expect_err("too long");
        assert_eq!(
            e,
            YamlError::ValueTooLong {
                pos: Pos { line: 2, column: 3 },
                limit: 1000
            }
        );
        assert!(
            e.to_string().starts_with("2:3: a value longer than 1000"),
            "{e}"
        );
        // One scalar that long: its first character.
        let long = format!("a:\n  b:   \"{}\"\n", "x".repeat(3000));
        let e = parse(&long, &limits).expect_err("too long");
        assert_eq!(
            e,
            YamlError::ValueTooLong {
                pos: Pos { line: 2, column: 8 },
                limit: 1000
            }
        );
        let value = format!("b: [{}]\n", vec!["{}"; 2000].join(","));
        assert!(parse(&value, &limits).is_ok());
        // The same collection, shorter than the limit, and a manifest written as JSON.
        let short = format!("[{}]\n", vec!["{}"; 300].join(","));
        assert!(parse(&short, &limits).is_ok());
        let json = format!(
            "{{\n  \"kind\": \"ConfigMap\",\n  \"data\": {{{}}}\n}}\n",
            (0..20_000)
                .map(|i| format!("\"k{i}\": \"v\""))
                .collect::<Vec<_>>()
                .join(",\n    ")
        );
        let n = p(&json).expect("a 300 KB JSON manifest reads");
        assert_eq!(
            n.get("kind").map(|k| k.value.clone()),
            Some(Value::Str("ConfigMap".into()))
        );
    }

    #[test]
    fn too_many_nodes_without_aliases_is_not_called_an_alias_bomb() {
        let limits = Limits {
            max_nodes: 1000,
            ..Limits::default()
        };
        let s = format!("[{}]", vec!["{}"; 2000].join(","));
        let e = parse(&s, &limits).expect_err("too many");
        assert!(
            matches!(
                e,
                YamlError::TooManyNodes {
                    limit: 1000,
                    through_alias: false,
                    ..
                }
            ),
            "{e}"
        );
        assert!(!e.to_string().contains("alias"), "{e}");
        // All documents of a stream count together.
        let s = vec!["[a, b, c]"; 400].join("\n---\n");
        assert!(matches!(
            parse_all(&s, &limits),
            Err(YamlError::TooManyNodes { .. })
        ));
    }

    #[test]
    fn deep_nesting_is_refused() {
        // Flow style: the scanner's own recursion limit or ours, whichever comes first.
        let s = "[".repeat(100_000);
        let e = p(&s).expect_err("deep");
        assert!(
            matches!(e, YamlError::TooDeep { .. } | YamlError::Syntax { .. }),
            "{e}"
        );
        // Block style: ours.
        let s: String = (0..100)
            .map(|i| format!("{}k:\n", "  ".repeat(i)))
            .collect();
        let e = p(&s).expect_err("deep");
        assert!(matches!(e, YamlError::TooDeep { limit: 64, .. }), "{e}");
    }

    #[test]
    fn size_limit() {
        let limits = Limits {
            max_bytes: 10,
            ..Limits::default()
        };
        assert!(matches!(
            parse("a: 123456789", &limits),
            Err(YamlError::TooLarge { .. })
        ));
    }

    #[test]
    fn aliases_share_values() {
        let n = p("base: &b {x: 1}\nother: *b\n").expect("parses");
        assert_eq!(
            n.get("other").map(|n| n.to_json()),
            Some(serde_json::json!({"x": 1}))
        );
    }

    #[test]
    fn multi_documents() {
        let docs = parse_all("a: 1\n---\nb: 2\n", &Limits::default()).expect("parses");
        assert_eq!(docs.len(), 2);
        assert!(matches!(
            p("a: 1\n---\nb: 2\n"),
            Err(YamlError::MultipleDocuments { .. })
        ));
    }
}
