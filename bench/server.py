"""Server benchmark: the goals of issue 23, the old one-at-a-time path measured beside the batched one.

``pmem bench server [--quick] --json`` calls :func:`run`. One memory (a fresh home: SQLite, the real
all-MiniLM-L6-v2 embedder and the real base model) holds generated facts, eight of them with an instant
(Doc-to-LoRA) adapter. ``pmem serve`` runs in its own process on 127.0.0.1 with API keys on, twice: first with
``PMEM_SERVER_MAX_BATCH=1`` (``one_at_a_time``: one generation at a time, the path before continuous batching),
then with the server's default (``batched``); a server that does not know the setting ignores it, and both
paths then measure the same thing. Against each:

- ``query``: ``POST /query`` (``mode="retrieval"``, a short answer) requests per second with p50/p95 at 1, 8
  and 32 clients; each client is a thread with its own keep-alive connection. A 503 ``busy`` is counted apart
  from errors (the bound on waiting generations is the server's default);
- ``adapters``: 8 ``parametric`` queries in flight at once, each naming a different document (so a different
  adapter per row), against 8 that all name the same document; ``mixed_vs_same`` is mixed wall time / same wall
  time. Rows decode in step, so a batch lasts as long as its longest answer, and the adapters' answers differ in
  length: this ratio also measures how long each adapter's answer is;
- ``engine_adapters``: the same comparison with equal answer lengths, the way vLLM's serving benchmark makes
  them: a ``pmem engine`` process (``--max-batch`` as the path's server) with the 8 adapters loaded in PEFT
  format gets 8 completions in flight at once (``max_tokens`` 16, ``ignore_eos``, greedy), each naming another
  adapter, against 8 on one adapter; the median of ``ENGINE_ROUNDS`` alternating rounds. This is the cost of
  mixing adapters in one batch, the issue's goal;
- ``single_client``: one client's query p50 through the server against the same call in this process;
- ``ask_first_token``: ``pmem ask`` through the server as a new process, started as the ``pmem`` console script
  starts (``memory.entry:main``, whose plain remote ask needs only the standard library), from process start to
  the first byte of the answer on its stdout; ``ask_first_token_typer`` the same through the typer app
  (``memory.cli:main``, the console script before).

Each query run also holds ``server_ms``, the means of the server's own timings of its queries (search,
relevance, generation, total), and ``answer_tokens`` (mean, max): rows decode in step, so a batch lasts as long
as its longest answer, and the mixed and same adapter runs answer different questions.
``search`` (``POST /search`` at 1, 8 and 32 clients) is measured once, on the batched server. ``goals`` holds
each of the issue's thresholds with the batched path's value and a boolean. The machine's load average is
recorded: on a shared CPU the figures also measure the neighbours.

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


def _drive(clients: int, requests: int, make_call: Callable[[], Callable[[int], Any]]) -> dict[str, Any]:
    """``clients`` threads share ``requests`` calls; each thread builds its own caller (its connection). A call
    that returns the query's answer (a dict) adds the means of its ``timings_ms`` to ``server_ms`` (where the
    server spent each request's time: search, relevance, generation, and the rest of ``total_ms``, mostly
    waiting to be admitted to the batch) and its ``completion_tokens`` to ``answer_tokens`` (mean and max: rows
    decode in step, so a batch's wall time follows its longest answer)."""
    latencies: list[float] = []
    timings: list[dict[str, float]] = []
    tokens: list[int] = []
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
                got = call(i)
            except Exception as e:  # noqa: BLE001 - counted, reported
                errors.append(f"{type(e).__name__}: {e}")
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)
                if isinstance(got, dict):
                    timings.append(got.get("timings_ms") or {})
                    tokens.append(int(got.get("completion_tokens") or 0))

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    out = _stats(latencies, time.perf_counter() - t0)
    if timings:
        keys = sorted({k for t in timings for k in t})
        out["server_ms"] = {k: round(float(np.mean([t.get(k, 0.0) for t in timings])), 1) for k in keys}
        out["answer_tokens"] = {"mean": round(float(np.mean(tokens)), 1), "max": max(tokens)}
    out["errors"] = len(errors)
    if errors:
        out["first_error"] = errors[0][:300]
    return out


PATHS = {"one_at_a_time": "1", "batched": None}  # PMEM_SERVER_MAX_BATCH for each server (None: its default)
ADAPTER_DOCS = 8
GOALS = {  # issue 23: the batched path's figure, and the bound it must meet
    "query_throughput_8_vs_1": (">=", 4.0),
    "adapter_mix_vs_one_adapter": ("<=", 1.3),
    "single_client_server_vs_in_process": ("<=", 1.15),
    "ask_first_token_s": ("<=", 0.5),
}


class Busy(Exception):
    """The server answered 503 busy: counted apart from errors."""


def _drive_counting_busy(clients: int, requests: int, make_call: Callable[[], Callable[[int], Any]]) -> dict[str, Any]:
    """:func:`_drive`, with the 503 ``busy`` answers counted as ``busy`` instead of errors."""
    busy = 0
    lock = threading.Lock()

    def make() -> Callable[[int], Any]:
        call = make_call()

        def counted(i: int) -> Any:
            nonlocal busy
            try:
                return call(i)
            except Busy:
                with lock:
                    busy += 1
                raise

        return counted

    out = _drive(clients, requests, make)
    out["busy"] = busy
    out["errors"] -= busy
    if not out["errors"]:
        out.pop("first_error", None)
    return out


def _start_server(
    env: dict[str, str],
    log_path: Path,
    command: tuple[str, ...] = ("serve", "--query-timeout", "1800"),
    health: str = "/healthz",
) -> tuple[subprocess.Popen[bytes], str]:
    """``pmem <command>`` on a free loopback port, once ``health`` answers (``pmem engine``'s is ``/health``)."""
    port = free_port()
    cmd = [sys.executable, "-m", "memory.cli", *command, "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log_path, health=health)
    except BaseException:
        _stop(proc)
        raise
    return proc, url


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def ask_first_token(
    env: dict[str, str], question: str, max_new_tokens: int, runs: int, entry: str = "memory.entry"
) -> dict[str, Any]:
    """Seconds from starting ``pmem ask`` (through the server in ``env``) to the first byte of its answer, the
    process started as the console script starts it (``entry``'s ``main()``)."""
    cmd = [sys.executable, "-c", f"from {entry} import main; main()", "ask", question, "-n", NS]
    cmd += ["--mode", "retrieval", "--k", "2", "--max-new-tokens", str(max_new_tokens)]
    firsts, totals = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None
        first = proc.stdout.read(1)
        t1 = time.perf_counter()
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0 or not first:
            raise RuntimeError(f"pmem ask failed ({proc.returncode}): {err.decode(errors='replace')[-500:]}")
        firsts.append(t1 - t0)
        totals.append(time.perf_counter() - t0)
    return {
        "runs": runs,
        "first_token_s": round(float(np.median(firsts)), 3),
        "first_token_min_s": round(min(firsts), 3),
        "answer_s": round(float(np.median(totals)), 3),
    }


ENGINE_ROUNDS = 3


def engine_adapters(
    env: dict[str, str],
    log_path: Path,
    peft_dirs: list[Path],
    prompts: list[str],
    max_tokens: int,
    max_batch: str,
) -> dict[str, Any]:
    """On a ``pmem engine`` process with ``max_batch`` rows and the adapters of ``peft_dirs`` loaded: 8 greedy
    completions of ``max_tokens`` tokens exactly (``ignore_eos``) in flight at once, each prompt ``i`` with
    adapter ``i`` (mixed) or all with adapter 0 (same); :data:`ENGINE_ROUNDS` rounds of each, alternating."""
    import httpx

    proc, url = _start_server(env, log_path, ("engine", "--max-batch", max_batch), health="/health")
    try:
        names = [f"bench-{i}" for i in range(len(peft_dirs))]
        for name, path in zip(names, peft_dirs, strict=True):
            r = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)}, timeout=60)
            r.raise_for_status()

        def caller(adapter: Callable[[int], int]) -> Callable[[], Callable[[int], Any]]:
            def make() -> Callable[[int], Any]:
                client = httpx.Client(base_url=url, timeout=1800)

                def call(i: int) -> None:
                    body = {"model": names[adapter(i)], "prompt": prompts[i], "max_tokens": max_tokens}
                    r = client.post("/v1/completions", json={**body, "temperature": 0, "ignore_eos": True})
                    r.raise_for_status()
                    if r.json()["usage"]["completion_tokens"] != max_tokens:
                        raise RuntimeError(f"expected {max_tokens} tokens: {r.text[:200]}")

                return call

            return make

        n = len(names)
        _drive(n, n, caller(lambda i: i))  # warm-up: every adapter's first use
        same, mixed = [], []
        for _ in range(ENGINE_ROUNDS):
            same.append(_drive(n, n, caller(lambda i: 0)))
            mixed.append(_drive(n, n, caller(lambda i: i)))
    finally:
        _stop(proc)
    same_s = float(np.median([r["wall_s"] for r in same]))
    mixed_s = float(np.median([r["wall_s"] for r in mixed]))
    return {
        "max_batch": max_batch,
        "max_tokens": max_tokens,
        "same_adapter_wall_s": [r["wall_s"] for r in same],
        "mixed_adapters_wall_s": [r["wall_s"] for r in mixed],
        "errors": sum(r["errors"] for r in same + mixed),
        "mixed_vs_same": round(mixed_s / same_s, 2) if same_s else None,
    }


def _goal(name: str, value: float | None) -> dict[str, Any]:
    op, bound = GOALS[name]
    met = None if value is None else (value >= bound if op == ">=" else value <= bound)
    return {"value": value, "threshold": f"{op} {bound}", "met": met}


def run(quick: bool = False, **_: Any) -> dict[str, Any]:
    import httpx

    from memory.api import ParametricMemory
    from memory.config import Settings
    from memory.lora.io import save_peft
    from memory.server.auth import KeyStore

    n_docs = 200 if quick else 1000
    search_requests = {1: 40, 8: 80, 32: 160} if quick else {1: 100, 8: 300, 32: 600}
    query_requests = {1: 4, 8: 16, 32: 32} if quick else {1: 8, 8: 32, 32: 64}
    single_requests = 4 if quick else 10
    ask_runs = 3 if quick else 5
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
    # Load (and on first use convert) the base model here first: the servers then find it converted.
    mem.query(_question(0), namespace=NS, mode="retrieval", k=2, max_new_tokens=max_new_tokens, log=False)
    t0 = time.perf_counter()
    adapted = [mem.internalize(f"fact-{i}", namespace=NS).method for i in range(ADAPTER_DOCS)]
    internalize_s = time.perf_counter() - t0
    peft_dirs = []
    for d in range(ADAPTER_DOCS):  # the engine's copies of the 8 adapters, in PEFT format
        info = mem.adapters(namespace=NS, document_id=f"fact-{d}")[0]
        peft_dirs.append(save_peft(mem.load_adapter(info), home / "peft" / f"fact-{d}", "bench"))
    key = KeyStore.for_memory(mem).create("bench", role="read", namespaces=[NS]).secret
    headers = {"Authorization": f"Bearer {key}"}

    def query_body(i: int) -> dict[str, Any]:
        q = _question(i % n_docs)
        return {"question": q, "mode": "retrieval", "k": 2, "max_new_tokens": max_new_tokens, "log": False}

    def parametric_body(doc: Callable[[int], int]) -> Callable[[int], dict[str, Any]]:
        """Request ``i`` asks question ``i`` (the same 8 questions in both adapter runs, so that their answers'
        lengths, which a batch's time follows, are alike) of document ``doc(i)``'s adapter."""

        def body(i: int) -> dict[str, Any]:
            d = doc(i)
            return {
                "question": _question(i),
                "mode": "parametric",
                "document_ids": [f"fact-{d}"],
                "max_new_tokens": max_new_tokens,
                "log": False,
            }

        return body

    def in_process(i: int) -> dict[str, Any]:
        q = _question(i % n_docs)
        r = mem.query(q, namespace=NS, mode="retrieval", k=2, max_new_tokens=max_new_tokens, log=False)
        return {"timings_ms": r.timings_ms, "completion_tokens": r.completion_tokens}

    result: dict[str, Any] = {
        "documents": n_docs,
        "add_docs_per_s": round(n_docs / add_s, 1),
        "adapters": {
            "documents": ADAPTER_DOCS,
            "methods": sorted(set(adapted)),
            "internalize_s": round(internalize_s, 2),
        },
        "query": {"mode": "retrieval", "k": 2, "max_new_tokens": max_new_tokens},
        "clients": list(CLIENTS),
        "load_avg_before": list(os.getloadavg()),
        "paths": {},
    }
    for path, max_batch in PATHS.items():
        env = {**os.environ, **env_home, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("PMEM_SERVER_MAX_BATCH", None)
        if max_batch is not None:
            env["PMEM_SERVER_MAX_BATCH"] = max_batch
        proc, url = _start_server(env, home / f"server-{path}.log")
        try:

            def http_caller(
                route: str, body: Callable[[int], dict[str, Any]], url: str = url
            ) -> Callable[[], Callable[[int], Any]]:
                def make() -> Callable[[int], Any]:
                    client = httpx.Client(base_url=url, headers=headers, timeout=1800)

                    def call(i: int) -> Any:
                        r = client.post(f"/v1/namespaces/{NS}{route}", json=body(i))
                        if r.status_code == 503 and "busy" in r.text:
                            raise Busy(r.text[:200])
                        if r.status_code != 200:
                            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
                        return r.json() if route == "/query" else None

                    return call

                return make

            http_caller("/search", lambda i: {"query": _question(i), "k": 4})()(0)  # warm the embedder
            http_caller("/query", query_body)()(0)  # and the model
            http_caller("/query", parametric_body(lambda i: 0))()(0)  # and the adapters' path
            out: dict[str, Any] = {"max_batch_env": max_batch, "query": {}}
            for c in CLIENTS:
                out["query"][str(c)] = _drive_counting_busy(c, query_requests[c], http_caller("/query", query_body))
            q = out["query"]
            out["query_throughput_8_vs_1"] = round(q["8"]["rps"] / q["1"]["rps"], 2) if q["1"]["rps"] else None
            same = _drive(ADAPTER_DOCS, ADAPTER_DOCS, http_caller("/query", parametric_body(lambda i: 0)))
            mixed = _drive(ADAPTER_DOCS, ADAPTER_DOCS, http_caller("/query", parametric_body(lambda i: i)))
            out["adapters"] = {
                "same_adapter": same,
                "mixed_adapters": mixed,
                "mixed_vs_same": round(mixed["wall_s"] / same["wall_s"], 2) if same["wall_s"] else None,
            }
            server_1 = _drive(1, single_requests, http_caller("/query", query_body))
            local_1 = _drive(1, single_requests, lambda: in_process)
            out["single_client"] = {
                "server": server_1,
                "in_process": local_1,
                "server_vs_in_process": round(server_1["p50_ms"] / local_1["p50_ms"], 2),
            }
            out["engine_adapters"] = engine_adapters(
                env,
                home / f"engine-{path}.log",
                peft_dirs,
                [_question(q) for q in range(ADAPTER_DOCS)],
                max_new_tokens,
                max_batch or "8",  # the server's default batch, as the engine's
            )
            ask_env = {**env, "PMEM_URL": url, "PMEM_API_KEY": key}
            out["ask_first_token"] = ask_first_token(ask_env, _question(3), max_new_tokens, ask_runs)
            out["ask_first_token_typer"] = ask_first_token(
                ask_env, _question(3), max_new_tokens, ask_runs, entry="memory.cli"
            )
            if path == "batched":
                search = http_caller("/search", lambda i: {"query": _question(i % n_docs), "k": 4})
                result["search"] = {str(c): _drive(c, search_requests[c], search) for c in CLIENTS}
            result["paths"][path] = out
        finally:
            _stop(proc)
    batched = result["paths"]["batched"]
    result["load_avg_after"] = list(os.getloadavg())
    result["goals"] = {
        "query_throughput_8_vs_1": _goal("query_throughput_8_vs_1", batched["query_throughput_8_vs_1"]),
        "errors_at_32_clients_other_than_busy": {
            "value": batched["query"]["32"]["errors"],
            "threshold": "== 0",
            "met": batched["query"]["32"]["errors"] == 0,
        },
        # equal answer lengths (the engine, ignore_eos); the memory server's own ratio is in paths.batched.adapters
        "adapter_mix_vs_one_adapter": _goal("adapter_mix_vs_one_adapter", batched["engine_adapters"]["mixed_vs_same"]),
        "single_client_server_vs_in_process": _goal(
            "single_client_server_vs_in_process", batched["single_client"]["server_vs_in_process"]
        ),
        "ask_first_token_s": _goal("ask_first_token_s", batched["ask_first_token"]["first_token_s"]),
    }
    return result


def main() -> None:  # pragma: no cover
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(json.dumps(run(quick=parser.parse_args().quick)))


if __name__ == "__main__":  # pragma: no cover
    main()
