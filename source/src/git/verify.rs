//! Signed commits: the signature in a commit's `gpgsig` header checked against trust anchors
//! that the operator configured (never the repository being verified).
//!
//! - SSH signatures (git's `gpg.format ssh`): an armored `SSHSIG` block, namespace `git`,
//!   checked against an allowed-signers file in ssh-keygen's format (`ALLOWED SIGNERS` in
//!   ssh-keygen(1)): `principals [options] keytype base64 [comment]`, options `namespaces=`,
//!   `valid-after=`, `valid-before=`; `cert-authority` is refused when the file is loaded.
//! - OpenPGP signatures: a detached signature packet checked against an armored keyring.
//!
//! The signed payload is the commit object without its signature headers, exactly as git's
//! `parse_buffer_signed_by_header` cuts it.

use std::path::Path;

use gix::ObjectId;
use ssh_key::{HashAlg, PublicKey, SshSig};

/// The namespace git signs commits and tags with (`ssh-keygen -Y sign -n git`).
pub const GIT_NAMESPACE: &str = "git";

/// Largest allowed-signers or keyring file read.
const MAX_TRUST_FILE_BYTES: u64 = 16 << 20;

/// Largest commit object checked (a commit is its headers and message).
const MAX_COMMIT_BYTES: u64 = 4 << 20;

/// A trust file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("{file}: {message}")]
    File { file: String, message: String },
    #[error("{file}:{line}: {message}")]
    Line {
        file: String,
        line: usize,
        message: String,
    },
}

/// One line of an allowed-signers file.
#[derive(Debug, Clone)]
pub struct AllowedSigner {
    /// Line number in its file (from 1).
    pub line: usize,
    /// The principals as written (comma-separated patterns).
    pub principals: String,
    /// `namespaces="..."`: patterns the signature's namespace must match.
    pub namespaces: Option<String>,
    /// `valid-after`, seconds since the epoch.
    pub valid_after: Option<i64>,
    /// `valid-before`, seconds since the epoch.
    pub valid_before: Option<i64>,
    pub key: PublicKey,
}

/// Who made a good signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// `ssh` or `openpgp`.
    pub kind: &'static str,
    /// `SHA256:...` (SSH) or the key's fingerprint in upper-case hex (OpenPGP).
    pub key: String,
    /// The allowed-signers principals, or the key's first user id.
    pub identity: String,
}

impl std::fmt::Display for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.kind == "ssh" { "SSH" } else { "OpenPGP" };
        if self.identity.is_empty() {
            write!(f, "{kind} key {}", self.key)
        } else {
            write!(f, "{kind} key {} ({})", self.key, self.identity)
        }
    }
}

/// Why a commit is not deployed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("commit {commit}: {reason}")]
pub struct Unverified {
    pub commit: String,
    /// The key (and principal or user id, when known) the signature names.
    pub signer: Option<String>,
    /// What is wrong, signer included, in words.
    pub reason: String,
}

/// The trust anchors: an allowed-signers file and/or an OpenPGP keyring.
#[derive(Default)]
pub struct Trust {
    ssh: Vec<AllowedSigner>,
    ssh_file: Option<String>,
    pgp: Vec<pgp::composed::SignedPublicKey>,
    pgp_file: Option<String>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("ssh_signers", &self.ssh.len())
            .field("ssh_file", &self.ssh_file)
            .field("openpgp_keys", &self.pgp.len())
            .field("openpgp_file", &self.pgp_file)
            .finish()
    }
}

fn read_bounded(path: &Path) -> Result<String, TrustError> {
    let file = path.display().to_string();
    let err = |message: String| TrustError::File {
        file: file.clone(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.len() > MAX_TRUST_FILE_BYTES {
        return Err(err(format!(
            "{} bytes, more than the limit of {MAX_TRUST_FILE_BYTES}",
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    String::from_utf8(bytes).map_err(|_| err("not UTF-8 text".into()))
}

impl Trust {
    pub fn new() -> Trust {
        Trust::default()
    }

    /// Adds the signers of an allowed-signers file (ssh-keygen's format).
    pub fn load_allowed_signers(&mut self, path: &Path) -> Result<usize, TrustError> {
        let text = read_bounded(path)?;
        let file = path.display().to_string();
        let signers = parse_allowed_signers(&text, &file)?;
        if signers.is_empty() {
            return Err(TrustError::File {
                file,
                message: "no signers in the file: every commit would be rejected".into(),
            });
        }
        let n = signers.len();
        self.ssh.extend(signers);
        self.ssh_file = Some(file);
        Ok(n)
    }

    /// Adds the public keys of an armored OpenPGP keyring (`gpg --export --armor`; several
    /// blocks may follow each other). Each key's self-signatures are checked.
    pub fn load_openpgp_keys(&mut self, path: &Path) -> Result<usize, TrustError> {
        let text = read_bounded(path)?;
        let file = path.display().to_string();
        let keys = parse_openpgp_keys(&text, &file)?;
        let n = keys.len();
        self.pgp.extend(keys);
        self.pgp_file = Some(file);
        Ok(n)
    }

    /// Whether no key at all is trusted.
    pub fn is_empty(&self) -> bool {
        self.ssh.is_empty() && self.pgp.is_empty()
    }

    /// Checks the signature of the commit a snapshot shows.
    pub fn verify_snapshot(&self, snapshot: &super::Snapshot) -> Result<Signer, Unverified> {
        self.verify_commit(snapshot.repo(), snapshot.commit())
    }

    /// Checks the signature of `commit` in `repo`.
    pub fn verify_commit(
        &self,
        repo: &gix::Repository,
        commit: ObjectId,
    ) -> Result<Signer, Unverified> {
        let id = commit.to_string();
        let fail = |reason: String| Unverified {
            commit: id.clone(),
            signer: None,
            reason,
        };
        let header = repo
            .find_header(commit)
            .map_err(|e| fail(format!("cannot read the commit: {e}")))?;
        if header.size() > MAX_COMMIT_BYTES {
            return Err(fail(format!(
                "the commit object is {} bytes, more than the limit of {MAX_COMMIT_BYTES}",
                header.size()
            )));
        }
        let object = repo
            .find_object(commit)
            .map_err(|e| fail(format!("cannot read the commit: {e}")))?;
        if object.kind != gix::object::Kind::Commit {
            return Err(fail(format!("{} is a {}, not a commit", id, object.kind)));
        }
        self.verify_raw(&id, &object.data)
    }

    /// Checks the signature of a raw commit object (`git cat-file commit ID`).
    pub fn verify_raw(&self, commit: &str, raw: &[u8]) -> Result<Signer, Unverified> {
        let fail = |signer: Option<String>, reason: String| Unverified {
            commit: commit.to_string(),
            signer,
            reason,
        };
        let Some(split) = split_signed(raw) else {
            return Err(fail(None, "the commit is not signed".into()));
        };
        let Ok(signature) = std::str::from_utf8(&split.signature) else {
            return Err(fail(None, "the commit's signature is not text".into()));
        };
        let time = committer_time(&split.payload);
        if signature.starts_with("-----BEGIN SSH SIGNATURE-----") {
            self.verify_ssh(signature, &split.payload, time)
                .map_err(|(signer, reason)| fail(signer, reason))
        } else if signature.starts_with("-----BEGIN PGP SIGNATURE-----") {
            self.verify_pgp(signature, &split.payload)
                .map_err(|(signer, reason)| fail(signer, reason))
        } else if signature.starts_with("-----BEGIN SIGNED MESSAGE-----") {
            Err(fail(
                None,
                "the commit has an X.509 (gpgsm) signature; only SSH and OpenPGP signatures are verified".into(),
            ))
        } else {
            Err(fail(
                None,
                "the commit's signature is in no known format (not SSH, not OpenPGP)".into(),
            ))
        }
    }

    fn verify_ssh(
        &self,
        armored: &str,
        payload: &[u8],
        time: Option<i64>,
    ) -> Result<Signer, (Option<String>, String)> {
        let sig = SshSig::from_pem(armored)
            .map_err(|e| (None, format!("the SSH signature cannot be read: {e}")))?;
        let fingerprint = sig.public_key().fingerprint(HashAlg::Sha256).to_string();
        let key_only = format!("SSH key {fingerprint}");
        let Some(file) = &self.ssh_file else {
            return Err((
                Some(key_only.clone()),
                format!("signed by {key_only}, but no SSH signers are trusted (--trusted-signers)"),
            ));
        };
        let matching: Vec<&AllowedSigner> = self
            .ssh
            .iter()
            .filter(|s| s.key.key_data() == sig.public_key())
            .collect();
        if matching.is_empty() {
            return Err((
                Some(key_only.clone()),
                format!("signed by {key_only}, which is not in the trusted signers ({file})"),
            ));
        }
        let signer = |s: &AllowedSigner| Signer {
            kind: "ssh",
            key: fingerprint.clone(),
            identity: s.principals.clone(),
        };
        // The signature itself (its namespace, then the cryptography) is checked before the
        // options of the lines naming the key: a forged signature is reported as forged,
        // whatever those lines allow.
        let named = signer(matching[0]);
        if sig.namespace() != GIT_NAMESPACE {
            return Err((
                Some(named.to_string()),
                format!(
                    "bad signature by {named}: made for namespace \"{}\", git signs with \"{GIT_NAMESPACE}\"",
                    sig.namespace()
                ),
            ));
        }
        if let Err(e) = matching[0].key.verify(GIT_NAMESPACE, payload, &sig) {
            return Err((
                Some(named.to_string()),
                format!(
                    "bad signature by {named}: {e} (the commit or its signature was changed after signing)"
                ),
            ));
        }
        let mut refusals = Vec::new();
        for s in matching {
            if let Some(ns) = &s.namespaces
                && !match_pattern_list(GIT_NAMESPACE, ns)
            {
                refusals.push(format!(
                    "{file}:{}: namespaces=\"{ns}\" does not allow \"{GIT_NAMESPACE}\"",
                    s.line
                ));
                continue;
            }
            if let (Some(after), Some(t)) = (s.valid_after, time)
                && t < after
            {
                refusals.push(format!(
                    "{file}:{}: the key is valid only after {} (valid-after) and the commit was made at {}",
                    s.line,
                    format_time(after),
                    format_time(t)
                ));
                continue;
            }
            if let (Some(before), Some(t)) = (s.valid_before, time)
                && t > before
            {
                refusals.push(format!(
                    "{file}:{}: the key expired at {} (valid-before) and the commit was made at {}",
                    s.line,
                    format_time(before),
                    format_time(t)
                ));
                continue;
            }
            if (s.valid_after.is_some() || s.valid_before.is_some()) && time.is_none() {
                refusals.push(format!(
                    "{file}:{}: the key has a validity period and the commit has no committer time",
                    s.line
                ));
                continue;
            }
            return Ok(signer(s));
        }
        Err((
            Some(named.to_string()),
            format!(
                "signed by {named}, which the trusted signers do not allow here: {}",
                refusals.join("; ")
            ),
        ))
    }

    fn verify_pgp(
        &self,
        armored: &str,
        payload: &[u8],
    ) -> Result<Signer, (Option<String>, String)> {
        use pgp::composed::{Deserializable, DetachedSignature};
        use pgp::types::KeyDetails;

        let (sig, _) = DetachedSignature::from_string(armored)
            .map_err(|e| (None, format!("the OpenPGP signature cannot be read: {e}")))?;
        let fingerprints: Vec<String> = sig
            .signature
            .issuer_fingerprint()
            .iter()
            .map(|f| format!("{f:X}"))
            .collect();
        let key_ids: Vec<String> = sig
            .signature
            .issuer_key_id()
            .iter()
            .map(|k| hex_upper(k.as_ref()))
            .collect();
        let named_key = fingerprints
            .first()
            .or(key_ids.first())
            .cloned()
            .unwrap_or_else(|| "(no issuer)".into());
        let key_only = format!("OpenPGP key {named_key}");
        let Some(file) = &self.pgp_file else {
            return Err((
                Some(key_only.clone()),
                format!("signed by {key_only}, but no OpenPGP keys are trusted (--trusted-keys)"),
            ));
        };
        let issued_by = |k: &dyn KeyDetails| {
            let fp = format!("{:X}", k.fingerprint());
            let id = hex_upper(k.legacy_key_id().as_ref());
            fingerprints.contains(&fp) || (fingerprints.is_empty() && key_ids.contains(&id))
        };
        for key in &self.pgp {
            let identity = key
                .details
                .users
                .first()
                .map(|u| String::from_utf8_lossy(u.id.id()).into_owned())
                .unwrap_or_default();
            let primary = format!("{:X}", key.primary_key.fingerprint());
            let signer = Signer {
                kind: "openpgp",
                key: primary.clone(),
                identity,
            };
            let result: Option<Result<(), String>> = if issued_by(&key.primary_key) {
                Some(
                    sig.verify(&key.primary_key, payload)
                        .map_err(|e| e.to_string()),
                )
            } else {
                key.public_subkeys
                    .iter()
                    .find(|s| issued_by(&s.key))
                    .map(|s| {
                        if s.signatures.iter().any(|b| b.key_flags().sign()) {
                            sig.verify(&s.key, payload).map_err(|e| e.to_string())
                        } else {
                            Err(format!(
                                "subkey {:X} is not bound for signing",
                                s.key.fingerprint()
                            ))
                        }
                    })
            };
            match result {
                None => continue,
                Some(Ok(())) => return Ok(signer),
                Some(Err(e)) => {
                    return Err((
                        Some(signer.to_string()),
                        format!(
                            "bad signature by {signer}: {e} (the commit or its signature was changed after signing)"
                        ),
                    ));
                }
            }
        }
        Err((
            Some(key_only.clone()),
            format!("signed by {key_only}, which is not in the trusted keys ({file})"),
        ))
    }
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// A commit cut into what was signed and the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedParts {
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Splits a raw commit into the payload (every line but the signature headers) and the
/// `gpgsig` signature, as git does for a SHA-1 repository: continuation lines (starting with
/// a space) belong to the header above; other `gpgsig*` headers (`gpgsig-sha256`) are
/// dropped from the payload too; the headers end at the first empty line. `None` when the
/// commit has no `gpgsig` header.
pub fn split_signed(raw: &[u8]) -> Option<SignedParts> {
    const HEADER: &[u8] = b"gpgsig";
    let mut payload = Vec::with_capacity(raw.len());
    let mut signature = Vec::new();
    let mut in_signature = false;
    let mut other_signature = false;
    let mut saw = false;
    let mut pos = 0;
    while pos < raw.len() {
        let line_end = raw[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(raw.len(), |i| pos + i + 1);
        let line = &raw[pos..line_end];
        let mut sig: Option<&[u8]> = None;
        if in_signature && line.first() == Some(&b' ') {
            sig = Some(&line[1..]);
        } else if line.starts_with(HEADER) && line.get(HEADER.len()) == Some(&b' ') {
            sig = Some(&line[HEADER.len() + 1..]);
            other_signature = false;
        } else if line.starts_with(HEADER) {
            other_signature = true;
        } else if other_signature && line.first() != Some(&b' ') {
            other_signature = false;
        }
        if let Some(s) = sig {
            signature.extend_from_slice(s);
            saw = true;
            in_signature = true;
            pos = line_end;
        } else {
            let next = if line.first() == Some(&b'\n') {
                // The message: the rest of the object, whole.
                raw.len()
            } else {
                line_end
            };
            if !other_signature {
                payload.extend_from_slice(&raw[pos..next]);
            }
            in_signature = false;
            pos = next;
        }
    }
    saw.then_some(SignedParts { payload, signature })
}

/// The committer's time (seconds since the epoch) from a commit's headers.
fn committer_time(payload: &[u8]) -> Option<i64> {
    for line in payload.split(|&b| b == b'\n') {
        if line.is_empty() {
            return None;
        }
        if let Some(rest) = line.strip_prefix(b"committer ") {
            let text = std::str::from_utf8(rest).ok()?;
            let after_email = &text[text.rfind('>')? + 1..];
            return after_email.split_whitespace().next()?.parse().ok();
        }
    }
    None
}

/// `ssh-keygen`'s `match_pattern_list`: comma-separated patterns with `*` and `?`; a pattern
/// starting with `!` that matches refuses outright.
pub fn match_pattern_list(s: &str, list: &str) -> bool {
    let mut matched = false;
    for pattern in list.split(',') {
        let (negated, p) = match pattern.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pattern),
        };
        if glob(s.as_bytes(), p.as_bytes()) {
            if negated {
                return false;
            }
            matched = true;
        }
    }
    matched
}

fn glob(s: &[u8], p: &[u8]) -> bool {
    // Iterative wildcard match with one backtrack point (linear-ish, no recursion).
    let (mut si, mut pi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            si += 1;
            pi += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// Parses an allowed-signers file. Every line that is not blank or a comment must be valid:
/// a mistake is an error naming file and line, never a silently skipped signer.
pub fn parse_allowed_signers(text: &str, file: &str) -> Result<Vec<AllowedSigner>, TrustError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |message: String| TrustError::Line {
            file: file.to_string(),
            line,
            message,
        };
        let rest = raw.trim_start_matches([' ', '\t']).trim_end_matches('\r');
        if rest.is_empty() || rest.starts_with('#') {
            continue;
        }
        let (principals, rest) = token(rest).map_err(|m| err(format!("principals: {m}")))?;
        if principals.is_empty() {
            return Err(err("empty principals".into()));
        }
        let rest = rest.trim_start_matches([' ', '\t']);
        if rest.is_empty() {
            return Err(err(format!(
                "no key after the principals \"{principals}\" (expected: principals [options] keytype base64)"
            )));
        }
        let (options, key_text) = match PublicKey::from_openssh(rest.trim_end()) {
            Ok(_) => (None, rest),
            Err(_) => {
                let (options, after) = token(rest).map_err(|m| err(format!("options: {m}")))?;
                let after = after.trim_start_matches([' ', '\t']);
                if after.is_empty() {
                    return Err(err(format!(
                        "missing key (read \"{}\" as options)",
                        shorten(&options)
                    )));
                }
                (Some(options), after)
            }
        };
        let key = PublicKey::from_openssh(key_text.trim_end())
            .map_err(|e| err(format!("invalid key: {e}")))?;
        let mut signer = AllowedSigner {
            line,
            principals,
            namespaces: None,
            valid_after: None,
            valid_before: None,
            key,
        };
        if let Some(options) = options {
            for opt in split_options(&options).map_err(&err)? {
                let (name, value) = match opt.split_once('=') {
                    Some((n, v)) => (n.to_ascii_lowercase(), Some(v)),
                    None => (opt.to_ascii_lowercase(), None),
                };
                let quoted = |v: Option<&str>| -> Result<String, TrustError> {
                    let v = v.ok_or_else(|| err(format!("option {name} needs a value")))?;
                    v.strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .map(str::to_string)
                        .ok_or_else(|| err(format!("option {name}: the value must be quoted")))
                };
                match name.as_str() {
                    "cert-authority" => {
                        return Err(err(
                            "cert-authority is not supported: list each signer's own key".into(),
                        ));
                    }
                    "namespaces" => {
                        if signer.namespaces.is_some() {
                            return Err(err("namespaces given twice".into()));
                        }
                        signer.namespaces = Some(quoted(value)?);
                    }
                    "valid-after" | "valid-before" => {
                        let v = quoted(value)?;
                        let t = parse_time(&v).ok_or_else(|| {
                            err(format!("{name}=\"{v}\": expected YYYYMMDD[HHMM[SS]][Z]"))
                        })?;
                        let slot = if name == "valid-after" {
                            &mut signer.valid_after
                        } else {
                            &mut signer.valid_before
                        };
                        if slot.is_some() {
                            return Err(err(format!("{name} given twice")));
                        }
                        *slot = Some(t);
                    }
                    _ => {
                        return Err(err(format!(
                            "unsupported option \"{}\" (known: namespaces, valid-after, valid-before)",
                            shorten(&name)
                        )));
                    }
                }
            }
        }
        if let (Some(a), Some(b)) = (signer.valid_after, signer.valid_before)
            && a >= b
        {
            return Err(err("valid-after is not before valid-before".into()));
        }
        out.push(signer);
    }
    Ok(out)
}

fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(60).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// One whitespace-delimited token; a `"` starts a quoted run (which may hold spaces) that
/// ends at the next `"`. Returns the token without the quotes of a wholly quoted token.
fn token(s: &str) -> Result<(String, &str), String> {
    if let Some(inner) = s.strip_prefix('"') {
        let end = inner
            .find('"')
            .ok_or_else(|| "unterminated quote".to_string())?;
        let after = &inner[end + 1..];
        if !after.is_empty() && !after.starts_with([' ', '\t']) {
            return Err("a quoted token must be followed by a space".into());
        }
        return Ok((inner[..end].to_string(), after));
    }
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ' ' | '\t' if !quoted => return Ok((s[..i].to_string(), &s[i..])),
            _ => {}
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    Ok((s.to_string(), ""))
}

/// Splits `a,b="x,y",c` at the commas outside quotes.
fn split_options(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if quoted {
        return Err("unterminated quote in the options".into());
    }
    out.push(cur);
    if out.iter().any(String::is_empty) {
        return Err("empty option".into());
    }
    Ok(out)
}

/// `YYYYMMDD`, `YYYYMMDDHHMM` or `YYYYMMDDHHMMSS`, with an optional `Z`; as UTC either way
/// (ssh-keygen reads a time without `Z` in its local time zone).
fn parse_time(s: &str) -> Option<i64> {
    let digits = s.strip_suffix(['Z', 'z']).unwrap_or(s);
    if !digits.bytes().all(|b| b.is_ascii_digit()) || ![8, 12, 14].contains(&digits.len()) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| digits.get(r).and_then(|d| d.parse::<i64>().ok());
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = if digits.len() >= 12 {
        (
            num(8..10)?,
            num(10..12)?,
            if digits.len() == 14 { num(12..14)? } else { 0 },
        )
    } else {
        (0, 0, 0)
    };
    if !(1..=12).contains(&m)
        || !(1..=days_in_month(y, m)).contains(&d)
        || hh > 23
        || mm > 59
        || ss > 59
    {
        return None;
    }
    Some(days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
fn format_time(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Reads the public keys of an armored keyring (one or more `PUBLIC KEY BLOCK`s) and checks
/// their self-signatures; a revoked key is refused.
fn parse_openpgp_keys(
    text: &str,
    file: &str,
) -> Result<Vec<pgp::composed::SignedPublicKey>, TrustError> {
    use pgp::composed::{Deserializable, SignedPublicKey};
    use pgp::types::KeyDetails;

    const BEGIN: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";
    let err = |message: String| TrustError::File {
        file: file.to_string(),
        message,
    };
    if text.contains("-----BEGIN PGP PRIVATE KEY BLOCK-----") {
        return Err(err(
            "holds a private key: give the public keys only (gpg --export --armor)".into(),
        ));
    }
    let starts: Vec<usize> = text.match_indices(BEGIN).map(|(i, _)| i).collect();
    if starts.is_empty() {
        return Err(err(format!(
            "no \"{BEGIN}\": expected armored public keys (gpg --export --armor KEYID)"
        )));
    }
    let mut keys = Vec::new();
    for (n, &start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(text.len());
        let block = &text[start..end];
        let line = text[..start].lines().count() + 1;
        let block_err = |message: String| TrustError::Line {
            file: file.to_string(),
            line,
            message,
        };
        let (parsed, _) = SignedPublicKey::from_armor_many(block.as_bytes())
            .map_err(|e| block_err(format!("cannot read the key block: {e}")))?;
        for key in parsed {
            let key = key.map_err(|e| block_err(format!("cannot read a key: {e}")))?;
            let fp = format!("{:X}", key.primary_key.fingerprint());
            key.verify_bindings()
                .map_err(|e| block_err(format!("key {fp}: bad self-signature: {e}")))?;
            if !key.details.revocation_signatures.is_empty() {
                return Err(block_err(format!(
                    "key {fp} is revoked: remove it from the trusted keys"
                )));
            }
            keys.push(key);
        }
    }
    if keys.is_empty() {
        return Err(err(
            "no keys in the file: every commit would be rejected".into()
        ));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn describe(signers: &[AllowedSigner]) -> String {
        let mut out = String::new();
        for s in signers {
            out.push_str(&format!("line={} principals={}", s.line, s.principals));
            if let Some(ns) = &s.namespaces {
                out.push_str(&format!(" namespaces={ns}"));
            }
            if let Some(t) = s.valid_after {
                out.push_str(&format!(" valid-after={}", format_time(t)));
            }
            if let Some(t) = s.valid_before {
                out.push_str(&format!(" valid-before={}", format_time(t)));
            }
            out.push_str(&format!(" key={}\n", s.key.fingerprint(HashAlg::Sha256)));
        }
        out
    }

    /// `fixtures/signing/<case>/allowed_signers` parses to what `expected` says: one line per
    /// signer, or `error: <message>`.
    #[test]
    fn allowed_signers_fixtures() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/signing");
        let mut cases = 0;
        let mut failures = Vec::new();
        let mut dirs: Vec<_> = std::fs::read_dir(&root)
            .expect("fixtures/signing")
            .map(|e| e.expect("entry").path())
            .collect();
        dirs.sort();
        for dir in dirs {
            let text = std::fs::read_to_string(dir.join("allowed_signers")).expect("input");
            let expected = std::fs::read_to_string(dir.join("expected")).expect("expected");
            let got = match parse_allowed_signers(&text, "allowed_signers") {
                Ok(signers) => describe(&signers),
                Err(e) => format!("error: {e}\n"),
            };
            if got != expected {
                failures.push(format!(
                    "{}:\n--- expected\n{expected}--- got\n{got}",
                    dir.display()
                ));
            }
            cases += 1;
        }
        assert!(
            cases >= 10,
            "only {cases} cases found under {}",
            root.display()
        );
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn split_keeps_everything_but_the_signature() {
        let raw = b"tree 1\nparent 2\nauthor a <a> 1 +0000\ncommitter c <c> 5 +0000\ngpgsig -----BEGIN SSH SIGNATURE-----\n AAAA\n \n -----END SSH SIGNATURE-----\nmergetag x\n y\n\nmsg\ngpgsig not a header\n";
        let s = split_signed(raw).expect("signed");
        assert_eq!(
            s.payload,
            b"tree 1\nparent 2\nauthor a <a> 1 +0000\ncommitter c <c> 5 +0000\nmergetag x\n y\n\nmsg\ngpgsig not a header\n"
        );
        assert_eq!(
            s.signature,
            b"-----BEGIN SSH SIGNATURE-----\nAAAA\n\n-----END SSH SIGNATURE-----\n"
        );
        assert_eq!(committer_time(&s.payload), Some(5));
        assert_eq!(split_signed(b"tree 1\n\ngpgsig x\n"), None);
    }

    #[test]
    fn other_signature_headers_are_not_signed() {
        let raw = b"tree 1\ngpgsig-sha256 X\n Y\ngpgsig S\n T\n\nm\n";
        let s = split_signed(raw).expect("signed");
        assert_eq!(s.payload, b"tree 1\n\nm\n");
        assert_eq!(s.signature, b"S\nT\n");
    }

    #[test]
    fn patterns_match_like_ssh_keygen() {
        assert!(match_pattern_list("git", "git"));
        assert!(match_pattern_list("git", "file,g*"));
        assert!(!match_pattern_list("git", "file"));
        assert!(!match_pattern_list("git", "*,!git"));
        assert!(match_pattern_list("git", "g?t"));
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("19700101"), Some(0));
        assert_eq!(parse_time("20240229Z"), Some(1_709_164_800));
        assert_eq!(parse_time("202402291230"), Some(1_709_164_800 + 45_000));
        assert_eq!(parse_time("20230229"), None);
        assert_eq!(parse_time("2024022"), None);
        assert_eq!(
            format_time(1_709_164_800 + 45_001),
            "2024-02-29 12:30:01 UTC"
        );
    }
}
