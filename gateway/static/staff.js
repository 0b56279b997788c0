// Staff accounts: show a new or reset account's one-time password once; disable or enable.
(function () {
  "use strict";
  var root = document.getElementById("staff");
  if (!root || !window.ClassGuard) { return; }
  var d = root.dataset;
  var CG = window.ClassGuard;
  function showOtp(template, data) {
    var box = document.getElementById("otp");
    document.getElementById("otp-text").textContent = template.replace("{name}", data.user ? data.user.username : "");
    document.getElementById("otp-value").textContent = data.one_time_password || "";
    box.hidden = false;
    box.setAttribute("tabindex", "-1");
    box.focus();
  }
  root.querySelectorAll("form[data-otp]").forEach(function (form) {
    form.addEventListener("cg:done", function (ev) { showOtp(d.msgCreated, ev.detail || {}); });
  });
  var copyBtn = document.getElementById("otp-copy");
  copyBtn.addEventListener("click", function () { CG.copyText(document.getElementById("otp-value").textContent, copyBtn); });
  root.addEventListener("click", function (ev) {
    var r = ev.target.closest("button.reset");
    if (r) {
      if (!window.confirm(d.msgConfirmReset.replace("{name}", r.dataset.user))) { return; }
      CG.call("POST", "/api/v1/admin/users/" + encodeURIComponent(r.dataset.user) + "/password-reset", null, d.csrf)
        .then(function (res) {
          if (res.ok) { showOtp(d.msgReset, res.data || {}); }
          else { document.getElementById("staff-error").textContent = d.msgFailed; }
        });
      return;
    }
    var b = ev.target.closest("button.toggle");
    if (!b) { return; }
    if (b.dataset.op === "disable" && !window.confirm(d.msgConfirmDisable.replace("{name}", b.dataset.user))) { return; }
    CG.call("POST", "/api/v1/admin/users/" + encodeURIComponent(b.dataset.user) + "/" + b.dataset.op, null, d.csrf)
      .then(function (res) {
        if (res.ok) { location.reload(); }
        else { document.getElementById("staff-error").textContent = d.msgFailed; }
      });
  });
})();
