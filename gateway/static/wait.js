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
  // Application-level heartbeat: the page says "ping" every PING_MS; a connection that
  // answers nothing for STALE_MS is dropped and opened again (a silent network).
  var PING_MS = 20000, STALE_MS = 45000;
  var lastHeard = 0, pinger = null;

  function reasonText(reason) {
    var key = "reason" + (reason || "").replace(/(^|_)([a-z])/g, function (m, s, c) { return c.toUpperCase(); });
    return d[key] || reason || "";
  }
  function adviceText(reason) {
    var key = "advice" + (reason || "").replace(/(^|_)([a-z])/g, function (m, s, c) { return c.toUpperCase(); });
    return d[key] || d.adviceDefault || "";
  }
  function finish(kind, text, reason) {
    finished = true;
    spinner.classList.add("hidden");
    conn.textContent = "";
    box.classList.remove("waiting");
    box.classList.add(kind);
    heading.textContent = kind === "admitted" ? d.headingAdmitted : d.headingDenied;
    statusEl.textContent = text;
    // "Keep this page open" no longer applies once the answer is in.
    document.getElementById("keep-open").hidden = true;
    if (kind !== "admitted") {
      var advice = document.getElementById("advice");
      advice.textContent = adviceText(reason);
      advice.hidden = !advice.textContent;
    }
    heading.focus();
  }
  function connect() {
    if (finished) { return; }
    timer = null;
    var proto = location.protocol === "https:" ? "wss://" : "ws://";
    ws = new WebSocket(proto + location.host + d.ws);
    ws.onopen = function () {
      delay = 1000; conn.textContent = ""; lastHeard = Date.now();
      clearInterval(pinger);
      pinger = setInterval(heartbeat, PING_MS);
    };
    ws.onmessage = function (ev) {
      lastHeard = Date.now();
      if (ev.data === "pong") { return; }
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
        finish("denied", reasonText(msg.reason), msg.reason);
      }
    };
    ws.onclose = function (ev) {
      clearInterval(pinger);
      if (finished) { return; }
      if (ev.code === 1008 || ev.code === 4403) { finish("denied", reasonText("device_mismatch"), "device_mismatch"); return; }
      conn.textContent = navigator.onLine === false ? d.msgOffline : d.msgReconnecting;
      timer = setTimeout(connect, delay);
      delay = Math.min(delay * 2, 15000);
    };
  }
  function heartbeat() {
    if (!ws || ws.readyState !== WebSocket.OPEN) { return; }
    if (Date.now() - lastHeard > STALE_MS) {
      // A dead connection may take minutes to report its close: give up on it now.
      var dead = ws;
      dead.onclose = null; dead.onmessage = null;
      try { dead.close(); } catch (e) { /* already closing */ }
      clearInterval(pinger);
      conn.textContent = d.msgReconnecting;
      connect();
      return;
    }
    ws.send("ping");
  }
  // Back online: try at once instead of waiting for the back-off.
  window.addEventListener("online", function () {
    if (!finished && timer) { clearTimeout(timer); delay = 1000; connect(); }
  });
  window.addEventListener("offline", function () { if (!finished) { conn.textContent = d.msgOffline; } });
  box.classList.add("waiting");
  connect();
})();
