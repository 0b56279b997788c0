// Live control room: render the class state and its events, send host actions over
// the WebSocket, reconnect by itself. Deny and ban wait a few seconds with an Undo.
// Every name is inserted with textContent (never innerHTML).
(function () {
  "use strict";
  var root = document.getElementById("control");
  if (!root) { return; }
  var d = root.dataset;
  var classId = d.class;
  var undoMs = (Number(d.undoSeconds) || 5) * 1000;
  var waiting = new Map();   // ticket -> item
  var admitted = new Map();  // student_id -> item
  var alerts = [];
  var bans = [];
  var pending = new Map();   // ticket or student id -> {timer, label, item}
  var resets = new Map();    // student id -> name, until the reset's result arrives
  var queue = [];            // actions typed while disconnected
  var ws = null, delay = 1000, seq = 0, locked = false, ended = false, hostPresent = true;
  var fmt = new Intl.DateTimeFormat(d.lang === "en" ? "en-GB" : "vi-VN",
    { timeZone: d.tz || document.body.dataset.tz, hour: "2-digit", minute: "2-digit", second: "2-digit" });

  function camel(prefix, s) {
    return prefix + String(s || "").replace(/(^|_)([a-z])/g, function (m, a, c) { return c.toUpperCase(); });
  }
  function msg(k) { return d[camel("msg", k)] || k; }
  function when(ts) { if (!ts) { return ""; } var n = Number(ts); if (n > 1e11) { n = n / 1000; } return fmt.format(new Date(n * 1000)); }
  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) { e.textContent = text; }
    if (cls) { e.className = cls; }
    return e;
  }
  function label(action) { return d[camel("action", action)] || action; }
  function button(action, payload, cls, who) {
    var b = el("button", label(action), cls === undefined ? "secondary small" : cls);
    b.type = "button";
    if (who) { b.setAttribute("aria-label", label(action) + ": " + who); }
    b.addEventListener("click", function () {
      if (action === "deny" || action === "ban" || action === "revoke_link") { later(action, payload, who); }
      else if (action === "reset_device") { resets.set(payload.student_id, who); send(Object.assign({ action: action }, payload)); }
      else { send(Object.assign({ action: action }, payload)); }
    });
    return b;
  }
  // --- undo: the action is sent only after a few seconds ---------------------------
  function later(action, payload, who) {
    var key = payload.ticket || payload.student_id;
    if (pending.has(key)) { return; }
    var text = msg("undo_" + action).replace("{name}", who || "?");
    var entry = { text: text, timer: setTimeout(function () {
      pending.delete(key); renderUndo(); send(Object.assign({ action: action }, payload)); render();
    }, undoMs) };
    pending.set(key, entry);
    renderUndo(); render();
    var btn = document.querySelector('#undo li[data-key="' + CSS.escape(key) + '"] button');
    if (btn) { btn.focus(); }
  }
  function renderUndo() {
    var box = document.getElementById("undo");
    var list = document.getElementById("undo-text");
    list.textContent = "";
    var ul = el("ul", null, "undolist");
    pending.forEach(function (p, key) {
      var li = el("li"); li.dataset.key = key;
      li.appendChild(el("span", p.text + " "));
      var b = el("button", document.getElementById("undo-btn").textContent, "small");
      b.type = "button";
      b.addEventListener("click", function () {
        clearTimeout(p.timer); pending.delete(key); renderUndo(); render();
        notice(msg("undone"));
      });
      li.appendChild(b); ul.appendChild(li);
    });
    list.appendChild(ul);
    box.hidden = pending.size === 0;
  }
  document.getElementById("undo-btn").hidden = true;
  // --- rendering -----------------------------------------------------------------------
  function fill(listId, countId, items, draw, empty) {
    var ul = document.getElementById(listId);
    ul.textContent = "";
    if (countId) { document.getElementById(countId).textContent = String(items.length); }
    if (!items.length) { ul.appendChild(el("li", msg(empty || "none"), "muted")); }
    items.forEach(function (it) { ul.appendChild(draw(it)); });
  }
  function alertText(a) {
    var tpl = d[camel("alert", a.kind)] || a.kind;
    var text = String(tpl).replace("{name}", a.name || "?").replace("{device}", a.device_hint || d.deviceUnknown);
    var source = a.source ? d[camel("alertSource", a.source)] : null;
    return source ? text + " " + source : text;
  }
  // A ban is named by the student it was placed on, else by what it blocks: a device
  // nobody on the roster used (with the hint of the browser it was seen with), or an
  // address.
  function banLabel(b) {
    var what = b.kind === "device" ? (b.name ? msg("ban_device_of") : msg("ban_unknown_device"))
      : b.kind === "ip" ? msg("ban_address") : msg("ban_network");
    var text = what.replace("{name}", b.name || "").replace("{hint}", b.device_hint || d.deviceUnknown)
      .replace("{value}", b.value || "");
    if (b.name && b.kind !== "device") { text = b.name + " · " + text; }
    return text;
  }
  // Class-list order: by given name (the last word), then the whole name, Vietnamese
  // alphabet (the server's gateway/collation.py orders the same way).
  var collator = new Intl.Collator("vi");  // the names are Vietnamese whatever the page language
  function given(n) { var w = String(n || "").trim().split(/\s+/); return w[w.length - 1]; }
  function byName(p, q) {
    return collator.compare(given(p.name), given(q.name)) || collator.compare(String(p.name || ""), String(q.name || ""));
  }
  function render() {
    var w = Array.from(waiting.values()).filter(function (x) { return !pending.has(x.ticket); });
    // Present students first (in arrival order), then those whose page is closed.
    w.sort(function (a, b) { return (a.gone ? 1 : 0) - (b.gone ? 1 : 0) || (a.since || 0) - (b.since || 0); });
    fill("waiting", "nwaiting", w, function (x) {
      var who = x.name || x.student_id;
      var li = el("li", null, "person" + (x.gone ? " gone" : ""));
      li.dataset.ticket = x.ticket;
      li.appendChild(el("strong", who));
      if (x.gone) { li.appendChild(el("span", msg("gone"), "badge gone-badge")); }
      var meta = msg("first_seen").replace("{time}", when(x.since)) + " · " + (x.device_hint || d.deviceUnknown);
      li.appendChild(el("span", meta, "meta"));
      var ops = el("span", null, "ops");
      ops.appendChild(button("admit", { ticket: x.ticket }, "small", who));
      ops.appendChild(button("deny", { ticket: x.ticket }, undefined, who));
      ops.appendChild(button("ban", { ticket: x.ticket, scope: "device" }, "danger small", who));
      li.appendChild(ops);
      return li;
    });
    var a = Array.from(admitted.values()).filter(function (x) { return !pending.has(x.student_id); });
    a.sort(byName);
    fill("admitted", "nadmitted", a, function (x) {
      var who = x.name || x.student_id;
      var li = el("li", null, "person");
      li.appendChild(el("strong", who));
      li.appendChild(el("span", msg("in_class_since").replace("{time}", when(x.at)) + " · " +
        msg(x.by === "policy" ? "by_policy" : "by_host"), "meta"));
      var ops = el("span", null, "ops");
      ops.appendChild(button("remove", { student_id: x.student_id }, undefined, who));
      ops.appendChild(button("ban", { student_id: x.student_id, scope: "device" }, "danger small", who));
      ops.appendChild(button("reset_device", { student_id: x.student_id }, undefined, who));
      ops.appendChild(button("revoke_link", { student_id: x.student_id }, undefined, who));
      li.appendChild(ops);
      return li;
    });
    fill("alerts", null, alerts.slice(0, 30), function (x) {
      var li = el("li", null, "alert alert-" + String(x.kind || ""));
      li.appendChild(el("time", when(x.at), "meta"));
      li.appendChild(el("span", alertText(x)));
      return li;
    }, "no_alerts");
    fill("bans", null, bans, function (b) {
      var li = el("li", null, "person");
      li.appendChild(el("strong", banLabel(b)));
      li.appendChild(el("span", (b.until ? msg("ban_until").replace("{time}", when(b.until)) : msg("ban_forever")), "meta"));
      var lift = el("button", msg("lift"), "secondary small"); lift.type = "button";
      lift.addEventListener("click", function () { send({ action: "unban", ban: b.key }); });
      li.appendChild(lift);
      return li;
    }, "bans_none");
    var st = ended ? msg("ended") : (locked ? msg("locked") : msg("unlocked"));
    document.getElementById("lockstate").textContent = st;
    document.getElementById("lockstate").className = "state" + (locked || ended ? " warnstate" : "");
    // Only the lock action that applies now is offered; nothing more once the class ended.
    toolbar("lock").hidden = locked || ended;
    toolbar("unlock").hidden = !locked || ended;
    ["admit_all", "mute_all", "end"].forEach(function (a) { toolbar(a).disabled = ended || toolbar(a).hasAttribute("data-unsupported"); });
  }
  function toolbar(action) { return root.querySelector('.toolbar button[data-action="' + action + '"]'); }
  function setStatus(text) { document.getElementById("conn").textContent = text; }
  function notice(text) { document.getElementById("notice").textContent = text; }
  function showError(m) {
    var e = m && m.error ? m.error : {};
    document.getElementById("error").textContent = msg("error_prefix") + " " + (e.message || e.code || "");
  }
  // One frame: an event, or the class's events of one turn of the server as a list
  // (in order); the lists are drawn once, after every event of the frame is applied.
  function onFrame(data) {
    if (!Array.isArray(data)) { onMessage(data); return; }
    var changed = false;
    data.forEach(function (m) { if (m && apply(m)) { changed = true; } });
    if (changed) { render(); }
  }
  function onMessage(m) { if (apply(m)) { render(); } }
  // Applies one event; true when the lists must be drawn again.
  function apply(m) {
    switch (m.type) {
      case "state":
        if (m.waiting) {
          waiting.clear(); m.waiting.forEach(function (x) { waiting.set(x.ticket, x); });
          admitted.clear(); (m.admitted || []).forEach(function (x) { admitted.set(x.student_id, x); });
          alerts = m.alerts || [];
          bans = m.bans || [];
        }
        if (m.locked !== undefined) { locked = !!m.locked; }
        if (m.ended !== undefined) { ended = !!m.ended; }
        if (m.host_present !== undefined) { hostPresent = !!m.host_present; }
        break;
      case "knock": waiting.set(m.ticket, m); break;
      case "admitted":
        if (m.ticket) { waiting.delete(m.ticket); }
        admitted.set(m.student_id, Object.assign({ at: Date.now() / 1000 }, m)); break;
      case "denied": waiting.delete(m.ticket); break;
      case "left": if (waiting.has(m.ticket)) { waiting.get(m.ticket).gone = true; } break;
      case "back": if (waiting.has(m.ticket)) { waiting.get(m.ticket).gone = false; } break;
      case "removed":
        admitted.delete(m.student_id);
        waiting.forEach(function (x, k) { if (x.student_id === m.student_id) { waiting.delete(k); } });
        break;
      case "ended": waiting.clear(); admitted.clear(); ended = true; break;
      case "alert": alerts.unshift(m); break;
      case "reports": case "report": case "report_decided":
        // Reports from students and parents are drawn by reports.js.
        document.dispatchEvent(new CustomEvent("classguard:report", { detail: m }));
        return false;
      case "error": showError(m); return false;
      case "result":
        document.getElementById("error").textContent = "";
        if (m.action === "admit_all") {
          notice(msg("admitted_all").replace("{n}", String(m.admitted || 0)) +
            (m.skipped_gone ? " " + msg("skipped_gone").replace("{n}", String(m.skipped_gone)) : ""));
        }
        if (m.action === "reset_device" && m.student_id) {
          notice(msg("reset_done").replace("{name}", resets.get(m.student_id) || m.name || "?"));
          resets.delete(m.student_id);
        }
        if (m.action === "ban" || m.action === "unban") { send({ action: "refresh" }); }
        return false;
      default: return false;
    }
    return true;
  }
  function send(obj) {
    obj.id = ++seq;
    if (ws && ws.readyState === WebSocket.OPEN) { ws.send(JSON.stringify(obj)); }
    else if (obj.action !== "refresh") { queue.push(obj); }
  }
  function connect() {
    var proto = location.protocol === "https:" ? "wss://" : "ws://";
    ws = new WebSocket(proto + location.host + "/api/v1/classes/" + encodeURIComponent(classId) + "/control");
    ws.onopen = function () {
      delay = 1000; setStatus(msg("connected"));
      root.classList.remove("offline");
      var q = queue; queue = [];
      q.forEach(function (o) { ws.send(JSON.stringify(o)); });
    };
    ws.onmessage = function (ev) { var m; try { m = JSON.parse(ev.data); } catch (e) { return; } if (m) { onFrame(m); } };
    ws.onclose = function (ev) {
      root.classList.add("offline");
      setStatus(msg("disconnected"));
      if (ev.code === 4401) { location.assign("/login"); return; }
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 15000);
    };
  }
  document.querySelectorAll(".toolbar button[data-action]").forEach(function (b) {
    b.addEventListener("click", function () {
      if (b.dataset.confirm && !window.confirm(b.dataset.confirm)) { return; }
      send({ action: b.dataset.action });
    });
  });
  window.addEventListener("online", function () { if (!ws || ws.readyState > 1) { delay = 500; } });
  render();
  connect();
})();
