"""Real server processes for tests: ``ServerProcess`` (the memory server by default, or any command such as
``pmem engine``), the memory server's app factory, and ``keyed_server`` (a memory server with API keys on).

The served memory embeds with :class:`_embedders.BagOfWords` (a tiny real embedder; no model to load) unless
``PMEM_TEST_REAL_EMBEDDER=1``; queries still use the real base model. Settings come from ``PMEM_*``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _embedders import BagOfWords

REPO = Path(__file__).resolve().parents[1]


def make_app() -> Any:
    """uvicorn factory: the app over a memory built from ``PMEM_*``, limits from ``PMEM_TEST_*``."""
    from memory.api import ParametricMemory
    from memory.config import Settings
    from memory.server.app import ServerLimits, create_app

    embedder = None if os.environ.get("PMEM_TEST_REAL_EMBEDDER") == "1" else BagOfWords()
    roots = tuple(r for r in os.environ.get("PMEM_TEST_SOURCE_ROOTS", "").split(os.pathsep) if r)
    limits = ServerLimits(
        max_body_bytes=int(os.environ.get("PMEM_TEST_MAX_BODY", 2 * 2**20)),
        max_upload_bytes=int(os.environ.get("PMEM_TEST_MAX_UPLOAD", 2**20)),
        max_k=50,
        max_new_tokens=256,
        source_roots=roots,
        max_waiting_generations=int(os.environ.get("PMEM_TEST_QUEUE", 64)),
        max_batch=int(os.environ.get("PMEM_TEST_MAX_BATCH", ServerLimits.max_batch)),
        query_timeout_s=600.0,
    )  # a cold model start on a shared 2-core machine takes minutes
    auth = os.environ.get("PMEM_TEST_NO_AUTH") != "1"
    return create_app(ParametricMemory(Settings.from_env(), embedder=embedder), auth=auth, limits=limits)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server process on 127.0.0.1 and a free port, its output in ``log_path``.

    ``cmd`` is the command without its address (``--host 127.0.0.1 --port PORT`` are appended); the default is
    the memory server of :func:`make_app` (``python -m uvicorn _server:make_app --factory``). It is ready when
    ``GET health`` answers 200.
    """

    def __init__(
        self, env: dict[str, str], log_path: Path, *, cmd: Sequence[str] | None = None, health: str = "/healthz"
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.health = health
        self._log = log_path.open("wb")
        self.log_path = log_path
        if cmd is None:
            cmd = [
                sys.executable,
                "-m",
                "uvicorn",
                "_server:make_app",
                "--factory",
                "--app-dir",
                str(REPO / "tests"),
                "--log-level",
                "warning",
            ]
        argv = [*cmd, "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 90) -> ServerProcess:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}{self.health}", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not up after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def server_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PMEM_") or k.startswith("PMEM_TEST_")}
    env.update(
        PMEM_HOME=str(home),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    if os.environ.get("PMEM_MODEL_CACHE"):
        env["PMEM_MODEL_CACHE"] = os.environ["PMEM_MODEL_CACHE"]
    env.update(extra)
    return env


@dataclass
class Served:
    """A running memory server with API keys on: its URL, the keys' secrets by role, a client home beside it."""

    url: str
    keys: dict[str, str]
    client_home: Path
    proc: ServerProcess


@contextmanager
def keyed_server(tmp: Path, namespace: str, model_cache: str) -> Iterator[Served]:
    """A memory server (home ``tmp/home``) with a ``writer`` key of ``namespace`` and an ``admin`` key of every
    namespace, created in its database before it starts; stopped on exit."""
    from memory.config import Settings
    from memory.db.migrate import ensure_schema
    from memory.server.auth import KeyStore

    url = Settings.from_env(home=tmp / "home").resolved_database_url
    ensure_schema(url, auto_migrate=True)
    store = KeyStore.for_url(url)
    keys = {
        "writer": store.create(f"{namespace}-writer", role="write", namespaces=[namespace]).secret,
        "admin": store.create(f"{namespace}-admin", role="admin", namespaces=["*"]).secret,
    }
    proc = ServerProcess(server_env(tmp / "home", PMEM_MODEL_CACHE=model_cache), tmp / "server.log")
    try:
        proc.wait_ready()
        yield Served(proc.url, keys, tmp / "client-home", proc)
    finally:
        proc.stop()
