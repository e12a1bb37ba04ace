"""Content-addressed blob store for adapters and document texts.

A blob's name is the SHA-256 of its bytes, so a name *is* an integrity check: every read re-hashes
and refuses a blob that was changed or truncated on disk. Writes are atomic (a temporary file in the
same directory, then a rename), so a crash never leaves a half-written blob under a real name.

The default backend is a local directory; any fsspec URL (``s3://bucket/pmem``, ``gcs://...``,
``memory://...``) works for storage shared by many workers.

>>> store = BlobStore("/tmp/pmem-doc-blobs")
>>> sha = store.put(b"hello")
>>> store.get(sha)
b'hello'
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from memory.config import redact
from memory.errors import IntegrityError, NotFoundError, ValidationError

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"[0-9a-f]{64}")
# fsspec protocols whose single write is atomic and that have no rename.
_OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory"}
# A writer's temporary file lives for the milliseconds of one write; one this old was left by a crash.
TEMP_GRACE_S = 3600.0


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    """Validate a blob name (also what keeps a name from ever being a path)."""
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise ValidationError(f"invalid blob name {digest!r}: expected 64 lowercase hex characters (SHA-256)")
    return digest


class BlobStore:
    """SHA-256-named blobs under ``root`` laid out as ``ab/cd/abcd...``."""

    def __init__(self, url: str | os.PathLike[str]) -> None:
        url = str(url)
        self.url = redact(url)  # as shown in messages; never a password
        if "://" in url and not url.startswith("file://"):
            import fsspec

            self._fs, self._root = fsspec.core.url_to_fs(url)
            self._local = None
            protocols = {self._fs.protocol} if isinstance(self._fs.protocol, str) else set(self._fs.protocol)
            self._object_store = bool(protocols & _OBJECT_STORES)
        else:
            self._object_store = False
            self._local = Path(url.removeprefix("file://")).expanduser()
            self._local.mkdir(parents=True, exist_ok=True)
            self._fs, self._root = None, str(self._local)

    # ----------------------------------------------------------------- paths
    def _rel(self, digest: str) -> str:
        check_digest(digest)
        return f"{digest[:2]}/{digest[2:4]}/{digest}"

    def _path(self, digest: str) -> str:
        return f"{self._root.rstrip('/')}/{self._rel(digest)}"

    # ----------------------------------------------------------------- API
    def put(self, data: bytes) -> str:
        """Store ``data`` and return its SHA-256 name.

        Storing the same bytes twice is a no-op when the stored copy is intact; a copy that was changed or
        truncated on disk is replaced, so re-adding a document repairs its blob.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValidationError(f"blob data must be bytes, got {type(data).__name__}")
        data = bytes(data)
        digest = sha256_hex(data)
        if self.exists(digest):
            try:
                self.get(digest)
                return digest
            except IntegrityError:
                log.warning("blob %s in %s was corrupt: rewriting it", digest, self.url)
            except NotFoundError:  # removed since exists(): write it
                pass
        self._write(digest, data)
        return digest

    def _write(self, digest: str, data: bytes) -> None:
        path = self._path(digest)
        if self._local is not None:
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)  # atomic on POSIX; a concurrent identical write is harmless
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            _fsync_dir(target.parent)  # the rename itself survives a power loss only once its directory is synced
        elif self._object_store:
            # One PUT is atomic on an object store (readers see the old object or the new one, never
            # half of it); a temporary name plus a server-side copy would only double the traffic.
            self._fs.pipe_file(path, data)
            self._forget(path)
        else:
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            self._fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            try:
                self._fs.pipe_file(tmp, data)
                self._fs.mv(tmp, path)
            except BaseException:
                if self._fs.exists(tmp):
                    self._fs.rm(tmp)
                raise
            self._forget(path)

    def get(self, digest: str) -> bytes:
        """Read a blob and verify its hash; raise :class:`IntegrityError` if it was changed or truncated."""
        path = self._path(digest)
        try:
            data = Path(path).read_bytes() if self._local is not None else self._fs.cat_file(path)
        except FileNotFoundError:
            raise NotFoundError(f"blob {digest} is missing from {self.url}") from None
        actual = sha256_hex(data)
        if actual != digest:
            raise IntegrityError(
                f"blob {digest} in {self.url} is corrupt ({len(data)} bytes hash to {actual[:16]}...); "
                "it was changed or truncated on disk. Storing the same bytes again repairs it: re-add the "
                "document's text (`pmem add`), or re-internalize the document for an adapter."
            )
        return data

    def _forget(self, path: str) -> None:
        """Drop fsspec's cached listing of ``path``: another process may have written or deleted it since."""
        self._fs.invalidate_cache(path)
        self._fs.invalidate_cache(path.rsplit("/", 1)[0])

    def exists(self, digest: str) -> bool:
        path = self._path(digest)
        if self._local is not None:
            return Path(path).is_file()
        self._forget(path)
        return bool(self._fs.exists(path))

    def size(self, digest: str) -> int:
        path = self._path(digest)
        if self._local is not None:
            return Path(path).stat().st_size
        self._forget(path)
        return int(self._fs.size(path))

    def delete(self, digest: str) -> bool:
        """Remove a blob; return whether it existed."""
        path = self._path(digest)
        if self._local is not None:
            try:
                Path(path).unlink()
                return True
            except FileNotFoundError:
                return False
        self._forget(path)
        if not self._fs.exists(path):  # (S3 deletes a missing key without complaint)
            return False
        try:
            self._fs.rm(path)
        except FileNotFoundError:
            return False
        finally:
            self._forget(path)
        return True

    def __iter__(self) -> Iterator[str]:
        """Every stored blob name (temporary files excluded)."""
        if self._local is not None:
            for p in self._local.glob("??/??/*"):
                if _SHA256.fullmatch(p.name):
                    yield p.name
        else:
            self._fs.invalidate_cache()
            for p in self._fs.find(self._root):
                name = p.rsplit("/", 1)[-1]
                if _SHA256.fullmatch(name):
                    yield name

    def sweep(
        self, referenced: Iterable[str], *, dry_run: bool = False, temp_grace_s: float = TEMP_GRACE_S
    ) -> list[str]:
        """Delete every blob whose name is not in ``referenced``; return the names removed.

        Also removes temporary files left by a crashed writer: only those older than ``temp_grace_s``, so
        a write in flight in another process is never cut short. Sweeping is safe against concurrent
        writers only together with the database's blob lock (see ``ParametricMemory.gc``): a writer
        re-checks its blob under that lock before it commits the row that references it.
        """
        keep = set(referenced)
        removed = [d for d in list(self) if d not in keep]
        if not dry_run:
            for d in removed:
                self.delete(d)
            self.sweep_temporaries(temp_grace_s)
        if removed:
            log.info("swept %d unreferenced blob(s) from %s", len(removed), self.url)
        return removed

    def sweep_temporaries(self, grace_s: float = TEMP_GRACE_S) -> None:
        """Remove temporary files older than ``grace_s`` (left by crashed writers)."""
        cutoff = time.time() - grace_s
        if self._local is not None:
            for tmp in self._local.glob("??/??/.tmp-*"):
                try:
                    if tmp.stat().st_mtime < cutoff:
                        tmp.unlink(missing_ok=True)
                except FileNotFoundError:  # its writer renamed it meanwhile
                    pass
            return
        self._fs.invalidate_cache()
        for p, info in self._fs.find(self._root, detail=True).items():
            if ".tmp-" not in p.rsplit("/", 1)[-1]:
                continue
            modified = info.get("LastModified") or info.get("mtime") or info.get("created")
            stamp = modified.timestamp() if hasattr(modified, "timestamp") else modified
            if stamp is not None and float(stamp) < cutoff:
                with contextlib.suppress(FileNotFoundError):
                    self._fs.rm(p)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
