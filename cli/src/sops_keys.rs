//! age identities for SOPS-encrypted files: `--sops-age-key-file` (or `SOPS_AGE_KEY_FILE`, the
//! variable sops itself reads), else the key text in `SOPS_AGE_KEY`. Never from the fleet
//! repository. Key material never appears in messages.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use flotilla_renderers::sops::Keys;

/// The largest key file read.
const MAX_KEY_FILE: u64 = 1 << 20;

#[derive(Clone, Default, clap::Args)]
pub(crate) struct SopsArgs {
    /// age identities (`AGE-SECRET-KEY-1...` lines, `age-keygen` output) that decrypt
    /// SOPS-encrypted files in bundles. Without it, and without SOPS_AGE_KEY, rendering a SOPS
    /// file fails. See docs/secrets.md.
    #[arg(long, env = "SOPS_AGE_KEY_FILE", value_name = "FILE")]
    pub sops_age_key_file: Option<PathBuf>,
}

/// The keys from `file`, else from `SOPS_AGE_KEY`; `None` when neither is set.
pub(crate) fn load(file: Option<&Path>) -> anyhow::Result<Option<Arc<Keys>>> {
    if let Some(path) = file {
        let shown = path.display();
        let meta = std::fs::metadata(path)
            .map_err(|e| anyhow::anyhow!("--sops-age-key-file {shown}: {e}"))?;
        if meta.len() > MAX_KEY_FILE {
            anyhow::bail!("--sops-age-key-file {shown}: over {MAX_KEY_FILE} bytes");
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("--sops-age-key-file {shown}: {e}"))?;
        let keys =
            Keys::parse(&text).map_err(|e| anyhow::anyhow!("--sops-age-key-file {shown}: {e}"))?;
        tracing::debug!(recipients = ?keys.recipients(), "SOPS age identities loaded");
        return Ok(Some(Arc::new(keys)));
    }
    match std::env::var("SOPS_AGE_KEY") {
        Ok(text) if !text.trim().is_empty() => {
            let keys = Keys::parse(&text).map_err(|e| anyhow::anyhow!("SOPS_AGE_KEY: {e}"))?;
            Ok(Some(Arc::new(keys)))
        }
        _ => Ok(None),
    }
}
