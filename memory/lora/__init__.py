"""LoRA tensors: one representation, per-call (thread-safe, batched) application, rank concatenation, PEFT I/O.

>>> from memory.lora import LoraAdapter, apply_lora, concat, to_bytes, from_bytes
"""

from memory.lora.adapter import LoraAdapter, concat, module_suffix, scale, zeros_like
from memory.lora.apply import LoraBinding, LoraLinear, apply_lora, apply_lora_batched, bind_lora, bind_lora_batched, wrap_linears
from memory.lora.io import AdapterCache, from_bytes, load_peft, save_peft, to_bytes

__all__ = [
    "AdapterCache",
    "LoraAdapter",
    "LoraBinding",
    "LoraLinear",
    "apply_lora",
    "apply_lora_batched",
    "bind_lora",
    "bind_lora_batched",
    "concat",
    "from_bytes",
    "load_peft",
    "module_suffix",
    "save_peft",
    "scale",
    "to_bytes",
    "wrap_linears",
    "zeros_like",
]
