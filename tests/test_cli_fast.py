"""The ``pmem`` console script's fast path (memory/entry.py): a plain remote ``pmem ask`` answered with the standard
library alone must print what the typer command (memory/cli.py) prints, and hand everything else to typer.

Real subprocesses (``memory.entry:main``, the console script, against ``memory.cli:main``) and a real ``pmem serve``
(``_server.keyed_server``: API keys on, the real base model). The fast path runs with typer, pydantic, httpx,
rich and torch made to raise on import. The answer test generates and is marked slow.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_cli_fast.py -q
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _server import REPO, Served, keyed_server

from memory.entry import AskCall, parse_ask

NS = "fast"
QUESTION = "What is the vault code?"
DEAD = "http://127.0.0.1:9"  # the discard port: nothing listens
HEAVY = ("typer", "click", "pydantic", "httpx", "rich", "torch")


@pytest.fixture(scope="module")
def served(tmp_path_factory, model_cache) -> Iterator[Served]:
    with keyed_server(tmp_path_factory.mktemp("cli-fast"), NS, model_cache) as srv:
        r = httpx.post(
            f"{srv.url}/v1/namespaces/{NS}/documents",
            json={"text": "The vault code is 4412.", "document_id": "vault"},
            headers={"Authorization": f"Bearer {srv.keys['writer']}"},
            timeout=300,
        )
        assert r.status_code == 201, r.text
        yield srv


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory) -> str:
    """A PYTHONPATH whose typer, click, pydantic, httpx, rich and torch raise on import."""
    root = tmp_path_factory.mktemp("poisoned")
    for name in HEAVY:
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(f"raise ImportError('{name} imported by the fast pmem ask')\n")
    return os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)


def pmem(module: str, *args: str, url: str | None, key: str | None, **env: str) -> subprocess.CompletedProcess:
    """``MODULE.main()`` with ``ARGS`` as the console script calls it (this checkout), with the server in PMEM_URL
    and the key in PMEM_API_KEY."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PMEM_")}
    base.update(COLUMNS="400", NO_COLOR="1")  # rich wraps stderr at 80 columns otherwise
    if url is not None:
        base["PMEM_URL"] = url
    if key is not None:
        base["PMEM_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-c", f"from {module} import main; main()", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**base, **env},
    )


def both(
    *args: str, poisoned: str, url: str | None, key: str | None, **env: str
) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """The same command line by the fast path (heavy modules poisoned) and by typer."""
    fast = pmem("memory.entry", *args, url=url, key=key, **env, PYTHONPATH=poisoned)
    typer = pmem("memory.cli", *args, url=url, key=key, **env)
    return fast, typer


def same_ms(text: str) -> str:
    return re.sub(r"\(\d+ ms\)", "(N ms)", text)


# ---------------------------------------------------------------------------- which command lines are fast
URL = "http://127.0.0.1:8000"


@pytest.mark.parametrize(
    "args, env",
    [
        (["ask", QUESTION, "--json"], {"PMEM_URL": URL}),
        (["ask", QUESTION, "--help"], {"PMEM_URL": URL}),
        (["ask", QUESTION, "--bogus", "x"], {"PMEM_URL": URL}),
        (["ask", QUESTION, "-nfast"], {"PMEM_URL": URL}),  # click reads it; the fast path leaves it to click
        (["ask", QUESTION, "--", "x"], {"PMEM_URL": URL}),
        (["ask", QUESTION, "again"], {"PMEM_URL": URL}),
        (["ask", QUESTION, "-n"], {"PMEM_URL": URL}),
        (["ask", QUESTION, "--k", "two"], {"PMEM_URL": URL}),
        (["ask"], {"PMEM_URL": URL}),
        (["--help"], {"PMEM_URL": URL}),
        (["--verbose", "ask", QUESTION], {"PMEM_URL": URL}),
        (["search", QUESTION], {"PMEM_URL": URL}),
        (["ask", QUESTION], {}),  # in-process
        (["ask", QUESTION], {"PMEM_URL": ""}),
        (["--url=", "ask", QUESTION], {"PMEM_URL": URL}),
        (["ask", QUESTION], {"PMEM_URL": "https://memory.example:8443"}),  # TLS: httpx verifies as it does
        (["ask", QUESTION], {"PMEM_URL": "http://user:pw@127.0.0.1:8000"}),
        (["ask", QUESTION], {"PMEM_URL": "http://127.0.0.1:port"}),
        (["ask", QUESTION], {"PMEM_URL": URL, "HTTP_PROXY": "http://proxy:3128"}),
        (["ask", QUESTION], {"PMEM_URL": URL, "PMEM_API_KEY": "pmk_\u00e9"}),
    ],
)
def test_unusual_command_lines_are_typers(args: list[str], env: dict[str, str]) -> None:
    assert parse_ask(args, env) is None


def test_the_plain_shape_is_fast() -> None:
    """Options in any order, ``--opt=value``, the last one winning, ``--url`` over PMEM_URL over its alias."""
    env = {"PMEM_URL": URL + "/", "PMEM_SERVER_URL": "http://other:1"}
    assert parse_ask(["ask", QUESTION], env) == AskCall(URL, QUESTION, None, "auto", 4, 64)
    args = ["--url", "http://h:1/pmem/", "ask", "--mode=retrieval", "-n", "a", QUESTION, "--k", "2", "-n", "b"]
    assert parse_ask([*args, "--max-new-tokens=9"], env) == AskCall("http://h:1/pmem", QUESTION, "b", "retrieval", 2, 9)
    assert parse_ask(["ask", QUESTION], {"PMEM_SERVER_URL": URL}) == AskCall(URL, QUESTION, None, "auto", 4, 64)


# ---------------------------------------------------------------------------- against typer, through a server
@pytest.mark.slow  # the server generates with the real base model
def test_the_answer_is_typers(served: Served, poisoned: str) -> None:
    """The streamed answer (stdout) and the mode line (stderr) are the typer command's, byte for byte."""
    args = ("ask", QUESTION, "-n", NS, "--mode", "retrieval", "--max-new-tokens", "12")
    fast, typer = both(*args, poisoned=poisoned, url=served.url, key=served.keys["writer"])
    assert fast.returncode == typer.returncode == 0, fast.stderr[-2000:] + typer.stderr[-2000:]
    assert "4412" in fast.stdout and fast.stdout == typer.stdout
    assert "mode retrieval" in fast.stderr and same_ms(fast.stderr) == same_ms(typer.stderr)


def test_an_unknown_namespace_exits_1_as_typer_does(served: Served, poisoned: str) -> None:
    """No model call: the abstention, its reason and the known namespaces, exit 1."""
    fast, typer = both("ask", QUESTION, "-n", "nowhere", poisoned=poisoned, url=served.url, key=served.keys["admin"])
    assert fast.returncode == typer.returncode == 1, fast.stderr + typer.stderr
    assert fast.stdout == typer.stdout and "I don't know" in fast.stdout
    assert same_ms(fast.stderr) == same_ms(typer.stderr) and f"namespaces: {NS}" in fast.stderr


def test_errors_are_typers_and_never_show_the_key(served: Served, poisoned: str) -> None:
    """A bad key (401), a namespace the key lacks (403), a refused value (422), a dead server, a bad
    PMEM_NAMESPACE: the same ``error:`` line and exit 2."""
    bad = "pmk_" + "x" * 40
    cases = [
        (("ask", QUESTION, "-n", NS), served.url, bad, {}, "API key is not valid"),
        (("ask", QUESTION, "-n", "elsewhere"), served.url, served.keys["writer"], {}, "error:"),
        (("ask", QUESTION, "-n", NS, "--k", "0"), served.url, served.keys["writer"], {}, "greater than or equal"),
        (("ask", QUESTION), DEAD, bad, {}, f"cannot reach the memory server at {DEAD}: ConnectError"),
        (("ask", QUESTION), served.url, bad, {"PMEM_NAMESPACE": "Not OK"}, "invalid namespace 'Not OK'"),
    ]
    for args, url, key, env, says in cases:
        fast, typer = both(*args, poisoned=poisoned, url=url, key=key, **env)
        assert (fast.returncode, fast.stdout, fast.stderr) == (typer.returncode, typer.stdout, typer.stderr), args
        assert fast.returncode == 2 and fast.stderr.startswith("error: ") and says in fast.stderr, fast.stderr
        for secret in (bad, *served.keys.values()):
            assert secret not in fast.stdout + fast.stderr


def test_everything_else_goes_to_typer() -> None:
    """``--json``, an unknown option, ``--help`` and other commands: typer's output (no server needed)."""
    as_json = pmem("memory.entry", "ask", QUESTION, "--json", url=DEAD, key=None)
    assert as_json.returncode == 2
    assert json.loads(as_json.stdout.splitlines()[-1])["type"] == "RemoteError"  # only typer prints JSON
    for args in (("ask", QUESTION, "--bogus"), ("--help",), ("ask", "--help")):
        fast = pmem("memory.entry", *args, url=DEAD, key=None)
        typer = pmem("memory.cli", *args, url=DEAD, key=None)
        assert fast.returncode == typer.returncode, args
        assert (fast.stdout, fast.stderr) == (typer.stdout, typer.stderr), args
    assert "No such option" in pmem("memory.entry", "ask", QUESTION, "--bogus", url=DEAD, key=None).stderr


def test_the_console_script_is_the_fast_entry() -> None:
    import tomllib

    scripts = tomllib.loads((Path(REPO) / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["pmem"] == "memory.entry:main"
