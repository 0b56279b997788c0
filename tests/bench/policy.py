"""Throughput of ``policies.evaluate`` over a realistic mix of join attempts.

Run: ``python tests/bench/policy.py [--seconds S] [--engine-only]``. Not collected by
pytest (``tests/bench`` is in ``norecursedirs``). Target: >= 100,000 decisions/s on one
core.

Then, unless ``--engine-only``, the gateway side of the same question: a short run of
``tests/bench/join.py`` (one ``classguard serve`` on its own Redis) measures, in one run,
valid first joins and the refusals of garbage tokens, forged signatures and banned
sources, and its summary is printed here.
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from policies import (  # noqa: E402 - path set up above for running as a script
    Attempt,
    ClassId,
    ClassState,
    Jti,
    Policy,
    Schedule,
    StudentId,
    TokenFacts,
    evaluate,
    load_policy,
)

TARGET = 100_000
CLASS = ClassId("c-10a1")
NOW = datetime(2026, 11, 23, 0, 40, tzinfo=UTC)  # 07:40 in Hà Nội, 10 min into class


Case = tuple[str, Attempt, ClassState, Policy, datetime]


def _mix() -> list[Case]:
    one_off = Schedule(
        starts_at=datetime(2026, 11, 23, 0, 30, tzinfo=UTC),
        ends_at=datetime(2026, 11, 23, 2, 0, tzinfo=UTC),
    )
    weekly = Schedule(
        starts_at=datetime(2026, 9, 7, 0, 30, tzinfo=UTC),
        ends_at=datetime(2026, 9, 7, 2, 0, tzinfo=UTC),
        weekly=(1, 3, 5),
        term_ends_at=datetime(2027, 1, 15, tzinfo=UTC),
    )
    token = TokenFacts(
        None,
        StudentId("s-1"),
        CLASS,
        Jti("j-1"),
        exp=NOW.timestamp() + 86_400,
        nbf=NOW.timestamp() - 86_400,
    )
    ok = Attempt(CLASS, token, "203.0.113.7", "d" * 64)
    strict = load_policy({"preset": "strict"})
    standard = load_policy({"preset": "standard"})
    open_ = load_policy({"preset": "open"})
    full = load_policy({"preset": "standard", "capacity": 40})
    present = ClassState(CLASS, one_off, host_present=True, bound_device="d" * 64)
    weekly_present = replace(present, schedule=weekly)
    cases = [
        # The common case dominates: valid students entering a running class.
        ("standard admit, one-off", ok, present, standard, NOW),
        ("standard admit, weekly", ok, weekly_present, standard, NOW),
        ("strict wait, one-off", ok, present, strict, NOW),
        ("strict wait, weekly", ok, weekly_present, strict, NOW),
        ("open wait", ok, present, open_, NOW),
        (
            "readmit (reload)",
            ok,
            replace(present, student_admitted=True, admitted_device="d" * 64),
            standard,
            NOW,
        ),
        # Refusals, early and late in the chain.
        (
            "bad signature",
            replace(ok, token=replace(token, failure="bad_signature")),
            present,
            standard,
            NOW,
        ),
        ("expired", ok, present, standard, NOW + timedelta(days=3)),
        ("revoked", ok, replace(present, revoked=True), standard, NOW),
        ("banned ip", ok, replace(present, banned_ip=True, ban_reason="spam"), standard, NOW),
        ("second device", replace(ok, device="e" * 64), present, standard, NOW),
        ("locked", ok, replace(present, locked=True), standard, NOW),
        ("late join (strict)", ok, present, strict, NOW + timedelta(minutes=30)),
        ("before the class", ok, weekly_present, standard, NOW - timedelta(hours=3)),
        ("full", ok, replace(present, admitted_count=40), full, NOW),
    ]
    return cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--engine-only", action="store_true",
                        help="skip the gateway's refusal rates (tests/bench/join.py)")
    args = parser.parse_args()
    cases = _mix()
    reasons = Counter(str(evaluate(a, s, p, n).reason) for _, a, s, p, n in cases)

    def run(batch: list[Case], seconds: float) -> float:
        calls = 0
        gc.disable()
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for _, a, s, p, n in batch:
                evaluate(a, s, p, n)
            calls += len(batch)
            if time.perf_counter() >= deadline:
                break
        elapsed = time.perf_counter() - start
        gc.enable()
        return calls / elapsed

    run(cases, 0.3)  # warm-up
    print(f"python {sys.version.split()[0]}, {len(cases)} kinds of attempt")
    print(f"{'case':28} {'decisions/s':>12}  {'us/decision':>11}")
    for case in cases:
        rate = run([case] * 50, args.seconds / 4)
        print(f"{case[0]:28} {rate:12,.0f}  {1e6 / rate:11.2f}")
    rate = run(cases, args.seconds)
    print(f"{'MIX (equal weights)':28} {rate:12,.0f}  {1e6 / rate:11.2f}")
    print("reasons in the mix:", dict(reasons))
    verdict = "meets" if rate >= TARGET else "BELOW"
    print(f"{verdict} the target of {TARGET:,} decisions/s")
    if not args.engine_only:
        gateway_refusals()
    return 0 if rate >= TARGET else 1


def gateway_refusals() -> None:
    """The gateway's refusal rates beside its valid joins, from one run of join.py."""
    print("\ngateway (tests/bench/join.py, short run): refusals vs valid first joins")
    sys.stdout.flush()
    join = Path(__file__).with_name("join.py")
    res = subprocess.run(
        [sys.executable, str(join), "--valid", "3000", "--banned", "3000", "--garbage",
         "6000", "--forged", "2000", "--sockets", "0", "--baseline", "8000"],
        capture_output=True, text=True, timeout=900, check=False)
    lines = res.stdout.splitlines()
    wanted = ("first joins admitted/s", "garbage refused/s", "garbage from one address",
              "banned sources refused/s")
    for line in lines:
        if line.strip().startswith(wanted):
            print(line)
    if res.returncode != 0:
        print(f"join.py failed ({res.returncode}):\n{res.stderr[-2000:]}")


if __name__ == "__main__":
    raise SystemExit(main())
