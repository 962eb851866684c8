//! The daemon's web UI, as pure functions from status records to HTML.
//!
//! Every page is rendered on the server from the records the status API already serves (the
//! fleet status, rollout records and their events, the drift report, the workflows, backups
//! and burst status JSON); the daemon (`daemon/src/ui.rs`) gathers them into the view types
//! of this crate and serves the result. The little JavaScript there is ([`APP_JS`]) listens
//! to the daemon's event stream and re-fetches the page's live region (the same page with
//! `?fragment=1`), so a page never reloads.
//!
//! Every value that reaches a page goes through [`esc`] (names come from Git and are
//! attacker-controlled); the only unescaped text is this crate's own markup. Nothing here
//! knows about credentials: the API token lives in the browser's sessionStorage and is sent
//! by the page's script only, never rendered.

mod cluster;
mod fleet;
mod generic;
mod placement;

pub use cluster::{ClusterPlacement, ClusterView, render_cluster};
pub use fleet::{
    Cell, CellState, ClusterRow, FleetQuery, FleetView, PlacementColumn, Rejected, render_fleet,
};
pub use generic::render_status_page;
pub use placement::{PlacementView, render_placement};

use std::fmt::Write as _;

/// The stylesheet served at `/ui/assets/app.css`.
pub const APP_CSS: &str = include_str!("../assets/app.css");
/// The script served at `/ui/assets/app.js`.
pub const APP_JS: &str = include_str!("../assets/app.js");

/// Escapes text for element content and quoted attribute values: `& < > " '` (the one escaper
/// of flotilla's HTML, shared with the drift reports and the PR review).
pub use flotilla_reconciler::report::{esc, push_esc};

/// `text` for a URL path segment or query value: everything but unreserved characters
/// percent-encoded (then still escaped for the attribute by the caller's [`esc`]).
pub fn url_part(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The first 12 characters of a commit or manifest hash.
pub fn short(id: &str) -> &str {
    flotilla_reconciler::rollout::model::short_id(id)
}

/// Which top-level page a page belongs to (the navigation marks it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Fleet,
    Workflows,
    Backups,
    Burst,
}

/// What the page's script needs to know: which events concern it.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Refresh only on events of this placement (and fleet-wide ones).
    pub placement: Option<String>,
    /// Refresh only on events of this cluster (and fleet-wide ones).
    pub cluster: Option<String>,
    /// The event bus's newest `seq` when the page was rendered: the script's stream starts
    /// after it, so nothing falls between the page and its first update.
    pub seq: u64,
}

/// A whole page around `live` (the region the script re-fetches), or only `live` when
/// `fragment` is set.
pub fn page(
    title: &str,
    nav: Option<Nav>,
    scope: &Scope,
    header: &str,
    live: String,
    fragment: bool,
) -> String {
    if fragment {
        return live;
    }
    let mut out = String::with_capacity(live.len() + 4096);
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    out.push_str("<meta name=\"color-scheme\" content=\"light dark\">\n");
    out.push_str("<meta name=\"referrer\" content=\"no-referrer\">\n<title>");
    push_esc(&mut out, title);
    out.push_str(" · flotilla</title>\n<link rel=\"stylesheet\" href=\"/ui/assets/app.css\">\n");
    out.push_str("<script src=\"/ui/assets/app.js\" defer></script>\n</head>\n<body");
    if let Some(p) = &scope.placement {
        out.push_str(" data-placement=\"");
        push_esc(&mut out, p);
        out.push('"');
    }
    if let Some(c) = &scope.cluster {
        out.push_str(" data-cluster=\"");
        push_esc(&mut out, c);
        out.push('"');
    }
    let _ = write!(out, " data-seq=\"{}\"", scope.seq);
    out.push_str(">\n<a class=\"skip\" href=\"#main\">Skip to content</a>\n<header class=\"top\">\n<nav aria-label=\"Pages\"><ul>\n");
    for (item, href, label) in [
        (Nav::Fleet, "/", "Fleet"),
        (Nav::Workflows, "/workflows", "Workflows"),
        (Nav::Backups, "/backups", "Backups"),
        (Nav::Burst, "/burst", "Burst"),
    ] {
        let current = if nav == Some(item) {
            " aria-current=\"page\""
        } else {
            ""
        };
        let _ = writeln!(out, "<li><a href=\"{href}\"{current}>{label}</a></li>");
    }
    out.push_str("</ul></nav>\n<p class=\"conn\" id=\"conn\" role=\"status\" aria-live=\"polite\">connecting to live updates…</p>\n</header>\n<main id=\"main\">\n");
    out.push_str(header);
    out.push_str("<div id=\"live\" aria-live=\"off\">\n");
    out.push_str(&live);
    out.push_str("</div>\n<section aria-labelledby=\"log-h\" class=\"log\">\n<h2 id=\"log-h\">Live events</h2>\n<ol id=\"events\" reversed></ol>\n</section>\n</main>\n</body>\n</html>\n");
    out
}

/// The token form and result line of pages with control buttons (the token stays in the
/// browser's sessionStorage; see `assets/app.js`).
pub(crate) fn token_form(out: &mut String) {
    out.push_str(
        "<details class=\"token\"><summary>API token for actions</summary>\n\
<form id=\"token-form\"><label for=\"token\">API token (kept in this tab's sessionStorage only)</label>\n\
<input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\" spellcheck=\"false\">\n\
<button type=\"submit\">Use token</button> <button type=\"button\" id=\"token-forget\">Forget token</button></form>\n\
<p id=\"token-state\" role=\"status\"></p></details>\n\
<p id=\"action-result\" role=\"status\" aria-live=\"polite\"></p>\n",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_attribute_quotes() {
        assert_eq!(
            esc(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(url_part("a b/<c>"), "a%20b%2F%3Cc%3E");
    }

    #[test]
    fn a_fragment_is_only_the_live_region() {
        let scope = Scope {
            placement: Some("we\"b".into()),
            cluster: None,
            seq: 7,
        };
        let whole = page("t<", None, &scope, "<h1>x</h1>", "LIVE".into(), false);
        assert!(whole.contains("<title>t&lt; · flotilla</title>"));
        assert!(whole.contains("data-placement=\"we&quot;b\" data-seq=\"7\">"));
        assert!(whole.contains("<div id=\"live\" aria-live=\"off\">\nLIVE</div>"));
        assert_eq!(page("t", None, &scope, "", "LIVE".into(), true), "LIVE");
    }
}
