"""The examples in the package's docstrings run and print what they show (examples marked ``+SKIP`` need a
model, a server or a file, and are read, not run)."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("memory", "integrations", "workers", "bench")
MODULES = sorted(
    ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
    for package in PACKAGES
    for path in (REPO / package).rglob("*.py")
)


def test_every_package_module_is_found():
    assert {"memory.api", "memory.retrieval.index", "integrations.langchain", "workers.tasks", "bench.cli"} <= set(
        MODULES
    )


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    failures = []
    for test in finder.find(module, name):
        result = runner.run(test, out=failures.append)
        assert result.attempted >= 0
    assert not failures, "".join(failures)
