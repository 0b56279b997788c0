"""Vietnamese order for lists of students: by given name, then the rest of the name.

A Vietnamese name is written family name, middle names, given name ("Nguyễn Văn An"),
and class lists are ordered by the given name. Letters follow the Vietnamese alphabet
(a ă â b c d đ e ê ...; Đ after D, tones after the base letter) through ICU's
Vietnamese collation, which carries CLDR's tailoring; the Unicode default order (what
``str`` comparison or DUCET alone give) puts "Ân" before "Anh" and "Đ" among the "D"s.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

import icu

T = TypeVar("T")

_local = threading.local()  # an ICU collator is not safe to share between threads


def _collator() -> icu.Collator:
    c = getattr(_local, "collator", None)
    if c is None:
        c = icu.Collator.createInstance(icu.Locale("vi_VN"))
        _local.collator = c
    return c


def name_key(name: str) -> tuple[bytes, bytes, str]:
    """Sort key of a full name: the given name (its last word), then the whole name,
    then the name itself so that the order is total."""
    words = " ".join(name.split())
    given = words.rsplit(" ", 1)[-1] if words else ""
    c = _collator()
    return bytes(c.getSortKey(given)), bytes(c.getSortKey(words)), name


def sort_by_name(items: Iterable[T], name: Callable[[T], str]) -> list[T]:
    """``items`` in Vietnamese class-list order of ``name(item)``."""
    return sorted(items, key=lambda it: name_key(name(it)))
