//! Loading kubeconfig files the way kubectl does: an explicit path, else the files of
//! `KUBECONFIG` (separated by `:`, `;` on Windows) merged (the first file to define a name
//! wins), else `~/.kube/config`.
//!
//! Errors name files and context names, never credentials: YAML parse errors are reported by
//! position only, because a parser's message can quote the offending text.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

/// Why kubeconfig files could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("cannot read kubeconfig {}: {message}", path.display())]
    Read { path: PathBuf, message: String },
    #[error("kubeconfig {} is not a valid kubeconfig: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("cannot merge kubeconfig {} into the previous files: {message}", path.display())]
    Merge { path: PathBuf, message: String },
    #[error("no kubeconfig found (looked for {})", Paths(searched))]
    NotFound { searched: Vec<PathBuf> },
}

/// Paths joined with `:` for messages.
pub(crate) struct Paths<'a>(pub &'a [PathBuf]);

impl fmt::Display for Paths<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return write!(f, "(none)");
        }
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ":")?;
            }
            write!(f, "{}", p.display())?;
        }
        Ok(())
    }
}

/// The merged contents of one or more kubeconfig files, and where they came from.
#[derive(Clone)]
pub struct Kubeconfig {
    paths: Vec<PathBuf>,
    config: kube::config::Kubeconfig,
    /// Where each context, cluster and user is in `config` (the first of a name, as kubectl
    /// reads a merged kubeconfig): a fleet of N clusters looks each one up in O(1).
    index: Index,
}

#[derive(Clone, Default)]
struct Index {
    contexts: std::collections::HashMap<String, usize>,
    clusters: std::collections::HashMap<String, usize>,
    users: std::collections::HashMap<String, usize>,
}

impl Index {
    fn of(config: &kube::config::Kubeconfig) -> Index {
        fn first<'a>(
            names: impl Iterator<Item = &'a str>,
        ) -> std::collections::HashMap<String, usize> {
            let mut m = std::collections::HashMap::new();
            for (i, n) in names.enumerate() {
                m.entry(n.to_string()).or_insert(i);
            }
            m
        }
        Index {
            contexts: first(config.contexts.iter().map(|c| c.name.as_str())),
            clusters: first(config.clusters.iter().map(|c| c.name.as_str())),
            users: first(config.auth_infos.iter().map(|c| c.name.as_str())),
        }
    }
}

impl fmt::Debug for Kubeconfig {
    /// Paths and context names only: the contents hold credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kubeconfig")
            .field("paths", &self.paths)
            .field("contexts", &self.contexts())
            .field("current_context", &self.current_context())
            .finish()
    }
}

impl Kubeconfig {
    /// Loads like kubectl: `explicit` if given (it must exist), else the files named by
    /// `KUBECONFIG` (missing ones skipped, at least one must exist), else `~/.kube/config`.
    pub fn load(explicit: Option<&Path>) -> Result<Kubeconfig, KubeconfigError> {
        let home = std::env::var_os("HOME")
            .or_else(|| std::env::var_os("USERPROFILE"))
            .filter(|h| !h.is_empty())
            .map(PathBuf::from);
        Kubeconfig::load_with(explicit, std::env::var_os("KUBECONFIG"), home.as_deref())
    }

    /// [`Kubeconfig::load`] with the environment passed in (`KUBECONFIG`'s value and the
    /// home directory).
    pub fn load_with(
        explicit: Option<&Path>,
        kubeconfig_env: Option<OsString>,
        home: Option<&Path>,
    ) -> Result<Kubeconfig, KubeconfigError> {
        if let Some(path) = explicit {
            return Kubeconfig::read_files(&[path.to_path_buf()], false);
        }
        if let Some(value) = kubeconfig_env {
            let paths: Vec<PathBuf> = std::env::split_paths(&value)
                .filter(|p| !p.as_os_str().is_empty())
                .collect();
            if !paths.is_empty() {
                return Kubeconfig::read_files(&paths, true);
            }
        }
        let Some(home) = home else {
            return Err(KubeconfigError::NotFound { searched: vec![] });
        };
        Kubeconfig::read_files(&[home.join(".kube").join("config")], false)
    }

    /// Reads and merges `paths` in order; with `skip_missing`, files that do not exist are
    /// skipped (as kubectl does for `KUBECONFIG`).
    fn read_files(paths: &[PathBuf], skip_missing: bool) -> Result<Kubeconfig, KubeconfigError> {
        let mut merged: Option<kube::config::Kubeconfig> = None;
        let mut read = Vec::new();
        for path in paths {
            match std::fs::metadata(path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if skip_missing {
                        tracing::debug!(path = %path.display(), "kubeconfig in KUBECONFIG does not exist, skipped");
                        continue;
                    }
                    return Err(KubeconfigError::NotFound {
                        searched: vec![path.clone()],
                    });
                }
                Err(e) => {
                    return Err(KubeconfigError::Read {
                        path: path.clone(),
                        message: e.to_string(),
                    });
                }
                Ok(_) => {}
            }
            let config =
                kube::config::Kubeconfig::read_from(path).map_err(|e| read_error(path, e))?;
            merged = Some(match merged {
                None => config,
                Some(m) => m.merge(config).map_err(|e| KubeconfigError::Merge {
                    path: path.clone(),
                    message: e.to_string(),
                })?,
            });
            read.push(path.clone());
        }
        match merged {
            Some(config) => Ok(Kubeconfig {
                paths: read,
                index: Index::of(&config),
                config,
            }),
            None => Err(KubeconfigError::NotFound {
                searched: paths.to_vec(),
            }),
        }
    }

    /// The files read, in merge order.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// The context names, in file order.
    pub fn contexts(&self) -> Vec<&str> {
        self.config
            .contexts
            .iter()
            .map(|c| c.name.as_str())
            .collect()
    }

    pub fn has_context(&self, name: &str) -> bool {
        self.index.contexts.contains_key(name)
    }

    /// A kubeconfig holding only context `name` (current), its cluster and its user: what a
    /// client for that context is built from. Building it costs the one context, not the
    /// whole file, so connecting N clusters stays linear in N.
    pub(crate) fn only_context(&self, name: &str) -> kube::config::Kubeconfig {
        let c = &self.config;
        let context = self
            .index
            .contexts
            .get(name)
            .map(|&i| c.contexts[i].clone());
        let inner = context.as_ref().and_then(|n| n.context.as_ref());
        let cluster = inner
            .and_then(|x| self.index.clusters.get(&x.cluster))
            .map(|&i| c.clusters[i].clone());
        let user = inner
            .and_then(|x| x.user.as_ref())
            .and_then(|u| self.index.users.get(u))
            .map(|&i| c.auth_infos[i].clone());
        kube::config::Kubeconfig {
            preferences: c.preferences.clone(),
            clusters: cluster.into_iter().collect(),
            auth_infos: user.into_iter().collect(),
            contexts: context.into_iter().collect(),
            current_context: Some(name.to_string()),
            extensions: c.extensions.clone(),
            kind: c.kind.clone(),
            api_version: c.api_version.clone(),
            other: c.other.clone(),
        }
    }

    pub fn current_context(&self) -> Option<&str> {
        self.config.current_context.as_deref()
    }

    #[cfg(test)]
    pub(crate) fn raw(&self) -> &kube::config::Kubeconfig {
        &self.config
    }
}

/// kube's error, without the parser's message (which can quote the file's text).
fn read_error(path: &Path, e: kube::config::KubeconfigError) -> KubeconfigError {
    match e {
        kube::config::KubeconfigError::ReadConfig(io, _) => KubeconfigError::Read {
            path: path.to_path_buf(),
            message: io.to_string(),
        },
        kube::config::KubeconfigError::Parse(_) => KubeconfigError::Parse {
            path: path.to_path_buf(),
            message: "YAML syntax or structure error".into(),
        },
        other => KubeconfigError::Parse {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(ctx: &str, server: &str, current: bool) -> String {
        let mut s = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {ctx}\n  cluster:\n    server: {server}\ncontexts:\n- name: {ctx}\n  context:\n    cluster: {ctx}\n    user: {ctx}\nusers:\n- name: {ctx}\n  user:\n    token: secret-{ctx}\n"
        );
        if current {
            s.push_str(&format!("current-context: {ctx}\n"));
        }
        s
    }

    #[test]
    fn explicit_path_wins_and_must_exist() {
        let dir = tempfile::tempdir().expect("temp dir");
        let a = dir.path().join("a");
        std::fs::write(&a, config("a", "https://a:6443", true)).expect("write");
        let env = Some(OsString::from(dir.path().join("b")));
        let k = Kubeconfig::load_with(Some(&a), env.clone(), None).expect("loads");
        assert_eq!(k.contexts(), vec!["a"]);
        assert_eq!(k.paths(), std::slice::from_ref(&a));
        let missing = dir.path().join("missing");
        let e = Kubeconfig::load_with(Some(&missing), env, None).expect_err("missing");
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[test]
    fn kubeconfig_env_merges_files_first_wins_and_skips_missing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, config("a", "https://a:6443", false)).expect("write");
        std::fs::write(&b, config("b", "https://b:6443", true)).expect("write");
        let missing = dir.path().join("nope");
        let env = std::env::join_paths([&a, &missing, &b]).expect("join");
        let k = Kubeconfig::load_with(None, Some(env), Some(dir.path())).expect("loads");
        assert_eq!(k.contexts(), vec!["a", "b"]);
        assert_eq!(k.current_context(), Some("b"));
        assert_eq!(k.paths(), &[a.clone(), b.clone()]);

        // A name defined twice: the first file wins.
        let c = dir.path().join("c");
        std::fs::write(&c, config("a", "https://shadowed:1", true)).expect("write");
        let env = std::env::join_paths([&a, &c]).expect("join");
        let k = Kubeconfig::load_with(None, Some(env), None).expect("loads");
        let server = k.raw().clusters[0]
            .cluster
            .as_ref()
            .and_then(|c| c.server.clone());
        assert_eq!(server.as_deref(), Some("https://a:6443"));
        assert_eq!(k.contexts(), vec!["a"]);
        assert_eq!(k.current_context(), Some("a"));

        let env = std::env::join_paths([&missing]).expect("join");
        let e = Kubeconfig::load_with(None, Some(env), None).expect_err("none exists");
        assert!(matches!(e, KubeconfigError::NotFound { .. }), "{e}");
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn home_default_and_empty_env() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join(".kube")).expect("mkdir");
        std::fs::write(
            dir.path().join(".kube/config"),
            config("home", "https://h:6443", true),
        )
        .expect("write");
        let k = Kubeconfig::load_with(None, Some(OsString::new()), Some(dir.path()))
            .expect("an empty KUBECONFIG falls back to ~/.kube/config");
        assert_eq!(k.contexts(), vec!["home"]);
        let e = Kubeconfig::load_with(None, None, None).expect_err("no home");
        assert!(matches!(e, KubeconfigError::NotFound { .. }));
    }

    #[test]
    fn errors_and_debug_never_show_credentials() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bad = dir.path().join("bad");
        std::fs::write(
            &bad,
            "users:\n- name: u\n  user:\n    token: hunter2-secret\n  : [oops\n",
        )
        .expect("write");
        let e = Kubeconfig::load_with(Some(&bad), None, None).expect_err("bad YAML");
        let msg = e.to_string();
        assert!(msg.contains("bad") && !msg.contains("hunter2"), "{msg}");
        let good = dir.path().join("good");
        std::fs::write(&good, config("a", "https://a:6443", true)).expect("write");
        let k = Kubeconfig::load_with(Some(&good), None, None).expect("loads");
        let debug = format!("{k:?}");
        assert!(
            !debug.contains("secret-a") && debug.contains("\"a\""),
            "{debug}"
        );
    }
}
