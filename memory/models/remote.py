"""Generation backends: the local :class:`~memory.models.base.BaseModel`, or a remote OpenAI-compatible engine that
serves LoRA adapters (vLLM with ``--enable-lora`` and runtime adapter loading, or ``pmem engine``).

Both answer :meth:`GenerationBackend.generate` with the same arguments and return
:class:`~memory.models.base.Generation` rows, so the query path does not know where it generates. With the
remote engine, retrieval, routing and the adapters stay in the memory server; per request it

1. exports the row's adapter (knowledge and skill already concatenated along rank into one, as the query
   path composes them: vLLM applies one LoRA per request) in PEFT format to ``adapter_dir``, named by its
   content hash (``pmem-<16 hex>``), once; beyond ``max_exports`` exported directories, the least recently
   used are unloaded from the engine and removed (a later request exports and loads them again);
2. loads it on the engine once (``POST /v1/load_lora_adapter``), and again when the engine has forgotten it
   (a restart, or an engine that unloaded it to make room: its completions answer 404 for the name);
3. sends the prompt as token ids rendered here with the model's chat template (``POST /v1/completions``,
   ``model=<adapter name>``), streams the tokens back and asks for their log-probabilities, which the router's
   confidence check reads (:attr:`Generation.token_logprobs`, as the local decode loop fills it).

The engine must serve the same base model (its ``/v1/models`` entry is checked when it states a
``pmem_fingerprint``, as ``pmem engine`` does; a vLLM deployment is trusted to match ``PMEM_BASE_MODEL``).

>>> engine = RemoteEngine("http://gpu:8000", base=load_base_model(), adapter_dir="/shared/a")  # doctest: +SKIP
>>> engine.generate(["What is 2 + 2?"], max_new_tokens=8)[0].text  # doctest: +SKIP
'2 + 2 = 4'
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import torch

from memory.config import Settings, redact
from memory.errors import ModelError, ValidationError
from memory.lora.adapter import LoraAdapter
from memory.models.base import Generation

__all__ = ["GenerationBackend", "RemoteEngine", "adapter_name"]

log = logging.getLogger(__name__)

Prompt = str | Sequence[int]

_EXPORT = re.compile(r"pmem-[0-9a-f]{16}")  # what adapter_name gives: only these directories are ever removed
_TOUCH_EVERY_S = 60.0  # a used export's directory mtime is refreshed at most this often
_STALE_TMP_S = 3600.0  # a half-written export (a process died mid-write) older than this is removed


class GenerationBackend(Protocol):
    """What generates answers: :class:`~memory.models.base.BaseModel` (here) or :class:`RemoteEngine` (elsewhere)."""

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        system: str | None = None,
        adapters: LoraAdapter | Sequence[LoraAdapter | None] | None = None,
        seed: int | None = None,
        on_text: Callable[[str], None] | None = None,
        ignore_eos: bool = False,
    ) -> list[Generation]: ...


def adapter_name(adapter: LoraAdapter) -> str:
    """The engine-side name of an adapter: ``pmem-`` and 16 hex of the sha256 of its tensors and base model.

    >>> import torch
    >>> ad = LoraAdapter({"l.0.q": (torch.ones(1, 2), torch.ones(2, 1))}, "t@0")
    >>> adapter_name(ad) == adapter_name(LoraAdapter(dict(ad.weights), "t@0")), adapter_name(ad)[:5]
    (True, 'pmem-')
    """
    h = hashlib.sha256(adapter.base_model.encode())
    for path in sorted(adapter.weights):
        a, b = adapter.weights[path]
        h.update(path.encode())
        for t in (a, b):
            t = t.detach().to("cpu").contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return f"pmem-{h.hexdigest()[:16]}"


class RemoteEngine:
    """Generation on a remote OpenAI-compatible engine with runtime LoRA loading (see the module docstring).

    Args:
        url: the engine's base URL (``http://host:8000``; a trailing ``/v1`` is accepted).
        base: the local base model, used for its tokenizer and chat template only (prompts go out as token ids
            and answers come back as token ids, decoded here), so the engine must serve the same model.
        api_key: sent as ``Authorization: Bearer`` (vLLM's ``--api-key``); never logged or shown.
        model: the engine's name of the base model; ``None``: the first base model of its ``/v1/models``.
        adapter_dir: where adapters are exported; the engine must be able to read it.
        engine_adapter_dir: the same directory as the engine sees it (default: ``adapter_dir``).
        timeout_s: per request.
        max_exports: exported adapter directories kept in ``adapter_dir``. After each new export, the least
            recently used beyond this many (by this process's last use, else the directory's mtime, which each use
            refreshes) are unloaded from the engine and removed; one a request is generating with stays.
    """

    def __init__(
        self,
        url: str,
        *,
        base: Any,
        adapter_dir: str | os.PathLike[str],
        api_key: str | None = None,
        model: str | None = None,
        engine_adapter_dir: str | None = None,
        timeout_s: float = 120.0,
        max_exports: int = 256,
    ) -> None:
        import httpx

        if max_exports < 1:
            raise ValidationError(f"max_exports must be >= 1, got {max_exports!r}")
        self.url = url.rstrip("/").removesuffix("/v1")
        self.base = base
        self.adapter_dir = Path(adapter_dir).expanduser()
        self.engine_adapter_dir = (engine_adapter_dir or str(self.adapter_dir)).rstrip("/")
        self._model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)
        self._loaded: set[str] = set()
        self._names: dict[int, str] = {}  # id(adapter) -> name, while the adapter lives
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self.max_exports = max_exports
        self._used: dict[str, float] = {}  # name -> when this process last asked for it (time.time())
        self._touched: dict[str, float] = {}  # name -> when its directory's mtime was last refreshed
        self._inflight: Counter[str] = Counter()  # name -> completions generating with it now
        self._pruning = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, base: Any) -> RemoteEngine:
        """The engine of ``PMEM_GENERATION_URL`` (and the other ``PMEM_GENERATION_*`` settings)."""
        if not settings.generation_url:
            raise ValidationError("no generation engine is configured (set PMEM_GENERATION_URL)")
        return cls(
            settings.generation_url,
            base=base,
            adapter_dir=settings.resolved_generation_adapter_dir,
            api_key=settings.generation_api_key,
            model=settings.generation_model,
            engine_adapter_dir=settings.generation_engine_adapter_dir,
            timeout_s=settings.generation_timeout_s,
            max_exports=settings.generation_max_exports,
        )

    def __repr__(self) -> str:
        return f"RemoteEngine({redact(self.url)!r}, model={self._model!r}, adapters={len(self._loaded)} loaded)"

    def close(self) -> None:
        self._http.close()

    # ----------------------------------------------------------------- the engine
    def _request(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            return self._http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise ModelError(
                f"the generation engine at {redact(self.url)} did not answer {method} {path} ({type(e).__name__})"
            ) from None

    def _fail(self, what: str, r: Any) -> ModelError:
        try:
            body = r.json()
            err = body.get("error", body) if isinstance(body, dict) else body
            message = err.get("message", err) if isinstance(err, dict) else err
        except ValueError:
            message = r.text
        return ModelError(f"the generation engine refused {what} ({r.status_code}: {str(message)[:300]})")

    @property
    def model(self) -> str:
        """The engine's name of the base model (asked once from ``/v1/models`` when not configured)."""
        if self._model is None:
            r = self._request("GET", "/v1/models")
            if r.status_code != 200:
                raise self._fail("GET /v1/models", r)
            entries = [m for m in r.json().get("data", []) if not m.get("parent")]
            if not entries:
                raise ModelError(f"the generation engine at {redact(self.url)} lists no base model")
            stated = entries[0].get("pmem_fingerprint")
            fingerprint = getattr(self.base, "fingerprint", None)
            if stated and fingerprint and stated != fingerprint:
                raise ModelError(
                    f"the generation engine serves {stated!r} but this server's base model is {fingerprint!r}; "
                    "point both at the same model (PMEM_BASE_MODEL)"
                )
            self._model = str(entries[0]["id"])
        return self._model

    # ----------------------------------------------------------------- adapters
    def ensure_adapter(self, adapter: LoraAdapter | None) -> str:
        """The ``model`` to ask for ``adapter``: exported and loaded on the engine once (the base model for None)."""
        if adapter is None:
            return self.model
        name = self._names.get(id(adapter))
        if name is None:
            name = adapter_name(adapter)
            key = id(adapter)
            self._names[key] = name
            weakref.finalize(adapter, self._names.pop, key, None)
        self._note_use(name)
        if name in self._loaded:
            return name
        with self._lock:
            gate = self._loading.setdefault(name, threading.Lock())
        with gate:  # one export and one load per name, however many requests need it at once
            if name not in self._loaded:
                exported = self._export(adapter, name)
                self._load(name)
                self._loaded.add(name)
                if exported:
                    self.prune(keep=name)
        return name

    def _note_use(self, name: str) -> None:
        now = time.time()
        self._used[name] = now
        if now - self._touched.get(name, 0.0) >= _TOUCH_EVERY_S:
            self._touched[name] = now
            # the mtime orders exports for other processes sharing the directory, and after a restart
            with contextlib.suppress(OSError):  # not exported yet
                os.utime(self.adapter_dir / name)

    def prune(self, keep: str | None = None) -> list[str]:
        """Remove the least recently used exported adapters beyond ``max_exports`` (never ``keep`` or one a
        completion is generating with), each unloaded from the engine first, so the engine never reads a
        directory that is gone; returns their names. Called after each new export.

        Several memory servers may share the directory and the engine: an adapter one of them still uses is
        unloaded too, and its next request answers 404, so that server exports and loads it again.
        """
        if not self._pruning.acquire(blocking=False):
            return []  # another thread is pruning now
        try:
            try:
                entries = list(self.adapter_dir.iterdir())
            except OSError:
                return []
            now = time.time()
            exports: list[tuple[float, Path]] = []
            for path in entries:
                try:
                    mtime = path.stat().st_mtime
                except OSError:
                    continue  # removed meanwhile
                if _EXPORT.fullmatch(path.name):
                    exports.append((max(self._used.get(path.name, 0.0), mtime), path))
                elif path.name.startswith(".pmem-") and ".tmp-" in path.name and now - mtime > _STALE_TMP_S:
                    shutil.rmtree(path, ignore_errors=True)
            exports.sort(reverse=True)  # most recently used first
            removed = []
            for _, path in exports[self.max_exports :]:
                name = path.name
                with self._lock:
                    busy = name == keep or self._inflight[name] > 0
                if busy:
                    continue
                try:
                    self.forget(name)
                except ModelError as e:  # the engine may still read it: keep it for a later prune
                    log.warning("kept exported adapter %s: %s", name, e)
                    continue
                shutil.rmtree(path, ignore_errors=True)
                self._used.pop(name, None)
                self._touched.pop(name, None)
                removed.append(name)
            if removed:
                log.info("removed %d exported adapter(s) beyond max_exports=%d", len(removed), self.max_exports)
            return removed
        finally:
            self._pruning.release()

    def _export(self, adapter: LoraAdapter, name: str) -> bool:
        """Write ``adapter`` as PEFT to ``adapter_dir/name``; False when it is there already."""
        from memory.lora.io import PEFT_CONFIG, save_peft

        target = self.adapter_dir / name
        if (target / PEFT_CONFIG).exists():
            return False
        self.adapter_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=self.adapter_dir))
        try:
            save_peft(adapter, tmp, self.model)
            os.rename(tmp, target)  # atomic: the engine never reads a half-written directory
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (target / PEFT_CONFIG).exists():
                raise
            return False  # another process exported it meanwhile
        self._touched[name] = time.time()
        log.info("exported adapter %s (rank %d) to %s", name, adapter.rank, target)
        return True

    def _load(self, name: str) -> None:
        body = {"lora_name": name, "lora_path": f"{self.engine_adapter_dir}/{name}"}
        r = self._request("POST", "/v1/load_lora_adapter", json=body)
        if r.status_code == 200 or (r.status_code == 400 and "already" in r.text):
            return
        raise self._fail(f"loading adapter {name}", r)

    def forget(self, name: str) -> None:
        """Unload an adapter from the engine (its export stays on disk)."""
        self._loaded.discard(name)
        r = self._request("POST", "/v1/unload_lora_adapter", json={"lora_name": name})
        if r.status_code not in (200, 404):
            raise self._fail(f"unloading adapter {name}", r)

    # ----------------------------------------------------------------- generation
    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        system: str | None = None,
        adapters: LoraAdapter | Sequence[LoraAdapter | None] | None = None,
        seed: int | None = None,
        on_text: Callable[[str], None] | None = None,
        ignore_eos: bool = False,
    ) -> list[Generation]:
        """As :meth:`memory.models.base.BaseModel.generate`, on the engine: one request per row, sent together
        (the engine batches them); ``on_text`` streams the first row."""
        if max_new_tokens < 1:
            raise ValidationError(f"max_new_tokens must be >= 1, got {max_new_tokens!r}")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValidationError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature!r}, {top_p!r}")
        batch = _as_batch(prompts)
        if adapters is None or isinstance(adapters, LoraAdapter):
            per_row: list[LoraAdapter | None] = [adapters] * len(batch)
        else:
            per_row = list(adapters)
            if len(per_row) != len(batch):
                raise ValidationError(f"got {len(per_row)} per-row adapters for {len(batch)} prompts")
        stops = [s for s in (stop or []) if s]
        ids = [self.base.chat_ids(p, system) if isinstance(p, str) else [int(i) for i in p] for p in batch]
        if any(not row for row in ids):
            raise ValidationError("a prompt has no tokens")
        sampling = {"max_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
        if seed is not None:
            sampling["seed"] = seed
        if ignore_eos:
            sampling["ignore_eos"] = True

        def one(i: int) -> Generation:
            return self._complete(ids[i], per_row[i], sampling, stops, on_text if i == 0 else None)

        if len(batch) == 1:
            return [one(0)]
        with ThreadPoolExecutor(max_workers=min(len(batch), 16)) as pool:
            return list(pool.map(one, range(len(batch))))

    def _complete(
        self,
        prompt_ids: list[int],
        adapter: LoraAdapter | None,
        sampling: dict[str, Any],
        stop: list[str],
        on_text: Callable[[str], None] | None,
    ) -> Generation:
        for attempt in (0, 1):
            model = self.ensure_adapter(adapter)
            body = {
                "model": model,
                "prompt": prompt_ids,
                "stream": True,
                "logprobs": 0,
                "return_tokens_as_token_ids": True,  # logprob tokens read "token_id:<id>"
                "skip_special_tokens": True,
                **sampling,
                **({"stop": stop} if stop else {}),
            }
            with self._lock:
                self._inflight[model] += 1
            try:
                result = self._stream(body, prompt_ids, stop, on_text)
            finally:
                with self._lock:
                    self._inflight[model] -= 1
                    if not self._inflight[model]:
                        del self._inflight[model]
            if result is not None:
                return result
            if adapter is None or attempt:  # the base model itself is unknown, or the reload did not help
                break
            log.warning("the generation engine no longer knows adapter %s (restarted?); loading it again", model)
            self._loaded.discard(model)
        raise ModelError(f"the generation engine at {redact(self.url)} does not know the model {model!r}")

    def _stream(
        self, body: dict[str, Any], prompt_ids: list[int], stop: list[str], on_text: Callable[[str], None] | None
    ) -> Generation | None:
        """One streamed completion; None when the engine does not know ``body["model"]`` (404)."""
        import httpx

        eos = set(getattr(self.base, "eos_token_ids", ()) or ())
        out_ids: list[int] = []
        logprobs: list[float] = []
        raw, streamed, finish, stop_reason = "", "", None, None
        t0 = time.perf_counter()
        first_s: float | None = None
        try:
            with self._http.stream("POST", "/v1/completions", json=body) as r:
                if r.status_code == 404:
                    r.read()
                    return None
                if r.status_code != 200:
                    r.read()
                    raise self._fail("a completion", r)
                for chunk in _sse_data(r.iter_lines()):
                    if first_s is None:
                        first_s = time.perf_counter() - t0
                    for choice in chunk.get("choices") or []:
                        ids, lps = _chunk_tokens(choice)
                        out_ids.extend(ids)
                        logprobs.extend(lps)
                        finish = choice.get("finish_reason") or finish
                        stop_reason = choice.get("stop_reason", stop_reason)
                        raw += choice.get("text") or ""
                        if on_text is not None and choice.get("text"):
                            # the text of the ids when the chunks carry them (exactly what is returned), else
                            # the engine's own text
                            text = self.base.decode([i for i in out_ids if i not in eos]) if out_ids else raw
                            safe = _shown(text, stop)
                            if len(safe) > len(streamed) and safe.startswith(streamed):
                                on_text(safe[len(streamed) :])
                                streamed = safe
        except httpx.HTTPError as e:
            raise ModelError(
                f"the generation engine at {redact(self.url)} broke off a completion ({type(e).__name__})"
            ) from None
        total = time.perf_counter() - t0
        if logprobs and len(logprobs) != len(out_ids):
            logprobs = []
        while out_ids and out_ids[-1] in eos:  # vLLM returns the end-of-turn token; BaseModel does not
            out_ids.pop()
            if logprobs:
                logprobs.pop()
        text = self.base.decode(out_ids)
        cut = _find_stop(text, stop)
        if cut is not None:
            text, reason = text[:cut], "stop"
        elif finish == "length":
            reason = "length"
        else:
            reason = "stop" if isinstance(stop_reason, str) else "eos"
        if on_text is not None and len(text) > len(streamed) and text.startswith(streamed):
            on_text(text[len(streamed) :])
        prefill = first_s if first_s is not None else total
        return Generation(
            text=text,
            token_ids=out_ids,
            prompt_tokens=len(prompt_ids),
            completion_tokens=len(out_ids),
            finish_reason=reason,
            prefill_s=prefill,
            decode_s=max(total - prefill, 0.0),
            token_logprobs=logprobs,
        )


# --------------------------------------------------------------------- helpers
def _as_batch(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    if isinstance(prompts, str):
        return [prompts]
    batch: list[Any] = list(prompts)
    if not batch:
        raise ValidationError("generate needs at least one prompt")
    if all(isinstance(x, int) for x in batch):
        return [batch]  # one pre-tokenized prompt
    return batch


def _sse_data(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The JSON ``data:`` payloads of an OpenAI-style event stream, up to ``data: [DONE]``."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            yield json.loads(data)
        except ValueError:
            raise ModelError(f"the generation engine sent an event that is not JSON: {data[:100]!r}") from None


def _chunk_tokens(choice: dict[str, Any]) -> tuple[list[int], list[float]]:
    """The token ids of a completion choice (``token_ids``, or the ``token_id:<id>`` logprob tokens) and their
    log-probabilities.

    >>> _chunk_tokens({"logprobs": {"tokens": ["token_id:5", "token_id:7"], "token_logprobs": [-0.5, -1.0]}})
    ([5, 7], [-0.5, -1.0])
    """
    lp = choice.get("logprobs") or {}
    values = [float(x) if x is not None else float("nan") for x in lp.get("token_logprobs") or []]
    if choice.get("token_ids") is not None:
        return [int(i) for i in choice["token_ids"]], values
    ids = []
    for tok in lp.get("tokens") or []:
        if not str(tok).startswith("token_id:"):
            raise ModelError(
                "the generation engine does not return token ids (it needs return_tokens_as_token_ids, vLLM >= 0.5)"
            )
        ids.append(int(str(tok)[9:]))
    return ids, values


def _find_stop(text: str, stop: Sequence[str]) -> int | None:
    hits = [h for h in (text.find(s) for s in stop) if h >= 0]
    return min(hits) if hits else None


def _shown(text: str, stop: Sequence[str]) -> str:
    """What of ``text`` can be streamed now: up to a stop string, without a trailing partial character or a
    trailing piece that may begin a stop string."""
    cut = _find_stop(text, stop)
    if cut is not None:
        return text[:cut]
    text = text.rstrip("\ufffd")
    hold = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return text[: len(text) - hold]
