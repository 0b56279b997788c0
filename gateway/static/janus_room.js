// A minimal Janus VideoRoom client for `classguard demo`: joins with the participant id
// and the single-use token ClassGuard put in this page's URL, publishes camera and
// microphone, and shows everyone else. No framework, no janus.js: the JSON API over
// WebSocket (subprotocol "janus-protocol") is small enough.
"use strict";
(function () {
  const main = document.getElementById("room");
  const status = document.getElementById("status");
  const advice = document.getElementById("advice");
  const heading = document.getElementById("heading");
  const d = main.dataset;
  const msg = (k) => d["msg" + k.replace(/(^|_)([a-z])/g, (m, a, c) => c.toUpperCase())] || k;
  let over = false;  // removed, ended or lost: the page says what happened and stays so
  const videos = document.getElementById("videos");
  const q = new URLSearchParams(location.search);
  const room = Number(q.get("room"));
  const myId = Number(q.get("id"));
  const token = q.get("token") || "";
  const name = q.get("name") || "";
  const ws = new WebSocket(main.dataset.janus, "janus-protocol");
  const pending = new Map();
  const handlers = new Map(); // handle id -> function(message)
  let session = 0;

  function say(text) { if (!over) status.textContent = text; }
  // The meeting is over for this student: stop the camera, drop the frozen videos and
  // say in plain words what happened and what to do.
  function finish(what) {
    if (over) return;
    status.textContent = msg(what);
    advice.textContent = msg(what + "_advice");
    advice.hidden = false;
    over = true;
    main.classList.add("over");
    for (const v of videos.querySelectorAll("video")) {
      if (v.srcObject) v.srcObject.getTracks().forEach((t) => t.stop());
    }
    videos.textContent = "";
    heading.focus();
  }
  function tx() { return Math.random().toString(36).slice(2); }
  function send(msg) {
    const t = tx();
    msg.transaction = t;
    if (session) msg.session_id = session;
    ws.send(JSON.stringify(msg));
    return new Promise((resolve) => pending.set(t, resolve));
  }
  function message(handle, body, jsep) {
    const msg = { janus: "message", handle_id: handle, body: body };
    if (jsep) msg.jsep = jsep;
    return send(msg);
  }

  ws.onmessage = (ev) => {
    const m = JSON.parse(ev.data);
    if (m.janus === "ack") return;
    const t = m.transaction;
    if (t && pending.has(t) && (m.janus !== "event" || m.plugindata)) {
      pending.get(t)(m);
      pending.delete(t);
    }
    if (m.sender && handlers.has(m.sender) && m.janus === "event") handlers.get(m.sender)(m);
    if (m.janus === "hangup" || m.janus === "detached") finish("ended");
  };
  ws.onclose = () => finish("lost");

  function peer(handle) {
    const pc = new RTCPeerConnection({ iceServers: [] });
    pc.onicecandidate = (e) => {
      ws.send(JSON.stringify({ janus: "trickle", session_id: session, handle_id: handle,
        transaction: tx(), candidate: e.candidate || { completed: true } }));
    };
    return pc;
  }

  function addVideo(stream, label) {
    const fig = document.createElement("figure");
    const v = document.createElement("video");
    v.autoplay = true; v.playsInline = true; v.srcObject = stream;
    const cap = document.createElement("figcaption");
    cap.textContent = label;
    fig.append(v, cap);
    videos.append(fig);
  }

  async function subscribe(feed, display) {
    const att = await send({ janus: "attach", plugin: "janus.plugin.videoroom" });
    const handle = att.data.id;
    const pc = peer(handle);
    const stream = new MediaStream();
    pc.ontrack = (e) => stream.addTrack(e.track);
    addVideo(stream, display);
    handlers.set(handle, async (m) => {
      if (m.jsep && m.jsep.type === "offer") {
        await pc.setRemoteDescription(m.jsep);
        const answer = await pc.createAnswer();
        await pc.setLocalDescription(answer);
        await message(handle, { request: "start" }, answer);
      }
    });
    await message(handle, { request: "join", ptype: "subscriber", room: room,
      streams: [{ feed: feed }] });
  }

  async function start() {
    const created = await send({ janus: "create" });
    session = created.data.id;
    setInterval(() => send({ janus: "keepalive" }), 25000);
    const att = await send({ janus: "attach", plugin: "janus.plugin.videoroom" });
    const handle = att.data.id;
    const joined = await message(handle, { request: "join", ptype: "publisher", room: room,
      id: myId, token: token, display: name });
    const data = joined.plugindata && joined.plugindata.data;
    if (!data || data.videoroom !== "joined") {
      finish("refused");
      return;
    }
    say(msg("joined").replace("{name}", name));
    for (const p of data.publishers || []) subscribe(p.id, p.display);
    const pc = peer(handle);
    handlers.set(handle, async (m) => {
      if (m.jsep && m.jsep.type === "answer") await pc.setRemoteDescription(m.jsep);
      const d = m.plugindata && m.plugindata.data;
      if (d && d.publishers) for (const p of d.publishers) subscribe(p.id, p.display);
      if (d && (d.leaving === "ok" || d.reason === "kicked")) finish("removed");
      if (d && d.videoroom === "destroyed") finish("ended");
    });
    try {
      const local = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
      local.getTracks().forEach((t) => pc.addTrack(t, local));
      addVideo(local, msg("me").replace("{name}", name));
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      await message(handle, { request: "configure", audio: true, video: true }, offer);
    } catch (e) {
      say(msg("joined_no_media").replace("{name}", name));
    }
  }
  ws.onopen = () => start().catch(() => say(msg("error")));
})();
