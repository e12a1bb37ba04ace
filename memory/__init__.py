"""parametric-memory: a memory backend for LLM agents that stores documents in model weights."""

from memory.api import ParametricMemory
from memory.config import Settings
from memory.errors import PMemError

__all__ = ["PMemError", "ParametricMemory", "Settings"]
__version__ = "0.1.0"
