"""Adapter serialisation: our blob format, PEFT's directory format, and an LRU of decoded adapters.

Blob format (``to_bytes``/``from_bytes``): a safetensors file with tensors ``<path>.lora_A`` /
``<path>.lora_B`` and header metadata ``pmem.format=lora``, ``pmem.version``, ``pmem.base_model`` and
``pmem.metadata`` (JSON of the adapter's metadata).

PEFT format (``save_peft``/``load_peft``): ``adapter_config.json`` + ``adapter_model.safetensors`` with keys
``base_model.model.<path>.lora_A.weight``. We write ``lora_alpha == r`` (scale already folded into B), and
every module zero-padded to the adapter's rank so that one ``r`` describes the whole file.

>>> import torch
>>> from memory.lora.adapter import LoraAdapter
>>> ad = LoraAdapter({"model.layers.0.mlp.down_proj": (torch.ones(2, 3), torch.ones(4, 2))}, "toy@0")
>>> from_bytes(to_bytes(ad)).base_model
'toy@0'
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import load_file, save_file

from memory.errors import IntegrityError, ModelError, ValidationError
from memory.lora.adapter import LoraAdapter

__all__ = ["FORMAT_VERSION", "AdapterCache", "from_bytes", "load_peft", "save_peft", "to_bytes"]

log = logging.getLogger(__name__)

FORMAT_VERSION = "1"
_PEFT_PREFIX = "base_model.model."
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"


# --------------------------------------------------------------------- blob format
def to_bytes(adapter: LoraAdapter) -> bytes:
    """Serialise to safetensors bytes (deterministic for equal tensors and metadata).

    >>> import torch
    >>> ad = LoraAdapter({"l.0.q": (torch.ones(1, 2), torch.ones(2, 1))}, "t@0")
    >>> to_bytes(ad)[:8] != b""
    True
    """
    tensors: dict[str, torch.Tensor] = {}
    for path, (a, b) in adapter.weights.items():
        tensors[f"{path}.lora_A"] = a.detach().to("cpu").contiguous()
        tensors[f"{path}.lora_B"] = b.detach().to("cpu").contiguous()
    meta = {
        "pmem.format": "lora",
        "pmem.version": FORMAT_VERSION,
        "pmem.base_model": adapter.base_model,
        "pmem.metadata": json.dumps(adapter.metadata, sort_keys=True),
    }
    return _save_deterministic(tensors, meta)


_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}


def _save_deterministic(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """safetensors bytes with sorted keys (safetensors' own writer orders metadata by hash, so equal
    adapters could get different bytes and different content addresses)."""
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype not in _ST_DTYPES:
            raise ValidationError(f"adapter tensor {name!r} has unsupported dtype {t.dtype}")
        raw = t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {
            "dtype": _ST_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # safetensors aligns the data start to 8 bytes
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)


def _header(data: bytes) -> dict[str, Any]:
    if len(data) < 8:
        raise IntegrityError(f"adapter blob is truncated ({len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise IntegrityError(f"adapter blob is truncated: header says {n} bytes, {len(data) - 8} present")
    try:
        header = json.loads(data[8 : 8 + n])
    except ValueError as e:
        raise IntegrityError(f"adapter blob header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise IntegrityError("adapter blob header is not a JSON object")
    return header


def from_bytes(data: bytes) -> LoraAdapter:
    """Decode bytes written by :func:`to_bytes`.

    Raises:
        IntegrityError: truncated or corrupt bytes, or not an adapter blob.

    >>> import torch
    >>> ad = LoraAdapter({"l.0.q": (torch.ones(1, 2), torch.ones(2, 1))}, "t@0", {"k": "v"})
    >>> from_bytes(to_bytes(ad)).metadata
    {'k': 'v'}
    """
    meta = _header(data).get("__metadata__") or {}
    if meta.get("pmem.format") != "lora":
        raise IntegrityError("bytes are a safetensors file but not a parametric-memory LoRA adapter blob")
    if meta.get("pmem.version") != FORMAT_VERSION:
        raise IntegrityError(
            f"adapter blob format version {meta.get('pmem.version')!r} is not supported (want {FORMAT_VERSION})"
        )
    try:
        tensors = st_load(bytes(data))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise IntegrityError(f"adapter blob is corrupt: {e}") from None
    weights = _pair_up(tensors, ".lora_A", ".lora_B")
    try:
        user_meta = json.loads(meta.get("pmem.metadata", "{}"))
    except ValueError:
        raise IntegrityError("adapter blob metadata is not valid JSON") from None
    return LoraAdapter(weights, meta["pmem.base_model"], user_meta)


def _pair_up(
    tensors: dict[str, torch.Tensor], a_suffix: str, b_suffix: str
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    a_keys = {k[: -len(a_suffix)]: k for k in tensors if k.endswith(a_suffix)}
    b_keys = {k[: -len(b_suffix)]: k for k in tensors if k.endswith(b_suffix)}
    if set(a_keys) != set(b_keys):
        missing = sorted(set(a_keys) ^ set(b_keys))[:3]
        raise IntegrityError(f"adapter file has A without B (or B without A) for {missing}")
    extra = set(tensors) - set(a_keys.values()) - set(b_keys.values())
    if extra:
        raise IntegrityError(f"adapter file has unexpected tensors, e.g. {sorted(extra)[:3]}")
    return {p: (tensors[a_keys[p]], tensors[b_keys[p]]) for p in sorted(a_keys)}


# --------------------------------------------------------------------- PEFT format
def save_peft(adapter: LoraAdapter, directory: str | os.PathLike[str], base_model_name_or_path: str) -> Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` loadable by ``PeftModel.from_pretrained``
    (and by servers such as vLLM/LoRAX). Ranks are zero-padded to ``adapter.rank``; ``lora_alpha == r``.

    >>> import torch, tempfile
    >>> ad = LoraAdapter({"model.layers.0.mlp.down_proj": (torch.ones(2, 3), torch.ones(4, 2))}, "toy@0")
    >>> (save_peft(ad, tempfile.mkdtemp(), "/models/toy") / "adapter_config.json").exists()
    True
    """
    if not adapter.weights:
        raise ValidationError("cannot export an empty adapter to PEFT format")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    r = adapter.rank
    tensors: dict[str, torch.Tensor] = {}
    for path, (a, b) in adapter.weights.items():
        pad = r - a.shape[0]
        if pad:
            a = torch.cat([a, a.new_zeros(pad, a.shape[1])], 0)
            b = torch.cat([b, b.new_zeros(b.shape[0], pad)], 1)
        tensors[f"{_PEFT_PREFIX}{path}.lora_A.weight"] = a.detach().to("cpu").contiguous()
        tensors[f"{_PEFT_PREFIX}{path}.lora_B.weight"] = b.detach().to("cpu").contiguous()
    leaves = sorted({p.rsplit(".", 1)[-1] for p in adapter.weights})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base_model_name_or_path),
        "r": r,
        "lora_alpha": r,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "target_modules": leaves,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        **_layer_scope(list(adapter.weights), leaves),
    }
    file_meta = {
        "format": "pt",
        "pmem.base_model": adapter.base_model,
        "pmem.metadata": json.dumps(adapter.metadata, sort_keys=True),
    }
    save_file(tensors, str(out / PEFT_WEIGHTS), metadata=file_meta)
    (out / PEFT_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out


_LAYER_PATH = re.compile(r"^(?P<head>.*\.layers)\.(?P<layer>\d+)\.(?P<tail>.+)$")


def _layer_scope(paths: list[str], leaves: list[str]) -> dict[str, Any]:
    """PEFT's way to say which decoder layers an adapter covers, so that PEFT and vLLM build LoRA modules only
    where the adapter has weights (a self-study adapter may train only the top layers).

    Every module in the same layers: ``layers_to_transform`` and ``layers_pattern``. Any other shape: a regular
    expression ``target_modules`` that matches exactly the adapter's modules. Paths without a layer index: {}.
    """
    parsed = [_LAYER_PATH.match(p) for p in paths]
    if not paths or any(m is None for m in parsed):
        return {}
    layers = sorted({int(m.group("layer")) for m in parsed if m})
    heads = {m.group("head") for m in parsed if m}
    tails = {m.group("tail") for m in parsed if m}
    if len(heads) == 1 and len(tails) == len(leaves) and len(paths) == len(layers) * len(tails):
        return {"layers_to_transform": layers, "layers_pattern": next(iter(heads)).rsplit(".", 1)[-1]}
    return {"target_modules": "^(?:" + "|".join(re.escape(p) for p in sorted(paths)) + ")$"}


def load_peft(directory: str | os.PathLike[str], base_model: Any = None) -> LoraAdapter:
    """Read a PEFT LoRA directory (ours or PEFT's own) into a :class:`LoraAdapter`, folding
    ``lora_alpha / r`` (or ``/ sqrt(r)`` with rsLoRA, and per-module patterns) into B.

    Args:
        base_model: the fingerprint string (or a ``BaseModel``) to record; defaults to the fingerprint we
            stored in the file, else the config's ``base_model_name_or_path``.

    >>> import torch, tempfile
    >>> ad = LoraAdapter({"model.layers.0.mlp.down_proj": (torch.ones(2, 3), torch.ones(4, 2))}, "toy@0")
    >>> load_peft(save_peft(ad, tempfile.mkdtemp(), "/m")).rank
    2
    """
    d = Path(directory)
    cfg_path, w_path = d / PEFT_CONFIG, d / PEFT_WEIGHTS
    if not cfg_path.exists():
        raise ModelError(f"{d} is not a PEFT adapter directory: {PEFT_CONFIG} not found")
    if not w_path.exists():
        hint = (
            " (legacy adapter_model.bin is not supported; re-save with safetensors)"
            if (d / "adapter_model.bin").exists()
            else ""
        )
        raise ModelError(f"{d} has no {PEFT_WEIGHTS}{hint}")
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as e:
        raise ModelError(f"{cfg_path} is not valid JSON: {e}") from None
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ModelError(f"{d} holds a {cfg.get('peft_type')} adapter; only LoRA is supported")
    if cfg.get("use_dora"):
        raise ModelError(f"{d} is a DoRA adapter; only plain LoRA is supported")
    try:
        tensors = load_file(str(w_path))
        from safetensors import safe_open

        with safe_open(str(w_path), "pt") as f:
            file_meta = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise ModelError(f"{w_path} is corrupt or truncated: {e}") from None
    stripped = {}
    for k, v in tensors.items():
        key = k[len(_PEFT_PREFIX) :] if k.startswith(_PEFT_PREFIX) else k
        key = key.replace(".lora_A.default.weight", ".lora_A.weight").replace(
            ".lora_B.default.weight", ".lora_B.weight"
        )
        stripped[key] = v
    try:
        pairs = _pair_up(stripped, ".lora_A.weight", ".lora_B.weight")
    except IntegrityError as e:
        raise ModelError(f"{w_path}: {e}") from None
    r_default, alpha_default = int(cfg.get("r", 8)), float(cfg.get("lora_alpha", cfg.get("r", 8)))
    rank_pattern, alpha_pattern = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    weights = {}
    for path, (a, b) in pairs.items():
        r = int(_pattern_value(rank_pattern, path, r_default))
        alpha = float(_pattern_value(alpha_pattern, path, alpha_default))
        s = alpha / (r**0.5) if cfg.get("use_rslora") else alpha / r
        weights[path] = (a, b if s == 1.0 else (b.float() * s).to(b.dtype))
    if base_model is not None:
        fp = base_model if isinstance(base_model, str) else base_model.fingerprint
    else:
        fp = file_meta.get("pmem.base_model") or str(cfg.get("base_model_name_or_path") or "unknown")
    try:
        meta = json.loads(file_meta.get("pmem.metadata", "{}"))
    except ValueError:
        meta = {}
    meta.setdefault("peft_base_model_name_or_path", str(cfg.get("base_model_name_or_path")))
    return LoraAdapter(weights, fp, meta)


def _pattern_value(pattern: dict[str, Any], path: str, default: Any) -> Any:
    """PEFT's rank/alpha pattern lookup: a key matches a module path exactly or as a ``.``-suffix."""
    for key, value in pattern.items():
        if path == key or path.endswith("." + key) or re.fullmatch(key, path):
            return value
    return default


# --------------------------------------------------------------------- cache
class AdapterCache:
    """Thread-safe LRU of decoded adapters keyed by the blob's sha256.

    >>> import torch
    >>> cache = AdapterCache(maxsize=2)
    >>> blob = to_bytes(LoraAdapter({"l.0.q": (torch.ones(1, 2), torch.ones(2, 1))}, "t@0"))
    >>> cache.decode(blob) is cache.decode(blob)
    True
    """

    def __init__(self, maxsize: int | None = None, *, settings: Any = None) -> None:
        if maxsize is None:
            from memory.config import Settings

            maxsize = (settings or Settings.from_env()).adapter_cache_size
        if maxsize < 0:
            raise ValidationError(f"adapter cache size must be >= 0, got {maxsize!r}")
        self.maxsize = maxsize
        self._items: OrderedDict[str, LoraAdapter] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> LoraAdapter | None:
        with self._lock:
            ad = self._items.get(key)
            if ad is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return ad

    def put(self, key: str, adapter: LoraAdapter) -> None:
        if self.maxsize == 0:
            return
        with self._lock:
            self._items[key] = adapter
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def decode(self, blob: bytes, sha256: str | None = None) -> LoraAdapter:
        """Decoded adapter for ``blob`` (from the cache when its sha256 is known)."""
        key = sha256 or hashlib.sha256(blob).hexdigest()
        ad = self.get(key)
        if ad is None:
            ad = from_bytes(blob)
            self.put(key, ad)
        return ad

    def get_or_load(self, sha256: str, load: Callable[[], bytes]) -> LoraAdapter:
        """Cached adapter for ``sha256``, else ``from_bytes(load())`` (the blob store's reader)."""
        ad = self.get(sha256)
        if ad is None:
            blob = load()
            if hashlib.sha256(blob).hexdigest() != sha256:
                raise IntegrityError(f"adapter blob {sha256[:12]}... does not match its hash")
            ad = from_bytes(blob)
            self.put(sha256, ad)
        return ad

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items
