"""What a namespace and a document id may be: checked in-process (:mod:`memory.services.records`) and by the HTTP
client before a name goes into a URL (:mod:`memory.client`). Nothing here imports the database layer.

>>> validate_namespace("team-a")
'team-a'
>>> validate_document_id("docs/../etc")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
memory.errors.ValidationError: invalid document id 'docs/../etc': ...
"""

from __future__ import annotations

import re

from memory.errors import ValidationError

_NAMESPACE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_DOC_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@/+=-]{0,254}")


def validate_namespace(name: str) -> str:
    """Namespaces are 1-64 characters of ``a-z 0-9 _ -``, starting with a letter or digit."""
    if not isinstance(name, str) or not _NAMESPACE.fullmatch(name):
        raise ValidationError(
            f"invalid namespace {name!r}: use 1-64 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
        )
    return name


def validate_document_id(doc_id: str) -> str:
    """Document ids are 1-255 printable characters ``A-Z a-z 0-9 _ . : @ / + = -`` without ``..`` segments."""
    if (
        not isinstance(doc_id, str)
        or not _DOC_ID.fullmatch(doc_id)
        or any(part in ("", ".", "..") for part in doc_id.split("/"))
    ):
        raise ValidationError(
            f"invalid document id {doc_id!r}: use 1-255 characters of letters, digits and _ . : @ / + = -, "
            "no empty, '.' or '..' path segments"
        )
    return doc_id
