"""Internalization latency of the Doc-to-LoRA hypernetwork: ``pmem bench internalize [--quick] --json``.

For documents of 256 to 32k tokens (quick: 256 to 2k) it times ``memory.hyper.d2l.internalize`` (tokenise,
base-model pass per chunk, hypernetwork, top-k selection, rank concatenation) and reports p50/p95 seconds,
tokens per second, chunk count and adapter bytes per document (bf16).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch


def _doc(tokenizer: Any, n_tokens: int, seed: int) -> str:
    from memory.training.d2l_data import FactGenerator

    gen = FactGenerator("heldout", seed=seed)
    text = gen.niah(n_tokens_hint=n_tokens).document
    ids = tokenizer(text, add_special_tokens=False).input_ids
    while len(ids) < n_tokens:
        text += " " + gen.niah(n_tokens_hint=n_tokens - len(ids) + 16).document
        ids = tokenizer(text, add_special_tokens=False).input_ids
    return tokenizer.decode(ids[:n_tokens])


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def run(quick: bool = False) -> dict[str, Any]:
    """Latency by document length; see the module docstring.

    >>> # run(quick=True)["by_length"]["512"]["p50_s"]
    """
    from memory.hyper.d2l import DEFAULT_CHECKPOINT, internalize, load_checkpoint
    from memory.models import load_base_model

    base = load_base_model()
    net = load_checkpoint(DEFAULT_CHECKPOINT, base)
    lengths = [256, 512, 1024, 2048] if quick else [256, 512, 1024, 2048, 4096, 8192, 16384, 32768]
    internalize(base, [_doc(base.tokenizer, 128, 0)], hypernet=net)  # warm-up
    out: dict[str, Any] = {}
    for n in lengths:
        reps = (3 if quick else 5) if n <= 4096 else (2 if n <= 8192 else 1)
        times, ad = [], None
        for r in range(reps):
            doc = _doc(base.tokenizer, n, 100 + r)
            t0 = time.perf_counter()
            [ad] = internalize(base, [doc], hypernet=net)
            times.append(time.perf_counter() - t0)
        assert ad is not None
        out[str(n)] = {
            "reps": reps,
            "p50_s": round(statistics.median(times), 4),
            "p95_s": round(_pct(times, 0.95), 4),
            "tokens_per_s": round(n / statistics.median(times), 1),
            "chunks": int(ad.metadata["chunks"]),
            "adapter_rank": ad.rank,
            "adapter_bytes": ad.num_bytes,
        }
    return {
        "suite": "internalize",
        "quick": quick,
        "threads": torch.get_num_threads(),
        "chunk_tokens": net.config.chunk_tokens,
        "rank_per_chunk": net.config.rank,
        "target_layers": list(net.config.target_layers),
        "dtype": str(next(base.model.parameters()).dtype),
        "by_length": out,
    }
