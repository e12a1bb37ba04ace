"""The dashboard in a real browser: headless Chromium against a real ``pmem serve`` process.

Sign in with a key, add a document, internalize it and watch its job finish, see its adapter, ask a question
(mode, reason, adapters, chunks); a key of another namespace sees nothing of it. Chromium is Debian's
``chromium`` package (``.ci/run`` installs it); without it the test skips, or fails when ``CI`` is set.
Screenshots go to ``$PMEM_TEST_SCREENSHOTS`` when set (the README's come from here), else to the test's temp dir.

Run: ``.venv/bin/python -m pytest tests/test_ui_browser.py -q``
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from _browser import Browser, chromium_path
from _server import ServerProcess, server_env

pytestmark = pytest.mark.slow

VAULT = (
    "Office handbook, security section.\n\n"
    "The office vault code is 7342. Only the office manager may open the vault.\n\n"
    "Visitors sign in at the front desk."
)


@pytest.fixture
def server(tmp_path, model_cache):
    from memory.config import Settings
    from memory.db.migrate import ensure_schema
    from memory.server.auth import KeyStore

    if chromium_path() is None:
        msg = "chromium is not installed (apt-get install chromium; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    home = tmp_path / "home"
    url = Settings.from_env(home=home).resolved_database_url
    ensure_schema(url, auto_migrate=True)
    keys = KeyStore.for_url(url)
    secrets = {
        "writer": keys.create("handbook-writer", role="write", namespaces=["handbook"]).secret,
        "other": keys.create("other-team", role="write", namespaces=["other"]).secret,
    }
    proc = ServerProcess(server_env(home, PMEM_MODEL_CACHE=model_cache), tmp_path / "server.log").wait_ready()
    try:
        yield proc, secrets
    finally:
        proc.stop()


def _sign_in(b: Browser, url: str, key: str) -> None:
    b.goto(url + "/ui")
    assert "/ui/login" in b.url
    b.fill("#key", key)
    b.submit("form[action='/ui/login']")


def test_dashboard_in_a_real_browser(server, tmp_path) -> None:
    proc, keys = server
    shots = Path(os.environ.get("PMEM_TEST_SCREENSHOTS") or tmp_path / "screenshots")
    with Browser() as b:
        b.goto(proc.url + "/ui")
        assert "Sign in" in b.text()
        _sign_in(b, proc.url, keys["writer"])
        assert b.url.endswith("/ui") and "handbook-writer" in b.text()

        # add a document
        b.goto(proc.url + "/ui/ns/handbook")
        b.fill("#add-form input[name=document_id]", "handbook/security")
        b.fill("#add-form input[name=title]", "Security")
        b.fill("#add-form textarea[name=text]", VAULT)
        b.submit("#add-form")
        assert b.url.endswith("/ui/ns/handbook/documents/handbook/security")
        assert "The office vault code is 7342." in b.text() and "v1" in b.text()

        # a second version: versions and the diff
        b.goto(proc.url + "/ui/ns/handbook")
        b.fill("#add-form input[name=document_id]", "handbook/security")
        b.fill("#add-form textarea[name=text]", VAULT.replace("at the front desk.", "at reception and wear a badge."))
        b.submit("#add-form")
        assert "v2" in b.text() and "current" in b.text()
        diff = b.eval("document.querySelector('#diff').innerText")
        assert "-Visitors sign in at the front desk." in diff and "+Visitors sign in at reception" in diff

        # internalize it and watch the job finish
        b.submit("#internalize-form")
        assert b.url.endswith("/ui/ns/handbook/jobs") and "internalize" in b.text()
        b.screenshot(shots / "jobs.png")
        deadline = time.monotonic() + 600
        while "succeeded" not in b.text():
            assert "failed" not in b.text(), b.text()
            assert time.monotonic() < deadline, f"the job did not finish:\n{proc.log()}"
            time.sleep(2)
            b.goto(proc.url + "/ui/ns/handbook/jobs")

        # its adapter, with provenance
        b.goto(proc.url + "/ui/ns/handbook/documents/handbook/security")
        text = b.text()
        assert "ready" in text and "smollm2" in text.lower(), text
        b.screenshot(shots / "document.png")
        b.goto(proc.url + "/ui/ns/handbook")
        assert "handbook/security" in b.text()
        b.screenshot(shots / "namespace.png")

        # ask a question
        b.fill("#query-form input[name=question]", "What is the office vault code?")
        b.eval("document.querySelector('#query-form select[name=mode]').value = 'hybrid'")
        b.submit("#query-form")
        answer = b.text()
        assert b.eval("document.querySelector('#mode').textContent") == "hybrid"
        assert b.eval("document.querySelector('#reason').textContent").strip()
        assert "handbook/security" in answer and "7342" in answer  # the adapter and the chunk used
        b.screenshot(shots / "answer.png")
        b.goto(proc.url + "/ui/ns/handbook/experiments")  # the query log has it, with its mode
        assert "What is the office vault code?" in b.eval("document.querySelector('#queries').innerText")

        # another namespace's key sees nothing of this one
        b.submit("form[action='/ui/logout']")
        _sign_in(b, proc.url, keys["other"])
        assert "handbook" not in b.text()
        for path in ["/ui/ns/handbook", "/ui/ns/handbook/documents/handbook/security", "/ui/ns/handbook/jobs"]:
            b.goto(proc.url + path)
            assert "Not allowed" in b.text() and "7342" not in b.text() and "Security" not in b.text()
