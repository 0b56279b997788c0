// Roster import: upload -> preview (nothing saved) -> confirm (PUT the same bytes).
// Names are inserted with textContent only.
(function () {
  "use strict";
  var root = document.getElementById("roster");
  if (!root) { return; }
  var d = root.dataset;
  var form = document.getElementById("rosterform");
  var fileInput = document.getElementById("file");
  var errorBox = document.getElementById("roster-error");
  var preview = document.getElementById("preview");
  var pending = null; // {bytes, type, name}

  function typeOf(file) {
    var n = file.name.toLowerCase();
    if (n.endsWith(".xlsx")) { return "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"; }
    return "text/csv";
  }
  function send(method, url, p) {
    return fetch(url, {
      method: method, credentials: "same-origin", body: p.bytes,
      headers: { "Content-Type": p.type, "X-CSRF-Token": d.csrf, "X-Filename": encodeURIComponent(p.name).slice(0, 200), "Accept": "application/json" }
    }).then(function (r) { return r.json().then(function (j) { return { ok: r.ok, data: j }; }, function () { return { ok: r.ok, data: null }; }); },
            function () { return { ok: false, data: null }; });
  }
  function rejectText(r) {
    var key = "reject" + String(r.error || "").replace(/(^|_)([a-z])/g, function (m, s, c) { return c.toUpperCase(); });
    return d.msgLine.replace("{line}", r.line) + ": " + (d[key] || r.message || r.error);
  }
  function fail(res) {
    var msg = (res.data && res.data.error && res.data.error.message) || "";
    errorBox.textContent = d.msgFailed + (msg ? " (" + msg + ")" : "");
    errorBox.focus();
  }
  // The saved list replaces the "current list" below, so it never contradicts the
  // confirmation above it.
  function showCurrent(students) {
    var tbody = document.querySelector("#current-table tbody");
    tbody.textContent = "";
    students.forEach(function (s) {
      var tr = document.createElement("tr");
      [s.name, s.external_id || "", s.email || ""].forEach(function (v) {
        var td = document.createElement("td"); td.textContent = v; tr.appendChild(td);
      });
      tbody.appendChild(tr);
    });
    document.getElementById("current-count").textContent = String(students.length);
    document.getElementById("current-table").hidden = students.length === 0;
    document.getElementById("current-empty").hidden = students.length !== 0;
    document.getElementById("replace-warning").hidden = students.length === 0;
  }
  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    errorBox.textContent = "";
    document.getElementById("saved").hidden = true;
    var file = fileInput.files && fileInput.files[0];
    if (!file) { fileInput.focus(); return; }
    file.arrayBuffer().then(function (buf) {
      pending = { bytes: buf, type: typeOf(file), name: file.name };
      return send("POST", "/api/v1/classes/" + d.class + "/roster/preview", pending);
    }).then(function (res) {
      if (!res.ok) { preview.hidden = true; fail(res); return; }
      var tbody = document.querySelector("#preview-table tbody");
      tbody.textContent = "";
      res.data.students.forEach(function (s, i) {
        var tr = document.createElement("tr");
        [String(i + 1), s.name, s.external_id || "", s.email || ""].forEach(function (v) {
          var td = document.createElement("td"); td.textContent = v; tr.appendChild(td);
        });
        tbody.appendChild(tr);
      });
      var ul = document.getElementById("rejected");
      ul.textContent = "";
      res.data.rejected.forEach(function (r) {
        var li = document.createElement("li"); li.textContent = rejectText(r); ul.appendChild(li);
      });
      document.getElementById("rejected-box").hidden = res.data.rejected.length === 0;
      var summary = d.msgCount.replace("{count}", res.data.students.length);
      if (res.data.rejected.length) { summary += " " + d.msgRejected.replace("{count}", res.data.rejected.length); }
      document.getElementById("preview-summary").textContent = summary;
      document.getElementById("confirm-btn").disabled = res.data.students.length === 0;
      if (res.data.students.length === 0) { document.getElementById("preview-summary").textContent += " " + d.msgNoneOk; }
      preview.hidden = false;
      document.getElementById("preview-heading").focus();
    });
  });
  document.getElementById("cancel-btn").addEventListener("click", function () {
    preview.hidden = true; pending = null; fileInput.value = ""; fileInput.focus();
  });
  document.getElementById("confirm-btn").addEventListener("click", function () {
    if (!pending) { return; }
    var btn = this; btn.disabled = true;
    send("PUT", "/api/v1/classes/" + d.class + "/roster", pending).then(function (res) {
      btn.disabled = false;
      if (!res.ok) { fail(res); return; }
      preview.hidden = true;
      showCurrent(res.data.students);
      document.getElementById("saved").hidden = false;
      var msg = document.getElementById("saved-msg");
      msg.textContent = d.msgSaved.replace("{count}", res.data.students.length);
      msg.focus && msg.setAttribute("tabindex", "-1");
      msg.focus();
    });
  });
})();
