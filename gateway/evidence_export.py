"""Export an incident as an evidence bundle: gather, build the report, render, sign, zip.

The steps live in their own modules:

* ``gateway.evidence_gather``: waits for the log to be sequenced and signed, gathers the
  incident's records and decides which may go in (the redaction rule);
* ``gateway.evidence_report``: the report as plain data, built without I/O;
* ``gateway.evidence_render``: the report as HTML (Jinja2) and PDF (ReportLab);
* ``audit.evidence``: the bundle's layout, hashing, signing and offline verification.

This module puts them together, adds the custody file and VERIFY.txt, checks the bundle
before handing it out and records the export in the log.
"""

from __future__ import annotations

import asyncio
import base64
import getpass
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from audit import Sequencer
from audit.evidence import Bundle, BundleInputs, build_bundle, key_fingerprint, verify_bundle

from . import i18n
from .evidence_gather import (
    Gathered,
    checkpoint_size,
    class_context,
    facts_of,
    gather,
    proofs_for,
    wait_sequenced,
)
from .evidence_render import render_html, render_pdf
from .evidence_report import AttachmentRow, ReportModel, build_report
from .incidents import Incident, IncidentError, IncidentStore, Revision
from .services import Services

__all__ = [
    "ExportResult",
    "cli_exporter",
    "custody_json",
    "export_incident",
    "tool_version",
    "verify_txt",
]


def tool_version() -> str:
    try:
        return metadata.version("classguard")
    except metadata.PackageNotFoundError:
        return "0.1.0 (source tree)"


def verify_txt(lang: str, m: ReportModel) -> bytes:
    """VERIFY.txt in the report's language, then in the other one."""
    other = "en" if lang == "vi" else "vi"
    parts = [i18n.t(x, "evidence.verify_txt", incident=m.incident.id, origin=m.origin,
                    size=m.checkpoint_size, vkey=m.verifier_key, fingerprint=m.fingerprint)
             for x in (lang, other)]
    return ("\n\n" + "=" * 72 + "\n\n").join(parts).encode()


def custody_json(inc: Incident, got: Gathered, *, exporter: str, exported_at_ms: int,
                 export_id: str, revisions: Sequence[Revision] = ()) -> bytes:
    entries: list[dict[str, Any]] = []
    for ev in got.custody:
        rec = ev.record
        entries.append({
            "action": str(rec.get("type", "")).removeprefix("incident."),
            "at": _iso(int(rec.get("ts", 0))),
            "actor": rec.get("actor"),
            "index": ev.index,
            "facts": {k: v for k, v in facts_of(rec).items() if k != "incident"},
        })
    entries.append({
        "action": "export",
        "at": _iso(exported_at_ms),
        "actor": exporter,
        "index": None,
        "facts": {"export_id": export_id},
    })
    doc = {
        "format": "classguard-custody v1",
        "incident": inc.id,
        "entries": entries,
        # every version of the title, description and status, oldest first
        "revisions": [{**r.to_json(), "at": _iso(int(r.at * 1000))} for r in revisions],
        "this_export": {
            "export_id": export_id,
            "exporter": exporter,
            "at": _iso(exported_at_ms),
            "note": (
                "A file cannot contain its own hash. Right after this bundle was built, the "
                "SHA-256 of the whole zip and of manifest.json were appended to the audit log "
                "as an 'incident.export' record carrying this export_id. Any later bundle of "
                "this incident, or the school's log, proves that record."
            ),
        },
    }
    return (json.dumps(doc, ensure_ascii=False, indent=2) + "\n").encode()


def _iso(ms: int) -> str:
    return (datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"))


# --- the whole export ---


@dataclass(frozen=True, slots=True)
class ExportResult:
    bundle: Bundle
    export_id: str
    records: int
    withheld: int
    checkpoint_size: int
    timings: dict[str, float]


async def export_incident(
    svc: Services,
    store: IncidentStore,
    inc: Incident,
    *,
    exporter: str,
    lang: str = "vi",
    sequencer: Sequencer | None = None,
    sequence_timeout_s: float = 15.0,
    exporter_personal: Mapping[str, Any] | None = None,
) -> ExportResult:
    """Build, self-verify and log the evidence bundle of ``inc``.

    Logs ``incident.export`` (with the bundle's and the manifest's SHA-256) after the
    bundle is built, and moves the incident to ``exported``. Raises :class:`IncidentError`.
    """
    log, key, auditor = svc.audit_log, svc.audit_key, svc.auditor
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    note = await wait_sequenced(svc, timeout_s=sequence_timeout_s, sequencer=sequencer,
                                class_id=inc.class_id)
    size = checkpoint_size(note)
    timings["sequenced"] = time.perf_counter() - t0
    got = await gather(svc, inc, size)
    if not got.events:
        raise IncidentError("no_records", "no audit record of this incident can be disclosed "
                            "(check the window and the people involved)", status=409)
    timings["gathered"] = time.perf_counter() - t0
    proofs = await proofs_for(log, [e.index for e in got.events], note)
    timings["proofs"] = time.perf_counter() - t0
    attachments: list[tuple[str, bytes]] = []
    att_rows: list[AttachmentRow] = []
    for n, att in enumerate(inc.attachments, start=1):
        data = await store.attachment_bytes(inc.id, att)
        name = f"{n:02d}-{att.sha256[:16]}.{att.extension}"
        attachments.append((name, data))
        att_rows.append(AttachmentRow(f"attachments/{name}", att.filename, att.content_type,
                                      att.size, att.sha256, att.uploaded_by))
    revisions = await store.history(inc.id)
    exported_at_ms = int(svc.clock() * 1000)
    export_id = base64.b32encode(os.urandom(10)).decode().lower().rstrip("=")
    ctx = await class_context(svc, inc)
    vkey = key.verifier()
    model = build_report(
        ctx, inc, got.events, got.custody, lang=lang, student_devices=got.student_devices,
        other_student_devices=got.other_student_devices, withheld=got.withheld,
        exporter=exporter, exported_at_ms=exported_at_ms, checkpoint_size=size,
        origin=svc.settings.audit_origin, verifier_key=vkey.encode(),
        fingerprint=key_fingerprint(vkey), attachments=att_rows, revisions=revisions,
        tool_version=tool_version(), fallback_timezone=svc.settings.timezone)
    html = render_html(model)
    pdf = await asyncio.to_thread(render_pdf, model)
    timings["rendered"] = time.perf_counter() - t0
    inputs = BundleInputs(
        incident=inc.id, exporter=exporter, exported_at_ms=exported_at_ms,
        tool_version=tool_version(), origin=svc.settings.audit_origin, events=got.events,
        proofs=proofs, checkpoints=[note], attachments=attachments,
        files={
            "report.html": html,
            "report.pdf": pdf,
            "custody.json": custody_json(inc, got, exporter=exporter,
                                         exported_at_ms=exported_at_ms, export_id=export_id,
                                         revisions=revisions),
            "VERIFY.txt": verify_txt(lang, model),
        },
        extra_manifest={"export_id": export_id, "language": lang,
                        "records": len(got.events), "checkpoint_size": size},
    )
    bundle = await asyncio.to_thread(build_bundle, inputs, key)
    timings["built"] = time.perf_counter() - t0
    # NOTE: fail closed: a bundle that does not verify here is never handed out.
    report = await asyncio.to_thread(verify_bundle, bundle.data, key.verifier())
    if not report.ok:
        p = report.problems[0]
        raise IncidentError("export_failed_verification",
                            f"the built bundle does not verify: {p.code} {p.path}: {p.message}",
                            status=500)
    timings["verified"] = time.perf_counter() - t0
    await auditor.record(
        "incident.export", actor=exporter, org=inc.org, class_id=inc.class_id,
        facts={"incident": inc.id, "export_id": export_id, "bundle_sha256": bundle.sha256,
               "manifest_sha256": bundle.manifest_sha256, "records": len(got.events),
               "withheld": got.withheld, "checkpoint_size": size, "lang": lang},
        personal=exporter_personal,
    )
    if inc.status == "open":
        await store.set_status(inc.id, "exported", by=exporter.split(":", 1)[-1],
                               reason=f"evidence exported ({export_id})", allow_same=True)
    timings["total"] = time.perf_counter() - t0
    return ExportResult(bundle, export_id, len(got.events), got.withheld, size, timings)


def cli_exporter() -> str:
    """The actor of a command-line export: the operating-system account that ran it."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


