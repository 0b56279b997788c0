// Links page: copy a code or link, issue missing links, reissue one student's link.
(function () {
  "use strict";
  var root = document.getElementById("links");
  if (!root) { return; }
  var d = root.dataset;
  var status = document.getElementById("links-status");
  var err = document.getElementById("links-error");
  function post(body) {
    return fetch("/api/v1/classes/" + d.class + "/links", {
      method: "POST", credentials: "same-origin", body: JSON.stringify(body),
      headers: { "Content-Type": "application/json", "X-CSRF-Token": d.csrf, "Accept": "application/json" }
    }).then(function (r) { return r.ok; }, function () { return false; });
  }
  function copy(text, button) {
    function done() {
      status.textContent = d.msgCopied;
      var old = button.textContent; button.textContent = "✔ " + old;
      setTimeout(function () { button.textContent = old; }, 1500);
    }
    function fallback() {
      var ta = document.createElement("textarea");
      ta.value = text; ta.className = "sr-only"; document.body.appendChild(ta); ta.select();
      try { document.execCommand("copy"); } catch (e) { /* ignore */ }
      document.body.removeChild(ta); done();
    }
    if (navigator.clipboard && window.isSecureContext) { navigator.clipboard.writeText(text).then(done, fallback); }
    else { fallback(); }
  }
  root.addEventListener("click", function (ev) {
    var b = ev.target.closest("button");
    if (!b) { return; }
    if (b.classList.contains("copy")) { copy(b.dataset.copy, b); }
    else if (b.classList.contains("reissue")) {
      if (!window.confirm(d.msgReissueConfirm)) { return; }
      b.disabled = true;
      post({ student_ids: [b.dataset.student] }).then(function (ok) {
        if (ok) { location.reload(); } else { b.disabled = false; err.textContent = d.msgFailed; }
      });
    } else if (b.id === "issue-all") {
      b.disabled = true;
      // Only students without a link: reissuing would revoke links already handed out.
      fetch("/api/v1/classes/" + d.class + "/roster", { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (r) { return r.json(); })
        .then(function (roster) {
          var have = {};
          document.querySelectorAll(".linkcard").forEach(function (c) { have[c.dataset.student] = true; });
          var ids = roster.students.map(function (s) { return s.id; }).filter(function (id) { return !have[id]; });
          return post({ student_ids: ids });
        })
        .then(function (ok) { if (ok) { location.reload(); } else { b.disabled = false; err.textContent = d.msgFailed; } },
              function () { b.disabled = false; err.textContent = d.msgFailed; });
    }
  });
})();
