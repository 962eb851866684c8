//! Where sink secrets come from: a directory the daemon is given (one file per name: a
//! Kubernetes Secret mounted as a volume) or environment variables with a fixed prefix
//! (`FLOTILLA_NOTIFY_SLACK_OPS` for `slack-ops`). Never from a path or a variable named in Git:
//! fleet.yaml names a secret, and a name is a DNS label, so a pusher cannot make the daemon
//! read any other file. Values never appear in `Debug`, logs or errors.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

/// The prefix of secret environment variables.
pub const ENV_PREFIX: &str = "FLOTILLA_NOTIFY_";
/// A secret file larger than this is refused.
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// A secret value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The environment variable of a secret name.
pub fn env_name(name: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        name.to_ascii_uppercase().replace('-', "_")
    )
}

/// The directory and the environment secrets are read from.
#[derive(Clone, Default)]
pub struct SecretSource {
    dir: Option<PathBuf>,
    /// Only the variables with [`ENV_PREFIX`].
    env: BTreeMap<String, Secret>,
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSource")
            .field("dir", &self.dir)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SecretSource {
    /// `dir` (`--notification-secrets`), and the variables of `env` that start with
    /// [`ENV_PREFIX`] (the daemon passes `std::env::vars()`).
    pub fn new(
        dir: Option<PathBuf>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> SecretSource {
        SecretSource {
            dir,
            env: env
                .into_iter()
                .filter(|(k, _)| k.starts_with(ENV_PREFIX))
                .map(|(k, v)| (k, Secret(v)))
                .collect(),
        }
    }

    /// The secret `name`: the file `DIR/name` first (trailing newline dropped), else the
    /// variable. The error says where it looked, never a value.
    pub fn resolve(&self, name: &str) -> Result<Secret, String> {
        if flotilla_spec::types::check_name(name).is_err() {
            return Err(format!("invalid secret name {name:?}"));
        }
        if let Some(dir) = &self.dir {
            let path = dir.join(name);
            match std::fs::File::open(&path) {
                Ok(f) => return read_bounded(f, name, &path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(format!(
                        "secret {name:?}: cannot read {}: {}",
                        path.display(),
                        e.kind()
                    ));
                }
            }
        }
        let var = env_name(name);
        if let Some(v) = self.env.get(&var) {
            if v.0.trim().is_empty() {
                return Err(format!("secret {name:?}: {var} is empty"));
            }
            return Ok(Secret(v.0.trim_end_matches(['\n', '\r']).to_string()));
        }
        let dir = match &self.dir {
            Some(d) => format!("no file {} and ", d.join(name).display()),
            None => "no --notification-secrets directory and ".to_string(),
        };
        Err(format!("secret {name:?} not found: {dir}no variable {var}"))
    }
}

fn read_bounded(f: std::fs::File, name: &str, path: &std::path::Path) -> Result<Secret, String> {
    let mut buf = Vec::new();
    f.take(MAX_SECRET_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| {
            format!(
                "secret {name:?}: cannot read {}: {}",
                path.display(),
                e.kind()
            )
        })?;
    if buf.len() as u64 > MAX_SECRET_BYTES {
        return Err(format!(
            "secret {name:?}: {} is larger than {MAX_SECRET_BYTES} bytes",
            path.display()
        ));
    }
    let text = String::from_utf8(buf)
        .map_err(|_| format!("secret {name:?}: {} is not UTF-8", path.display()))?;
    let value = text.trim_end_matches(['\n', '\r']);
    if value.trim().is_empty() {
        return Err(format!("secret {name:?}: {} is empty", path.display()));
    }
    Ok(Secret(value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_first_then_prefixed_variables_and_errors_never_hold_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("slack-ops"),
            "https://hooks.example/T0/SECRET\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("empty"), "\n").expect("write");
        let src = SecretSource::new(
            Some(dir.path().to_path_buf()),
            [
                ("FLOTILLA_NOTIFY_HOOK_KEY".to_string(), "k3y".to_string()),
                (
                    "FLOTILLA_NOTIFY_SLACK_OPS".to_string(),
                    "from-env".to_string(),
                ),
                ("HOME".to_string(), "/root".to_string()),
            ],
        );
        assert_eq!(
            src.resolve("slack-ops").map(|s| s.expose().to_string()),
            Ok("https://hooks.example/T0/SECRET".to_string())
        );
        assert_eq!(
            src.resolve("hook-key").map(|s| s.expose().to_string()),
            Ok("k3y".to_string())
        );
        let missing = src.resolve("pager").expect_err("missing");
        assert!(missing.contains("FLOTILLA_NOTIFY_PAGER"), "{missing}");
        assert!(src.resolve("empty").expect_err("empty").contains("empty"));
        // Names are DNS labels: no path, no way out of the directory, no other variable.
        for bad in ["../etc/passwd", "/etc/passwd", "a/b", "HOME", ""] {
            assert!(src.resolve(bad).is_err(), "{bad}");
        }
        let debug = format!("{src:?} {:?}", src.resolve("hook-key"));
        assert!(
            !debug.contains("k3y") && !debug.contains("from-env"),
            "{debug}"
        );
    }

    #[test]
    fn oversized_secret_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("big"),
            vec![b'x'; MAX_SECRET_BYTES as usize + 1],
        )
        .expect("write");
        let src = SecretSource::new(Some(dir.path().to_path_buf()), []);
        assert!(src.resolve("big").expect_err("big").contains("larger"));
    }
}
