"""Where a batched query's time goes: the server's generation path in one process, one client against eight.

``python -m bench.server_profile`` builds the memory of :mod:`bench.server` (the same facts, the real embedder
and base model), then drives :class:`memory.aio.AsyncParametricMemory` (the server's generation queue and
continuous batching, without HTTP) with retrieval-mode queries of 16 new tokens:

- ``one_client``: one client, one query after the other;
- ``steady_8``: 8 clients, each sending its next query as soon as its last one is answered;
- ``together_8``: 8 queries sent at once, nothing else in flight.

For each it prints queries/s, latency, and per query: the scheduler thread's busy wall time and CPU time, split
into prefill and decode forwards (:class:`memory.models.batching.SchedulerStats`), the rows per decode step and
per prefill, the prompt tokens each prefill fed (a kept prefix is not fed), and the query's own timings
(search, relevance, generation, total; ``wait_ms`` is the rest of the total: queued for a batch slot). The
process's CPU seconds show how much of the second core the request threads used. Throughput is bounded by
the scheduler thread when its ``busy`` share of the wall time is near 1.

Standalone: ``OMP_NUM_THREADS=1 python -m bench.server_profile [--documents N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.server import NS, _question, facts

MAX_NEW_TOKENS = 16


def _thread_cpu_s(native_id: int | None) -> float:
    """CPU seconds (user + system) of one thread of this process, from ``/proc`` (0.0 where there is none)."""
    try:
        fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _round(amem: Any, sched: Any, clients: int, requests: int, n_docs: int) -> dict[str, Any]:
    it = iter(range(requests))
    latencies: list[float] = []
    timings: list[dict[str, float]] = []

    async def client() -> None:
        while (i := next(it, None)) is not None:
            t0 = time.perf_counter()
            res = await amem.query(
                _question(i % n_docs), namespace=NS, mode="retrieval", k=2, max_new_tokens=MAX_NEW_TOKENS, log=False
            )
            latencies.append(time.perf_counter() - t0)
            timings.append(res.timings_ms)

    before = dict(vars(sched.stats))
    steps0, hits0, saved0 = sched.steps, sched.prefixes.hits, sched.prefixes.saved
    cpu0, proc0 = _thread_cpu_s(sched._thread.native_id), time.process_time()
    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    st = {k: v - before[k] for k, v in vars(sched.stats).items()}
    sched_cpu = _thread_cpu_s(sched._thread.native_id) - cpu0
    steps = sched.steps - steps0
    per = 1000 / requests
    mean = {k: float(np.mean([t.get(k, 0.0) for t in timings])) for k in ("search_ms", "relevance_ms", "generate_ms")}
    total = float(np.mean([t["total_ms"] for t in timings]))
    return {
        "clients": clients,
        "requests": requests,
        "wall_s": round(wall, 2),
        "rps": round(requests / wall, 2),
        "p50_ms": round(float(np.median(latencies)) * 1000, 1),
        "p95_ms": round(float(np.quantile(latencies, 0.95)) * 1000, 1),
        "process_cpu_s": round(time.process_time() - proc0, 2),
        "scheduler": {
            "busy_share": round(st["busy_s"] / wall, 3),
            "busy_ms_per_query": round(st["busy_s"] * per, 1),
            "cpu_ms_per_query": round(sched_cpu * per, 1),
            "prefill_ms_per_query": round(st["prefill_s"] * per, 1),
            "decode_ms_per_query": round(st["decode_s"] * per, 1),
            "other_ms_per_query": round((st["busy_s"] - st["prefill_s"] - st["decode_s"]) * per, 1),
            "prefills": st["prefills"],
            "rows_per_prefill": round(st["prefill_rows"] / max(st["prefills"], 1), 2),
            "tokens_fed_per_prompt": round(st["prefill_tokens"] / max(st["prefill_rows"], 1), 1),
            "prefix_hits": sched.prefixes.hits - hits0,
            "prefix_tokens_saved_per_prompt": round((sched.prefixes.saved - saved0) / requests, 1),
            "steps": steps,
            "rows_per_step": round(st["decode_rows"] / max(steps, 1), 2),
            "ms_per_step": round(st["decode_s"] * 1000 / max(steps, 1), 1),
        },
        "query_ms": {
            **{k: round(v, 1) for k, v in mean.items()},
            "wait_ms": round(total - sum(mean.values()), 1),
            "total_ms": round(total, 1),
        },
    }


def run(n_docs: int = 1000) -> dict[str, Any]:
    from memory.aio import AsyncParametricMemory
    from memory.api import ParametricMemory
    from memory.config import Settings

    mem = ParametricMemory(Settings.from_env(home=Path(tempfile.mkdtemp(prefix="pmem-bench-profile-"))))
    for doc_id, text in facts(n_docs):
        mem.add(text, document_id=doc_id, namespace=NS)
    mem.search("warm up the embedder", k=4, namespace=NS)
    amem = AsyncParametricMemory(mem, max_batch=8)

    async def main() -> dict[str, Any]:
        kw = {"namespace": NS, "mode": "retrieval", "k": 2, "max_new_tokens": MAX_NEW_TOKENS, "log": False}
        for i in range(3):  # load the model, start the scheduler, keep the prompts' shared prefix
            await amem.query(_question(n_docs - 1 - i), **kw)
        assert amem.generation.batching is not None
        sched = amem.generation.batching.scheduler(mem.runtime.base_model)
        return {
            "one_client": await _round(amem, sched, 1, 6, n_docs),
            "steady_8": await _round(amem, sched, 8, 32, n_docs),
            "together_8": await _round(amem, sched, 8, 8, n_docs),
        }

    load = list(os.getloadavg())
    out = asyncio.run(main())
    return {"bench": "server_profile", "documents": n_docs, "load_avg_before": load, **out}


def main() -> None:  # pragma: no cover
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=1000)
    print(json.dumps(run(parser.parse_args().documents)))


if __name__ == "__main__":  # pragma: no cover
    main()
