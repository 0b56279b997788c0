// Waiting room: follow the ticket over a WebSocket, reconnect after network drops,
// go to the class as soon as the teacher (or the policy) admits.
(function () {
  "use strict";
  var box = document.getElementById("wait");
  if (!box) { return; }
  var d = box.dataset;
  var statusEl = document.getElementById("status");
  var heading = document.getElementById("heading");
  var spinner = document.getElementById("spinner");
  var enter = document.getElementById("enter");
  var conn = document.getElementById("conn");
  var delay = 1000;
  var finished = false;
  var ws = null;
  var timer = null;

  function reasonText(reason) {
    var key = "reason" + (reason || "").replace(/(^|_)([a-z])/g, function (m, s, c) { return c.toUpperCase(); });
    return d[key] || reason || "";
  }
  function finish(kind, text) {
    finished = true;
    spinner.classList.add("hidden");
    conn.textContent = "";
    box.classList.remove("waiting");
    box.classList.add(kind);
    heading.textContent = kind === "admitted" ? d.headingAdmitted : d.headingDenied;
    statusEl.textContent = text;
    heading.focus();
  }
  function connect() {
    if (finished) { return; }
    timer = null;
    var proto = location.protocol === "https:" ? "wss://" : "ws://";
    ws = new WebSocket(proto + location.host + d.ws);
    ws.onopen = function () { delay = 1000; conn.textContent = ""; };
    ws.onmessage = function (ev) {
      var msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      if (msg.type === "waiting") {
        statusEl.textContent = msg.reason && msg.reason !== "awaiting_host" ? reasonText(msg.reason) : d.msgWaiting;
      } else if (msg.type === "admitted" && msg.redirect) {
        finish("admitted", d.msgAdmitted);
        enter.href = msg.redirect;
        enter.classList.remove("hidden");
        location.assign(msg.redirect);
      } else if (msg.type === "denied" || msg.type === "removed") {
        finish("denied", reasonText(msg.reason));
      }
    };
    ws.onclose = function (ev) {
      if (finished) { return; }
      if (ev.code === 1008 || ev.code === 4403) { finish("denied", reasonText("device_mismatch")); return; }
      conn.textContent = navigator.onLine === false ? d.msgOffline : d.msgReconnecting;
      timer = setTimeout(connect, delay);
      delay = Math.min(delay * 2, 15000);
    };
  }
  // Back online: try at once instead of waiting for the back-off.
  window.addEventListener("online", function () {
    if (!finished && timer) { clearTimeout(timer); delay = 1000; connect(); }
  });
  window.addEventListener("offline", function () { if (!finished) { conn.textContent = d.msgOffline; } });
  box.classList.add("waiting");
  connect();
})();
