"""OpenID Connect sign-in for staff: per-org providers, the code flow and ID-token checks.

An org names one OpenID provider (Google, Microsoft Entra ID, or any provider by its
discovery URL). Staff sign in with the authorization code flow, PKCE (S256), ``state``
and ``nonce`` (Authlib's OAuth 2 helpers); the ID token is checked with joserfc (the JOSE
library Authlib is built on) against the provider's published keys.

Redis keys (``P`` = prefix; named in gateway/stores/keys.py, ``OidcKeys``)::

    P staff:oidc:org:<slug>        hash    the org's provider settings (client secret
                                           sealed by gateway/secretbox.py)
    P staff:oidc:domain:<domain>   string  the org whose staff use this email domain
    P staff:oidc:email:<email>     string  the account an administrator made for this email
    P staff:oidc:sub:<sha256>      string  the account linked to (issuer, subject)
    P staff:oidc:state:<state>     string  JSON of one sign-in under way (single use, TTL)
    P staff:oidc:disc:<sha256>     string  a discovery document, cached (TTL)
    P staff:oidc:jwks:<sha256>     string  a provider's key set, cached (TTL)

Every network call goes through the egress-checked session (meeting_adapters/egress.py):
an administrator types the discovery URL, so it must not reach inside the network.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import aiohttp
import redis.asyncio as aioredis
from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from .secretbox import SecretBox
from .staff import ROLES, Role, StaffError, validate_role, validate_slug
from .stores.keys import OidcKeys

ProviderKind = Literal["google", "entra", "generic"]
PROVIDERS: tuple[ProviderKind, ...] = ("google", "entra", "generic")
# Any standard provider, found by its discovery URL.
DISCOVERY_PROVIDER: ProviderKind = "generic"
GOOGLE_ISSUER = "https://accounts.google.com"
ENTRA_AUTHORITY = "https://login.microsoftonline.com"
ENTRA_TENANT_TEMPLATE = "{tenantid}"
SCOPES = "openid email profile"
CALLBACK_PATH = "/auth/oidc/callback"

STATE_TTL_S = 600  # a sign-in must come back within ten minutes
DISCOVERY_TTL_S = 3600
CLOCK_LEEWAY_S = 60
_MAX_DOC_BYTES = 256 * 1024
_DOMAIN_RE = re.compile(r"(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")
_TENANT_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_ROLE_RANK = {"teacher": 0, "it": 1, "admin": 2}


class OidcRefused(Exception):
    """A sign-in refused. ``code`` names the catalogue entry ``oidc.error.<code>`` and the
    audit reason ``oidc_<code>``; ``detail`` is for the audit record and logs only."""

    def __init__(self, code: str, detail: str = "", *, status: int = 400) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.status = status


@dataclass(frozen=True, slots=True)
class OrgOidc:
    """One org's provider. ``discovery_url`` is derived for Google and Entra."""

    org: str
    provider: ProviderKind
    client_id: str
    discovery_url: str
    # Entra: "organizations" (multi-tenant) or one tenant id; the tids let in.
    tenant: str = ""
    tenant_ids: tuple[str, ...] = ()
    hosted_domain: str = ""  # Google Workspace: the ``hd`` claim required
    domains: tuple[str, ...] = ()
    auto_provision: bool = False
    default_role: Role = "teacher"
    group_roles: dict[str, Role] = field(default_factory=dict)
    passwords: bool = True
    # Algorithms allowed beyond the asymmetric ones (HS256 with the client secret only
    # when the administrator says the provider signs that way).
    allow_hmac: bool = False

    def public(self) -> dict[str, Any]:
        return {"org": self.org, "provider": self.provider, "client_id": self.client_id,
                "discovery_url": self.discovery_url, "tenant": self.tenant,
                "tenant_ids": list(self.tenant_ids), "hosted_domain": self.hosted_domain,
                "domains": list(self.domains), "auto_provision": self.auto_provision,
                "default_role": self.default_role, "group_roles": dict(self.group_roles),
                "passwords": self.passwords, "allow_hmac": self.allow_hmac,
                "redirect_path": CALLBACK_PATH}


def _bad(field_name: str, message: str) -> StaffError:
    return StaffError("invalid_" + field_name, message, field_name)


def discovery_url_of(provider: ProviderKind, tenant: str, given: str) -> str:
    if provider == "google":
        return GOOGLE_ISSUER + "/.well-known/openid-configuration"
    if provider == "entra":
        return f"{ENTRA_AUTHORITY}/{tenant}/v2.0/.well-known/openid-configuration"
    url = given.strip()
    if not url.endswith("/.well-known/openid-configuration"):
        url = url.rstrip("/") + "/.well-known/openid-configuration"
    return url


def parse_settings(org: str, data: dict[str, Any]) -> tuple[OrgOidc, str | None]:
    """(settings, client secret or None to keep the stored one) from an API body;
    ``StaffError`` naming the bad field."""
    validate_slug(org)
    provider = data.get("provider")
    if provider not in PROVIDERS:
        raise _bad("provider", "provider must be google, entra or generic")
    client_id = data.get("client_id")
    if not isinstance(client_id, str) or not 1 <= len(client_id) <= 256:
        raise _bad("client_id", "client_id must be 1-256 characters")
    tenant = str(data.get("tenant") or "")
    tenant_ids = data.get("tenant_ids") or []
    if provider == "entra":
        tenant = tenant or "organizations"
        if tenant != "organizations" and not _TENANT_RE.fullmatch(tenant):
            raise _bad("tenant", "tenant must be 'organizations' or a tenant id (GUID)")
        if tenant != "organizations":
            tenant_ids = tenant_ids or [tenant]
    if not isinstance(tenant_ids, list) or not all(
            isinstance(t, str) and _TENANT_RE.fullmatch(t) for t in tenant_ids):
        raise _bad("tenant_ids", "tenant_ids must be tenant ids (GUIDs)")
    if provider == "entra" and not tenant_ids:
        raise _bad("tenant_ids", "a multi-tenant Entra app must name the tenants let in")
    given = data.get("discovery_url") or ""
    if provider == "generic":
        parts = urlsplit(str(given))
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise _bad("discovery_url", "discovery_url must be an https:// URL")
    domains = data.get("domains") or []
    if not isinstance(domains, list) or not all(
            isinstance(d, str) and _DOMAIN_RE.fullmatch(d.lower()) for d in domains):
        raise _bad("domains", "domains must be email domains such as school.edu.vn")
    hosted = str(data.get("hosted_domain") or "").lower()
    if hosted and not _DOMAIN_RE.fullmatch(hosted):
        raise _bad("hosted_domain", "hosted_domain must be a domain")
    group_roles = data.get("group_roles") or {}
    if not isinstance(group_roles, dict) or not all(
            isinstance(k, str) and 0 < len(k) <= 256 and v in ROLES
            for k, v in group_roles.items()):
        raise _bad("group_roles", "group_roles maps group ids to teacher, it or admin")
    secret = data.get("client_secret")
    if secret is not None and (not isinstance(secret, str) or not 1 <= len(secret) <= 1024):
        raise _bad("client_secret", "client_secret must be 1-1024 characters")
    for flag in ("auto_provision", "passwords", "allow_hmac"):
        if flag in data and not isinstance(data[flag], bool):
            raise _bad(flag, f"{flag} must be true or false")
    settings = OrgOidc(
        org=org, provider=provider, client_id=client_id,
        discovery_url=discovery_url_of(provider, tenant, str(given)),
        tenant=tenant if provider == "entra" else "",
        tenant_ids=tuple(tenant_ids), hosted_domain=hosted,
        domains=tuple(sorted({d.lower() for d in domains})),
        auto_provision=bool(data.get("auto_provision", False)),
        default_role=validate_role(str(data.get("default_role") or "teacher")),
        group_roles={k: cast(Role, v) for k, v in group_roles.items()},
        passwords=bool(data.get("passwords", True)),
        allow_hmac=bool(data.get("allow_hmac", False)),
    )
    return settings, secret


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def email_domain(email: str) -> str:
    return email.rsplit("@", 1)[1].lower() if "@" in email else ""


def normalize_email(raw: str) -> str:
    return raw.strip().lower()


@dataclass(frozen=True, slots=True)
class Pending:
    """One sign-in under way, as stored under its ``state``."""

    org: str
    nonce: str
    verifier: str
    next: str
    created: float


class OidcStore:
    """Provider settings, account links and sign-ins under way, in Redis."""

    def __init__(self, redis: aioredis.Redis, box: SecretBox, *, prefix: str = "",
                 clock: Any = time.time) -> None:
        self._r = redis
        self._box = box
        self._k = OidcKeys(prefix)
        self._clock = clock

    def _aad(self, org: str) -> bytes:
        return f"oidc:{org}:client_secret".encode()

    # -- settings ---------------------------------------------------------------------------

    async def save(self, settings: OrgOidc, client_secret: str | None) -> None:
        """Store an org's provider; a new ``client_secret`` is sealed, None keeps the old
        one. A domain already claimed by another org is ``org_conflict``."""
        for domain in settings.domains:
            owner = await self._r.get(self._k.domain(domain))
            if owner is not None and owner != settings.org:
                raise StaffError("org_conflict",
                                 f"domain {domain} belongs to org {owner!r}", "domains")
        old = await self.get(settings.org)
        sealed = (self._box.encrypt(client_secret.encode(), aad=self._aad(settings.org))
                  if client_secret is not None
                  else cast(str | None, await self._r.hget(self._k.org(settings.org),
                                                           "secret")))
        record: dict[str, Any] = {k: json.dumps(v) for k, v in settings.public().items()}
        record["secret"] = sealed or ""
        async with self._r.pipeline(transaction=True) as pipe:
            if old is not None:
                for domain in set(old.domains) - set(settings.domains):
                    pipe.delete(self._k.domain(domain))
            for domain in settings.domains:
                pipe.set(self._k.domain(domain), settings.org)
            pipe.delete(self._k.org(settings.org))
            pipe.hset(self._k.org(settings.org), mapping=cast(Any, record))
            await pipe.execute()

    async def get(self, org: str) -> OrgOidc | None:
        raw = cast(dict[str, str], await self._r.hgetall(self._k.org(org)))
        if not raw:
            return None
        d = {k: json.loads(v) for k, v in raw.items() if k != "secret"}
        return OrgOidc(
            org=d["org"], provider=d["provider"], client_id=d["client_id"],
            discovery_url=d["discovery_url"], tenant=d.get("tenant", ""),
            tenant_ids=tuple(d.get("tenant_ids", ())), hosted_domain=d.get("hosted_domain", ""),
            domains=tuple(d.get("domains", ())), auto_provision=bool(d.get("auto_provision")),
            default_role=d.get("default_role", "teacher"), group_roles=d.get("group_roles", {}),
            passwords=bool(d.get("passwords", True)), allow_hmac=bool(d.get("allow_hmac")))

    async def client_secret(self, org: str) -> str | None:
        sealed = cast(str | None, await self._r.hget(self._k.org(org), "secret"))
        if not sealed:
            return None
        return self._box.decrypt(sealed, aad=self._aad(org)).decode()

    async def delete(self, org: str) -> bool:
        old = await self.get(org)
        if old is None:
            return False
        keys = [self._k.org(org)] + [self._k.domain(d) for d in old.domains]
        await self._r.delete(*keys)
        return True

    async def org_of_domain(self, domain: str) -> str | None:
        return cast(str | None, await self._r.get(self._k.domain(domain.lower())))

    async def passwords_allowed(self, org: str, ancestors: list[str]) -> bool:
        """False when the account's org, or an org above it, turned passwords off."""
        for slug in ancestors or [org]:
            settings = await self.get(slug)
            if settings is not None and not settings.passwords:
                return False
        return True

    # -- accounts -------------------------------------------------------------------------

    async def set_email(self, username: str, email: str) -> None:
        """The email an administrator gives a pre-created account: it links at the first
        sign-in with a verified address."""
        address = normalize_email(email)
        if "@" not in address or not _DOMAIN_RE.fullmatch(email_domain(address)) \
                or len(address) > 254:
            raise _bad("email", "email must be an address such as co.lan@school.edu.vn")
        await self._r.set(self._k.email(address), username)

    async def user_of_email(self, email: str) -> str | None:
        return cast(str | None, await self._r.get(self._k.email(normalize_email(email))))

    async def user_of_subject(self, issuer: str, subject: str) -> str | None:
        key = self._k.subject(_sha(issuer + chr(0) + subject))
        return cast(str | None, await self._r.get(key))

    async def link_subject(self, issuer: str, subject: str, username: str) -> None:
        await self._r.set(self._k.subject(_sha(issuer + chr(0) + subject)), username)

    # -- sign-ins under way -----------------------------------------------------------------

    async def begin(self, org: str, nxt: str) -> tuple[str, Pending]:
        state = generate_token(43)
        pending = Pending(org=org, nonce=generate_token(43), verifier=generate_token(64),
                          next=nxt, created=self._clock())
        await self._r.set(self._k.state(state),
                          json.dumps({"org": org, "nonce": pending.nonce,
                                      "verifier": pending.verifier, "next": nxt,
                                      "created": pending.created}), ex=STATE_TTL_S)
        return state, pending

    async def take(self, state: str) -> Pending | None:
        """The sign-in of ``state``, forgotten as it is read: a replayed state is None."""
        if not isinstance(state, str) or not re.fullmatch(r"[A-Za-z0-9]{20,128}", state):
            return None
        raw = cast(str | None, await self._r.getdel(self._k.state(state)))
        if raw is None:
            return None
        d = json.loads(raw)
        return Pending(org=str(d["org"]), nonce=str(d["nonce"]), verifier=str(d["verifier"]),
                       next=str(d["next"]), created=float(d["created"]))

    async def nonce_seen(self, nonce: str) -> bool:
        """Mark an ID token's nonce used; True if it was used before (a replayed token)."""
        fresh = await self._r.set(self._k.nonce(_sha(nonce)), "1", nx=True,
                                  ex=STATE_TTL_S + CLOCK_LEEWAY_S)
        return not fresh

    # -- the provider's documents ----------------------------------------------------------

    async def _cached_json(self, http: aiohttp.ClientSession, url: str, kind: str,
                           *, refresh: bool = False) -> dict[str, Any]:
        key = self._k.cached(kind, _sha(url))
        if not refresh:
            cached = cast(str | None, await self._r.get(key))
            if cached is not None:
                return cast(dict[str, Any], json.loads(cached))
        doc = await fetch_json(http, url)
        await self._r.set(key, json.dumps(doc), ex=DISCOVERY_TTL_S)
        return doc

    async def discovery(self, http: aiohttp.ClientSession, settings: OrgOidc) -> dict[str, Any]:
        doc = await self._cached_json(http, settings.discovery_url, "disc")
        for name in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(doc.get(name), str):
                raise OidcRefused("provider_unavailable", f"discovery lacks {name}", status=502)
        # OpenID Connect Discovery 1.0, section 4.3: the document names the issuer it was
        # fetched for (Entra's multi-tenant template is checked per token instead).
        issuer = str(doc["issuer"]).rstrip("/")
        if ENTRA_TENANT_TEMPLATE not in issuer and settings.discovery_url != (
                issuer + "/.well-known/openid-configuration"):
            raise OidcRefused("wrong_issuer", f"discovery names issuer {issuer!r}", status=502)
        return doc

    async def jwks(self, http: aiohttp.ClientSession, url: str, *,
                   refresh: bool = False) -> dict[str, Any]:
        return await self._cached_json(http, url, "jwks", refresh=refresh)


async def fetch_json(http: aiohttp.ClientSession, url: str, *,
                     data: dict[str, str] | None = None,
                     authorization: str | None = None) -> dict[str, Any]:
    """GET (or POST a form to) a provider URL through the egress-checked session; never
    follows redirects. ``OidcRefused("provider_unavailable")`` for anything but JSON."""
    try:
        if data is None:
            resp_cm = http.get(url, allow_redirects=False,
                               headers={"Accept": "application/json"})
        else:
            headers = {"Accept": "application/json"}
            if authorization:
                headers["Authorization"] = authorization
            resp_cm = http.post(url, data=data, allow_redirects=False, headers=headers)
        async with resp_cm as resp:
            body = await resp.content.read(_MAX_DOC_BYTES + 1)
            status = resp.status
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise OidcRefused("provider_unavailable", f"{url}: {exc!r}", status=502) from exc
    if len(body) > _MAX_DOC_BYTES:
        raise OidcRefused("provider_unavailable", f"{url}: answer too large", status=502)
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise OidcRefused("provider_unavailable", f"{url}: not JSON ({status})",
                          status=502) from exc
    if not isinstance(doc, dict):
        raise OidcRefused("provider_unavailable", f"{url}: not a JSON object", status=502)
    if status != 200:
        err = str(doc.get("error", status))[:64]
        raise OidcRefused("token_refused", f"{url}: {err}", status=400)
    return doc


def authorization_url(doc: dict[str, Any], settings: OrgOidc, *, redirect_uri: str,
                      state: str, pending: Pending, login_hint: str = "") -> str:
    """The provider's authorization URL: code flow, PKCE S256, state and nonce."""
    extra: dict[str, str] = {
        "nonce": pending.nonce,
        # (the stubs leave this helper unannotated; it returns the base64url SHA-256)
        "code_challenge": str(create_s256_code_challenge(  # type: ignore[no-untyped-call]
            pending.verifier)),
        "code_challenge_method": "S256",
    }
    if settings.hosted_domain:
        extra["hd"] = settings.hosted_domain
    if login_hint:
        extra["login_hint"] = login_hint
    return str(prepare_grant_uri(doc["authorization_endpoint"], settings.client_id, "code",
                                 redirect_uri=redirect_uri, scope=SCOPES, state=state,
                                 **extra))


def allowed_algs(doc: dict[str, Any], settings: OrgOidc) -> list[str]:
    """The algorithms an ID token may use: those the provider publishes, never ``none``,
    HMAC ones only when the administrator allowed them. RS256 when nothing is listed
    (OpenID Connect Discovery 1.0, section 3)."""
    listed = doc.get("id_token_signing_alg_values_supported") or ["RS256"]
    out = []
    for alg in listed:
        if not isinstance(alg, str) or alg == "none":
            continue
        if alg.startswith("HS") and not settings.allow_hmac:
            continue
        out.append(alg)
    return out


def expected_issuer(doc: dict[str, Any], claims: dict[str, Any]) -> str:
    """The issuer the token must carry: the discovery document's, with Entra's
    ``{tenantid}`` template filled in from the token's own ``tid``."""
    issuer = str(doc["issuer"])
    if ENTRA_TENANT_TEMPLATE in issuer:
        tid = claims.get("tid")
        if not isinstance(tid, str) or not _TENANT_RE.fullmatch(tid):
            raise OidcRefused("wrong_issuer", "no usable tid for the issuer template")
        issuer = issuer.replace(ENTRA_TENANT_TEMPLATE, tid)
    return issuer


async def validate_id_token(store: OidcStore, http: aiohttp.ClientSession, doc: dict[str, Any],
                            settings: OrgOidc, client_secret: str | None, id_token: str,
                            nonce: str, now: float) -> dict[str, Any]:
    """The claims of a genuine, fresh ID token meant for us, or ``OidcRefused``."""
    if not isinstance(id_token, str) or id_token.count(".") != 2 or len(id_token) > 16384:
        raise OidcRefused("bad_token", "not a compact JWS")
    try:
        header = jws.extract_compact(id_token.encode()).protected
    except (JoseError, ValueError) as exc:
        raise OidcRefused("bad_token", f"unreadable header: {exc!r}") from exc
    alg = header.get("alg")
    algs = allowed_algs(doc, settings)
    if alg not in algs:
        raise OidcRefused("wrong_alg", f"alg {alg!r} not in {algs}")
    if str(alg).startswith("HS"):
        if not client_secret:
            raise OidcRefused("wrong_alg", "HMAC without a client secret")
        keys = KeySet.import_key_set({"keys": [{
            "kty": "oct", "k": _b64(client_secret.encode())}]})
    else:
        keys = KeySet.import_key_set(cast(Any, await store.jwks(http, doc["jwks_uri"])))
        kid = header.get("kid")
        if kid is not None and not any(k.kid == kid for k in keys.keys):
            # the provider rotated its keys: read them again, once
            keys = KeySet.import_key_set(
                cast(Any, await store.jwks(http, doc["jwks_uri"], refresh=True)))
    try:
        token = jwt.decode(id_token, keys, algorithms=[str(alg)])
    except (JoseError, ValueError) as exc:
        raise OidcRefused("bad_signature", f"{exc!r}") from exc
    claims = dict(token.claims)
    issuer = expected_issuer(doc, claims)
    if claims.get("iss") != issuer:
        raise OidcRefused("wrong_issuer", f"iss {claims.get('iss')!r} is not {issuer!r}")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if settings.client_id not in audiences:
        raise OidcRefused("wrong_audience", f"aud {aud!r}")
    if len(audiences) > 1 and claims.get("azp") != settings.client_id:
        raise OidcRefused("wrong_audience", f"azp {claims.get('azp')!r}")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int | float) or isinstance(exp, bool) or exp + CLOCK_LEEWAY_S < now:
        raise OidcRefused("expired", f"exp {exp!r}")
    if not isinstance(iat, int | float) or iat - CLOCK_LEEWAY_S > now:
        raise OidcRefused("expired", f"iat {iat!r} in the future")
    if not isinstance(claims.get("nonce"), str) or not secrets.compare_digest(
            str(claims["nonce"]).encode(), nonce.encode()):
        raise OidcRefused("wrong_nonce", "nonce differs from the sign-in's")
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise OidcRefused("bad_token", "no subject")
    if await store.nonce_seen(nonce):
        raise OidcRefused("wrong_nonce", "ID token already used")
    return claims


def client_secret_basic(client_id: str, secret: str) -> str:
    """The ``Authorization`` header of RFC 6749 section 2.3.1: both parts form-encoded."""
    import base64
    from urllib.parse import quote_plus

    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def _b64(raw: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the provider says signed in, once the claims are checked against the org."""

    issuer: str
    subject: str
    email: str
    name: str
    role: Role  # from groups, or the org's default (for a new account)


def identity_of(settings: OrgOidc, claims: dict[str, Any]) -> Identity:
    """Check the claims against the org: verified email in one of its domains, ``hd``
    for Google Workspace, ``tid`` for Entra; the role from ``groups``."""
    email = claims.get("email")
    if not isinstance(email, str) and settings.provider == "entra":
        email = claims.get("preferred_username")
    if not isinstance(email, str) or "@" not in email:
        raise OidcRefused("no_email", "the token has no email", status=403)
    email = normalize_email(email)
    if "email_verified" in claims and claims["email_verified"] is not True:
        raise OidcRefused("unverified_email", email, status=403)
    if settings.domains and email_domain(email) not in settings.domains:
        raise OidcRefused("unknown_domain", email_domain(email), status=403)
    if settings.hosted_domain and claims.get("hd") != settings.hosted_domain:
        raise OidcRefused("unknown_domain", f"hd {claims.get('hd')!r}", status=403)
    if settings.tenant_ids and claims.get("tid") not in settings.tenant_ids:
        raise OidcRefused("unknown_domain", f"tid {claims.get('tid')!r}", status=403)
    role: Role = settings.default_role
    groups = claims.get("groups")
    if isinstance(groups, list):
        for g in groups:
            mapped = settings.group_roles.get(str(g))
            if mapped is not None and _ROLE_RANK[mapped] > _ROLE_RANK[role]:
                role = mapped
    name = claims.get("name")
    return Identity(issuer=str(claims["iss"]), subject=str(claims["sub"]), email=email,
                    name=name if isinstance(name, str) else "", role=role)


def username_candidates(email: str) -> list[str]:
    """Usernames to try for a new account: the address's local part, then numbered."""
    mailbox = email.split("@", 1)[0].split("+", 1)[0].lower()  # no "+tag"
    local = re.sub(r"[^a-z0-9._-]", "", mailbox)[:60] or "staff"
    if len(local) < 2:
        local = local + "-staff"
    return [local] + [f"{local}{i}" for i in range(2, 50)]
