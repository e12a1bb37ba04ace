"""Measuring one answer: prefill time (from the model's own generation records) and peak resident memory.

>>> with measure(None) as m:
...     _ = sum(range(1000))
>>> m.total_ms >= 0
True
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

_CLEAR_REFS = "/proc/self/clear_refs"


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux ``clear_refs`` 5); False where unsupported."""
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size: since the last reset on Linux (``VmHWM``), else since the process started."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


@dataclass
class Measurement:
    total_ms: float = 0.0
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    generations: list[Any] = field(default_factory=list)
    peak_rss_bytes: int = 0
    peak_is_per_call: bool = False


@contextlib.contextmanager
def measure(base: Any) -> Iterator[Measurement]:
    """Time a block, sum the prefill/decode times of every ``base.generate`` call inside it, and its peak RSS.

    ``base.generate`` is wrapped on the instance for the duration of the block (one thread at a time).
    """
    m = Measurement()
    m.peak_is_per_call = _reset_peak_rss()
    wrapped = False
    if base is not None and "generate" not in vars(base):
        original = base.generate

        def recording(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            m.generations.extend(out)
            return out

        base.generate = recording
        wrapped = True
    t0 = time.perf_counter()
    try:
        yield m
    finally:
        m.total_ms = (time.perf_counter() - t0) * 1000
        if wrapped:
            del base.generate
        m.prefill_ms = sum(g.prefill_s for g in m.generations) * 1000
        m.decode_ms = sum(g.decode_s for g in m.generations) * 1000
        m.peak_rss_bytes = peak_rss_bytes()


def kv_bytes_per_token(base: Any) -> int:
    """KV-cache bytes one token costs on ``base``: 2 (K and V) x layers x KV heads x head dim x element size."""
    cfg = base.config
    heads = getattr(cfg, "num_attention_heads", 1)
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    elem = base.dtype.itemsize if hasattr(base.dtype, "itemsize") else 4
    return int(2 * cfg.num_hidden_layers * kv_heads * head_dim * elem)
