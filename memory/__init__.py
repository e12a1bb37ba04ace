"""parametric-memory: a memory backend for LLM agents that stores documents in model weights.

The facade is imported on first use (PEP 562), so ``import memory.client`` or a remote ``pmem ask`` loads neither
the database layer nor torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memory.api import ParametricMemory
    from memory.config import Settings
    from memory.errors import PMemError

__all__ = ["PMemError", "ParametricMemory", "Settings"]
__version__ = "0.1.0"
_LAZY = {"ParametricMemory": "memory.api", "Settings": "memory.config", "PMemError": "memory.errors"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'memory' has no attribute {name!r}")
