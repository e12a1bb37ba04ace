"""The README's code blocks, read from README.md itself (a changed README is a changed test).

Every ``python`` and ``bash`` block either runs in the walkthrough below, in order, from an empty PMEM home (as a
new user would follow the README), or is preceded by ``<!-- test: skip - <why, and which test runs it> -->``;
every block compiles (``bash -n`` for shell), and ``json`` blocks parse.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"(?:<!-- test: skip - (?P<skip>[^\n]*?) -->\n)?^```(?P<lang>\w*)\n(?P<code>.*?)^```", re.M | re.S)


@dataclass(frozen=True)
class Block:
    line: int
    lang: str
    code: str
    skip: str | None


def readme_blocks() -> list[Block]:
    text = README.read_text()
    return [Block(text.count("\n", 0, m.start("code")), m["lang"], m["code"], m["skip"]) for m in _BLOCK.finditer(text)]


def test_every_block_runs_or_says_why_not() -> None:
    blocks = readme_blocks()
    assert len(blocks) >= 10 and {b.lang for b in blocks} == {"python", "bash", "json"}
    for b in blocks:
        where = f"README.md:{b.line}"
        if b.lang == "python":
            compile(b.code, where, "exec")
        elif b.lang == "bash":
            proc = subprocess.run(["bash", "-n"], input=b.code, capture_output=True, text=True)
            assert proc.returncode == 0, (where, proc.stderr)
        else:
            json.loads(b.code)
        assert b.skip is None or len(b.skip) > 20, (where, "say why the block is not run, and what test runs it")
    run = [b for b in blocks if b.skip is None and b.lang != "json"]
    assert sum(b.lang == "python" for b in run) >= 4 and sum(b.lang == "bash" for b in run) >= 1


POLICIES = {
    "leave.md": "# Leave\n\nStaff get 25 days of paid leave a year. Unused days lapse at the end of March.\n",
    "parking.txt": "Visitors park on level two of the east garage. Staff park on level three.\n",
}


@pytest.mark.slow
def test_the_readme_walkthrough_from_an_empty_home(tmp_path: Path, monkeypatch) -> None:
    """The runnable blocks in order, in one PMEM home that starts empty, with a ``policies/`` directory as the README
    assumes: Python blocks in one namespace of globals (one session), shell blocks with ``bash -e``."""
    home = Path(os.environ["PMEM_HOME"])
    assert not home.exists()  # an empty home: nothing converted or stored yet (models come from the shared cache)
    (tmp_path / "policies").mkdir()
    for name, text in POLICIES.items():
        (tmp_path / "policies" / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    session: dict[str, object] = {"__name__": "readme"}
    for b in (b for b in readme_blocks() if b.skip is None):
        if b.lang == "python":
            exec(compile(b.code, f"README.md:{b.line}", "exec"), session)  # the README's own code
        elif b.lang == "bash":
            proc = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", b.code], cwd=tmp_path, env=env, capture_output=True, text=True
            )
            assert proc.returncode == 0, (f"README.md:{b.line}", proc.stdout[-2000:], proc.stderr[-4000:])
    r = session["r"]  # the Usage block's question about paid leave
    assert r.mode != "abstain" and r.reason, r  # type: ignore[attr-defined]
    mem = session["mem"]
    assert {d.id for d in mem.list(namespace="hr")} == set(POLICIES) | {"parking"}  # type: ignore[attr-defined]
    assert mem.namespace_info("hr").on_add == "instant"  # type: ignore[attr-defined]
