"""Short join codes: generation, display, what students type, lookup keys."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.codes import (
    ALPHABET,
    code_lookup_key,
    format_code,
    is_canonical,
    new_code,
    normalize_code,
)


def test_alphabet_is_crockford() -> None:
    assert ALPHABET == "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    assert len(set(ALPHABET)) == 32
    assert not set("ILOU") & set(ALPHABET)


def test_new_code_shape_and_spread() -> None:
    codes = {new_code() for _ in range(2000)}
    assert len(codes) == 2000
    assert all(re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{10}", c) for c in codes)
    # Every position uses the whole alphabet (50 bits, no fixed leading character).
    for i in range(10):
        assert len({c[i] for c in codes}) == 32


def test_format_code() -> None:
    assert format_code("ABCDE12345") == "ABCDE-12345"
    for bad in ("ABCDE-12345", "abcde12345", "ABCDEU2345", "ABC"):
        with pytest.raises(ValueError):
            format_code(bad)


@pytest.mark.parametrize(
    ("typed", "code"),
    [
        ("ABCDE-12345", "ABCDE12345"),
        ("abcde12345", "ABCDE12345"),
        ("  abcde 12345  ", "ABCDE12345"),
        ("ab cd e-1 2 3 4 5", "ABCDE12345"),
        ("ABCDE\u201312345", "ABCDE12345"),  # en dash from a word processor
        ("ABCDE\u00a012345", "ABCDE12345"),  # no-break space
        ("ＡＢＣＤＥ－１２３４５", "ABCDE12345"),  # full-width phone keyboard
        ("iLoOl-IiOoL", "1100111001"),  # Crockford: I, L -> 1; O -> 0
        ("ABCDE_12345", "ABCDE12345"),
    ],
)
def test_normalize_accepts(typed: str, code: str) -> None:
    assert normalize_code(typed) == code


@pytest.mark.parametrize(
    "typed",
    [
        "",
        "ABCDE-1234",  # 9
        "ABCDE-123456",  # 11
        "ABCDE-1234U",  # U is not in the alphabet
        "ABCDE-1234!",
        "ABCDÉ-12345",  # accented letter
        "ABCDE-1234ß",  # "ß".upper() == "SS" must not sneak in
        "ABCDE-1234\u0131",  # dotless i upper-cases to I
        "A" * 65,
        "ABCDE\x0012345",
    ],
)
def test_normalize_rejects(typed: str) -> None:
    assert normalize_code(typed) is None


def test_normalize_rejects_non_strings() -> None:
    assert normalize_code(None) is None  # type: ignore[arg-type]
    assert normalize_code(1234567890) is None  # type: ignore[arg-type]


@given(st.text(max_size=80))
@example("\ud800" * 10)
@example("\ufb01" * 10)  # "ﬁ" ligature expands under NFKC
def test_normalize_never_raises_and_only_returns_canonical(text: str) -> None:
    out = normalize_code(text)
    assert out is None or is_canonical(out)


@given(st.integers(min_value=0, max_value=10))
def test_round_trip_through_display_and_typing(_: int) -> None:
    code = new_code()
    shown = format_code(code)
    assert normalize_code(shown) == code
    assert normalize_code(shown.lower().replace("-", " ")) == code


def test_lookup_key_is_sha256_hex_of_canonical_code() -> None:
    assert code_lookup_key("ABCDE12345") == hashlib.sha256(b"ABCDE12345").hexdigest()
    assert code_lookup_key("ABCDE12345") != code_lookup_key("ABCDE12346")
    with pytest.raises(ValueError):
        code_lookup_key("abcde-12345")
