"""Server benchmark: search and query requests per second and p50/p95 latency at 1, 8 and 32 clients.

``pmem bench server [--quick] --json`` calls :func:`run`. One memory (a fresh home: SQLite, the real
all-MiniLM-L6-v2 embedder and the real base model) holds generated facts. The same workload runs twice:

- ``server``: ``pmem serve`` in its own process on 127.0.0.1 with API keys on; each client is a thread
  with its own keep-alive HTTP connection (``httpx``), calling ``POST /search`` and ``POST /query``;
- ``in_process``: the same number of threads calling ``ParametricMemory.search`` / ``.query`` directly.

Queries use ``mode="retrieval"`` (the path every query can take, no adapters needed) and a short answer;
the server runs one generation at a time (its generation queue), so query latency grows with clients
while throughput stays that of one model. The machine's load average is recorded: on a shared CPU the
figures also measure the neighbours.

Standalone: ``python -m bench.server --quick``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench._serving import free_port, wait_healthy

CLIENTS = (1, 8, 32)
NS = "bench"
_COLOURS = ["red", "green", "blue", "amber", "violet", "teal", "ochre", "silver"]
_THINGS = ["door", "locker", "badge", "printer", "bicycle", "kettle", "server rack", "notebook"]


def facts(n: int) -> list[tuple[str, str]]:
    """``n`` short documents ``(id, text)`` and nothing else: one fact each."""
    return [
        (
            f"fact-{i}",
            (
                f"The {_THINGS[i % len(_THINGS)]} in room {100 + i} is {_COLOURS[(i * 7) % len(_COLOURS)]} "
                f"and its code is {1000 + (i * 37) % 9000}."
            ),
        )
        for i in range(n)
    ]


def _question(i: int) -> str:
    return f"What colour is the {_THINGS[i % len(_THINGS)]} in room {100 + i}?"


def _stats(latencies: list[float], wall_s: float) -> dict[str, Any]:
    a = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "rps": round(len(latencies) / wall_s, 2),
        "p50_ms": round(float(np.median(a)), 1),
        "p95_ms": round(float(np.quantile(a, 0.95)), 1),
        "wall_s": round(wall_s, 2),
    }


def _drive(clients: int, requests: int, make_call: Callable[[], Callable[[int], None]]) -> dict[str, Any]:
    """``clients`` threads share ``requests`` calls; each thread builds its own caller (its connection)."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def worker() -> None:
        call = make_call()
        barrier.wait()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t0 = time.perf_counter()
            try:
                call(i)
            except Exception as e:  # noqa: BLE001 - counted, reported
                errors.append(f"{type(e).__name__}: {e}")
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    out = _stats(latencies, time.perf_counter() - t0)
    out["errors"] = len(errors)
    if errors:
        out["first_error"] = errors[0][:300]
    return out


def run(quick: bool = False, **_: Any) -> dict[str, Any]:
    import httpx

    from memory.api import ParametricMemory
    from memory.config import Settings
    from memory.server.auth import KeyStore

    n_docs = 200 if quick else 1000
    search_requests = {1: 40, 8: 80, 32: 160} if quick else {1: 100, 8: 300, 32: 600}
    query_requests = {1: 3, 8: 8, 32: 32} if quick else {1: 8, 8: 16, 32: 64}
    max_new_tokens = 8 if quick else 16
    home = Path(tempfile.mkdtemp(prefix="pmem-bench-server-"))
    env_home = {"PMEM_HOME": str(home)}
    if os.environ.get("PMEM_MODEL_CACHE"):
        env_home["PMEM_MODEL_CACHE"] = os.environ["PMEM_MODEL_CACHE"]
    settings = Settings.from_env(home=home)
    mem = ParametricMemory(settings)
    t0 = time.perf_counter()
    for doc_id, text in facts(n_docs):
        mem.add(text, document_id=doc_id, namespace=NS)
    add_s = time.perf_counter() - t0
    mem.search("warm up the embedder", k=4, namespace=NS)  # embeds every chunk once (stored on the rows)
    # Load (and on first use convert) the base model here first: the server then finds it converted.
    mem.query(_question(0), namespace=NS, mode="retrieval", k=2, max_new_tokens=max_new_tokens, log=False)
    key = KeyStore.for_memory(mem).create("bench", role="read", namespaces=[NS]).secret

    port = free_port()
    env = {**os.environ, **env_home, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log_path = home / "server.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "memory.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--max-waiting",
            "256",
            "--query-timeout",
            "1800",
        ],
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {key}"}
    result: dict[str, Any] = {
        "documents": n_docs,
        "add_docs_per_s": round(n_docs / add_s, 1),
        "query": {"mode": "retrieval", "k": 2, "max_new_tokens": max_new_tokens},
        "clients": list(CLIENTS),
        "load_avg_before": list(os.getloadavg()),
    }
    try:
        wait_healthy(url, proc, log_path)

        def http_caller(path: str, body: Callable[[int], dict[str, Any]]) -> Callable[[], Callable[[int], None]]:
            def make() -> Callable[[int], None]:
                client = httpx.Client(base_url=url, headers=headers, timeout=600)

                def call(i: int) -> None:
                    r = client.post(f"/v1/namespaces/{NS}{path}", json=body(i))
                    if r.status_code != 200:
                        raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")

                return call

            return make

        def search_body(i: int) -> dict[str, Any]:
            return {"query": _question(i % n_docs), "k": 4}

        def query_body(i: int) -> dict[str, Any]:
            return {
                "question": _question(i % n_docs),
                "mode": "retrieval",
                "k": 2,
                "max_new_tokens": max_new_tokens,
                "log": False,
            }

        # warm the server's embedder and model
        http_caller("/search", search_body)()(0)
        http_caller("/query", query_body)()(0)

        def local(fn: Callable[[int], Any]) -> Callable[[], Callable[[int], None]]:
            return lambda: fn

        server: dict[str, Any] = {"search": {}, "query": {}}
        in_process: dict[str, Any] = {"search": {}, "query": {}}
        for c in CLIENTS:
            server["search"][str(c)] = _drive(c, search_requests[c], http_caller("/search", search_body))
            in_process["search"][str(c)] = _drive(
                c, search_requests[c], local(lambda i: mem.search(_question(i % n_docs), k=4, namespace=NS))
            )
        for c in CLIENTS:
            server["query"][str(c)] = _drive(c, query_requests[c], http_caller("/query", query_body))
            in_process["query"][str(c)] = _drive(
                c,
                query_requests[c],
                local(
                    lambda i: mem.query(
                        _question(i % n_docs),
                        namespace=NS,
                        mode="retrieval",
                        k=2,
                        max_new_tokens=max_new_tokens,
                        log=False,
                    )
                ),
            )
        result.update(server=server, in_process=in_process, load_avg_after=list(os.getloadavg()))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return result


def main() -> None:  # pragma: no cover
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(json.dumps(run(quick=parser.parse_args().quick)))


if __name__ == "__main__":  # pragma: no cover
    main()
