"""Which staff passwords are too weak to keep: a pure check against a shipped list.

The list (``gateway/data/common_passwords.txt.gz``, see ``gateway/data/README.md``) holds
the 30,000 most common passwords of leaked dumps. A password is refused when it is

* shorter than the minimum (12 by default) or longer than 1024 characters;
* the username, or contains it;
* on the list, ignoring case and surrounding spaces;
* a listed password with digits and symbols around it (``Password2024!``), the same
  few characters over and over (``abcabcabcabc``, ``111111111111``), or a run of the
  digits, the alphabet or a keyboard row (``123456789012``).

NOTE: a list and a few rules instead of a strength estimator (zxcvbn): the answer is the
same on every machine and every version, can be explained to a teacher in one sentence,
and costs one set lookup. Long passphrases of ordinary words pass, which is intended.
"""

from __future__ import annotations

import gzip
import re
from functools import cache
from importlib import resources

MIN_LENGTH = 12
MAX_LENGTH = 1024
_AFFIXES = re.compile(r"^[\W\d_]*(.*?)[\W\d_]*$")
_RUNS = ("0123456789" * 4, "abcdefghijklmnopqrstuvwxyz" * 2, "qwertyuiopasdfghjklzxcvbnm" * 2)

Problem = str  # "too_short" | "too_long" | "contains_username" | "common" | "repetitive"


@cache
def common_passwords() -> frozenset[str]:
    """The shipped list, lowercased (read once; it never changes while running)."""
    raw = resources.files("gateway").joinpath("data", "common_passwords.txt.gz").read_bytes()
    return frozenset(line.strip().lower() for line in gzip.decompress(raw).decode().split("\n")
                     if line.strip())


def password_problem(password: str, username: str = "", *,
                     min_length: int = MIN_LENGTH) -> Problem | None:
    """Why ``password`` may not be used, or None when it may."""
    if len(password) < min_length:
        return "too_short"
    if len(password) > MAX_LENGTH:
        return "too_long"
    folded = password.strip().lower()
    name = username.strip().lower()
    if name and (folded == name or (len(name) >= 4 and name in folded)):
        return "contains_username"
    listed = common_passwords()
    if folded in listed or folded.replace(" ", "") in listed:
        return "common"
    core = _AFFIXES.match(folded)
    stem = core.group(1) if core else ""
    if stem and stem in listed:
        return "common"
    if any(folded in run or folded in run[::-1] for run in _RUNS):
        return "repetitive"
    for period in range(1, 5):
        if (folded[:period] * (len(folded) // period + 1)).startswith(folded):
            return "repetitive"
    return None
