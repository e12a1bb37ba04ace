"""Throughput of one Celery worker: documents per minute, and seconds from ``add`` to a ready adapter.

``pmem bench worker [--quick] --json`` starts one real worker process (``--pool solo``, both queues) on the
Redis at ``PMEM_BROKER_URL`` (or ``PMEM_TEST_REDIS_URL``, or ``redis://127.0.0.1:6379/0``) with a private
key prefix and a fresh PMEM_HOME (the converted base model is reused from the current home), then:

1. ``add_to_ready_cold_s``: one file submitted to the ingest queue until its adapter is ready, on a worker
   that has not loaded the model yet (includes the one-off lazy load);
2. ``add_to_ready_warm_s``: the same for a second file, model already loaded (skipped by ``--quick``);
3. ``docs_per_minute``: a directory of N short policy documents through the worker (parse + internalize).

Without a reachable Redis the same jobs run in-process (``mode: embedded``).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TOPICS = [
    "leave",
    "refunds",
    "travel",
    "security",
    "onboarding",
    "expenses",
    "hardware",
    "parking",
    "remote work",
    "training",
    "overtime",
    "holidays",
]


def _doc(i: int) -> str:
    topic = TOPICS[i % len(TOPICS)]
    return (
        f"# {topic.title()} policy {i}\n\n"
        f"The {topic} policy number {i} applies to every employee of the Example company. "
        f"Requests about {topic} go to the desk on floor {i % 7 + 1} and are answered within {i % 5 + 2} days. "
        f"The contact person for {topic} is employee number {1000 + 37 * i}.\n"
    )


def _redis_url() -> str | None:
    url = os.environ.get("PMEM_BROKER_URL") or os.environ.get("PMEM_TEST_REDIS_URL") or "redis://127.0.0.1:6379/0"
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
        return url
    except Exception:  # noqa: BLE001 - no broker: embedded mode
        return None


def _wait_jobs(store: Any, ids: list[int], timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        rows = [store.get(i) for i in ids]
        if all(j.state in ("succeeded", "failed") for j in rows):
            return rows
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs {ids} not finished after {timeout:.0f} s: {[j.state for j in rows]}")
        time.sleep(0.2)


def _through(mem: Any, store: Any, spec: str, method: str, timeout: float) -> tuple[float, list[Any]]:
    from workers.tasks import submit_ingest

    t0 = time.perf_counter()
    job = submit_ingest(mem, spec, method=method)
    [ingest] = _wait_jobs(store, [job.id], timeout)
    if ingest.state != "succeeded":
        raise RuntimeError(f"ingest of {spec} failed: {ingest.error}")
    children = _wait_jobs(store, ingest.result["internalize_jobs"], timeout)
    return time.perf_counter() - t0, children


def run(quick: bool = False) -> dict[str, Any]:
    from memory.api import ParametricMemory
    from memory.config import Settings
    from memory.jobs import JobStore

    # --quick also skips the warm single file: CD takes minutes per document on a CPU
    n_docs = int(os.environ.get("PMEM_BENCH_DOCS") or (2 if quick else 8))
    method = os.environ.get("PMEM_BENCH_METHOD", "auto")
    timeout = float(os.environ.get("PMEM_BENCH_TIMEOUT_S", "1800"))
    user = Settings.from_env()
    work = Path(tempfile.mkdtemp(prefix="pmem-bench-worker-"))
    home = work / "home"
    home.mkdir()
    if user.models_dir.exists():
        os.symlink(user.models_dir, home / "models")  # reuse the converted base model
    docs = work / "docs"
    for i in range(n_docs):
        (docs / "batch").mkdir(parents=True, exist_ok=True)
        (docs / "batch" / f"policy-{i:02d}.md").write_text(_doc(i))
    for name, i in (("cold.md", 100), ("warm.md", 101)):
        (docs / name).write_text(_doc(i))

    url = _redis_url()
    prefix = f"pmem-bench-{uuid.uuid4().hex[:8]}:"
    threads = str(user.threads or min(4, os.cpu_count() or 1))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PMEM_")}
    env.update(
        {
            "PMEM_HOME": str(home),
            "PMEM_BASE_MODEL": user.base_model,
            "PMEM_THREADS": threads,
            "PYTHONPATH": str(REPO),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
    )
    worker = None
    log_path = work / "worker.log"
    saved_prefix = os.environ.get("PMEM_BROKER_KEYPREFIX")
    try:
        if url:
            env.update({"PMEM_BROKER_URL": url, "PMEM_BROKER_KEYPREFIX": prefix})
            os.environ["PMEM_BROKER_KEYPREFIX"] = prefix  # this process publishes under the worker's prefix
            t0 = time.perf_counter()
            with open(log_path, "wb") as log:
                worker = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "celery",
                        "-A",
                        "workers.app",
                        "worker",
                        "--pool",
                        "solo",
                        "-c",
                        "1",
                        "-Q",
                        "ingest,internalize",
                        "-n",
                        f"bench-{prefix[11:19]}@%h",
                        "-l",
                        "info",
                        "--without-gossip",
                        "--without-mingle",
                        "--without-heartbeat",
                    ],
                    cwd=REPO,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            while b" ready." not in log_path.read_bytes():
                if worker.poll() is not None or time.perf_counter() - t0 > 180:
                    raise RuntimeError(f"the worker did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.2)
            worker_start_s = time.perf_counter() - t0
            mem = ParametricMemory(home=home, broker_url=url, base_model=user.base_model)
        else:
            worker_start_s = 0.0
            mem = ParametricMemory(home=home, base_model=user.base_model)
        store = JobStore.for_memory(mem)

        cold_s, cold = _through(mem, store, str(docs / "cold.md"), method, timeout)
        warm_s, warm = (None, []) if quick else _through(mem, store, str(docs / "warm.md"), method, timeout)
        batch_s, batch = _through(mem, store, str(docs / "batch"), method, timeout)
        jobs = cold + warm + batch
        failed = [j.error for j in jobs if j.state != "succeeded"]
        internalize_s = [j.result["seconds"] for j in batch if j.result]
        adapters = [a for a in mem.adapters() if a.status == "ready"]
        return {
            "mode": "celery-redis" if url else "embedded",
            "worker": {"pool": "solo", "concurrency": 1, "queues": ["ingest", "internalize"], "threads": int(threads)},
            "method": method,
            "adapter_method": sorted({a.method for a in adapters}),
            "documents": n_docs,
            "worker_start_s": round(worker_start_s, 2),
            "add_to_ready_cold_s": round(cold_s, 2),
            "add_to_ready_warm_s": round(warm_s, 2) if warm_s is not None else None,
            "batch_s": round(batch_s, 2),
            "docs_per_minute": round(60 * n_docs / batch_s, 2),
            "internalize_job_s_median": round(statistics.median(internalize_s), 2) if internalize_s else None,
            "ready_adapters": len(adapters),
            "failed": failed,
        }
    finally:
        if saved_prefix is None:
            os.environ.pop("PMEM_BROKER_KEYPREFIX", None)
        else:
            os.environ["PMEM_BROKER_KEYPREFIX"] = saved_prefix
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
        if url:
            import redis

            client = redis.Redis.from_url(url)
            keys = list(client.scan_iter(match=f"{prefix}*"))
            if keys:
                client.delete(*keys)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(run(quick="--quick" in sys.argv)))
