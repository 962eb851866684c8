//! Workflow templates: one file holding one completing object (a `batch/v1` Job, or another
//! kind with a declared completion rule), `${...}`-templated like bundles plus
//! `${workflow.name}` and `${run.id}`. Validation and the daemon render through the same
//! function, so what validates is what runs.

use crate::model::{Cluster, Workflow};
use crate::template::{Template, WorkflowScope};
use crate::yaml::{self, Limits, Node, Value};

/// Is `object` a `batch/v1` Job?
pub fn is_job(object: &serde_json::Value) -> bool {
    object.get("apiVersion").and_then(|v| v.as_str()) == Some("batch/v1")
        && object.get("kind").and_then(|v| v.as_str()) == Some("Job")
}

/// Parses a workflow template file; an error names the file and the first line that fails.
pub fn parse_template(file: &str, text: &str) -> Result<Template, String> {
    Template::parse_workflow(text).map_err(|e| {
        // `${` never spans lines: the first line that fails alone is where the error is.
        match text
            .lines()
            .position(|l| Template::parse_workflow(l).is_err())
        {
            Some(i) => format!("{file}:{}: {e}", i + 1),
            None => format!("{file}: {e}"),
        }
    })
}

/// Renders `text` (the file `file` of `workflow`) for one cluster and run: the one object it
/// holds, as JSON. Errors name `file:line:col` where there is a place.
pub fn render_template(
    workflow: &Workflow,
    file: &str,
    text: &str,
    cluster: &Cluster,
    fleet: &str,
    run_id: &str,
) -> Result<serde_json::Value, String> {
    let template = parse_template(file, text)?;
    let expanded = template
        .expand_workflow(&WorkflowScope {
            cluster,
            fleet,
            workflow: &workflow.name,
            run_id,
        })
        .map_err(|e| format!("{file}: {e}"))?;
    let docs = yaml::parse_all(&expanded, &Limits::default()).map_err(|e| match e.pos() {
        Some(p) => format!("{file}:{p}: {}", e.message()),
        None => format!("{file}: {e}"),
    })?;
    let docs: Vec<&Node> = docs
        .iter()
        .filter(|d| !matches!(d.value, Value::Null))
        .collect();
    let doc = match docs.as_slice() {
        [one] => *one,
        [] => return Err(format!("{file}: holds no object; expected exactly one")),
        [_, second, ..] => {
            return Err(format!(
                "{file}:{}: a second object; a workflow template holds exactly one",
                second.pos
            ));
        }
    };
    let at = |n: &Node| format!("{file}:{}", n.pos);
    if !matches!(doc.value, Value::Map(_)) {
        return Err(format!(
            "{}: expected a Kubernetes object (a mapping), found {}",
            at(doc),
            doc.type_name()
        ));
    }
    for key in ["apiVersion", "kind"] {
        match doc.get(key) {
            Some(n) if matches!(n.value, Value::Str(_)) => {}
            Some(n) => return Err(format!("{}: {key:?} must be a string", at(n))),
            None => return Err(format!("{}: the object has no {key:?}", at(doc))),
        }
    }
    let object = doc.to_json();
    if is_job(&object) {
        let containers = doc
            .get("spec")
            .and_then(|s| s.get("template"))
            .and_then(|t| t.get("spec"))
            .and_then(|s| s.get("containers"));
        match containers {
            Some(c) if matches!(&c.value, Value::Seq(items) if !items.is_empty()) => {}
            _ => {
                return Err(format!(
                    "{}: the Job has no pod template (spec.template.spec.containers)",
                    at(doc)
                ));
            }
        }
    } else if workflow.completion.is_none() {
        let kind = object.get("kind").and_then(|v| v.as_str()).unwrap_or("");
        let api = object
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        return Err(format!(
            "{}: {api} {kind} is not a completing kind flotilla knows; use a batch/v1 Job or declare \"completion\" (fields that mean succeeded and failed) on the workflow",
            at(doc)
        ));
    }
    if let Some(ns) = object.pointer("/metadata/namespace")
        && !ns.is_string()
    {
        return Err(format!("{}: metadata.namespace must be a string", at(doc)));
    }
    Ok(object)
}
