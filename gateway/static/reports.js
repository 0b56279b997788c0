// Reports from students and parents: drawn live in the control room (events passed on
// by control.js) and acted on from there or from the incidents page. Every text a
// reporter typed is inserted with textContent (never innerHTML).
(function () {
  "use strict";
  var box = document.getElementById("reports-box");
  if (!box) { return; }
  var d = box.dataset;
  var csrf = d.csrf || (document.getElementById("control") || {}).dataset.csrf || "";
  var open = new Map();  // report id -> report
  var fmt = new Intl.DateTimeFormat(document.body.dataset.lang === "en" ? "en-GB" : "vi-VN",
    { timeZone: document.body.dataset.tz || undefined, hour: "2-digit", minute: "2-digit" });
  function camel(prefix, s) {
    return prefix + String(s || "").replace(/(^|_)([a-z])/g, function (m, a, c) { return c.toUpperCase(); });
  }
  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) { e.textContent = text; }
    if (cls) { e.className = cls; }
    return e;
  }
  function say(text, bad) {
    var n = document.getElementById(bad ? "error" : "notice") || document.getElementById("reports-status");
    if (n) { n.textContent = text; }
  }
  function post(path, body) {
    return fetch(path, { method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body || {}) }).then(function (r) {
      return r.json().then(function (j) { if (!r.ok) { throw j; } return j; });
    });
  }
  function decided(id, res, text) {
    open.delete(id);
    var li = box.querySelector('li[data-report="' + CSS.escape(id) + '"]');
    if (li && li.dataset.static) {
      li.querySelector(".ops").remove();
      li.appendChild(el("span", text, "badge"));
    }
    if (res && res.incident) {
      var a = el("a", d.incidentLink, "incident-link");
      a.href = "/incidents/" + encodeURIComponent(res.incident.id);
      var n = document.getElementById("notice") || document.getElementById("reports-status");
      if (n) { n.textContent = text + " "; n.appendChild(a); }
    } else { say(text); }
    draw();
  }
  function ops(id) {
    var span = el("span", null, "ops");
    var go = el("button", d.toIncident, "small"); go.type = "button";
    go.addEventListener("click", function () {
      go.disabled = true;
      post("/api/v1/reports/" + encodeURIComponent(id) + "/incident").then(function (res) {
        decided(id, res, d.opened);
      }, function (e) { go.disabled = false; say(d.failed + " " + ((e && e.error && e.error.message) || ""), true); });
    });
    var no = el("button", d.dismiss, "secondary small"); no.type = "button";
    no.addEventListener("click", function () {
      var reason = window.prompt(d.dismissReason);
      if (!reason) { return; }
      post("/api/v1/reports/" + encodeURIComponent(id) + "/dismiss", { reason: reason }).then(function (res) {
        decided(id, res, d.dismissed);
      }, function (e) { say(d.failed + " " + ((e && e.error && e.error.message) || ""), true); });
    });
    span.appendChild(go); span.appendChild(no);
    return span;
  }
  function item(r) {
    var li = el("li", null, "person report");
    li.dataset.report = r.id;
    li.appendChild(el("strong", d[camel("category", r.category)] || r.category));
    li.appendChild(el("span", (r.role === "parent" ? d.byParent : d.byStudent) + " · " +
      fmt.format(new Date(Number(r.at) * 1000)), "meta"));
    if (r.text) { li.appendChild(el("p", r.text, "reporttext")); }
    li.appendChild(ops(r.id));
    return li;
  }
  function draw() {
    if (box.dataset.mode === "page") { return; }
    var ul = document.getElementById("reports");
    ul.textContent = "";
    var list = Array.from(open.values()).sort(function (a, b) { return b.at - a.at; });
    list.forEach(function (r) { ul.appendChild(item(r)); });
    document.getElementById("nreports").textContent = String(list.length);
    box.hidden = list.length === 0;
  }
  document.addEventListener("classguard:report", function (ev) {
    var m = ev.detail || {};
    if (m.type === "reports") { open.clear(); (m.reports || []).forEach(function (r) { open.set(r.id, r); }); }
    else if (m.type === "report" && m.report) { open.set(m.report.id, m.report); }
    else if (m.type === "report_decided" && m.report) { open.delete(m.report.id); }
    draw();
  });
  // The incidents page: the list is drawn by the server; only the buttons are added.
  box.querySelectorAll("li[data-report][data-open]").forEach(function (li) {
    li.dataset.static = "1";
    li.appendChild(ops(li.dataset.report));
  });
})();
