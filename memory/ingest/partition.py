"""Partition a file into typed elements and one normalised text, offline.

Supported types: txt, md, html/htm, pdf, docx, eml, csv/tsv, json, xml, rst. Most go through
``unstructured`` (with the offline spaCy fix of :mod:`memory.ingest.offline`). PDF takes a lighter path:
``unstructured.partition.pdf`` imports OpenCV, ONNX runtime and pandas even for ``strategy="fast"``,
so pdfminer.six lays out the text boxes here and ``unstructured``'s own text classifier types them; the
``parser`` record says so. CSV/TSV and JSON use the standard library (``unstructured`` needs pandas for
CSV and only reads its own element JSON).

Every element keeps its page number (where the format has pages) and the section it belongs to.
``ParsedDocument.text`` is the element texts joined by a blank line and is already normalised
(``normalize_text(doc.text) == doc.text``), so element offsets index straight into it.

Anything wrong with the input raises :class:`~memory.errors.IngestError` with the file name in the
message. The file name is only ever used to choose a parser and to label messages: nothing is written.
"""

from __future__ import annotations

import csv
import email
import email.message
import email.policy
import html as html_lib
import io
import json
import logging
import os
import re
import stat
import unicodedata
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from memory.errors import IngestError, ValidationError
from memory.ingest.decode import decode_text, looks_binary
from memory.ingest.offline import (
    ensure_unstructured,
    package_version,
    quiet_environment,
    spacy_info,
    unstructured_version,
)
from memory.ingest.text import normalize_text

quiet_environment()  # before anything imports unstructured

logger = logging.getLogger(__name__)

#: Same default as ``Settings.max_document_bytes``.
DEFAULT_MAX_BYTES = 100 * 1024 * 1024
#: Bump when the output of this module changes for the same input (stored in ``parser``).
PIPELINE_VERSION = "memory.ingest/1"
#: File extension -> file type.
EXTENSIONS: dict[str, str] = {
    ".txt": "txt",
    ".text": "txt",
    ".md": "md",
    ".markdown": "md",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".pdf": "pdf",
    ".docx": "docx",
    ".eml": "eml",
    ".csv": "csv",
    ".tsv": "tsv",
    ".json": "json",
    ".xml": "xml",
    ".rst": "rst",
}
SUPPORTED_FILETYPES = frozenset(EXTENSIONS.values())
STRATEGIES = ("fast", "auto")

_DROPPED = frozenset({"PageBreak", "Header", "Footer", "PageNumber"})
_MAX_ATTACHMENT_DEPTH = 2
# A .docx's XML is a few times its text, and deflates 5-20x: a member that inflates much more than
# that is a zip bomb, and the whole archive may unpack to at most twice the document limit.
_MAX_UNZIP_RATIO = 100
_UNZIP_RATIO_FROM = 1024 * 1024  # bytes: smaller members are never a danger, whatever their ratio
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")


@dataclass
class Element:
    """One typed piece of a document.

    ``category`` is an ``unstructured`` element type (``Title``, ``NarrativeText``, ``ListItem``,
    ``Table``, ``UncategorizedText``, ...). ``metadata`` always has ``page_number`` (``None`` where the
    format has no pages), ``section`` (the nearest heading, or ``None``) and ``section_path`` (headings
    from the top); tables add ``text_as_html``; email attachments add ``attachment``.
    ``start_char``/``end_char`` index into :attr:`ParsedDocument.text`.
    """

    text: str
    category: str
    metadata: dict[str, Any] = field(default_factory=dict)
    start_char: int = 0
    end_char: int = 0


@dataclass
class ParsedDocument:
    """The result of partitioning one file.

    ``parser`` records how it was parsed (library and version, strategy, file type, encoding...), to
    be stored on the document version.
    """

    text: str
    elements: list[Element]
    filetype: str
    parser: dict[str, Any]
    page_count: int | None = None


@dataclass
class _Raw:
    text: str
    category: str
    depth: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------- public API
def partition_path(
    path: str | os.PathLike[str],
    *,
    strategy: str = "fast",
    max_bytes: int = DEFAULT_MAX_BYTES,
    filetype: str | None = None,
) -> ParsedDocument:
    """Partition the file at ``path``; its size is checked before a byte is read.

    >>> doc = partition_path("policy.md")  # doctest: +SKIP
    >>> doc.elements[0].category, doc.parser["library"]  # doctest: +SKIP
    ('Title', 'unstructured')
    """
    shown = display_name(os.fspath(path))
    _check_strategy(strategy)
    _check_limit(max_bytes)
    ext = os.path.splitext(_basename(os.fspath(path)))[1].lower()
    if filetype is None and ext and ext not in EXTENSIONS:  # refuse before reading anything
        resolve_filetype(b"", os.fspath(path), shown=shown)
    data = read_bounded(path, max_bytes=max_bytes)
    return partition_bytes(
        data, os.fspath(path), strategy=strategy, max_bytes=max_bytes, filetype=filetype, _shown=shown
    )


def partition_bytes(
    data: bytes,
    filename: str,
    *,
    strategy: str = "fast",
    max_bytes: int = DEFAULT_MAX_BYTES,
    filetype: str | None = None,
    _shown: str | None = None,
) -> ParsedDocument:
    """Partition in-memory file content; ``filename`` only selects the parser and labels errors.

    >>> doc = partition_bytes(b"# Refunds\\n\\nRefunds are paid within 30 days.", "policy.md")
    >>> [(e.category, e.metadata["section"]) for e in doc.elements]
    [('Title', 'Refunds'), ('NarrativeText', 'Refunds')]
    """
    shown = _shown or display_name(filename)
    effective = _check_strategy(strategy)
    _check_limit(max_bytes)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValidationError(f"{shown}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise IngestError(f"{shown}: {len(data):,} bytes is larger than the limit of {max_bytes:,} bytes")
    kind = resolve_filetype(data, filename, filetype=filetype, shown=shown)
    raws, parser, pages = _partition_raw(data, kind, shown, effective, max_bytes, depth=0)
    doc = assemble(raws, kind, parser, pages)
    if not doc.elements:
        hint = " (a scanned PDF needs OCR, which strategy 'fast' does not do)" if kind == "pdf" else ""
        raise IngestError(f"{shown}: no text could be extracted from this {kind} file{hint}")
    logger.debug("partitioned %s: %s, %d elements, %d chars", shown, kind, len(doc.elements), len(doc.text))
    return doc


def filetype_for(name: str) -> str | None:
    """The file type chosen by a file name's extension, or ``None``.

    >>> filetype_for("Report.PDF"), filetype_for("notes"), filetype_for("x.exe")
    ('pdf', None, None)
    """
    base = _basename(name)
    return EXTENSIONS.get(os.path.splitext(base)[1].lower())


def resolve_filetype(data: bytes, filename: str, *, filetype: str | None = None, shown: str | None = None) -> str:
    """Pick the file type from ``filetype``, the extension, or (no extension) the content."""
    shown = shown or display_name(filename)
    if filetype is not None:
        kind = EXTENSIONS.get("." + filetype.lower().lstrip("."), filetype.lower())
        if kind not in SUPPORTED_FILETYPES:
            raise ValidationError(
                f"{shown}: unsupported file type {filetype!r}; supported: {sorted(SUPPORTED_FILETYPES)}"
            )
        return kind
    ext = os.path.splitext(_basename(filename))[1].lower()
    if ext:
        if ext not in EXTENSIONS:
            raise IngestError(
                f"{shown}: unsupported file type {ext!r}; supported extensions: {', '.join(sorted(EXTENSIONS))}"
            )
        return EXTENSIONS[ext]
    if not data:
        raise IngestError(f"{shown}: the file is empty")
    sniffed = _sniff(data)
    if sniffed is None:
        raise IngestError(f"{shown}: unknown file type (no extension, and the content is not text)")
    return sniffed


def read_bounded(path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Read a regular file, refusing directories, devices, FIFOs and files over ``max_bytes`` up front.

    >>> read_bounded("/nonexistent/x.txt")
    Traceback (most recent call last):
    memory.errors.IngestError: '/nonexistent/x.txt': no such file
    """
    shown = display_name(os.fspath(path))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise IngestError(f"{shown}: no such file") from None
    except PermissionError:
        raise IngestError(f"{shown}: permission denied") from None
    except (ValueError, OSError) as exc:  # embedded NUL, name too long, loop of links, not a directory
        raise IngestError(f"{shown}: cannot access the path ({_reason(exc)})") from None
    if stat.S_ISDIR(st.st_mode):
        raise IngestError(f"{shown}: is a directory, not a file (add it as a directory source)")
    if not stat.S_ISREG(st.st_mode):
        raise IngestError(f"{shown}: not a regular file (a device, FIFO or socket)")
    if st.st_size > max_bytes:
        raise IngestError(f"{shown}: {st.st_size:,} bytes is larger than the limit of {max_bytes:,} bytes")
    if st.st_size == 0:
        raise IngestError(f"{shown}: the file is empty")
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except PermissionError:
        raise IngestError(f"{shown}: permission denied (the file is not readable)") from None
    except OSError as exc:
        raise IngestError(f"{shown}: cannot read the file ({_reason(exc)})") from None
    if len(data) > max_bytes:
        raise IngestError(f"{shown}: grew past the limit of {max_bytes:,} bytes while being read")
    return data


def display_name(name: str, limit: int = 300) -> str:
    """A quoted, printable form of a file name for messages (control characters escaped).

    >>> display_name("evil\\nname.txt")
    "'evil\\\\nname.txt'"
    """
    shown = repr(str(name))
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


def safe_basename(name: str, limit: int = 200) -> str:
    """The last path component with control characters replaced: safe as a label, never a path.

    >>> safe_basename("../../etc/passwd"), safe_basename("a\\x00b.txt")
    ('passwd', 'a_b.txt')
    """
    base = _CONTROL.sub("_", _basename(name)).replace("\n", "_").replace("\r", "_").strip()
    if base in {"", ".", ".."}:
        base = "unnamed"
    return base[:limit]


# ----------------------------------------------------------------------------------- assembly
def assemble(raws: Iterable[_Raw], filetype: str, parser: dict[str, Any], page_count: int | None) -> ParsedDocument:
    """Clean element texts, attach section metadata, join into one text and set offsets."""
    elements: list[Element] = []
    parts: list[str] = []
    pos = 0
    stack: list[tuple[int, str]] = []
    scope: object = None
    for raw in raws:
        if raw.category in _DROPPED:
            continue
        text = clean_text(raw.text)
        if not text:
            continue
        if raw.meta.get("attachment") != scope:  # an attachment starts its own outline
            scope, stack = raw.meta.get("attachment"), []
        if raw.category == "Title":
            depth = raw.depth if raw.depth is not None else 0
            while stack and stack[-1][0] >= depth:
                stack.pop()
            stack.append((depth, _one_line(text)))
        meta = {
            "page_number": raw.meta.get("page_number"),
            "section": stack[-1][1] if stack else None,
            "section_path": [title for _, title in stack],
        }
        if raw.category == "Title":
            meta["depth"] = raw.depth if raw.depth is not None else 0
        for key, value in raw.meta.items():
            if key not in meta and value is not None:
                meta[key] = value
        if parts:
            pos += 2
        elements.append(
            Element(text=text, category=raw.category, metadata=meta, start_char=pos, end_char=pos + len(text))
        )
        parts.append(text)
        pos += len(text)
    full = "\n\n".join(parts)
    return ParsedDocument(text=full, elements=elements, filetype=filetype, parser=parser, page_count=page_count)


def clean_text(text: str) -> str:
    """Normalise one element's text: NFC, no control characters, no trailing spaces, trimmed.

    >>> clean_text("  Hello\\x0cworld \\r\\n")
    'Hello\\nworld'
    """
    text = unicodedata.normalize("NFC", str(text))
    text = text.replace("\x0c", "\n").replace("\x0b", "\n").replace("\u00a0", " ").replace("\u00ad", "")
    text = _CONTROL.sub("", text)
    text = normalize_text(text).strip()
    return re.sub(r"\n{3,}", "\n\n", text)


# ----------------------------------------------------------------------------------- dispatch
def _partition_raw(
    data: bytes, kind: str, shown: str, strategy: str, max_bytes: int, depth: int
) -> tuple[list[_Raw], dict[str, Any], int | None]:
    if not data:
        raise IngestError(f"{shown}: the file is empty")
    handler = _HANDLERS[kind]
    raws, extra, pages = handler(data, shown, strategy, max_bytes, depth)
    parser: dict[str, Any] = {"pipeline": PIPELINE_VERSION, "strategy": strategy, "filetype": kind, **extra}
    return raws, parser, pages


def _check_strategy(strategy: str) -> str:
    if strategy in STRATEGIES:
        return "fast"
    raise ValidationError(
        f"partition strategy {strategy!r} is not available: 'hi_res' and 'ocr_only' need layout models or "
        f"Tesseract, which this offline build does not ship; use 'fast'"
    )


def _check_limit(max_bytes: int) -> None:
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1:
        raise ValidationError(f"max_bytes must be a positive integer, got {max_bytes!r}")


def _unstructured_record(partitioner: str) -> dict[str, Any]:
    return {"library": "unstructured", "version": unstructured_version(), "partitioner": partitioner, **spacy_info()}


def _from_unstructured(elements: Iterable[Any]) -> list[_Raw]:
    raws: list[_Raw] = []
    for el in elements:
        md = el.metadata
        meta: dict[str, Any] = {"page_number": getattr(md, "page_number", None)}
        html = getattr(md, "text_as_html", None)
        if el.category == "Table" and html:
            meta["text_as_html"] = html
        depth = getattr(md, "category_depth", None)
        if el.category == "Title" and getattr(md, "style_name", None) == "Title":
            depth = -1  # a Word document title sits above its "Heading 1" sections (both are depth 0)
        raws.append(_Raw(text=el.text or "", category=el.category, depth=depth, meta=meta))
    return raws


def _wrap(shown: str, kind: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except (IngestError, ValidationError):
        raise
    except Exception as exc:
        raise IngestError(f"{shown}: cannot parse as {kind} ({_reason(exc)})") from exc


# txt ---------------------------------------------------------------------------------------------
def _txt(data: bytes, shown: str, strategy: str, max_bytes: int, depth: int):
    text, enc = decode_text(data, shown)
    ensure_unstructured()
    from unstructured.partition.text import partition_text

    els = _wrap(shown, "text", lambda: partition_text(text=text))
    return _from_unstructured(els), {**_unstructured_record("partition_text"), "encoding": enc}, None


# md / rst ----------------------------------------------------------------------------------------
def _md(data: bytes, shown: str, strategy: str, max_bytes: int, depth: int):
    text, enc = decode_text(data, shown)
    ensure_unstructured()
    from unstructured.partition.md import partition_md

    els = _wrap(shown, "markdown", lambda: partition_md(text=text) if text.strip() else [])
    return _from_unstructured(els), {**_unstructured_record("partition_md"), "encoding": enc}, None


_RST_ADORNMENT = re.compile(r"([=\-`:'\"~^_*+#<>.])\1{2,}\s*")


def rst_to_markdown(text: str) -> str:
    """Rewrite reStructuredText section titles as Markdown headings (levels in order of first use).

    >>> rst_to_markdown("Title\\n=====\\n\\nBody.\\n\\nPart\\n----\\n")
    '# Title\\n\\nBody.\\n\\n## Part\\n'
    """
    lines = text.split("\n")
    out: list[str] = []
    levels: dict[tuple[str, bool], int] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if (
            line.strip()
            and not _RST_ADORNMENT.fullmatch(line)
            and _RST_ADORNMENT.fullmatch(nxt)
            and len(nxt.rstrip()) >= len(line.strip())
        ):
            over = bool(out) and _RST_ADORNMENT.fullmatch(out[-1]) is not None and out[-1].strip()[0] == nxt.strip()[0]
            if over:
                out.pop()
            level = levels.setdefault((nxt.strip()[0], over), len(levels) + 1)
            out.append("#" * min(level, 6) + " " + line.strip())
            i += 2
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _rst(data: bytes, shown: str, strategy: str, max_bytes: int, depth: int):
    text, enc = decode_text(data, shown)
    ensure_unstructured()
    from unstructured.partition.md import partition_md

    md = rst_to_markdown(text)
    els = _wrap(shown, "reStructuredText", lambda: partition_md(text=md) if md.strip() else [])
    record = {**_unstructured_record("partition_md"), "encoding": enc, "preprocess": "rst-titles-to-markdown"}
    return _from_unstructured(els), record, None


# html / xml --------------------------------------------------------------------------------------
def _html(data: bytes, shown: str, strategy: str, max_bytes: int, depth: int):
    text, enc = decode_text(data, shown)
    ensure_unstructured()
    from unstructured.partition.html import partition_html

    els = _wrap(shown, "HTML", lambda: partition_html(text=text) if text.strip() else [])
    return _from_unstructured(els), {**_unstructured_record("partition_html"), "encoding": enc}, None


def _xml(data: bytes, shown: str, strategy: str, max_bytes: int, depth: int):
    text, enc = decode_text(data, shown)
    ensure_unstructured()
    from unstructured.partition.xml import partition_xml

    # Re-encoded as UTF-8 and told so: the declaration may name the original encoding. Entities are
    # not resolved by unstructured's parser (no XXE).
    payload = re.sub(r"^\s*<\?xml[^>]*\?>", "", text, count=1).encode("utf-8")
    els = _wrap(shown, "XML", lambda: partition_xml(file=io.BytesIO(payload), encoding="utf-8"))
    return _from_unstructured(els), {**_unstructured_record("partition_xml"), "encoding": enc}, None


# docx --------------------------------------------------------------------------------------------
def _docx(data: bytes, shown: str, strategy: str, max_bytes: int, depth: int):
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            names = {i.filename for i in infos}
            unzipped = sum(i.file_size for i in infos)
            bomb = next(
                (
                    i
                    for i in infos
                    if i.file_size > _UNZIP_RATIO_FROM and i.file_size > _MAX_UNZIP_RATIO * max(i.compress_size, 1)
                ),
                None,
            )
    except zipfile.BadZipFile as exc:
        raise IngestError(f"{shown}: not a valid .docx file (not a zip archive: {exc})") from None
    if "word/document.xml" not in names:
        raise IngestError(f"{shown}: not a Word document (the archive has no word/document.xml)")
    if unzipped > 2 * max_bytes:
        raise IngestError(
            f"{shown}: unpacks to {unzipped:,} bytes (a zip bomb?); the limit is "
            f"{2 * max_bytes:,} (twice the document limit)"
        )
    if bomb is not None:
        raise IngestError(
            f"{shown}: {bomb.filename} inflates {bomb.file_size / max(bomb.compress_size, 1):,.0f}x "
            f"to {bomb.file_size:,} bytes (a zip bomb?); refused"
        )
    ensure_unstructured()
    from unstructured.partition.docx import partition_docx

    els = _wrap(shown, "docx", lambda: partition_docx(file=io.BytesIO(data)))
    record = {**_unstructured_record("partition_docx"), "python_docx": package_version("python-docx")}
    return _from_unstructured(els), record, None


# eml ---------------------------------------------------------------------------------------------
def _eml(data: bytes, shown: str, strategy: str, max_bytes: int, depth: int):
    msg = _wrap(shown, "email", lambda: email.message_from_bytes(data, policy=email.policy.default))
    if not any(msg.get(h) for h in ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version")):
        raise IngestError(f"{shown}: not an email message (no From/To/Subject/Date headers)")
    ensure_unstructured()
    from unstructured.partition.email import partition_email

    els = _wrap(shown, "email", lambda: partition_email(file=io.BytesIO(data), process_attachments=False))
    raws: list[_Raw] = []
    subject = _header(msg, "Subject")
    if subject:
        raws.append(_Raw(text=subject, category="Title", depth=-1))
    head = [f"{h}: {v}" for h in ("From", "To", "Cc", "Date") if (v := _header(msg, h))]
    if head:
        raws.append(_Raw(text="\n".join(head), category="UncategorizedText"))
    for raw in _from_unstructured(els):
        # A plain-text body has no real headings: a short line ("Regards,", a name) is not a section.
        if raw.category == "Title" and raw.depth is None:
            raw.category = "UncategorizedText"
        raws.append(raw)
    attached: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    if depth < _MAX_ATTACHMENT_DEPTH:
        for index, part in enumerate(msg.iter_attachments()):
            label = safe_basename(part.get_filename() or f"attachment-{index + 1}")
            try:
                content = part.get_content()
                if isinstance(content, email.message.Message):
                    content = content.as_bytes()
                    label = label if filetype_for(label) else label + ".eml"
                elif isinstance(content, str):
                    content = content.encode("utf-8")
                sub_shown = f"{shown} attachment {display_name(label)}"
                kind = resolve_filetype(content, label, shown=sub_shown)
                sub, record, _ = _partition_raw(content, kind, sub_shown, strategy, max_bytes, depth + 1)
            except (IngestError, ValidationError, LookupError, ValueError) as exc:
                logger.warning("%s: skipping attachment %s: %s", shown, display_name(label), exc)
                skipped.append({"name": label, "reason": str(exc)})
                continue
            for r in sub:
                r.meta["attachment"] = label
            raws.extend(sub)
            attached.append({"name": label, "filetype": kind, "library": record.get("library")})
    record = {**_unstructured_record("partition_email"), "attachments": attached}
    if skipped:
        record["attachments_skipped"] = skipped
    return raws, record, None


def _header(msg: email.message.Message, name: str) -> str:
    try:
        value = msg.get(name)
    except Exception:  # noqa: BLE001 - a malformed header must not sink the whole message
        return ""
    return re.sub(r"\s+", " ", _CONTROL.sub("", str(value))).strip() if value else ""


# csv / tsv ---------------------------------------------------------------------------------------
_MAX_HTML_CELLS = 2000


def _csv(data: bytes, shown: str, strategy: str, max_bytes: int, depth: int, *, tsv: bool = False):
    text, enc = decode_text(data, shown)
    if tsv:
        dialect: Any = csv.excel_tab
    else:
        try:
            dialect = csv.Sniffer().sniff(text[:16384], delimiters=",;\t|")
        except csv.Error:
            dialect = csv.excel
    try:
        rows = [[c.strip() for c in row] for row in csv.reader(io.StringIO(text), dialect)]
    except csv.Error as exc:
        raise IngestError(f"{shown}: malformed {'TSV' if tsv else 'CSV'} ({exc})") from None
    rows = [r for r in rows if any(r)]
    if not rows:
        return [], {"library": "python-csv", "encoding": enc}, None
    body = "\n".join(" | ".join(r) for r in rows)
    meta: dict[str, Any] = {"rows": len(rows), "columns": max(len(r) for r in rows)}
    if len(rows) * meta["columns"] <= _MAX_HTML_CELLS:
        meta["text_as_html"] = _table_html(rows)
    record = {
        "library": "python-csv",
        "version": _python_version(),
        "encoding": enc,
        "delimiter": getattr(dialect, "delimiter", ","),
    }
    return [_Raw(text=body, category="Table", meta=meta)], record, None


def _tsv(data: bytes, shown: str, strategy: str, max_bytes: int, depth: int):
    return _csv(data, shown, strategy, max_bytes, depth, tsv=True)


def _table_html(rows: list[list[str]]) -> str:
    cells = ("<tr>" + "".join(f"<td>{html_lib.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return "<table>" + "".join(cells) + "</table>"


# json --------------------------------------------------------------------------------------------
def _json(data: bytes, shown: str, strategy: str, max_bytes: int, depth: int):
    text, enc = decode_text(data, shown)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IngestError(f"{shown}: invalid JSON at line {exc.lineno} column {exc.colno} ({exc.msg})") from None
    except RecursionError:
        raise IngestError(f"{shown}: JSON nested too deeply") from None
    if isinstance(obj, dict):
        items: list[tuple[str, Any]] = [(str(k), v) for k, v in obj.items()]
    elif isinstance(obj, list):
        items = [(f"[{i}]", v) for i, v in enumerate(obj)]
    else:
        items = [("", obj)]
    raws = []
    for key, value in items:
        lines = list(_flatten(value, key))
        if lines:
            raws.append(_Raw(text="\n".join(lines), category="UncategorizedText", meta={"json_key": key or None}))
    return raws, {"library": "python-json", "version": _python_version(), "encoding": enc}, None


def _flatten(value: Any, prefix: str) -> Iterable[str]:
    stack: list[tuple[str, Any]] = [(prefix, value)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, dict):
            stack.extend(reversed([(f"{path}.{k}" if path else str(k), x) for k, x in v.items()]))
        elif isinstance(v, list):
            stack.extend(reversed([(f"{path}[{i}]", x) for i, x in enumerate(v)]))
        elif v is None or v == "":
            continue
        else:
            shown = v if isinstance(v, str) else json.dumps(v)
            yield f"{path}: {shown}" if path else str(shown)


# pdf ---------------------------------------------------------------------------------------------
def _pdf(data: bytes, shown: str, strategy: str, max_bytes: int, depth: int):
    from memory.ingest.pdf import extract_pdf

    raws, pages = extract_pdf(data, shown, max_bytes=max_bytes)
    record = {
        "library": "pdfminer.six",
        "version": package_version("pdfminer.six"),
        "classifier": "unstructured.partition.text.element_from_text",
        "classifier_version": unstructured_version(),
        **spacy_info(),
        "pages": pages,
        "note": "pdfminer layout used directly: unstructured's partition_pdf imports OpenCV/ONNX/pandas",
    }
    return raws, record, pages


_HANDLERS: dict[str, Callable[..., tuple[list[_Raw], dict[str, Any], int | None]]] = {
    "txt": _txt,
    "md": _md,
    "rst": _rst,
    "html": _html,
    "xml": _xml,
    "docx": _docx,
    "eml": _eml,
    "csv": _csv,
    "tsv": _tsv,
    "json": _json,
    "pdf": _pdf,
}


# ----------------------------------------------------------------------------------- helpers
def _sniff(data: bytes) -> str | None:
    head = data[:2048]
    if b"%PDF-" in data[:1024]:
        return "pdf"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                if "word/document.xml" in zf.namelist():
                    return "docx"
        except zipfile.BadZipFile:
            return None
        return None
    if looks_binary(data):
        return None
    low = head.lstrip().lower()
    if low.startswith((b"<!doctype html", b"<html")):
        return "html"
    if low.startswith(b"<?xml"):
        return "xml"
    return "txt"


def _basename(name: str) -> str:
    return re.split(r"[\\/]", str(name))[-1]


def _one_line(text: str, limit: int = 200) -> str:
    """A heading as a section name: one line, at most ``limit`` characters."""
    line = re.sub(r"\s+", " ", text).strip()
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _reason(exc: BaseException) -> str:
    msg = str(exc) or type(exc).__name__
    msg = _CONTROL.sub("?", msg).replace("\n", " ")
    return msg if len(msg) < 300 else msg[:297] + "..."


def _python_version() -> str:
    import platform

    return platform.python_version()


__all__ = [
    "DEFAULT_MAX_BYTES",
    "EXTENSIONS",
    "SUPPORTED_FILETYPES",
    "Element",
    "ParsedDocument",
    "clean_text",
    "display_name",
    "filetype_for",
    "partition_bytes",
    "partition_path",
    "read_bounded",
    "resolve_filetype",
    "rst_to_markdown",
    "safe_basename",
]
