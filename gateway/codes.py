"""Short join codes for students who must type their link.

A code is 10 characters of Crockford base32 (50 random bits from ``secrets``), shown as
``XXXXX-XXXXX`` and stored canonical (no dash). It maps to the same ``jti`` as the
student's link; redemption is rate-limited by the caller, which is what makes 50 bits
enough against online guessing.
"""

from __future__ import annotations

import hashlib
import secrets
import unicodedata
from typing import Final

ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH: Final = 10
_BITS: Final = 5 * CODE_LENGTH
# Anything longer than a code spaced out generously is not a code: bounded work.
_MAX_INPUT_CHARS: Final = 64
# Crockford's decoding rules: I and L read as 1, O as 0. U stays invalid (it is left
# out of the alphabet so that codes do not spell words by accident).
_SUBSTITUTIONS: Final = {"I": "1", "L": "1", "O": "0"}
# Separators people type or that phones/word processors substitute for "-".
_SEPARATORS: Final = frozenset(" -_.\u2010\u2011\u2012\u2013\u2014\u2212\u00a0\u3000")
_ALPHABET_SET: Final = frozenset(ALPHABET)


def new_code() -> str:
    """A fresh random code in canonical form (10 characters, no dash)."""
    n = secrets.randbits(_BITS)
    return "".join(ALPHABET[(n >> (5 * i)) & 31] for i in reversed(range(CODE_LENGTH)))


def is_canonical(code: object) -> bool:
    return (
        isinstance(code, str)
        and len(code) == CODE_LENGTH
        and all(ch in _ALPHABET_SET for ch in code)
    )


def format_code(code: str) -> str:
    """``"ABCDE12345"`` -> ``"ABCDE-12345"`` for display and printing."""
    if not is_canonical(code):
        raise ValueError("not a canonical join code")
    return f"{code[:5]}-{code[5:]}"


def normalize_code(user_input: str) -> str | None:
    """What a student typed -> the canonical code, or None. Never raises.

    NFKC (full-width digits and letters from phone keyboards become ASCII), separators
    and whitespace dropped, upper-cased, Crockford substitutions applied; anything else
    outside the alphabet (including U) makes it invalid.
    """
    if not isinstance(user_input, str) or len(user_input) > _MAX_INPUT_CHARS:
        return None
    text = unicodedata.normalize("NFKC", user_input)
    out = []
    for ch in text:
        if ch in _SEPARATORS or ch.isspace():
            continue
        # ASCII only before upper(): "ß".upper() is "SS", "ı".upper() is "I".
        if not ch.isascii():
            return None
        up = ch.upper()
        up = _SUBSTITUTIONS.get(up, up)
        if up not in _ALPHABET_SET:
            return None
        out.append(up)
    if len(out) != CODE_LENGTH:
        return None
    return "".join(out)


def code_lookup_key(code: str) -> str:
    """SHA-256 hex of the canonical code: the Redis key part, so Redis never holds a
    usable code.

    NOTE: unsalted and unkeyed by design (any gateway process can compute it, no secret
    to distribute). Someone holding a Redis dump could still enumerate 2^50 codes
    offline; what it protects against is casual exposure (logs, key listings, MONITOR).
    """
    if not is_canonical(code):
        raise ValueError("not a canonical join code")
    return hashlib.sha256(code.encode("ascii")).hexdigest()
