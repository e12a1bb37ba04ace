"""Training package (Doc-to-LoRA / Text-to-LoRA)."""

from __future__ import annotations

import os
import pathlib
from typing import Any


def load_resume_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``--resume`` state file (tensors, optimizer state, step counters, RNG state) without
    executing anything: ``weights_only=True`` refuses a pickle that would run code when loaded.

    Paths are allowed (older states stored ``vars(args)`` with them); nothing else beyond tensors and
    plain containers.
    """
    import torch

    from memory.errors import ValidationError

    try:
        with torch.serialization.safe_globals([pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath]):
            return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - the unpickler's refusal is an UnpicklingError with a long text
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise ValidationError(
                f"{path} holds more than tensors and plain values (it would run code when loaded); "
                "refusing to resume from it: delete it and start again, or resume from a state this tool wrote"
            ) from None
        raise
