"""``classguard evidence export|verify``.

``verify`` needs nothing but the file (and optionally a pinned key): no settings, no data
directory, no Redis, no network. ``export`` reads the incident from Redis like a gateway.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from audit import AuditError, AuditVerifierKey
from audit.evidence import verify_bundle

from . import i18n
from .cli_redis import redis_url
from .config import Settings

MAX_BUNDLE_BYTES = 4 << 30


def _pinned_key(value: str) -> AuditVerifierKey:
    """``--key`` is the verifier key itself, or a file that holds it."""
    text = value
    path = Path(value)
    if "+" not in value or path.is_file():
        text = path.read_text("utf-8")
    return AuditVerifierKey.parse(text.strip())


def verify_command(file: Path, *, key: str | None, lang: str, as_json: bool) -> int:
    def t(k: str, **kw: Any) -> str:
        return i18n.t(lang, k, **kw)

    try:
        if file.stat().st_size > MAX_BUNDLE_BYTES:
            print(f"classguard: error: {file} is larger than {MAX_BUNDLE_BYTES} bytes",
                  file=sys.stderr)
            return 2
        data = file.read_bytes()
    except OSError as exc:
        print(f"classguard: error: cannot read {file}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        pinned = _pinned_key(key) if key else None
    except (OSError, AuditError) as exc:
        print(f"classguard: error: --key: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    report = verify_bundle(data, pinned)
    if as_json:
        print(json.dumps(report.to_json(), ensure_ascii=False, indent=2))
    print(t("evidence.verify.incident", incident=report.incident or "?",
            exporter=report.exporter or "?", at=report.exported_at or "?"))
    print(t("evidence.verify.counts", events=report.events,
            disclosed=report.personal_disclosed, withheld=report.personal_withheld,
            proofs=report.proofs, checkpoints=", ".join(map(str, report.checkpoints)) or "-",
            attachments=report.attachments, files=report.files))
    if report.key_pinned:
        print(t("evidence.verify.key_pinned", vkey=report.verifier_key))
    else:
        print(t("evidence.verify.key_unpinned", fingerprint=report.key_fingerprint or "?"))
    if report.ok:
        print(t("evidence.verify.ok"))
        return 0
    for p in report.problems:
        print(t("evidence.verify.problem", step=p.step, code=p.code, path=p.path or "",
                title=t(f"evidence.fault.{p.code}")), file=sys.stderr)
        print(f"    {p.message}", file=sys.stderr)
    print(t("evidence.verify.failed", n=len(report.problems)), file=sys.stderr)
    return 1


async def export_command(incident_id: str, output: Path, lang: str, settings: Settings) -> int:
    from audit import Sequencer

    from .evidence_export import cli_exporter, export_incident
    from .incidents import IncidentError, IncidentStore
    from .metrics import Metrics
    from .presence import Reconciler
    from .services import Foundation, make_templates, open_services

    found = Foundation(settings=settings, clock=time.time, metrics=Metrics.create(),
                       templates=make_templates())
    async with redis_url(settings) as url, open_services(
            found, reconciler=Reconciler, url=url, background=False) as svc:
        store = IncidentStore(svc.redis, settings.redis_prefix, clock=time.time,
                              secretbox=svc.secretbox,
                              blob_dir=Path(settings.data_dir) / "attachments")
        inc = await store.get(incident_id)
        if inc is None:
            print(f"classguard: error: no incident {incident_id}", file=sys.stderr)
            return 1

        def ms() -> int:
            return int(time.time() * 1000)

        seq = Sequencer(svc.redis_bytes, prefix=settings.redis_prefix, signer=svc.audit_key,
                        origin=settings.audit_origin, clock=ms,
                        node_id=f"{settings.node_id}:cli")
        try:
            result = await export_incident(svc, store, inc, exporter=cli_exporter(),
                                           lang=lang, sequencer=seq)
        except IncidentError as exc:
            print(f"classguard: error: {exc.code}: {exc.message}", file=sys.stderr)
            return 1
        finally:
            if seq.is_leader:
                await seq.release()
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(result.bundle.data)
    print(f"{output}: {len(result.bundle.data)} bytes, {result.records} records, "
          f"{result.withheld} withheld")
    print(f"sha256 {result.bundle.sha256}")
    print(f"manifest sha256 {result.bundle.manifest_sha256}")
    print(f"export id {result.export_id}")
    return 0
