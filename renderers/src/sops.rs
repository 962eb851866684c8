//! SOPS-encrypted files, decrypted as the renderers read them.
//!
//! [`Decrypting`] wraps the repository view a renderer reads through: a file that is a SOPS
//! document (YAML or JSON whose top-level `sops` map holds a `mac`, or dotenv with `sops_mac=`) is returned decrypted —
//! MAC verified, `sops` metadata removed — so plain YAML bundles, kustomize inputs (resources,
//! patches, secretGenerator `files:`/`envs:`) and Jsonnet imports all see plaintext. Without
//! keys, or when decryption fails, the read fails with the file and the key path, which fails
//! the render of that (placement, bundle, cluster) like any unreadable file.
//!
//! Decrypted text exists only in memory: the render cache ([`crate::cache`]) digests what the
//! repository returned (the *encrypted* bytes, recorded below this wrapper) and keeps rendered
//! results in memory only; nothing here writes anywhere or logs a value.

use std::cell::RefCell;
use std::collections::BTreeSet;

pub use flotilla_sops::Keys;

use flotilla_sops::Format;
use flotilla_spec::types::RepoPath;
use flotilla_spec::{PathKind, RepoError, RepoFiles};

/// The annotation on objects read from a decrypted file: review diffs, drift reports and
/// `flotilla render` mask their `data`/`stringData`/`binaryData` values like a Secret's.
pub const ANNOTATION_DECRYPTED: &str = "flotilla.dev/sops";

/// Annotates ([`ANNOTATION_DECRYPTED`]: `decrypted`) every object whose origin is one of
/// the `decrypted` files.
pub fn mark(objects: &mut [crate::Object], decrypted: &BTreeSet<String>) {
    if decrypted.is_empty() {
        return;
    }
    for o in objects {
        let file = o.origin.split(':').next().unwrap_or("");
        if !decrypted.contains(file) {
            continue;
        }
        let Some(md) = o.value.get_mut("metadata").and_then(|m| m.as_object_mut()) else {
            continue;
        };
        let annotations = md
            .entry("annotations")
            .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
        if let Some(a) = annotations.as_object_mut() {
            a.insert(ANNOTATION_DECRYPTED.into(), "decrypted".into());
        }
    }
}

/// Reads through `inner`, decrypting SOPS documents with `keys`.
pub struct Decrypting<'a> {
    pub inner: &'a dyn RepoFiles,
    pub keys: Option<&'a Keys>,
    /// The files that were decrypted (repository paths).
    pub decrypted: RefCell<BTreeSet<String>>,
}

impl<'a> Decrypting<'a> {
    pub fn new(inner: &'a dyn RepoFiles, keys: Option<&'a Keys>) -> Self {
        Decrypting {
            inner,
            keys,
            decrypted: RefCell::new(BTreeSet::new()),
        }
    }
}

/// The plaintext of `bytes` when they are a SOPS document, `None` when they are not.
pub fn decrypt_file(
    path: &str,
    bytes: &[u8],
    keys: Option<&Keys>,
) -> Result<Option<Vec<u8>>, RepoError> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Ok(None);
    };
    let format = Format::from_path(path).unwrap_or_else(|| Format::sniff(text));
    // Encrypted values without metadata to check them against (a `sops` block deleted, a
    // dotenv file named .yaml) are refused: ciphertext must never reach a cluster as values.
    let stray = || {
        if text.contains("ENC[AES256_GCM,data:") {
            Err(RepoError::Io {
                path: path.to_string(),
                message: if text.lines().any(|l| l.starts_with("sops_mac=ENC[")) {
                    "is a SOPS dotenv file but its name says otherwise; name it *.env".into()
                } else {
                    "holds SOPS-encrypted values (ENC[AES256_GCM,...]) but no SOPS metadata (a top-level `sops` map with a `mac`)".into()
                },
            })
        } else {
            Ok(None)
        }
    };
    if !flotilla_sops::might_be_sops(text, format) {
        return stray();
    }
    let fail = |e: flotilla_sops::SopsError| RepoError::Io {
        path: path.to_string(),
        message: format!("SOPS: {e}"),
    };
    let doc = match flotilla_sops::open(text, format) {
        Ok(Some(doc)) => doc,
        Ok(None) => return stray(),
        // A syntax error is the renderer's to report (with its position) — unless the text
        // holds encrypted values, which must never reach a cluster as they are.
        Err(flotilla_sops::SopsError::Syntax { .. }) if !text.contains("ENC[AES256_GCM,") => {
            return Ok(None);
        }
        Err(e) => return Err(fail(e)),
    };
    let Some(keys) = keys else {
        return Err(RepoError::Io {
            path: path.to_string(),
            message: format!(
                "is SOPS-encrypted (for {}) and no age key was given (--sops-age-key-file, SOPS_AGE_KEY_FILE or SOPS_AGE_KEY)",
                doc.recipients().join(", ")
            ),
        });
    };
    doc.decrypt(keys)
        .map(|t| Some(t.into_bytes()))
        .map_err(fail)
}

impl RepoFiles for Decrypting<'_> {
    fn kind(&self, path: &RepoPath) -> PathKind {
        self.inner.kind(path)
    }

    fn read(&self, path: &RepoPath) -> Result<Vec<u8>, RepoError> {
        let bytes = self.inner.read(path)?;
        match decrypt_file(path.as_str(), &bytes, self.keys)? {
            Some(plain) => {
                self.decrypted.borrow_mut().insert(path.to_string());
                Ok(plain)
            }
            None => Ok(bytes),
        }
    }

    fn list(&self, dir: &RepoPath) -> Result<Vec<String>, RepoError> {
        self.inner.list(dir)
    }

    fn canonical(&self, path: &RepoPath) -> Option<String> {
        self.inner.canonical(path)
    }
}
