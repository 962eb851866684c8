//! `POST /hooks/git`: push notifications from Git hosts. Three styles are accepted, each
//! authenticated with the daemon's webhook secret and compared in constant time:
//!
//! - GitHub (and Gitea, Forgejo): `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`,
//!   event in `X-GitHub-Event` (`push`; `ping` is acknowledged).
//! - GitLab: `X-Gitlab-Token: <secret>`, event in `X-Gitlab-Event` (`Push Hook`).
//! - Generic: `X-Flotilla-Signature: sha256=<hex HMAC-SHA256 of the body>`; the body may name
//!   the pushed ref as `{"ref": "refs/heads/main"}`, else any push counts.
//!
//! Pure: headers and body in, a verdict out. The HTTP layer limits the body size.

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bodies above this size are refused (413) before they are read completely.
pub const MAX_BODY: usize = 1024 * 1024;

/// Which sender a request claims to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    GitHub,
    GitLab,
    Generic,
}

impl Style {
    pub fn label(self) -> &'static str {
        match self {
            Style::GitHub => "github",
            Style::GitLab => "gitlab",
            Style::Generic => "generic",
        }
    }
}

/// The shared secret. Never printed.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// From the contents of a secret file: surrounding whitespace (a trailing newline) is
    /// not part of the secret. `None` when nothing is left.
    pub fn from_file_contents(bytes: &[u8]) -> Option<Secret> {
        let text = bytes.trim_ascii();
        (!text.is_empty()).then(|| Secret(text.to_vec()))
    }

    /// Whether `given` is the secret, compared in constant time.
    pub fn matches(&self, given: &[u8]) -> bool {
        constant_time_eq(given, &self.0)
    }

    /// HMAC-SHA256 of `body`, hex: what a sender puts after `sha256=`.
    pub fn sign(&self, body: &[u8]) -> String {
        let mut mac = hmac_for(&self.0);
        mac.update(body);
        hex(&mac.finalize().into_bytes())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

fn hmac_for(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length: this cannot fail.
    match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Equality that takes the same time wherever the inputs differ (the length is not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Authentic push of the tracked ref (or of an unnamed ref): fetch now.
    Fetch {
        style: Style,
        git_ref: Option<String>,
    },
    /// Authentic, but nothing to do (another ref, another event, a ping).
    Ignore { style: Style, reason: String },
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No signature or token header at all.
    #[error("no X-Hub-Signature-256, X-Gitlab-Token or X-Flotilla-Signature header")]
    Unsigned,
    #[error("{} signature does not match", .0.label())]
    BadSignature(Style),
    #[error("{} request: {}", .0.label(), .1)]
    Malformed(Style, String),
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn check_hmac(style: Style, value: &str, body: &[u8], secret: &Secret) -> Result<(), Refusal> {
    let given = value
        .trim()
        .strip_prefix("sha256=")
        .and_then(unhex)
        .ok_or(Refusal::BadSignature(style))?;
    let mut mac = hmac_for(&secret.0);
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&given)
        .map_err(|_| Refusal::BadSignature(style))
}

fn pushed_ref(style: Style, body: &[u8]) -> Result<Option<String>, Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Refusal::Malformed(style, format!("body is not JSON: {e}")))?;
    Ok(v.get("ref").and_then(|r| r.as_str()).map(str::to_string))
}

/// Whether a pushed ref is the tracked one. `tracked` is what the daemon follows: a branch
/// name (`main`), a full ref (`refs/heads/main`), a tag name, or `HEAD` (any push counts,
/// since the remote's default branch is not known here).
pub fn ref_matches(tracked: &str, pushed: &str) -> bool {
    if tracked == "HEAD" {
        return true;
    }
    if tracked.starts_with("refs/") {
        return pushed == tracked;
    }
    pushed == format!("refs/heads/{tracked}") || pushed == format!("refs/tags/{tracked}")
}

/// Authenticates a request and decides what it asks for.
pub fn judge(
    headers: &HeaderMap,
    body: &[u8],
    secret: &Secret,
    tracked: &str,
) -> Result<Verdict, Refusal> {
    let (style, event) = if let Some(sig) = header(headers, "x-hub-signature-256") {
        check_hmac(Style::GitHub, sig, body, secret)?;
        (
            Style::GitHub,
            header(headers, "x-github-event").unwrap_or("push"),
        )
    } else if let Some(token) = header(headers, "x-gitlab-token") {
        if !constant_time_eq(token.as_bytes(), &secret.0) {
            return Err(Refusal::BadSignature(Style::GitLab));
        }
        (
            Style::GitLab,
            header(headers, "x-gitlab-event").unwrap_or("Push Hook"),
        )
    } else if let Some(sig) = header(headers, "x-flotilla-signature") {
        check_hmac(Style::Generic, sig, body, secret)?;
        (Style::Generic, "push")
    } else {
        return Err(Refusal::Unsigned);
    };
    let is_push = match style {
        Style::GitHub => event == "push",
        Style::GitLab => event == "Push Hook" || event == "Tag Push Hook",
        Style::Generic => true,
    };
    if !is_push {
        return Ok(Verdict::Ignore {
            style,
            reason: format!("event {event:?} is not a push"),
        });
    }
    let git_ref = pushed_ref(style, body)?;
    match &git_ref {
        Some(r) if !ref_matches(tracked, r) => Ok(Verdict::Ignore {
            style,
            reason: format!("push to {r}; tracking {tracked}"),
        }),
        _ => Ok(Verdict::Fetch { style, git_ref }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::from_file_contents(b"s3cret\n").expect("secret")
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header value"));
        }
        h
    }

    const PUSH_MAIN: &[u8] = br#"{"ref": "refs/heads/main", "after": "abc"}"#;

    #[test]
    fn github_signature_is_checked() {
        let s = secret();
        let good = format!("sha256={}", s.sign(PUSH_MAIN));
        let h = headers(&[("x-hub-signature-256", &good), ("x-github-event", "push")]);
        assert_eq!(
            judge(&h, PUSH_MAIN, &s, "main"),
            Ok(Verdict::Fetch {
                style: Style::GitHub,
                git_ref: Some("refs/heads/main".into())
            })
        );
        // One byte of the body changed: the signature no longer matches.
        let tampered = br#"{"ref": "refs/heads/main", "after": "abd"}"#;
        assert_eq!(
            judge(&h, tampered, &s, "main"),
            Err(Refusal::BadSignature(Style::GitHub))
        );
        let h = headers(&[("x-hub-signature-256", "sha256=zz")]);
        assert_eq!(
            judge(&h, PUSH_MAIN, &s, "main"),
            Err(Refusal::BadSignature(Style::GitHub))
        );
    }

    #[test]
    fn gitlab_token_is_checked() {
        let s = secret();
        let h = headers(&[
            ("x-gitlab-token", "s3cret"),
            ("x-gitlab-event", "Push Hook"),
        ]);
        assert!(matches!(
            judge(&h, PUSH_MAIN, &s, "main"),
            Ok(Verdict::Fetch {
                style: Style::GitLab,
                ..
            })
        ));
        let h = headers(&[("x-gitlab-token", "s3creT")]);
        assert_eq!(
            judge(&h, PUSH_MAIN, &s, "main"),
            Err(Refusal::BadSignature(Style::GitLab))
        );
    }

    #[test]
    fn generic_signature_and_refs() {
        let s = secret();
        let sig = format!("sha256={}", s.sign(b""));
        let h = headers(&[("x-flotilla-signature", &sig)]);
        assert_eq!(
            judge(&h, b"", &s, "main"),
            Ok(Verdict::Fetch {
                style: Style::Generic,
                git_ref: None
            })
        );
        let other = br#"{"ref": "refs/heads/feature"}"#;
        let sig = format!("sha256={}", s.sign(other));
        let h = headers(&[("x-flotilla-signature", &sig)]);
        assert!(matches!(
            judge(&h, other, &s, "main"),
            Ok(Verdict::Ignore { .. })
        ));
        assert_eq!(
            judge(&HeaderMap::new(), b"", &s, "main"),
            Err(Refusal::Unsigned)
        );
    }

    #[test]
    fn tracked_refs() {
        assert!(ref_matches("main", "refs/heads/main"));
        assert!(ref_matches("v1", "refs/tags/v1"));
        assert!(!ref_matches("main", "refs/heads/main2"));
        assert!(ref_matches("refs/heads/x", "refs/heads/x"));
        assert!(!ref_matches("refs/heads/x", "refs/heads/y"));
        assert!(ref_matches("HEAD", "refs/heads/anything"));
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert_eq!(format!("{:?}", secret()), "Secret(<redacted>)");
    }
}
