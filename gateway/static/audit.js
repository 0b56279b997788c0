// Audit explorer: "verify now" checks the whole log and shows the result here.
(function () {
  "use strict";
  var box = document.getElementById("integrity");
  var btn = document.getElementById("verify-now");
  if (!box || !btn) { return; }
  var d = box.dataset;
  var out = document.getElementById("verify-result");
  btn.addEventListener("click", function () {
    btn.disabled = true;
    out.className = "";
    out.textContent = d.msgRunning;
    fetch("/api/v1/audit/verify", { method: "POST", credentials: "same-origin",
      headers: { "X-CSRF-Token": d.csrf, "Accept": "application/json" } })
      .then(function (r) { return r.json().then(function (j) { return { ok: r.ok, data: j }; }); })
      .then(function (res) {
        btn.disabled = false;
        if (!res.ok) { out.className = "error"; out.textContent = d.msgFailed; return; }
        var r = res.data;
        out.className = r.ok ? "ok" : "error";
        out.textContent = (r.ok ? d.msgOk : d.msgBad).replace("{size}", r.size)
          .replace("{message}", r.message || r.fault || "").replace("{index}", r.first_bad_index === null ? "?" : r.first_bad_index);
      }, function () { btn.disabled = false; out.className = "error"; out.textContent = d.msgFailed; });
  });
})();
