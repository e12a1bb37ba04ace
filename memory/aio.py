"""``AsyncParametricMemory``: the facade's methods as coroutines that never block the event loop.

Each call runs the synchronous facade method in a worker thread (``asyncio.to_thread``). Model work
(``query``, ``internalize``, ``specialize``) also passes through a generation queue
(:class:`GenerationQueue`). By default (``max_batch=8``) up to 8 queries run at once and the model's
continuous-batching scheduler (:mod:`memory.models.batching`) decodes their answers together, one row per
query with its own adapters; internalization and other model work runs alone. With ``max_batch=1``, at
most ``max_concurrent`` calls run on the model at once (one by default), one after the other. Either way at
most ``max_waiting`` calls wait for their turn; one more is refused at once with :class:`BusyError` instead
of piling up until memory runs out. Work already accepted (a background job answered 202) is never refused:
it waits for its turn (:meth:`AsyncParametricMemory.run_job`).

>>> import asyncio
>>> from memory.aio import AsyncParametricMemory
>>> import tempfile
>>> amem = AsyncParametricMemory(home=tempfile.mkdtemp())  # doctest: +SKIP
>>> asyncio.run(amem.add("The vault code is 7342.", document_id="vault")).status  # doctest: +SKIP
'created'
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from memory.batch_route import Batching, Route, batched, current_route
from memory.errors import PMemError

T = TypeVar("T")


class BusyError(PMemError):
    """The generation queue is full: retry later (the server answers 503 with ``Retry-After``)."""


class GenerationQueue:
    """A bounded queue in front of the model: calls run when a slot is free, ``max_waiting`` wait (first come,
    first served), and one more is refused at once.

    Without ``batching``, ``max_concurrent`` calls run at once, each in a worker thread: the one-at-a-time path.
    With a :class:`Batching`, up to ``batching.max_batch`` calls of :meth:`run` (queries)
    run at once in the model's own threads, and their generations are decoded together by the model's
    scheduler; a caller that gives up (a timeout, a client that left) takes its row out of the batch. Other model
    work (:meth:`run_alone`, :meth:`run_accepted`: internalization) runs alone, when no call is in flight.
    """

    def __init__(self, max_concurrent: int = 1, max_waiting: int = 64, *, batching: Any = None) -> None:
        if max_concurrent < 1 or max_waiting < 0:
            raise ValueError(f"need max_concurrent >= 1 and max_waiting >= 0, got {max_concurrent}, {max_waiting}")
        self.max_concurrent, self.max_waiting, self.batching = max_concurrent, max_waiting, batching
        self._admitted = 0  # running + waiting
        self._running = 0
        self._alone = False  # the call running now runs alone
        self._waiters: deque[tuple[asyncio.Future[None], bool]] = deque()  # (granted when set, alone)
        self._pool: ThreadPoolExecutor | None = None  # batching: the model calls' own threads

    @property
    def depth(self) -> int:
        """Calls running or waiting now."""
        return self._admitted

    @property
    def slots(self) -> int:
        """Calls of :meth:`run` that may run at once."""
        return self.batching.max_batch if self.batching is not None else self.max_concurrent

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a thread when a slot is free; :class:`BusyError` when the queue is full."""
        return await self._run(fn, args, kwargs, alone=False, refuse=True)

    async def run_alone(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Like :meth:`run`, for model work that is not a generation (training an adapter): with batching it
        runs when no other call runs, and calls that come after it wait for it."""
        return await self._run(fn, args, kwargs, alone=True, refuse=True)

    async def run_accepted(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Like :meth:`run_alone`, but waits however full the queue is: for work already accepted (a job
        answered 202), which a refusal would lose. It counts in :attr:`depth`, so requests behind it see a busy
        model."""
        return await self._run(fn, args, kwargs, alone=True, refuse=False)

    def _can_start(self, alone: bool) -> bool:
        if alone:
            return self._running == 0
        return not self._alone and self._running < self.slots

    def _start(self, alone: bool) -> None:
        self._running += 1
        self._alone = alone

    def _release(self, alone: bool) -> None:
        self._running -= 1
        self._admitted -= 1
        if alone:
            self._alone = False
        self._grant()

    def _grant(self) -> None:
        """Start the waiters that can start now, in order."""
        while self._waiters:  # first come, first served: a waiter that cannot start holds back those behind it
            fut, next_alone = self._waiters[0]
            if fut.done():  # its caller gave up while waiting
                self._waiters.popleft()
                continue
            if not self._can_start(next_alone):
                break
            self._waiters.popleft()
            self._start(next_alone)
            fut.set_result(None)

    async def _acquire(self, alone: bool, refuse: bool) -> None:
        if not self._waiters and self._can_start(alone):
            self._start(alone)
            self._admitted += 1
            return
        if refuse and len(self._waiters) >= self.max_waiting:
            raise BusyError(f"the model is busy ({self._admitted} requests running or queued); retry in a few seconds")
        entry = (asyncio.get_running_loop().create_future(), alone)
        self._waiters.append(entry)
        self._admitted += 1
        try:
            await entry[0]
        except BaseException:
            if entry[0].done() and not entry[0].cancelled():  # granted, then cancelled: hand the slot on
                self._release(alone)
            else:
                self._admitted -= 1
                if entry in self._waiters:
                    self._waiters.remove(entry)
                self._grant()  # those behind it may start now
            raise

    async def _run(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any], *, alone: bool, refuse: bool
    ) -> T:
        alone = alone and self.batching is not None  # without batching every call takes one slot
        await self._acquire(alone, refuse)
        call: Callable[[], T] = functools.partial(fn, *args, **kwargs)
        cancel: threading.Event | None = None
        if self.batching is None:
            task: asyncio.Future[T] = asyncio.ensure_future(asyncio.to_thread(call))
        else:
            if not alone:
                cancel = threading.Event()
                call = functools.partial(_batched_call, self.batching, cancel, call)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="pmem-model")
            loop = asyncio.get_running_loop()
            task = loop.run_in_executor(self._pool, functools.partial(contextvars.copy_context().run, call))

        def release(t: asyncio.Future[Any]) -> None:  # when the thread ends, not when a caller gives up waiting
            if not t.cancelled():
                t.exception()  # retrieved: a caller that gave up leaves no "never retrieved" warning
            self._release(alone)

        task.add_done_callback(release)
        try:
            # A caller that times out or disconnects stops waiting, but the model call runs on and keeps its
            # slot until it ends; with batching its rows leave the batch at the next step (``cancel``).
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if cancel is not None:
                cancel.set()
            raise


def _batched_call(batching: Batching, cancel: threading.Event, call: Callable[[], T]) -> T:
    with batched(batching, cancel):
        return call()


class AsyncParametricMemory:
    """Async twin of :class:`~memory.api.ParametricMemory` by delegation (each method a thin wrapper).

    Args:
        memory: a ready facade; otherwise one is built from ``overrides`` (``home=``, ``database_url=``...).
        max_concurrent: model calls that run at once when ``max_batch`` is 1.
        max_waiting: model calls that may wait; more raise :class:`BusyError`.
        max_batch: queries decoded together (continuous batching); 1 runs them one at a time.
        max_batch_tokens: prompt + answer tokens of the queries in one batch at most (bounds its KV cache).
    """

    def __init__(
        self,
        memory: Any = None,
        *,
        max_concurrent: int = 1,
        max_waiting: int = 64,
        max_batch: int = 8,
        max_batch_tokens: int = 16384,
        **overrides: Any,
    ) -> None:
        if memory is None:
            from memory.api import ParametricMemory

            memory = ParametricMemory(**overrides)
        elif overrides:
            raise ValueError(f"pass either memory= or settings for a new one ({sorted(overrides)}), not both")
        if max_batch < 1:
            raise ValueError(f"need max_batch >= 1, got {max_batch}")
        self.memory = memory
        batching = Batching(max_batch=max_batch, max_tokens=max_batch_tokens) if max_batch > 1 else None
        self.generation = GenerationQueue(max_concurrent, max_waiting, batching=batching)

    def __repr__(self) -> str:
        g = self.generation
        batch = g.slots if g.batching is not None else 1
        return f"AsyncParametricMemory({self.memory!r}, max_concurrent={g.max_concurrent}, max_batch={batch})"

    @property
    def settings(self) -> Any:
        return self.memory.settings

    async def _io(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(functools.partial(getattr(self.memory, name), *args, **kwargs))

    async def _model(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return await self.generation.run(getattr(self.memory, name), *args, **kwargs)

    async def _alone(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return await self.generation.run_alone(getattr(self.memory, name), *args, **kwargs)

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
        from the iterator. A consumer that stops early stops the generation with batching (its row leaves the
        batch); with ``max_batch=1`` it runs to its end and keeps its slot in the queue until then.
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
            if not task.done():  # the consumer left early: stop waiting (batching: the row leaves the batch)
                task.add_done_callback(lambda t: t.cancelled() or t.exception())  # and leave nothing unretrieved
                task.cancel()

    async def internalize(self, document_id: str, **kwargs: Any) -> Any:
        """:meth:`ParametricMemory.internalize`: runs alone (:meth:`GenerationQueue.run_alone`)."""
        return await self._alone("internalize", document_id, **kwargs)

    async def specialize(self, description: str, **kwargs: Any) -> Any:
        return await self._alone("specialize", description, **kwargs)

    async def run_model(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Any other model-bound callable (an experiment's query), through the same queue; its generations join
        the batch."""
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


__all__ = [
    "AsyncParametricMemory",
    "Batching",
    "BusyError",
    "GenerationQueue",
    "Route",
    "batched",
    "current_route",
    "shared_async",
]
