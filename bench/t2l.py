"""Text-to-LoRA adapter generation latency: one description -> one LoraAdapter (encoder + hypernetwork).

``pmem bench t2l [--quick] --json`` prints p50/p95 in milliseconds for the committed checkpoint (or an
untrained hypernetwork of the same shape when no checkpoint is present). Goal: p50 < 50 ms on the CPU.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

DESCRIPTIONS = (
    "Answer with the number only.",
    "Convert the text to uppercase.",
    "Reply in one word: positive or negative.",
    "Return the email address mentioned in the message.",
    "Wrap your answer in square brackets.",
    "Write the date as day/month/year.",
)


def run(quick: bool = False) -> dict[str, Any]:
    """Latency of ``T2LHypernetwork.generate([description])``, single adapter, after one warm-up call."""
    import torch

    from memory.evaluation.t2l import DEFAULT_CHECKPOINT
    from memory.hyper.t2l import T2LConfig, T2LHypernetwork
    from memory.hyper.t2l_text import DescriptionEncoder

    if (DEFAULT_CHECKPOINT / "model.safetensors").exists():
        net, source = T2LHypernetwork.load(DEFAULT_CHECKPOINT), "checkpoint"
    else:  # same shape as SmolLM2-135M q/v, untrained
        dims = {"self_attn.q_proj": (576, 576), "self_attn.v_proj": (576, 192)}
        net, source = T2LHypernetwork(T2LConfig(n_layers=30, module_dims=dims)).eval(), "untrained"
    encoder = DescriptionEncoder.load()
    # one adapter is a handful of small matmuls: a second OpenMP thread only adds hand-off cost
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    n = 20 if quick else 100
    net.generate([DESCRIPTIONS[0]], encoder=encoder)  # warm-up
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        net.generate([DESCRIPTIONS[i % len(DESCRIPTIONS)]], encoder=encoder)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    t0 = time.perf_counter()
    net.generate(list(DESCRIPTIONS) * 4, encoder=encoder)
    batch_ms = (time.perf_counter() - t0) * 1000 / (len(DESCRIPTIONS) * 4)
    torch.set_num_threads(threads)
    return {
        "hypernetwork": source,
        "size": net.config.size,
        "params": net.num_parameters(),
        "threads": 1,
        "n": n,
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(times[min(n - 1, int(0.95 * n))], 2),
        "batched_ms_per_adapter": round(batch_ms, 2),
        "goal_ms": 50,
    }
