"""Continuous batching: one thread owns the model, and concurrent generations join and leave one running batch.

Every document and skill has its own adapter, so a memory server answers many adapters at once. One decode
step of a small model on a CPU costs nearly the same for 8 rows as for 1 (it reads every weight once either
way), and per-row LoRA (:func:`memory.lora.apply.bind_lora` with a list) lets rows with different adapters
share that step. :class:`BatchScheduler` runs the loop:

1. :meth:`BatchScheduler.submit` queues a :class:`Request`. Between decode steps the scheduler thread admits
   queued requests while the batch has fewer than ``max_batch`` rows and the tokens in flight (each row's
   prompt plus its ``max_new_tokens``) stay within ``max_tokens``; a request alone is always admitted.
2. The admitted requests are prefilled together (left padded) and their KV cache joins the running batch's:
   both are left padded to one width, each row keeps its own position ids, and the attention mask hides the
   padding, so every row computes what it would alone. A prompt that starts like an earlier one of the same
   adapter (the chat template, the system prompt, the instruction before the passages) is prefilled from the
   end of that kept prefix on: its keys and values are copied into the pass's cache (:class:`_Prefixes`).
3. Each step picks every row's next token (greedy, or sampled with the row's own seeded generator), streams
   the new text, and decodes all rows in one forward pass, each row with its own adapters.
4. A row that ends (end of turn, a stop string, ``max_new_tokens``) or whose ``cancel`` event is set leaves at
   once: the cache keeps the other rows (index select), and leading columns that are padding in every
   remaining row are trimmed.

Exactness: greedy texts equal one-at-a-time generation row by row (tests/test_batching.py, float32 and the
bfloat16 default). Padding changes only floating-point rounding (an attention sum over more, masked,
columns; a matrix product over more rows), so a near tie between two tokens could in principle flip.

Other model work (training an adapter, hidden states, probes) needs no lock against a running batch: the
batch's state (KV cache, mask, positions) belongs to the scheduler thread, the base weights are frozen and
adapters are chosen per context (:mod:`memory.lora.apply`), so a forward pass in another thread cannot change
what a batch row computes. For the CPU's sake the generation queue of :mod:`memory.aio` still runs such work
alone: it starts when no batched call is in flight, and batched calls that arrive after it wait for it.

What batching buys on a 2-core CPU (SmolLM2-135M, bfloat16, one torch thread, retrieval prompts of ~90 tokens,
16 new tokens; ``python -m bench.server_profile``, which reads :class:`SchedulerStats`, on a machine shared with
another job, load 3-4): in the steady state of 8 clients the scheduler thread is busy 98% of the time, so its
time per query bounds throughput: ~560 ms of wall time (prefill ~110, decode ~430, the rest ~25) against
~1,800 ms for one client alone (prefill ~200, 16 decode steps of ~110 ms). A decode step of ~7.3 rows costs
~1.2x the one-row step on a quiet CPU (55 / 65 ms) but ~1.9x under that load (110 / 210 ms: eight rows
multiply the arithmetic, which suffers most from a neighbour), and that ratio is what bounds the gain. Two
fixes came from the profile. The prefill asked transformers for the last position's logits with
``logits_to_keep=1``, which ran the 49k-token vocabulary head on a strided slice, a slow bfloat16 CPU path:
~215 ms per row, 57% of the scheduler's time at 8 clients; an index tensor (:func:`keep_last`) takes ~12 ms
and gives the same logits. And a kept prompt prefix (:class:`_Prefixes`) saves 25 of ~90 prompt tokens per
query. ``OMP_NUM_THREADS=1 pmem bench server --json`` then gave 0.72 / 2.82 / 2.97 queries/s at 1 / 8 / 32
clients (p95 1.5 / 3.4 / 11.5 s, no error, no ``busy``; 3.92x at 8 clients, 4.06x in a run just before), and
0.74 / 0.77 / 0.75 with ``PMEM_SERVER_MAX_BATCH=1``, the one-at-a-time path. Rows decode in step, so a batch
lasts as long as its longest answer: 8 parametric queries on 8 adapters answered up to 9 tokens against 3 for
8 identical ones on one adapter (1.44 s against 0.84 s), while a decode step of rows on 8 adapters cost about
what one of rows on one adapter did (82-102 ms against 85-96 ms in-process; LoRA factors in float32 on a
bfloat16 CPU model: :func:`memory.lora.apply.bind_lora`).

Latency of one query through ``pmem serve`` against the same call in-process (10 interleaved pairs, one torch
thread, load average ~3 from other jobs): 0.97 s against 0.92 s with ``max_batch=1``, 1.12-1.26 s against
1.00-1.10 s with batching; the server's own share (HTTP, key check, JSON, queue, thread hop) is ~10 ms, the
rest is generation, equally fast in a worker thread and through the scheduler in one process (0.70 s both).
The 5.0 s against 1.3 s of the README came from torch's default of 2 OpenMP threads per process on a shared
2-core machine: every parallel region waits for both threads to get a core, and at load ~3.5 the same query
took 9-22 s with 2 threads and 1.0 s with 1 (``pmem serve --threads 1``, ``PMEM_THREADS``).

Calls reach the scheduler through :meth:`memory.models.BaseModel.generate` inside :func:`batched` (the
generation queue sets it around the server's queries), so the query code is the same in both paths.

>>> from memory.models.batching import Batching, batched
>>> pool = Batching(max_batch=8)
>>> with batched(pool):                                          # doctest: +SKIP
...     base.generate(["Capital of France?"], max_new_tokens=8)  # decoded with any concurrent callers
"""

from __future__ import annotations

import atexit
import functools
import logging
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from memory.batch_route import Batching, Route, batched, current_route
from memory.errors import PMemError, ValidationError
from memory.lora.adapter import LoraAdapter, concat
from memory.lora.apply import LoraBinding, bind_lora
from memory.models.base import Generation, _find_stop, _pick, _stream_safe, keep_last, token_logprobs

__all__ = [
    "BatchScheduler",
    "Batching",
    "GenerationCancelled",
    "Request",
    "Route",
    "SchedulerStats",
    "batched",
    "current_route",
]

log = logging.getLogger(__name__)

_KV = list[tuple[Tensor, Tensor]]  # per layer (keys, values), each [rows, kv heads, columns, head dim]


class GenerationCancelled(PMemError):
    """The caller of a generation gave up (a timeout, a client that left); its row left the batch."""


@dataclass(eq=False)
class Request:
    """One generation for the scheduler: a prompt's token ids and how to continue it.

    ``adapters`` are this row's adapters, applied together (a knowledge adapter and a skill adapter: their
    ranks are concatenated, as :meth:`memory.services.adapters.AdapterRegistry.compose` does); empty for the
    base model. ``on_text`` receives the text piece by piece (on the scheduler thread: keep it cheap), and a
    set ``cancel`` event takes the row out of the batch at the next step. With ``ignore_eos`` the row goes on past
    the end-of-turn token (:meth:`BaseModel.generate`).
    """

    prompt_ids: list[int]
    adapters: tuple[LoraAdapter, ...] = ()
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    on_text: Callable[[str], None] | None = None
    cancel: threading.Event | None = None
    ignore_eos: bool = False
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    _result: Generation | None = field(default=None, repr=False)
    _error: BaseException | None = field(default=None, repr=False)

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    @property
    def tokens(self) -> int:
        """Tokens this request may hold in the cache: its prompt and every token it may generate."""
        return len(self.prompt_ids) + self.max_new_tokens

    def result(self, timeout: float | None = None) -> Generation:
        """Wait for the generation; raises what failed it (:class:`GenerationCancelled` when cancelled)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"no generation within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]

    def _finish(self, result: Generation | None = None, error: BaseException | None = None) -> None:
        self._result, self._error = result, error
        self._done.set()


class _Row:
    """A request in the running batch: its tokens, text and streaming state."""

    def __init__(self, req: Request, adapter: LoraAdapter | None, device: torch.device) -> None:
        self.req, self.adapter = req, adapter
        self.out_ids: list[int] = []
        self.logprobs: list[float] = []
        self.text = ""
        self.streamed = 0
        self.reason = "length"
        self.done = False
        self.prefill_s = 0.0
        self.t_decode = 0.0
        self.gen: torch.Generator | None = None
        if req.temperature > 0:
            self.gen = torch.Generator(device=device)
            seed = req.seed if req.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
            self.gen.manual_seed(seed)

    def take(self, token: int, logprob: float, is_eos: bool, decode: Callable[[list[int]], str]) -> None:
        """Add one picked token (the same rules as :meth:`BaseModel.generate`), streaming what is safe to show."""
        req = self.req
        if is_eos and not req.ignore_eos:
            self.done, self.reason = True, "eos"
        else:
            self.out_ids.append(token)
            self.logprobs.append(logprob)
            if req.stop or req.on_text is not None:
                self.text = decode(self.out_ids)
                cut = _find_stop(self.text, req.stop)
                if cut is not None:
                    self.text, self.done, self.reason = self.text[:cut], True, "stop"
            if not self.done and len(self.out_ids) >= req.max_new_tokens:
                self.done = True  # reason stays "length"
        if req.on_text is not None and not self.done:
            safe = _stream_safe(self.text, req.stop)
            if len(safe) > self.streamed:
                req.on_text(safe[self.streamed :])
                self.streamed = len(safe)

    def finish(self, decode: Callable[[list[int]], str]) -> None:
        req = self.req
        text = self.text if self.reason == "stop" else decode(self.out_ids)
        if req.on_text is not None and len(text) > self.streamed:
            req.on_text(text[self.streamed :])
        req._finish(
            Generation(
                text=text,
                token_ids=self.out_ids,
                prompt_tokens=len(req.prompt_ids),
                completion_tokens=len(self.out_ids),
                finish_reason=self.reason,
                prefill_s=self.prefill_s,
                decode_s=time.perf_counter() - self.t_decode,
                token_logprobs=self.logprobs,
            )
        )


def _pad_left(t: Tensor, width: int, dim: int) -> Tensor:
    """``t`` with zeros prepended along ``dim`` up to ``width``."""
    missing = width - t.shape[dim]
    if not missing:
        return t
    pads = [0, 0] * (t.dim() - 1 - dim % t.dim()) + [missing, 0]
    return F.pad(t, pads)


class _Batch:
    """The running batch: its rows, their KV cache, attention mask ``[B, W]``, last positions ``[B, 1]`` and the
    logits ``[B, vocab]`` each row picks its next token from."""

    def __init__(self) -> None:
        self.rows: list[_Row] = []
        self.cache: Any = None
        self.mask: Tensor | None = None
        self.pos: Tensor | None = None
        self.logits: Tensor | None = None

    @property
    def width(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[1])

    def join(self, rows: list[_Row], cache: Any, mask: Tensor, pos: Tensor, logits: Tensor) -> None:
        """Add prefilled rows: both caches are left padded to the wider one and stacked on the batch dimension."""
        if not self.rows:
            self.rows, self.cache, self.mask, self.pos, self.logits = rows, cache, mask, pos, logits
            return
        width = max(self.width, int(mask.shape[1]))
        for old, new in zip(_layers(self.cache), _layers(cache), strict=True):
            old.keys = torch.cat([_pad_left(old.keys, width, -2), _pad_left(new.keys, width, -2)])
            old.values = torch.cat([_pad_left(old.values, width, -2), _pad_left(new.values, width, -2)])
        self.mask = torch.cat([_pad_left(self.mask, width, 1), _pad_left(mask, width, 1)])  # type: ignore[arg-type]
        self.pos = torch.cat([self.pos, pos])  # type: ignore[list-item]
        self.logits = torch.cat([self.logits, logits])  # type: ignore[list-item]
        self.rows = self.rows + rows

    def keep(self, idx: list[int]) -> None:
        """Keep only rows ``idx``, and drop leading columns that are padding in all of them."""
        if not idx:
            self.__init__()  # type: ignore[misc]
            return
        if len(idx) == len(self.rows):
            return
        sel = torch.tensor(idx, device=self.mask.device)  # type: ignore[union-attr]
        mask = self.mask.index_select(0, sel)  # type: ignore[union-attr]
        first = int(mask.any(0).long().argmax())  # the first column some row attends to
        self.mask = mask[:, first:]
        for layer in _layers(self.cache):
            layer.keys = layer.keys.index_select(0, sel)[:, :, first:]
            layer.values = layer.values.index_select(0, sel)[:, :, first:]
        self.pos = self.pos.index_select(0, sel)  # type: ignore[union-attr]
        self.logits = self.logits.index_select(0, sel)  # type: ignore[union-attr]
        self.rows = [self.rows[i] for i in idx]


def _copy_kv(cache: Any, row: int, cols: list[int], n: int) -> _KV:
    """Each layer's keys and values of one row at the first ``n`` of cache columns ``cols``, copied:
    ``[1, heads, n, dim]``."""
    sel = torch.tensor(cols[:n], device=_layers(cache)[0].keys.device)
    return [
        (layer.keys[row : row + 1].index_select(-2, sel), layer.values[row : row + 1].index_select(-2, sel))
        for layer in _layers(cache)
    ]


def _layers(cache: Any) -> list[Any]:
    layers = getattr(cache, "layers", None)
    if layers is None or any(getattr(layer, "keys", None) is None for layer in layers):
        raise PMemError(
            f"continuous batching needs a transformers cache with per-layer keys/values tensors, got "
            f"{type(cache).__name__}; serve with max_batch=1"
        )
    return list(layers)


@dataclass
class SchedulerStats:
    """Where a scheduler's time went since it started (wall seconds on its thread): prefills, decode forwards,
    and everything it did (``busy_s``: these plus picking tokens, streaming, joining and trimming the cache).
    The thread idles (waits for requests) for the rest. ``bench/server_profile.py`` reads them."""

    busy_s: float = 0.0
    prefills: int = 0  # prefill forwards
    prefill_rows: int = 0  # prompts they prefilled
    prefill_tokens: int = 0  # prompt tokens they fed (a kept prefix's are not fed)
    prefill_s: float = 0.0
    decode_s: float = 0.0  # decode forwards (steps: BatchScheduler.steps)
    decode_rows: int = 0  # rows they decoded, summed over steps

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in vars(self).items()}


class _Prefix:
    """The KV cache of a prompt prefix under one adapter: per layer ``(keys, values)``, ``[1, heads, len, dim]``."""

    def __init__(self, ids: tuple[int, ...], adapter: LoraAdapter | None, kv: _KV) -> None:
        self.ids, self.adapter, self.kv = ids, adapter, kv  # the adapter is held: its id stays its own


class _Prefixes:
    """Prompt prefixes whose KV cache a prefill reuses: it computes only the rest of each prompt.

    Prompts share a start: the chat template, the system prompt, the instruction before the passages (25 of
    the ~90 tokens of a retrieval query). After each prefill a prompt's common prefix with the previous prompt
    of the same adapter (:attr:`min_tokens` or longer) is kept, its keys and values copied out of the prefill's
    cache; a later prompt that starts with a kept prefix (the longest one) is prefilled from the token after it.
    The keys depend on the adapter (LoRA changes ``k_proj``/``v_proj`` and every layer's input), so a prefix
    is kept per adapter identity. Least recently used prefixes go first once they hold :attr:`max_tokens` or
    number more than :attr:`max_kept` (each holds its adapter).
    """

    def __init__(self, max_tokens: int, min_tokens: int = 16, max_kept: int = 32) -> None:
        self.max_tokens, self.min_tokens, self.max_kept = max_tokens, min_tokens, max_kept
        self.hits = 0  # prompts prefilled from a kept prefix
        self.saved = 0  # prompt tokens not prefilled thanks to them
        self._kept: OrderedDict[tuple[int, tuple[int, ...]], _Prefix] = OrderedDict()
        self._tokens = 0
        # the previous prompt of each adapter id; only a candidate length: what is kept comes from the prefill
        # that just ran, under its own (held) adapter, so a reused id cannot mix two adapters' keys
        self._last: OrderedDict[int, tuple[int, ...]] = OrderedDict()

    def find(self, ids: list[int], adapter: LoraAdapter | None) -> _Prefix | None:
        """The longest kept prefix of ``ids`` (shorter than ``ids``: the last token is always prefilled)."""
        key, best = _adapter_key(adapter), None
        for (k, pre_ids), pre in self._kept.items():
            n = len(pre_ids)
            if k == key and n < len(ids) and (best is None or n > len(best.ids)) and tuple(ids[:n]) == pre_ids:
                best = pre
        if best is not None:
            self._kept.move_to_end((key, best.ids))
            self.hits += 1
            self.saved += len(best.ids)
        return best

    def learn(
        self, ids: list[int], adapter: LoraAdapter | None, kv: Callable[[int], list[tuple[Tensor, Tensor]]]
    ) -> None:
        """Keep the prefix ``ids`` shares with the previous prompt of ``adapter`` if it is new and long enough;
        ``kv(n)`` copies the keys and values of the first ``n`` tokens out of the prefill that just ran."""
        key, now = _adapter_key(adapter), tuple(ids)
        prev = self._last.get(key)
        self._last[key] = now
        self._last.move_to_end(key)
        while len(self._last) > 64:
            self._last.popitem(last=False)
        if prev is None:
            return
        n = 0
        for a, b in zip(prev, now, strict=False):
            if a != b:
                break
            n += 1
        n = min(n, len(now) - 1)
        if n < self.min_tokens or n > self.max_tokens or (key, now[:n]) in self._kept:
            return
        self._kept[(key, now[:n])] = _Prefix(now[:n], adapter, kv(n))
        self._tokens += n
        while self._tokens > self.max_tokens or len(self._kept) > self.max_kept:
            _, old = self._kept.popitem(last=False)
            self._tokens -= len(old.ids)


def _adapter_key(adapter: LoraAdapter | None) -> int:
    return 0 if adapter is None else id(adapter)


class BatchScheduler:
    """The thread that owns a base model's generations: requests join and leave one running batch.

    Args:
        base: the :class:`~memory.models.BaseModel`.
        max_batch: rows decoded together at most.
        max_tokens: prompt + ``max_new_tokens`` tokens of the rows in flight at most (bounds the KV cache); a
            request that alone needs more still runs, alone.
        prefix_cache: reuse the KV cache of prompt prefixes (:class:`_Prefixes`, up to ``max_tokens // 4``
            tokens of them); off, every prompt is prefilled whole. ``None`` (the default): on for a float32
            model only. In bfloat16 a prompt prefilled from a kept prefix rounds differently from the same
            prompt prefilled whole, and a near tie can flip: the same question asked twice got two greedy
            answers (tests/test_server.py::test_stream_query_sends_tokens_then_the_answer).

    >>> sched = BatchScheduler(base, max_batch=8)                  # doctest: +SKIP
    >>> sched.submit(Request(base.chat_ids("Hi"), max_new_tokens=8)).result().text   # doctest: +SKIP
    'Hello! How can I help you today?'
    """

    def __init__(
        self, base: Any, *, max_batch: int = 8, max_tokens: int = 16384, prefix_cache: bool | None = None
    ) -> None:
        if max_batch < 1 or max_tokens < 1:
            raise ValidationError(f"need max_batch >= 1 and max_tokens >= 1, got {max_batch!r}, {max_tokens!r}")
        self.base, self.max_batch, self.max_tokens = base, max_batch, max_tokens
        self.steps = 0  # decode forwards run
        self.max_rows = 0  # the most rows one step decoded together
        self.cancelled = 0  # rows that left the batch because their caller gave up
        self.stats = SchedulerStats()
        self._eos = torch.tensor(sorted(base.eos_token_ids) or [-1], device=base.device)
        self._cv = threading.Condition()
        self._queue: deque[Request] = deque()
        self._closed = False
        self._combined: OrderedDict[tuple[int, ...], tuple[tuple[LoraAdapter, ...], LoraAdapter]] = OrderedDict()
        # a key of one id: every row has that adapter (one shared binding, whatever the number of rows)
        self._bindings: OrderedDict[tuple[int, ...], tuple[list[LoraAdapter | None], LoraBinding]] = OrderedDict()
        if prefix_cache is None:
            prefix_cache = base.dtype == torch.float32
        self.prefixes = _Prefixes(max(max_tokens // 4, 1)) if prefix_cache else None
        self._thread = threading.Thread(target=self._loop, name="pmem-batch", daemon=True)
        self._thread.start()
        _RUNNING.add(self)

    def __repr__(self) -> str:
        return f"BatchScheduler(max_batch={self.max_batch}, max_tokens={self.max_tokens}, queued={len(self._queue)})"

    def owns_current_thread(self) -> bool:
        """Whether the caller is the scheduler thread (a generation from there runs directly, not queued)."""
        return threading.current_thread() is self._thread

    def submit(self, req: Request) -> Request:
        """Queue ``req``; wait for it with :meth:`Request.result`."""
        if req.max_new_tokens < 1:
            raise ValidationError(f"max_new_tokens must be >= 1, got {req.max_new_tokens!r}")
        if req.temperature < 0 or not 0 < req.top_p <= 1:
            raise ValidationError(f"need temperature >= 0 and 0 < top_p <= 1, got {req.temperature!r}, {req.top_p!r}")
        if not req.prompt_ids:
            raise ValidationError("a prompt has no tokens")
        for ad in req.adapters:
            ad.validate_for(self.base)
        with self._cv:
            if self._closed:
                raise PMemError("the batch scheduler is closed")
            self._queue.append(req)
            self._cv.notify()
        return req

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        adapters: LoraAdapter | Sequence[LoraAdapter | None] | None = None,
        seed: int | None = None,
        on_text: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
        ignore_eos: bool = False,
    ) -> list[Generation]:
        """:meth:`BaseModel.generate`'s contract, each prompt a request of its own (row ``i`` samples with
        ``seed + i``); ``on_text`` streams the first row. Blocks until every row is done."""
        if adapters is None or isinstance(adapters, LoraAdapter):
            per_row: list[LoraAdapter | None] = [adapters] * len(prompt_ids)
        else:
            per_row = list(adapters)
            if len(per_row) != len(prompt_ids):
                raise ValidationError(f"got {len(per_row)} per-row adapters for {len(prompt_ids)} prompts")
        stops = tuple(s for s in (stop or []) if s)
        reqs = [
            Request(
                [int(t) for t in ids],
                (ad,) if ad is not None else (),
                max_new_tokens,
                stops,
                temperature,
                top_p,
                None if seed is None else seed + i,
                on_text if i == 0 else None,
                cancel,
                ignore_eos,
            )
            for i, (ids, ad) in enumerate(zip(prompt_ids, per_row, strict=True))
        ]
        for r in reqs:
            self.submit(r)
        return [r.result() for r in reqs]

    def close(self, timeout: float | None = 10.0) -> None:
        """Finish the rows in flight, refuse queued and new requests, and stop the thread."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout)

    # ----------------------------------------------------------------- the scheduler thread
    def _loop(self) -> None:
        batch = _Batch()
        while True:
            with self._cv:
                while not self._queue and not batch.rows and not self._closed:
                    self._cv.wait()
                if self._closed and not batch.rows:
                    refused = list(self._queue)
                    self._queue.clear()
                    break
                new, dropped = self._admit(batch)
            for req in dropped:
                req._finish(error=GenerationCancelled("the generation was cancelled before it started"))
            try:
                t0 = time.perf_counter()
                with torch.inference_mode():
                    self._step(batch, new)
                self.stats.busy_s += time.perf_counter() - t0
            except Exception as e:  # a failed step fails its rows, not the scheduler
                log.exception("a batch step failed; its %d row(s) fail", len(batch.rows) + len(new))
                for row in batch.rows:
                    if not row.req._done.is_set():
                        row.req._finish(error=e)
                for row in new:
                    if not row.req._done.is_set():
                        row.req._finish(error=e)
                batch = _Batch()
        for req in refused:
            req._finish(error=PMemError("the batch scheduler was closed before this generation started"))

    def _admit(self, batch: _Batch) -> tuple[list[_Row], list[Request]]:
        """Queued requests that fit now (called under the lock), and cancelled ones to drop."""
        new: list[_Row] = []
        dropped: list[Request] = []
        tokens = sum(r.req.tokens for r in batch.rows)
        while self._queue and len(batch.rows) + len(new) < self.max_batch:
            req = self._queue[0]
            if req.cancelled:
                dropped.append(self._queue.popleft())
                continue
            if (batch.rows or new) and tokens + req.tokens > self.max_tokens:
                break
            self._queue.popleft()
            tokens += req.tokens
            new.append(_Row(req, self._combine(req.adapters), self.base.device))
        return new, dropped

    def _step(self, batch: _Batch, new: list[_Row]) -> None:
        base = self.base
        if new:
            self._prefill(batch, new)
        if not batch.rows:
            return
        logits = batch.logits.float()  # type: ignore[union-attr]
        toks = logits.argmax(-1)
        for i, row in enumerate(batch.rows):
            if row.gen is not None:
                toks[i] = _pick(logits[i : i + 1], row.req.temperature, row.req.top_p, row.gen)[0]
        lps = token_logprobs(logits, toks)
        is_eos = torch.isin(toks, self._eos).tolist()
        tok_list = toks.tolist()
        keep: list[int] = []
        for i, row in enumerate(batch.rows):
            if row.req.cancelled:
                row.req._finish(error=GenerationCancelled("the generation was cancelled"))
                self.cancelled += 1
                continue
            row.take(tok_list[i], lps[i], is_eos[i], base.decode)
            if row.done:
                row.finish(base.decode)
            else:
                keep.append(i)
        batch.keep(keep)
        if not batch.rows:
            return
        t0 = time.perf_counter()
        feed = torch.tensor([tok_list[i] for i in keep], device=base.device)[:, None]
        mask, pos = batch.mask, batch.pos
        assert mask is not None and pos is not None  # the batch has rows
        batch.mask = mask = torch.cat([mask, mask.new_ones(len(keep), 1)], dim=1)
        batch.pos = pos = pos + 1
        with self._binding([r.adapter for r in batch.rows]).active():
            out = base.model(
                input_ids=feed,
                attention_mask=mask,
                position_ids=pos,
                use_cache=True,
                **{base._cache_kw: batch.cache},
            )
        batch.cache = getattr(out, base._cache_kw)
        batch.logits = out.logits[:, -1, :]
        log.debug("decode %d row(s), width %d: %.0f ms", len(keep), mask.shape[1], (time.perf_counter() - t0) * 1e3)
        self.steps += 1
        self.max_rows = max(self.max_rows, len(keep))
        self.stats.decode_s += time.perf_counter() - t0
        self.stats.decode_rows += len(keep)

    def _prefill(self, batch: _Batch, new: list[_Row]) -> None:
        """Prefill the new rows in one forward pass and join them to the batch.

        A row whose prompt starts with a kept prefix (:class:`_Prefixes`) feeds only the rest of its prompt: the
        pass starts from a cache holding each row's prefix keys and values, left padded to the longest prefix
        (zeros and a masked column for a row without one), and the rests are left padded after it, so a row's
        cache reads ``[pad][prefix][pad][rest]`` with positions counting only its own tokens.
        """
        base = self.base
        prompts = [r.req.prompt_ids for r in new]
        pres = [self.prefixes.find(p, r.adapter) for p, r in zip(prompts, new, strict=True)] if self.prefixes else []
        lens = [len(pr.ids) if pr is not None else 0 for pr in pres] or [0] * len(new)
        width = max(lens)
        ids, mask = base.left_pad([p[n:] for p, n in zip(prompts, lens, strict=True)])
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        kw: dict[str, Any] = {}
        if width:
            known = torch.zeros(len(new), width, dtype=mask.dtype, device=mask.device)
            for i, n in enumerate(lens):
                known[i, width - n :] = 1
            mask = torch.cat([known, mask], dim=1)
            pos = pos + torch.tensor(lens, device=pos.device)[:, None]
            kw[base._cache_kw] = self._prefix_cache(next(p for p in pres if p is not None), pres, width)
        t0 = time.perf_counter()
        with self._binding([r.adapter for r in new]).active():
            out = base.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=pos,
                use_cache=True,
                logits_to_keep=keep_last(ids),
                **kw,
            )
        t1 = time.perf_counter()
        log.debug(
            "prefill %d row(s) of %d tokens (%d from kept prefixes) beside %d: %.0f ms",
            len(new),
            ids.shape[1],
            width,
            len(batch.rows),
            (t1 - t0) * 1e3,
        )
        for r in new:
            r.prefill_s, r.t_decode = t1 - t0, t1
        st = self.stats
        st.prefills, st.prefill_rows, st.prefill_s = st.prefills + 1, st.prefill_rows + len(new), st.prefill_s + t1 - t0
        st.prefill_tokens += sum(len(p) - n for p, n in zip(prompts, lens, strict=True))
        cache = getattr(out, base._cache_kw)
        if self.prefixes is not None:
            total = int(mask.shape[1])
            for i, (p, r) in enumerate(zip(prompts, new, strict=True)):
                # cache column of each of this row's prompt tokens: its prefix, then its rest
                rest = len(p) - lens[i]
                cols = list(range(width - lens[i], width)) + list(range(total - rest, total))
                self.prefixes.learn(p, r.adapter, functools.partial(_copy_kv, cache, i, cols))
        batch.join(new, cache, mask, pos[:, -1:], out.logits[:, -1, :])

    def _prefix_cache(self, like: _Prefix, pres: list[_Prefix | None], width: int) -> Any:
        """A transformers cache holding each row's prefix keys and values, left padded to ``width``."""
        from memory.models.loader import HF_LOAD_LOCK

        with HF_LOAD_LOCK:  # transformers resolves its names lazily, not thread-safely
            from transformers import DynamicCache

        data = []
        for layer, (k0, v0) in enumerate(like.kv):
            keys, values = [], []
            for pre in pres:
                if pre is None:
                    keys.append(k0.new_zeros(*k0.shape[:2], width, k0.shape[-1]))
                    values.append(v0.new_zeros(*v0.shape[:2], width, v0.shape[-1]))
                else:
                    k, v = pre.kv[layer]
                    keys.append(_pad_left(k, width, -2))
                    values.append(_pad_left(v, width, -2))
            data.append((torch.cat(keys), torch.cat(values)))
        return DynamicCache(data, config=self.base.model.config)

    def _combine(self, parts: tuple[LoraAdapter, ...]) -> LoraAdapter | None:
        """One adapter for a row's parts (rank concatenation), cached by the parts' identities."""
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        key = tuple(id(p) for p in parts)
        hit = self._combined.get(key)
        if hit is None:
            hit = self._combined[key] = (parts, concat(parts))  # the parts are held: their ids stay theirs
            while len(self._combined) > 64:
                self._combined.popitem(last=False)
        self._combined.move_to_end(key)
        return hit[1]

    def _binding(self, adapters: list[LoraAdapter | None]) -> LoraBinding:
        """The LoRA binding of these rows: one shared adapter (or none) when every row has the same, else one
        adapter per row; cached by the rows' adapter identities, since a batch keeps its rows for many steps."""
        first = adapters[0]
        same = all(a is first for a in adapters)
        key = (id(first) if first is not None else 0,) if same else tuple(id(a) if a else 0 for a in adapters)
        hit = self._bindings.get(key)
        if hit is None:
            hit = self._bindings[key] = (adapters, bind_lora(self.base, first if same else adapters))
            while len(self._bindings) > 16:
                self._bindings.popitem(last=False)
        self._bindings.move_to_end(key)
        return hit[1]


# Schedulers still running when the interpreter exits are stopped first: a daemon thread that has run torch
# ops, still alive at exit, aborts the process ("terminate called without an active exception").
_RUNNING: weakref.WeakSet[BatchScheduler] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for sched in list(_RUNNING):
        sched.close(timeout=5.0)
