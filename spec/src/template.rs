//! `${...}` templates in fleet.yaml strings (Jsonnet ext vars and arguments, override
//! variables, gate queries) and `{{...}}` placeholders of image commit messages.

use crate::model::Cluster;

/// A variable a template may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Var {
    ClusterName,
    ClusterKind,
    ClusterContext,
    ClusterLabel(String),
    PlacementName,
    BundleName,
    FleetName,
    /// Workflow templates only.
    WorkflowName,
    /// Workflow templates only.
    RunId,
    /// Notification templates only: a field of the event (`trigger`, `cluster`, ...).
    Event(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    Var(Var),
}

/// A parsed template. `$$` is a literal `$`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub parts: Vec<Part>,
}

pub const VARIABLES: &[&str] = &[
    "cluster.name",
    "cluster.kind",
    "cluster.context",
    "cluster.labels.KEY",
    "placement.name",
    "bundle.name",
    "fleet.name",
];

/// The variables of a workflow template.
pub const WORKFLOW_VARIABLES: &[&str] = &[
    "cluster.name",
    "cluster.kind",
    "cluster.context",
    "cluster.labels.KEY",
    "fleet.name",
    "workflow.name",
    "run.id",
];

/// The variables of a notification template: fields of the event, and the fleet's name.
pub const NOTIFICATION_VARIABLES: &[&str] = &[
    "trigger",
    "kind",
    "placement",
    "cluster",
    "rollout",
    "batch",
    "commit",
    "workflow",
    "backup",
    "message",
    "at",
    "seq",
    "fleet.name",
];

/// What a workflow template is expanded with.
pub struct WorkflowScope<'a> {
    pub cluster: &'a Cluster,
    pub fleet: &'a str,
    pub workflow: &'a str,
    pub run_id: &'a str,
}

/// What templates are expanded with.
pub struct Scope<'a> {
    pub cluster: &'a Cluster,
    pub placement: &'a str,
    pub bundle: &'a str,
    pub fleet: &'a str,
}

impl Template {
    pub fn parse(s: &str) -> Result<Template, String> {
        Template::parse_in(s, false)
    }

    /// Parses a workflow template: `${workflow.name}` and `${run.id}` instead of the
    /// placement and bundle names.
    pub fn parse_workflow(s: &str) -> Result<Template, String> {
        Template::parse_in(s, true)
    }

    /// Parses a notification template: the event's fields (`${trigger}`, `${cluster}`, ...,
    /// [`NOTIFICATION_VARIABLES`]) and `${fleet.name}`.
    pub fn parse_notification(s: &str) -> Result<Template, String> {
        Template::scan(s, |name| {
            match NOTIFICATION_VARIABLES.iter().find(|v| **v == name) {
                Some(&"fleet.name") => Ok(Var::FleetName),
                Some(v) => Ok(Var::Event(v)),
                None => {
                    let hint =
                        crate::diag::suggestion(name, NOTIFICATION_VARIABLES.iter().copied());
                    Err(format!(
                        "unknown template variable \"${{{name}}}\" (known: {}){hint}",
                        NOTIFICATION_VARIABLES.join(", ")
                    ))
                }
            }
        })
    }

    /// Expands a notification template: `field` answers each variable (`fleet.name`
    /// included); a field the event does not have expands to nothing.
    pub fn expand_notification<'s>(&self, field: impl Fn(&str) -> Option<&'s str>) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Var(Var::Event(name)) => out.push_str(field(name).unwrap_or("")),
                Part::Var(Var::FleetName) => out.push_str(field("fleet.name").unwrap_or("")),
                // parse_notification makes no other variable.
                Part::Var(_) => {}
            }
        }
        out
    }

    fn parse_in(s: &str, workflow: bool) -> Result<Template, String> {
        let known = if workflow {
            WORKFLOW_VARIABLES
        } else {
            VARIABLES
        };
        Template::scan(s, |name| {
            Ok(match name {
                "cluster.name" => Var::ClusterName,
                "cluster.kind" => Var::ClusterKind,
                "cluster.context" => Var::ClusterContext,
                "placement.name" if !workflow => Var::PlacementName,
                "bundle.name" if !workflow => Var::BundleName,
                "workflow.name" if workflow => Var::WorkflowName,
                "run.id" if workflow => Var::RunId,
                "fleet.name" => Var::FleetName,
                other => match other.strip_prefix("cluster.labels.") {
                    Some(key) if !key.is_empty() => Var::ClusterLabel(key.to_string()),
                    _ => {
                        let hint = crate::diag::suggestion(other, known.iter().copied());
                        return Err(format!(
                            "unknown template variable \"${{{other}}}\" (known: {}){hint}",
                            known.join(", ")
                        ));
                    }
                },
            })
        })
    }

    /// The one scanner of the `${...}` language: text, `$$` for a dollar, `${name}` resolved
    /// by `resolve` (its error is the template's).
    fn scan(s: &str, resolve: impl Fn(&str) -> Result<Var, String>) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            text.push_str(&rest[..i]);
            rest = &rest[i..];
            if let Some(r) = rest.strip_prefix("$$") {
                text.push('$');
                rest = r;
            } else if let Some(r) = rest.strip_prefix("${") {
                let end = r
                    .find('}')
                    .ok_or_else(|| format!("unclosed \"${{\" in {s:?}"))?;
                let var = resolve(r[..end].trim())?;
                if !text.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut text)));
                }
                parts.push(Part::Var(var));
                rest = &r[end + 1..];
            } else {
                text.push('$');
                rest = &rest[1..];
            }
        }
        text.push_str(rest);
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Template { parts })
    }

    /// Label keys this template reads.
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(Var::ClusterLabel(k)) => Some(k.as_str()),
            _ => None,
        })
    }

    /// Expands the template; a label the cluster does not have is an error.
    pub fn expand(&self, scope: &Scope<'_>) -> Result<String, String> {
        self.expand_in(scope.cluster, scope.fleet, |v| match v {
            Var::PlacementName => Some(scope.placement),
            Var::BundleName => Some(scope.bundle),
            _ => None,
        })
    }

    /// Expands a workflow template (see [`Template::parse_workflow`]).
    pub fn expand_workflow(&self, scope: &WorkflowScope<'_>) -> Result<String, String> {
        self.expand_in(scope.cluster, scope.fleet, |v| match v {
            Var::WorkflowName => Some(scope.workflow),
            Var::RunId => Some(scope.run_id),
            _ => None,
        })
    }

    fn expand_in<'s>(
        &self,
        cluster: &Cluster,
        fleet: &str,
        other: impl Fn(&Var) -> Option<&'s str>,
    ) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => match v {
                    Var::ClusterName => out.push_str(&cluster.name),
                    Var::ClusterKind => out.push_str(cluster.kind.as_str()),
                    Var::ClusterContext => out.push_str(cluster.context()),
                    Var::FleetName => out.push_str(fleet),
                    Var::PlacementName
                    | Var::BundleName
                    | Var::WorkflowName
                    | Var::RunId
                    | Var::Event(_) => match other(v) {
                        Some(value) => out.push_str(value),
                        None => return Err(format!("{v:?} cannot be used here")),
                    },
                    Var::ClusterLabel(k) => match cluster.labels.get(k) {
                        Some(v) => out.push_str(v),
                        None => {
                            return Err(format!("cluster {:?} has no label {k:?}", cluster.name));
                        }
                    },
                },
            }
        }
        Ok(out)
    }
}

pub const COMMIT_PLACEHOLDERS: &[&str] = &["image", "from", "to", "policy"];

/// Checks `{{name}}` placeholders of an image-update commit message.
pub fn check_commit_message(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err("the commit message template is empty".into());
    }
    let mut rest = s;
    while let Some(i) = rest.find("{{") {
        let r = &rest[i + 2..];
        let end = r
            .find("}}")
            .ok_or_else(|| format!("unclosed \"{{{{\" in commit message {s:?}"))?;
        let name = r[..end].trim();
        if !COMMIT_PLACEHOLDERS.contains(&name) {
            let hint = crate::diag::suggestion(name, COMMIT_PLACEHOLDERS.iter().copied());
            return Err(format!(
                "unknown placeholder {{{{{name}}}}} in commit message (known: {}){hint}",
                COMMIT_PLACEHOLDERS
                    .iter()
                    .map(|p| format!("{{{{{p}}}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        rest = &r[end + 2..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ClusterKind;

    #[test]
    fn expands() {
        let c = Cluster {
            name: "hz-1".into(),
            labels: [("env".to_string(), "prod".to_string())].into(),
            kind: ClusterKind::Edge,
            connect: Default::default(),
            context: None,
            capacity: None,
        };
        let scope = Scope {
            cluster: &c,
            placement: "shop",
            bundle: "api",
            fleet: "acme",
        };
        let t = Template::parse(
            "${cluster.name}/${cluster.labels.env}/${placement.name}/$$x/${cluster.kind}",
        )
        .expect("ok");
        assert_eq!(t.expand(&scope), Ok("hz-1/prod/shop/$x/edge".to_string()));
        let t = Template::parse("${cluster.labels.region}").expect("ok");
        assert!(t.expand(&scope).is_err());
        assert!(
            Template::parse("${cluster.nme}")
                .expect_err("bad")
                .contains("cluster.name")
        );
        assert!(Template::parse("${cluster.name").is_err());
    }

    #[test]
    fn notification_templates_know_the_event_fields_only() {
        let t =
            Template::parse_notification("[${fleet.name}] ${trigger} ${cluster}: ${message} $$5")
                .expect("ok");
        let got = t.expand_notification(|f| match f {
            "fleet.name" => Some("acme"),
            "trigger" => Some("rolled-back"),
            "message" => Some("canary failed"),
            _ => None,
        });
        assert_eq!(got, "[acme] rolled-back : canary failed $5");
        let e = Template::parse_notification("${clustr}").expect_err("unknown");
        assert!(e.contains("did you mean \"cluster\""), "{e}");
        assert!(Template::parse_notification("${cluster.name}").is_err());
        assert!(Template::parse("${trigger}").is_err());
    }

    #[test]
    fn commit_messages() {
        assert!(check_commit_message("images: {{image}} {{from}} -> {{to}}").is_ok());
        assert!(
            check_commit_message("{{imag}}")
                .expect_err("bad")
                .contains("image")
        );
    }
}
