//! Pages straight from a status API's JSON (workflows, backups, burst): objects become
//! definition lists, arrays of objects tables, every value escaped. Depth and length are
//! bounded so a huge status cannot make a huge page.

use std::fmt::Write as _;

use serde_json::Value;

use crate::{Nav, Scope, page, push_esc};

/// Nesting shown before a value is summarised.
const MAX_DEPTH: usize = 6;
/// Items of one array shown (the rest are counted).
const MAX_ITEMS: usize = 200;
/// Columns of one table.
const MAX_COLUMNS: usize = 16;

/// A page titled `title` showing `status` (the JSON of its status API, `api` its path).
pub fn render_status_page(
    title: &str,
    nav: Nav,
    api: &str,
    status: &Value,
    seq: u64,
    fragment: bool,
) -> String {
    let mut header = String::new();
    header.push_str("<h1>");
    push_esc(&mut header, title);
    header.push_str("</h1>\n<p>From <a href=\"");
    push_esc(&mut header, api);
    header.push_str("\"><code>");
    push_esc(&mut header, api);
    header.push_str("</code></a>.</p>\n");
    let mut live = String::new();
    value(&mut live, status, 0);
    let scope = Scope {
        seq,
        ..Scope::default()
    };
    page(title, Some(nav), &scope, &header, live, fragment)
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn value(out: &mut String, v: &Value, depth: usize) {
    if depth >= MAX_DEPTH {
        out.push_str("<code>");
        let text = v.to_string();
        let cut: String = text.chars().take(200).collect();
        push_esc(out, &cut);
        if cut.len() < text.len() {
            out.push('…');
        }
        out.push_str("</code>");
        return;
    }
    match v {
        Value::Null => out.push_str("<span class=\"none\">—</span>"),
        Value::Bool(b) => out.push_str(if *b { "yes" } else { "no" }),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => push_esc(out, s),
        Value::Object(o) => {
            out.push_str("<dl class=\"facts\">");
            for (k, v) in o.iter().filter(|(_, v)| !is_empty(v)) {
                out.push_str("<dt>");
                push_esc(out, k);
                out.push_str("</dt><dd>");
                value(out, v, depth + 1);
                out.push_str("</dd>");
            }
            out.push_str("</dl>");
        }
        Value::Array(items) => {
            let objects = items.iter().all(Value::is_object);
            if objects && !items.is_empty() {
                table(out, items, depth);
            } else {
                out.push_str("<ul>");
                for item in items.iter().take(MAX_ITEMS) {
                    out.push_str("<li>");
                    value(out, item, depth + 1);
                    out.push_str("</li>");
                }
                out.push_str("</ul>");
            }
            if items.len() > MAX_ITEMS {
                let _ = write!(out, "<p>{} more not shown</p>", items.len() - MAX_ITEMS);
            }
        }
    }
}

fn table(out: &mut String, items: &[Value], depth: usize) {
    let mut columns: Vec<&str> = Vec::new();
    for item in items.iter().take(MAX_ITEMS) {
        if let Value::Object(o) = item {
            for k in o.keys() {
                if columns.len() < MAX_COLUMNS && !columns.contains(&k.as_str()) {
                    columns.push(k);
                }
            }
        }
    }
    out.push_str("<div class=\"table-wrap\"><table><thead><tr>");
    for c in &columns {
        out.push_str("<th scope=\"col\">");
        push_esc(out, c);
        out.push_str("</th>");
    }
    out.push_str("</tr></thead><tbody>");
    for item in items.iter().take(MAX_ITEMS) {
        out.push_str("<tr>");
        for c in &columns {
            out.push_str("<td>");
            if let Some(v) = item.get(*c) {
                value(out, v, depth + 1);
            }
            out.push_str("</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_becomes_escaped_tables_and_lists() {
        let status = json!({"workflows": [
            {"name": "<script>w</script>", "schedule": "0 * * * *", "runs": [{"id": "r1", "phase": "Succeeded"}]},
            {"name": "b", "suspended": true}
        ], "empty": []});
        let html = render_status_page(
            "Workflows",
            Nav::Workflows,
            "/api/v1/workflows",
            &status,
            0,
            false,
        );
        assert_eq!(html.matches("<script").count(), 1, "{html}");
        assert!(html.contains("<th scope=\"col\">name</th><th scope=\"col\">schedule</th><th scope=\"col\">runs</th><th scope=\"col\">suspended</th>"));
        assert!(html.contains("<td>&lt;script&gt;w&lt;/script&gt;</td>"));
        assert!(html.contains("<td>Succeeded</td>"));
        assert!(!html.contains("<dt>empty</dt>"));
        assert!(html.contains("<a href=\"/workflows\" aria-current=\"page\">"));
    }

    #[test]
    fn depth_and_length_are_bounded() {
        let mut deep = json!("bottom");
        for _ in 0..50 {
            deep = json!({ "k": deep });
        }
        let html = render_status_page("x", Nav::Burst, "/x", &deep, 0, true);
        assert!(html.matches("<dl").count() <= MAX_DEPTH);
        let long = Value::Array((0..1000).map(|i| json!(i)).collect());
        let html = render_status_page("x", Nav::Burst, "/x", &long, 0, true);
        assert_eq!(html.matches("<li>").count(), MAX_ITEMS);
        assert!(html.contains("800 more not shown"));
    }
}
