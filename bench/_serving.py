"""Starting a ``pmem serve`` process for a benchmark: a free loopback port, and waiting until it is healthy."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(
    url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout_s: float = 120, health: str = "/healthz"
) -> None:
    """Return once ``url`` + ``health`` answers 200; raise with the server's log when it exits or times out."""
    import httpx  # the server extra's client, imported only by the benchmarks that start a server

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}{health}", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.3)
