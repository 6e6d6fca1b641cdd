"""Loading a causal LM and its tokenizer, always the same way.

Whatever the source (the shipped default, the SmolLM2 preset, converted once from its GGUF file
into a cached Hugging Face folder by :mod:`clues.model.gguf_cache`, a local Hugging Face folder), the
model comes back with eager attention (SDPA on CPU has no double-backward/JVP formulas, and eager
gives the same numbers batched and unbatched), in eval mode, with a pad token and right padding,
so a record's loss never depends on how it was batched. Nothing is ever downloaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from clues.errors import CluesError
from clues.model.gguf_cache import smollm2_folder

DEFAULT_DIR = Path(__file__).resolve().parent / "default"

# Preset names accepted by load_model besides a local path.
PRESETS = ("default", "smollm2-135m")

# The training settings a preset runs with in `clues run` / `clues bench` / `clues demo` unless the
# config's [train] table says otherwise: SmolLM2 on a laptop CPU adapts its top 8 of 30 layers (the
# 22 frozen ones run once per record, clues.model.frozen_prefix) on records of at most 160 tokens.
# Top 8 ranked better than top 4 on every benchmark seed tried: docs/benchmarks.md ("The real
# model"). `lora_layers = 30` adapts every layer.
PRESET_TRAIN = {"smollm2-135m": {"lora_layers": 8, "max_length": 160, "batch_size": 8}}


def base_model_id(name_or_path: str | os.PathLike) -> str:
    """What to record in checkpoints so the base model can be loaded again with :func:`load_model`.

    Presets stay names (they are found again on any machine that has the package); a local folder
    becomes an absolute path.
    """
    name = str(name_or_path)
    if name in PRESETS:
        return name
    return str(Path(name).expanduser().resolve())


def _check_model_folder(folder: Path, shown: str) -> None:
    if not folder.exists():
        raise CluesError(f"model {shown!r}: no such folder (and not a preset: {', '.join(PRESETS)})")
    if not folder.is_dir():
        raise CluesError(f"model {shown!r}: expected a folder holding a Hugging Face model, got a file")
    config = folder / "config.json"
    if not config.is_file():
        raise CluesError(f"model {shown!r}: {folder} has no config.json, so it is not a Hugging Face model folder")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CluesError(f"model {shown!r}: unreadable config.json: {exc}") from exc
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise CluesError(f"model {shown!r}: {folder} has a config.json but no weights (*.safetensors or *.bin)")


def check_model(name_or_path: str) -> None:
    """Refuse, before a run starts, a model that is neither a preset nor a Hugging Face folder: found
    later, inside a silo, it would cost a training stage and say only "details in the silo's log"."""
    if str(name_or_path) not in PRESETS:
        _check_model_folder(Path(name_or_path).expanduser(), str(name_or_path))


def _resolve(name_or_path: str) -> tuple[Path, dict]:
    """(folder, extra from_pretrained kwargs) for a preset name or a local path."""
    if name_or_path == "default":
        if not (DEFAULT_DIR / "model.safetensors").is_file():
            raise CluesError(
                f"the shipped default model is missing from {DEFAULT_DIR}; rebuild it with "
                "`python -m clues.model.pretrain --out src/clues/model/default`"
            )
        return DEFAULT_DIR, {}
    if name_or_path == "smollm2-135m":
        return smollm2_folder(), {}
    folder = Path(name_or_path).expanduser()
    _check_model_folder(folder, name_or_path)
    return folder, {}


def _transformers_major_minor() -> tuple[int, int]:
    import transformers

    major, minor = transformers.__version__.split(".")[:2]
    return int(major), int(minor)


def load_model(
    name_or_path: str | os.PathLike = "default",
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
):
    """Return ``(model, tokenizer)`` for ``default``, ``smollm2-135m`` or a local Hugging Face folder.

    The model is in eval mode (no dropout: training code switches modes itself), on ``device``, in
    ``dtype``, with eager attention; the tokenizer pads on the right with a pad token (the EOS
    token when the model has none, which is harmless because padded positions carry no label).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    name = str(name_or_path)
    folder, extra = _resolve(name)
    # transformers < 4.56 calls the dtype argument torch_dtype (and would silently ignore dtype=).
    dtype_kwarg = "dtype" if _transformers_major_minor() >= (4, 56) else "torch_dtype"
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **extra)
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            local_files_only=True,
            attn_implementation="eager",
            **{dtype_kwarg: dtype},
            **extra,
        )
    except CluesError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise CluesError(f"model {name!r}: could not load a causal LM from {folder}: {exc}") from exc
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise CluesError(f"model {name!r}: the tokenizer has neither a pad nor an end-of-sequence token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device)
    model.eval()
    return model, tokenizer
