"""Text-to-LoRA: a task description becomes a LoRA adapter in one forward pass.

Pipeline (after Charakorn et al. 2025, "Text-to-LoRA"; re-implemented, sizes scaled to a 135M base model):

    description --MiniLM, mean pool--> e [384] --Linear+LN--> task code [latent/2]
    (task code, layer embedding [latent/4], module embedding [latent/4]) --concat--> [latent]
    --> mixer MLP --> 2 residual MLP blocks --> Linear+SiLU to head_in --> head(s) --> A [r, in], B [out, r]

One trunk call serves every (layer, module) pair of the adapter: the pairs are the batch rows.

Sizes (the paper's L / M / S):

- ``L``: one head per module kind emitting ``r * (in + out)`` values: full A and B per (layer, module).
- ``M``: one head shared by every module kind emitting ``r * max_dim``; two passes per (layer, module), told
  apart by learned A/B embeddings added to the trunk input; A and B are the leading ``in`` / ``out`` values.
- ``S``: like M, but one rank row per pass (``2 * r`` passes), the rank index given by a learned embedding.

Initialisation starts from a zero delta: the head weights are zero, the A part of the head bias holds a
PEFT-style Kaiming-uniform A, and B is zero (``L``: B's bias slice is zero; ``M``/``S``: B is multiplied by
a learned per-module gate that starts at 0). The generated B carries the LoRA scale (rsLoRA,
``alpha / sqrt(r)``), folded in as :class:`memory.lora.LoraAdapter` requires.

>>> cfg = T2LConfig(n_layers=2, module_dims={"self_attn.q_proj": (8, 8), "self_attn.v_proj": (8, 4)}, rank=2)
>>> net = T2LHypernetwork(cfg)
>>> A, B = net(torch.randn(1, 384))["self_attn.q_proj"]
>>> A.shape, B.shape, float(B.detach().abs().sum())
(torch.Size([1, 2, 2, 8]), torch.Size([1, 2, 8, 2]), 0.0)
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from memory.errors import ModelError, ValidationError
from memory.hyper import identity
from memory.hyper.t2l_text import EMBED_DIM, ENCODER_NAME, DescriptionEncoder, check_descriptions
from memory.lora import LoraAdapter

log = logging.getLogger(__name__)

Size = Literal["L", "M", "S"]
DEFAULT_TARGETS = ("self_attn.q_proj", "self_attn.v_proj")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class T2LConfig:
    """Shape of a T2L hypernetwork.

    Args:
        n_layers: decoder layers of the base model.
        module_dims: module kind (path suffix, e.g. ``"self_attn.q_proj"``) -> ``(in_features, out_features)``.
        size: ``"L"``, ``"M"`` or ``"S"`` (see the module docstring).
        rank: LoRA rank r of the generated adapters.
        alpha: LoRA alpha; the generated B is scaled by ``alpha / sqrt(rank)`` (rsLoRA).
        latent: trunk width (the paper uses 128 or 512).
        head_in: width of the features fed to the head(s).
        dropout: dropout inside the trunk (training only).
        base_model: fingerprint of the base model the adapters are made for.
        layer_prefix: module path prefix of decoder layer ``i`` is ``f"{layer_prefix}.{i}"``.
        encoder: name of the description encoder (recorded in the checkpoint).
        prompt_mode: how the trained adapter expects the prompt (``"description+input"``: description and
            input in the user turn; ``"input"``: the input alone). Set by training, read by evaluation.
        offset_rank: rank of a learned task-independent LoRA added to every generated one (the reference's
            multi-task-LoRA offset for SFT): the shared skill is learnt directly, the hypernetwork learns what
            differs between tasks. 0 (default): none. Generated adapters then have rank ``rank + offset_rank``.
    """

    n_layers: int
    module_dims: dict[str, tuple[int, int]]
    size: Size = "L"
    rank: int = 8
    alpha: float = 16.0
    latent: int = 128
    head_in: int = 192
    dropout: float = 0.05
    base_model: str = "unknown"
    layer_prefix: str = "model.layers"
    encoder: str = ENCODER_NAME
    prompt_mode: str = "description+input"
    offset_rank: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.size not in ("L", "M", "S"):
            raise ValidationError(f"size must be 'L', 'M' or 'S', got {self.size!r}")
        if self.rank < 1 or self.n_layers < 1 or self.latent % 4:
            raise ValidationError(
                f"need rank >= 1, n_layers >= 1, latent % 4 == 0; got {self.rank}, {self.n_layers}, {self.latent}"
            )
        if not self.module_dims:
            raise ValidationError("module_dims is empty; name at least one target module")
        if self.offset_rank < 0:
            raise ValidationError(f"offset_rank must be >= 0, got {self.offset_rank!r}")
        self.module_dims = {k: (int(v[0]), int(v[1])) for k, v in self.module_dims.items()}

    @property
    def modules(self) -> list[str]:
        return list(self.module_dims)

    @property
    def scaling(self) -> float:
        return self.alpha / math.sqrt(self.rank)

    @property
    def max_dim(self) -> int:
        return max(max(d) for d in self.module_dims.values())

    @classmethod
    def for_model(cls, base: Any, targets: tuple[str, ...] = DEFAULT_TARGETS, **kw: Any) -> T2LConfig:
        """Read layer count and module shapes from a loaded base model (``BaseModel`` or ``nn.Module``).

        >>> T2LConfig.for_model(load_base_model(), size="M")  # doctest: +SKIP
        """
        module = base.model if hasattr(base, "model") and isinstance(base.model, nn.Module) else base
        dims: dict[str, tuple[int, int]] = {}
        n_layers = 0
        prefix = "model.layers"
        for name, sub in module.named_modules():
            for t in targets:
                if name.endswith("." + t) and isinstance(sub, nn.Linear):
                    dims.setdefault(t, (sub.in_features, sub.out_features))
                    head, idx = name[: -len(t) - 1].rsplit(".", 1)
                    prefix, n_layers = head, max(n_layers, int(idx) + 1)
        missing = [t for t in targets if t not in dims]
        if missing:
            raise ModelError(f"the base model has no nn.Linear modules named {missing}")
        fp = getattr(base, "fingerprint", None) or "unknown"
        return cls(n_layers=n_layers, module_dims=dims, base_model=fp, layer_prefix=prefix, **kw)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["module_dims"] = {k: list(v) for k, v in self.module_dims.items()}
        return d


class _ResBlock(nn.Module):
    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


class T2LHypernetwork(nn.Module):
    """Description embedding -> rank-r (A, B) for every target module of every layer."""

    def __init__(self, config: T2LConfig) -> None:
        super().__init__()
        self.config = c = config
        self._fingerprint: tuple[tuple[int, ...], str] | None = None  # (parameter versions, fingerprint)
        q = c.latent // 4
        self.task_encoder = nn.Sequential(nn.Linear(EMBED_DIM, c.latent // 2), nn.LayerNorm(c.latent // 2))
        self.layer_emb = nn.Sequential(nn.Embedding(c.n_layers, q), nn.LayerNorm(q))
        self.module_emb = nn.Sequential(nn.Embedding(len(c.modules), q), nn.LayerNorm(q))
        self.mixer = nn.Sequential(
            nn.Linear(c.latent, 4 * c.latent), nn.SiLU(), nn.Dropout(c.dropout), nn.Linear(4 * c.latent, c.latent)
        )
        self.blocks = nn.Sequential(_ResBlock(c.latent, c.dropout), _ResBlock(c.latent, c.dropout))
        self.to_head = nn.Sequential(nn.LayerNorm(c.latent), nn.Linear(c.latent, c.head_in), nn.SiLU())
        if c.size == "L":
            self.heads = nn.ModuleDict(
                {_key(m): nn.Linear(c.head_in, c.rank * (i + o)) for m, (i, o) in c.module_dims.items()}
            )
        else:
            width = c.max_dim * (c.rank if c.size == "M" else 1)
            self.shared_head = nn.Linear(c.head_in, width)
            self.ab_emb = nn.Parameter(torch.randn(2, c.latent) * 0.02)  # 0: A pass, 1: B pass
            self.b_gate = nn.Parameter(torch.zeros(len(c.modules)))  # zero delta at init
            if c.size == "S":
                self.rank_emb = nn.Parameter(torch.randn(c.rank, c.latent) * 0.02)
        if c.offset_rank:  # per layer: Kaiming-uniform A, zero B (zero delta at init)
            self.offset_a = nn.ParameterDict(
                {
                    _key(m): nn.Parameter(
                        torch.empty(c.n_layers, c.offset_rank, i).uniform_(-1 / math.sqrt(i), 1 / math.sqrt(i))
                    )
                    for m, (i, o) in c.module_dims.items()
                }
            )
            self.offset_b = nn.ParameterDict(
                {
                    _key(m): nn.Parameter(torch.zeros(c.n_layers, o, c.offset_rank))
                    for m, (i, o) in c.module_dims.items()
                }
            )
        self.reset_heads()

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def reset_heads(self) -> None:
        """Zero head weights; head bias = a PEFT-style initial LoRA (Kaiming-uniform A, zero B)."""
        c = self.config
        if c.size == "L":
            for m, (i, _o) in c.module_dims.items():
                head = cast(nn.Linear, self.heads[_key(m)])
                head.weight.zero_()
                head.bias.zero_()
                head.bias[: c.rank * i].uniform_(-1 / math.sqrt(i), 1 / math.sqrt(i))
        else:
            bound = 1 / math.sqrt(min(i for i, _ in c.module_dims.values()))
            if c.size == "S":
                bound /= math.sqrt(c.rank)
            self.shared_head.weight.zero_()
            self.shared_head.bias.uniform_(-bound, bound)
            self.b_gate.zero_()

    # --------------------------------------------------------------- forward
    def _trunk(self, emb: Tensor, extra: Tensor | None = None) -> Tensor:
        """emb [n, 384] -> features [n, L, M, (P,) head_in] for every (layer, module) pair."""
        c = self.config
        n, nl, nm = emb.shape[0], c.n_layers, len(c.modules)
        task = self.task_encoder(emb)  # [n, latent/2]
        layers = self.layer_emb(torch.arange(nl, device=emb.device))  # [L, latent/4]
        mods = self.module_emb(torch.arange(nm, device=emb.device))  # [M, latent/4]
        x = torch.cat(
            [
                task[:, None, None, :].expand(n, nl, nm, -1),
                layers[None, :, None, :].expand(n, nl, nm, -1),
                mods[None, None, :, :].expand(n, nl, nm, -1),
            ],
            dim=-1,
        )  # [n, L, M, latent]
        x = self.mixer(x)
        if extra is not None:  # [P, latent]: A/B (and rank) passes
            x = x.unsqueeze(3) + extra
        return self.to_head(self.blocks(x))

    def forward(self, emb: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """Description embeddings ``[n, 384]`` -> ``{module kind: (A [n, L, r, in], B [n, L, out, r])}``.

        B already carries the LoRA scale. With ``offset_rank``, the learned offset LoRA is concatenated along
        rank (so its delta adds to the generated one).
        """
        out = self._generated(emb)
        c = self.config
        if not c.offset_rank:
            return out
        n = emb.shape[0]
        for m, (a, b) in out.items():
            oa = self.offset_a[_key(m)].unsqueeze(0).expand(n, -1, -1, -1)
            ob = (self.offset_b[_key(m)] * c.scaling).unsqueeze(0).expand(n, -1, -1, -1)
            out[m] = (torch.cat([a, oa.to(a.dtype)], dim=2), torch.cat([b, ob.to(b.dtype)], dim=3))
        return out

    def _generated(self, emb: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """The description-dependent part of :meth:`forward`."""
        c = self.config
        r, s = c.rank, c.scaling
        out: dict[str, tuple[Tensor, Tensor]] = {}
        if c.size == "L":
            feats = self._trunk(emb)  # [n, L, M, head_in]
            for j, (m, (i, o)) in enumerate(c.module_dims.items()):
                flat = self.heads[_key(m)](feats[:, :, j])  # [n, L, r*(i+o)]
                a = flat[..., : r * i].unflatten(-1, (r, i))
                b = flat[..., r * i :].unflatten(-1, (o, r))
                out[m] = (a, b * s)
            return out
        if c.size == "M":
            feats = self._trunk(emb, self.ab_emb)  # [n, L, M, 2, head_in]
            flat = self.shared_head(feats).unflatten(-1, (r, c.max_dim))  # [n, L, M, 2, r, D]
            for j, (m, (i, o)) in enumerate(c.module_dims.items()):
                a = flat[:, :, j, 0, :, :i]  # [n, L, r, i]
                b = flat[:, :, j, 1, :, :o].transpose(-1, -2) * self.b_gate[j]  # [n, L, o, r]
                out[m] = (a, b * s)
            return out
        # S: 2*r passes per pair, one rank row each
        passes = torch.cat([self.ab_emb[0] + self.rank_emb, self.ab_emb[1] + self.rank_emb])  # [2r, latent]
        feats = self._trunk(emb, passes)  # [n, L, M, 2r, head_in]
        rows = self.shared_head(feats)  # [n, L, M, 2r, D]
        for j, (m, (i, o)) in enumerate(c.module_dims.items()):
            a = rows[:, :, j, :r, :i]
            b = rows[:, :, j, r:, :o].transpose(-1, -2) * self.b_gate[j]
            out[m] = (a, b * s)
        return out

    # ------------------------------------------------------------ adapters
    def batched_weights(self, emb: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """Per-row weights keyed by full module path, the input of ``apply_lora_batched``:
        ``{"model.layers.3.self_attn.q_proj": (A [n, r, in], B [n, out, r])}``. Differentiable.
        """
        c = self.config
        per_kind = self(emb)
        return {
            f"{c.layer_prefix}.{layer}.{m}": (a[:, layer], b[:, layer])
            for m, (a, b) in per_kind.items()
            for layer in range(c.n_layers)
        }

    def fingerprint(self) -> str:
        """The first 16 hex of the network's identity (``memory.hyper.identity``: config and weights, the same
        digest as its checkpoint's once saved or loaded): names the hypernetwork in adapter provenance."""
        state = {k: v.detach().float() for k, v in self.state_dict().items()}  # saved as float32
        versions = tuple(v._version for v in self.state_dict().values())  # bumped by every in-place update
        if self._fingerprint is None or self._fingerprint[0] != versions:
            sha = identity.state_sha256({"kind": "t2l", "config": self.config.to_json()}, state)
            self._fingerprint = (versions, sha[:16])
        return self._fingerprint[1]

    @torch.no_grad()
    def generate(self, descriptions: list[str], *, encoder: DescriptionEncoder | None = None) -> list[LoraAdapter]:
        """One adapter per description (float32, on CPU).

        Empty or blank descriptions raise :class:`ValidationError`; descriptions longer than 256 word pieces
        are truncated by the encoder; any other text (symbols, code, another language) gives a finite adapter.

        >>> net = T2LHypernetwork.load("memory/checkpoints/t2l-smollm2-135m")  # doctest: +SKIP
        >>> [ad] = net.generate(["Answer with the number only."])             # doctest: +SKIP
        """
        descriptions = check_descriptions(descriptions)
        was_training = self.training
        self.eval()
        try:
            emb = (encoder or DescriptionEncoder.load()).encode(descriptions)
            weights = self.batched_weights(emb.to(next(self.parameters()).device))
        finally:
            self.train(was_training)
        fp = self.fingerprint()
        adapters = []
        for row, desc in enumerate(descriptions):
            w = {
                p: (a[row].float().cpu().contiguous(), b[row].float().cpu().contiguous())
                for p, (a, b) in weights.items()
            }
            meta = {"kind": "t2l", "description": desc[:1000], "hypernetwork": fp, "size": self.config.size}
            adapters.append(LoraAdapter(w, self.config.base_model, meta))
        return adapters

    # ----------------------------------------------------------- save/load
    def save(self, directory: str | Path, *, metadata: dict[str, Any] | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (float32) into ``directory``.

        >>> net.save("/tmp/t2l")  # doctest: +SKIP
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}
        tmp = d / (WEIGHTS_FILE + ".tmp")
        save_file(state, str(tmp), metadata={"format": "pt", "kind": "t2l"})
        tmp.replace(d / WEIGHTS_FILE)
        payload = {"kind": "t2l", "config": self.config.to_json(), **(metadata or {})}
        (d / CONFIG_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        return d

    @classmethod
    def load(cls, directory: str | Path, *, base_fingerprint: str | None = None) -> T2LHypernetwork:
        """Load a checkpoint; with ``base_fingerprint``, refuse one made for another base model.

        >>> T2LHypernetwork.load("memory/checkpoints/t2l-smollm2-135m")  # doctest: +SKIP
        """
        d = Path(directory)
        if not (d / CONFIG_FILE).exists() or not (d / WEIGHTS_FILE).exists():
            raise ModelError(
                f"{d} is not a T2L checkpoint (needs {CONFIG_FILE} and {WEIGHTS_FILE}); train one with `pmem train t2l`"
            )
        payload = json.loads((d / CONFIG_FILE).read_text())
        if payload.get("kind") != "t2l":
            raise ModelError(f"{d / CONFIG_FILE} is not a T2L config (kind={payload.get('kind')!r})")
        config = T2LConfig(**payload["config"])
        if base_fingerprint is not None:
            identity.check_compatible(f"T2L checkpoint {d}", config.base_model, base_fingerprint)
        net = cls(config)
        try:
            net.load_state_dict(load_file(str(d / WEIGHTS_FILE)))
        except Exception as e:  # safetensors and torch raise several kinds
            raise ModelError(f"T2L weights in {d} are corrupt or do not match its config: {e}") from e
        net.eval()
        return net

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _key(module_kind: str) -> str:
    # nn.ModuleDict keys may not contain dots.
    return module_kind.replace(".", "__")


__all__ = ["DEFAULT_TARGETS", "T2LConfig", "T2LHypernetwork"]
