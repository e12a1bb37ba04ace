"""Sources: a file, a directory (recursive) or a glob, expanded to a sorted list of files.

Directories skip hidden entries, unsupported types and anything that is not a regular file, and say why
(:class:`SourceScan.skipped`). Symbolic links are followed only when they stay inside the source root,
so a directory source cannot pull in ``/etc/passwd``. Empty, oversized or unreadable files are *not*
skipped here: they fail on their own when partitioned, with the error recorded on that file.

:func:`document_key` turns a file's place under its root into a stable, safe document id.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
import stat
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from memory.errors import IngestError, ValidationError
from memory.ingest.partition import display_name, filetype_for

logger = logging.getLogger(__name__)

SourceKind = Literal["file", "directory", "glob"]
MAX_KEY_LENGTH = 255
_GLOB_CHARS = re.compile(r"[*?\[]")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_.:@+=-]+")
_KEY_FIRST = re.compile(r"[A-Za-z0-9_]")


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


@dataclass
class SourceScan:
    """What a source expands to: ``files`` in a deterministic order, and what was ``skipped`` and why."""

    spec: str
    kind: SourceKind
    root: Path
    files: list[Path] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def source_kind(spec: str | os.PathLike[str]) -> SourceKind:
    """``"directory"`` or ``"file"`` for an existing path, ``"glob"`` for a pattern, else ``"file"``.

    >>> source_kind("/tmp"), source_kind("/tmp/*.md"), source_kind("/nonexistent.txt")
    ('directory', 'glob', 'file')
    """
    text = os.fspath(spec)
    path = Path(text).expanduser()
    try:
        if path.is_dir():
            return "directory"
        if path.exists():
            return "file"
    except (OSError, ValueError):
        return "file"
    return "glob" if _GLOB_CHARS.search(text) else "file"


def expand_source(spec: str | os.PathLike[str], *, include_hidden: bool = False) -> list[Path]:
    """The files a source names, sorted by their path relative to the source root.

    >>> expand_source("docs/**/*.md")  # doctest: +SKIP
    [PosixPath('docs/a.md'), PosixPath('docs/guide/b.md')]
    """
    return scan_source(spec, include_hidden=include_hidden).files


def scan_source(spec: str | os.PathLike[str], *, include_hidden: bool = False) -> SourceScan:
    """Expand a source and report the skipped entries with a reason.

    >>> scan = scan_source("/nonexistent/dir")
    Traceback (most recent call last):
    memory.errors.IngestError: '/nonexistent/dir': no such file or directory
    """
    text = os.fspath(spec)
    if "\x00" in text:
        raise ValidationError(f"{display_name(text)}: a source path cannot contain a NUL byte")
    kind = source_kind(text)
    path = Path(text).expanduser()
    if kind == "file":
        if not path.exists() and not path.is_symlink():
            raise IngestError(f"{display_name(text)}: no such file or directory")
        return SourceScan(spec=text, kind=kind, root=path.parent.absolute(), files=[path.absolute()])
    if kind == "directory":
        root = path.absolute()
        scan = SourceScan(spec=text, kind=kind, root=root)
        _walk(root, root, scan, include_hidden)
    else:
        root = _glob_root(path)
        scan = SourceScan(spec=text, kind=kind, root=root)
        for match in sorted(glob.glob(str(path), recursive=True, include_hidden=include_hidden)):
            p = Path(match).absolute()
            if p.is_dir() and not p.is_symlink():
                _walk(p, root, scan, include_hidden)
            else:
                _consider(p, root, scan, include_hidden)
        if not scan.files and not scan.skipped:
            logger.info("glob %s matched no files", display_name(text))
    scan.files = sorted(set(scan.files), key=lambda p: _rel(p, scan.root))
    scan.skipped.sort(key=lambda s: _rel(s.path, scan.root))
    for s in scan.skipped:
        logger.info("skipping %s: %s", display_name(str(s.path)), s.reason)
    return scan


def document_key(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> str:
    """A safe, stable document id: the POSIX path relative to ``root``, at most 255 characters.

    Ids use only ``A-Z a-z 0-9 _ . : @ / + = -`` (what :func:`memory.api.validate_document_id` accepts);
    any other character (space, accent, control character) becomes ``_``. A key that had to be changed
    or shortened gets ``-`` and 10 hex digits of the original path's SHA-256 before its extension, so two
    different files never share a key.

    >>> document_key("/data/policies/hr/leave.md", "/data/policies")
    'hr/leave.md'
    >>> document_key("/data/Travel policy.md", "/data")
    'Travel_policy-6a992fbf82.md'
    >>> document_key("/data/x/../../etc/passwd", "/data")
    Traceback (most recent call last):
    memory.errors.ValidationError: '/data/x/../../etc/passwd' is not inside the source root '/data'
    """
    p = Path(os.path.normpath(os.path.abspath(os.fspath(path))))
    if root is None:
        rel_parts = [p.name]
    else:
        r = Path(os.path.normpath(os.path.abspath(os.fspath(root))))
        try:
            rel_parts = list(p.relative_to(r).parts)
        except ValueError:
            raise ValidationError(
                f"{display_name(os.fspath(path))} is not inside the source root {display_name(os.fspath(root))}"
            ) from None
    rel_parts = [part for part in rel_parts if part not in ("", ".")]
    if not rel_parts:
        raise ValidationError(f"{display_name(os.fspath(path))}: cannot make a document key from this path")
    original = "/".join(rel_parts)
    key = "/".join(_segment(part) for part in rel_parts)
    if not _KEY_FIRST.match(key):
        key = "_" + key
    if key == original and len(key) <= MAX_KEY_LENGTH:
        return key
    digest = hashlib.sha256(original.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    ext = os.path.splitext(key.rsplit("/", 1)[-1])[1]
    ext = ext if 1 < len(ext) <= 10 else ""
    head = key[: len(key) - len(ext)][: MAX_KEY_LENGTH - len(ext) - 11].rstrip("/")
    head = "/".join(_segment(part) for part in head.split("/"))
    return f"{head}-{digest}{ext}"


# ----------------------------------------------------------------------------------- helpers
def _walk(top: Path, root: Path, scan: SourceScan, include_hidden: bool) -> None:
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            if not include_hidden and d.startswith("."):
                scan.skipped.append(Skipped(here / d, "hidden directory"))
            elif (here / d).is_symlink():
                scan.skipped.append(Skipped(here / d, "symbolic link to a directory (not followed)"))
            else:
                keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            _consider(here / name, root, scan, include_hidden)


def _consider(p: Path, root: Path, scan: SourceScan, include_hidden: bool) -> None:
    if not include_hidden and p.name.startswith("."):
        scan.skipped.append(Skipped(p, "hidden file"))
        return
    if p.is_symlink():
        try:
            target = p.resolve(strict=True)
        except (OSError, RuntimeError):
            scan.skipped.append(Skipped(p, "broken symbolic link"))
            return
        if not _inside(target, root.resolve()):
            scan.skipped.append(Skipped(p, "symbolic link that points outside the source root"))
            return
    elif scan.kind == "glob":
        # A glob walks through symbolic links to directories (``docs/*/*.txt`` matches docs/link/x.txt):
        # what counts is where the file really is.
        try:
            real = p.resolve(strict=True)
        except (OSError, RuntimeError):
            real = p
        if not _inside(real, root.resolve()):
            scan.skipped.append(Skipped(p, "reached through a symbolic link to a directory outside the source root"))
            return
    try:
        mode = p.stat().st_mode
    except OSError as exc:
        # Unreadable metadata: keep it, so the error is recorded on this file when it is partitioned.
        logger.debug("cannot stat %s: %s", display_name(str(p)), exc)
        scan.files.append(p)
        return
    if not stat.S_ISREG(mode):
        scan.skipped.append(Skipped(p, "not a regular file"))
        return
    if filetype_for(p.name) is None:
        ext = p.suffix.lower() or "(no extension)"
        scan.skipped.append(Skipped(p, f"unsupported file type {ext}"))
        return
    scan.files.append(p)


def _segment(part: str) -> str:
    """One path component with every character a document id may not hold replaced by ``_``."""
    clean = _KEY_UNSAFE.sub("_", unicodedata.normalize("NFC", part))
    return "_" if clean in ("", ".", "..") else clean


def _glob_root(pattern: Path) -> Path:
    parts = []
    for part in pattern.parts:
        if _GLOB_CHARS.search(part):
            break
        parts.append(part)
    base = Path(*parts) if parts else Path(".")
    return base.absolute()


def _inside(p: Path, root: Path) -> bool:
    try:
        p.relative_to(root)
        return True
    except ValueError:
        return False


def _rel(p: Path, root: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.as_posix()
