"""Helpers for the worker tests: real Celery worker subprocesses on a real Redis, and a slow stub internalizer.

The stub replaces only the *compute* of an internalization (the base model forward passes), for the crash and
race tests: everything else (the facade's ``internalize_version``, the blob store, the ``Adapter`` row with its
(version, hypernetwork) uniqueness, the Job table, Celery, Redis) is the real code. Workers load it with
``PMEM_WORKER_INTERNALIZER=_fixtures_workers:stub_internalize``.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STUB_FINGERPRINT = "stub-base@0"


class _BaseStub:
    fingerprint = STUB_FINGERPRINT


class SlowStubInternalizer:
    """Deterministic weights from the version's text; sleeps ``PMEM_TEST_SLEEP_S`` and leaves a marker file per call."""

    def __init__(self) -> None:
        from memory.internalizers import Identity

        self.identity = Identity(
            kind="cd",
            name="test-slow-stub",
            checkpoint_sha256=hashlib.sha256(b"test-slow-stub/1").hexdigest(),
            config={"test_double": True},
        )

    def internalize(self, base: Any, text: str | list[str], progress: Any = None) -> Any:
        import torch

        from memory.lora import LoraAdapter

        chunk_texts = [text] if isinstance(text, str) else list(text)

        markers = os.environ.get("PMEM_TEST_MARKERS")
        first = True
        if markers:
            Path(markers).mkdir(parents=True, exist_ok=True)
            first = not any(Path(markers).glob("start-*"))
            (Path(markers) / f"start-{os.getpid()}-{time.time_ns()}").write_text("\n".join(chunk_texts)[:200])
        if first or not os.environ.get("PMEM_TEST_SLEEP_FIRST_ONLY"):
            time.sleep(float(os.environ.get("PMEM_TEST_SLEEP_S") or 0))
        seed = int(hashlib.sha256("\x00".join(chunk_texts).encode()).hexdigest()[:8], 16)
        g = torch.Generator().manual_seed(seed)
        a, b = torch.randn(2, 8, generator=g), torch.randn(8, 2, generator=g)
        return LoraAdapter({"model.layers.0.self_attn.q_proj": (a, b)}, base_model=STUB_FINGERPRINT)


_STUB: SlowStubInternalizer | None = None


def stub_internalize(mem: Any, version_id: int, **kw: Any) -> Any:
    """Called by the worker instead of ``mem.internalize_version``: same facade call, stub compute."""
    global _STUB
    if _STUB is None:
        _STUB = SlowStubInternalizer()
    mem.runtime._base_model = _BaseStub()
    mem.runtime.internalizer = lambda method="auto": _STUB
    return mem.internalize_version(version_id, **kw)


def markers(directory: Path) -> list[Path]:
    return sorted(directory.glob("start-*")) if directory.exists() else []


def wait_for(pred: Callable[[], Any], timeout: float, what: str, every: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class WorkerProcess:
    """``celery -A workers.app worker --pool solo`` (or prefork) in a subprocess sharing the test's PMEM_HOME and
    Redis prefix."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        queues: str = "ingest,internalize",
        name: str | None = None,
        beat: bool = False,
        pool: str = "solo",
    ) -> None:
        self.log_path = log_path
        self.name = name or f"w{uuid.uuid4().hex[:6]}"
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.app",
            "worker",
            "--pool",
            pool,
            "-c",
            "1",
            "-Q",
            queues,
            "-n",
            f"{self.name}@%h",
            "-l",
            "info",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ] + (["-B"] if beat else [])
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"worker {self.name} exited with {self.proc.returncode}:\n{self.log()}")
        return b" ready." in self.log_path.read_bytes()

    def wait_ready(self, timeout: float = 90) -> WorkerProcess:
        wait_for(self.ready, timeout, f"worker {self.name} to be ready")
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL, no warm shutdown: the message stays unacknowledged in Redis."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


def worker_env(home: Path, broker_url: str, prefix: str, **extra: str) -> dict[str, str]:
    """The environment of a worker process. Converted base models are shared with the test process (as
    conftest shares them between tests), and converted here first: submitting an internalization names the
    base model's fingerprint, and a worker converting the GGUF itself would spend a test's timeout on it."""
    from memory.models import base_fingerprint

    keep = ("PMEM_TEST_", "PMEM_MODEL_CACHE")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PMEM_") or k.startswith(keep)}
    if "PMEM_MODEL_CACHE" in env:
        base_fingerprint()
    env.update(
        {
            "PMEM_HOME": str(home),
            "PMEM_BROKER_URL": broker_url,
            "PMEM_BROKER_KEYPREFIX": prefix,
            "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")]).rstrip(
                os.pathsep
            ),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "PMEM_THREADS": "1",
        }
    )
    env.update(extra)
    return env


def purge_prefix(broker_url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(broker_url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=500))
    if keys:
        client.delete(*keys)


_CALLS = {"flaky": 0}


def flaky_internalize(mem: Any, version_id: int, **kw: Any) -> Any:
    """Fails the first call in this process with a transient fault (a dropped connection), then works."""
    _CALLS["flaky"] += 1
    if _CALLS["flaky"] == 1:
        raise ConnectionResetError("connection to the database server was reset")
    return stub_internalize(mem, version_id, **kw)


def invalid_internalize(mem: Any, version_id: int, **kw: Any) -> Any:
    """A permanent fault: retrying cannot help."""
    from memory.errors import ValidationError

    raise ValidationError(f"version {version_id} has no chunks to internalize")


class RedisServer:
    """A private ``redis-server`` on a free port, no persistence: restarting it loses every message, as a
    broker restarted without persistence does. Never the shared Redis on 6379."""

    def __init__(self, workdir: Path) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(self.ping, 20, f"redis-server on port {self.port}", every=0.1)

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)
        self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same port: every queued, unacknowledged and scheduled message is gone."""
        self.stop()
        self.start()
