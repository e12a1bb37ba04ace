"""What the two ``pmem`` front ends share: the typer app (:mod:`memory.cli`) and the standard-library fast path of a
remote ``pmem ask`` (:mod:`memory.entry`). Standard library only: the fast path must not load typer, pydantic,
httpx, rich or torch, so nothing here may.

>>> ASK_MODE, ASK_K, ASK_MAX_NEW_TOKENS
('auto', 4, 64)
"""

from __future__ import annotations

import os

# The defaults of ``pmem ask`` (the server's query endpoint has the same ones).
ASK_MODES = ("auto", "parametric", "retrieval", "hybrid")
ASK_MODE = "auto"
ASK_K = 4
ASK_MAX_NEW_TOKENS = 64


def scrub(text: str) -> str:
    """``text`` with URL passwords, secret query parameters and the API key (PMEM_API_KEY) replaced by ``***``.

    >>> scrub("cannot reach http://admin:hunter2@host:8000/")
    'cannot reach http://admin:***@host:8000/'
    """
    from memory.config import redact  # here, not at the top: only errors need it (~20 ms of the fast path's start)

    key = os.environ.get("PMEM_API_KEY")
    return redact(text.replace(key, "***") if key else text)
