// Create a class: show the chosen platform's settings, turn the wall-clock times of
// the class's time zone into ISO 8601 with an offset, post JSON to /api/v1/classes.
(function () {
  "use strict";
  var form = document.getElementById("classform");
  if (!form || !window.ClassGuard) { return; }
  var CG = window.ClassGuard;
  var kind = document.getElementById("kind");
  function showKind() {
    form.querySelectorAll(".platform").forEach(function (box) {
      var on = box.dataset.kind === kind.value;
      box.hidden = !on;
      box.querySelectorAll("input, textarea").forEach(function (i) { i.disabled = !on; });
    });
  }
  kind.addEventListener("change", showKind);
  showKind();
  // "+07:00" for Asia/Ho_Chi_Minh: the zone's offset at that wall-clock time.
  function offset(tz, date, time) {
    try {
      var guess = new Date(date + "T" + time + ":00Z");
      var parts = new Intl.DateTimeFormat("en-US", { timeZone: tz, timeZoneName: "longOffset" }).formatToParts(guess);
      var name = parts.filter(function (p) { return p.type === "timeZoneName"; })[0].value;
      return name === "GMT" ? "+00:00" : name.replace("GMT", "");
    } catch (e) { return "+07:00"; }
  }
  // The form shows dd/mm/yyyy and HH:MM (24 h); ISO 8601 (yyyy-mm-dd) is accepted too.
  // Anything else is sent as typed, and the API names the field it cannot read.
  function pad(n) { return (String(n).length < 2 ? "0" : "") + n; }
  function isoDate(s) {
    var m = /^(\d{1,2})[\/.-](\d{1,2})[\/.-](\d{4})$/.exec(s);
    return m ? m[3] + "-" + pad(m[2]) + "-" + pad(m[1]) : s;
  }
  function isoTime(s) {
    var m = /^(\d{1,2})[:h.](\d{2})$/.exec(s);
    return m ? pad(m[1]) + ":" + m[2] : s;
  }
  function iso(tz, date, time) {
    date = isoDate(date); time = isoTime(time);
    return date + "T" + time + ":00" + offset(tz, date, time);
  }
  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var v = function (id) { return document.getElementById(id).value.trim(); };
    var tz = v("timezone") || document.body.dataset.tz;
    var platform = { kind: kind.value };
    form.querySelectorAll('.platform[data-kind="' + kind.value + '"] input, .platform[data-kind="' + kind.value + '"] textarea').forEach(function (i) {
      var key = i.name.replace(/^platform\./, "");
      if (i.type === "checkbox") { platform[key] = i.checked; return; }
      if (i.value.trim() === "") { return; }
      platform[key] = i.dataset.int ? Number(i.value) : i.value.trim();
    });
    var weekly = [];
    form.querySelectorAll("input[name=weekly]:checked").forEach(function (c) { weekly.push(Number(c.value)); });
    var schedule = { timezone: tz };
    if (v("date") && v("start")) { schedule.starts_at = iso(tz, v("date"), v("start")); }
    if (v("date") && v("end")) { schedule.ends_at = iso(tz, v("date"), v("end")); }
    if (v("term_end")) { schedule.term_ends_at = iso(tz, v("term_end"), "23:59"); }
    if (weekly.length) { schedule.weekly = weekly; }
    var policy = { preset: (form.querySelector("input[name=preset]:checked") || {}).value || "standard" };
    var extra = CG.serialize(form).policy || {};
    Object.keys(extra).forEach(function (k) { policy[k] = extra[k]; });
    var body = { title: v("title"), platform: platform, schedule: schedule, policy: policy };
    var btn = form.querySelector("button[type=submit]");
    btn.disabled = true;
    CG.call("POST", "/api/v1/classes", body, CG.csrfOf(form)).then(function (res) {
      btn.disabled = false;
      if (!res.ok) { CG.showError(form, res); return; }
      location.assign(form.dataset.next.replace("{id}", encodeURIComponent(res.data.id)));
    });
  });
})();
