"""Draw the evidence report (``gateway.evidence_report.ReportModel``) as HTML and as PDF.

HTML: the Jinja2 template ``report.html`` (autoescaped). PDF: ReportLab's layout engine
(platypus): A4 landscape, flowing tables that repeat their header row on every page and
wrap long cells (hashes and keys are broken where needed), in the bundled DejaVu font so
Vietnamese diacritics print.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence
from importlib import resources
from typing import Any
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4, landscape
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    Flowable,
    KeepTogether,
    LongTable,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    TableStyle,
)

from .evidence_report import ReportModel
from .services import make_templates

__all__ = ["render_html", "render_pdf"]

FONT = "ClassGuardDejaVu"
FONT_BOLD = "ClassGuardDejaVu-Bold"
_fonts_lock = threading.Lock()


def render_html(m: ReportModel) -> bytes:
    env = make_templates()
    return env.get_template("report.html").render(m=m, lang=m.lang).encode()


def _register_fonts() -> None:
    """Register the bundled DejaVu faces once per process (ReportLab's registry is global)."""
    with _fonts_lock:
        if FONT in pdfmetrics.getRegisteredFontNames():
            return
        fonts = resources.files("gateway").joinpath("fonts")
        pdfmetrics.registerFont(TTFont(FONT, str(fonts.joinpath("DejaVuSans.ttf"))))
        pdfmetrics.registerFont(TTFont(FONT_BOLD, str(fonts.joinpath("DejaVuSans-Bold.ttf"))))
        pdfmetrics.registerFontFamily(FONT, normal=FONT, bold=FONT_BOLD, italic=FONT,
                                      boldItalic=FONT_BOLD)


def _styles() -> dict[str, ParagraphStyle]:
    base = ParagraphStyle("body", fontName=FONT, fontSize=8.5, leading=11)
    return {
        "h1": ParagraphStyle("h1", base, fontName=FONT_BOLD, fontSize=15, leading=19,
                             spaceAfter=3 * mm),
        "h2": ParagraphStyle("h2", base, fontName=FONT_BOLD, fontSize=11, leading=14,
                             spaceBefore=4 * mm, spaceAfter=1.5 * mm, keepWithNext=1),
        "body": ParagraphStyle("body", base, spaceAfter=1.5 * mm),
        # a note that introduces the table below it: never left alone at a page's foot
        "lead": ParagraphStyle("lead", base, spaceAfter=1.5 * mm, keepWithNext=1),
        "fact_key": ParagraphStyle("fact_key", base, fontName=FONT_BOLD, fontSize=9),
        "fact": ParagraphStyle("fact", base, fontSize=9),
        "small": ParagraphStyle("small", base, fontSize=7.5, leading=9.5),
        "cell": ParagraphStyle("cell", base, fontSize=7, leading=8.6),
        "head": ParagraphStyle("head", base, fontName=FONT_BOLD, fontSize=7, leading=8.6),
    }


def _text(value: Any) -> str:
    """Paragraph markup of plain text: escaped, line breaks kept."""
    return escape(str(value)).replace("\n", "<br/>")


class _Cell(Paragraph):
    """A table cell's paragraph that remembers its layout for a given width.

    NOTE: a table that flows over pages is measured again for each page it is split
    across, so every remaining cell would be broken into lines again: a 1,000-row
    timeline took several seconds that way. A cell never splits, so its lines for one
    width stay valid.
    """

    _laid_out_for: float | None = None

    def wrap(self, avail_width: float, avail_height: float) -> tuple[float, float]:
        # (a paragraph's lines depend on the width only)
        if self._laid_out_for != avail_width:
            super().wrap(avail_width, avail_height)
            self._laid_out_for = avail_width
        return self.width, self.height


class _NumberedCanvas(Canvas):
    """Writes "page n/N" in each footer once the number of pages is known."""

    footer_text = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pages: list[dict[str, Any]] = []

    def showPage(self) -> None:  # noqa: N802 (ReportLab's name)
        self._pages.append(dict(self.__dict__))
        raw: Any = self  # ReportLab's own (private) page reset, absent from its stubs
        raw._startPage()

    def save(self) -> None:
        total = len(self._pages)
        for state in self._pages:
            self.__dict__.update(state)
            self.setFont(FONT, 7)
            self.setFillColor(colors.black)
            width = float(self.__dict__["_pagesize"][0])
            self.drawCentredString(width / 2, 7 * mm,
                                   f"{self.footer_text}  ·  {self.getPageNumber()}/{total}")
            super().showPage()
        super().save()


def render_pdf(m: ReportModel) -> bytes:
    _register_fonts()
    st = _styles()
    t = m.t
    page = landscape(A4)
    margin = 10 * mm
    width = page[0] - 2 * margin - 12  # the page's frame pads 6 pt on each side
    story: list[Flowable] = []

    def h1(text: str) -> None:
        story.append(Paragraph(_text(text), st["h1"]))

    def h2(text: str) -> None:
        story.append(Paragraph(_text(text), st["h2"]))

    def para(text: str, style: str = "body") -> None:
        story.append(Paragraph(_text(text), st[style]))

    pad = 2.2
    cell_size, cell_leading = st["cell"].fontSize, st["cell"].leading

    def fits(text: str, room: float) -> bool:
        return "\n" not in text and pdfmetrics.stringWidth(text, FONT, cell_size) <= room

    def table(head: Sequence[str], rows: Sequence[Sequence[Any]],
              widths: Sequence[float]) -> None:
        scale = width / sum(widths)
        cols = [w * scale for w in widths]
        rooms = [c - 2 * pad for c in cols]
        bold = st["head"]
        data: list[list[Any]] = [[_Cell(_text(h), bold) for h in head]]
        for row in rows:
            # NOTE: text that fits on one line is drawn as a plain string, the rest as a
            # paragraph that wraps: a paragraph costs far more to lay out and draw.
            texts = [str(c) for c in row]
            data.append([x if fits(x, room) else _Cell(_text(x), st["cell"])
                         for x, room in zip(texts, rooms, strict=True)])
        tbl = LongTable(data, colWidths=cols, repeatRows=1)
        tbl.setStyle(TableStyle([
            ("GRID", (0, 0), (-1, -1), 0.4, colors.Color(0.63, 0.63, 0.63)),
            ("BACKGROUND", (0, 0), (-1, 0), colors.Color(0.88, 0.88, 0.88)),
            ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ("FONT", (0, 1), (-1, -1), FONT, cell_size, cell_leading),
            ("LEFTPADDING", (0, 0), (-1, -1), pad),
            ("RIGHTPADDING", (0, 0), (-1, -1), pad),
            ("TOPPADDING", (0, 0), (-1, -1), 1.6),
            ("BOTTOMPADDING", (0, 0), (-1, -1), 2.2),
        ]))
        story.append(tbl)
        story.append(Spacer(1, 1.5 * mm))

    local = f"{t('evidence.col_time')} ({m.tz_label})"
    h1(f"{t('evidence.report_title')}: {m.incident.title}")
    facts = [
        (t("evidence.school"), " / ".join(m.org_chain) or m.school),
        (t("evidence.class"), f"{m.class_title} ({m.class_id})"),
        (t("evidence.platform"), m.platform),
        (t("evidence.teacher"), m.teacher),
        (t("evidence.incident_id"), m.incident.id),
        (t("evidence.window"), f"{m.window.since_local} → {m.window.until_local} "
                               f"({m.timezone}, {m.tz_label})\n"
                               f"{m.window.since_utc} → {m.window.until_utc} (UTC)"),
        (t("evidence.reported_by"), f"{m.incident.created_by}, "
                                    f"{m.incident.created_local} ({m.tz_label})"),
        (t("evidence.exported_by"), f"{m.exporter}, {m.exported_at.local} ({m.tz_label}) / "
                                    f"{m.exported_at.utc} (UTC)"),
    ]
    grid = LongTable([[Paragraph(_text(k), st["fact_key"]), Paragraph(_text(v), st["fact"])]
                      for k, v in facts], colWidths=[48 * mm, width - 48 * mm])
    grid.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"),
                              ("LEFTPADDING", (0, 0), (-1, -1), 0),
                              ("TOPPADDING", (0, 0), (-1, -1), 0.5),
                              ("BOTTOMPADDING", (0, 0), (-1, -1), 0.5)]))
    story.append(grid)
    if m.incident.description:
        h2(t("evidence.description"))
        para(m.incident.description)

    h2(t("evidence.history"))
    para(t("evidence.history_note"), "lead")
    table([t("evidence.col_revision"), local, "UTC", t("evidence.col_by"),
           t("evidence.col_field"), t("evidence.col_old"), t("evidence.col_new"),
           t("evidence.col_reason")],
          [[r.n, r.local, r.utc, r.by, r.field, r.old, r.new, r.reason] for r in m.revisions],
          (12, 30, 30, 30, 25, 70, 70, 45))

    h2(t("evidence.people"))
    if m.students:
        table([t("evidence.col_name"), t("evidence.col_student_id"), t("evidence.col_ips"),
               t("evidence.col_devices"), t("evidence.col_records")],
              [[s.name, f"{s.id} {s.external_id}".strip(), ", ".join(s.ips),
                ", ".join(s.devices), s.records] for s in m.students],
              (50, 45, 60, 80, 20))
    if m.visitors:
        story.append(Spacer(1, 2 * mm))
        table([t("evidence.col_visitor"), t("evidence.col_ips"), t("evidence.col_devices"),
               t("evidence.col_links_used"), t("evidence.col_user_agents")],
              [[v.n, ", ".join(v.ips), ", ".join(v.devices), ", ".join(v.links),
                "; ".join(v.user_agents)] for v in m.visitors],
              (18, 45, 45, 60, 110))

    h2(t("evidence.host_actions"))
    if m.host_actions:
        table([local, t("evidence.col_action"), t("evidence.col_person"),
               t("evidence.col_detail")],
              [[r.local, r.type, r.person, r.detail] for r in m.host_actions],
              (35, 50, 70, 120))
    else:
        para(t("evidence.none"))

    h2(t("evidence.timeline") + f" ({len(m.timeline)})")
    para(t("evidence.timeline_note"), "lead")
    table([t("evidence.col_index"), local, "UTC", t("evidence.col_event"),
           t("evidence.col_person"), t("evidence.col_reason"), t("evidence.col_ip"),
           t("evidence.col_device"), t("evidence.col_detail")],
          [[r.index, r.local, r.utc[11:], r.type, r.person, r.reason, r.ip, r.device,
            r.detail] for r in m.timeline],
          (16, 30, 16, 34, 40, 44, 26, 22, 49))
    if m.withheld:
        para(t("evidence.withheld", n=m.withheld))

    h2(t("evidence.attachments"))
    if m.attachments:
        table([t("evidence.col_file"), t("evidence.col_original"), t("evidence.col_type"),
               t("evidence.col_size"), "SHA-256"],
              [[a.path, a.filename, a.content_type, a.size, a.sha256] for a in m.attachments],
              (55, 50, 30, 20, 122))
    else:
        para(t("evidence.none"))

    h2(t("evidence.custody"))
    table([local, "UTC", t("evidence.col_action"), t("evidence.col_by"),
           t("evidence.col_index")],
          [[c.local, c.utc, c.action, c.actor, c.index] for c in m.custody]
          + [[m.exported_at.local, m.exported_at.utc, t("evidence.type.incident.export"),
              m.exporter, t("evidence.this_export")]],
          (40, 40, 60, 60, 77))

    # how to verify, with the key, on one page
    story.append(KeepTogether([
        Paragraph(_text(t("evidence.how_to_verify")), st["h2"]),
        Paragraph(_text(t("evidence.how_to_verify_text", size=m.checkpoint_size,
                          origin=m.origin)), st["body"]),
        Paragraph(_text(f"{t('evidence.verifier_key')}: {m.verifier_key}\n"
                        f"{t('evidence.fingerprint')}: {m.fingerprint}"), st["small"]),
    ]))

    buf = io.BytesIO()
    doc = SimpleDocTemplate(
        buf, pagesize=page, leftMargin=margin, rightMargin=margin, topMargin=margin,
        bottomMargin=14 * mm, title=f"{t('evidence.report_title')} {m.incident.id}",
        author="ClassGuard", creator=f"ClassGuard {m.tool_version}".strip(),
        lang=m.lang)

    footer = f"ClassGuard · {m.incident.id}"

    def canvas(*args: Any, **kwargs: Any) -> _NumberedCanvas:
        c = _NumberedCanvas(*args, **kwargs)
        c.footer_text = footer
        return c

    doc.build(story, canvasmaker=canvas)
    return buf.getvalue()
