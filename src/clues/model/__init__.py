"""Models: the shipped default LM, the SmolLM2 preset, any local Hugging Face causal LM, and LoRA.

Every stage (training, scoring, evaluation) gets its model from :func:`load_model`, so every stage
runs the same attention implementation, padding side and pad token.
"""

from clues.model.loading import DEFAULT_DIR, PRESETS, base_model_id, load_model
from clues.model.lora import LoraSettings, attach_lora, default_target_modules

__all__ = [
    "DEFAULT_DIR",
    "PRESETS",
    "LoraSettings",
    "attach_lora",
    "base_model_id",
    "default_target_modules",
    "load_model",
]
