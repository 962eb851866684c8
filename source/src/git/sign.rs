//! Signing the commits flotilla writes (image updates) with an OpenSSH private key, as
//! `git -c gpg.format=ssh commit -S` does: an `SSHSIG` over the commit object without its
//! signature, namespace `git`, SHA-512, in the `gpgsig` header.

use std::path::Path;

use ssh_key::{HashAlg, LineEnding, PrivateKey};

use super::verify::{GIT_NAMESPACE, TrustError};

/// Largest private key file read.
const MAX_KEY_BYTES: u64 = 1 << 20;

/// An unencrypted OpenSSH private key that signs commits. `Debug` shows the fingerprint only.
pub struct CommitSigner {
    key: PrivateKey,
    fingerprint: String,
}

impl std::fmt::Debug for CommitSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitSigner")
            .field("key", &self.fingerprint)
            .finish()
    }
}

impl CommitSigner {
    /// Reads `path` (`ssh-keygen -t ed25519 -N ''`). A passphrase-protected key is refused:
    /// a daemon has nobody to ask.
    pub fn load(path: &Path) -> Result<CommitSigner, TrustError> {
        let file = path.display().to_string();
        let err = |message: String| TrustError::File {
            file: file.clone(),
            message,
        };
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if meta.len() > MAX_KEY_BYTES {
            return Err(err(format!(
                "{} bytes, more than the limit of {MAX_KEY_BYTES} for a private key",
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        if !text.contains("-----BEGIN OPENSSH PRIVATE KEY-----") {
            return Err(err(
                "not an OpenSSH private key (expected \"-----BEGIN OPENSSH PRIVATE KEY-----\", as ssh-keygen writes)".into(),
            ));
        }
        // The parser's messages describe the format, never the key material.
        let key = PrivateKey::from_openssh(text.trim())
            .map_err(|e| err(format!("cannot read the private key: {e}")))?;
        if key.is_encrypted() {
            return Err(err(
                "the private key is protected by a passphrase; give an unencrypted key (ssh-keygen -p -N '')".into(),
            ));
        }
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        Ok(CommitSigner { key, fingerprint })
    }

    /// `SHA256:...` of the public key (what `ssh-keygen -l` prints).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The public key, as one allowed-signers key field (`ssh-ed25519 AAAA...`).
    pub fn public_key(&self) -> String {
        self.key
            .public_key()
            .to_openssh()
            .unwrap_or_else(|_| self.fingerprint.clone())
    }

    /// The armored signature of `payload` (what goes into the `gpgsig` header).
    pub fn sign(&self, payload: &[u8]) -> Result<String, String> {
        let sig = self
            .key
            .sign(GIT_NAMESPACE, HashAlg::Sha512, payload)
            .map_err(|e| format!("signing with SSH key {} failed: {e}", self.fingerprint))?;
        sig.to_pem(LineEnding::LF)
            .map_err(|e| format!("encoding the signature failed: {e}"))
    }
}
