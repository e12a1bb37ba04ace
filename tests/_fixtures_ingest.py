"""Real files of every supported type, written into a directory by the ingestion tests.

Nothing here is a fake: the PDF is a valid PDF 1.4 file with a correct cross-reference table (Helvetica
text, several pages), the .docx is written by python-docx and the .eml by the standard email package.
"""

from __future__ import annotations

import csv
import io
import json
from email.message import EmailMessage
from pathlib import Path

from bench.ingest import pdf_bytes  # the valid-PDF writer is shared with the benchmark

# A line on a PDF page: (text, font size, x, y) in points; the page is US Letter (612 x 792).
PdfLine = tuple[str, float, float, float]

__all__ = ["docx_bytes", "eml_bytes", "pdf_bytes", "policy_pdf_pages", "write_corpus"]


def policy_pdf_pages(n_pages: int = 3) -> list[list[PdfLine]]:
    """Pages with a running header, a big heading, body paragraphs and a page number."""
    pages = []
    for p in range(1, n_pages + 1):
        lines: list[PdfLine] = [("Acme Corp Employee Handbook", 9, 72, 770)]
        lines.append((f"Chapter {p}: {['Vacation', 'Remote Work', 'Expenses', 'Security'][(p - 1) % 4]}", 20, 72, 700))
        y = 660.0
        for k in range(3):
            text = f"Paragraph {k + 1} of chapter {p} explains the rules that employees must follow."
            lines.append((text, 11, 72, y))
            lines.append(
                (
                    f"The policy applies to every employee and it was approved by the board in {2020 + p}.",
                    11,
                    72,
                    y - 14,
                )
            )
            y -= 48
        lines.append((str(p), 9, 300, 30))
        pages.append(lines)
    return pages


def docx_bytes(page_break: bool = True) -> bytes:
    """A Word document: title, two headings, a list, a table, and (optionally) a rendered page break."""
    import docx
    from docx.oxml import OxmlElement
    from docx.oxml.ns import qn

    d = docx.Document()
    d.add_heading("Employee Handbook", 0)
    d.add_paragraph("This handbook describes the policies of the company in detail.")
    d.add_heading("Vacation", 1)
    d.add_paragraph("Employees receive twenty days of paid vacation per year.")
    d.add_paragraph("Unused days carry over to the next year", style="List Bullet")
    p = d.add_heading("Remote Work", 1)
    if page_break:
        # What Word writes where it broke the page when it last rendered the document.
        run = p.runs[0]._r
        run.insert(0, OxmlElement("w:lastRenderedPageBreak"))
        assert run[0].tag == qn("w:lastRenderedPageBreak")
    d.add_paragraph("Remote work is allowed up to three days per week.")
    t = d.add_table(rows=2, cols=2)
    for (r, c), v in {(0, 0): "Plan", (0, 1): "Days", (1, 0): "Basic", (1, 1): "3"}.items():
        t.cell(r, c).text = v
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()


_NOTE = ("notes.txt", b"The attached note says the office closes at 6 pm.")


def eml_bytes(attachment: tuple[str, bytes] | None = _NOTE) -> bytes:
    m = EmailMessage()
    m["From"] = "alice@example.com"
    m["To"] = "bob@example.com"
    m["Subject"] = "Travel policy update"
    m["Date"] = "Mon, 02 Mar 2026 10:00:00 +0000"
    m.set_content(
        "Hello team,\n\nThe travel policy changed. Economy class is required for flights under six hours.\n\n"
        "Regards,\nAlice\n"
    )
    if attachment:
        name, data = attachment
        m.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return bytes(m)


MD = """# Refund Policy

Refunds are paid within 30 days of the purchase for every item in the store.

## Exceptions

- Gift cards cannot be refunded
- Sale items can be exchanged only

Digital goods are refunded only when the download has not started yet.
"""

HTML = """<!doctype html><html><head><meta charset="utf-8"><title>Security</title></head><body>
<h1>Security Policy</h1><p>Passwords must be rotated every ninety days by every employee.</p>
<h2>Devices</h2><p>Laptops must use full disk encryption at all times when they leave the office.</p>
<table><tr><th>Device</th><th>Owner</th></tr><tr><td>Laptop</td><td>IT</td></tr></table>
</body></html>"""

TXT = """OFFICE HOURS

The office is open from nine in the morning until six in the evening on weekdays.

PARKING

Visitors may park in the north lot, and employees use the underground garage.
"""

RST = """Onboarding
==========

New employees receive a laptop on their first day at the company.

Accounts
--------

Accounts are created by the IT team before the start date of the employee.
"""

XML = """<?xml version="1.0" encoding="utf-8"?>
<policy><title>Badge Policy</title><rule>Badges must be worn visibly inside the building at all times.</rule></policy>
"""


def csv_text() -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["city", "allowance", "currency"])
    for row in (["Paris", "180", "EUR"], ["London", "200", "GBP"], ["Tokyo", "25000", "JPY"]):
        w.writerow(row)
    return buf.getvalue()


def json_text() -> str:
    return json.dumps({"policy": "Per diem", "rates": [{"city": "Paris", "amount": 180}], "active": True})


def write_corpus(root: Path, n_pdf_pages: int = 3) -> dict[str, Path]:
    """Write one valid file of every supported type; returns {filetype: path}."""
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "txt": ("office.txt", TXT.encode()),
        "md": ("refunds.md", MD.encode()),
        "html": ("security.html", HTML.encode()),
        "pdf": ("handbook.pdf", pdf_bytes(policy_pdf_pages(n_pdf_pages))),
        "docx": ("handbook.docx", docx_bytes()),
        "eml": ("travel.eml", eml_bytes()),
        "csv": ("allowances.csv", csv_text().encode()),
        "json": ("perdiem.json", json_text().encode()),
        "xml": ("badge.xml", XML.encode()),
        "rst": ("onboarding.rst", RST.encode()),
    }
    out = {}
    for kind, (name, data) in files.items():
        path = root / name
        path.write_bytes(data)
        out[kind] = path
    return out
