// "Class not open yet": count down to the opening time, then try the link again.
(function () {
  "use strict";
  var box = document.getElementById("denied");
  var out = document.getElementById("countdown");
  if (!box || !out || !box.dataset.opensAt) { return; }
  var opens = Date.parse(box.dataset.opensAt);
  if (isNaN(opens)) { return; }
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function tick() {
    var left = Math.round((opens - Date.now()) / 1000);
    if (left <= 0) {
      out.textContent = box.dataset.msgNow;
      // A little jitter so a whole class does not knock in the same second.
      setTimeout(function () { location.reload(); }, 1000 + Math.random() * 4000);
      return;
    }
    var h = Math.floor(left / 3600), m = Math.floor((left % 3600) / 60), s = left % 60;
    out.textContent = box.dataset.msgLeft.replace("{time}", (h ? h + ":" + pad(m) : String(m)) + ":" + pad(s));
    setTimeout(tick, 1000);
  }
  tick();
})();
