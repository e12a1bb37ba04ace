"""A loaded base model: chat prompts, batched generation with per-row adapters, streaming, hidden states.

Chat-template choice: ``system=None`` keeps the model's own template behaviour. For SmolLM2 that means
its template injects its default system prompt ("You are a helpful AI assistant named SmolLM, trained
by Hugging Face"); the teacher/student prompts of context distillation and Doc-to-LoRA all use this
same default, so adapters are trained and used under one prompt format. Pass ``system=""`` or a string
to override it. Models whose template has no system role get the system text prepended to the user
turn; models without a chat template get the raw text.

>>> base = load_base_model()                        # doctest: +SKIP
>>> base.generate(["Capital of France?"], max_new_tokens=8)[0].text   # doctest: +SKIP
'The capital of France is Paris.'
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from memory.errors import ValidationError
from memory.lora.adapter import LoraAdapter
from memory.lora.apply import apply_lora, bind_lora, wrap_linears

__all__ = ["BaseModel", "Generation"]

log = logging.getLogger(__name__)

Prompt = str | Sequence[int]
Adapters = LoraAdapter | Sequence[LoraAdapter | None] | None


@dataclass
class Generation:
    """One generated completion with its accounting.

    ``finish_reason``: ``"eos"`` (end-of-turn token), ``"stop"`` (a stop string; trimmed from ``text``)
    or ``"length"`` (``max_new_tokens`` reached).
    """

    text: str
    token_ids: list[int]  # every generated token, including those of a trimmed stop string
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    prefill_s: float = 0.0
    decode_s: float = 0.0
    # log-probability of each token of ``token_ids`` under the model that generated it (raw logits, before any
    # temperature): the router's confidence without a second forward pass
    token_logprobs: list[float] = field(default_factory=list)

    @property
    def total_s(self) -> float:
        return self.prefill_s + self.decode_s

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.decode_s if self.decode_s > 0 else 0.0


SHARED_START_MIN = 64  # tokens rows must share before their start is run once (below that it does not pay)


def shared_start(prompts: Sequence[Sequence[int]], min_tokens: int = SHARED_START_MIN) -> int:
    """How many leading tokens every prompt shares, leaving each at least one token of its own; 0 when fewer than
    ``min_tokens`` or only one prompt.

    >>> shared_start([[1, 2, 3, 4], [1, 2, 3, 5, 6]], min_tokens=2), shared_start([[1, 2], [1, 2]], min_tokens=1)
    (3, 1)
    """
    if len(prompts) < 2:
        return 0
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    k = 0
    while k < n and all(p[k] == first[k] for p in prompts):
        k += 1
    return k if k >= min_tokens else 0


@dataclass
class BaseModel:
    """A frozen causal LM and its tokenizer. Build it with :func:`memory.models.load_base_model`.

    >>> base = load_base_model()                     # doctest: +SKIP
    >>> base.count_tokens("hello world")             # doctest: +SKIP
    2
    """

    model: nn.Module
    tokenizer: Any
    name: str
    fingerprint: str
    path: Path | None = None
    _eos_ids: set[int] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        # Every Linear is wrapped once, here, before anyone registers hooks on it; adapters are then chosen
        # per call (memory.lora.apply), so concurrent calls with different adapters need no lock.
        wrap_linears(self.model)
        eos: set[int] = set()
        for src in (
            self.tokenizer.eos_token_id,
            getattr(getattr(self.model, "generation_config", None), "eos_token_id", None),
        ):
            if isinstance(src, int):
                eos.add(src)
            elif isinstance(src, (list, tuple)):
                eos.update(int(i) for i in src)
        self._eos_ids = eos
        import inspect

        # transformers >= 5.24 renamed ``past_key_values`` to ``cache``
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    # ----------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def eos_token_ids(self) -> set[int]:
        return set(self._eos_ids)

    def linear_paths(self, targets: Sequence[str]) -> list[str]:
        """Module paths of the ``nn.Linear`` layers whose path ends with one of ``targets``, in model order.

        >>> base.linear_paths(["mlp.down_proj"])[:1]     # doctest: +SKIP
        ['model.layers.0.mlp.down_proj']
        """
        return [
            n
            for n, m in self.model.named_modules()
            if isinstance(m, nn.Linear) and any(n == t or n.endswith("." + t) for t in targets)
        ]

    # ----------------------------------------------------------------- tokens
    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` (no special tokens)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def chat_ids(self, user: str, system: str | None = None, *, assistant_prefix: str = "") -> list[int]:
        """Token ids of a one-turn chat prompt, ending where the assistant's answer starts.

        ``system=None`` keeps the template's default (see the module docstring).

        >>> ids = base.chat_ids("Hello")                 # doctest: +SKIP
        """
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            messages = [{"role": "user", "content": user}]
            if system is not None:
                messages.insert(0, {"role": "system", "content": system})
            try:
                text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception:  # noqa: BLE001 - templates without a system role raise
                merged = f"{system}\n\n{user}" if system else user
                text = tok.apply_chat_template(
                    [{"role": "user", "content": merged}], tokenize=False, add_generation_prompt=True
                )
            return self.encode(text + assistant_prefix)
        text = f"{system}\n\n{user}\n" if system else f"{user}\n"
        return list(tok(text + assistant_prefix)["input_ids"])  # base models: plain text, tokenizer's own BOS

    def _prompt_ids(self, prompt: Prompt, system: str | None) -> list[int]:
        if isinstance(prompt, str):
            return self.chat_ids(prompt, system)
        ids = [int(i) for i in prompt]
        if not ids:
            raise ValidationError("a prompt has no tokens")
        return ids

    # ----------------------------------------------------------------- forward
    def left_pad(self, batch: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
        """(input_ids, attention_mask) with left padding, on the model's device."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(x) for x in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, x in enumerate(batch):
            ids[i, width - len(x) :] = torch.tensor(list(x), dtype=torch.long)
            mask[i, width - len(x) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def prefix_cache(self, head: Sequence[int], rows: int) -> Any:
        """The KV cache of ``head`` (one forward pass of one row, under whatever adapters are active), repeated
        for ``rows`` rows that all start with it."""
        ids = torch.tensor([list(head)], dtype=torch.long, device=self.device)
        model: Any = self.model
        cache = getattr(model.get_decoder()(input_ids=ids, use_cache=True), self._cache_kw)
        for layer in cache.layers:
            layer.keys = layer.keys.expand(rows, -1, -1, -1).contiguous()
            layer.values = layer.values.expand(rows, -1, -1, -1).contiguous()
        return cache

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, *, adapters: Adapters = None, **kw: Any
    ) -> Any:
        """Run the model once (position ids derived from the mask, so left padding is exact)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        with apply_lora(self, adapters):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, **kw)

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
        adapters: Adapters = None,
        seed: int | None = None,
        on_text: Callable[[str], None] | None = None,
        ignore_eos: bool = False,
    ) -> list[Generation]:
        """Batched generation (left padding, KV cache); greedy when ``temperature == 0``.

        Args:
            prompts: user message(s), wrapped in the chat template, or pre-built token id lists (used as is).
            stop: strings that end a row's generation; they are trimmed from the text.
            adapters: one adapter for all rows, or one per row (``None`` = base model for that row).
            seed: makes sampling reproducible.
            on_text: called with each new piece of the first row's text as it is generated (the pieces join
                to that row's ``text``); the streaming twin of :meth:`stream` that still returns the generations.
            ignore_eos: go on past the end-of-turn token, so every row generates ``max_new_tokens`` tokens unless
                a stop string ends it (vLLM's sampling option of that name; benchmarks use it for equal lengths).

        Inside :func:`memory.models.batching.batched` (the server's queries) the prompts go to the model's
        continuous-batching scheduler instead, to be decoded together with other callers' generations.

        >>> base.generate(["Hi", "2+2?"], max_new_tokens=16)     # doctest: +SKIP
        """
        from memory.batch_route import current_route

        batch = self._as_batch(prompts)
        route = current_route()
        if route is not None:
            scheduler = route.batching.scheduler(self)
            if not scheduler.owns_current_thread():
                return scheduler.generate(
                    [self._prompt_ids(p, system) for p in batch],
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    top_p=top_p,
                    stop=stop,
                    adapters=adapters,
                    seed=seed,
                    on_text=on_text,
                    cancel=route.cancel,
                    ignore_eos=ignore_eos,
                )
        gens = [None] * len(batch)
        stream_row = 0 if on_text is not None else None
        for item in self._run(
            batch,
            max_new_tokens,
            temperature,
            top_p,
            stop,
            system,
            adapters,
            seed,
            stream_row=stream_row,
            ignore_eos=ignore_eos,
        ):
            if isinstance(item, str):
                on_text(item)  # type: ignore[misc]
                continue
            row, gen = item
            gens[row] = gen
        return gens  # type: ignore[return-value]

    def stream(
        self,
        prompt: Prompt,
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        system: str | None = None,
        adapters: LoraAdapter | None = None,
        seed: int | None = None,
    ) -> Iterator[str]:
        """Yield the completion of one prompt piece by piece; the pieces join to ``generate(...)[0].text``.

        >>> "".join(base.stream("Hi", max_new_tokens=8))   # doctest: +SKIP
        """
        for piece in self._run(
            [prompt], max_new_tokens, temperature, top_p, stop, system, adapters, seed, stream_row=0
        ):
            if isinstance(piece, str):
                yield piece

    def _as_batch(self, prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
        if isinstance(prompts, str):
            return [prompts]
        batch: list[Any] = list(prompts)  # prompts, or the ints of one pre-tokenized prompt
        if batch and all(isinstance(x, int) for x in batch):
            return [batch]  # one pre-tokenized prompt
        if not batch:
            raise ValidationError("generate needs at least one prompt")
        return batch

    @torch.inference_mode()
    def _run(
        self, batch, max_new_tokens, temperature, top_p, stop, system, adapters, seed, stream_row, ignore_eos=False
    ):
        if max_new_tokens < 1:
            raise ValidationError(f"max_new_tokens must be >= 1, got {max_new_tokens!r}")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValidationError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature!r}, {top_p!r}")
        if adapters is not None and not isinstance(adapters, LoraAdapter) and len(adapters) != len(batch):
            raise ValidationError(f"got {len(adapters)} per-row adapters for {len(batch)} prompts")
        stop = [s for s in (stop or []) if s]
        prompt_ids = [self._prompt_ids(p, system) for p in batch]
        bs = len(prompt_ids)
        # Rows that start alike (one passage, many questions) on one adapter: the start runs once, for one row,
        # and its KV cache is shared; the rows' own tails are left padded after it.
        uniform = adapters is None or isinstance(adapters, LoraAdapter) or all(a is adapters[0] for a in adapters)
        shared = shared_start(prompt_ids) if uniform else 0
        ids, mask = self.left_pad([p[shared:] for p in prompt_ids])
        gen = None
        if temperature > 0:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out_ids: list[list[int]] = [[] for _ in range(bs)]
        logprobs: list[list[float]] = [[] for _ in range(bs)]
        texts = [""] * bs
        done = [False] * bs
        reason = ["length"] * bs
        streamed = 0
        eos = torch.tensor(sorted(self._eos_ids) or [-1], device=self.device)
        # Bound once, activated around each forward only: this generator yields between forwards, maybe to
        # a consumer in another thread, and the adapters must not stay active in the consumer's context.
        lora = bind_lora(self, adapters)
        t0 = time.perf_counter()
        with lora.active():
            if shared:
                cache = self.prefix_cache(prompt_ids[0][:shared], bs)
                mask = torch.cat([mask.new_ones(bs, shared), mask], dim=1)
                pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
                kw = {self._cache_kw: cache}
            else:
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                kw = {}
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=pos,
                use_cache=True,
                logits_to_keep=keep_last(ids),
                **kw,
            )
        prefill_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        cache = getattr(out, self._cache_kw)
        for step in range(max_new_tokens):
            logits = out.logits[:, -1, :].float()
            nxt = _pick(logits, temperature, top_p, gen)  # [bs]
            is_eos = [False] * bs if ignore_eos else torch.isin(nxt, eos).tolist()
            toks = nxt.tolist()
            lps = token_logprobs(logits, nxt)
            for i in range(bs):
                if done[i]:
                    continue
                if is_eos[i]:
                    done[i], reason[i] = True, "eos"
                    continue
                out_ids[i].append(toks[i])
                logprobs[i].append(lps[i])
                if stop or i == stream_row:
                    texts[i] = self.decode(out_ids[i])
                    cut = _find_stop(texts[i], stop)
                    if cut is not None:
                        texts[i], done[i], reason[i] = texts[i][:cut], True, "stop"
            if stream_row is not None:
                safe = texts[0] if done[0] else _stream_safe(texts[0], stop)
                if len(safe) > streamed:
                    yield safe[streamed:]
                    streamed = len(safe)
            if all(done) or step == max_new_tokens - 1:
                break
            feed = torch.tensor([pad if done[i] else toks[i] for i in range(bs)], device=self.device)[:, None]
            mask = torch.cat([mask, mask.new_ones(bs, 1)], dim=1)
            pos = pos[:, -1:] + 1
            with lora.active():
                out = self.model(
                    input_ids=feed, attention_mask=mask, position_ids=pos, use_cache=True, **{self._cache_kw: cache}
                )
        decode_s = time.perf_counter() - t1
        for i in range(bs):
            text = texts[i] if reason[i] == "stop" else self.decode(out_ids[i])
            if stream_row is not None and i == stream_row and len(text) > streamed:
                yield text[streamed:]
            yield (
                i,
                Generation(
                    text=text,
                    token_ids=out_ids[i],
                    prompt_tokens=len(prompt_ids[i]),
                    completion_tokens=len(out_ids[i]),
                    finish_reason=reason[i],
                    prefill_s=prefill_s,
                    decode_s=decode_s,
                    token_logprobs=logprobs[i],
                ),
            )

    # ----------------------------------------------------------------- hidden states
    @torch.inference_mode()
    def hidden_states(
        self, texts: str | Sequence[str], layers: Sequence[int] | None = None, *, max_tokens: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Per-layer hidden states of raw texts (right padded, no special tokens added).

        Returns ``(states [n_layers, bs, T, hidden], mask [bs, T])``; layer ``0`` is the embedding output and
        layer ``num_layers`` the last block's output. ``layers=None`` returns all ``num_layers + 1``.

        >>> h, m = base.hidden_states(["a text"], layers=[-1])   # doctest: +SKIP
        """
        batch = [texts] if isinstance(texts, str) else list(texts)
        enc = [self.encode(t)[:max_tokens] if max_tokens else self.encode(t) for t in batch]
        enc = [e or [self.tokenizer.eos_token_id] for e in enc]
        width = max(len(e) for e in enc)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(enc), width), pad, dtype=torch.long)
        mask = torch.zeros((len(enc), width), dtype=torch.long)
        for i, e in enumerate(enc):
            ids[i, : len(e)] = torch.tensor(e)
            mask[i, : len(e)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        out = self.model(
            input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False, logits_to_keep=1
        )
        hs = out.hidden_states
        sel = range(len(hs)) if layers is None else [i if i >= 0 else len(hs) + i for i in layers]
        return torch.stack([hs[i] for i in sel]), mask


def keep_last(ids: Tensor) -> Tensor:
    """``logits_to_keep`` for a prefill: the last position only, as an index tensor rather than the int ``1``.

    With the int, transformers runs the vocabulary head on a strided slice of the hidden states
    (``h[:, -1:, :]``), and a bfloat16 ``F.linear`` on a 3-D input with that stride takes a slow CPU path
    (torch 2.13): ~215 ms per row for SmolLM2's 49k x 576 head, against ~12 ms on a contiguous input, more than
    the rest of a 90-token prefill. An index tensor gathers a contiguous copy first; the logits are bit-identical.
    """
    return torch.tensor([ids.shape[1] - 1], device=ids.device)


def _pick(logits: Tensor, temperature: float, top_p: float, gen: torch.Generator | None) -> Tensor:
    """Greedy (temperature 0) or temperature + nucleus sampling over ``logits [bs, vocab]``."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # always keeps the top token
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


def token_logprobs(logits: Tensor, tokens: Tensor) -> list[float]:
    """``log_softmax(logits)[row, tokens[row]]`` per row of ``logits [bs, vocab]`` (float32)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[:, None]).squeeze(-1).tolist()


def _find_stop(text: str, stop: Sequence[str]) -> int | None:
    hits = [text.find(s) for s in stop]
    hits = [h for h in hits if h >= 0]
    return min(hits) if hits else None


def _stream_safe(text: str, stop: Sequence[str]) -> str:
    """The part of ``text`` that can be shown now: no trailing partial UTF-8 char, no possible stop prefix."""
    text = text.rstrip("\ufffd")
    hold = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return text[: len(text) - hold] if hold else text
