// flotilla UI: live updates over server-sent events, countdowns, and the rollout buttons.
// No framework; bounded state (the event list keeps MAX_LOG items; one refresh in flight).
(function () {
  "use strict";
  var MAX_LOG = 100;
  var TOKEN_KEY = "flotilla-api-token";
  var live = document.getElementById("live");
  var log = document.getElementById("events");
  var conn = document.getElementById("conn");
  var body = document.body;
  var placement = body.getAttribute("data-placement");
  var cluster = body.getAttribute("data-cluster");
  var inflight = false, again = false;

  function fragmentUrl() {
    var u = new URL(window.location.href);
    u.searchParams.set("fragment", "1");
    u.hash = "";
    return u.toString();
  }

  // Replaces the live region with the server's fragment (one request at a time; events
  // arriving meanwhile cause exactly one more).
  function refresh() {
    if (!live) { return; }
    if (inflight) { again = true; return; }
    inflight = true;
    fetch(fragmentUrl(), { headers: { "Accept": "text/html" }, cache: "no-store" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html !== null) {
          var focused = document.activeElement && document.activeElement.id;
          live.innerHTML = html;
          if (focused) { var el = document.getElementById(focused); if (el) { el.focus(); } }
          tick();
        }
      })
      .catch(function () {})
      .then(function () {
        inflight = false;
        if (again) { again = false; refresh(); }
      });
  }

  function concerns(e) {
    if (placement && e.placement && e.placement !== placement) { return false; }
    if (cluster && e.cluster && e.cluster !== cluster) { return false; }
    return true;
  }

  function remember(e) {
    if (!log) { return; }
    var li = document.createElement("li");
    // A step says which one (the rollout event kind or the run phase), not just "rollout-step".
    var what = (e.trigger === "rollout-step" || e.trigger === "workflow-run") && e.kind ? e.kind : e.trigger;
    var parts = [e.at, what, e.placement, e.cluster, e.message].filter(function (x) { return x; });
    li.textContent = parts.join(" · ");
    log.insertBefore(li, log.firstChild);
    while (log.children.length > MAX_LOG) { log.removeChild(log.lastChild); }
  }

  if (window.EventSource) {
    var es = new EventSource("/api/v1/events/stream?after=" + encodeURIComponent(body.getAttribute("data-seq") || "0"));
    es.onopen = function () { if (conn) { conn.textContent = "live"; } };
    es.onerror = function () { if (conn) { conn.textContent = "reconnecting to live updates…"; } };
    es.onmessage = function (m) {
      var e;
      try { e = JSON.parse(m.data); } catch (_) { return; }
      remember(e);
      if (concerns(e)) { refresh(); }
    };
    // Events were missed (the reader fell behind): redraw from the server.
    es.addEventListener("lagged", refresh);
    // The daemon is draining: it closes the stream; the browser reconnects to the next one.
    es.addEventListener("draining", function () { if (conn) { conn.textContent = "daemon draining"; } });
  } else if (conn) {
    conn.textContent = "live updates need EventSource";
  }

  // Countdowns: <time data-until="RFC 3339">.
  function tick() {
    var now = Date.now();
    var els = document.querySelectorAll("time[data-until]");
    for (var i = 0; i < els.length; i++) {
      var until = Date.parse(els[i].getAttribute("data-until"));
      if (isNaN(until)) { continue; }
      var s = Math.max(0, Math.round((until - now) / 1000));
      els[i].textContent = s > 0 ? s + " s left" : "now";
    }
  }
  tick();
  window.setInterval(tick, 1000);

  // The API token: pasted once, kept in this tab's sessionStorage, sent as a bearer token by
  // the buttons below (no cookie, so no cross-site request can carry it).
  var form = document.getElementById("token-form");
  var state = document.getElementById("token-state");
  function showToken() {
    if (state) {
      state.textContent = sessionStorage.getItem(TOKEN_KEY) ? "A token is set for this tab." : "No token set: actions will be refused.";
    }
  }
  if (form) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var input = document.getElementById("token");
      if (input && input.value) { sessionStorage.setItem(TOKEN_KEY, input.value); input.value = ""; }
      showToken();
    });
    var forget = document.getElementById("token-forget");
    if (forget) { forget.addEventListener("click", function () { sessionStorage.removeItem(TOKEN_KEY); showToken(); }); }
    showToken();
  }
  var result = document.getElementById("action-result");
  document.addEventListener("click", function (ev) {
    var b = ev.target.closest && ev.target.closest("button[data-action]");
    if (!b) { return; }
    var headers = { "Content-Type": "application/json" };
    var token = sessionStorage.getItem(TOKEN_KEY);
    if (token) { headers["Authorization"] = "Bearer " + token; }
    b.disabled = true;
    fetch(b.getAttribute("data-url"), { method: "POST", headers: headers, body: "{}", cache: "no-store" })
      .then(function (r) {
        return r.json().catch(function () { return {}; }).then(function (j) {
          if (result) {
            result.textContent = (r.ok ? "Done: " : "Refused (" + r.status + "): ") + (j.message || j.error || "");
            result.setAttribute("data-status", String(r.status));
          }
          refresh();
        });
      })
      .catch(function (e) { if (result) { result.textContent = "Failed: " + e; } })
      .then(function () { b.disabled = false; });
  });
})();
