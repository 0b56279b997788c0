// Incidents: the report form (POST /api/v1/incidents), status changes (PATCH) and
// attachment uploads (multipart POST .../attachments). No inline script anywhere (CSP).
(function () {
  "use strict";

  // JSON or FormData through the shared helper of app.js.
  var call = window.ClassGuard.call;
  function apiError(res) { return (res && res.data && res.data.error) || {}; }
  function withDetail(text, err) { return err.message ? text + " (" + err.message + ")" : text; }
  // data-msg-field-student-ids -> dataset key "msgFieldStudentIds"
  function msgKey(prefix, name) {
    return prefix + name.split(/[_-]/).map(function (w) { return w.charAt(0).toUpperCase() + w.slice(1); }).join("");
  }
  function value(id) { return document.getElementById(id).value; }

  // --- the report form ---
  var form = document.getElementById("incident-form");
  if (form) {
    var fd = form.dataset;
    var csrf = form.querySelector("input[name=csrf_token]").value;
    var formError = document.getElementById("form-error");
    // "23/11/2026 07:30" (the class's wall clock, as the form shows it; ISO is accepted
    // too) -> "2026-11-23T07:30:00+07:00" (its offset)
    var pad = function (n) { return (String(n).length < 2 ? "0" : "") + n; };
    var toIso = function (value) {
      if (!value) { return ""; }
      var m = /^(\d{1,2})\/(\d{1,2})\/(\d{4})[ T](\d{1,2}):(\d{2})$/.exec(value.trim());
      if (m) { value = m[3] + "-" + pad(m[2]) + "-" + pad(m[1]) + "T" + pad(m[4]) + ":" + m[5]; }
      return (value.length === 16 ? value + ":00" : value) + fd.offset;
    };
    var clearErrors = function () {
      formError.textContent = "";
      form.querySelectorAll("[data-error-for]").forEach(function (p) { p.textContent = ""; });
      form.querySelectorAll("[aria-invalid]").forEach(function (x) { x.removeAttribute("aria-invalid"); });
    };
    var showError = function (res) {
      var err = apiError(res);
      var root = (err.field || "").split(/[.\[]/)[0];
      var box = root ? form.querySelector('[data-error-for="' + root + '"]') : null;
      var control = root ? form.querySelector('[data-field="' + root + '"]') : null;
      var text = (root && fd[msgKey("msgField", root)]) || fd.msgFailed;
      if (box) {
        box.textContent = withDetail(text, err);
        if (control) {
          control.setAttribute("aria-invalid", "true");
          var focusable = control.tagName === "FIELDSET" ? control.querySelector("input") : control;
          if (focusable) { focusable.focus(); }
        }
      } else {
        formError.textContent = withDetail(text, err);
        formError.focus();
      }
    };
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      clearErrors();
      var students = [];
      form.querySelectorAll("input[name=student_ids]:checked").forEach(function (c) {
        if (students.indexOf(c.value) < 0) { students.push(c.value); }
      });
      var visitors = [];
      form.querySelectorAll("input[name=visitor]:checked").forEach(function (c) {
        var v = {};
        if (c.dataset.device) { v.device = c.dataset.device; }
        if (c.dataset.ip) { v.ip = c.dataset.ip; }
        visitors.push(v);
      });
      var body = {
        class_id: fd["class"],
        title: value("inc-title"),
        description: value("inc-description"),
        since: toIso(value("inc-since")),
        until: toIso(value("inc-until")),
        student_ids: students,
        visitors: visitors
      };
      // The obvious mistakes are caught here (the API checks everything again and its
      // answer names the field the same way).
      var local = !body.title.trim() ? "title" : !body.since ? "since" : !body.until ? "until"
        : (Date.parse(body.until) <= Date.parse(body.since) ? "until" : null);
      if (local) { showError({ data: { error: { field: local } } }); return; }
      var btn = form.querySelector("button[type=submit]");
      btn.disabled = true;
      call("POST", "/api/v1/incidents", body, csrf).then(function (res) {
        btn.disabled = false;
        if (res.ok && res.data && res.data.id) {
          location.assign("/incidents/" + encodeURIComponent(res.data.id));
        } else {
          showError(res);
        }
      });
    });
  }

  // --- the detail page ---
  var root = document.getElementById("incident");
  if (!root) { return; }
  var d = root.dataset;
  var base = "/api/v1/incidents/" + encodeURIComponent(d.incident);
  var statusError = document.getElementById("status-error");
  root.querySelectorAll("button[data-status]").forEach(function (b) {
    b.addEventListener("click", function () {
      var status = b.dataset.status;
      var reasonBox = document.getElementById("status-reason");
      var reason = reasonBox ? reasonBox.value.trim() : "";
      if (!reason) {
        statusError.textContent = d.msgReason;
        if (reasonBox) { reasonBox.focus(); }
        return;
      }
      var confirmText = d[msgKey("msgConfirm", status)];
      if (confirmText && !window.confirm(confirmText)) { return; }
      b.disabled = true;
      statusError.textContent = "";
      call("PATCH", base, { status: status, reason: reason }, d.csrf).then(function (res) {
        b.disabled = false;
        if (res.ok) { location.reload(); return; }
        statusError.textContent = withDetail(d.msgFailed, apiError(res));
        statusError.focus();
      });
    });
  });

  var escError = document.getElementById("escalation-error");
  root.querySelectorAll("button[data-severity], button[data-acknowledge]").forEach(function (b) {
    b.addEventListener("click", function () {
      b.disabled = true;
      escError.textContent = "";
      var req = b.dataset.severity ?
        call("PATCH", base, { severity: b.dataset.severity }, d.csrf) :
        call("POST", base + "/acknowledge", {}, d.csrf);
      req.then(function (res) {
        b.disabled = false;
        if (res.ok) { location.reload(); return; }
        escError.textContent = withDetail(d.msgFailed, apiError(res));
        escError.focus();
      });
    });
  });

  var upload = document.getElementById("upload-form");
  if (upload) {
    var input = document.getElementById("upload-files");
    var upError = document.getElementById("upload-error");
    var upStatus = document.getElementById("upload-status");
    var fail = function (text) {
      upStatus.textContent = "";
      upError.textContent = text;
      input.setAttribute("aria-invalid", "true");
      upError.focus();
    };
    upload.addEventListener("submit", function (ev) {
      ev.preventDefault();
      upError.textContent = "";
      input.removeAttribute("aria-invalid");
      var files = Array.prototype.slice.call(input.files || []);
      if (!files.length) { fail(d.msgNoFile); return; }
      if (files.length > Number(d.maxFiles)) { fail(d.msgTooManyFiles); return; }
      var big = files.filter(function (f) { return f.size > Number(d.maxBytes); });
      if (big.length) { fail(big[0].name + ": " + d.msgFileTooLarge); return; }
      var body = new FormData();
      files.forEach(function (f) { body.append("file", f, f.name); });
      var btn = upload.querySelector("button[type=submit]");
      btn.disabled = true;
      upStatus.textContent = d.msgUploading;
      call("POST", base + "/attachments", body, upload.querySelector("input[name=csrf_token]").value)
        .then(function (res) {
          btn.disabled = false;
          if (res.ok) { location.reload(); return; }
          var err = apiError(res);
          var known = err.code ? d[msgKey("msgCode", err.code)] : null;
          fail(withDetail(known || d.msgFailed, err));
        });
    });
  }
})();
