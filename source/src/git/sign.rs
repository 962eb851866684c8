//! Signing the commits flotilla writes (image updates), as `git commit -S` does: the
//! signature of the commit object without its signature goes into the `gpgsig` header.
//! - An OpenSSH private key: an `SSHSIG`, namespace `git`, SHA-512 (`gpg.format ssh`).
//! - An armored OpenPGP secret key: a detached binary signature by its primary key, SHA-256.

use std::path::Path;

use ssh_key::{HashAlg, LineEnding, PrivateKey};

use super::verify::{GIT_NAMESPACE, TrustError};

/// Largest private key file read.
const MAX_KEY_BYTES: u64 = 1 << 20;

/// Why an RSA private key is not used: the `rsa` crate's private-key operations are not
/// constant-time (RUSTSEC-2023-0071, the Marvin attack), so flotilla never signs with one.
/// Verifying RSA signatures uses only public keys and is not affected (see deny.toml).
const RSA_REFUSED: &str = "RSA keys do not sign commits here (the rsa crate's private-key operations are not constant-time, RUSTSEC-2023-0071); use an Ed25519 or ECDSA key (ssh-keygen -t ed25519, gpg --quick-gen-key NAME ed25519)";

enum Key {
    Ssh(Box<PrivateKey>),
    Pgp(Box<pgp::composed::SignedSecretKey>),
}

/// An unencrypted private key that signs commits. `Debug` shows the fingerprint only.
pub struct CommitSigner {
    key: Key,
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
    /// Reads `path`: an OpenSSH private key (`ssh-keygen -t ed25519 -N ''`) or an armored
    /// OpenPGP secret key whose primary key can sign (`gpg --export-secret-keys --armor`).
    /// A passphrase-protected key is refused: a daemon has nobody to ask.
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
        if text.contains("-----BEGIN PGP PRIVATE KEY BLOCK-----") {
            return Self::load_pgp(&text).map_err(err);
        }
        if !text.contains("-----BEGIN OPENSSH PRIVATE KEY-----") {
            return Err(err(
                "not an OpenSSH private key (\"-----BEGIN OPENSSH PRIVATE KEY-----\", as ssh-keygen writes) nor an armored OpenPGP secret key".into(),
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
        if matches!(key.algorithm(), ssh_key::Algorithm::Rsa { .. }) {
            return Err(err(format!("SSH key {fingerprint}: {RSA_REFUSED}")));
        }
        Ok(CommitSigner {
            key: Key::Ssh(Box::new(key)),
            fingerprint,
        })
    }

    fn load_pgp(text: &str) -> Result<CommitSigner, String> {
        use pgp::composed::{Deserializable, SignedSecretKey};
        use pgp::types::KeyDetails;
        let (key, _) = SignedSecretKey::from_string(text)
            .map_err(|e| format!("cannot read the OpenPGP secret key: {e}"))?;
        let fingerprint = format!("{:X}", key.primary_key.fingerprint());
        if key.primary_key.secret_params().is_encrypted() {
            return Err(format!(
                "OpenPGP key {fingerprint} is protected by a passphrase; export it without one"
            ));
        }
        if matches!(
            key.primary_key.algorithm(),
            pgp::crypto::public_key::PublicKeyAlgorithm::RSA
                | pgp::crypto::public_key::PublicKeyAlgorithm::RSASign
                | pgp::crypto::public_key::PublicKeyAlgorithm::RSAEncrypt
        ) {
            return Err(format!("OpenPGP key {fingerprint}: {RSA_REFUSED}"));
        }
        let signer = CommitSigner {
            key: Key::Pgp(Box::new(key)),
            fingerprint,
        };
        // A key that cannot sign (an encryption-only algorithm) fails here, not on a push.
        signer.sign(b"flotilla")?;
        Ok(signer)
    }

    /// `SHA256:...` (SSH, what `ssh-keygen -l` prints) or the OpenPGP fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The armored signature of `payload` (what goes into the `gpgsig` header).
    pub fn sign(&self, payload: &[u8]) -> Result<String, String> {
        match &self.key {
            Key::Ssh(key) => {
                let sig = key
                    .sign(GIT_NAMESPACE, HashAlg::Sha512, payload)
                    .map_err(|e| {
                        format!("signing with SSH key {} failed: {e}", self.fingerprint)
                    })?;
                sig.to_pem(LineEnding::LF)
                    .map_err(|e| format!("encoding the signature failed: {e}"))
            }
            Key::Pgp(key) => {
                use pgp::composed::{ArmorOptions, DetachedSignature};
                use pgp::crypto::hash::HashAlgorithm;
                use pgp::types::Password;
                let sig = DetachedSignature::sign_binary_data(
                    rand::rngs::OsRng,
                    &key.primary_key,
                    &Password::empty(),
                    HashAlgorithm::Sha256,
                    payload,
                )
                .map_err(|e| {
                    format!("signing with OpenPGP key {} failed: {e}", self.fingerprint)
                })?;
                sig.to_armored_string(ArmorOptions::default())
                    .map_err(|e| format!("encoding the signature failed: {e}"))
            }
        }
    }
}
