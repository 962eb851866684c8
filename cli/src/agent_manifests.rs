//! `flotilla agent-manifests --cluster NAME [--member] [--image IMG]`: the YAML that registers
//! a pull-mode agent cluster, rendered from the files in deploy/agent/ (embedded, so the files
//! stay the one source of truth) with the placeholder `NAME` replaced by the cluster's name.
//! Without `--member`: what to apply on the management cluster (the hub's ClusterRoles, the
//! cluster's namespace, the agent's service account, Role and RoleBinding, the hub's
//! RoleBinding). With `--member`: what to apply in the member cluster (the agent's
//! Deployment and its broad ClusterRole). Never a Secret: credentials are made out of band.

use std::io::Write;

/// The management cluster's side: applied once per management cluster, then per cluster in
/// the order of deploy/agent/hub/kustomization.yaml.
const HUB: &[(&str, &str)] = &[
    (
        "hub-role.yaml",
        include_str!("../../deploy/agent/hub-role.yaml"),
    ),
    (
        "hub/namespace.yaml",
        include_str!("../../deploy/agent/hub/namespace.yaml"),
    ),
    (
        "hub/serviceaccount.yaml",
        include_str!("../../deploy/agent/hub/serviceaccount.yaml"),
    ),
    (
        "hub/role.yaml",
        include_str!("../../deploy/agent/hub/role.yaml"),
    ),
    (
        "hub/rolebinding.yaml",
        include_str!("../../deploy/agent/hub/rolebinding.yaml"),
    ),
    (
        "hub/hub-rolebinding.yaml",
        include_str!("../../deploy/agent/hub/hub-rolebinding.yaml"),
    ),
];

/// The member cluster's side, in the order of deploy/agent/member/kustomization.yaml.
const MEMBER: &[(&str, &str)] = &[
    (
        "member/namespace.yaml",
        include_str!("../../deploy/agent/member/namespace.yaml"),
    ),
    (
        "member/serviceaccount.yaml",
        include_str!("../../deploy/agent/member/serviceaccount.yaml"),
    ),
    (
        "member/clusterrole.yaml",
        include_str!("../../deploy/agent/member/clusterrole.yaml"),
    ),
    (
        "member/clusterrolebinding.yaml",
        include_str!("../../deploy/agent/member/clusterrolebinding.yaml"),
    ),
    (
        "member/deployment.yaml",
        include_str!("../../deploy/agent/member/deployment.yaml"),
    ),
];

/// The image line of deploy/agent/member/deployment.yaml that `--image` replaces.
const DEFAULT_IMAGE: &str = "ghcr.io/flotilla/flotilla:0.1.0";

/// The placeholder for the cluster's name in the files (a whole word: `NAMESPACE` is not it).
const PLACEHOLDER: &str = "NAME";

/// The agent's namespace on the management cluster is this prefix plus the cluster name, and a
/// namespace name is a DNS label (at most 63 characters).
const NAMESPACE_PREFIX: &str = "flotilla-cluster-";

/// The longest image reference accepted (Docker's own limit on a reference is 255 for the
/// name plus tag or digest; leave room for a registry host).
const MAX_IMAGE: usize = 512;

#[derive(clap::Args)]
pub struct AgentManifestsArgs {
    /// The member cluster's name in fleet.yaml (a DNS label of at most 46 characters, so
    /// that `flotilla-cluster-NAME` is one too).
    #[arg(long, value_name = "NAME")]
    cluster: String,
    /// Print what runs in the member cluster (the agent's Deployment and ClusterRole) instead
    /// of what registers it on the management cluster.
    #[arg(long)]
    member: bool,
    /// The agent's container image (with --member), e.g. a pinned digest
    /// `registry.example.com/flotilla@sha256:...`.
    #[arg(long, value_name = "IMG")]
    image: Option<String>,
}

pub fn run(args: AgentManifestsArgs) -> anyhow::Result<()> {
    let text = render(&args.cluster, args.member, args.image.as_deref())?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// The YAML stream for `cluster`: the hub side, or the member side with `member`.
pub fn render(cluster: &str, member: bool, image: Option<&str>) -> anyhow::Result<String> {
    check_cluster(cluster)?;
    if let Some(image) = image {
        if !member {
            anyhow::bail!(
                "--image sets the agent's image in the member cluster's Deployment: use it with --member"
            );
        }
        check_image(image)?;
    }
    let (files, header) = if member {
        (
            MEMBER,
            format!(
                "# flotilla agent for cluster {cluster}: apply IN THE MEMBER CLUSTER {cluster}, then create\n\
                 # Secret flotilla-system/flotilla-agent-hub-kubeconfig (deploy/agent/member/secrets.example.yaml).\n"
            ),
        )
    } else {
        (
            HUB,
            format!(
                "# Registration of agent cluster {cluster}: apply ON THE MANAGEMENT CLUSTER.\n\
                 # The agent's credentials: kubectl -n {NAMESPACE_PREFIX}{cluster} create token flotilla-agent\n"
            ),
        )
    };
    let mut out = header;
    for (i, (_, text)) in files.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        let mut text = substitute(text, cluster);
        if let Some(image) = image {
            text = text.replace(
                &format!("image: {DEFAULT_IMAGE}"),
                &format!("image: {image}"),
            );
        }
        out.push_str(&text);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

pub(crate) fn check_cluster(cluster: &str) -> anyhow::Result<()> {
    flotilla_spec::types::check_name(cluster).map_err(|e| anyhow::anyhow!("--cluster: {e}"))?;
    let namespace_max = 63 - NAMESPACE_PREFIX.len();
    if cluster.len() > namespace_max {
        anyhow::bail!(
            "--cluster: {cluster:?} is {} characters; an agent cluster's name is at most {namespace_max}, \
             so that its namespace {NAMESPACE_PREFIX}{cluster} is a valid name (63 at most)",
            cluster.len()
        );
    }
    Ok(())
}

fn check_image(image: &str) -> anyhow::Result<()> {
    let ok = !image.is_empty()
        && image.len() <= MAX_IMAGE
        && image
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b))
        && image
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        let shown: String = image.chars().take(80).collect();
        anyhow::bail!(
            "--image: {shown:?} is not an image reference (at most {MAX_IMAGE} characters of \
             letters, digits and . _ - / : @, starting with a letter or digit)"
        )
    }
}

/// Replaces every whole-word `NAME` (not preceded or followed by a letter, digit or `_`).
fn substitute(text: &str, cluster: &str) -> String {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut rest = 0;
    let mut from = 0;
    while let Some(found) = text[from..].find(PLACEHOLDER) {
        let at = from + found;
        let end = at + PLACEHOLDER.len();
        let before_ok = at == 0 || !word(bytes[at - 1]);
        let after_ok = end == bytes.len() || !word(bytes[end]);
        if before_ok && after_ok {
            out.push_str(&text[rest..at]);
            out.push_str(cluster);
            rest = end;
        }
        from = end;
    }
    out.push_str(&text[rest..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file names under `resources:` of a kustomization.
    fn resources(kustomization: &str) -> Vec<String> {
        kustomization
            .split("resources:")
            .nth(1)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- "))
            .map(|s| s.trim().to_string())
            .collect()
    }

    /// The embedded lists follow the kustomizations, file for file and in order: a file added
    /// to deploy/agent/*/kustomization.yaml and not here (or the reverse) fails.
    #[test]
    fn embedded_files_are_the_kustomizations_resources() {
        let hub: Vec<String> = HUB
            .iter()
            .filter_map(|(f, _)| f.strip_prefix("hub/"))
            .map(str::to_string)
            .collect();
        assert_eq!(
            hub,
            resources(include_str!("../../deploy/agent/hub/kustomization.yaml"))
        );
        let member: Vec<String> = MEMBER
            .iter()
            .filter_map(|(f, _)| f.strip_prefix("member/"))
            .map(str::to_string)
            .collect();
        assert_eq!(
            member,
            resources(include_str!("../../deploy/agent/member/kustomization.yaml"))
        );
    }

    #[test]
    fn substitutes_whole_words_only() {
        assert_eq!(
            substitute(
                "name: flotilla-cluster-NAME\n- --cluster=NAME\nPOD_NAMESPACE NAMES xNAME NAME",
                "a1"
            ),
            "name: flotilla-cluster-a1\n- --cluster=a1\nPOD_NAMESPACE NAMES xNAME a1"
        );
    }

    #[test]
    fn names_and_images_are_checked() {
        assert!(render("a1", false, None).is_ok());
        let longest = "a".repeat(46);
        assert!(render(&longest, false, None).is_ok());
        let err = render(&"a".repeat(47), false, None)
            .expect_err("47 characters")
            .to_string();
        assert!(err.contains("at most 46"), "{err}");
        for bad in ["", "A1", "a_1", "-a", "a-", "a.b", "a\nkind: Secret"] {
            let err = render(bad, false, None).expect_err(bad).to_string();
            assert!(err.starts_with("--cluster: invalid name"), "{bad:?}: {err}");
        }
        let out = render("a1", true, Some("registry.example.com/f@sha256:0123")).expect("image");
        assert!(out.contains("image: registry.example.com/f@sha256:0123\n"));
        assert!(!out.contains(DEFAULT_IMAGE));
        for bad in ["x y", "img\n  command: [sh]", "\"q\"", "", "-x"] {
            let err = render("a1", true, Some(bad)).expect_err(bad).to_string();
            assert!(err.starts_with("--image:"), "{bad:?}: {err}");
        }
        let err = render("a1", false, Some("img"))
            .expect_err("--image without --member")
            .to_string();
        assert!(err.contains("--member"), "{err}");
    }
}
