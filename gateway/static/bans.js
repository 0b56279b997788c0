// Bans: add an org ban (address or network), set or clear an expiry, lift.
(function () {
  "use strict";
  var root = document.getElementById("bans");
  if (!root) { return; }
  var d = root.dataset;
  var err = document.getElementById("bans-error");
  function call(method, url, body) {
    return fetch(url, { method: method, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
      headers: { "Content-Type": "application/json", "X-CSRF-Token": d.csrf, "Accept": "application/json" } })
      .then(function (r) { return r.text().then(function (t) { var j = null; try { j = JSON.parse(t); } catch (e) { j = null; } return { ok: r.ok, data: j }; }); },
            function () { return { ok: false, data: null }; });
  }
  function failed(res) {
    var m = res.data && res.data.error ? " (" + res.data.error.message + ")" : "";
    err.textContent = d.msgFailed + m;
  }
  function base(box) {
    return (box.dataset.kind === "org" ? "/api/v1/orgs/" : "/api/v1/classes/") +
      encodeURIComponent(box.dataset.where) + "/bans/" + encodeURIComponent(box.dataset.key);
  }
  root.addEventListener("click", function (ev) {
    var b = ev.target.closest("button");
    if (!b) { return; }
    var box = b.closest(".banops");
    if (!box) { return; }
    if (b.classList.contains("lift")) {
      if (!window.confirm(d.msgConfirmLift)) { return; }
      call("DELETE", base(box)).then(function (res) { if (res.ok) { location.reload(); } else { failed(res); } });
    } else if (b.classList.contains("setexp")) {
      var v = box.querySelector("select").value;
      call("PATCH", base(box), { expires_in_s: v ? Number(v) : null })
        .then(function (res) { if (res.ok) { location.reload(); } else { failed(res); } });
    }
  });
  var form = document.getElementById("addban");
  if (form) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var body = { reason: form.reason.value.trim() };
      body[form.kind.value] = form.value.value.trim();
      var exp = form.querySelector("select.expiry").value;
      if (exp) { body.expires_in_s = Number(exp); }
      call("POST", "/api/v1/orgs/" + encodeURIComponent(form.org.value) + "/bans", body)
        .then(function (res) { if (res.ok) { location.reload(); } else { failed(res); } });
    });
  }
})();
