"""The ``pmem`` console script, run as a real subprocess (as a user would)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PMEM = str(Path(sys.executable).parent / "pmem")


def run(*args: str, input: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PMEM, *args], input=input, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )


def last_json(proc: subprocess.CompletedProcess):
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_add_ls_show_history_rollback_rm_roundtrip():
    added = last_json(run("add", "-", "--id", "policy", "--json", input="Refunds within 30 days."))
    assert added[0]["status"] == "created"
    last_json(run("add", "-", "--id", "policy", "--json", input="Refunds within 45 days."))
    docs = last_json(run("ls", "--json"))
    assert [d["id"] for d in docs] == ["policy"] and docs[0]["version"]["number"] == 2
    shown = last_json(run("show", "policy", "--text", "--json"))
    assert shown["text"] == "Refunds within 45 days."
    hist = last_json(run("history", "policy", "--diff", "--json"))
    assert [v["number"] for v in hist] == [1, 2] and "+Refunds within 45 days." in hist[1]["diff"]
    back = last_json(run("rollback", "policy", "1", "--json"))
    assert back["version"]["number"] == 1
    removed = last_json(run("rm", "policy", "--json"))
    assert removed["versions"] == 2 and removed["blobs_removed"] == 2
    assert last_json(run("ls", "--json")) == []


def test_namespaces_on_the_command_line():
    run("add", "-", "--id", "x", "-n", "alpha", input="alpha text")
    assert last_json(run("ls", "-n", "beta", "--json")) == []
    assert [d["id"] for d in last_json(run("ls", "-n", "alpha", "--json"))] == ["x"]


@pytest.mark.parametrize(
    "args", [("show", "missing"), ("rm", "missing"), ("ls", "-n", "BAD NS"), ("rollback", "missing", "1")]
)
def test_errors_are_clear_and_nonzero(args):
    proc = run(*args)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "Traceback" not in proc.stderr


def test_binary_stdin_is_refused():
    proc = run("add", "-", input="\x00\x01\x02")
    assert proc.returncode == 2 and "NUL" in proc.stderr


def test_db_commands_on_the_embedded_database():
    cur = last_json(run("db", "current", "--json"))
    assert cur["current"] is None  # nothing used the fresh home yet
    assert run("db", "upgrade").returncode == 0
    cur = last_json(run("db", "current", "--json"))
    assert cur["current"] == cur["head"]
    check = run("db", "check")
    assert check.returncode == 0 and "match" in check.stdout
    assert run("db", "downgrade", "base").returncode == 0
    assert last_json(run("db", "current", "--json"))["current"] is None


def test_db_upgrade_on_postgres(pg_url):
    env = {"PMEM_DATABASE_URL": pg_url}
    assert run("ls", env=env).returncode != 0  # a server database is not migrated implicitly
    assert run("db", "upgrade", env=env).returncode == 0
    last_json(run("add", "-", "--id", "pg", "--json", input="stored in postgres", env=env))
    assert [d["id"] for d in last_json(run("ls", "--json", env=env))] == ["pg"]


@pytest.mark.slow
def test_demo_runs_on_the_embedded_default():
    proc = subprocess.run([PMEM, "demo", "--json"], capture_output=True, text=True, timeout=900, env=os.environ)
    result = last_json(proc)
    assert result["travel_policy_current"] == 2
    assert {d["id"] for d in result["documents"]} == {"travel-policy", "vault-facts"}
    assert result["adapter"]["rank"] > 0 and result["adapter"]["bytes"] > 0
    modes = [(a["requested"], a["mode"]) for a in result["answers"]]
    assert modes[0] == ("parametric", "parametric")
    assert all(a["reason"] for a in result["answers"])
    assert "restored travel-policy to v2" in proc.stderr  # said before the questions, which read version 2
    assert "Converting and de-quantizing" not in proc.stderr and "it/s]" not in proc.stderr  # no progress bars


def test_unknown_bench_is_an_error():
    proc = run("bench", "no-such-bench", "--json")
    assert proc.returncode == 2 and "unknown bench" in proc.stderr


def test_outer_packages_add_their_commands_through_entry_points():
    """``worker``/``jobs`` (workers/) and ``bench`` (bench/) are plugins: memory/ never imports them."""
    from importlib.metadata import entry_points

    from memory.cli import PLUGINS

    assert {e.name: e.value for e in entry_points(group=PLUGINS)} == {
        "bench": "bench.cli:register",
        "workers": "workers.cli:register",
    }
    proc = run("--help")
    assert proc.returncode == 0 and all(f" {c} " in proc.stdout for c in ("bench", "worker", "jobs", "refresh"))


def test_the_core_imports_no_outer_package_or_framework():
    code = (
        "import sys, memory, memory.api, memory.router, memory.services.query; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'integrations', 'workers', 'bench', "
        "'langchain_core', 'llama_index', 'celery', 'kombu', 'redis', 'fastapi', 'uvicorn', 'mcp'}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
