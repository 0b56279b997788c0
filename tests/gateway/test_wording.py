"""The Vietnamese catalogue keeps its own glossary: one word for a link, "khóa" for
locking a class only, and students alone are addressed as "em"."""

from __future__ import annotations

import re

from gateway.i18n import catalogue

# Pages a student reads (the only place "em" is the reader).
STUDENT_PREFIXES = ("reason.", "advice.", "wait.", "join.", "room.", "demo.", "_glossary.",
                    "report_form.")


def test_one_word_for_a_link() -> None:
    vi = catalogue("vi")
    assert "_glossary.link" in vi
    used = [k for k, v in vi.items() if not k.startswith("_")
            and any(w in v.lower() for w in ("đường dẫn", "đường link", "đường liên kết"))]
    assert used == [], used


def test_khoa_means_locking_a_class_only() -> None:
    vi = catalogue("vi")
    assert vi["nav.keys"] == vi["keys.title"] == "Khóa ký số"
    for key in ("staff.disable", "staff.disabled", "staff.enable", "staff.confirm_disable"):
        assert "khóa" not in vi[key].lower(), (key, vi[key])


def test_staff_pages_do_not_address_staff_as_em() -> None:
    em = re.compile(r"(?<!\w)em(?!\w)", re.IGNORECASE)
    found = {k: v for k, v in catalogue("vi").items()
             if not k.startswith(STUDENT_PREFIXES) and em.search(v)}
    assert found == {}, found
