"""Translation catalogue: Vietnamese first, English second.

Catalogues are JSON files in ``gateway/locale/`` (``vi.json``, ``en.json``) with the same
keys; ``tests/gateway/test_i18n.py`` keeps them complete. Every user-facing string goes
through ``t``.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from aiohttp import web

LANGS = ("vi", "en")
DEFAULT_LANG = "vi"
LANG_COOKIE = "cg_lang"


@cache
def catalogue(lang: str) -> dict[str, str]:
    text = resources.files("gateway").joinpath("locale", f"{lang}.json").read_text("utf-8")
    data: dict[str, str] = json.loads(text)
    return data


def t(lang: str, key: str, **params: Any) -> str:
    """The message ``key`` in ``lang`` (falls back to Vietnamese, then to the key)."""
    cat = catalogue(lang if lang in LANGS else DEFAULT_LANG)
    template = cat.get(key) or catalogue(DEFAULT_LANG).get(key) or key
    if params:
        try:
            return template.format(**params)
        except (KeyError, IndexError, ValueError):
            return template
    return template


def request_lang(request: web.Request, default: str = DEFAULT_LANG) -> str:
    """``?lang=`` beats the language cookie, which beats Accept-Language."""
    q = request.query.get("lang")
    if q in LANGS:
        return q
    c = request.cookies.get(LANG_COOKIE)
    if c in LANGS:
        return c
    accept = request.headers.get("Accept-Language", "")
    for part in accept.split(","):
        tag = part.split(";")[0].strip().lower()[:2]
        if tag in LANGS:
            return tag
    return default
