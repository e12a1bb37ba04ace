"""``AsyncParametricMemory``: the facade's methods as coroutines that never block the event loop.

Each call runs the synchronous facade method in a worker thread (``asyncio.to_thread``). Model work
(``query``, ``internalize``, ``specialize``) also passes through a generation queue: at most
``max_concurrent`` calls run on the model at once (one by default: concurrent generations on one CPU
model only thrash the cores), and at most ``max_waiting`` wait for their turn; one more is refused at
once with :class:`BusyError` instead of piling up until memory runs out. Work already accepted (a background
job answered 202) is never refused: it waits for its turn (:meth:`AsyncParametricMemory.run_job`).

>>> import asyncio
>>> from memory.aio import AsyncParametricMemory
>>> import tempfile
>>> amem = AsyncParametricMemory(home=tempfile.mkdtemp())  # doctest: +SKIP
>>> asyncio.run(amem.add("The vault code is 7342.", document_id="vault")).status  # doctest: +SKIP
'created'
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from memory.errors import PMemError

T = TypeVar("T")


class BusyError(PMemError):
    """The generation queue is full: retry later (the server answers 503 with ``Retry-After``)."""


class GenerationQueue:
    """A bounded queue in front of the model: ``max_concurrent`` run, ``max_waiting`` wait, the rest are refused."""

    def __init__(self, max_concurrent: int = 1, max_waiting: int = 64) -> None:
        if max_concurrent < 1 or max_waiting < 0:
            raise ValueError(f"need max_concurrent >= 1 and max_waiting >= 0, got {max_concurrent}, {max_waiting}")
        self.max_concurrent, self.max_waiting = max_concurrent, max_waiting
        self._sem: asyncio.Semaphore | None = None  # created inside the running loop
        self._admitted = 0  # running + waiting

    @property
    def depth(self) -> int:
        """Calls running or waiting now."""
        return self._admitted

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a thread when a slot is free; :class:`BusyError` when the queue is full."""
        if self._admitted >= self.max_concurrent + self.max_waiting:
            raise BusyError(f"the model is busy ({self._admitted} requests running or queued); retry in a few seconds")
        return await self._run(fn, args, kwargs)

    async def run_accepted(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Like :meth:`run`, but waits however full the queue is: for work already accepted (a job answered
        202), which a refusal would lose. It counts in :attr:`depth`, so requests behind it see a busy model."""
        return await self._run(fn, args, kwargs)

    async def _run(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.max_concurrent)
        self._admitted += 1
        try:
            await self._sem.acquire()
        except BaseException:
            self._admitted -= 1
            raise
        task = asyncio.ensure_future(asyncio.to_thread(functools.partial(fn, *args, **kwargs)))

        def release(_: Any) -> None:  # when the thread ends, not when a caller gives up waiting for it
            self._sem.release()  # type: ignore[union-attr]
            self._admitted -= 1

        task.add_done_callback(release)
        # A caller that times out or disconnects stops waiting, but the model call runs on to its end and
        # keeps its slot until then: a cancelled request never lets a second generation in beside it.
        return await asyncio.shield(task)


class AsyncParametricMemory:
    """Async twin of :class:`~memory.api.ParametricMemory` by delegation (each method a thin wrapper).

    Args:
        memory: a ready facade; otherwise one is built from ``overrides`` (``home=``, ``database_url=``...).
        max_concurrent: model calls that run at once.
        max_waiting: model calls that may wait; more raise :class:`BusyError`.
    """

    def __init__(self, memory: Any = None, *, max_concurrent: int = 1, max_waiting: int = 64, **overrides: Any) -> None:
        if memory is None:
            from memory.api import ParametricMemory

            memory = ParametricMemory(**overrides)
        elif overrides:
            raise ValueError(f"pass either memory= or settings for a new one ({sorted(overrides)}), not both")
        self.memory = memory
        self.generation = GenerationQueue(max_concurrent, max_waiting)

    def __repr__(self) -> str:
        return f"AsyncParametricMemory({self.memory!r}, max_concurrent={self.generation.max_concurrent})"

    @property
    def settings(self) -> Any:
        return self.memory.settings

    async def _io(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(functools.partial(getattr(self.memory, name), *args, **kwargs))

    async def _model(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return await self.generation.run(getattr(self.memory, name), *args, **kwargs)

    # database and blob store: a thread each
    async def add(self, text: str | bytes, **kwargs: Any) -> Any:
        """:meth:`ParametricMemory.add`."""
        return await self._io("add", text, **kwargs)

    async def get(self, document_id: str, **kwargs: Any) -> Any:
        return await self._io("get", document_id, **kwargs)

    async def list(self, **kwargs: Any) -> Any:
        return await self._io("list", **kwargs)

    async def chunks(self, document_id: str, **kwargs: Any) -> Any:
        return await self._io("chunks", document_id, **kwargs)

    async def namespaces(self) -> Any:
        return await self._io("namespaces")

    async def history(self, document_id: str, **kwargs: Any) -> Any:
        return await self._io("history", document_id, **kwargs)

    async def diff(self, document_id: str, old: int, new: int | None = None, **kwargs: Any) -> Any:
        return await self._io("diff", document_id, old, new, **kwargs)

    async def rollback(self, document_id: str, version: int, **kwargs: Any) -> Any:
        return await self._io("rollback", document_id, version, **kwargs)

    async def delete(self, document_id: str, **kwargs: Any) -> Any:
        return await self._io("delete", document_id, **kwargs)

    async def feedback(self, query_id: int, score: float, **kwargs: Any) -> Any:
        return await self._io("feedback", query_id, score, **kwargs)

    async def add_source(self, spec: str, **kwargs: Any) -> Any:
        return await self._io("add_source", spec, **kwargs)

    async def sources(self, **kwargs: Any) -> Any:
        return await self._io("sources", **kwargs)

    async def adapters(self, **kwargs: Any) -> Any:
        return await self._io("adapters", **kwargs)

    async def search(self, query: str, **kwargs: Any) -> Any:
        """:meth:`ParametricMemory.search` (a query embedding: cheap, so not queued behind generations)."""
        return await self._io("search", query, **kwargs)

    # the model: through the generation queue
    async def query(self, question: str, **kwargs: Any) -> Any:
        """:meth:`ParametricMemory.query`, queued behind other model work."""
        return await self._model("query", question, **kwargs)

    async def stream_query(self, question: str, **kwargs: Any) -> AsyncIterator[Any]:
        """:meth:`ParametricMemory.query` streamed: yields the answer's pieces (``str``) as they are
        generated, then the :class:`~memory.types.QueryResult` (whose ``answer`` the pieces join to).

        Queued behind other model work like :meth:`query`; errors (:class:`BusyError` included) are raised
        from the iterator. A consumer that stops early does not stop the generation: it runs to its end and
        keeps its slot in the queue until then.
        """
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()

        def on_token(piece: str) -> None:  # called in the worker thread
            loop.call_soon_threadsafe(pieces.put_nowait, piece)

        task = asyncio.ensure_future(self.generation.run(self.memory.query, question, on_token=on_token, **kwargs))
        # Runs after every piece: they were scheduled on the loop before the worker thread returned.
        task.add_done_callback(lambda _: pieces.put_nowait(None))
        try:
            while (piece := await pieces.get()) is not None:
                yield piece
            yield task.result()
        finally:
            if not task.done():  # the consumer left early: collect the outcome so it is not reported unretrieved
                task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def internalize(self, document_id: str, **kwargs: Any) -> Any:
        return await self._model("internalize", document_id, **kwargs)

    async def specialize(self, description: str, **kwargs: Any) -> Any:
        return await self._model("specialize", description, **kwargs)

    async def run_model(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Any other model-bound callable (an experiment's query), through the same queue."""
        return await self.generation.run(fn, *args, **kwargs)

    async def run_job(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A model-bound background job already accepted: through the same queue, waiting for its turn
        instead of being refused when the queue is full (:meth:`GenerationQueue.run_accepted`)."""
        return await self.generation.run_accepted(fn, *args, **kwargs)

    async def run_io(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Any other blocking callable, in a worker thread."""
        return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))


_SHARED: weakref.WeakKeyDictionary[Any, weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncParametricMemory]]
_SHARED = weakref.WeakKeyDictionary()


def shared_async(memory: Any) -> AsyncParametricMemory:
    """The one :class:`AsyncParametricMemory` of ``memory`` on the running event loop, so every async caller of
    one facade (the LangChain and LlamaIndex classes) waits in the same generation queue. One per loop: the
    queue's semaphore belongs to a loop."""
    loop = asyncio.get_running_loop()
    per_loop = _SHARED.setdefault(memory, weakref.WeakKeyDictionary())
    amem = per_loop.get(loop)
    if amem is None:
        amem = per_loop[loop] = AsyncParametricMemory(memory)
    return amem


__all__ = ["AsyncParametricMemory", "BusyError", "GenerationQueue", "shared_async"]
