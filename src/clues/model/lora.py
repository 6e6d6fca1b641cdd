"""LoRA adapters through PEFT, with the paper's defaults (r=16, alpha=16, dropout 0.05, q and v).

Every silo must share one LoRA configuration (CLUES.md section 1): one :class:`LoraSettings` object
is the whole configuration, and the target modules default to the architecture's equivalent of the
paper's q_proj + v_proj.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass

from clues.errors import CluesError

# Module names per architecture (``config.model_type``) for the paper's "q and v" choice.
# GPT-2 fuses q, k and v into one ``c_attn`` projection: that is its nearest equivalent.
DEFAULT_TARGETS = {
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "mixtral": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "qwen3": ("q_proj", "v_proj"),
    "gemma": ("q_proj", "v_proj"),
    "gemma2": ("q_proj", "v_proj"),
    "phi3": ("qkv_proj",),
    "gpt2": ("c_attn",),
    "gpt_neox": ("query_key_value",),
}


@dataclass(frozen=True)
class LoraSettings:
    """One LoRA configuration, shared by all silos. ``target_modules=None``: the architecture default."""

    r: int = 16
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None
    # Adapt only the top ``layers`` decoder layers (None: all). The layers below stay frozen, so
    # their output can be computed once per record and cached (clues.model.frozen_prefix).
    layers: int | None = None

    def __post_init__(self):
        if self.layers is not None and self.layers < 1:
            raise CluesError(f"lora_layers must be at least 1 (the number of top layers to adapt), got {self.layers}")
        if self.r < 1:
            raise CluesError(f"LoRA rank must be at least 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise CluesError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if self.target_modules is not None:
            if isinstance(self.target_modules, str):
                object.__setattr__(self, "target_modules", (self.target_modules,))
            else:
                object.__setattr__(self, "target_modules", tuple(self.target_modules))
            if not self.target_modules:
                raise CluesError("LoRA target_modules is empty; leave it unset for the architecture default")


def _base(model):
    """The underlying transformers model, also when a PEFT wrapper is passed."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def default_target_modules(model) -> tuple[str, ...]:
    """The paper's q_proj + v_proj, or the nearest equivalent for this architecture."""
    model_type = getattr(_base(model).config, "model_type", None)
    if model_type in DEFAULT_TARGETS:
        return DEFAULT_TARGETS[model_type]
    names = {name.rsplit(".", 1)[-1] for name, _ in _base(model).named_modules()}
    if {"q_proj", "v_proj"} <= names:
        return ("q_proj", "v_proj")
    raise CluesError(
        f"no default LoRA target modules for architecture {model_type!r}; "
        "name them explicitly (LoraSettings.target_modules / --lora-targets)"
    )


def _adaptable_module_names(model) -> list[str]:
    """Full names of the modules LoRA can wrap (linear layers and GPT-2's Conv1D)."""
    import torch

    return [
        name
        for name, module in _base(model).named_modules()
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"
    ]


def _matches(target: str, names: list[str]) -> bool:
    """PEFT's rule for a list of targets: a module matches if its name is the target or ends with '.target'."""
    return any(name == target or name.endswith("." + target) for name in names)


# PEFT reads transformers' deprecated ``is_gradient_checkpointing`` alias whenever it wraps a model,
# so every LoRA model printed a FutureWarning that no user of clues can act on.
PEFT_DEPRECATION = r"`is_gradient_checkpointing` is deprecated and will be removed in v6\."


@contextmanager
def peft_quietly():
    """Wrap or load a PEFT model without that one warning (matched by its exact text; any other shows)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PEFT_DEPRECATION, category=FutureWarning)
        yield


def attach_lora(model, settings: LoraSettings | None = None):
    """Wrap ``model`` in a :class:`peft.PeftModel` with a fresh LoRA adapter (only LoRA weights train).

    Target names that match no linear module of the model raise :class:`CluesError`: PEFT would
    either fail with a long message or, for a partial match, silently adapt fewer modules than asked.
    PEFT injects the adapter into ``model`` itself: load a fresh base model for a second adapter.
    """
    from peft import LoraConfig, get_peft_model

    settings = settings or LoraSettings()
    targets = settings.target_modules or default_target_modules(model)
    names = _adaptable_module_names(model)
    missing = [t for t in targets if not _matches(t, names)]
    if missing:
        kinds = sorted({name.rsplit(".", 1)[-1] for name in names})
        raise CluesError(
            f"LoRA target module(s) {', '.join(missing)} match nothing in this model; "
            f"its linear modules are named: {', '.join(kinds)}"
        )
    layers = None
    if settings.layers is not None:
        total = getattr(_base(model).config, "num_hidden_layers", None)
        if total is None:
            raise CluesError("lora_layers needs a model whose config has num_hidden_layers")
        layers = list(range(max(0, total - settings.layers), total))
    config = LoraConfig(
        layers_to_transform=layers,
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(targets),
        bias="none",
        task_type="CAUSAL_LM",
        fan_in_fan_out=getattr(_base(model).config, "model_type", None) == "gpt2",
    )
    with peft_quietly():
        return get_peft_model(model, config)
