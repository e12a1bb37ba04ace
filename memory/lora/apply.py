"""Apply LoRA adapters to a loaded model without touching its weights.

``apply_lora`` patches the ``forward`` of each targeted ``nn.Linear`` *instance* (the class and the
weights are untouched) so that ``y = base(x) + (x @ A^T) @ B^T``, and restores it on exit. Patches
nest: applying a knowledge adapter inside a skill adapter's context adds both deltas. Exit contexts in
LIFO order (``with`` does this for you).

- One adapter: applied to every batch row.
- A sequence: adapter ``i`` applies to batch row ``i`` (``None`` = base model for that row). Ranks are
  zero-padded to the largest rank per module, and rows that lack a module get zeros, so one pair of
  ``bmm`` calls per module serves the whole batch at every decode step.
- Differentiable: when A/B require grad, the delta is rebuilt inside each forward so gradients reach
  them (and any hypernetwork that produced them), even across several backward passes.

>>> import torch
>>> from memory.lora.adapter import LoraAdapter
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 4))
>>> ad = LoraAdapter({"0": (torch.ones(1, 4), torch.ones(4, 1))}, "toy@0")
>>> with apply_lora(net, ad):
...     y = net(torch.zeros(1, 4))
"""

from __future__ import annotations

import contextlib
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from memory.errors import AdapterMismatchError, ValidationError
from memory.lora.adapter import LoraAdapter

__all__ = ["apply_lora", "apply_lora_batched"]

_Builder = Callable[[], tuple[Tensor, Tensor]]


def _as_module(model: Any) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module):
        return inner
    raise ValidationError(f"apply_lora needs a BaseModel or an nn.Module, got {type(model).__name__}")


def _linear(module: nn.Module, path: str) -> nn.Linear:
    try:
        sub = module.get_submodule(path)
    except AttributeError:
        raise AdapterMismatchError(f"module {path!r} does not exist in {type(module).__name__}") from None
    if not isinstance(sub, nn.Linear):
        raise AdapterMismatchError(f"module {path!r} is a {type(sub).__name__}, not an nn.Linear")
    return sub


def _needs_grad(tensors: Sequence[Tensor]) -> bool:
    return any(t.requires_grad for t in tensors)


def _cached(build: _Builder, lazy: bool) -> _Builder:
    """Build once when nothing requires grad; rebuild per forward otherwise (a fresh graph each time)."""
    if lazy:
        return build
    value = build()
    return lambda: value


def _patch(lin: nn.Linear, delta: Callable[[Tensor, Tensor], Tensor], stack: contextlib.ExitStack) -> None:
    """Wrap ``lin.forward`` (instance attribute) with ``delta(x, y)``; undo on ``stack`` close."""
    had_own = "forward" in lin.__dict__
    previous = lin.__dict__.get("forward")
    inner = lin.forward

    def forward(x: Tensor) -> Tensor:
        return delta(x, inner(x))

    lin.forward = forward  # type: ignore[method-assign]

    def restore() -> None:
        if had_own:
            lin.forward = previous  # type: ignore[method-assign]
        else:
            lin.__dict__.pop("forward", None)

    stack.callback(restore)


def _shared_delta(get: _Builder, lazy: bool) -> Callable[[Tensor, Tensor], Tensor]:
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
        y.view(-1, y.shape[-1]).addmm_(x.reshape(-1, x.shape[-1]) @ at, bt)
        return y

    return delta


def _batched_delta(get: _Builder, bs: int) -> Callable[[Tensor, Tensor], Tensor]:
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


@contextmanager
def apply_lora(model: Any, adapters: LoraAdapter | Sequence[LoraAdapter | None] | None) -> Iterator[None]:
    """Apply one adapter to every row, or adapter ``i`` to batch row ``i``, for the ``with`` block.

    Args:
        model: a ``BaseModel`` or an ``nn.Module`` (module paths are relative to it).
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
    module = _as_module(model)
    if adapters is None:
        yield
        return
    with contextlib.ExitStack() as stack:
        if isinstance(adapters, LoraAdapter):
            adapters.validate_for(model)
            for path, (a, b) in adapters.weights.items():
                lin = _linear(module, path)
                dt, dev = lin.weight.dtype, lin.weight.device

                def build(a: Tensor = a, b: Tensor = b, dt: torch.dtype = dt, dev: Any = dev) -> tuple[Tensor, Tensor]:
                    return a.to(dev, dt).t(), b.to(dev, dt).t()

                lazy = _needs_grad((a, b))
                _patch(lin, _shared_delta(_cached(build, lazy), lazy), stack)
        else:
            rows = list(adapters)
            if not rows:
                raise ValidationError("apply_lora got an empty adapter sequence; pass None for no adapter")
            for ad in rows:
                if ad is not None:
                    if not isinstance(ad, LoraAdapter):
                        raise ValidationError(f"apply_lora rows must be LoraAdapter or None, got {type(ad).__name__}")
                    ad.validate_for(model)
            paths: list[str] = []
            for ad in rows:
                if ad is not None:
                    paths.extend(p for p in ad.weights if p not in paths)
            for path in paths:
                lin = _linear(module, path)
                pairs = [ad.weights.get(path) if ad is not None else None for ad in rows]
                flat = [t for pr in pairs if pr is not None for t in pr]
                _patch(lin, _batched_delta(_cached(_row_stacker(lin, pairs), _needs_grad(flat)), len(rows)), stack)
        yield


def _row_stacker(lin: nn.Linear, pairs: list[tuple[Tensor, Tensor] | None]) -> _Builder:
    """Zero-pad each row's (A, B) to the largest rank and stack as [bs, in, r], [bs, r, out]."""
    dt, dev = lin.weight.dtype, lin.weight.device
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
    module = _as_module(model)
    with contextlib.ExitStack() as stack:
        bs_seen: int | None = None
        for path, (a, b) in weights.items():
            lin = _linear(module, path)
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

            _patch(lin, _batched_delta(_cached(build, _needs_grad((a, b))), a.shape[0]), stack)
        yield
