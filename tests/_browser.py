"""Headless Chromium (Debian's ``chromium``) driven over the DevTools protocol, for the dashboard's browser test.

No driver and no browser download: the system ``chromium`` is started with a DevTools port, and its page is
controlled with a few protocol commands over a websocket (``websockets``' sync client): navigate, evaluate
JavaScript (fill a field, click a button), read the page's text, take a screenshot.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Browser:
    """One headless Chromium with one page; close it with :meth:`close` (or use it as a context manager)."""

    def __init__(self, width: int = 1280, height: int = 900, timeout: float = 60) -> None:
        from websockets.sync.client import connect

        exe = chromium_path()
        if exe is None:
            raise FileNotFoundError("chromium is not installed (apt-get install chromium)")
        self._profile = tempfile.mkdtemp(prefix="pmem-chromium-")
        args = [
            exe,
            "--headless=new",
            "--no-sandbox",  # tests run as root in CI
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--remote-debugging-port=0",
            f"--user-data-dir={self._profile}",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        port = None
        assert self.proc.stderr is not None
        while port is None and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            if m := re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line):
                port = int(m[1])
        if port is None:
            self.close()
            raise TimeoutError("chromium did not open its DevTools port")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t["type"] == "page"]
        self._ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=64 * 2**20, open_timeout=timeout)
        self._ids = itertools.count(1)
        self.timeout = timeout
        self.send("Page.enable")
        self.send("Runtime.enable")

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        ws = getattr(self, "_ws", None)
        if ws is not None:
            ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self._profile, ignore_errors=True)

    # ------------------------------------------------------------ protocol
    def send(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self._ws.recv(timeout=self.timeout))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))

    def eval(self, expression: str) -> Any:
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression[:80]}: {r['exceptionDetails'].get('text')}")
        return r.get("result", {}).get("value")

    # ------------------------------------------------------------ pages
    def _wait_loaded(self, marker: bool) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                gone = self.eval("window.__pmemOld === undefined") if marker else True
                if gone and self.eval("document.readyState") == "complete":
                    return
            except (RuntimeError, TimeoutError):  # the page is being replaced
                pass
            time.sleep(0.05)
        raise TimeoutError(f"page did not load: {self.url}")

    def goto(self, url: str) -> None:
        self.eval("window.__pmemOld = 1")
        self.send("Page.navigate", url=url)
        self._wait_loaded(marker=True)

    def fill(self, selector: str, value: str) -> None:
        self.eval(f"document.querySelector({json.dumps(selector)}).value = {json.dumps(value)}")

    def submit(self, selector: str) -> None:
        """Click the submit button of the form ``selector`` and wait for the next page."""
        self.eval("window.__pmemOld = 1")
        self.eval(f"document.querySelector({json.dumps(selector)}).querySelector('button[type=submit]').click()")
        self._wait_loaded(marker=True)

    @property
    def url(self) -> str:
        return str(self.eval("location.href"))

    def text(self) -> str:
        return str(self.eval("document.body.innerText"))

    def screenshot(self, path: str | os.PathLike[str]) -> Path:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(data))
        return out
