// Shared helpers for staff pages: JSON calls with the CSRF header, forms that post
// JSON to the API (form[data-api]), copy buttons. No inline script anywhere (CSP).
(function () {
  "use strict";
  function csrfOf(el) {
    var f = el && el.querySelector ? el.querySelector("input[name=csrf_token]") : null;
    if (f) { return f.value; }
    var any = document.querySelector("[data-csrf]");
    return any ? any.dataset.csrf : "";
  }
  // Sends JSON, FormData (multipart; the browser writes the boundary) or raw bytes with
  // a content type; resolves {ok, status, data}.
  function call(method, url, body, csrf, contentType, extraHeaders) {
    var headers = { "X-CSRF-Token": csrf || csrfOf(document), "Accept": "application/json" };
    var payload;
    if (body !== undefined && body !== null) {
      if (body instanceof FormData) { payload = body; }
      else if (contentType) { headers["Content-Type"] = contentType; payload = body; }
      else { headers["Content-Type"] = "application/json"; payload = JSON.stringify(body); }
    }
    Object.keys(extraHeaders || {}).forEach(function (k) { headers[k] = extraHeaders[k]; });
    return fetch(url, { method: method, headers: headers, body: payload, credentials: "same-origin" })
      .then(function (r) {
        return r.text().then(function (text) {
          var data = null;
          try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
          if (r.status === 403 && data && data.error && data.error.code === "step_up_required") {
            // the action needs a recent second factor: prove it, then come back here
            location.assign("/account/verify?next=" + encodeURIComponent(location.pathname + location.search));
          }
          return { ok: r.ok, status: r.status, data: data };
        });
      }, function () { return { ok: false, status: 0, data: null }; });
  }
  function setPath(obj, path, value) {
    var parts = path.split(".");
    var o = obj;
    for (var i = 0; i < parts.length - 1; i++) { o[parts[i]] = o[parts[i]] || {}; o = o[parts[i]]; }
    o[parts[parts.length - 1]] = value;
  }
  // Named controls -> nested object ("policy.capacity" -> {policy: {capacity}}).
  // Empty values are left out; data-int makes a number; hidden containers are skipped.
  function serialize(form, skip) {
    var out = {};
    Array.prototype.forEach.call(form.elements, function (el) {
      if (!el.name || el.disabled || el.name === "csrf_token" || (skip && skip.indexOf(el.name) >= 0)) { return; }
      if (el.closest("[hidden]")) { return; }
      if ((el.type === "checkbox" || el.type === "radio") && !el.checked) { return; }
      var v = el.value;
      if (v === "") { return; }
      if (el.dataset.int) { var n = Number(v); v = (String(n) === v.trim()) ? n : v; }
      if (el.dataset.bool) { v = v === "true" ? true : v === "false" ? false : v; }
      setPath(out, el.name, v);
    });
    return out;
  }
  function labelFor(form, field) {
    if (!field) { return null; }
    var el = form.querySelector('[data-field="' + field + '"]');
    if (!el) { return null; }
    var lab = el.id ? form.querySelector('label[for="' + el.id + '"]') : null;
    if (!lab && el.tagName === "FIELDSET") { lab = el.querySelector("legend"); }
    return { el: el, text: lab ? lab.textContent.trim() : field };
  }
  function showError(form, res) {
    var box = form.querySelector(".error");
    Array.prototype.forEach.call(form.querySelectorAll("[aria-invalid]"), function (x) { x.removeAttribute("aria-invalid"); });
    var err = (res && res.data && res.data.error) || {};
    var msg = err.message || (document.body.dataset.lang === "en" ? "Something went wrong." : "Đã có lỗi xảy ra.");
    var target = labelFor(form, err.field);
    if (target) {
      msg = target.text + ": " + msg;
      target.el.setAttribute("aria-invalid", "true");
    }
    if (box) { box.textContent = msg; box.focus(); }
    if (target && target.el.focus && target.el.tagName !== "FIELDSET") { target.el.focus(); }
  }
  function bindApiForm(form) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) { return; }
      var btn = form.querySelector("button[type=submit]");
      if (btn) { btn.disabled = true; }
      var body = form.dataset.body === "none" ? null : serialize(form);
      var flat = form.dataset.flatten;
      if (body && flat && body[flat]) {
        Object.keys(body[flat]).forEach(function (k) { body[k] = body[flat][k]; });
        delete body[flat];
      }
      call(form.dataset.method || "POST", form.dataset.api, body, csrfOf(form)).then(function (res) {
        if (btn) { btn.disabled = false; }
        if (!res.ok) { showError(form, res); return; }
        var box = form.querySelector(".error"); if (box) { box.textContent = ""; }
        form.dispatchEvent(new CustomEvent("cg:done", { detail: res.data }));
        if (form.dataset.next) {
          location.assign(form.dataset.next.replace("{id}", encodeURIComponent((res.data && res.data.id) || "")));
        } else if (form.dataset.reload) {
          location.reload();
        } else if (form.dataset.ok) {
          var ok = form.querySelector(".ok"); if (ok) { ok.textContent = form.dataset.ok; }
        }
      });
    });
  }
  function copyText(text, button, doneMsg) {
    function done() {
      if (!button) { return; }
      var old = button.textContent;
      button.textContent = doneMsg || "✔";
      setTimeout(function () { button.textContent = old; }, 1500);
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { fallback(); });
    } else { fallback(); }
    function fallback() {
      var ta = document.createElement("textarea");
      ta.value = text; ta.setAttribute("readonly", ""); ta.className = "sr-only";
      document.body.appendChild(ta); ta.select();
      try { document.execCommand("copy"); } catch (e) { /* nothing more to try */ }
      document.body.removeChild(ta); done();
    }
  }
  window.ClassGuard = { call: call, serialize: serialize, showError: showError, copyText: copyText, csrfOf: csrfOf };
  document.querySelectorAll("form[data-api]").forEach(bindApiForm);
})();
