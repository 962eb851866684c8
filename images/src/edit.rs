//! Write-back that respects the user's files: finds the image fields of a YAML file and
//! replaces the bytes of their values, and nothing else.
//!
//! Fields are found three ways:
//! - a setter comment on the value's line, as in Flux: `# {"$imagepolicy": "P"}` (the whole
//!   reference `image:tag`), `"P:tag"` (the tag), `"P:name"` (the image name), `"P:digest"`;
//! - an entry of an `images:` sequence (fleet.yaml `overrides[].images`, kustomization
//!   `images:`) whose effective image (`newName`, else `name`) is the policy's image: its `tag`
//!   or `newTag` field, and its `digest` field for digest policies.
//!
//! The file is parsed with saphyr-parser (the parser `spec` uses) for positions only; the edit
//! itself splices new bytes into the original text at the value's span. Comments, ordering,
//! quoting and indentation are never rewritten; the one exception is a plain scalar whose new
//! value would no longer read as a string (`1.10` is a float in YAML): it is double-quoted.
//! Every edit is checked before it is returned: the bytes outside the value spans are
//! identical, and re-parsing the result yields the same scalars except the edited values,
//! which read back as intended.

use std::sync::LazyLock;

use saphyr_parser::{Event, Parser, ScalarStyle};
use serde::Serialize;

/// The new reference a policy chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub policy: String,
    /// The repository, without tag: `registry.example.com/shop/frontend`.
    pub image: String,
    pub tag: String,
    /// For digest policies: `sha256:...`.
    pub digest: Option<String>,
}

/// What a field holds: the part of the image reference it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum FieldKind {
    /// `# {"$imagepolicy": "P"}`: `image:tag` (`image:tag@digest` for digest policies).
    Reference,
    /// `# {"$imagepolicy": "P:tag"}`: the tag (`tag@digest` for digest policies).
    Tag,
    /// `# {"$imagepolicy": "P:name"}`: the image name.
    Name,
    /// `# {"$imagepolicy": "P:digest"}`: the digest.
    Digest,
    /// `images: [{name: IMAGE, tag|newTag: ...}]`.
    ImagesTag,
    /// `images: [{name: IMAGE, digest: ...}]`.
    ImagesDigest,
}

/// One image field found in a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Field {
    pub policy: Option<String>,
    /// For `images:` entries: the effective image the entry names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    pub kind: FieldKind,
    /// 1-based.
    pub line: usize,
    pub column: usize,
    /// The value as YAML reads it.
    pub current: String,
    #[serde(skip)]
    span: (usize, usize),
    #[serde(skip)]
    style: Style,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Plain,
    Single,
    Double,
}

/// A value that changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub policy: String,
    pub image: String,
    pub kind: FieldKind,
    pub from: String,
    pub to: String,
}

/// Something that kept a field from being updated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: ", self.file)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if let Some(p) = &self.policy {
            write!(f, "policy {p}: ")?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EditError {
    #[error("{file}: YAML syntax error at line {line}: {message}")]
    Syntax {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{file}: the edit failed its guard ({message}); nothing was written")]
    Guard { file: String, message: String },
}

/// The fields of a file, and the setter comments that name no value (with their line).
#[derive(Debug, Clone, Default)]
pub struct Found {
    pub fields: Vec<Field>,
    pub problems: Vec<Problem>,
}

// ---------------------------------------------------------------------------------------
// A light tree with positions.

#[derive(Debug)]
struct Scalar {
    value: String,
    style: ScalarStyle,
    /// Byte offset of the first character of the node (a quote for quoted scalars).
    start: usize,
    line: usize,
    column: usize,
}

#[derive(Debug)]
enum Node {
    Scalar(Scalar),
    Map(Vec<(Node, Node)>),
    Seq(Vec<Node>),
    Other,
}

enum Frame {
    Map(Vec<(Node, Node)>, Option<Node>),
    Seq(Vec<Node>),
}

/// Byte offsets of character indices (saphyr's markers count characters).
struct Offsets(Vec<usize>);

impl Offsets {
    fn new(text: &str) -> Offsets {
        let mut v: Vec<usize> = text.char_indices().map(|(b, _)| b).collect();
        v.push(text.len());
        Offsets(v)
    }
    fn byte(&self, char_index: usize) -> usize {
        self.0
            .get(char_index)
            .copied()
            .unwrap_or(*self.0.last().unwrap_or(&0))
    }
}

fn parse(file: &str, text: &str) -> Result<Vec<Node>, EditError> {
    let offsets = Offsets::new(text);
    let mut parser = Parser::new_from_str(text);
    let mut docs = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    fn attach(stack: &mut [Frame], docs: &mut Vec<Node>, node: Node) {
        match stack.last_mut() {
            None => docs.push(node),
            Some(Frame::Seq(items)) => items.push(node),
            Some(Frame::Map(entries, pending)) => match pending.take() {
                None => *pending = Some(node),
                Some(key) => entries.push((key, node)),
            },
        }
    }
    while let Some(event) = parser.next_event() {
        let (event, span) = event.map_err(|e| EditError::Syntax {
            file: file.to_string(),
            line: e.marker().line(),
            message: e.info().to_string(),
        })?;
        match event {
            Event::Scalar(value, style, _, _) => {
                let node = Node::Scalar(Scalar {
                    value: value.into_owned(),
                    style,
                    start: offsets.byte(span.start.index()),
                    line: span.start.line(),
                    column: span.start.col() + 1,
                });
                attach(&mut stack, &mut docs, node);
            }
            Event::Alias(_) => attach(&mut stack, &mut docs, Node::Other),
            Event::SequenceStart(..) => stack.push(Frame::Seq(Vec::new())),
            Event::MappingStart(..) => stack.push(Frame::Map(Vec::new(), None)),
            Event::SequenceEnd | Event::MappingEnd => {
                let node = match stack.pop() {
                    Some(Frame::Seq(items)) => Node::Seq(items),
                    Some(Frame::Map(entries, _)) => Node::Map(entries),
                    None => Node::Other,
                };
                attach(&mut stack, &mut docs, node);
            }
            Event::StreamEnd => break,
            _ => {}
        }
    }
    Ok(docs)
}

/// Value scalars (not mapping keys), in document order.
fn values<'a>(node: &'a Node, out: &mut Vec<&'a Scalar>) {
    match node {
        Node::Scalar(s) => out.push(s),
        Node::Map(entries) => {
            for (_, v) in entries {
                values(v, out);
            }
        }
        Node::Seq(items) => {
            for i in items {
                values(i, out);
            }
        }
        Node::Other => {}
    }
}

/// Every scalar (keys too), for the guard.
fn all_scalars<'a>(node: &'a Node, out: &mut Vec<&'a Scalar>) {
    match node {
        Node::Scalar(s) => out.push(s),
        Node::Map(entries) => {
            for (k, v) in entries {
                all_scalars(k, out);
                all_scalars(v, out);
            }
        }
        Node::Seq(items) => {
            for i in items {
                all_scalars(i, out);
            }
        }
        Node::Other => {}
    }
}

fn key_str(node: &Node) -> Option<&str> {
    match node {
        Node::Scalar(s) => Some(&s.value),
        _ => None,
    }
}

fn get<'a>(entries: &'a [(Node, Node)], key: &str) -> Option<&'a Node> {
    entries
        .iter()
        .find(|(k, _)| key_str(k) == Some(key))
        .map(|(_, v)| v)
}

/// The byte span of a scalar's value text, or why it cannot be edited in place.
/// Records scalar `s` as a field of `policy`, or why its value cannot be edited.
fn record(
    found: &mut Found,
    file: &str,
    text: &str,
    s: &Scalar,
    policy: &str,
    image: Option<&str>,
    kind: FieldKind,
) {
    match value_span(text, s) {
        Ok((span, style)) => found.fields.push(Field {
            policy: Some(policy.into()),
            image: image.map(str::to_string),
            kind,
            line: s.line,
            column: s.column,
            current: s.value.clone(),
            span,
            style,
        }),
        Err(why) => found.problems.push(Problem {
            file: file.into(),
            line: Some(s.line),
            policy: Some(policy.into()),
            message: why,
        }),
    }
}

fn value_span(text: &str, s: &Scalar) -> Result<((usize, usize), Style), String> {
    let rest = text.get(s.start..).unwrap_or("");
    match s.style {
        ScalarStyle::Plain => {
            if rest.starts_with(s.value.as_str()) {
                Ok(((s.start, s.start + s.value.len()), Style::Plain))
            } else {
                Err("a multi-line plain scalar cannot be edited in place".into())
            }
        }
        ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted => {
            let quote = if s.style == ScalarStyle::SingleQuoted {
                '\''
            } else {
                '"'
            };
            if !rest.starts_with(quote) {
                return Err("cannot find the opening quote".into());
            }
            let bytes = rest.as_bytes();
            let mut i = 1;
            while i < bytes.len() {
                let b = bytes[i];
                if b == b'\n' {
                    return Err("a multi-line quoted scalar cannot be edited in place".into());
                }
                if quote == '"' && b == b'\\' {
                    i += 2;
                    continue;
                }
                if b == quote as u8 {
                    if quote == '\'' && bytes.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    let style = if quote == '"' {
                        Style::Double
                    } else {
                        Style::Single
                    };
                    return Ok(((s.start, s.start + i + 1), style));
                }
                i += 1;
            }
            Err("cannot find the closing quote".into())
        }
        _ => Err("block scalars (| and >) are not edited".into()),
    }
}

static SETTER: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r#"#\s*\{\s*"\$imagepolicy"\s*:\s*"([^"]+)"\s*\}"#).expect("a valid regex")
});

fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect()
}

/// Finds the image fields of `text` (the file `file`). `images` maps image repositories to
/// the policies that track them (for `images:` entries).
pub fn find(file: &str, text: &str, images: &[(String, String)]) -> Result<Found, EditError> {
    if !is_yaml(file) {
        return Ok(find_in_text(file, text));
    }
    let docs = parse(file, text)?;
    let mut found = Found::default();
    let starts = line_starts(text);
    // Setter comments.
    let mut vals = Vec::new();
    for d in &docs {
        values(d, &mut vals);
    }
    for caps in SETTER.captures_iter(text) {
        let Some(m) = caps.get(0) else { continue };
        let marker = caps.get(1).map(|c| c.as_str()).unwrap_or("");
        let line = starts.partition_point(|&s| s <= m.start());
        let (policy, kind) = match marker.rsplit_once(':') {
            Some((p, "tag")) => (p, FieldKind::Tag),
            Some((p, "name")) => (p, FieldKind::Name),
            Some((p, "digest")) => (p, FieldKind::Digest),
            _ => (marker, FieldKind::Reference),
        };
        // The last value that starts on this line, before the comment.
        let on_line = vals
            .iter()
            .filter(|s| s.line == line && s.start < m.start())
            .max_by_key(|s| s.start);
        let Some(s) = on_line else {
            found.problems.push(Problem {
                file: file.into(),
                line: Some(line),
                policy: Some(policy.into()),
                message: format!(
                    "the marker {:?} is on a line without a value (was the field removed or moved?)",
                    m.as_str()
                ),
            });
            continue;
        };
        // The "marker" inside the value (a quoted string that quotes a marker) is not one.
        if value_span(text, s).is_ok_and(|(span, _)| span.1 > m.start()) {
            continue;
        }
        record(&mut found, file, text, s, policy, None, kind);
    }
    // `images:` entries.
    fn walk(
        node: &Node,
        under_images: bool,
        text: &str,
        file: &str,
        images: &[(String, String)],
        found: &mut Found,
    ) {
        match node {
            Node::Map(entries) => {
                if under_images {
                    entry(entries, text, file, images, found);
                }
                for (k, v) in entries {
                    walk(v, key_str(k) == Some("images"), text, file, images, found);
                }
            }
            Node::Seq(items) => {
                for i in items {
                    walk(i, under_images, text, file, images, found);
                }
            }
            _ => {}
        }
    }
    fn entry(
        entries: &[(Node, Node)],
        text: &str,
        file: &str,
        images: &[(String, String)],
        found: &mut Found,
    ) {
        let name = match get(entries, "newName").or_else(|| get(entries, "name")) {
            Some(Node::Scalar(s)) => s.value.as_str(),
            _ => return,
        };
        for (image, policy) in images.iter().filter(|(i, _)| i == name) {
            let mut any = false;
            for (key, kind) in [
                ("tag", FieldKind::ImagesTag),
                ("newTag", FieldKind::ImagesTag),
                ("digest", FieldKind::ImagesDigest),
            ] {
                let Some(Node::Scalar(s)) = get(entries, key) else {
                    continue;
                };
                any = true;
                // A field also marked with a setter comment is edited once.
                if found
                    .fields
                    .iter()
                    .any(|f| f.span.0 <= s.start && s.start < f.span.1)
                {
                    continue;
                }
                record(found, file, text, s, policy, Some(image), kind);
            }
            if !any {
                let line = match get(entries, "name") {
                    Some(Node::Scalar(s)) => Some(s.line),
                    _ => None,
                };
                found.problems.push(Problem {
                    file: file.into(),
                    line,
                    policy: Some(policy.clone()),
                    message: format!(
                        "the images entry for {image} has no tag, newTag or digest field to update"
                    ),
                });
            }
        }
    }
    for d in &docs {
        walk(d, false, text, file, images, &mut found);
    }
    found.fields.sort_by_key(|f| f.span);
    Ok(found)
}

/// YAML files are parsed; other files (Jsonnet, for one) are read line by line.
fn is_yaml(file: &str) -> bool {
    file.ends_with(".yaml") || file.ends_with(".yml")
}

/// Setter markers in a file that is not YAML (Jsonnet: `image: 'r/x:1',  # {"$imagepolicy":
/// "x"}`): the value is the last string literal before the marker on its line, edited only
/// when it has no escapes.
fn find_in_text(file: &str, text: &str) -> Found {
    let mut found = Found::default();
    let starts = line_starts(text);
    for caps in SETTER.captures_iter(text) {
        let Some(m) = caps.get(0) else { continue };
        let marker = caps.get(1).map(|c| c.as_str()).unwrap_or("");
        let line = starts.partition_point(|&s| s <= m.start());
        let line_start = starts.get(line.saturating_sub(1)).copied().unwrap_or(0);
        let (policy, kind) = match marker.rsplit_once(':') {
            Some((p, "tag")) => (p, FieldKind::Tag),
            Some((p, "name")) => (p, FieldKind::Name),
            Some((p, "digest")) => (p, FieldKind::Digest),
            _ => (marker, FieldKind::Reference),
        };
        let before = &text[line_start..m.start()];
        // String literals on the line, in order: (start, end exclusive, quote).
        let mut literals = Vec::new();
        let bytes = before.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let q = bytes[i];
            if q == b'"' || q == b'\'' {
                let mut j = i + 1;
                while j < bytes.len() && bytes[j] != q {
                    if bytes[j] == b'\\' {
                        j += 1;
                    }
                    j += 1;
                }
                if j < bytes.len() {
                    literals.push((i, j + 1, q));
                }
                i = j + 1;
            } else {
                i += 1;
            }
        }
        let problem = |message: String| Problem {
            file: file.into(),
            line: Some(line),
            policy: Some(policy.into()),
            message,
        };
        match literals.last() {
            None => found.problems.push(problem(format!(
                "the marker {:?} is on a line without a quoted value (was the field removed or moved?)",
                m.as_str()
            ))),
            Some(&(a, b, q)) => {
                let inner = &before[a + 1..b - 1];
                if inner.contains('\\') {
                    found
                        .problems
                        .push(problem("a value with escapes is not edited".into()));
                    continue;
                }
                found.fields.push(Field {
                    policy: Some(policy.into()),
                    image: None,
                    kind,
                    line,
                    column: a + 1,
                    current: inner.to_string(),
                    span: (line_start + a, line_start + b),
                    style: if q == b'"' { Style::Double } else { Style::Single },
                });
            }
        }
    }
    found
}

/// What a field should hold for `d`, or why it cannot be set.
fn desired_value(kind: FieldKind, d: &Desired) -> Result<Option<String>, String> {
    let at_digest = |s: String| match &d.digest {
        Some(dg) => format!("{s}@{dg}"),
        None => s,
    };
    Ok(match kind {
        FieldKind::Reference => Some(at_digest(format!("{}:{}", d.image, d.tag))),
        FieldKind::Tag => Some(at_digest(d.tag.clone())),
        FieldKind::Name => Some(d.image.clone()),
        FieldKind::Digest => match &d.digest {
            Some(dg) => Some(dg.clone()),
            None => return Err("a :digest marker needs a digest policy".into()),
        },
        FieldKind::ImagesTag => Some(d.tag.clone()),
        // Only digest policies write digests; a tag policy leaves a pinned digest alone.
        FieldKind::ImagesDigest => d.digest.clone(),
    })
}

/// True if a plain scalar with this text reads as a string under YAML 1.2 core (and 1.1,
/// for older tools) and needs no quoting in block context.
fn plain_is_string(v: &str) -> bool {
    static SAFE: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(r"^[A-Za-z0-9_][A-Za-z0-9_./@+-]*(:[A-Za-z0-9_./@+-]+)*$")
            .expect("a valid regex")
    });
    if !SAFE.is_match(v) {
        return false;
    }
    let lower = v.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n" | "~"
    ) {
        return false;
    }
    let numeric = regex::Regex::new(r"^[-+]?(\.[0-9]+|[0-9][0-9_]*(\.[0-9_]*)?)([eE][-+]?[0-9]+)?$|^0x[0-9a-fA-F_]+$|^0o[0-7_]+$|^[0-9_:]+$")
        .map(|re| re.is_match(v))
        .unwrap_or(true);
    !numeric
}

fn render(style: Style, value: &str) -> (String, Style) {
    match style {
        Style::Plain if plain_is_string(value) => (value.to_string(), Style::Plain),
        Style::Single if !value.contains('\n') => {
            (format!("'{}'", value.replace('\'', "''")), Style::Single)
        }
        _ => (
            format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\"")),
            Style::Double,
        ),
    }
}

/// The edited text of a file and the changes made; `Ok(None)` when nothing changes.
#[derive(Debug, Clone)]
pub struct Edited {
    pub text: String,
    pub changes: Vec<Change>,
    pub problems: Vec<Problem>,
}

/// Updates every field of `text` that a policy in `desired` tracks. Fields already holding
/// the desired value are left alone. `policies` names every policy of the fleet (to report
/// markers for unknown policies).
pub fn apply(file: &str, text: &str, desired: &[Desired]) -> Result<Edited, EditError> {
    let images: Vec<(String, String)> = desired
        .iter()
        .map(|d| (d.image.clone(), d.policy.clone()))
        .collect();
    let found = find(file, text, &images)?;
    let mut problems = found.problems;
    let mut splices: Vec<((usize, usize), String, String)> = Vec::new();
    let mut changes = Vec::new();
    for f in &found.fields {
        let Some(policy) = &f.policy else { continue };
        let Some(d) = desired.iter().find(|d| &d.policy == policy) else {
            continue;
        };
        let to = match desired_value(f.kind, d) {
            Ok(Some(v)) => v,
            Ok(None) => continue,
            Err(why) => {
                problems.push(Problem {
                    file: file.into(),
                    line: Some(f.line),
                    policy: Some(policy.clone()),
                    message: why,
                });
                continue;
            }
        };
        if to == f.current {
            continue;
        }
        if !is_yaml(file) && (to.contains('\'') || to.contains('"') || to.contains('\\')) {
            problems.push(Problem {
                file: file.into(),
                line: Some(f.line),
                policy: Some(policy.clone()),
                message: format!("{to:?} has quotes or backslashes; not written"),
            });
            continue;
        }
        let (bytes, _) = render(f.style, &to);
        splices.push((f.span, bytes, to.clone()));
        changes.push(Change {
            file: file.into(),
            line: f.line,
            column: f.column,
            policy: policy.clone(),
            image: d.image.clone(),
            kind: f.kind,
            from: f.current.clone(),
            to,
        });
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for ((start, end), bytes, _) in &splices {
        out.push_str(&text[last..*start]);
        out.push_str(bytes);
        last = *end;
    }
    out.push_str(&text[last..]);
    guard(file, text, &out, &splices)?;
    Ok(Edited {
        text: out,
        changes,
        problems,
    })
}

/// Checks an edit: outside the spliced spans the bytes are the original ones, and the
/// re-parsed file has the same scalars except the edited values, which read as intended.
fn guard(
    file: &str,
    old: &str,
    new: &str,
    splices: &[((usize, usize), String, String)],
) -> Result<(), EditError> {
    let fail = |message: String| EditError::Guard {
        file: file.into(),
        message,
    };
    // Byte diff: walk both texts span by span.
    let mut o = 0;
    let mut n = 0;
    for ((start, end), bytes, _) in splices {
        let same = &old.as_bytes()[o..*start];
        if new.as_bytes().get(n..n + same.len()) != Some(same) {
            return Err(fail(format!("bytes before offset {start} changed")));
        }
        n += same.len() + bytes.len();
        o = *end;
    }
    if new.as_bytes().get(n..) != Some(&old.as_bytes()[o..]) {
        return Err(fail("bytes after the last value changed".into()));
    }
    if !is_yaml(file) {
        return Ok(());
    }
    let parsed_old = parse(file, old)?;
    let parsed_new =
        parse(file, new).map_err(|e| fail(format!("the result does not parse: {e}")))?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    parsed_old.iter().for_each(|d| all_scalars(d, &mut a));
    parsed_new.iter().for_each(|d| all_scalars(d, &mut b));
    if a.len() != b.len() {
        return Err(fail("the number of scalars changed".into()));
    }
    for (x, y) in a.iter().zip(&b) {
        match splices.iter().find(|((s, _), _, _)| *s == x.start) {
            Some((_, _, want)) => {
                if &y.value != want {
                    return Err(fail(format!(
                        "line {}: the new value reads as {:?}, not {want:?}",
                        x.line, y.value
                    )));
                }
            }
            None => {
                if x.value != y.value || x.line != y.line {
                    return Err(fail(format!(
                        "line {}: {:?} changed to {:?}",
                        x.line, x.value, y.value
                    )));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(policy: &str, image: &str, tag: &str) -> Desired {
        Desired {
            policy: policy.into(),
            image: image.into(),
            tag: tag.into(),
            digest: None,
        }
    }

    /// Every byte that differs lies inside the reported values' lines.
    fn only_values_changed(old: &str, new: &str, changes: &[Change]) {
        let ol: Vec<&str> = old.lines().collect();
        let nl: Vec<&str> = new.lines().collect();
        assert_eq!(ol.len(), nl.len());
        for (i, (a, b)) in ol.iter().zip(&nl).enumerate() {
            if a != b {
                assert!(
                    changes.iter().any(|c| c.line == i + 1),
                    "line {} changed without a change record",
                    i + 1
                );
            }
        }
    }

    #[test]
    fn setter_comments_keep_everything_else() {
        let text = "# top comment\nspec:\n  containers:\n    - name: web   # the web\n      image: reg.example.com/web:1.0.0 # {\"$imagepolicy\": \"web\"}\n    - name: side\n      image: \"reg.example.com/side:2.0\"  # {\"$imagepolicy\": \"side:tag\"}\n";
        let e = apply(
            "d.yaml",
            text,
            &[
                d("web", "reg.example.com/web", "1.1.0"),
                d("side", "reg.example.com/side", "2.1"),
            ],
        )
        .expect("edit");
        assert_eq!(
            e.text,
            text.replace("web:1.0.0", "web:1.1.0")
                .replace("\"reg.example.com/side:2.0\"", "\"2.1\"")
        );
        assert_eq!(e.changes.len(), 2);
        only_values_changed(text, &e.text, &e.changes);
    }

    #[test]
    fn quoting_styles_are_kept_and_plain_numbers_get_quotes() {
        let text = "a: '1.0.0' # {\"$imagepolicy\": \"p:tag\"}\nb: 1.0.0 # {\"$imagepolicy\": \"q:tag\"}\nc: v1 # {\"$imagepolicy\": \"r:tag\"}\n";
        let e = apply(
            "f.yaml",
            text,
            &[
                d("p", "x", "1.2.0"),
                d("q", "y", "1.2.0"),
                d("r", "z", "1.10"),
            ],
        )
        .expect("edit");
        assert_eq!(
            e.text,
            "a: '1.2.0' # {\"$imagepolicy\": \"p:tag\"}\nb: 1.2.0 # {\"$imagepolicy\": \"q:tag\"}\nc: \"1.10\" # {\"$imagepolicy\": \"r:tag\"}\n"
        );
    }

    #[test]
    fn images_entries_in_fleet_and_kustomization_shapes() {
        let text = "images:\n  - name: reg/app   # app\n    newTag: \"1.0\"\n  - name: other\n    newTag: 3\nplacements:\n  - name: p\n    overrides:\n      - clusters: {}\n        images: [{name: reg/app, tag: \"1.0\"}, {name: x, tag: y}]\n";
        let e = apply("k.yaml", text, &[d("app", "reg/app", "1.1")]).expect("edit");
        assert_eq!(e.text, text.replace("\"1.0\"", "\"1.1\""));
        assert_eq!(e.changes.len(), 2);
        assert_eq!(e.changes[0].line, 3);
        assert_eq!(e.changes[1].line, 10);
    }

    #[test]
    fn multi_document_and_non_ascii() {
        let text = "# ünïcödé ✓\n---\nkind: A\n---\nkind: B # ✓✓\nimage: r/b:1 # {\"$imagepolicy\": \"b\"}\n";
        let e = apply("m.yaml", text, &[d("b", "r/b", "2")]).expect("edit");
        assert_eq!(e.text, text.replace("r/b:1 ", "r/b:2 "));
    }

    #[test]
    fn a_marker_without_a_value_is_reported_with_its_line() {
        let text = "a: 1\n# {\"$imagepolicy\": \"gone\"}\nb: 2\n";
        let e = apply("g.yaml", text, &[d("gone", "r/g", "2")]).expect("edit");
        assert_eq!(e.text, text);
        assert_eq!(e.problems.len(), 1);
        assert_eq!(e.problems[0].line, Some(2));
        assert!(
            e.problems[0]
                .to_string()
                .starts_with("g.yaml:2: policy gone:")
        );
    }

    #[test]
    fn unchanged_values_are_not_changes_and_block_scalars_are_refused() {
        let text = "image: r/a:1 # {\"$imagepolicy\": \"a\"}\n";
        let e = apply("u.yaml", text, &[d("a", "r/a", "1")]).expect("edit");
        assert!(e.changes.is_empty());
        let text = "x: |\n  r/a:1\n";
        let found = find("b.yaml", text, &[]).expect("find");
        assert!(found.fields.is_empty());
    }

    #[test]
    fn digest_policies_write_tag_at_digest() {
        let text = "image: r/a:stable@sha256:aaaa # {\"$imagepolicy\": \"a\"}\nimages:\n  - name: r/a\n    newTag: stable\n    digest: sha256:aaaa\n";
        let e = apply(
            "d.yaml",
            text,
            &[Desired {
                policy: "a".into(),
                image: "r/a".into(),
                tag: "stable".into(),
                digest: Some("sha256:bbbb".into()),
            }],
        )
        .expect("edit");
        assert_eq!(e.text, text.replace("sha256:aaaa", "sha256:bbbb"));
        assert_eq!(e.changes.len(), 2);
    }

    #[test]
    fn crlf_name_markers_quoted_markers_and_aliases() {
        let text = "a: r/x:1 # {\"$imagepolicy\": \"x\"}\r\nn: old/name # {\"$imagepolicy\": \"x:name\"}\r\nq: '# {\"$imagepolicy\": \"x\"}'\r\nb: &anchor r/x:1\r\nc: *anchor # {\"$imagepolicy\": \"x\"}\r\n";
        let e = apply("c.yaml", text, &[d("x", "r/x", "2")]).expect("edit");
        assert_eq!(
            e.text,
            text.replacen("r/x:1", "r/x:2", 1)
                .replace("old/name", "r/x")
        );
        assert_eq!(e.changes.len(), 2);
        // The alias line has a marker but no scalar value of its own.
        assert_eq!(e.problems.len(), 1, "{:?}", e.problems);
        assert_eq!(e.problems[0].line, Some(5));
    }

    #[test]
    fn jsonnet_files_are_edited_line_by_line() {
        let text = "local img = 'r/api:main-9';  # {\"$imagepolicy\": \"api\"}\n{\n  tag: \"main-9\", // x # {\"$imagepolicy\": \"api:tag\"}\n  # {\"$imagepolicy\": \"api\"}\n}\n";
        let e = apply("main.jsonnet", text, &[d("api", "r/api", "main-10")]).expect("edit");
        assert_eq!(e.text, text.replace("main-9", "main-10"));
        assert_eq!(e.changes.len(), 2);
        assert_eq!(e.problems.len(), 1);
        assert_eq!(e.problems[0].line, Some(4));
    }

    #[test]
    fn syntax_errors_are_errors() {
        assert!(matches!(
            apply("s.yaml", "a: [1, 2\n", &[]),
            Err(EditError::Syntax { .. })
        ));
    }

    #[test]
    fn plain_string_check() {
        for s in ["1.2.3", "v1", "main-10", "reg:5000/a:1.0", "1.2.3-rc.1"] {
            assert!(plain_is_string(s), "{s}");
        }
        for s in [
            "1.10", "10", "true", "null", "0x1F", "1e3", ".5", "a: b", "#x", "",
        ] {
            assert!(!plain_is_string(s), "{s}");
        }
    }
}
