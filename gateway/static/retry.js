// A page shown while the service is briefly unavailable: count down, then open the same
// link again by itself (the student need not do anything). Each wait is longer, with
// jitter, so a whole class does not come back in the same second.
(function () {
  "use strict";
  var box = document.getElementById("retry");
  if (!box) { return; }
  var base = parseInt(box.dataset.retryS, 10) || 10;
  var tries = parseInt(sessionStorage.getItem("cg_retry") || "0", 10);
  var wait = Math.min(base * Math.pow(1.5, tries), 60) + Math.random() * 5;
  var until = Date.now() + wait * 1000;
  function tick() {
    var left = Math.ceil((until - Date.now()) / 1000);
    if (left <= 0) {
      box.textContent = box.dataset.msgNow;
      sessionStorage.setItem("cg_retry", String(tries + 1));
      location.reload();
      return;
    }
    box.textContent = box.dataset.msgLeft.replace("{s}", String(left));
    setTimeout(tick, 1000);
  }
  tick();
})();
