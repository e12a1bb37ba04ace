"""One LoRA representation for the whole library.

Convention: for a module path ``p`` (as in ``model.named_modules()``), the adapter holds ``(A, B)`` with
``A: [r, in_features]`` and ``B: [out_features, r]``, and the applied weight delta is exactly ``B @ A``.
Any scale (PEFT's ``lora_alpha / r``) is folded into ``B``. Consequences:

- rank concatenation (``concat``) is exactly the sum of the deltas;
- PEFT export writes ``lora_alpha == r`` (scaling 1) and needs no rescaling;
- a zero ``B`` is a no-op adapter.

>>> import torch
>>> a = LoraAdapter({"model.layers.0.mlp.down_proj": (torch.randn(4, 16), torch.zeros(8, 4))}, base_model="toy@0")
>>> a.rank, a.target_modules
(4, ['mlp.down_proj'])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from memory.errors import AdapterMismatchError, ValidationError

__all__ = ["LoraAdapter", "concat", "module_suffix", "scale", "zeros_like"]


def module_suffix(path: str) -> str:
    """The module kind of a path: what follows its last numeric component.

    >>> module_suffix("model.layers.3.mlp.down_proj")
    'mlp.down_proj'
    """
    parts = path.split(".")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].isdigit():
            return ".".join(parts[i + 1 :]) or path
    return path


@dataclass
class LoraAdapter:
    """Convention: for module path p, delta_W = B @ A with A: [r, in_features], B: [out_features, r].

    Any scale (alpha/r) is FOLDED INTO B; the applied delta is exactly B @ A. So rank concatenation is
    exactly the sum of deltas, and PEFT export uses lora_alpha == r (scaling 1).

    Args:
        weights: ``"model.layers.3.mlp.down_proj" -> (A, B)``.
        base_model: fingerprint of the base model the adapter was made for (``BaseModel.fingerprint``).
        metadata: free-form string pairs kept through serialisation (provenance, kind, ...).

    >>> import torch
    >>> a = LoraAdapter({"m.layers.0.q": (torch.ones(2, 3), torch.ones(5, 2))}, "toy@0")
    >>> a.delta("m.layers.0.q").shape
    torch.Size([5, 3])
    """

    weights: dict[str, tuple[Tensor, Tensor]]
    base_model: str
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.base_model, str) or not self.base_model:
            raise ValidationError(f"base_model must be a non-empty fingerprint string, got {self.base_model!r}")
        weights: dict[str, tuple[Tensor, Tensor]] = {}
        for path, pair in self.weights.items():
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise AdapterMismatchError(f"adapter weights for {path!r} must be an (A, B) pair")
            a, b = pair
            if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
                raise AdapterMismatchError(
                    f"adapter weights for {path!r} have shapes A {tuple(a.shape)}, B {tuple(b.shape)}; "
                    "expected A [r, in_features] and B [out_features, r]"
                )
            weights[path] = (a, b)
        self.weights = weights
        self.metadata = {str(k): str(v) for k, v in self.metadata.items()}

    # ----------------------------------------------------------------- properties
    @property
    def rank(self) -> int:
        """The largest rank over modules (0 for an empty adapter)."""
        return max((a.shape[0] for a, _ in self.weights.values()), default=0)

    @property
    def target_modules(self) -> list[str]:
        """Sorted module kinds, e.g. ``["mlp.down_proj", "self_attn.q_proj"]``."""
        return sorted({module_suffix(p) for p in self.weights})

    @property
    def num_bytes(self) -> int:
        """Bytes held by the A and B tensors."""
        return sum(a.numel() * a.element_size() + b.numel() * b.element_size() for a, b in self.weights.values())

    @property
    def dtype(self) -> torch.dtype | None:
        for a, _ in self.weights.values():
            return a.dtype
        return None

    # ----------------------------------------------------------------- methods
    def to(self, dtype: torch.dtype | None = None, device: Any = None) -> LoraAdapter:
        """A copy with every tensor moved/cast (tensors already there are shared, not copied).

        >>> import torch
        >>> LoraAdapter({"l.0.q": (torch.ones(1, 2), torch.ones(2, 1))}, "t@0").to(torch.bfloat16).dtype
        torch.bfloat16
        """
        moved = {
            p: (a.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype))
            for p, (a, b) in self.weights.items()
        }
        return LoraAdapter(moved, self.base_model, dict(self.metadata))

    def delta(self, path: str) -> Tensor:
        """The weight delta ``B @ A`` of one module, computed in float32 and cast back.

        >>> import torch
        >>> LoraAdapter({"l.0.q": (torch.ones(1, 2), torch.ones(3, 1))}, "t@0").delta("l.0.q").sum().item()
        6.0
        """
        if path not in self.weights:
            raise AdapterMismatchError(f"adapter has no weights for {path!r}; it targets {sorted(self.weights)[:5]}...")
        a, b = self.weights[path]
        return (b.float() @ a.float()).to(a.dtype)

    def validate_for(self, model: Any) -> None:
        """Raise :class:`AdapterMismatchError` unless every module path exists in ``model`` as an
        ``nn.Linear`` with matching shapes, and the fingerprint matches (when ``model`` has one).

        ``model`` is a ``BaseModel`` (shapes and fingerprint checked) or a plain ``nn.Module`` (shapes only:
        a bare module has no fingerprint).

        >>> import torch
        >>> lin = torch.nn.Sequential(torch.nn.Linear(3, 5))
        >>> LoraAdapter({"0": (torch.ones(1, 3), torch.ones(5, 1))}, "t@0").validate_for(lin)
        """
        module = getattr(model, "model", None) if not isinstance(model, nn.Module) else model
        if not isinstance(module, nn.Module):
            raise ValidationError(f"validate_for needs a BaseModel or nn.Module, got {type(model).__name__}")
        fp = None if isinstance(model, nn.Module) else getattr(model, "fingerprint", None)
        if fp is not None and fp != self.base_model:
            raise AdapterMismatchError(
                f"adapter was made for base model {self.base_model!r} but the loaded model is {fp!r}; "
                "internalize the document again for this base model"
            )
        for path, (a, b) in self.weights.items():
            try:
                sub = module.get_submodule(path)
            except AttributeError:
                raise AdapterMismatchError(
                    f"adapter targets {path!r}, which does not exist in the model "
                    f"({type(module).__name__}); it was made for {self.base_model!r}"
                ) from None
            if not isinstance(sub, nn.Linear):
                raise AdapterMismatchError(f"adapter targets {path!r}, a {type(sub).__name__}, not an nn.Linear")
            if a.shape[1] != sub.in_features or b.shape[0] != sub.out_features:
                raise AdapterMismatchError(
                    f"adapter shapes for {path!r} are A {tuple(a.shape)}, B {tuple(b.shape)}, but the module is "
                    f"Linear({sub.in_features} -> {sub.out_features}); expected A [r, {sub.in_features}], "
                    f"B [{sub.out_features}, r]"
                )

    def __repr__(self) -> str:
        return (
            f"LoraAdapter(base_model={self.base_model!r}, modules={len(self.weights)}, rank={self.rank}, "
            f"targets={self.target_modules}, bytes={self.num_bytes})"
        )


def concat(adapters: Sequence[LoraAdapter]) -> LoraAdapter:
    """Rank concatenation: the result's delta on every module is the sum of the inputs' deltas.

    A module present in only some inputs keeps only their ranks. All inputs must share ``base_model``.

    >>> import torch
    >>> x = LoraAdapter({"l.0.q": (torch.ones(2, 3), torch.ones(4, 2))}, "t@0")
    >>> concat([x, x]).rank
    4
    """
    adapters = list(adapters)
    if not adapters:
        raise ValidationError("concat needs at least one adapter")
    base = adapters[0].base_model
    for ad in adapters[1:]:
        if ad.base_model != base:
            raise AdapterMismatchError(
                f"cannot concatenate adapters for different base models: {base!r} and {ad.base_model!r}"
            )
    paths: list[str] = []
    for ad in adapters:
        paths.extend(p for p in ad.weights if p not in paths)
    merged: dict[str, tuple[Tensor, Tensor]] = {}
    for p in paths:
        pairs = [ad.weights[p] for ad in adapters if p in ad.weights]
        dtype = pairs[0][0].dtype
        for a, b in pairs:
            if a.shape[1] != pairs[0][0].shape[1] or b.shape[0] != pairs[0][1].shape[0]:
                raise AdapterMismatchError(f"cannot concatenate {p!r}: in/out features differ between adapters")
        merged[p] = (
            torch.cat([a.to(dtype) for a, _ in pairs], dim=0),
            torch.cat([b.to(dtype) for _, b in pairs], dim=1),
        )
    meta = dict(adapters[0].metadata) if len(adapters) == 1 else {"composed_of": str(len(adapters))}
    return LoraAdapter(merged, base, meta)


def zeros_like(adapter: LoraAdapter) -> LoraAdapter:
    """Same shapes, zero delta (``B == 0``; ``A`` kept so gradients still flow into ``B``).

    >>> import torch
    >>> z = zeros_like(LoraAdapter({"l.0.q": (torch.ones(1, 2), torch.ones(3, 1))}, "t@0"))
    >>> float(z.delta("l.0.q").abs().sum())
    0.0
    """
    return LoraAdapter(
        {p: (a.clone(), torch.zeros_like(b)) for p, (a, b) in adapter.weights.items()},
        adapter.base_model,
        dict(adapter.metadata),
    )


def scale(adapter: LoraAdapter, s: float) -> LoraAdapter:
    """The adapter whose delta is ``s`` times the input's (``B`` scaled).

    >>> import torch
    >>> x = LoraAdapter({"l.0.q": (torch.ones(1, 2), torch.ones(3, 1))}, "t@0")
    >>> float(scale(x, 0.5).delta("l.0.q")[0, 0])
    0.5
    """
    return LoraAdapter(
        {p: (a, b * s) for p, (a, b) in adapter.weights.items()}, adapter.base_model, dict(adapter.metadata)
    )
