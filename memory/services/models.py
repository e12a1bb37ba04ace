"""The base model and the hypernetworks in front of it, loaded once on first use.

:class:`ModelRuntime` owns what costs seconds to load: the base model (converted from GGUF once per
``PMEM_HOME``), the Doc-to-LoRA / context-distillation internalizers and the Text-to-LoRA generators. Nothing
here touches the database.
"""

from __future__ import annotations

from typing import Any

from memory.config import Settings
from memory.errors import ValidationError


class ModelRuntime:
    """Lazily loaded base model, internalizers (``d2l``, ``cd``) and skill generators (``t2l``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._base_model: Any = None
        self._remote: Any = None
        self._internalizers: dict[str, Any] = {}

    @property
    def base_model(self) -> Any:
        """The base model (loaded once per process on first use; converted from GGUF once per PMEM_HOME)."""
        if self._base_model is None:
            from memory.models import load_base_model

            self._base_model = load_base_model(self.settings.base_model, settings=self.settings)
        return self._base_model

    @property
    def generator(self) -> Any:
        """What generates answers (:class:`~memory.models.remote.GenerationBackend`): the base model, or the
        remote engine of ``PMEM_GENERATION_URL`` (which still uses the base model's tokenizer and chat template)."""
        if not self.settings.generation_url:
            return self.base_model
        if self._remote is None:
            from memory.models.remote import RemoteEngine

            self._remote = RemoteEngine.from_settings(self.settings, self.base_model)
        return self._remote

    def internalizer(self, method: str = "auto") -> Any:
        """The internalizer for ``method`` (``auto``: Doc-to-LoRA when a checkpoint fits the base model, else CD)."""
        from memory import internalizers

        return internalizers.resolve(method, self.base_model, cache=self._internalizers)

    def configure_internalizer(self, method: str, **options: Any) -> Any:
        """See :meth:`memory.api.ParametricMemory.configure_internalizer`."""
        from memory import internalizers

        if method == "cd":
            self._internalizers["cd"] = internalizers.CDInternalizer(self.base_model, **options)
        elif method == "d2l":
            path = options.pop("checkpoint", None)
            if options:
                raise ValidationError(f"d2l takes only a checkpoint option, got {sorted(options)}")
            self._internalizers.pop("d2l-default", None)
            self._internalizers["d2l-default"] = internalizers.resolve(
                "d2l", self.base_model, checkpoint=path, cache={}
            )
        elif method == "self-study":
            try:
                self._internalizers["self-study"] = internalizers.SelfStudyInternalizer(self.base_model, **options)
            except TypeError as e:
                raise ValidationError(f"unknown self-study option: {e}") from None
        else:
            raise ValidationError(f"method must be 'cd', 'd2l' or 'self-study', got {method!r}")
        return self.internalizer(method)

    def skill_generator(self, checkpoint: str | None = None) -> Any:
        """The Text-to-LoRA generator of ``checkpoint`` (default: the shipped one), loaded once."""
        from memory import internalizers

        key = f"t2l:{checkpoint or internalizers.DEFAULT_T2L}"
        if key not in self._internalizers:
            self._internalizers[key] = internalizers.T2LGenerator(checkpoint, self.base_model)
        return self._internalizers[key]
