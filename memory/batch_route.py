"""Where a context's generations go: continuous-batching settings (:class:`Batching`) and the route that
:meth:`memory.models.BaseModel.generate` follows (:func:`batched`, :func:`current_route`).

Standard library only, so the async facade (over a ``RemoteMemory`` too) and the model code can both import it
without importing each other: the scheduler itself is :class:`memory.models.batching.BatchScheduler`, started by
:meth:`Batching.scheduler` on a model's first batched generation.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

__all__ = ["Batching", "Route", "batched", "current_route"]


class Batching:
    """Continuous-batching settings, and the :class:`BatchScheduler` of each base model they serve (one per
    model, started on its first generation).

    >>> Batching(max_batch=4)
    Batching(max_batch=4, max_tokens=16384)
    """

    def __init__(self, max_batch: int = 8, max_tokens: int = 16384) -> None:
        if max_batch < 1 or max_tokens < 1:
            raise ValueError(f"need max_batch >= 1 and max_tokens >= 1, got {max_batch!r}, {max_tokens!r}")
        self.max_batch, self.max_tokens = max_batch, max_tokens
        self._lock = threading.Lock()
        self._schedulers: dict[int, tuple[Any, Any]] = {}

    def __repr__(self) -> str:
        return f"Batching(max_batch={self.max_batch}, max_tokens={self.max_tokens})"

    def scheduler(self, base: Any) -> Any:
        """The scheduler of ``base`` (started now if it has none)."""
        with self._lock:
            hit = self._schedulers.get(id(base))
            if hit is None:
                from memory.models.batching import BatchScheduler

                sched = BatchScheduler(base, max_batch=self.max_batch, max_tokens=self.max_tokens)
                hit = self._schedulers[id(base)] = (base, sched)  # holds base: its id stays its own
            return hit[1]

    def close(self) -> None:
        """Stop every scheduler (rows in flight finish first)."""
        with self._lock:
            scheds = [s for _, s in self._schedulers.values()]
            self._schedulers.clear()
        for s in scheds:
            s.close()


@dataclass(frozen=True)
class Route:
    """Where the generations of the current context go: ``batching``'s schedulers, with a ``cancel`` event that
    takes this caller's rows out of the batch."""

    batching: Batching
    cancel: threading.Event | None = None


_ROUTE: ContextVar[Route | None] = ContextVar("pmem_batching_route", default=None)


@contextmanager
def batched(batching: Batching, cancel: threading.Event | None = None) -> Iterator[None]:
    """Send the generations of this context (thread or task) to ``batching``'s schedulers for the block.

    >>> with batched(Batching(max_batch=2)):
    ...     current_route() is not None
    True
    """
    token = _ROUTE.set(Route(batching, cancel))
    try:
        yield
    finally:
        _ROUTE.reset(token)


def current_route() -> Route | None:
    """The :class:`Route` set by the innermost :func:`batched` of this context, if any."""
    return _ROUTE.get()
