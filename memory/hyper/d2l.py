"""Doc-to-LoRA: a hypernetwork that turns a document into a LoRA adapter in one forward pass.

Design (a fast-weight write, not a Perceiver; see ``memory/checkpoints/d2l-smollm2-135m/MODEL_CARD.md``):
the frozen base model reads a chunk of the document once. For every target layer ``l`` we keep, per
document token ``i``, the input of ``mlp.down_proj`` (``m_i``, the MLP's intermediate activation, 1536
wide for SmolLM2-135M) and the embedding of the *next* token ``e_{i+1}``. Each token becomes one rank-1
component of the LoRA on ``layers.l.mlp.down_proj``:

    A_i = g_i * normalize(m_i - mu + U V^T m_i)            # key, lives in down_proj's input space
    B_i = alpha * normalize(e_{i+1}) + W_e normalize(e_{i+1}) + W_m normalize(m_i)   # value, residual space

so that for a query token with intermediate activation ``x`` the update ``B (A x) = sum_i B_i <A_i, x>``
is linear attention from the query onto the document tokens: it writes "what came next in the
document" into the residual stream whenever the query looks like the place that preceded it (an
induction head stored in weights). ``g_i`` is a learned salience gate; at inference only the ``rank``
tokens with the largest gates of each chunk are kept, so a chunk costs ``rank`` LoRA components per
target layer, and a document keeps at most ``max_rank`` components per layer (highest gates first), which
bounds memory for very long documents and keeps filler from drowning a needle. ``alpha``, ``W_e`` and
``W_m`` start at zero: the adapter is exactly zero at initialisation while the gradient with respect to
them is document-specific from the first step. A learned document-independent bias LoRA (rank
``bias_rank``, ``B`` zero at init) is appended to every adapter.

Long documents are split into chunks of ``chunk_tokens`` tokens; each chunk gives its own components and
the chunk adapters are concatenated along rank (the deltas add up).

>>> sizes = dict(hidden_size=8, intermediate_size=16, num_layers=2)
>>> cfg = D2LConfig(**sizes, target_layers=(1,), rank=2, bias_rank=1, key_rank=4)
>>> net = D2LHypernetwork(cfg)
>>> sum(p.numel() for p in net.parameters()) > 0
True
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memory.errors import AdapterMismatchError, ModelError, ValidationError
from memory.hyper import identity
from memory.lora.adapter import LoraAdapter, concat

log = logging.getLogger(__name__)

__all__ = [
    "D2LConfig",
    "D2LHypernetwork",
    "DocFeatures",
    "checkpoint_sha256",
    "document_features",
    "internalize",
    "load_checkpoint",
    "save_checkpoint",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODULE = "mlp.down_proj"


@dataclass
class D2LConfig:
    """Shape and hyper-parameters of a :class:`D2LHypernetwork`.

    ``target_layers`` are indices of decoder layers whose ``mlp.down_proj`` receives the LoRA; ``rank`` is the
    number of document components kept per chunk and layer at inference; ``key_rank`` the rank of the learned
    key correction ``U V^T``.
    """

    hidden_size: int = 576
    intermediate_size: int = 1536
    num_layers: int = 30
    target_layers: tuple[int, ...] = (20, 23, 26, 29)
    rank: int = 32
    bias_rank: int = 8
    key_rank: int = 128
    chunk_tokens: int = 512
    max_rank: int | None = 64  # per document and layer, the highest-gate components kept (None: keep all)
    base_model: str = ""  # fingerprint of the base model the checkpoint was trained for
    module: str = MODULE
    extra: dict[str, Any] = field(default_factory=dict)  # training provenance (steps, data, metrics)

    def __post_init__(self) -> None:
        self.target_layers = tuple(int(x) for x in self.target_layers)
        if not self.target_layers or any(not 0 <= x < self.num_layers for x in self.target_layers):
            raise ValidationError(f"target_layers must be within [0, {self.num_layers}), got {self.target_layers!r}")
        if self.rank < 1 or self.bias_rank < 0 or self.key_rank < 1:
            raise ValidationError(
                f"rank/bias_rank/key_rank must be positive, got {self.rank}/{self.bias_rank}/{self.key_rank}"
            )
        if self.chunk_tokens < 2:
            raise ValidationError(f"chunk_tokens must be >= 2, got {self.chunk_tokens!r}")
        if self.max_rank is not None and self.max_rank < 1:
            raise ValidationError(f"max_rank must be positive or None, got {self.max_rank!r}")

    def module_path(self, layer: int) -> str:
        return f"model.layers.{layer}.{self.module}"

    @classmethod
    def for_model(cls, hf_config: Any, **kw: Any) -> D2LConfig:
        """A config sized for a transformers llama-style config (upper layers targeted by default).

        >>> from types import SimpleNamespace
        >>> D2LConfig.for_model(SimpleNamespace(hidden_size=8, intermediate_size=16, num_hidden_layers=4)).target_layers
        (1, 2, 3)
        """
        n = int(hf_config.num_hidden_layers)
        default = tuple(sorted({max(0, n - 1 - 3 * k) for k in range(4)})) if n >= 12 else tuple(range(n // 4, n))
        kw.setdefault("target_layers", default)
        return cls(
            hidden_size=int(hf_config.hidden_size),
            intermediate_size=int(hf_config.intermediate_size),
            num_layers=n,
            **kw,
        )


@dataclass
class DocFeatures:
    """What the frozen base model saw of a batch of chunks.

    ``m[l]``: ``[bs, T, intermediate]`` inputs of ``down_proj`` at layer ``l``; ``next_emb``: ``[bs, T, hidden]``
    embedding of the following token (zero at the last token); ``mask``: ``[bs, T]`` True where a component may
    be written (real token with a real successor).
    """

    m: dict[int, Tensor]
    next_emb: Tensor
    mask: Tensor


@torch.no_grad()
def document_features(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, layers: Sequence[int]
) -> DocFeatures:
    """Run the frozen base model over token chunks and collect the hypernetwork's inputs.

    ``model`` is a transformers causal LM (``model.model.layers[i].mlp.down_proj`` must exist). The LM head
    is skipped and the forward stops after the last target layer.

    >>> # feats = document_features(base.model, ids, mask, (20, 29))
    """
    inner: Any = model.model  # the HF decoder: its layers and embeddings are found by name
    captured: dict[int, Tensor] = {}
    last = max(layers)

    class _Stop(Exception):
        pass

    def hook(layer: int) -> Callable[..., None]:
        def fn(_mod: nn.Module, inp: tuple[Tensor, ...]) -> None:
            captured[layer] = inp[0].detach()
            if layer == last:
                raise _Stop

        return fn

    handles = [inner.layers[layer].mlp.down_proj.register_forward_pre_hook(hook(layer)) for layer in layers]
    try:
        inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    emb = inner.embed_tokens.weight
    nxt = torch.zeros_like(input_ids)
    nxt[:, :-1] = input_ids[:, 1:]
    next_emb = emb[nxt].detach()
    mask = attention_mask.bool().clone()
    mask[:, :-1] &= attention_mask[:, 1:].bool()
    mask[:, -1] = False
    return DocFeatures(m=dict(captured), next_emb=next_emb, mask=mask)


class _LayerWriter(nn.Module):
    """Writes the (A, B) components of one target layer from that layer's token features."""

    def __init__(self, cfg: D2LConfig) -> None:
        super().__init__()
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.mu = nn.Parameter(torch.zeros(f))  # common-mode of the keys (set from data before training)
        self.key_v = nn.Parameter(torch.randn(f, cfg.key_rank) / math.sqrt(f))
        self.key_u = nn.Parameter(torch.zeros(cfg.key_rank, f))
        self.gate = nn.Linear(f, 1)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)
        self.alpha = nn.Parameter(torch.zeros(d))
        self.w_e = nn.Linear(d, d, bias=False)
        self.w_m = nn.Linear(f, d, bias=False)
        nn.init.zeros_(self.w_e.weight)
        nn.init.zeros_(self.w_m.weight)
        self.bias_a = nn.Parameter(torch.randn(cfg.bias_rank, f) * (0.2 / math.sqrt(f * max(cfg.bias_rank, 1))))
        self.bias_b = nn.Parameter(torch.zeros(d, cfg.bias_rank))

    def forward(self, m: Tensor, next_emb: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``m [bs,T,f]``, ``next_emb [bs,T,d]``, ``mask [bs,T]`` -> ``A [bs,T,f]``, ``B [bs,T,d]``, ``g [bs,T]``."""
        m = m.float()
        mn = F.normalize(m, dim=-1)
        key = F.normalize(m - self.mu + (m @ self.key_v) @ self.key_u, dim=-1)
        g = torch.sigmoid(self.gate(mn).squeeze(-1)) * mask
        en = F.normalize(next_emb.float(), dim=-1)
        value = self.alpha * en + self.w_e(en) + self.w_m(mn)
        return key * g.unsqueeze(-1), value, g


class D2LHypernetwork(nn.Module):
    """Doc-to-LoRA hypernetwork (fast-weight writer). See the module docstring for the maths.

    >>> sizes = dict(hidden_size=8, intermediate_size=16, num_layers=2)
    >>> cfg = D2LConfig(**sizes, target_layers=(1,), rank=2, bias_rank=1, key_rank=4)
    >>> net = D2LHypernetwork(cfg)
    >>> f = DocFeatures({1: torch.randn(1, 5, 16)}, torch.randn(1, 5, 8), torch.ones(1, 5, dtype=torch.bool))
    >>> A, B, g = net(f)[1]  # per token: A [bs, T, in], B [bs, T, out], gate [bs, T]
    >>> float((B.transpose(1, 2) @ A).detach().abs().max())  # zero delta at init
    0.0
    """

    def __init__(self, config: D2LConfig) -> None:
        super().__init__()
        self.config = config
        self.writers = nn.ModuleDict({str(layer): _LayerWriter(config) for layer in config.target_layers})
        # the identity of the checkpoint it was loaded from (memory.hyper.identity); "" when not loaded from one
        self.checkpoint_sha256 = ""

    def forward(self, feats: DocFeatures) -> dict[int, tuple[Tensor, Tensor, Tensor]]:
        """Per target layer: ``A [bs,T,in]`` (rows), ``B [bs,T,out]`` (rows, i.e. B transposed), gates ``[bs,T]``."""
        return {
            layer: self.writer(layer)(feats.m[layer], feats.next_emb, feats.mask) for layer in self.config.target_layers
        }

    def writer(self, layer: int) -> _LayerWriter:
        """The writer of one target layer (``writers`` is keyed by the layer number as a string)."""
        return cast(_LayerWriter, self.writers[str(layer)])

    def bias(self, layer: int) -> tuple[Tensor, Tensor]:
        """The learned document-independent bias LoRA of one layer: ``A [r,in]``, ``B [out,r]``."""
        w = self.writer(layer)
        return w.bias_a, w.bias_b

    def batched_weights(self, feats: DocFeatures) -> tuple[dict[str, tuple[Tensor, Tensor]], Tensor]:
        """Differentiable per-row LoRA for ``apply_lora_batched``: every document token is a component, plus the
        bias block. Returns ``{path: (A [bs,T+rb,in], B [bs,out,T+rb])}`` and the gates ``[bs, n_layers, T]``.
        """
        out: dict[str, tuple[Tensor, Tensor]] = {}
        gates = []
        for layer, (a, b, g) in self.forward(feats).items():
            ba, bb = self.bias(layer)
            bs = a.shape[0]
            a = torch.cat([a, ba.unsqueeze(0).expand(bs, -1, -1)], dim=1)
            b = torch.cat([b.transpose(1, 2), bb.unsqueeze(0).expand(bs, -1, -1)], dim=2)
            out[self.config.module_path(layer)] = (a, b)
            gates.append(g)
        return out, torch.stack(gates, 1)

    @torch.no_grad()
    def init_key_centres(self, feats: DocFeatures) -> None:
        """Set each layer's key centre ``mu`` to the mean feature of real tokens (common-mode removal)."""
        for layer in self.config.target_layers:
            mk = feats.mask.unsqueeze(-1).float()
            self.writer(layer).mu.copy_((feats.m[layer].float() * mk).sum((0, 1)) / mk.sum().clamp(min=1))

    def regularised_parameters(self) -> Iterator[Tensor]:
        for layer in self.config.target_layers:
            w = self.writer(layer)
            yield from (w.key_v, w.key_u, w.w_e.weight, w.w_m.weight)


# ---------------------------------------------------------------------------- checkpoints
def checkpoint_sha256(directory: str | Path) -> str:
    """The checkpoint's identity in provenance: :func:`memory.hyper.identity.checkpoint_sha256`.

    >>> # checkpoint_sha256("memory/checkpoints/d2l-smollm2-135m")
    """
    return identity.checkpoint_sha256(directory)


def save_checkpoint(net: D2LHypernetwork, directory: str | Path, dtype: torch.dtype = torch.float32) -> str:
    """Write ``config.json`` + ``model.safetensors`` into ``directory``; returns the checkpoint's sha256.

    >>> # save_checkpoint(net, "/tmp/ckpt", dtype=torch.bfloat16)
    """
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg = asdict(net.config)
    cfg["target_layers"] = list(net.config.target_layers)
    cfg["kind"] = "d2l-fastweight"
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in net.state_dict().items()}
    tmp_w, tmp_c = d / (WEIGHTS_NAME + ".tmp"), d / (CONFIG_NAME + ".tmp")
    save_file(tensors, str(tmp_w), metadata={"format": "pt"})
    tmp_c.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tmp_w.replace(d / WEIGHTS_NAME)
    tmp_c.replace(d / CONFIG_NAME)
    return checkpoint_sha256(d)


def load_checkpoint(directory: str | Path, base: Any | None = None) -> D2LHypernetwork:
    """Load a hypernetwork; with ``base`` (a ``BaseModel``), check it was trained for that base model.

    Raises :class:`ModelError` for a missing/corrupt checkpoint and :class:`AdapterMismatchError` when the
    checkpoint belongs to another base model (fingerprint or shapes differ).

    >>> # net = load_checkpoint("memory/checkpoints/d2l-smollm2-135m", base)
    """
    from safetensors.torch import load_file

    d = Path(directory)
    try:
        raw = json.loads((d / CONFIG_NAME).read_text())
        tensors = load_file(str(d / WEIGHTS_NAME))
    except FileNotFoundError as e:
        raise ModelError(f"no D2L checkpoint at {d}: {e.filename} is missing") from e
    except Exception as e:  # corrupt JSON or safetensors
        raise ModelError(
            f"D2L checkpoint at {d} is unreadable ({e}); restore it or retrain with `pmem train d2l`"
        ) from e
    raw.pop("kind", None)
    try:
        cfg = D2LConfig(**raw)
    except TypeError as e:
        raise ModelError(f"D2L checkpoint config at {d} has unknown fields: {e}") from e
    if base is not None:
        _check_base(cfg, base)
    net = D2LHypernetwork(cfg)
    try:
        net.load_state_dict({k: v.float() for k, v in tensors.items()})
    except RuntimeError as e:
        raise ModelError(f"D2L checkpoint at {d} does not match its config: {e}") from e
    net.eval().requires_grad_(False)
    net.checkpoint_sha256 = checkpoint_sha256(d)
    return net


def _check_base(cfg: D2LConfig, base: Any) -> None:
    mc = base.model.config
    shapes = (int(mc.hidden_size), int(mc.intermediate_size), int(mc.num_hidden_layers))
    if shapes != (cfg.hidden_size, cfg.intermediate_size, cfg.num_layers):
        raise AdapterMismatchError(
            f"the D2L checkpoint was trained for a base model with (hidden, intermediate, layers) = "
            f"{(cfg.hidden_size, cfg.intermediate_size, cfg.num_layers)}, but the loaded base model has {shapes}; "
            "use a checkpoint trained for this base model (`pmem train d2l`)"
        )
    fp = getattr(base, "fingerprint", None)
    if fp:
        identity.check_compatible("the D2L checkpoint", cfg.base_model, fp)


# ---------------------------------------------------------------------------- internalization
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "d2l-smollm2-135m"
_LOADED: dict[tuple[str, int], D2LHypernetwork] = {}


def _chunks_of(ids: list[int], size: int) -> list[list[int]]:
    """Chunks of ``size`` tokens that overlap by one token, so every token but the last has its successor."""
    if len(ids) <= size + 1:
        return [ids]
    return [ids[i : i + size + 1] for i in range(0, len(ids) - 1, size)]


def _top_components(a: Tensor, b: Tensor, g: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Keep the ``k`` components with the largest gates (zero-gated ones dropped): rows of A, rows of B, gates."""
    n = int((g > 0).sum())
    k = min(k, n)
    idx = g.topk(k).indices if k > 0 else g.new_zeros(0, dtype=torch.long)
    return a[idx], b[idx], g[idx]


class _DocBuffer:
    """The components of one document so far, per layer; keeps at most ``max_rank`` (highest gates) per layer."""

    def __init__(self, max_rank: int | None) -> None:
        self.max_rank = max_rank
        self.parts: dict[int, list[tuple[int, Tensor, Tensor, Tensor]]] = {}
        self.count: dict[int, int] = {}

    def add(self, layer: int, chunk: int, a: Tensor, b: Tensor, g: Tensor) -> None:
        self.parts.setdefault(layer, []).append((chunk, a, b, g))
        self.count[layer] = self.count.get(layer, 0) + a.shape[0]
        if self.max_rank is not None and self.count[layer] > self.max_rank * 3 // 2 + 64:
            self._prune(layer)

    def _prune(self, layer: int) -> None:
        parts = self.parts[layer]
        g = torch.cat([p[3] for p in parts])
        if self.max_rank is None or g.numel() <= self.max_rank:
            return
        keep = torch.zeros(g.numel(), dtype=torch.bool)
        keep[g.float().topk(self.max_rank).indices] = True
        out, start = [], 0
        for chunk, a, b, gg in parts:
            m = keep[start : start + a.shape[0]]
            start += a.shape[0]
            if m.any():
                out.append((chunk, a[m], b[m], gg[m]))
        self.parts[layer] = out
        self.count[layer] = int(keep.sum())

    def weights(self, layer: int) -> tuple[Tensor, Tensor] | None:
        if layer not in self.parts:
            return None
        self._prune(layer)
        parts = sorted(self.parts[layer], key=lambda p: p[0])  # document order
        return torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts]).transpose(0, 1).contiguous()


def _internalize_with(
    net: D2LHypernetwork,
    base: Any,
    texts: Sequence[str],
    *,
    chunk_tokens: int | None,
    rank: int | None,
    max_rank: int | None,
    batch_chunks: int,
    dtype: torch.dtype,
    progress: Callable[[int, int], None] | None,
) -> list[LoraAdapter]:
    cfg = net.config
    size = int(chunk_tokens or cfg.chunk_tokens)
    k = int(rank or cfg.rank)
    if size < 2:
        raise ValidationError(f"chunk_tokens must be >= 2, got {size}")
    if max_rank is not None and max_rank < 1:
        raise ValidationError(f"max_rank must be positive or None, got {max_rank}")
    tok, model = base.tokenizer, base.model
    fingerprint = getattr(base, "fingerprint", None) or cfg.base_model or "unknown"
    docs: list[list[list[int]]] = []
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValidationError(f"document {i} is empty; internalize needs non-empty text")
        ids = tok(text, add_special_tokens=False).input_ids
        if not ids:
            raise ValidationError(f"document {i} has no tokens after tokenisation")
        docs.append(_chunks_of(ids, size))
    # one queue of (doc, chunk) ordered by length so that a batch pads little
    order = sorted(
        ((d, c) for d, chunks in enumerate(docs) for c in range(len(chunks))), key=lambda dc: -len(docs[dc[0]][dc[1]])
    )
    total = len(order)
    buffers = [_DocBuffer(max_rank) for _ in docs]
    dev = next(model.parameters()).device
    t0 = time.perf_counter()
    done = 0
    with torch.inference_mode():
        for s in range(0, total, batch_chunks):
            group = order[s : s + batch_chunks]
            rows = [docs[d][c] for d, c in group]
            T = max(len(r) for r in rows)
            ids = torch.zeros((len(rows), T), dtype=torch.long, device=dev)
            mask = torch.zeros((len(rows), T), dtype=torch.long, device=dev)
            for j, r in enumerate(rows):
                ids[j, : len(r)] = torch.tensor(r, device=dev)
                mask[j, : len(r)] = 1
            feats = document_features(model, ids, mask, cfg.target_layers)
            out = net(feats)
            for j, (d, c) in enumerate(group):
                for layer, (a, b, g) in out.items():
                    ta, tb, tg = _top_components(a[j], b[j], g[j], k)
                    buffers[d].add(layer, c, ta.to("cpu", dtype), tb.to("cpu", dtype), tg.to("cpu"))
            done += len(group)
            if progress is not None:
                progress(done, total)
    elapsed = time.perf_counter() - t0
    sha = net.checkpoint_sha256
    adapters = []
    for d, buf in enumerate(buffers):
        doc_w = {cfg.module_path(layer): got for layer in cfg.target_layers if (got := buf.weights(layer)) is not None}
        bias_w = {
            cfg.module_path(layer): tuple(t.detach().to("cpu", dtype) for t in net.bias(layer))
            for layer in cfg.target_layers
        }
        ad = concat([LoraAdapter(doc_w, fingerprint), LoraAdapter(bias_w, fingerprint)])  # type: ignore[arg-type]
        ad.metadata.update(
            {
                "kind": "d2l",
                "hypernetwork_sha256": sha,
                "chunks": str(len(docs[d])),
                "chunk_tokens": str(size),
                "rank_per_chunk": str(k),
                "max_rank": str(max_rank),
                "bias_rank": str(cfg.bias_rank),
                "tokens": str(sum(len(c) for c in docs[d]) - len(docs[d]) + 1),
                "batch_seconds": f"{elapsed:.4f}",
            }
        )
        adapters.append(ad)
    log.debug("internalized %d documents (%d chunks) in %.3f s", len(texts), total, elapsed)
    return adapters


def internalize(
    base: Any,
    texts: Sequence[str],
    *,
    hypernet: D2LHypernetwork | None = None,
    checkpoint: str | Path | None = None,
    chunk_tokens: int | None = None,
    rank: int | None = None,
    max_rank: int | None = None,
    batch_chunks: int = 8,
    dtype: torch.dtype = torch.bfloat16,
    progress: Callable[[int, int], None] | None = None,
) -> list[LoraAdapter]:
    """Turn documents into LoRA adapters for ``base`` in batched forward passes (no gradient steps).

    Documents longer than ``chunk_tokens`` are split; each chunk contributes ``rank`` components per target
    layer, and the chunk adapters plus the bias adapter are concatenated along rank. Chunks are streamed in
    batches of ``batch_chunks``; once a document holds more than ``max_rank`` components per layer (default:
    the checkpoint's ``max_rank``, which may itself be ``None``: keep all), only those with the largest salience
    gates are kept.
    That bounds memory (a 1M-token document included) and also removes the noise that many low-gate filler
    components add to the linear-attention read-out of long documents.
    ``progress(done_chunks, total_chunks)`` is called after every batch.

    Args:
        base: a ``BaseModel`` (``.model``, ``.tokenizer``, ``.fingerprint``).
        texts: the documents (each non-empty).
        hypernet: a loaded hypernetwork; default: ``checkpoint`` (default: the shipped checkpoint).

    >>> # adapters = internalize(load_base_model(), ["The vault code is 7179."])
    """
    if isinstance(texts, str):
        raise ValidationError("internalize takes a list of documents, not a single string")
    if not texts:
        return []
    if hypernet is None:
        path = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
        key = (str(path.resolve()), id(base))
        if key not in _LOADED:
            net = load_checkpoint(path, base)
            _LOADED.clear()
            _LOADED[key] = net
        hypernet = _LOADED[key]
    else:
        _check_base(hypernet.config, base)
    if max_rank is None:
        max_rank = hypernet.config.max_rank
    return _internalize_with(
        hypernet,
        base,
        texts,
        chunk_tokens=chunk_tokens,
        rank=rank,
        max_rank=max_rank,
        batch_chunks=batch_chunks,
        dtype=dtype,
        progress=progress,
    )
