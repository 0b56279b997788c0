// Second factor: passkeys (WebAuthn) at sign-in and step-up, and the enrolment page
// (authenticator app, passkeys, recovery codes). No inline script anywhere (CSP).
(function () {
  "use strict";
  function b64uToBuf(s) {
    s = s.replace(/-/g, "+").replace(/_/g, "/");
    while (s.length % 4) { s += "="; }
    var bin = atob(s), out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) { out[i] = bin.charCodeAt(i); }
    return out.buffer;
  }
  function bufToB64u(buf) {
    var bytes = new Uint8Array(buf), bin = "";
    for (var i = 0; i < bytes.length; i++) { bin += String.fromCharCode(bytes[i]); }
    return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }
  function creationOptions(o) {
    o.challenge = b64uToBuf(o.challenge);
    o.user.id = b64uToBuf(o.user.id);
    (o.excludeCredentials || []).forEach(function (c) { c.id = b64uToBuf(c.id); });
    return o;
  }
  function requestOptions(o) {
    o.challenge = b64uToBuf(o.challenge);
    (o.allowCredentials || []).forEach(function (c) { c.id = b64uToBuf(c.id); });
    return o;
  }
  function credentialJSON(c) {
    var r = c.response, out = { id: c.id, rawId: bufToB64u(c.rawId), type: c.type,
      clientExtensionResults: c.getClientExtensionResults ? c.getClientExtensionResults() : {},
      response: { clientDataJSON: bufToB64u(r.clientDataJSON) } };
    if (r.attestationObject) {
      out.response.attestationObject = bufToB64u(r.attestationObject);
      if (r.getTransports) { out.response.transports = r.getTransports(); }
    } else {
      out.response.authenticatorData = bufToB64u(r.authenticatorData);
      out.response.signature = bufToB64u(r.signature);
      out.response.userHandle = r.userHandle ? bufToB64u(r.userHandle) : null;
    }
    if (c.authenticatorAttachment) { out.authenticatorAttachment = c.authenticatorAttachment; }
    return out;
  }
  function post(url, body, csrf) {
    var headers = { "Content-Type": "application/json", "Accept": "application/json" };
    if (csrf) { headers["X-CSRF-Token"] = csrf; }
    return fetch(url, { method: "POST", headers: headers, credentials: "same-origin",
                        body: JSON.stringify(body || {}) });
  }

  // Sign-in and step-up: the passkey answers the challenge, the form carries it.
  var pk = document.getElementById("passkey-form");
  if (pk) {
    pk.addEventListener("submit", function (ev) {
      if (pk.elements.credential.value) { return; }
      ev.preventDefault();
      var err = document.getElementById("passkey-error");
      err.hidden = true;
      post(pk.dataset.options, {}, pk.elements.csrf_token.value)
        .then(function (r) { if (!r.ok) { throw new Error("options"); } return r.json(); })
        .then(function (o) { return navigator.credentials.get({ publicKey: requestOptions(o) }); })
        .then(function (c) {
          pk.elements.credential.value = JSON.stringify(credentialJSON(c));
          pk.submit();
        })
        .catch(function () { err.hidden = false; });
    });
  }

  // The enrolment page.
  var page = document.getElementById("security");
  if (!page) { return; }
  var csrf = page.dataset.csrf;
  var api = "/api/v1/account/second-factor";
  function failed() { document.getElementById("security-error").hidden = false; }
  function showCodes(data) {
    var codes = (data && data.recovery_codes) || [];
    if (!codes.length) { location.reload(); return; }
    var ul = document.getElementById("recovery-codes");
    ul.textContent = "";
    codes.forEach(function (c) { var li = document.createElement("li"); li.textContent = c; ul.appendChild(li); });
    document.getElementById("recovery-box").hidden = false;
  }
  function then(r) {
    return r.text().then(function (t) {
      var d = null;
      try { d = t ? JSON.parse(t) : null; } catch (e) { d = null; }
      if (r.status === 403 && d && d.error && d.error.code === "step_up_required") {
        location.assign("/account/verify?next=" + encodeURIComponent(location.pathname));
        throw new Error("step-up");
      }
      if (!r.ok) { throw new Error("refused"); }
      return d;
    });
  }
  var begin = document.getElementById("totp-begin");
  if (begin) {
    begin.addEventListener("click", function () {
      post(api + "/totp", {}, csrf).then(then).then(function (d) {
        document.getElementById("totp-secret").textContent = d.secret;
        document.getElementById("totp-uri").href = d.uri;
        document.getElementById("totp-setup").hidden = false;
        begin.hidden = true;
        document.getElementById("totp-code").focus();
      }).catch(failed);
    });
    document.getElementById("totp-confirm").addEventListener("click", function () {
      var code = document.getElementById("totp-code").value;
      post(api + "/totp/confirm", { code: code }, csrf).then(then).then(showCodes).catch(failed);
    });
  }
  document.getElementById("passkey-add").addEventListener("click", function () {
    post(api + "/passkeys/options", {}, csrf).then(then)
      .then(function (o) { return navigator.credentials.create({ publicKey: creationOptions(o) }); })
      .then(function (c) { return post(api + "/passkeys", { credential: credentialJSON(c) }, csrf); })
      .then(then).then(showCodes).catch(failed);
  });
  var renew = document.getElementById("recovery-renew");
  if (renew) {
    renew.addEventListener("click", function () {
      post(api + "/recovery-codes", {}, csrf).then(then).then(showCodes).catch(failed);
    });
  }
  Array.prototype.forEach.call(document.querySelectorAll("[data-remove]"), function (b) {
    b.addEventListener("click", function () {
      fetch(api + "/" + b.dataset.remove, { method: "DELETE", credentials: "same-origin",
        headers: { "X-CSRF-Token": csrf, "Accept": "application/json" } })
        .then(then).then(function () { location.reload(); }).catch(failed);
    });
  });
})();
