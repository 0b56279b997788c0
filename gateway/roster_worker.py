"""Parse roster uploads off the event loop: .xlsx and large files in a child process.

A workbook is a zip of XML; openpyxl parses it in pure Python, holding the GIL. Parsed on
the event loop (or in a thread of the serving process), one crafted 200 KB upload that
unpacks to tens of MiB stalled every other request for seconds. So:

1. Before anything is unpacked, the zip's central directory is read here (cheap) and a
   workbook declaring more than ``roster.MAX_XLSX_UNCOMPRESSED`` bytes is refused at
   once (413, naming both sizes).
2. Everything else that is an .xlsx, or larger than ``INLINE_MAX_BYTES``, is parsed by
   ``python -m gateway.roster_worker`` in a child process: with an address-space and a
   CPU-time limit of its own, a wall-clock timeout after which it is killed, and at most
   ``ROSTER_WORKERS`` at a time per gateway process (more uploads wait their turn, then
   get 503). The child enforces the cell and row limits (``roster.py``).
3. Small CSV and JSON files are parsed in a thread: their parser is linear and bounded
   by the byte limit.

The child speaks JSON over stdin/stdout: a header line, then the file's bytes in; the
parse result or ``{"error": code, "message": ...}`` out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from dataclasses import dataclass, field
from typing import Any

from .child_process import die_with_parent
from .roster import (
    Format,
    Rejection,
    RosterEntry,
    RosterError,
    RosterParse,
    check_xlsx_declared_size,
    looks_like_xlsx,
    parse_roster,
)

#: CSV and JSON up to this size are parsed in a thread of the serving process.
INLINE_MAX_BYTES = 256 * 1024
#: Wall-clock limit of one parse in the child (a 2,000-row workbook takes well under 1 s).
PARSE_TIMEOUT_S = 20.0
#: Child processes per gateway process; further uploads wait up to QUEUE_WAIT_S.
ROSTER_WORKERS = 2
QUEUE_WAIT_S = 10.0
#: The child's address-space limit: openpyxl on a 16 MiB workbook stays far below it.
CHILD_MEMORY_BYTES = 1 << 30
CHILD_CPU_S = 30


@dataclass(slots=True)
class RosterParser:
    """The per-application parser: owns the cap on concurrent child processes."""

    workers: int = ROSTER_WORKERS
    timeout_s: float = PARSE_TIMEOUT_S
    _sem: asyncio.Semaphore | None = field(default=None, init=False)

    def _semaphore(self) -> asyncio.Semaphore:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.workers)
        return self._sem

    async def parse(self, body: bytes, *, content_type: str | None, filename: str | None,
                    max_rows: int = 2000) -> RosterParse:
        """Like :func:`roster.parse_roster`, without ever blocking the event loop.
        Raises only ``RosterError``."""
        xlsx = looks_like_xlsx(body)
        if xlsx:
            check_xlsx_declared_size(body)
        elif len(body) <= INLINE_MAX_BYTES:
            return await asyncio.to_thread(parse_roster, body, content_type=content_type,
                                           filename=filename, max_rows=max_rows)
        sem = self._semaphore()
        try:
            await asyncio.wait_for(sem.acquire(), QUEUE_WAIT_S)
        except TimeoutError as exc:
            raise RosterError("busy", "other roster files are being read; try again in a "
                              "minute") from exc
        try:
            return await self._in_child(body, content_type, filename, max_rows)
        finally:
            sem.release()

    async def _in_child(self, body: bytes, content_type: str | None, filename: str | None,
                        max_rows: int) -> RosterParse:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.roster_worker",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=die_with_parent())  # noqa: PLW1509 - prctl and getppid only
        header = json.dumps({"content_type": content_type, "filename": filename,
                             "max_rows": max_rows}).encode() + b"\n"
        try:
            out, _ = await asyncio.wait_for(proc.communicate(header + body), self.timeout_s)
        except TimeoutError as exc:
            raise RosterError("too_complex", f"the file could not be read within "
                              f"{self.timeout_s:.0f} s; save it again as a plain .xlsx or "
                              "CSV with only the class list") from exc
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        return _result(out, proc.returncode)


def _result(out: bytes, returncode: int | None) -> RosterParse:
    try:
        d = json.loads(out)
    except ValueError as exc:
        # killed by its memory or CPU limit, or crashed: the file is what it choked on
        raise RosterError("too_complex", "the file needs more memory or time to read than "
                          f"a class list may (worker exit {returncode})") from exc
    if "error" in d:
        raise RosterError(str(d["error"]), str(d["message"]))
    fmt: Format = d["format"]
    return RosterParse(
        students=[RosterEntry(s["name"], s["external_id"], s["line"], s.get("email"))
                  for s in d["students"]],
        rejected=[Rejection(r["line"], r["code"], r["message"]) for r in d["rejected"]],
        format=fmt, encoding=d["encoding"])


def _limit_self() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY_BYTES, CHILD_MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_CPU, (CHILD_CPU_S, CHILD_CPU_S))


def main() -> int:
    _limit_self()
    data = sys.stdin.buffer.read()
    head, _, body = data.partition(b"\n")
    out: dict[str, Any]
    try:
        h = json.loads(head)
        parsed = parse_roster(body, content_type=h.get("content_type"),
                              filename=h.get("filename"), max_rows=int(h["max_rows"]))
        out = {
            "format": parsed.format, "encoding": parsed.encoding,
            "students": [{"name": s.name, "external_id": s.external_id, "line": s.line,
                          "email": s.email} for s in parsed.students],
            "rejected": [{"line": r.line, "code": r.code, "message": r.message}
                         for r in parsed.rejected],
        }
    except RosterError as exc:
        out = {"error": exc.code, "message": exc.message}
    except MemoryError:
        out = {"error": "too_complex", "message": "the file needs more memory to read than "
               "a class list may"}
    sys.stdout.write(json.dumps(out, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
