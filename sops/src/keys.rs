//! age identities: the text of an age key file (`age-keygen` output, sops' `SOPS_AGE_KEY_FILE`).

use std::fmt;
use std::str::FromStr;

use crate::SopsError;

/// The largest key text accepted (a key line is 74 characters; this allows thousands).
pub const MAX_KEY_TEXT: usize = 1 << 20;

/// Parsed age X25519 identities. `Debug` shows only the public recipients.
pub struct Keys {
    identities: Vec<age::x25519::Identity>,
    recipients: Vec<String>,
}

impl Keys {
    /// Reads identities from key-file text: every `AGE-SECRET-KEY-1...` word, one or more per
    /// line; blank lines and lines starting with `#` (age-keygen writes `# created:` and
    /// `# public key:` comments) are skipped. Anything else is an error naming the line (never
    /// its content). At least one identity is required.
    pub fn parse(text: &str) -> Result<Keys, SopsError> {
        if text.len() > MAX_KEY_TEXT {
            return Err(SopsError::KeyFile {
                line: 0,
                reason: format!("the key text is over {MAX_KEY_TEXT} bytes"),
            });
        }
        let mut identities = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            for word in line.split_whitespace() {
                if !word.starts_with("AGE-SECRET-KEY-1") {
                    return Err(SopsError::KeyFile {
                        line: i + 1,
                        reason: "not an age X25519 identity (AGE-SECRET-KEY-1...); only those are supported".into(),
                    });
                }
                let id = age::x25519::Identity::from_str(word).map_err(|_| SopsError::KeyFile {
                    line: i + 1,
                    reason: "malformed AGE-SECRET-KEY-1 identity".into(),
                })?;
                identities.push(id);
            }
        }
        if identities.is_empty() {
            return Err(SopsError::KeyFile {
                line: 0,
                reason: "no AGE-SECRET-KEY-1 identity found".into(),
            });
        }
        let recipients = identities
            .iter()
            .map(|i| i.to_public().to_string())
            .collect();
        Ok(Keys {
            identities,
            recipients,
        })
    }

    /// The public keys (`age1...`) of the identities, in file order.
    pub fn recipients(&self) -> &[String] {
        &self.recipients
    }

    /// `plain` encrypted (binary age format) to the public keys of these identities: what
    /// the daemon keeps at rest that holds decrypted SOPS data (the rollout state store's
    /// manifests), so only a holder of the same keys can read it back.
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, SopsError> {
        use std::io::Write;
        let crypto = |e: &dyn fmt::Display| SopsError::Seal(e.to_string());
        let recipients: Vec<age::x25519::Recipient> =
            self.identities.iter().map(|i| i.to_public()).collect();
        let enc =
            age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| crypto(&e))?;
        let mut out = Vec::with_capacity(plain.len() + 256);
        let mut w = enc.wrap_output(&mut out).map_err(|e| crypto(&e))?;
        w.write_all(plain).map_err(|e| crypto(&e))?;
        w.finish().map_err(|e| crypto(&e))?;
        Ok(out)
    }

    /// The plaintext of [`Keys::seal`]'s output, with any of these identities.
    pub fn unseal(&self, sealed: &[u8]) -> Result<Vec<u8>, SopsError> {
        use std::io::Read;
        let crypto = |e: &dyn fmt::Display| SopsError::Seal(e.to_string());
        let d = age::Decryptor::new_buffered(sealed).map_err(|e| crypto(&e))?;
        let mut r = d.decrypt(self.identities()).map_err(|e| crypto(&e))?;
        let mut out = Vec::new();
        r.read_to_end(&mut out).map_err(|e| crypto(&e))?;
        Ok(out)
    }

    pub(crate) fn identities(&self) -> impl Iterator<Item = &dyn age::Identity> {
        self.identities.iter().map(|i| i as &dyn age::Identity)
    }
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys")
            .field("recipients", &self.recipients)
            .finish_non_exhaustive()
    }
}
