"""Prometheus rules and the Grafana dashboard: valid PromQL, alerts that fire when they
should, and no metric name that a running gateway does not export."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require_program
from tests.gateway.helpers import running_gateway

from .cluster import DEPLOY

RULES = DEPLOY / "prometheus" / "rules.yaml"
RULES_TESTS = DEPLOY / "prometheus" / "rules.test.yaml"
PROM_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "classguard.json"

# Series Prometheus makes itself, not the gateway.
PROMETHEUS_SERIES = {"up", "ALERTS", "ALERTS_FOR_STATE"}


_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
             "unless", "bool", "offset"}


def rule_expressions() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def dashboard_expressions() -> list[str]:
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "expr" and isinstance(v, str):
                    out.append(v)
                elif k in ("query", "definition") and isinstance(v, str) and "(" in v:
                    out.append(v)
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(json.loads(DASHBOARD.read_text()))
    return out


def _strip_strings(expr: str) -> str:
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers followed by a selector or a
    range (``name{`` / ``name[``) or standing alone, minus functions, keywords and labels."""
    text = _strip_strings(expr)
    text = re.sub(r"^\s*label_values\((.*),\s*\w+\)\s*$", r"\1", text)  # Grafana variable
    text = re.sub(r"\{[^}]*\}", "{}", text)  # drop label matchers (label names)
    text = re.sub(r"\[[^\]]*\]", "[]", text)  # drop ranges and subqueries ([5m], [5m:])
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in _IDENT.finditer(text):
        word = m.group(0)
        after = text[m.end():].lstrip()
        if word in _KEYWORDS or after.startswith("("):
            continue  # a function or an aggregation
        if re.fullmatch(r"\d.*|Inf|NaN", word) or text[max(0, m.start() - 1)] == "$":
            continue  # numbers and Grafana variables
        names.add(word)
    return names


def named_metrics() -> dict[str, set[str]]:
    """metric name -> where it is used."""
    used: dict[str, set[str]] = {}
    for where, exprs in (("rules.yaml", rule_expressions()),
                         ("classguard.json", dashboard_expressions())):
        for e in exprs:
            for name in metric_names(e):
                used.setdefault(name, set()).add(where)
    return used


def exported_names(text: str) -> set[str]:
    """Every sample name a /metrics page can carry, from its # TYPE lines."""
    out = set()
    suffixes = {"counter": ("_total", "_created"), "gauge": ("",),
                "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("", "_sum", "_count", "_created"), "untyped": ("",),
                "info": ("_info",), "stateset": ("",), "gaugehistogram": ("_bucket",)}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            base = name.removesuffix("_total") if kind == "counter" else name
            out.update(base + s for s in suffixes.get(kind, ("",)))
            out.add(name)
        elif line and not line.startswith("#"):
            out.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[set[str]]:
    import asyncio
    import uuid

    async def scrape() -> str:
        prefix = f"cgt:{uuid.uuid4().hex[:12]}:"
        async with running_gateway(tmp_path_factory.mktemp("metrics"), redis_url,
                                   prefix) as gw:
            async with gw.client() as c:
                await (await c.get("/j/not-a-token", headers={"Accept": "application/json"})).read()
                r = await c.get("/metrics")
                assert r.status == 200
                return await r.text()

    yield exported_names(asyncio.run(scrape()))


# --- tests ------------------------------------------------------------------------------


def test_promtool_checks_rules_and_config() -> None:
    promtool = require_program("promtool")
    for args in (["check", "rules", str(RULES)], ["check", "config", str(PROM_CONFIG)]):
        res = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=30,
                             check=False)
        assert res.returncode == 0, res.stdout + res.stderr


def test_alerts_fire_on_synthetic_series() -> None:
    promtool = require_program("promtool")
    res = subprocess.run([promtool, "test", "rules", str(RULES_TESTS)], capture_output=True,
                         text=True, timeout=60, check=False, cwd=RULES_TESTS.parent)
    assert res.returncode == 0, res.stdout + res.stderr


def test_issue_alerts_are_all_there() -> None:
    names = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"]
             for r in g["rules"] if "alert" in r}
    for wanted in ("ClassGuardGatewayDown", "ClassGuardRedisUnreachable",
                   "ClassGuardAuditSequencerStalled", "ClassGuardJoinDenialSpike",
                   "ClassGuardClassFlood", "ClassGuardJoinLatencyHigh"):
        assert wanted in names
    for g in yaml.safe_load(RULES.read_text())["groups"]:
        for r in g["rules"]:
            if "alert" in r:
                anchor = r["annotations"]["runbook"].split("#", 1)[1]
                assert anchor == r["alert"].lower() or "audit" in anchor, r["alert"]


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool has no expression checker, so every dashboard query (with Grafana's
    variables given typical values) becomes a recording rule and is checked as one."""
    promtool = require_program("promtool")
    rules = []
    for i, expr in enumerate(dashboard_expressions()):
        e = expr.replace("$__rate_interval", "1m").replace("$instance", ".*")
        if e.startswith("label_values("):
            e = e[len("label_values("):].rsplit(",", 1)[0]
        rules.append({"record": f"dashboard:query:{i}", "expr": e})
    f = tmp_path / "dashboard-queries.yaml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    res = subprocess.run([promtool, "check", "rules", str(f)], capture_output=True, text=True,
                         timeout=30, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_dashboard_covers_the_issue() -> None:
    doc = json.loads(DASHBOARD.read_text())
    titles = " | ".join(p["title"].lower() for p in doc["panels"])
    for words in ("joins by decision", "reason", "waiting", "websockets", "latency",
                  "audit growth", "checkpoint age"):
        assert words in titles, words
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))


def test_metric_name_extraction() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{route="/j/{token}"}[5m]))) > 0.5'
    ) == {"a_bucket"}
    assert metric_names("sum(up{job=\"x\"}) < 2 and count(b) >= 2") == {"up", "b"}
    assert metric_names("time() - max(c{instance=~\"$instance\"})") == {"c"}
    assert metric_names('label_values(up{job="classguard"}, instance)') == {"up"}


def test_every_metric_named_by_rules_and_dashboard_is_exported(exported: set[str]) -> None:
    used = named_metrics()
    assert "classguard_join_attempts_total" in used
    missing = {
        name: sorted(where) for name, where in used.items()
        if name not in exported and name not in PROMETHEUS_SERIES
    }
    assert not missing, f"named but not exported by /metrics: {missing}"
