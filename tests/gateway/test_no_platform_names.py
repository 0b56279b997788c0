"""The gateway never names a platform: what is platform-specific (form fields, warnings,
webhooks, pools, ...) comes from the adapters through meeting_adapters/registry.py.

Only the modules that run Janus by nature may name one: ``demo.py`` (the local demo),
``janus_runner.py`` (starts the demo's Janus) and ``cli.py`` (``classguard janus-hook``),
with the demo's own room page and script. Every other Python module, template and script
of gateway/ is read for a string literal equal to a registered platform kind.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Collection
from pathlib import Path

from meeting_adapters.registry import ADAPTERS

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"
ALLOWED_MODULES = frozenset({"demo.py", "janus_runner.py", "cli.py"})
# the page and script of the demo's Janus room, rendered and served by demo.py
ALLOWED_ASSETS = frozenset({"templates/janus_room.html", "static/janus_room.js"})
# (module, literal): the same word meaning something else than a platform
OTHER_MEANING = frozenset({
    ("oidc.py", "generic"),  # an OpenID provider kind: any provider by its discovery URL
})


def python_literals(source: str, kinds: Collection[str]) -> list[tuple[int, str]]:
    """``(line, literal)`` for every string constant (f-string parts included) that is
    one of ``kinds``."""
    return sorted((node.lineno, node.value) for node in ast.walk(ast.parse(source))
                  if isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and node.value in kinds)


def quoted_words(text: str, kinds: Collection[str]) -> list[tuple[int, str]]:
    """``(line, word)`` for every quoted ``'kind'`` or ``"kind"`` in a template or script."""
    found = []
    for no, line in enumerate(text.splitlines(), 1):
        for m in re.finditer(r"""(["'])([a-z_]+)\1""", line):
            if m.group(2) in kinds:
                found.append((no, m.group(2)))
    return found


def test_finders_see_a_platform_name() -> None:
    kinds = {"janus", "zoom"}
    source = 'x = "janus"\nif kind == "zoom":\n    y = f"{kind}-janus"\nz = "janus_ws"\n'
    assert python_literals(source, kinds) == [(1, "janus"), (2, "zoom")]
    assert quoted_words('<b data-k="zoom">\n{% if k == \'janus\' %}"janus-x"', kinds) \
        == [(1, "zoom"), (2, "janus")]


def test_gateway_names_no_platform() -> None:
    kinds = set(ADAPTERS)
    assert {"janus", "generic", "google_meet"} <= kinds  # the registry is read for real
    found = []
    for path in sorted(GATEWAY.rglob("*.py")):
        rel = path.relative_to(GATEWAY).as_posix()
        if rel in ALLOWED_MODULES:
            continue
        found += [(rel, line, word)
                  for line, word in python_literals(path.read_text("utf-8"), kinds)
                  if (rel, word) not in OTHER_MEANING]
    for pattern in ("templates/**/*.html", "static/**/*.js"):
        for path in sorted(GATEWAY.glob(pattern)):
            rel = path.relative_to(GATEWAY).as_posix()
            if rel in ALLOWED_ASSETS:
                continue
            found += [(rel, line, word)
                      for line, word in quoted_words(path.read_text("utf-8"), kinds)]
    assert found == [], (
        "platform names in gateway/: declare what is platform-specific in the adapter "
        f"(meeting_adapters/base.py) and read it through the registry: {found}")
