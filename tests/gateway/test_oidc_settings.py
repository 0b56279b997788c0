"""The pure parts of the OpenID sign-in (gateway/oidc.py): settings, algorithms, issuer
templates, claims to account."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.oidc import (
    OidcRefused,
    allowed_algs,
    discovery_url_of,
    expected_issuer,
    identity_of,
    parse_settings,
    username_candidates,
)
from gateway.staff import StaffError

TID = "6f1e2d3c-4b5a-4978-8a9b-0c1d2e3f4a5b"


def test_settings_of_each_provider() -> None:
    google, secret = parse_settings("thpt-a", {
        "provider": "google", "client_id": "id", "client_secret": "s",
        "hosted_domain": "THPT-A.edu.vn", "domains": ["thpt-a.edu.vn"]})
    assert secret == "s"
    assert google.discovery_url == "https://accounts.google.com/.well-known/openid-configuration"
    assert google.hosted_domain == "thpt-a.edu.vn" and google.passwords
    entra, _ = parse_settings("thpt-a", {"provider": "entra", "client_id": "id",
                                         "tenant": TID})
    assert entra.discovery_url == (f"https://login.microsoftonline.com/{TID}/v2.0/"
                                   ".well-known/openid-configuration")
    assert entra.tenant_ids == (TID,)
    multi, _ = parse_settings("thpt-a", {"provider": "entra", "client_id": "id",
                                         "tenant_ids": [TID]})
    assert "/organizations/v2.0/" in multi.discovery_url
    generic, _ = parse_settings("thpt-a", {"provider": "generic", "client_id": "id",
                                           "discovery_url": "https://id.example/realms/a/"})
    assert generic.discovery_url == discovery_url_of("generic", "", "https://id.example/realms/a")


@pytest.mark.parametrize("body, field", [
    ({"provider": "okta", "client_id": "id"}, "provider"),
    ({"provider": "google"}, "client_id"),
    ({"provider": "entra", "client_id": "id"}, "tenant_ids"),
    ({"provider": "entra", "client_id": "id", "tenant": "contoso"}, "tenant"),
    ({"provider": "generic", "client_id": "id", "discovery_url": "file:///etc/passwd"},
     "discovery_url"),
    ({"provider": "google", "client_id": "id", "domains": ["not a domain"]}, "domains"),
    ({"provider": "google", "client_id": "id", "group_roles": {"g": "root"}}, "group_roles"),
    ({"provider": "google", "client_id": "id", "passwords": "no"}, "passwords"),
])
def test_bad_settings_name_their_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(StaffError) as err:
        parse_settings("thpt-a", body)
    assert err.value.field == field


def test_algorithms_never_none_hmac_only_when_allowed() -> None:
    settings, _ = parse_settings("a", {"provider": "google", "client_id": "id"})
    doc = {"id_token_signing_alg_values_supported": ["RS256", "none", "HS256", "ES256"]}
    assert allowed_algs(doc, settings) == ["RS256", "ES256"]
    assert allowed_algs({}, settings) == ["RS256"]
    hmac, _ = parse_settings("a", {"provider": "google", "client_id": "id", "allow_hmac": True})
    assert allowed_algs(doc, hmac) == ["RS256", "HS256", "ES256"]


def test_entra_issuer_template_takes_the_tokens_tid() -> None:
    doc = {"issuer": "https://login.microsoftonline.com/{tenantid}/v2.0"}
    assert expected_issuer(doc, {"tid": TID}) == f"https://login.microsoftonline.com/{TID}/v2.0"
    for claims in ({}, {"tid": "../evil"}):
        with pytest.raises(OidcRefused) as err:
            expected_issuer(doc, claims)
        assert err.value.code == "wrong_issuer"
    assert expected_issuer({"issuer": "https://accounts.google.com"}, {}) == \
        "https://accounts.google.com"


def test_claims_to_identity() -> None:
    settings, _ = parse_settings("a", {
        "provider": "entra", "client_id": "id", "tenant_ids": [TID],
        "domains": ["thpt-a.edu.vn"], "group_roles": {"g-it": "it", "g-admin": "admin"}})
    base = {"iss": "x", "sub": "s", "tid": TID, "preferred_username": "Co.Lan@THPT-A.edu.vn"}
    who = identity_of(settings, {**base, "groups": ["g-it", "other"]})
    assert (who.email, who.role) == ("co.lan@thpt-a.edu.vn", "it")
    assert identity_of(settings, {**base, "groups": ["g-it", "g-admin"]}).role == "admin"
    assert identity_of(settings, base).role == "teacher"
    for claims, code in (({**base, "tid": "11111111-2222-4333-8444-555555555555"},
                          "unknown_domain"),
                         ({**base, "preferred_username": "a@gmail.com"}, "unknown_domain"),
                         ({**base, "email_verified": False}, "unverified_email"),
                         ({"iss": "x", "sub": "s", "tid": TID}, "no_email")):
        with pytest.raises(OidcRefused) as err:
            identity_of(settings, claims)
        assert err.value.code == code


def test_username_candidates() -> None:
    assert username_candidates("Co.Lan+x@a.vn")[:2] == ["co.lan", "co.lan2"]
    assert username_candidates("é@a.vn")[0] == "staff"


def test_cli_sets_shows_and_links(tmp_path: Path, redis_url: str, redis_prefix: str,
                                  redis: Any) -> None:
    """``classguard oidc``: the settings from standard input (the secret never on argv),
    shown without the secret, an account linked to its email; every change audited."""
    env = {**os.environ, "CLASSGUARD_DATA_DIR": str(tmp_path / "data"),
           "CLASSGUARD_REDIS_URL": redis_url, "CLASSGUARD_REDIS_PREFIX": redis_prefix,
           "CLASSGUARD_LOG_LEVEL": "warning", "PYTHONPATH": str(Path.cwd())}

    def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=env,
                              input=stdin, capture_output=True, text=True, timeout=60,
                              check=False)

    assert cli("init", "--org", "thpt-a", "--admin", "qt.an").returncode == 0
    body = json.dumps({"provider": "google", "client_id": "cid",
                       "client_secret": "very-secret", "domains": ["thpt-a.edu.vn"],
                       "passwords": False})
    res = cli("oidc", "set", "thpt-a", "--settings", "-", stdin=body)
    assert res.returncode == 0, res.stderr
    res = cli("oidc", "show", "thpt-a")
    assert res.returncode == 0 and json.loads(res.stdout)["passwords"] is False
    assert "very-secret" not in res.stdout
    res = cli("oidc", "email", "qt.an", "an@thpt-a.edu.vn")
    assert res.returncode == 0, res.stderr
    res = cli("oidc", "set", "nowhere", "--settings", "-", stdin=body)
    assert res.returncode == 2 and "does not exist" in res.stderr
    res = cli("oidc", "remove", "thpt-a")
    assert res.returncode == 0 and cli("oidc", "show", "thpt-a").returncode == 2
