//! Decrypts SOPS documents (YAML, JSON and dotenv) with age X25519 identities.
//!
//! The format, as `getsops/sops` 3.x writes it:
//! - every value that the file's rule selects is `ENC[AES256_GCM,data:B64,iv:B64,tag:B64,type:T]`
//!   (T: `str`, `int`, `float`, `bool`, `bytes`, `time`, `comment`), AES-256-GCM under one
//!   random 32-byte data key, with the value's key path joined by `:` plus a trailing `:` as
//!   additional data (list items add nothing to the path);
//! - the top-level `sops` map holds the data key wrapped for each recipient (`age[].enc`, an
//!   armored age file), `lastmodified`, the rule (`unencrypted_suffix` — default
//!   `_unencrypted` —, `encrypted_suffix`, `unencrypted_regex`, `encrypted_regex`; a key
//!   anywhere on a value's path decides), `mac_only_encrypted`, and `mac`;
//! - `mac` is the uppercase hex SHA-512 over every value in document order (only the
//!   encrypted ones, after a fixed 32-byte prefix, with `mac_only_encrypted`), each as sops'
//!   `ToBytes` writes it (`True`/`False`, integers in decimal, floats shortest without
//!   exponent), comments and nulls left out; it is itself encrypted with the data key and
//!   `lastmodified` (RFC 3339) as additional data.
//!
//! [`Document::decrypt`] verifies the MAC before it returns anything. Errors name the key
//! path (`data.password`, `items[2].token`) and never contain plaintext. Input is bounded
//! ([`MAX_BYTES`], the YAML reader's depth and node limits). Comments are dropped (they are
//! not covered by the MAC); files using `*_comment_regex` rules or Shamir key groups are
//! refused as unsupported.

mod emit;
mod keys;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::aead::consts::U32;
use aes_gcm::aes::Aes256;
use aes_gcm::{AesGcm, KeyInit};
use base64::Engine;
use sha2::{Digest, Sha512};

pub use keys::Keys;

/// The largest document accepted, in bytes.
pub const MAX_BYTES: usize = 8 << 20;
/// The deepest nesting accepted.
pub const MAX_DEPTH: usize = 64;
/// The most values (nodes) a document may hold.
pub const MAX_NODES: usize = 1_000_000;

/// sops' `MACOnlyEncryptedInitialization`: SHA-256 of `sops`, hashed first when only
/// encrypted values are covered by the MAC.
const MAC_ONLY_ENCRYPTED_INIT: [u8; 32] = [
    0x8a, 0x3f, 0xd2, 0xad, 0x54, 0xce, 0x66, 0x52, 0x7b, 0x10, 0x34, 0xf3, 0xd1, 0x47, 0xbe, 0x0b,
    0x0b, 0x97, 0x5b, 0x3b, 0xf4, 0x4f, 0x72, 0xc6, 0xfd, 0xad, 0xec, 0x81, 0x76, 0xf2, 0x7d, 0x69,
];

/// A document's syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
    /// `KEY=VALUE` lines (sops' dotenv store; kustomize `envs:` files).
    Dotenv,
}

impl Format {
    /// By file name: `.yaml`/`.yml` and `.json`; `None` for anything else.
    pub fn from_path(path: &str) -> Option<Format> {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".yaml") || lower.ends_with(".yml") {
            Some(Format::Yaml)
        } else if lower.ends_with(".json") {
            Some(Format::Json)
        } else if lower.ends_with(".env") {
            Some(Format::Dotenv)
        } else {
            None
        }
    }

    /// By content, for files without a telling name: JSON when it starts with `{`, dotenv
    /// when a line starts with `sops_mac=`, else YAML.
    pub fn sniff(text: &str) -> Format {
        if text.trim_start().starts_with('{') {
            Format::Json
        } else if text.lines().any(|l| l.starts_with("sops_mac=")) {
            Format::Dotenv
        } else {
            Format::Yaml
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Yaml => "YAML",
            Format::Json => "JSON",
            Format::Dotenv => "dotenv",
        }
    }
}

/// Why a document could not be decrypted. No variant carries plaintext or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SopsError {
    #[error("the document is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("not valid {format}: {message}")]
    Syntax {
        format: &'static str,
        message: String,
    },
    #[error("not a SOPS document (no top-level `sops` map with a `mac`)")]
    NotSops,
    #[error("SOPS metadata: {0}")]
    Metadata(String),
    #[error("unsupported SOPS feature: {0}")]
    Unsupported(String),
    #[error(
        "none of the {ours} age identities given can unwrap the data key; the file is encrypted for {recipients}"
    )]
    NoMatchingKey { ours: usize, recipients: String },
    #[error("{path}: {reason}")]
    Value { path: String, reason: String },
    #[error(
        "MAC mismatch: the document was changed after it was encrypted (values, keys or SOPS metadata); refusing all of it"
    )]
    MacMismatch,
    #[error("age key text, line {line}: {reason}")]
    KeyFile { line: usize, reason: String },
    #[error("sealed data (age): {0}")]
    Seal(String),
}

/// A value of the document tree (keys in document order).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum V {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<V>),
    Map(Vec<(String, V)>),
}

/// Which values are encrypted.
#[derive(Debug, Clone)]
enum Rule {
    UnencryptedSuffix(String),
    EncryptedSuffix(String),
    UnencryptedRegex(regex::Regex),
    EncryptedRegex(regex::Regex),
}

impl Rule {
    /// sops' `shouldBeEncrypted` without the comment rules.
    fn encrypts(&self, path: &[String]) -> bool {
        match self {
            Rule::UnencryptedSuffix(s) => !path.iter().any(|k| k.ends_with(s.as_str())),
            Rule::EncryptedSuffix(s) => path.iter().any(|k| k.ends_with(s.as_str())),
            Rule::UnencryptedRegex(r) => !path.iter().any(|k| r.is_match(k)),
            Rule::EncryptedRegex(r) => path.iter().any(|k| r.is_match(k)),
        }
    }
}

#[derive(Debug, Clone)]
struct Metadata {
    /// Armored age files, each wrapping the data key for one recipient.
    age: Vec<(String, String)>,
    lastmodified: String,
    mac: String,
    rule: Rule,
    mac_only_encrypted: bool,
}

/// A parsed SOPS document, not yet decrypted.
#[derive(Debug, Clone)]
pub struct Document {
    format: Format,
    /// The documents (one for JSON), `sops` keys removed.
    docs: Vec<V>,
    meta: Metadata,
}

/// Whether `text` could hold a SOPS document: a cheap test before parsing (a line starting
/// with `sops:` in YAML, the string `"sops"` in JSON and YAML). False negatives are impossible for
/// files sops writes; false positives are settled by [`open`].
pub fn might_be_sops(text: &str, format: Format) -> bool {
    // YAML may be written in flow style (JSON is YAML): look for the JSON form there too.
    let json = text.contains("\"sops\"");
    match format {
        Format::Yaml => json || text.lines().any(|l| l.starts_with("sops:")),
        Format::Json => json,
        Format::Dotenv => text.lines().any(|l| l.starts_with("sops_mac=")),
    }
}

/// Parses `text`; `Ok(None)` when it is valid but not a SOPS document (no top-level `sops`
/// map holding a `mac`).
pub fn open(text: &str, format: Format) -> Result<Option<Document>, SopsError> {
    if text.len() > MAX_BYTES {
        return Err(SopsError::TooLarge {
            size: text.len(),
            limit: MAX_BYTES,
        });
    }
    let mut docs = match format {
        Format::Yaml => parse_yaml(text)?,
        Format::Json => vec![parse_json(text)?],
        Format::Dotenv => vec![parse_dotenv(text)?],
    };
    // The metadata is the first document's; `sops` keys are removed from every document.
    let Some(V::Map(first)) = docs.first() else {
        return Ok(None);
    };
    let Some((_, meta)) = first.iter().find(|(k, _)| k == "sops") else {
        return Ok(None);
    };
    let V::Map(meta) = meta else {
        return Ok(None);
    };
    if !meta.iter().any(|(k, _)| k == "mac") {
        return Ok(None);
    }
    let meta = metadata(meta)?;
    for (i, d) in docs.iter_mut().enumerate() {
        match d {
            V::Map(entries) => entries.retain(|(k, _)| k != "sops"),
            V::Null => *d = V::Map(Vec::new()),
            _ => {
                return Err(SopsError::Unsupported(format!(
                    "document {} is not a mapping",
                    i + 1
                )));
            }
        }
    }
    Ok(Some(Document { format, docs, meta }))
}

/// Decrypts a SOPS document into its plaintext document (same format, `sops` metadata
/// removed). Fails with [`SopsError::NotSops`] on a document without SOPS metadata.
pub fn decrypt(text: &str, format: Format, keys: &Keys) -> Result<String, SopsError> {
    open(text, format)?.ok_or(SopsError::NotSops)?.decrypt(keys)
}

impl Document {
    /// The recipients the data key is wrapped for (`age1...`).
    pub fn recipients(&self) -> Vec<&str> {
        self.meta.age.iter().map(|(r, _)| r.as_str()).collect()
    }

    /// Decrypts every value, verifies the MAC, and only then emits the plaintext document.
    pub fn decrypt(mut self, keys: &Keys) -> Result<String, SopsError> {
        let key = self.data_key(keys)?;
        let mut hash = Sha512::new();
        if self.meta.mac_only_encrypted {
            hash.update(MAC_ONLY_ENCRYPTED_INIT);
        }
        let mut walk = Walk {
            key: &key,
            rule: &self.meta.rule,
            mac_only_encrypted: self.meta.mac_only_encrypted,
            hash: &mut hash,
            path: Vec::new(),
            shown: Vec::new(),
        };
        for d in &mut self.docs {
            walk.value(d)?;
        }
        let computed = upper_hex(&hash.finalize());
        let aad = normalize_rfc3339(&self.meta.lastmodified);
        let stored = decrypt_value(&self.meta.mac, &key, aad.as_bytes())
            .map_err(|_| SopsError::MacMismatch)?;
        let stored = match stored {
            V::Str(s) => s,
            _ => return Err(SopsError::MacMismatch),
        };
        if !constant_time_eq(stored.as_bytes(), computed.as_bytes()) {
            return Err(SopsError::MacMismatch);
        }
        match self.format {
            Format::Yaml => Ok(emit::yaml_stream(&self.docs)),
            Format::Dotenv => Ok(self.docs.first().map(emit::dotenv).unwrap_or_default()),
            Format::Json => {
                let doc = self.docs.first().cloned().unwrap_or(V::Map(Vec::new()));
                emit::json(&doc).map_err(|path| SopsError::Value {
                    path,
                    reason: "a non-finite float cannot be written as JSON".into(),
                })
            }
        }
    }

    /// Unwraps the data key from the first age stanza one of `keys` opens.
    fn data_key(&self, keys: &Keys) -> Result<[u8; 32], SopsError> {
        if self.meta.age.is_empty() {
            return Err(SopsError::Metadata(
                "the data key is wrapped for no age recipient (only age is supported)".into(),
            ));
        }
        for (_, enc) in &self.meta.age {
            let reader = age::armor::ArmoredReader::new(enc.as_bytes());
            let Ok(decryptor) = age::Decryptor::new(reader) else {
                continue;
            };
            let Ok(mut plain) = decryptor.decrypt(keys.identities()) else {
                continue;
            };
            let mut buf = Vec::with_capacity(32);
            // At most one byte more than a data key: anything longer is refused.
            let mut limited = std::io::Read::take(&mut plain, 33);
            if std::io::Read::read_to_end(&mut limited, &mut buf).is_err() {
                continue;
            }
            let key: [u8; 32] = buf.as_slice().try_into().map_err(|_| {
                SopsError::Metadata(format!(
                    "the data key unwrapped by age is {} bytes, not 32",
                    buf.len()
                ))
            })?;
            return Ok(key);
        }
        Err(SopsError::NoMatchingKey {
            ours: keys.recipients().len(),
            recipients: self
                .meta
                .age
                .iter()
                .map(|(r, _)| r.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

/// One path segment for messages: a key or a list index.
enum Shown {
    Key(String),
    Index(usize),
}

fn show(path: &[Shown]) -> String {
    let mut out = String::new();
    for s in path {
        match s {
            Shown::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Shown::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    if out.is_empty() {
        out.push_str("(top level)");
    }
    out
}

struct Walk<'a> {
    key: &'a [u8; 32],
    rule: &'a Rule,
    mac_only_encrypted: bool,
    hash: &'a mut Sha512,
    /// Keys only (sops' path: list items add nothing).
    path: Vec<String>,
    shown: Vec<Shown>,
}

impl Walk<'_> {
    fn value(&mut self, v: &mut V) -> Result<(), SopsError> {
        match v {
            V::Null => Ok(()),
            V::Map(entries) => {
                for (k, child) in entries.iter_mut() {
                    self.path.push(k.clone());
                    self.shown.push(Shown::Key(k.clone()));
                    let r = self.value(child);
                    self.path.pop();
                    self.shown.pop();
                    r?;
                }
                Ok(())
            }
            V::Seq(items) => {
                for (i, child) in items.iter_mut().enumerate() {
                    self.shown.push(Shown::Index(i));
                    let r = self.value(child);
                    self.shown.pop();
                    r?;
                }
                Ok(())
            }
            leaf => self.leaf(leaf),
        }
    }

    fn leaf(&mut self, v: &mut V) -> Result<(), SopsError> {
        let encrypted = self.rule.encrypts(&self.path);
        if encrypted {
            let V::Str(text) = v else {
                return Err(SopsError::Value {
                    path: show(&self.shown),
                    reason: format!(
                        "expected an encrypted value (ENC[AES256_GCM,...]), found {}",
                        type_name(v)
                    ),
                });
            };
            if !text.is_empty() {
                let aad = format!("{}:", self.path.join(":"));
                *v = decrypt_value(text, self.key, aad.as_bytes()).map_err(|reason| {
                    SopsError::Value {
                        path: show(&self.shown),
                        reason,
                    }
                })?;
            }
        }
        if !self.mac_only_encrypted || encrypted {
            self.hash.update(mac_bytes(v));
        }
        Ok(())
    }
}

fn type_name(v: &V) -> &'static str {
    match v {
        V::Null => "null",
        V::Bool(_) => "a boolean",
        V::Int(_) => "an integer",
        V::Float(_) => "a float",
        V::Str(_) => "a string",
        V::Seq(_) => "a list",
        V::Map(_) => "a mapping",
    }
}

/// sops' `ToBytes`.
fn mac_bytes(v: &V) -> Vec<u8> {
    match v {
        V::Str(s) => s.as_bytes().to_vec(),
        V::Int(i) => i.to_string().into_bytes(),
        V::Float(f) => go_float(*f).into_bytes(),
        V::Bool(true) => b"True".to_vec(),
        V::Bool(false) => b"False".to_vec(),
        V::Null | V::Seq(_) | V::Map(_) => Vec::new(),
    }
}

/// Go's `strconv.FormatFloat(f, 'f', -1, 64)`: shortest round-trip digits, no exponent —
/// what Rust's `Display` prints for finite floats.
fn go_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{f}")
    }
}

fn upper_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Go's `time.Parse(RFC3339, s).Format(RFC3339)` for what sops writes: fractional seconds
/// dropped, everything else kept.
fn normalize_rfc3339(s: &str) -> String {
    match s.find('.') {
        Some(dot) => {
            let rest = &s[dot + 1..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            format!("{}{}", &s[..dot], &rest[digits..])
        }
        None => s.to_string(),
    }
}

/// Decrypts one `ENC[AES256_GCM,data:..,iv:..,tag:..,type:..]` value. The error is a
/// reason without the value (the caller adds the key path).
fn decrypt_value(text: &str, key: &[u8; 32], aad: &[u8]) -> Result<V, String> {
    let not_enc =
        || "not an encrypted value (ENC[AES256_GCM,data:...,iv:...,tag:...,type:...])".to_string();
    let body = text
        .strip_prefix("ENC[AES256_GCM,data:")
        .and_then(|r| r.strip_suffix(']'))
        .ok_or_else(not_enc)?;
    let (data, rest) = body.split_once(",iv:").ok_or_else(not_enc)?;
    let (iv, rest) = rest.split_once(",tag:").ok_or_else(not_enc)?;
    let (tag, ty) = rest.split_once(",type:").ok_or_else(not_enc)?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut buf = b64
        .decode(data)
        .map_err(|_| "the data is not valid base64".to_string())?;
    let iv = b64
        .decode(iv)
        .map_err(|_| "the iv is not valid base64".to_string())?;
    let tag = b64
        .decode(tag)
        .map_err(|_| "the tag is not valid base64".to_string())?;
    if tag.len() != 16 {
        return Err(format!("the tag is {} bytes, not 16", tag.len()));
    }
    let tag = aes_gcm::Tag::from_slice(&tag);
    let failed = || {
        "AES-GCM authentication failed (wrong data key, or the value was changed or moved to another key)"
            .to_string()
    };
    match iv.len() {
        32 => AesGcm::<Aes256, U32>::new_from_slice(key)
            .map_err(|_| failed())?
            .decrypt_in_place_detached(aes_gcm::Nonce::from_slice(&iv), aad, &mut buf, tag)
            .map_err(|_| failed())?,
        12 => aes_gcm::Aes256Gcm::new_from_slice(key)
            .map_err(|_| failed())?
            .decrypt_in_place_detached(aes_gcm::Nonce::from_slice(&iv), aad, &mut buf, tag)
            .map_err(|_| failed())?,
        n => return Err(format!("the iv is {n} bytes (sops writes 32)")),
    }
    let as_text = |buf: Vec<u8>| {
        String::from_utf8(buf).map_err(|_| "the decrypted value is not UTF-8".to_string())
    };
    let bad = |what: &str| format!("the decrypted value is not a valid {what}");
    Ok(match ty {
        "str" | "bytes" | "time" => V::Str(as_text(buf)?),
        "int" => V::Int(as_text(buf)?.parse::<i64>().map_err(|_| bad("int"))?),
        "float" => V::Float(as_text(buf)?.parse::<f64>().map_err(|_| bad("float"))?),
        "bool" => V::Bool(match as_text(buf)?.as_str() {
            "1" | "t" | "T" | "TRUE" | "true" | "True" => true,
            "0" | "f" | "F" | "FALSE" | "false" | "False" => false,
            _ => return Err(bad("bool")),
        }),
        "comment" => return Err("an encrypted comment stands where a value should".into()),
        other => {
            let other: String = other.chars().take(16).collect();
            return Err(format!("unknown value type {other:?}"));
        }
    })
}

fn metadata(meta: &[(String, V)]) -> Result<Metadata, SopsError> {
    let get = |k: &str| meta.iter().find(|(n, _)| n == k).map(|(_, v)| v);
    let string = |k: &str| -> Result<Option<String>, SopsError> {
        match get(k) {
            None | Some(V::Null) => Ok(None),
            Some(V::Str(s)) if s.is_empty() => Ok(None),
            Some(V::Str(s)) => Ok(Some(s.clone())),
            Some(other) => Err(SopsError::Metadata(format!(
                "sops.{k} is {}, expected a string",
                type_name(other)
            ))),
        }
    };
    let mac = string("mac")?.ok_or_else(|| SopsError::Metadata("sops.mac is empty".into()))?;
    let lastmodified = string("lastmodified")?
        .ok_or_else(|| SopsError::Metadata("sops.lastmodified is missing".into()))?;
    for k in ["unencrypted_comment_regex", "encrypted_comment_regex"] {
        if string(k)?.is_some() {
            return Err(SopsError::Unsupported(format!("sops.{k}")));
        }
    }
    let regex = |k: &str, s: String| {
        regex::RegexBuilder::new(&s)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| SopsError::Metadata(format!("sops.{k}: {e}")))
    };
    let mut rules = Vec::new();
    if let Some(s) = string("unencrypted_suffix")? {
        rules.push(Rule::UnencryptedSuffix(s));
    }
    if let Some(s) = string("encrypted_suffix")? {
        rules.push(Rule::EncryptedSuffix(s));
    }
    if let Some(s) = string("unencrypted_regex")? {
        rules.push(Rule::UnencryptedRegex(regex("unencrypted_regex", s)?));
    }
    if let Some(s) = string("encrypted_regex")? {
        rules.push(Rule::EncryptedRegex(regex("encrypted_regex", s)?));
    }
    if rules.len() > 1 {
        return Err(SopsError::Metadata(
            "more than one of unencrypted_suffix, encrypted_suffix, unencrypted_regex, encrypted_regex".into(),
        ));
    }
    let rule = rules
        .pop()
        .unwrap_or_else(|| Rule::UnencryptedSuffix("_unencrypted".into()));
    let mac_only_encrypted = match get("mac_only_encrypted") {
        None | Some(V::Null) => false,
        Some(V::Bool(b)) => *b,
        Some(V::Str(s)) if s == "true" || s == "false" => s == "true",
        Some(other) => {
            return Err(SopsError::Metadata(format!(
                "sops.mac_only_encrypted is {}, expected a boolean",
                type_name(other)
            )));
        }
    };
    let mut age = Vec::new();
    age_list(get("age"), "sops.age", &mut age)?;
    match get("key_groups") {
        None | Some(V::Null) => {}
        Some(V::Seq(groups)) if groups.len() <= 1 => {
            for g in groups {
                if let V::Map(g) = g {
                    let v = g.iter().find(|(n, _)| n == "age").map(|(_, v)| v);
                    age_list(v, "sops.key_groups[0].age", &mut age)?;
                }
            }
        }
        Some(V::Seq(_)) => {
            return Err(SopsError::Unsupported(
                "several key groups (Shamir secret sharing)".into(),
            ));
        }
        Some(other) => {
            return Err(SopsError::Metadata(format!(
                "sops.key_groups is {}, expected a list",
                type_name(other)
            )));
        }
    }
    Ok(Metadata {
        age,
        lastmodified,
        mac,
        rule,
        mac_only_encrypted,
    })
}

fn age_list(v: Option<&V>, at: &str, out: &mut Vec<(String, String)>) -> Result<(), SopsError> {
    let items = match v {
        None | Some(V::Null) => return Ok(()),
        Some(V::Seq(items)) => items,
        Some(other) => {
            return Err(SopsError::Metadata(format!(
                "{at} is {}, expected a list",
                type_name(other)
            )));
        }
    };
    for (i, item) in items.iter().enumerate() {
        let V::Map(m) = item else {
            return Err(SopsError::Metadata(format!("{at}[{i}] is not a mapping")));
        };
        let field = |k: &str| match m.iter().find(|(n, _)| n == k).map(|(_, v)| v) {
            Some(V::Str(s)) => Ok(s.clone()),
            _ => Err(SopsError::Metadata(format!("{at}[{i}].{k} is missing"))),
        };
        out.push((field("recipient")?, field("enc")?));
    }
    Ok(())
}

fn parse_yaml(text: &str) -> Result<Vec<V>, SopsError> {
    let limits = flotilla_spec::yaml::Limits {
        max_bytes: MAX_BYTES,
        max_depth: MAX_DEPTH,
        max_nodes: MAX_NODES,
        ..flotilla_spec::yaml::Limits::default()
    };
    let docs = flotilla_spec::yaml::parse_all(text, &limits).map_err(|e| SopsError::Syntax {
        format: Format::Yaml.name(),
        message: e.to_string(),
    })?;
    Ok(docs.iter().map(from_yaml).collect())
}

fn from_yaml(n: &flotilla_spec::yaml::Node) -> V {
    use flotilla_spec::yaml::Value as Y;
    match &n.value {
        Y::Null => V::Null,
        Y::Bool(b) => V::Bool(*b),
        Y::Int(i) => V::Int(*i),
        Y::Float(f) => V::Float(*f),
        Y::Str(s) => V::Str(s.clone()),
        Y::Seq(items) => V::Seq(items.iter().map(|n| from_yaml(n)).collect()),
        Y::Map(entries) => V::Map(
            entries
                .iter()
                .map(|(k, v)| (k.name.clone(), from_yaml(v)))
                .collect(),
        ),
    }
}

/// sops' dotenv store: `#` lines are comments, every other non-empty line is `KEY=VALUE`
/// (`\n` in a value is a newline). Keys starting with `sops_` are the flattened metadata
/// (`sops_age__list_0__map_enc`), gathered here into a `sops` map like the other formats'.
fn parse_dotenv(text: &str) -> Result<V, SopsError> {
    let mut entries = Vec::new();
    let mut meta = V::Map(Vec::new());
    for (i, line) in text.split('\n').enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if entries.len() >= MAX_NODES {
            return Err(SopsError::Syntax {
                format: Format::Dotenv.name(),
                message: format!("more than {MAX_NODES} values"),
            });
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(SopsError::Syntax {
                format: Format::Dotenv.name(),
                message: format!("line {}: not KEY=VALUE", i + 1),
            });
        };
        let value = V::Str(value.replace("\\n", "\n"));
        match key.strip_prefix("sops_") {
            Some(flat) => place(&mut meta, &tokenize(flat), value).map_err(|reason| {
                SopsError::Metadata(format!("line {}: {key}: {reason}", i + 1))
            })?,
            None => entries.push((key.to_string(), value)),
        }
    }
    if meta != V::Map(Vec::new()) {
        entries.push(("sops".into(), meta));
    }
    Ok(V::Map(entries))
}

enum Token {
    Key(String),
    Index(usize),
}

/// sops' flattened path: `a__map_b__list_0` is a → b → [0].
fn tokenize(path: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut rest = path;
    let mut current = Token::Key(String::new());
    loop {
        let map = rest.find("__map_");
        let list = rest.find("__list_");
        let (at, next, skip) = match (map, list) {
            (Some(m), Some(l)) if l < m => (l, false, "__list_".len()),
            (Some(m), _) => (m, true, "__map_".len()),
            (None, Some(l)) => (l, false, "__list_".len()),
            (None, None) => (rest.len(), true, 0),
        };
        let text = &rest[..at];
        tokens.push(match current {
            Token::Key(_) => Token::Key(text.to_string()),
            // A bad index lands past the limit and is refused by `place`.
            Token::Index(_) => Token::Index(text.parse().unwrap_or(usize::MAX)),
        });
        if at == rest.len() {
            return tokens;
        }
        current = if next {
            Token::Key(String::new())
        } else {
            Token::Index(0)
        };
        rest = &rest[at + skip..];
    }
}

fn place(root: &mut V, tokens: &[Token], value: V) -> Result<(), String> {
    let Some((first, rest)) = tokens.split_first() else {
        *root = value;
        return Ok(());
    };
    match first {
        Token::Key(k) => {
            if *root == V::Null {
                *root = V::Map(Vec::new());
            }
            let V::Map(entries) = root else {
                return Err("a list and a map at the same place".into());
            };
            let i = match entries.iter().position(|(n, _)| n == k) {
                Some(i) => i,
                None => {
                    entries.push((k.clone(), V::Null));
                    entries.len() - 1
                }
            };
            place(&mut entries[i].1, rest, value)
        }
        Token::Index(i) => {
            if *i >= 1000 {
                return Err("list index over 1000".into());
            }
            if *root == V::Null {
                *root = V::Seq(Vec::new());
            }
            let V::Seq(items) = root else {
                return Err("a list and a map at the same place".into());
            };
            while items.len() <= *i {
                items.push(V::Null);
            }
            place(&mut items[*i], rest, value)
        }
    }
}

fn parse_json(text: &str) -> Result<V, SopsError> {
    // serde_json refuses nesting deeper than 128 levels itself.
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| SopsError::Syntax {
        format: Format::Json.name(),
        message: format!(
            "line {} column {}: {}",
            e.line(),
            e.column(),
            e.classify_name()
        ),
    })?;
    let mut nodes = 0usize;
    from_json(&v, 0, &mut nodes)
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected data",
            serde_json::error::Category::Eof => "unexpected end of input",
        }
    }
}

fn from_json(v: &serde_json::Value, depth: usize, nodes: &mut usize) -> Result<V, SopsError> {
    *nodes += 1;
    if depth > MAX_DEPTH {
        return Err(SopsError::Syntax {
            format: Format::Json.name(),
            message: format!("nesting deeper than {MAX_DEPTH} levels"),
        });
    }
    if *nodes > MAX_NODES {
        return Err(SopsError::Syntax {
            format: Format::Json.name(),
            message: format!("more than {MAX_NODES} values"),
        });
    }
    Ok(match v {
        serde_json::Value::Null => V::Null,
        serde_json::Value::Bool(b) => V::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => V::Int(i),
            None => V::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => V::Str(s.clone()),
        serde_json::Value::Array(items) => V::Seq(
            items
                .iter()
                .map(|i| from_json(i, depth + 1, nodes))
                .collect::<Result<_, _>>()?,
        ),
        serde_json::Value::Object(m) => V::Map(
            m.iter()
                .map(|(k, v)| Ok((k.clone(), from_json(v, depth + 1, nodes)?)))
                .collect::<Result<_, SopsError>>()?,
        ),
    })
}

#[cfg(test)]
mod tests;
