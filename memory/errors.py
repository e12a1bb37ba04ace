"""One exception hierarchy for the whole library.

Every message says what went wrong and what to do about it. Callers catch
:class:`PMemError` and never need to inspect SQLAlchemy, torch or Unstructured exceptions.
"""

from __future__ import annotations


class PMemError(Exception):
    """Base class of every error raised on purpose by parametric-memory."""


class ConfigError(PMemError):
    """A setting is missing or invalid."""


class ValidationError(PMemError, ValueError):
    """User input (a namespace, an id, a text, a file) is not acceptable."""


class NotFoundError(PMemError, LookupError):
    """The namespace, document, version or adapter does not exist (in this namespace)."""


class ConflictError(PMemError):
    """A concurrent update won; re-read and retry."""


class IntegrityError(PMemError):
    """Stored data is corrupt: a blob whose hash does not match its name, a truncated file."""


class DatabaseNotInitialisedError(PMemError):
    """A server database has no schema yet (run ``pmem db upgrade``)."""


class IngestError(PMemError):
    """A file could not be read or parsed."""


class ModelError(PMemError):
    """A base model or checkpoint cannot be found, is corrupt, or does not match."""


class AdapterMismatchError(ModelError):
    """An adapter was made for another base model or has the wrong shapes."""


__all__ = [
    "AdapterMismatchError",
    "ConfigError",
    "ConflictError",
    "DatabaseNotInitialisedError",
    "IngestError",
    "IntegrityError",
    "ModelError",
    "NotFoundError",
    "PMemError",
    "ValidationError",
]
