"""Adapter versus document in context: time to first token and KV-cache memory as the document grows.

``pmem bench context [--quick] --json`` calls :func:`run`. For a document of ``L`` tokens (256 -> 32k;
``--quick``: 256 -> 2k) and one question about it:

- ``context``: the document is in the prompt (``prompts.context_prompt``); the KV cache holds every
  prompt token, and prefill reads them all before the first answer token;
- ``adapter``: the question alone (``prompts.parametric_prompt``) with the document's adapter. With a
  Doc-to-LoRA checkpoint for the base model this is the real adapter the checkpoint makes from the document
  (its one-off cost is timed, so ``break_even_queries`` says after how many questions it has paid for
  itself); without one, a random LoRA of the shape D2L's default config would give (the cost, not the
  answer, is measured). Its memory is the adapter's tensors plus the KV cache of the short prompt.

TTFT is the wall time of ``generate(max_new_tokens=1)`` (prefill plus one sampled token), best of ``reps``
(best of 1 above ``LONG`` tokens, where one prefill takes minutes on a CPU). KV-cache bytes are read from
the cache of a prefill pass up to ``LONG`` tokens and computed analytically above
(``2 x layers x kv_heads x head_dim x element size`` per token; the measured points check the formula:
``kv_measurement``). ``crossings`` gives, by linear interpolation on the grid, the document length from
which the context line is above the adapter line (or says that one line is above the other over the
whole range).

Standalone: ``python -m bench.context --quick [--plot FILE.png]``.
"""

from __future__ import annotations

import logging
import math
import os
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

QUESTION = "What is the secret passphrase for the Orlan vault?"
NEEDLE = "The secret passphrase for the Orlan vault is copper-falcon-42."
LONG = 4096  # above this many document tokens: one TTFT repetition, analytic KV-cache size


def _document(base: Any, tokens: int) -> str:
    """Filler text of exactly ``tokens`` tokens (re-encoding may differ by a few) with the needle in the middle."""
    from memory.evaluation.suites import _FILLER

    filler_ids: list[int] = []
    i = 0
    while len(filler_ids) < tokens:
        filler_ids += base.encode(_FILLER[i % len(_FILLER)] + " ")
        i += 1
    needle = base.encode(NEEDLE + " ")
    half = max(0, (tokens - len(needle)) // 2)
    ids = filler_ids[:half] + needle + filler_ids[half : max(half, tokens - len(needle))]
    return base.decode(ids)


def _d2l_shape(base: Any) -> tuple[list[str], int, int, int]:
    """Target module paths, components per chunk, bias components and chunk length of D2L for ``base``."""
    try:
        from memory.hyper.d2l import D2LConfig

        cfg = D2LConfig.for_model(base.config)
        return (
            [cfg.module_path(layer) for layer in cfg.target_layers],
            cfg.rank,
            cfg.bias_rank,
            int(getattr(cfg, "chunk_tokens", 512)),
        )
    except Exception as e:  # noqa: BLE001 - the hypernetwork module may be absent; keep its documented defaults
        log.warning("D2L config unavailable (%s); using 4 upper down_proj layers, rank 32 + 8 per 512 tokens", e)
        n = base.num_layers
        return [f"model.layers.{n - 1 - 3 * k}.mlp.down_proj" for k in range(4)], 32, 8, 512


def _adapter(base: Any, doc_tokens: int) -> Any:
    import torch

    from memory.lora import LoraAdapter

    paths, per_chunk, bias, chunk_tokens = _d2l_shape(base)
    rank = per_chunk * math.ceil(doc_tokens / chunk_tokens) + bias
    modules = dict(base.model.named_modules())
    gen = torch.Generator().manual_seed(0)
    weights = {}
    for p in paths:
        lin = modules[p]
        a = torch.randn(rank, lin.in_features, generator=gen) * 0.01
        b = torch.randn(lin.out_features, rank, generator=gen) * 0.01
        weights[p] = (a.to(base.dtype), b.to(base.dtype))
    return LoraAdapter(weights, base.fingerprint, {"kind": "bench-d2l-shape"})


def _adapter_bytes(adapter: Any) -> int:
    return sum(a.numel() * a.element_size() + b.numel() * b.element_size() for a, b in adapter.weights.values())


def _kv_bytes(base: Any, ids: list[int], adapter: Any = None, measure: bool = True) -> tuple[int, str]:
    import torch

    from memory.evaluation.runtime import kv_bytes_per_token

    if not measure:
        return len(ids) * kv_bytes_per_token(base), "analytic"
    try:
        with torch.inference_mode():
            out = base.forward(torch.tensor([ids], device=base.device), adapters=adapter, use_cache=True)
        cache = out.past_key_values
        total = 0
        for layer in getattr(cache, "layers", []):  # transformers >= 4.56 cache layers
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
        if not total and hasattr(cache, "key_cache"):
            total = sum(t.numel() * t.element_size() for t in [*cache.key_cache, *cache.value_cache])
        if total:
            return total, "measured"
    except Exception as e:  # noqa: BLE001
        log.warning("could not read the KV cache (%s); using the analytic size", e)
    return len(ids) * kv_bytes_per_token(base), "analytic"


def _ttft_ms(base: Any, ids: list[int], adapter: Any, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        base.generate([ids], max_new_tokens=1, adapters=adapter)
        best = min(best, (time.perf_counter() - t0) * 1000)
    return best


def crossing(xs: list[float], a: list[float], b: list[float]) -> dict[str, Any]:
    """Where ``a`` (context) rises above ``b`` (adapter) on the grid ``xs``, by linear interpolation.

    >>> crossing([256, 512, 1024], [1, 3, 9], [2, 2, 2])["at"]
    384.0
    """
    d = [x - y for x, y in zip(a, b, strict=True)]
    if all(v >= 0 for v in d) or all(v < 0 for v in d):
        word = "more" if d[0] >= 0 else "less"
        out: dict[str, Any] = {
            "at": None,
            "summary": f"context costs {word} at every length ({xs[0]:g}..{xs[-1]:g} tokens)",
        }
        if len(xs) >= 2:  # where straight-line fits of both would meet, outside the measured range
            (sa, ia), (sb, ib) = np.polyfit(xs, a, 1), np.polyfit(xs, b, 1)
            at = (ib - ia) / (sa - sb) if sa != sb else -1.0
            # Only outside the grid: inside it the measurements themselves say the lines do not meet
            # (a straight line through a super-linear curve can cross the other inside the range).
            if 0 < at < xs[0] or at > xs[-1]:
                out["extrapolated_at"] = round(float(at), 1)
                out["summary"] += f"; linear fits meet at ~{at:.0f} tokens"
            else:
                out["extrapolated_at"] = None
                out["summary"] += "; straight-line fits do not meet outside the measured range"
        return out
    for i in range(1, len(xs)):
        if d[i - 1] < 0 <= d[i]:
            at = xs[i - 1] + (xs[i] - xs[i - 1]) * (-d[i - 1]) / (d[i] - d[i - 1])
            return {"at": round(at, 1), "summary": f"context costs more from ~{at:.0f} tokens"}
    return {"at": None, "summary": "the lines cross more than once (noisy timings)"}


def run(quick: bool = False, reps: int | None = None, lengths: list[int] | None = None) -> dict[str, Any]:
    """Measure both arms at each document length (quick: 256, 512, 1k, 2k; full: up to 32k)."""
    from memory import prompts
    from memory.config import Settings
    from memory.internalizers import D2LInternalizer, d2l_checkpoint_for
    from memory.models import load_base_model

    settings = Settings.from_env()
    base = load_base_model(settings=settings)
    lengths = lengths or ([256, 512, 1024, 2048] if quick else [256, 512, 1024, 2048, 4096, 8192, 16384, 32768])
    reps = reps or (1 if quick else 3)
    ckpt = d2l_checkpoint_for(base)
    d2l = D2LInternalizer(ckpt, base) if ckpt is not None else None
    chunk = d2l.net.config.chunk_tokens if d2l is not None else _d2l_shape(base)[3]
    q_ids = base.chat_ids(prompts.parametric_prompt(QUESTION), system=prompts.QA_SYSTEM)
    base.generate([q_ids], max_new_tokens=1)  # warm-up
    points = []
    for n in lengths:
        doc = _document(base, n)
        c_ids = base.chat_ids(prompts.context_prompt(QUESTION, [doc]), system=prompts.QA_SYSTEM)
        point: dict[str, Any] = {"doc_tokens": n}
        if d2l is not None:
            t0 = time.perf_counter()
            adapter = d2l.internalize(base, doc)
            point["d2l_internalize_ms"] = (time.perf_counter() - t0) * 1000
        else:
            adapter = _adapter(base, n)
        n_reps = reps if n <= LONG else 1
        ctx_kv, how = _kv_bytes(base, c_ids, measure=n <= LONG)
        ad_kv, _ = _kv_bytes(base, q_ids, adapter)
        point.update(
            {
                "context_prompt_tokens": len(c_ids),
                "adapter_prompt_tokens": len(q_ids),
                "adapter_kind": "d2l" if d2l is not None else "d2l-shape (random)",
                "adapter_rank": adapter.rank,
                "reps": n_reps,
                "context_ttft_ms": _ttft_ms(base, c_ids, None, n_reps),
                "adapter_ttft_ms": _ttft_ms(base, q_ids, adapter, n_reps),
                "context_kv_bytes": ctx_kv,
                "adapter_kv_bytes": ad_kv,
                "adapter_bytes": _adapter_bytes(adapter),
                "kv_measurement": how,
            }
        )
        point["adapter_total_bytes"] = point["adapter_bytes"] + ad_kv
        if "d2l_internalize_ms" in point:
            saved = point["context_ttft_ms"] - point["adapter_ttft_ms"]
            point["break_even_queries"] = round(point["d2l_internalize_ms"] / saved, 2) if saved > 0 else None
        points.append(point)
        log.info("context bench: %s", point)
    result: dict[str, Any] = {
        "base_model": base.fingerprint,
        "device": str(base.device),
        "dtype": str(base.dtype),
        "threads": __import__("torch").get_num_threads(),
        "chunk_tokens": chunk,
        "reps": reps,
        "d2l_checkpoint": d2l.identity.name if d2l is not None else None,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "points": points,
        "crossings": crossings(points),
    }
    if d2l is None:
        result["break_even_queries"] = None
        result["break_even_note"] = "no D2L checkpoint for this base model: internalization cost not measured"
    return result


def crossings(points: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Where the context line rises above the adapter line: per-query TTFT, memory and, when the one-off
    internalization was timed, the first query (internalization + adapter TTFT against context TTFT)."""
    xs = [p["doc_tokens"] for p in points]
    out = {
        "ttft": crossing(xs, [p["context_ttft_ms"] for p in points], [p["adapter_ttft_ms"] for p in points]),
        "memory": crossing(xs, [p["context_kv_bytes"] for p in points], [p["adapter_total_bytes"] for p in points]),
    }
    if points and all("d2l_internalize_ms" in p for p in points):
        first = crossing(
            xs, [p["context_ttft_ms"] for p in points], [p["d2l_internalize_ms"] + p["adapter_ttft_ms"] for p in points]
        )
        first["summary"] = "first query (internalization included): " + first["summary"]
        out["first_query"] = first
    return out


def plot(result: dict[str, Any], path: str | Path) -> None:
    """Two panels: TTFT and memory against document length, both arms, crossings marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = result["points"]
    x = [p["doc_tokens"] for p in pts]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    axes[0].plot(x, [p["context_ttft_ms"] for p in pts], "o-", label="document in context")
    axes[0].plot(x, [p["adapter_ttft_ms"] for p in pts], "s-", label="adapter (D2L)")
    if all("d2l_internalize_ms" in p for p in pts):
        axes[0].plot(
            x,
            [p["d2l_internalize_ms"] + p["adapter_ttft_ms"] for p in pts],
            "^--",
            color="grey",
            label="first query with the adapter (internalization + TTFT)",
        )
        first = result["crossings"].get("first_query", {})
        if first.get("at"):
            axes[0].axvline(first["at"], color="grey", ls=":", lw=1)
            axes[0].annotate(
                f"pays off on the first query\nfrom ~{first['at']:.0f} tokens",
                (first["at"], 0.5),
                xycoords=("data", "axes fraction"),
                fontsize=7,
                ha="left",
            )
    axes[0].set_yscale("log")
    axes[0].set_ylabel("time to first token, ms")
    axes[1].plot(x, [p["context_kv_bytes"] / 2**20 for p in pts], "o-", label="KV cache of the document")
    axes[1].plot(x, [p["adapter_total_bytes"] / 2**20 for p in pts], "s-", label="adapter + KV of the question")
    axes[1].set_ylabel("MiB")
    for ax, key in zip(axes, ("ttft", "memory"), strict=True):
        c = result["crossings"][key]
        if c["at"]:
            ax.axvline(c["at"], color="grey", ls=":", lw=1)
        ax.set_title(textwrap.fill(f"{key}: {c['summary']}", 60), fontsize=8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("document tokens")
        ax.legend(fontsize=8)
    fig.suptitle(f"{result['base_model']} on {result['device']} ({result['dtype']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:  # pragma: no cover
    from bench._plotting_cli import main as cli_main

    cli_main("context", __doc__ or "context", run, plot)


if __name__ == "__main__":  # pragma: no cover
    main()
