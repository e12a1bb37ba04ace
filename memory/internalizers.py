"""Internalizers: what turns the chunks of a document version into one LoRA adapter.

- ``d2l``: the Doc-to-LoRA hypernetwork (one forward pass per chunk; chunk adapters concatenated along rank);
- ``cd``: context distillation, the classic per-document gradient-descent baseline, and the fallback for a
  base model that has no trained hypernetwork;
- ``self-study``: the quality tier (:mod:`memory.self_study`): synthetic prompts over every chunk, the
  in-context teacher's answers distilled into a LoRA, fidelity measured on held-back probes. Its
  :meth:`SelfStudyInternalizer.study` returns the provenance and the synthetic data with the adapter.

Two tiers: ``auto``/``d2l``/``cd`` make the *instant* adapter; ``self-study`` the *full* one, which
replaces it as the version's adapter when it is ready (see ``memory.services.internalization``).

Each internalizer has an identity (kind, name, checkpoint hash, config; defined once, in
``memory.hyper.identity``) that is stored as a ``Hypernetwork`` row, so that every adapter says exactly
what made it, and that names the internalization jobs (:func:`planned_identity`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from memory.errors import ModelError, ValidationError
from memory.hyper.identity import (
    Identity,
    cd_identity,
    checkpoint_identity,
    is_compatible,
    method_identity,
    trained_for,
)

log = logging.getLogger(__name__)

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
DEFAULT_D2L = CHECKPOINTS / "d2l-smollm2-135m"
DEFAULT_T2L = CHECKPOINTS / "t2l-smollm2-135m"
METHODS = ("auto", "d2l", "cd", "self-study")
INSTANT_METHODS = ("auto", "d2l", "cd")
CD_DEFAULTS = {"method": "context-distillation", "version": 1}
# Bump "version" whenever memory.self_study's default recipe changes: it names the adapters' identity.
SELF_STUDY_DEFAULTS = {
    "method": "self-study",
    "version": 3,
}  # 2: in-context samples; 3: LoRA in the top third of the layers only

__all__ = [
    "CDInternalizer",
    "D2LInternalizer",
    "Identity",
    "Internalizer",
    "SelfStudyInternalizer",
    "T2LGenerator",
    "d2l_checkpoint_for",
    "planned_identity",
    "resolve",
]


class Internalizer(Protocol):
    identity: Identity

    def internalize(self, base: Any, text: str, progress: Callable[[int, int], None] | None = None) -> Any:
        """Return one ``LoraAdapter`` for a version's whole text.

        Each internalizer splits the text at the window it was built for (D2L: its training chunk length),
        which need not be the retrieval chunk length; per-window adapters are concatenated along rank.
        """


class D2LInternalizer:
    """The trained Doc-to-LoRA hypernetwork of a checkpoint directory."""

    def __init__(self, directory: str | Path, base: Any) -> None:
        from memory.hyper import d2l

        self._d2l = d2l
        self.directory = Path(directory)
        self.net = d2l.load_checkpoint(self.directory, base)
        self.identity = checkpoint_identity("d2l", self.directory, metrics_file="eval.json")

    def internalize(self, base: Any, text: str, progress: Callable[[int, int], None] | None = None) -> Any:
        return self._d2l.internalize(base, [text], hypernet=self.net, progress=progress)[0]


class CDInternalizer:
    """Context distillation: a LoRA trained per chunk so the model without the text matches the model with it."""

    def __init__(self, base: Any, **config: Any) -> None:
        self.config = {**CD_DEFAULTS, **config}
        self.identity = cd_identity(self.config, base.fingerprint)

    def internalize(self, base: Any, text: str, progress: Callable[[int, int], None] | None = None) -> Any:
        from memory.distill import distill_document

        kwargs = {k: v for k, v in self.config.items() if k not in ("method", "version")}
        adapter, _stats = distill_document(
            base, text, progress=(lambda step, steps, _loss: progress(step, steps)) if progress else None, **kwargs
        )
        return adapter


class SelfStudyInternalizer:
    """Self-study: the quality tier (synthetic prompts per chunk, the in-context teacher distilled into a LoRA)."""

    def __init__(self, base: Any, **config: Any) -> None:
        from memory.self_study import SelfStudyConfig

        self.config = {**SELF_STUDY_DEFAULTS, **config}
        self.recipe = SelfStudyConfig(**{k: v for k, v in config.items() if k not in ("method", "version")})
        self.identity = self_study_identity(self.config, base.fingerprint)

    def study(
        self,
        base: Any,
        text: str,
        progress: Callable[[int, int], None] | None = None,
        work_dir: str | Path | None = None,
    ) -> Any:
        """The :class:`memory.self_study.SelfStudyResult` (adapter, provenance, synthetic data) for ``text``;
        with ``work_dir`` a killed run resumes where it was (:func:`memory.self_study.self_study`)."""
        from memory.self_study import self_study

        return self_study(
            base,
            text,
            self.recipe,
            progress=(lambda stage, done, total: progress(done, total)) if progress else None,
            work_dir=work_dir,
        )

    def internalize(self, base: Any, text: str, progress: Callable[[int, int], None] | None = None) -> Any:
        return self.study(base, text, progress).adapter


def self_study_identity(config: dict[str, Any], base_fingerprint: str) -> Identity:
    return method_identity("self-study", "self-study", config, base_fingerprint)


class T2LGenerator:
    """The Text-to-LoRA hypernetwork of a checkpoint directory: a task description becomes a skill adapter."""

    def __init__(self, directory: str | Path | None, base: Any) -> None:
        from memory.hyper.t2l import T2LHypernetwork

        self.directory = Path(directory) if directory else DEFAULT_T2L
        self.net = T2LHypernetwork.load(self.directory, base_fingerprint=base.fingerprint)
        self.identity = checkpoint_identity("t2l", self.directory)

    def generate(self, description: str) -> Any:
        return self.net.generate([description])[0]


def d2l_checkpoint_for(base: Any, directory: str | Path | None = None) -> Path | None:
    """The D2L checkpoint directory to use for ``base``, or None when there is none for this base model."""
    return _d2l_checkpoint(str(base.fingerprint), directory)


def _d2l_checkpoint(base_fingerprint: str, directory: str | Path | None) -> Path | None:
    path = Path(directory) if directory else DEFAULT_D2L
    if not (path / "config.json").is_file():
        return None
    return path if is_compatible(trained_for(path), base_fingerprint) else None


def planned_identity(method: str, base_fingerprint: str, *, checkpoint: str | Path | None = None) -> Identity:
    """The identity :func:`resolve` gives ``method`` for this base model (default options), without loading any
    model: what names an internalization job before a worker runs it.

    >>> planned_identity("cd", "toy@0").kind
    'cd'
    """
    if method not in METHODS:
        raise ValidationError(f"method must be one of {METHODS}, got {method!r}")
    if method == "self-study":
        return self_study_identity(SELF_STUDY_DEFAULTS, base_fingerprint)
    if method in ("auto", "d2l"):
        path = _d2l_checkpoint(base_fingerprint, checkpoint)
        if path is not None:
            return checkpoint_identity("d2l", path, metrics_file="eval.json")
        if method == "d2l":
            raise ModelError(
                f"no Doc-to-LoRA checkpoint for base model {base_fingerprint!r} "
                f"(looked in {checkpoint or DEFAULT_D2L}); train one with `pmem train d2l` or use method='cd'"
            )
    return cd_identity(CD_DEFAULTS, base_fingerprint)


def resolve(
    method: str, base: Any, *, checkpoint: str | Path | None = None, cache: dict[str, Any] | None = None
) -> Internalizer:
    """The internalizer for ``method`` (``auto``: D2L when a checkpoint fits the base model, else CD)."""
    if method not in METHODS:
        raise ValidationError(f"method must be one of {METHODS}, got {method!r}")
    cache = cache if cache is not None else {}
    if method == "self-study":
        if "self-study" not in cache:
            cache["self-study"] = SelfStudyInternalizer(base)
        return cache["self-study"]
    if method in ("auto", "d2l") and "d2l-default" in cache and checkpoint is None:
        return cache["d2l-default"]  # set by ParametricMemory.configure_internalizer
    if method in ("auto", "d2l"):
        path = d2l_checkpoint_for(base, checkpoint)
        if path is not None:
            key = f"d2l:{path}"
            if key not in cache:
                cache[key] = D2LInternalizer(path, base)
            return cache[key]
        if method == "d2l":
            raise ModelError(
                f"no Doc-to-LoRA checkpoint for base model {base.fingerprint!r} "
                f"(looked in {checkpoint or DEFAULT_D2L}); train one with `pmem train d2l` or use method='cd'"
            )
        log.info("no D2L checkpoint for %s: falling back to context distillation", base.fingerprint)
    if "cd" not in cache:
        cache["cd"] = CDInternalizer(base)
    return cache["cd"]
