"""Apply LoRA adapters per call, the way PEFT does: wrap each ``nn.Linear`` once, choose adapters per call.

A model's ``nn.Linear`` modules are replaced, once, by :class:`LoraLinear` (the same ``Parameter``
objects, the same ``state_dict`` keys, bit-identical output while no adapter is active); ``BaseModel``
does this when it is built, and ``apply_lora`` on any other module wraps the modules it targets on first
use. Which adapters a forward pass adds is *not* stored on the modules: it is a stack held in a
``contextvars.ContextVar``, so it belongs to the calling thread (threads start with an empty context)
or asyncio task. Two threads sharing one base model each compute exactly what they would alone, and the
model is the base model again as soon as a ``with`` block ends, whatever the order of exits.

- One adapter: applied to every batch row.
- A sequence: adapter ``i`` applies to batch row ``i`` (``None`` = base model for that row). Ranks are
  zero-padded to the largest rank per module, and rows that lack a module get zeros, so one pair of
  ``bmm`` calls per module serves the whole batch at every decode step.
- Nesting adds deltas: a knowledge adapter inside a skill adapter's block gives both.
- Differentiable: when A/B require grad, the delta is rebuilt inside each forward so gradients reach
  them (and any hypernetwork that produced them), even across several backward passes.

Generators: a ``with apply_lora(...)`` block that spans a ``yield`` would leave the adapter active in
the consumer's context between items (and a consumer in another thread would not see it). Bind once
with :func:`bind_lora` and activate around each forward instead, as ``BaseModel`` does when it streams.

>>> import torch
>>> from memory.lora.adapter import LoraAdapter
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 4))
>>> ad = LoraAdapter({"0": (torch.ones(1, 4), torch.ones(4, 1))}, "toy@0")
>>> with apply_lora(net, ad):
...     y = net(torch.zeros(1, 4))
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memory.errors import AdapterMismatchError, ValidationError
from memory.lora.adapter import LoraAdapter

__all__ = [
    "LoraBinding",
    "LoraLinear",
    "apply_lora",
    "apply_lora_batched",
    "bind_lora",
    "bind_lora_batched",
    "wrap_linears",
]

_Builder = Callable[[], tuple[Tensor, Tensor]]
_Delta = Callable[[Tensor, Tensor], Tensor]  # (x, base output y) -> y + delta(x)
_Deltas = Mapping["LoraLinear", _Delta]

# The adapters active in this context, innermost last; each entry maps wrapped modules to their delta.
_STACK: ContextVar[tuple[_Deltas, ...]] = ContextVar("pmem_lora_stack", default=())
_WRAP_LOCK = threading.Lock()
# The adapters already checked against each model: module -> {id(adapter): adapter}, both weakly held. A batch
# binds the same adapters again whenever a row joins or leaves; checking ~200 module paths cost ~3 ms an adapter.
_VALIDATED: weakref.WeakKeyDictionary[nn.Module, weakref.WeakValueDictionary[int, LoraAdapter]]
_VALIDATED = weakref.WeakKeyDictionary()
_VALIDATED_LOCK = threading.Lock()


class LoraLinear(nn.Linear):
    """An ``nn.Linear`` that adds the deltas of the adapters active in the caller's context.

    It shares the wrapped layer's ``weight`` and ``bias`` (no copy; tied weights stay tied) and keeps its
    ``state_dict`` keys, so fingerprints, PEFT export and checkpoints see the same model.

    >>> lin = LoraLinear(torch.nn.Linear(2, 3))
    >>> lin(torch.ones(1, 2)).shape
    torch.Size([1, 3])
    """

    def __init__(self, base: nn.Linear) -> None:
        nn.Module.__init__(self)  # not nn.Linear.__init__: that would allocate new weights
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.train(base.training)

    def forward(self, x: Tensor) -> Tensor:
        # As a 2-D matrix: a 3-D input whose batch stride is not packed (the last position of each row, as the
        # output head gets it with ``logits_to_keep=1``, even for one row) sends a bfloat16 matmul on the CPU
        # down a path ~20-200x slower (torch 2.13): 200 ms for one row and 3.8 s for 8 against 9-16 ms, for the
        # 49k x 576 head of SmolLM2. The 2-D view of the same rows takes the fast path; for a packed input it is free.
        y = F.linear(x.reshape(-1, x.shape[-1]), self.weight, self.bias).view(*x.shape[:-1], self.out_features)
        for deltas in _STACK.get():
            delta = deltas.get(self)
            if delta is not None:
                y = delta(x, y)
        return y


def wrap_linears(module: nn.Module, paths: Sequence[str] | None = None) -> None:
    """Replace the ``nn.Linear`` modules at ``paths`` (all of them when ``None``) by :class:`LoraLinear`.

    Idempotent and thread-safe. The output is unchanged while no adapter is active. Hooks registered on
    a module before it is wrapped stay on the old object, so wrap before registering hooks (``BaseModel``
    wraps when it is built).

    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    >>> wrap_linears(net); type(net[0]).__name__
    'LoraLinear'
    """
    with _WRAP_LOCK:
        if paths is None:
            paths = [n for n, m in module.named_modules() if type(m) is nn.Linear]
        for path in paths:
            sub = _submodule(module, path)
            if isinstance(sub, LoraLinear):
                continue
            if type(sub) is not nn.Linear:
                kind = (
                    "not an nn.Linear"
                    if not isinstance(sub, nn.Linear)
                    else "a subclass of nn.Linear, which LoRA cannot wrap"
                )
                raise AdapterMismatchError(f"module {path!r} is a {type(sub).__name__}, {kind}")
            if not path:
                raise AdapterMismatchError(
                    "the model itself is an nn.Linear; put it in a container (nn.Sequential) to adapt it"
                )
            parent, _, name = path.rpartition(".")
            setattr(module.get_submodule(parent), name, LoraLinear(sub))


def _submodule(module: nn.Module, path: str) -> nn.Module:
    try:
        return module.get_submodule(path)
    except AttributeError:
        raise AdapterMismatchError(f"module {path!r} does not exist in {type(module).__name__}") from None


def _as_module(model: Any) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module):
        return inner
    raise ValidationError(f"apply_lora needs a BaseModel or an nn.Module, got {type(model).__name__}")


def _wrapped(module: nn.Module, paths: Sequence[str]) -> dict[str, LoraLinear]:
    """The :class:`LoraLinear` at each path, wrapping the plain ``nn.Linear`` ones first."""
    if any(not isinstance(_submodule(module, p), LoraLinear) for p in paths):
        wrap_linears(module, paths)
    return {p: module.get_submodule(p) for p in paths}  # type: ignore[misc]


def _validate(adapter: LoraAdapter, model: Any, module: nn.Module) -> None:
    """``adapter.validate_for(model)``, once per (adapter, model) pair."""
    with _VALIDATED_LOCK:
        seen = _VALIDATED.get(module)
        if seen is not None and seen.get(id(adapter)) is adapter:
            return
    adapter.validate_for(model)
    with _VALIDATED_LOCK:
        _VALIDATED.setdefault(module, weakref.WeakValueDictionary())[id(adapter)] = adapter


class LoraBinding:
    """Adapters prepared for one model (cast, transposed, stacked): activate them around forward calls.

    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    >>> lora = bind_lora(net, LoraAdapter({"0": (torch.ones(1, 2), torch.ones(2, 1))}, "toy@0"))
    >>> with lora.active():
    ...     y = net(torch.ones(1, 2))
    """

    def __init__(self, deltas: dict[LoraLinear, _Delta]) -> None:
        self._deltas = deltas

    @contextmanager
    def active(self) -> Iterator[None]:
        """Add these adapters to the forward passes of this thread (or task) for the ``with`` block."""
        if not self._deltas:
            yield
            return
        token = _STACK.set((*_STACK.get(), self._deltas))
        try:
            yield
        finally:
            _STACK.reset(token)


def _needs_grad(tensors: Sequence[Tensor]) -> bool:
    return any(t.requires_grad for t in tensors)


def _cached(build: _Builder, lazy: bool) -> _Builder:
    """Build once when nothing requires grad; rebuild per forward otherwise (a fresh graph each time)."""
    if lazy:
        return build
    value = build()
    return lambda: value


def _delta_dtype(lin: nn.Linear, lazy: bool) -> torch.dtype:
    """The dtype the LoRA factors of ``lin`` are applied in: the layer's own, except float32 for inference with a
    bfloat16/float16 model on a CPU. There a rank-8 matrix product of a few rows takes ~40 us in bfloat16 and
    ~4-10 us in float32 (the CPU's half-precision kernels are built for large matrices), so float32 factors
    cut the adapter's share of a decode step several times over, and round less. Training keeps the layer's
    dtype (its graph is unchanged)."""
    dt = lin.weight.dtype
    if not lazy and lin.weight.device.type == "cpu" and dt in (torch.bfloat16, torch.float16):
        return torch.float32
    return dt


def _shared_delta(get: _Builder, lazy: bool) -> _Delta:
    if lazy:  # training: rebuild (cast/transposes) inside the graph of every forward

        def delta_grad(x: Tensor, y: Tensor) -> Tensor:
            at, bt = get()  # [in, r], [r, out]
            return y + ((x.to(at.dtype) @ at) @ bt).to(y.dtype)

        return delta_grad
    at, bt = get()

    def delta(x: Tensor, y: Tensor) -> Tensor:
        # decode hot path: few python-level ops, fused add into the fresh base output
        if x.dtype != at.dtype:
            x = x.to(at.dtype)
        if torch.is_grad_enabled():
            return y + ((x @ at) @ bt).to(y.dtype)
        if y.dtype != at.dtype:  # float32 factors on a bfloat16 CPU model (_delta_dtype)
            return y.add_(((x @ at) @ bt).to(y.dtype))
        y.view(-1, y.shape[-1]).addmm_(x.reshape(-1, x.shape[-1]) @ at, bt)
        return y

    return delta


def _batched_delta(get: _Builder, bs: int) -> _Delta:
    def delta(x: Tensor, y: Tensor) -> Tensor:
        at, bt = get()  # [bs, in, r], [bs, r, out]
        n = x.shape[0]
        if n != bs:
            if n % bs:
                raise ValidationError(
                    f"per-row adapters were given for {bs} rows but the forward batch has {n} rows; "
                    "pass one adapter (or None) per batch row"
                )
            at, bt = at.repeat_interleave(n // bs, 0), bt.repeat_interleave(n // bs, 0)
        squeeze = x.dim() == 2
        x3 = x.unsqueeze(1) if squeeze else x.reshape(n, -1, x.shape[-1])
        d = torch.bmm(torch.bmm(x3.to(at.dtype), at), bt)  # [n, T, out]
        d = d.reshape(y.shape) if not squeeze else d.squeeze(1)
        if d.dtype != y.dtype:
            d = d.to(y.dtype)
        return y + d if torch.is_grad_enabled() else y.add_(d)

    return delta


def bind_lora(model: Any, adapters: LoraAdapter | Sequence[LoraAdapter | None] | None) -> LoraBinding:
    """Prepare one adapter for every row, or adapter ``i`` for batch row ``i``; see :func:`apply_lora`.

    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    >>> with bind_lora(net, None).active():
    ...     y = net(torch.ones(1, 2))
    """
    module = _as_module(model)
    if adapters is None:
        return LoraBinding({})
    deltas: dict[LoraLinear, _Delta] = {}
    if isinstance(adapters, LoraAdapter):
        _validate(adapters, model, module)
        mods = _wrapped(module, list(adapters.weights))
        for path, (a, b) in adapters.weights.items():
            lin = mods[path]
            lazy = _needs_grad((a, b))
            dt, dev = _delta_dtype(lin, lazy), lin.weight.device

            def build(a: Tensor = a, b: Tensor = b, dt: torch.dtype = dt, dev: Any = dev) -> tuple[Tensor, Tensor]:
                return a.to(dev, dt).t().contiguous(), b.to(dev, dt).t().contiguous()

            deltas[lin] = _shared_delta(_cached(build, lazy), lazy)
        return LoraBinding(deltas)
    rows = list(adapters)
    if not rows:
        raise ValidationError("apply_lora got an empty adapter sequence; pass None for no adapter")
    for ad in rows:
        if ad is not None:
            if not isinstance(ad, LoraAdapter):
                raise ValidationError(f"apply_lora rows must be LoraAdapter or None, got {type(ad).__name__}")
            _validate(ad, model, module)
    paths: list[str] = []
    for ad in rows:
        if ad is not None:
            paths.extend(p for p in ad.weights if p not in paths)
    mods = _wrapped(module, paths)
    for path in paths:
        lin = mods[path]
        pairs = [ad.weights.get(path) if ad is not None else None for ad in rows]
        lazy = _needs_grad([t for pr in pairs if pr is not None for t in pr])
        deltas[lin] = _batched_delta(_cached(_row_stacker(lin, pairs, _delta_dtype(lin, lazy)), lazy), len(rows))
    return LoraBinding(deltas)


@contextmanager
def apply_lora(model: Any, adapters: LoraAdapter | Sequence[LoraAdapter | None] | None) -> Iterator[None]:
    """Apply one adapter to every row, or adapter ``i`` to batch row ``i``, for the ``with`` block.

    Only forward passes of the calling thread (or asyncio task) inside the block see the adapters.

    Args:
        model: a ``BaseModel`` (its fingerprint is checked) or an ``nn.Module`` (module paths are
            relative to it).
        adapters: ``None`` (no-op), one ``LoraAdapter``, or a sequence with one entry per batch row
            (``None`` entries run the base model).

    Raises:
        AdapterMismatchError: an adapter for another base model, a missing module or wrong shapes.

    >>> import torch
    >>> from memory.lora.adapter import LoraAdapter
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    >>> ad = LoraAdapter({"0": (torch.ones(1, 2), torch.ones(2, 1))}, "toy@0")
    >>> with apply_lora(net, [ad, None]):
    ...     out = net(torch.ones(2, 2))
    """
    with bind_lora(model, adapters).active():
        yield


def _row_stacker(lin: nn.Linear, pairs: list[tuple[Tensor, Tensor] | None], dt: torch.dtype) -> _Builder:
    """Zero-pad each row's (A, B) to the largest rank and stack as [bs, in, r], [bs, r, out] in dtype ``dt``."""
    dev = lin.weight.device
    r = max((p[0].shape[0] for p in pairs if p is not None), default=1)

    def build() -> tuple[Tensor, Tensor]:
        ats, bts = [], []
        for p in pairs:
            if p is None:
                ats.append(torch.zeros(lin.in_features, r, dtype=dt, device=dev))
                bts.append(torch.zeros(r, lin.out_features, dtype=dt, device=dev))
                continue
            a, b = p[0].to(dev, dt), p[1].to(dev, dt)
            pad = r - a.shape[0]
            if pad:
                a = torch.cat([a, a.new_zeros(pad, a.shape[1])], 0)
                b = torch.cat([b, b.new_zeros(b.shape[0], pad)], 1)
            ats.append(a.t())
            bts.append(b.t())
        return torch.stack(ats).contiguous(), torch.stack(bts).contiguous()

    return build


def bind_lora_batched(model: Any, weights: dict[str, tuple[Tensor, Tensor]]) -> LoraBinding:
    """Prepare raw per-row tensors; see :func:`apply_lora_batched`.

    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 5))
    >>> lora = bind_lora_batched(net, {"0": (torch.randn(2, 4, 3), torch.zeros(2, 5, 4))})
    """
    module = _as_module(model)
    mods = _wrapped(module, list(weights))
    deltas: dict[LoraLinear, _Delta] = {}
    bs_seen: int | None = None
    for path, (a, b) in weights.items():
        lin = mods[path]
        if a.dim() != 3 or b.dim() != 3 or a.shape[0] != b.shape[0] or a.shape[1] != b.shape[2]:
            raise AdapterMismatchError(
                f"batched weights for {path!r} have shapes A {tuple(a.shape)}, B {tuple(b.shape)}; "
                "expected A [bs, r, in_features] and B [bs, out_features, r]"
            )
        if a.shape[2] != lin.in_features or b.shape[1] != lin.out_features:
            raise AdapterMismatchError(
                f"batched weights for {path!r} do not fit Linear({lin.in_features} -> {lin.out_features}): "
                f"A {tuple(a.shape)}, B {tuple(b.shape)}"
            )
        if bs_seen is not None and a.shape[0] != bs_seen:
            raise AdapterMismatchError(f"batched weights disagree on batch size: {bs_seen} vs {a.shape[0]} at {path!r}")
        bs_seen = a.shape[0]
        dt, dev = lin.weight.dtype, lin.weight.device

        def build(a: Tensor = a, b: Tensor = b, dt: torch.dtype = dt, dev: Any = dev) -> tuple[Tensor, Tensor]:
            return a.to(dev, dt).transpose(1, 2), b.to(dev, dt).transpose(1, 2)

        deltas[lin] = _batched_delta(_cached(build, _needs_grad((a, b))), a.shape[0])
    return LoraBinding(deltas)


@contextmanager
def apply_lora_batched(model: Any, weights: dict[str, tuple[Tensor, Tensor]]) -> Iterator[None]:
    """Apply raw per-row tensors: ``path -> (A [bs, r, in], B [bs, out, r])``; row ``i`` of the batch
    gets ``B[i] @ A[i]``. Meant for hypernetworks (differentiable; no per-row objects).

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 5))
    >>> w = {"0": (torch.randn(2, 4, 3, requires_grad=True), torch.zeros(2, 5, 4))}
    >>> with apply_lora_batched(net, w):
    ...     net(torch.ones(2, 7, 3)).sum().backward()
    """
    with bind_lora_batched(model, weights).active():
        yield
