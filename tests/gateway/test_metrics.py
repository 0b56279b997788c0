"""The process-wide metrics every registry exports: the garbage collector's pauses."""

from __future__ import annotations

import gc
import re

from gateway.metrics import GC_PAUSES, Metrics


def _series(text: str, name: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(name):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def test_gc_pauses_are_measured_once_per_process_and_seen_by_every_registry() -> None:
    a, b = Metrics.create(), Metrics.create()
    assert gc.callbacks.count(GC_PAUSES._callback) == 1
    before = _series(a.render().text or "", "classguard_gc_pause_seconds")
    gc.collect()
    gc.collect(0)
    after_a = _series(a.render().text or "", "classguard_gc_pause_seconds")
    after_b = _series(b.render().text or "", "classguard_gc_pause_seconds")
    assert after_a == after_b
    full = 'classguard_gc_pause_seconds_count{generation="2"}'
    young = 'classguard_gc_pause_seconds_count{generation="0"}'
    assert after_a[full] >= before[full] + 1
    assert after_a[young] >= before[young] + 1
    assert after_a['classguard_gc_pause_seconds_sum{generation="2"}'] > \
        before['classguard_gc_pause_seconds_sum{generation="2"}']
    # Cumulative buckets, ending in +Inf == count.
    bounds = [(k, v) for k, v in after_a.items()
              if k.startswith('classguard_gc_pause_seconds_bucket{generation="2"')]
    counts = [v for _, v in bounds]
    assert counts == sorted(counts) and counts[-1] == after_a[full]
    assert re.search(r'le="\+Inf"', bounds[-1][0])
    assert "classguard_gc_frozen_objects" in (a.render().text or "")
