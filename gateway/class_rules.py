"""The rules of online classes that students read and acknowledge.

Where the rules come from: the class's own rules, else those of the nearest org in the
class's org chain (school, district, department) that set any, else the built-in text
of the catalogue (``join.rules_default_text``, Vietnamese and English).

A rules record is ``{"text": str | null, "term": str}``: ``text`` null keeps the
built-in text, ``term`` is a label such as ``2026-2027 HK1``. Its version is a hash of
both (of the built-in texts when ``text`` is null). A "term", for acknowledgments, is one
rules version: a student acknowledges each version once per class, and a changed text
or a new term label asks every student again (docs/operations.md, "Class rules").

An acknowledgment is stored per class as ``student -> version`` (so only the latest one
counts) and recorded as the audit event ``rules.acknowledged`` with the version; evidence
bundles include an involved student's acknowledgments (gateway/evidence_gather.py).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio as aioredis

from . import i18n
from .errors import ApiError
from .stores.keys import Keys

RULES_TEXT_MAX: Final = 4000
TERM_MAX: Final = 64
# How long the "I have read and agree" button of a refusal page stays usable.
ACK_TTL_S: Final = 15 * 60
_NONCE_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


@dataclass(frozen=True, slots=True)
class ClassRules:
    text: str | None  # None: the built-in text of the catalogue
    term: str
    source: str  # "class", "org" or "default"
    org: str | None  # the org whose rules apply (source "org")
    version: str

    def text_for(self, lang: str) -> str:
        return self.text if self.text is not None else i18n.t(lang, "join.rules_default_text")

    def to_json(self, lang: str) -> dict[str, Any]:
        return {"text": self.text, "term": self.term, "source": self.source, "org": self.org,
                "version": self.version, "shown_text": self.text_for(lang)}


def rules_version(text: str | None, term: str) -> str:
    """A short hash naming one rules text and term (what an acknowledgment refers to)."""
    if text is None:
        body = ["default", i18n.t("vi", "join.rules_default_text"),
                i18n.t("en", "join.rules_default_text"), term]
    else:
        body = ["text", text, term]
    raw = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(raw).hexdigest()[:32]


def _from_raw(raw: str | bytes, source: str, org: str | None) -> ClassRules:
    data = json.loads(raw)
    text = data.get("text")
    term = str(data.get("term") or "")
    text = text if isinstance(text, str) else None
    return ClassRules(text, term, source, org, rules_version(text, term))


DEFAULT_RULES: Final = ClassRules(None, "", "default", None, rules_version(None, ""))


def check_rules_body(data: Any) -> dict[str, Any] | None:
    """The validated record of a ``PUT .../rules`` body; None to clear (inherit).

    ``text``: null keeps the built-in text, else 1..4000 characters (line breaks kept,
    other control characters refused). ``term``: optional label, up to 64 characters."""
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_field", "the body must be an object")
    extra = set(data) - {"text", "term"}
    if extra:
        raise ApiError(400, "invalid_field", "unknown field", field=sorted(extra)[0])
    text = data.get("text")
    term = data.get("term", "")
    if term is None:
        term = ""
    if not isinstance(term, str) or len(term) > TERM_MAX or \
            any(not ch.isprintable() for ch in term):
        raise ApiError(400, "invalid_field", f"term must be a line of at most {TERM_MAX} "
                       "characters", field="term")
    term = term.strip()
    if text is not None:
        if not isinstance(text, str):
            raise ApiError(400, "invalid_field", "text must be a string or null", field="text")
        text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
        if not 1 <= len(text) <= RULES_TEXT_MAX:
            raise ApiError(400, "invalid_field",
                           f"text must be 1 to {RULES_TEXT_MAX} characters", field="text")
        if any(not ch.isprintable() and ch not in "\n\t" for ch in text):
            raise ApiError(400, "invalid_field", "text must not hold control characters",
                           field="text")
    if text is None and not term:
        return None
    return {"text": text, "term": term}


class RulesStore:
    """Rules records, acknowledgments and the one-use acknowledgment references."""

    def __init__(self, r: aioredis.Redis, prefix: str) -> None:
        self.r = r
        self.k = Keys(prefix)

    async def org_rules(self, org: str) -> dict[str, Any] | None:
        raw = await self.r.get(self.k.org_rules(org))
        return dict(json.loads(raw)) if raw else None

    async def class_rules(self, cid: str) -> dict[str, Any] | None:
        raw = await self.r.get(self.k.class_rules(cid))
        return dict(json.loads(raw)) if raw else None

    async def set_org_rules(self, org: str, record: dict[str, Any] | None) -> None:
        if record is None:
            await self.r.delete(self.k.org_rules(org))
        else:
            await self.r.set(self.k.org_rules(org), json.dumps(record, ensure_ascii=False))

    async def set_class_rules(self, cid: str, record: dict[str, Any] | None) -> None:
        if record is None:
            await self.r.delete(self.k.class_rules(cid))
        else:
            await self.r.set(self.k.class_rules(cid), json.dumps(record, ensure_ascii=False))

    async def effective(self, cid: str | None, chain: Sequence[str]) -> ClassRules:
        """The rules that apply to class ``cid`` (None: to a new class of ``chain[0]``);
        ``chain`` is the class's org and its ancestors, nearest first."""
        if cid is not None:
            raw = await self.r.get(self.k.class_rules(cid))
            if raw:
                return _from_raw(raw, "class", None)
        for org in chain:
            raw = await self.r.get(self.k.org_rules(org))
            if raw:
                return _from_raw(raw, "org", org)
        return DEFAULT_RULES

    async def acknowledged(self, cid: str, sid: str, version: str) -> bool:
        got = await self.r.hget(self.k.rules_ack(cid), sid)
        if isinstance(got, bytes):
            got = got.decode()
        return bool(got == version)

    async def acknowledge(self, cid: str, sid: str, version: str) -> None:
        await self.r.hset(self.k.rules_ack(cid), sid, version)

    async def new_ack_ref(self, cid: str, *, sid: str, jti: str, version: str, device: str,
                          via: str) -> str:
        """A one-use reference for the acknowledgment form, bound to the attempt's link
        and device: ``<class id>.<nonce>``."""
        nonce = secrets.token_urlsafe(16)
        body = json.dumps({"sid": sid, "jti": jti, "version": version, "device": device,
                           "via": via})
        await self.r.set(self.k.rules_ack_ref(cid, nonce), body, ex=ACK_TTL_S)
        return f"{cid}.{nonce}"

    async def take_ack_ref(self, ref: str, device: str | None) -> tuple[str, dict[str, Any]] | None:
        """``(class id, {sid, jti, version, device, via})`` of a live reference used from
        its own device, consumed; None otherwise (left in place for a wrong device)."""
        cid, _, nonce = ref.rpartition(".")
        if not cid or not 16 <= len(nonce) <= 32 or not set(nonce) <= _NONCE_CHARS or \
                len(cid) > 100:
            return None
        key = self.k.rules_ack_ref(cid, nonce)
        raw = await self.r.get(key)
        if not raw:
            return None
        data = dict(json.loads(raw))
        if device is None or data.get("device") != device:
            return None
        if not await self.r.delete(key):
            return None  # used at the same moment by another request
        return cid, data
