"""Keep the capability matrix in README.md equal to the adapters' declarations.

    python -m meeting_adapters.matrix            # print the table
    python -m meeting_adapters.matrix --check README.md
    python -m meeting_adapters.matrix --write README.md

The table sits between ``<!-- capability-matrix:start -->`` and
``<!-- capability-matrix:end -->``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Final

from .registry import capability_table

START: Final = "<!-- capability-matrix:start -->"
END: Final = "<!-- capability-matrix:end -->"


def replace_table(text: str, table: str) -> str:
    """``text`` with the marked section replaced by ``table`` (ValueError without markers)."""
    try:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
    except ValueError:
        raise ValueError(f"no {START} ... {END} section") from None
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meeting_adapters.matrix")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", metavar="FILE", type=Path)
    group.add_argument("--write", metavar="FILE", type=Path)
    args = parser.parse_args(argv)
    table = capability_table()
    if args.check is None and args.write is None:
        print(table)
        return 0
    path: Path = args.check or args.write
    text = path.read_text(encoding="utf-8")
    wanted = replace_table(text, table)
    if args.write is not None:
        path.write_text(wanted, encoding="utf-8")
        return 0
    if wanted != text:
        print(f"{path}: capability matrix is out of date; run with --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
