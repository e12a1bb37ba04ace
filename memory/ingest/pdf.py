"""Text PDFs without layout models: pdfminer.six text boxes, typed by ``unstructured``'s text classifier.

This is what ``unstructured``'s ``strategy="fast"`` does, minus its import of OpenCV, ONNX runtime and
pandas. Two cues are added: a one-line box set in a clearly larger font than the body is a ``Title``
(heading levels follow the font sizes), and short lines in the top or bottom margin (running heads, page
numbers) are marked ``Header``/``Footer``/``PageNumber`` so they do not repeat in the text.
"""

from __future__ import annotations

import io
import re
import statistics
import threading
import zlib
from dataclasses import dataclass
from typing import Any

from memory.errors import IngestError

_MARGIN = 0.06  # fraction of the page height treated as header/footer zone
_TITLE_SIZE_RATIO = 1.15
_PAGE_NUMBER = re.compile(r"(?i)^(page\s*)?\d{1,5}(\s*(of|/)\s*\d{1,5})?$")
MAX_PAGES = 5000
# Decompressed stream bytes one PDF may inflate to, as a multiple of the document limit (with a floor):
# a few KiB of Flate can otherwise expand to gigabytes inside pdfminer.
_INFLATE_FACTOR = 2
_INFLATE_FLOOR = 64 * 1024 * 1024


class _InflateBudget(threading.local):
    left: int | None = None  # None: not inside extract_pdf (pdfminer used by someone else): unbounded


_budget = _InflateBudget()


class _BoundedZlib:
    """Stands in for the ``zlib`` module inside ``pdfminer.pdftypes``: the same ``decompress`` and
    ``decompressobj``, but the bytes they produce are charged to this thread's budget, and a stream that
    would exceed it raises instead of filling memory."""

    error = zlib.error

    @staticmethod
    def decompress(data: bytes, *args: Any) -> bytes:
        d = _BoundedZlib.decompressobj()
        out = d.decompress(data)
        return out + d.flush()

    @staticmethod
    def decompressobj(*args: Any) -> Any:
        return _BoundedDecompressor(zlib.decompressobj(*args))


class _BoundedDecompressor:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def decompress(self, data: bytes, max_length: int = 0) -> bytes:
        left = _budget.left
        if left is None:
            return self._inner.decompress(data, max_length)
        out = self._inner.decompress(data, left + 1 if not max_length else min(max_length, left + 1))
        _charge(len(out))
        return out

    def flush(self, *args: Any) -> bytes:
        out = self._inner.flush(*args)
        if _budget.left is not None:
            _charge(len(out))
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _InflateLimit(Exception):
    pass


def _charge(n: int) -> None:
    _budget.left = (_budget.left or 0) - n
    if _budget.left < 0:
        raise _InflateLimit


def _install_bounded_zlib() -> None:
    import pdfminer.pdftypes

    pdfminer.pdftypes.zlib = _BoundedZlib  # type: ignore[assignment]


@dataclass
class _Box:
    text: str
    page: int
    size: float
    lines: int
    zone: str | None  # "top" | "bottom" | None


def extract_pdf(
    data: bytes, shown: str, *, max_bytes: int = 100 * 1024 * 1024, max_pages: int = MAX_PAGES
) -> tuple[list[Any], int]:
    """Return the raw elements (see ``memory.ingest.partition``) and the page count of a PDF.

    Bounded: at most ``max_pages`` pages, and compressed streams inflate to at most twice ``max_bytes``
    (at least 64 MiB) in all; past either bound the PDF is refused with a clear error.

    >>> extract_pdf(b"not a pdf", "'x.pdf'")
    Traceback (most recent call last):
    memory.errors.IngestError: 'x.pdf': not a PDF file (no %PDF- header)
    """
    from memory.ingest.partition import _Raw  # the shared raw-element type

    if b"%PDF-" not in data[:1024]:
        raise IngestError(f"{shown}: not a PDF file (no %PDF- header)")
    if b"%%EOF" not in data[-2048:]:
        raise IngestError(f"{shown}: truncated or corrupt PDF (no %%EOF marker at the end)")
    boxes, pages = _layout(data, shown, max(_INFLATE_FACTOR * max_bytes, _INFLATE_FLOOR), max_pages)
    body_sizes = [b.size for b in boxes if b.zone is None and b.size > 0]
    body = statistics.median(body_sizes) if body_sizes else 0.0

    from memory.ingest.offline import ensure_unstructured

    ensure_unstructured()
    from unstructured.partition.text import element_from_text

    typed: list[tuple[_Box, str, str]] = []
    for box in boxes:
        if box.zone is not None and box.lines == 1 and len(box.text) <= 100:
            if _PAGE_NUMBER.match(box.text):
                typed.append((box, "PageNumber", box.text))
                continue
            typed.append((box, "Header" if box.zone == "top" else "Footer", box.text))
            continue
        big = body > 0 and box.size >= body * _TITLE_SIZE_RATIO
        short = box.lines <= 2 and len(box.text.split()) <= 15
        if big and short and not box.text.rstrip().endswith((".", ":", ";", ",")):
            typed.append((box, "Title", box.text))
            continue
        el = element_from_text(box.text)
        typed.append((box, el.category, el.text))

    # Heading levels from font sizes: the largest title size is depth 0.
    title_sizes = sorted({round(b.size * 2) / 2 for b, cat, _ in typed if cat == "Title"}, reverse=True)
    levels = {s: i for i, s in enumerate(title_sizes)}
    raws = []
    for box, category, text in typed:
        depth = levels.get(round(box.size * 2) / 2) if category == "Title" else None
        raws.append(_Raw(text=text, category=category, depth=depth, meta={"page_number": box.page}))
    return raws, pages


def _layout(data: bytes, shown: str, max_inflated: int, max_pages: int) -> tuple[list[_Box], int]:
    from pdfminer.high_level import extract_pages
    from pdfminer.layout import LAParams, LTChar, LTTextContainer, LTTextLine

    _install_bounded_zlib()
    boxes: list[_Box] = []
    pages = 0
    _budget.left = max_inflated
    try:
        for pages, page in enumerate(extract_pages(io.BytesIO(data), laparams=LAParams()), start=1):
            if pages > max_pages:
                raise IngestError(f"{shown}: the PDF has more than {max_pages:,} pages; split it first")
            height = float(page.height) or 1.0
            y_base = float(page.y0)
            for item in page:
                if not isinstance(item, LTTextContainer):
                    continue
                lines: list[LTTextContainer[Any]] = [ln for ln in item if isinstance(ln, LTTextLine)] or [item]
                text = _join_lines([ln.get_text() for ln in lines])
                if not text:
                    continue
                sizes = [ch.size for ln in lines for ch in ln if isinstance(ch, LTChar) and not ch.get_text().isspace()]
                size = statistics.median(sizes) if sizes else 0.0
                top = (float(item.y1) - y_base) / height
                bottom = (float(item.y0) - y_base) / height
                zone = "top" if bottom > 1 - _MARGIN else "bottom" if top < _MARGIN else None
                boxes.append(_Box(text=text, page=pages, size=float(size), lines=len(lines), zone=zone))
    except IngestError:
        raise
    except _InflateLimit:
        raise IngestError(
            f"{shown}: the PDF's compressed streams inflate to over {max_inflated:,} bytes "
            "(a decompression bomb?); refused"
        ) from None
    except Exception as exc:  # pdfminer raises many types (PDFSyntaxError, PSEOF, KeyError, ...)
        name = type(exc).__name__
        if "password" in name.lower() or "encrypt" in name.lower():
            raise IngestError(f"{shown}: the PDF is encrypted and needs a password; add a decrypted copy") from exc
        detail = str(exc).replace("\n", " ")[:200] or name
        raise IngestError(f"{shown}: cannot read this PDF (corrupt: {name}: {detail})") from exc
    finally:
        exceeded = (_budget.left or 0) < 0  # also when pdfminer swallowed the exception somewhere
        _budget.left = None
    if exceeded:
        raise IngestError(
            f"{shown}: the PDF's compressed streams inflate to over {max_inflated:,} bytes "
            "(a decompression bomb?); refused"
        )
    if pages == 0:
        raise IngestError(f"{shown}: corrupt PDF (no pages could be read)")
    return boxes, pages


def _join_lines(lines: list[str]) -> str:
    """Join the lines of a text box: a hyphen at a line end joins the word, other breaks become spaces."""
    out = ""
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if out.endswith("-") and line[:1].islower():
            out = out[:-1] + line
        else:
            out = f"{out} {line}" if out else line
    return out
