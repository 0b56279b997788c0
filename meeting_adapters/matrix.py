"""Keep the capability matrix in README.md (and the feature matrix in docs/adapters.md)
equal to the adapters' declarations.

    python -m meeting_adapters.matrix            # print the table
    python -m meeting_adapters.matrix --check README.md
    python -m meeting_adapters.matrix --write README.md
    python -m meeting_adapters.matrix --features --write docs/adapters.md

The table sits between ``<!-- capability-matrix:start -->`` and
``<!-- capability-matrix:end -->`` (``feature-matrix`` with ``--features``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Final

from .registry import capability_table, feature_table

START: Final = "<!-- capability-matrix:start -->"
END: Final = "<!-- capability-matrix:end -->"
FEATURES_START: Final = "<!-- feature-matrix:start -->"
FEATURES_END: Final = "<!-- feature-matrix:end -->"


def replace_table(text: str, table: str, start: str = START, end: str = END) -> str:
    """``text`` with the marked section replaced by ``table`` (ValueError without markers)."""
    try:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
    except ValueError:
        raise ValueError(f"no {start} ... {end} section") from None
    return f"{head}{start}\n{table}\n{end}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meeting_adapters.matrix")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", metavar="FILE", type=Path)
    group.add_argument("--write", metavar="FILE", type=Path)
    parser.add_argument("--features", action="store_true",
                        help="the optional-part (Feature) matrix instead")
    args = parser.parse_args(argv)
    table = feature_table() if args.features else capability_table()
    marks = (FEATURES_START, FEATURES_END) if args.features else (START, END)
    if args.check is None and args.write is None:
        print(table)
        return 0
    path: Path = args.check or args.write
    text = path.read_text(encoding="utf-8")
    wanted = replace_table(text, table, *marks)
    if args.write is not None:
        path.write_text(wanted, encoding="utf-8")
        return 0
    if wanted != text:
        what = "feature" if args.features else "capability"
        print(f"{path}: {what} matrix is out of date; run with --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
