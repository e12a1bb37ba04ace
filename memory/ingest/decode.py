"""Turn the bytes of a text file into ``str``, or refuse them as binary.

Order: a byte-order mark (UTF-32, UTF-8, UTF-16), then strict UTF-8, then an encoding the file declares
(``<meta charset>``, ``<?xml encoding?>``), then charset-normalizer's guess. NUL bytes or many control
characters mean binary content (a ``.txt`` name on an image, an archive): that is an
:class:`~memory.errors.IngestError`, never a page of mojibake in the memory.
"""

from __future__ import annotations

import codecs
import re

from memory.errors import IngestError

_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_DECLARED = (
    re.compile(rb"<meta[^>]{0,200}?charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:-]{1,40})", re.IGNORECASE),
    re.compile(rb"<\?xml[^>]{0,200}?encoding\s*=\s*[\"']([A-Za-z0-9_.:-]{1,40})[\"']", re.IGNORECASE),
)
# C0 controls other than tab, LF, VT, FF, CR; plus DEL.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
_MAX_CONTROL_RATIO = 0.01


def decode_text(data: bytes, name: str = "<bytes>") -> tuple[str, str]:
    """Decode ``data`` and return ``(text, encoding)``; raise IngestError for binary content.

    >>> decode_text("café".encode("cp1252"), "menu.txt")[0]
    'café'
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return _checked(data.decode(encoding), name), encoding
            except UnicodeDecodeError as exc:
                raise IngestError(
                    f"{name}: starts with a {encoding} byte-order mark but is not {encoding}: {exc}"
                ) from exc
    if b"\x00" in data:
        raise IngestError(f"{name}: binary content (NUL bytes) in a file that should be text")
    try:
        return _checked(data.decode("utf-8"), name), "utf-8"
    except UnicodeDecodeError:
        pass
    declared = declared_encoding(data)
    if declared:
        try:
            return _checked(data.decode(declared), name), declared
        except (UnicodeDecodeError, LookupError):
            pass
    from charset_normalizer import from_bytes

    # Without a byte-order mark and without NUL bytes the text is not UTF-16/32; on short inputs the
    # detector may still guess those, so they are passed over.
    guesses = [g for g in from_bytes(data) if g.encoding and not g.encoding.startswith(("utf_16", "utf_32"))]
    if guesses:
        least = min(g.chaos for g in guesses)
        top = [g for g in guesses if g.chaos <= least + 1e-9]
        most = max(g.coherence for g in top)
        top = [g for g in top if g.coherence >= most - 1e-9]
        # Equally plausible readings (common for short texts): Windows-1252 when it is one of them.
        try:
            western = data.decode("cp1252")
            if any(str(g) == western for g in top):
                return _checked(western, name), "cp1252"
        except UnicodeDecodeError:
            pass
        return _checked(str(top[0]), name), top[0].encoding
    try:
        return _checked(data.decode("cp1252"), name), "cp1252"
    except UnicodeDecodeError:
        raise IngestError(f"{name}: binary content (not decodable as text in any known encoding)") from None


def declared_encoding(data: bytes) -> str | None:
    """The encoding named by an HTML ``<meta charset>`` or an XML declaration in the first 4 KiB."""
    head = data[:4096]
    for pattern in _DECLARED:
        m = pattern.search(head)
        if m:
            name = m.group(1).decode("ascii", "replace").lower()
            try:
                return codecs.lookup(name).name
            except LookupError:
                return None
    return None


def looks_binary(data: bytes) -> bool:
    """True for content that :func:`decode_text` would refuse (a cheap check on the first 8 KiB).

    >>> looks_binary(b"\\x89PNG\\r\\n\\x1a\\n\\x00\\x00"), looks_binary(b"hello")
    (True, False)
    """
    head = data[:8192]
    if b"\x00" in head and not head.startswith(tuple(bom for bom, _ in _BOMS)):
        return True
    try:  # an incremental decoder tolerates a character cut at the 8 KiB boundary
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        _checked(text, "<bytes>")
        return False
    except UnicodeDecodeError:
        pass
    except IngestError:
        return True
    try:
        decode_text(head)
    except IngestError:
        return True
    return False


def _checked(text: str, name: str) -> str:
    if text and len(_CONTROL.findall(text)) > max(8, int(len(text) * _MAX_CONTROL_RATIO)):
        raise IngestError(f"{name}: binary content (control characters) in a file that should be text")
    return text
