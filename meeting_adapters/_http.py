"""Small helpers shared by the platform modules: settings fields, masking, HTTP calls.

Pure helpers validate settings fields and mask secrets; ``fetch`` is the one place where
an adapter's HTTP call turns transport failures into ``UpstreamUnavailable`` (fail closed).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from .base import InvalidSettings, UpstreamUnavailable
from .generic import _is_loopback, parse_meeting_url

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "MASK",
    "HttpAnswer",
    "check_keys",
    "fetch",
    "JsonTooDeep",
    "json_bounded",
    "mask",
    "opt_bool",
    "opt_int",
    "req_secret",
    "req_str",
    "req_url",
    "ws_url",
]

MASK: Final = "***"

log = logging.getLogger("classguard.platforms")


# --- pure: webhook bodies -------------------------------------------------------------


def _bracket_depth(body: bytes) -> int:
    depth = cur = 0
    in_str = escaped = False
    for ch in body:
        if in_str:
            if escaped:
                escaped = False
            elif ch == 0x5C:  # backslash
                escaped = True
            elif ch == 0x22:
                in_str = False
        elif ch == 0x22:
            in_str = True
        elif ch in (0x5B, 0x7B):
            cur += 1
            depth = max(depth, cur)
        elif ch in (0x5D, 0x7D):
            cur -= 1
    return depth


class JsonTooDeep(ValueError):
    """JSON nested deeper than we parse."""


def json_bounded(data: str | bytes, *, max_depth: int = 64) -> Any:
    """``json.loads`` for untrusted text (a webhook body a platform, or anyone, posted;
    the gateway's request bodies and WebSocket frames through ``gateway/web_util.py``).

    A nesting bomb is cut before the parser recurses (brackets outside strings are
    counted first), so it is a ``JsonTooDeep``, never a ``RecursionError`` out of the
    handler. Every failure is a ``ValueError``."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if _bracket_depth(raw) > max_depth:
        raise JsonTooDeep(f"JSON nested deeper than {max_depth}")
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError as exc:  # NOTE: unreachable after the depth check; kept closed
        raise JsonTooDeep("JSON nested too deeply") from exc


# --- pure: settings fields ------------------------------------------------------------


def check_keys(settings: Mapping[str, Any], kind: str, allowed: Iterable[str]) -> None:
    """Refuse unknown setting names and a wrong ``kind`` (typos must not pass silently)."""
    if not isinstance(settings, Mapping):
        raise InvalidSettings("platform", "must be an object")
    known = set(allowed) | {"kind"}
    for key in settings:
        if key not in known:
            raise InvalidSettings(f"platform.{key}", f"is not a setting of the {kind} platform")
    if settings.get("kind", kind) != kind:
        raise InvalidSettings("platform.kind", f"must be {kind!r}")


def req_str(settings: Mapping[str, Any], name: str, *, max_len: int = 200,
            default: str | None = None) -> str:
    value = settings.get(name, default)
    field = f"platform.{name}"
    if value is None:
        raise InvalidSettings(field, "is required")
    if not isinstance(value, str) or not value.strip():
        raise InvalidSettings(field, "must be a non-empty string")
    value = value.strip()
    if len(value) > max_len or any(not c.isprintable() for c in value):
        raise InvalidSettings(field, f"must be at most {max_len} printable characters")
    return value


def req_secret(settings: Mapping[str, Any], name: str, *, min_len: int = 8,
               required: bool = True) -> str | None:
    """A shared secret: at least ``min_len`` characters, never echoed in errors."""
    field = f"platform.{name}"
    value = settings.get(name)
    if value is None or value == "":
        if required:
            raise InvalidSettings(field, "is required")
        return None
    if not isinstance(value, str) or len(value) > 4096:
        raise InvalidSettings(field, "must be a string of at most 4096 characters")
    if len(value) < min_len:
        raise InvalidSettings(field, f"must be at least {min_len} characters")
    if any(c.isspace() or not c.isprintable() for c in value) and "PRIVATE KEY" not in value:
        raise InvalidSettings(field, "must not contain spaces or control characters")
    return value


def req_url(settings: Mapping[str, Any], name: str, *, required: bool = True) -> str | None:
    value = settings.get(name)
    if value is None and not required:
        return None
    if value is None:
        raise InvalidSettings(f"platform.{name}", "is required")
    return parse_meeting_url(value, f"platform.{name}")


def ws_url(settings: Mapping[str, Any], name: str) -> str:
    """``wss://`` URL (``ws://`` only on loopback: a Janus beside the gateway)."""
    field = f"platform.{name}"
    value = settings.get(name)
    if not isinstance(value, str) or not value.strip():
        raise InvalidSettings(field, "is required (e.g. wss://janus.example.org/ws)")
    text = value.strip()
    scheme, _, rest = text.partition("://")
    if scheme.lower() not in ("ws", "wss") or not rest:
        raise InvalidSettings(field, "must start with wss://")
    # Reuse the web URL checks (no credentials, valid host) on the https twin.
    checked = parse_meeting_url(("https" if scheme.lower() == "wss" else "http") + "://" + rest,
                                field)
    host = urlsplit(checked).hostname or ""
    if scheme.lower() == "ws" and not _is_loopback(host):
        raise InvalidSettings(field, "must use wss:// (ws:// is allowed only for localhost)")
    return scheme.lower() + checked[checked.index("://"):]


def opt_int(settings: Mapping[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = settings.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidSettings(f"platform.{name}", f"must be an integer from {lo} to {hi}")
    return value


def opt_bool(settings: Mapping[str, Any], name: str, default: bool) -> bool:
    value = settings.get(name, default)
    if not isinstance(value, bool):
        raise InvalidSettings(f"platform.{name}", "must be true or false")
    return value


def mask(settings: Mapping[str, Any], secret_names: Iterable[str]) -> dict[str, Any]:
    """A copy with each present secret replaced by ``***``."""
    out = dict(settings)
    for name in secret_names:
        if out.get(name):
            out[name] = MASK
    return out


# --- I/O ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    text: str
    content_type: str
    # the answer's headers (case-insensitive names folded to lower case)
    headers: Mapping[str, str] = field(default_factory=dict)
    # the answer's Retry-After header (seconds or an HTTP date), for platforms whose
    # documents say to honour it
    retry_after: str | None = None

    def json(self) -> Any:
        try:
            return json.loads(self.text)
        except (ValueError, RecursionError):
            return None


async def fetch(
    session: aiohttp.ClientSession | None,
    kind: str,
    method: str,
    url: str,
    *,
    timeout_s: float = 10.0,
    server_errors: bool = False,
    **kwargs: Any,
) -> HttpAnswer:
    """One HTTP call; transport errors, redirects and 5xx become ``UpstreamUnavailable``.

    ``server_errors=True``: a 5xx answer is returned (logged) instead, for an adapter that
    retries the ones its platform documents as temporary (``Retry-After``).

    The session must come from ``egress.guarded_session`` (every address connected to is
    checked against the operator's egress policy); redirects are not followed, as the
    place they lead to was never checked nor agreed by anyone.

    NOTE: the URL may carry a checksum or token; it is never put into an error or a log.
    NOTE: every failure gives the same message to callers (the detail goes to the log
    only), so answers cannot tell an open port from a closed one or a denied address.
    ``server_errors=True`` returns 5xx answers instead (for a caller that retries them
    as its platform documents); it still raises on everything else above.
    """
    import aiohttp
    import yarl

    from .egress import EgressRefused, session_policy

    if session is None or session_policy(session) is None:
        raise UpstreamUnavailable(kind, f"{kind}: no egress-checked HTTP session configured")
    host = urlsplit(url).netloc
    try:
        # encoded=True: send the query string byte for byte as signed (BigBlueButton
        # checksums cover it; re-quoting ':' or '/' would break them).
        async with session.request(
            method, yarl.URL(url, encoded=True), timeout=aiohttp.ClientTimeout(total=timeout_s),
            allow_redirects=False, **kwargs,
        ) as resp:
            text = await resp.text() if resp.status < 300 or resp.status >= 400 else ""
            answer = HttpAnswer(resp.status, text, resp.content_type,
                                {k.lower(): v for k, v in resp.headers.items()},
                                resp.headers.get("Retry-After"))
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, EgressRefused):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, EgressRefused):
            log.warning("%s: call to %s refused by the egress policy: %s", kind, host, cause)
        else:
            log.warning("%s: call to %s failed: %s", kind, host, type(exc).__name__)
        raise UpstreamUnavailable(kind, f"{kind}: platform unreachable") from None
    if 300 <= answer.status < 400:
        log.warning("%s: %s answered a redirect (%d); not followed", kind, host, answer.status)
        raise UpstreamUnavailable(kind, f"{kind}: platform unreachable")
    if answer.status >= 500:
        log.warning("%s: %s answered %d", kind, host, answer.status)
        if not server_errors:
            raise UpstreamUnavailable(kind, f"{kind}: platform unreachable")
    return answer
