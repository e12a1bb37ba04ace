"""What a hypernetwork checkpoint *is*, and which base model it fits: one definition for D2L, T2L and CD.

- **Identity**: ``checkpoint_sha256`` is a SHA-256 over the hypernetwork's config from ``config.json`` in
  canonical form (parsed, keys sorted, compact; training provenance left out: D2L's ``extra``, and for
  T2L everything but ``kind`` and ``config``) and the tensors of ``model.safetensors`` (sorted by name:
  name, dtype, shape, raw bytes; the file's free-form header metadata is ignored). Reformatting the
  JSON, adding notes about training, or re-saving the same tensors keeps the identity; any change of a
  hyper-parameter or a weight changes it. :func:`state_sha256` gives the same digest for an in-memory
  ``state_dict`` (what saving it would write). Context distillation has no weights: its identity is the
  digest of its config and the base model (:func:`cd_identity`).
- **Compatibility**: a checkpoint fits a base model when the fingerprint it was trained for equals the
  base model's *whole* fingerprint (``name@hash``: the name says which weights, the hash which
  architecture; see ``memory.models.compute_fingerprint``). :func:`check_compatible` is the one refusal.

The same identity names the ``Hypernetwork`` row of every adapter and the idempotency key of every
internalization job, so a job and the adapter it makes always agree on what made it.

>>> cd_identity({"method": "context-distillation", "version": 1}, "toy@0").kind
'cd'
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memory.errors import AdapterMismatchError, ModelError

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "Identity",
    "cd_identity",
    "check_compatible",
    "checkpoint_identity",
    "checkpoint_sha256",
    "identity_config",
    "is_compatible",
    "method_identity",
    "state_sha256",
    "trained_for",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_DOMAIN = b"pmem-hypernetwork-identity-v1\x00"

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Identity:
    """What made an adapter: stored as its ``Hypernetwork`` row and named in job idempotency keys."""

    kind: str  # d2l | cd | t2l | self-study
    name: str
    checkpoint_sha256: str
    config: dict[str, Any] = field(default_factory=dict)
    eval_metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        """Short form for keys and logs: ``"<kind>-<16 hex>"``.

        >>> Identity("cd", "context-distillation", "ab" * 32).tag
        'cd-abababababababab'
        """
        return f"{self.kind}-{self.checkpoint_sha256[:16]}"


# ----------------------------------------------------------------------------- identity
def _canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _digest(config: Any, tensors: Sequence[tuple[str, str, list[int], bytes | memoryview]]) -> str:
    h = hashlib.sha256(_DOMAIN)
    h.update(_canonical_json(config))
    for name, dtype, shape, data in sorted(tensors, key=lambda t: t[0]):
        h.update(b"\x00" + _canonical_json([name, dtype, list(shape), len(data)]))
        h.update(data)
    return h.hexdigest()


def identity_config(raw: Any) -> Any:
    """The part of a ``config.json`` that defines the hypernetwork (training provenance dropped).

    >>> identity_config({"kind": "t2l", "config": {"rank": 8}, "training": {"steps": 3}})
    {'kind': 't2l', 'config': {'rank': 8}}
    >>> identity_config({"kind": "d2l-fastweight", "rank": 32, "extra": {"steps": 900}})
    {'kind': 'd2l-fastweight', 'rank': 32}
    """
    if not isinstance(raw, dict):
        return raw
    if isinstance(raw.get("config"), dict):  # T2L layout: {"kind", "config", **provenance}
        return {k: raw[k] for k in ("kind", "config") if k in raw}
    return {k: v for k, v in raw.items() if k != "extra"}  # D2L layout: the config's fields, "extra" = provenance


def _read_config(directory: Path) -> Any:
    path = directory / CONFIG_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(
            f"{path} is missing; a hypernetwork checkpoint directory holds {CONFIG_NAME} and {WEIGHTS_NAME}"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path} is unreadable ({e}); restore the checkpoint or train it again") from e


def _safetensors_tensors(path: Path) -> list[tuple[str, str, list[int], memoryview]]:
    """(name, dtype, shape, bytes) of every tensor of a safetensors file, straight from its header."""
    try:
        raw = memoryview(path.read_bytes())
    except FileNotFoundError:
        raise ModelError(
            f"{path} is missing; a hypernetwork checkpoint directory holds {CONFIG_NAME} and {WEIGHTS_NAME}"
        ) from None
    try:
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(bytes(raw[8 : 8 + n]))
        body = raw[8 + n :]
        out = []
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            if not 0 <= start <= end <= len(body):
                raise ValueError(f"tensor {name!r} lies outside the file")
            out.append((name, str(info["dtype"]), [int(x) for x in info["shape"]], body[start:end]))
        return out
    except (struct.error, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelError(
            f"{path} is not a readable safetensors file ({e}); restore the checkpoint or train it again"
        ) from e


_CACHE: dict[tuple[Any, ...], str] = {}
_CACHE_LOCK = threading.Lock()


def checkpoint_sha256(directory: str | Path) -> str:
    """The identity of the checkpoint in ``directory`` (see the module docstring); cached by file stat.

    Raises :class:`ModelError` when ``config.json`` or ``model.safetensors`` is missing or unreadable.

    >>> checkpoint_sha256("memory/checkpoints/d2l-smollm2-135m")[:8]   # doctest: +SKIP
    """
    d = Path(directory)
    files = (d / CONFIG_NAME, d / WEIGHTS_NAME)
    try:
        stats = tuple((s.st_mtime_ns, s.st_size, s.st_ino) for s in (f.stat() for f in files))
    except FileNotFoundError as e:
        raise ModelError(
            f"{e.filename} is missing; a hypernetwork checkpoint directory holds {CONFIG_NAME} and {WEIGHTS_NAME}"
        ) from None
    key = (str(d.resolve()), stats)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
    sha = _digest(identity_config(_read_config(d)), _safetensors_tensors(d / WEIGHTS_NAME))
    with _CACHE_LOCK:
        _CACHE[key] = sha
    return sha


def state_sha256(config: Any, state: Mapping[str, torch.Tensor]) -> str:
    """The identity a checkpoint would have with this ``config.json`` content and these tensors as saved
    (``config`` goes through :func:`identity_config` too).

    >>> import torch
    >>> state_sha256({"kind": "toy"}, {"w": torch.zeros(2)}) == state_sha256({"kind": "toy"}, {"w": torch.zeros(2)})
    True
    """
    import torch  # here, not at the top: job submission computes identities without loading torch

    st_dtypes = {
        torch.float64: "F64",
        torch.float32: "F32",
        torch.float16: "F16",
        torch.bfloat16: "BF16",
        torch.int64: "I64",
        torch.int32: "I32",
        torch.int16: "I16",
        torch.int8: "I8",
        torch.uint8: "U8",
        torch.bool: "BOOL",
    }
    tensors = []
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        if t.dtype not in st_dtypes:
            raise ModelError(f"tensor {name!r} has dtype {t.dtype}, which safetensors checkpoints do not hold")
        tensors.append((name, st_dtypes[t.dtype], list(t.shape), t.reshape(-1).view(torch.uint8).numpy().tobytes()))
    return _digest(identity_config(config), tensors)


def cd_identity(config: Mapping[str, Any], base_fingerprint: str) -> Identity:
    """Context distillation's identity: its config (method, version, options) for one base model.

    >>> cd = {"method": "context-distillation", "version": 1}
    >>> cd_identity(cd, "a@1") != cd_identity(cd, "b@1")
    True
    """
    return method_identity("cd", "context-distillation", config, base_fingerprint)


def method_identity(kind: str, name: str, config: Mapping[str, Any], base_fingerprint: str) -> Identity:
    """The identity of a per-document training method (no weights of its own): the digest of its config and
    the base model. Context distillation's digest is unchanged by this helper (same payload).

    >>> method_identity("self-study", "self-study", {"version": 1}, "a@1").kind
    'self-study'
    """
    config = dict(config)
    key = "cd" if kind == "cd" else kind
    sha = hashlib.sha256(_DOMAIN + _canonical_json({key: config, "base_model": base_fingerprint})).hexdigest()
    return Identity(kind=kind, name=name, checkpoint_sha256=sha, config=config)


def checkpoint_identity(kind: str, directory: str | Path, *, metrics_file: str | None = None) -> Identity:
    """The :class:`Identity` of the ``kind`` (``d2l`` or ``t2l``) checkpoint in ``directory``.

    >>> checkpoint_identity("d2l", "memory/checkpoints/d2l-smollm2-135m").kind   # doctest: +SKIP
    'd2l'
    """
    d = Path(directory)
    metrics: dict[str, Any] = {}
    if metrics_file and (d / metrics_file).is_file():
        try:
            metrics = json.loads((d / metrics_file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            metrics = {}
    return Identity(
        kind=kind, name=d.name, checkpoint_sha256=checkpoint_sha256(d), config=_read_config(d), eval_metrics=metrics
    )


# ----------------------------------------------------------------------------- compatibility
def trained_for(directory: str | Path) -> str:
    """The base-model fingerprint a checkpoint was trained for (``""`` when it does not say).

    D2L keeps it at ``base_model`` in ``config.json``; T2L at ``config.base_model``.

    >>> trained_for("memory/checkpoints/t2l-smollm2-135m")   # doctest: +SKIP
    'smollm2-135m-instruct@6c31d45195a667e1'
    """
    cfg = _read_config(Path(directory))
    if not isinstance(cfg, dict):
        raise ModelError(f"{Path(directory) / CONFIG_NAME} does not hold a JSON object")
    inner = cfg.get("config")
    if not isinstance(inner, dict):
        inner = {}
    return str(cfg.get("base_model") or cfg.get("base_fingerprint") or inner.get("base_model") or "")


def is_compatible(trained_for: str, base_fingerprint: str) -> bool:
    """Whether a checkpoint trained for ``trained_for`` fits the base model ``base_fingerprint``.

    The whole fingerprint must match. A checkpoint that names no base model (``""``, from before
    fingerprints were recorded) is accepted, and its shapes are checked when it loads.

    >>> is_compatible("m@1234", "m@1234"), is_compatible("m@1234", "m-tuned@1234"), is_compatible("", "m@1")
    (True, False, True)
    """
    return not trained_for or trained_for == base_fingerprint


def check_compatible(what: str, trained_for: str, base_fingerprint: str) -> None:
    """Raise :class:`AdapterMismatchError` unless :func:`is_compatible`; ``what`` names the checkpoint.

    >>> check_compatible("the T2L checkpoint", "m@1", "m@1")
    """
    if not is_compatible(trained_for, base_fingerprint):
        raise AdapterMismatchError(
            f"{what} was trained for base model {trained_for!r}, not {base_fingerprint!r} (the name says which "
            "weights, the hash which architecture); use a checkpoint trained for this base model "
            "(`pmem train d2l` or `pmem train t2l`)"
        )
