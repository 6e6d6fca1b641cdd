"""Training checkpoints: what training leaves behind for scoring, in formats the ecosystem reads.

A checkpoint is a folder ``RUN/checkpoint-<step>/`` holding

- ``adapter_config.json`` + ``adapter_model.safetensors``: the LoRA adapter, as written by PEFT's
  ``save_pretrained`` (anyone can load it with ``peft.PeftModel.from_pretrained`` on the base model);
- ``optimizer.safetensors``: the AdamW moments, tensors ``<parameter name>.exp_avg`` and
  ``<parameter name>.exp_avg_sq``, names exactly as in ``named_parameters()`` of the PeftModel.
  CLUES' Adam direction needs them (CLUES.md section 2);
- ``resume_state.safetensors``: the global torch RNG state (LoRA dropout draws from it), so a resumed
  run makes the same draws as an uninterrupted one;
- ``trainer_meta.json``: ``step``, ``epoch``, ``lr``, ``lr_mean``, ``train_loss``, the base model,
  the training config and the data fingerprint. It is written last.

Every checkpoint is written into a hidden temporary folder and renamed into place, and only folders
named ``checkpoint-<int>`` that hold ``trainer_meta.json`` count as checkpoints, so a training run
killed while saving never leaves something that :func:`list_checkpoints` would take for finished.

Readers (the scoring engine, resume) use only the functions of this module, so the layout can be
changed in one place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from clues.errors import CluesError

PREFIX = "checkpoint-"
META_FILE = "trainer_meta.json"
OPTIMIZER_FILE = "optimizer.safetensors"
RESUME_FILE = "resume_state.safetensors"
ADAPTER_FILE = "adapter_model.safetensors"
TMP_PREFIX = ".tmp-checkpoint-"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def tensor_file_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file, or None. Reads the header only: its length
    prefix, its JSON, and whether the tensors it lists end exactly where the file does (a truncated
    copy or a half-written file fails here, before safetensors' own terse error)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                return f"{size} bytes, too short for a header"
            length = int.from_bytes(prefix, "little")
            if length > size - 8:
                return f"header of {length} bytes in a file of {size}: truncated or not safetensors"
            header = json.loads(handle.read(length))
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError, RecursionError) as exc:
        return f"unreadable header ({type(exc).__name__})"
    try:
        ends = [int(entry["data_offsets"][1]) for name, entry in header.items() if name != "__metadata__"]
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        return "its header does not describe tensors"
    data = size - 8 - length
    if max(ends, default=0) != data:
        return f"its tensors need {max(ends, default=0)} data bytes, the file holds {data}: truncated or corrupt"
    return None


def damaged(path: str | os.PathLike, reason: str, advice: str | None = None) -> CluesError:
    """The one-line error for a damaged file; by default it says how to redo a training checkpoint."""
    path = Path(path)
    if advice is None:
        folder = path.parent
        advice = (f"delete {folder} and any later {PREFIX}* folder beside it, then rerun: training resumes from "
                  "the last intact checkpoint (in a `clues run` or `clues bench` output folder, also delete its "
                  ".stages folder so that finished stages are redone)")
    return CluesError(f"{path}: damaged file ({reason}); {advice}")


def load_tensors(path: str | os.PathLike, advice: str | None = None) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file``, but a truncated or corrupt file is a :class:`CluesError` that
    names it and says what to do (``advice``; default: redo the training checkpoint holding it)."""
    from safetensors import SafetensorError

    path = Path(path)
    reason = tensor_file_problem(path)
    if reason is None:
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            reason = str(exc)
    raise damaged(path, reason, advice)


def verify(ckpt_dir: str | os.PathLike) -> None:
    """Check every file of a checkpoint (safetensors headers and sizes, JSON parses) without loading
    tensors, so a damaged checkpoint is named before training resumes from it or scoring uses it."""
    for item in sorted(Path(ckpt_dir).iterdir()):
        if item.suffix == ".safetensors":
            reason = tensor_file_problem(item)
        elif item.suffix == ".json":
            try:
                json.loads(item.read_text(encoding="utf-8"))
                reason = None
            except (OSError, ValueError, RecursionError) as exc:
                reason = f"not valid JSON ({type(exc).__name__})"
        else:
            continue
        if reason is not None:
            raise damaged(item, reason)


def checkpoint_step(ckpt_dir: str | os.PathLike) -> int:
    """The optimizer step of a checkpoint folder, from its name."""
    match = _NAME.match(Path(ckpt_dir).name)
    if not match:
        raise CluesError(f"{ckpt_dir} is not a checkpoint folder (expected a name like checkpoint-<step>)")
    return int(match.group(1))


def is_complete(ckpt_dir: str | os.PathLike) -> bool:
    """True for a finished checkpoint: a ``checkpoint-<step>`` folder holding its metadata file."""
    path = Path(ckpt_dir)
    return bool(_NAME.match(path.name)) and (path / META_FILE).is_file()


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The complete checkpoints of a training run, in step order (an empty list if there are none)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = sorted((p for p in run_dir.iterdir() if p.is_dir() and is_complete(p)), key=checkpoint_step)
    for folder in found:
        verify(folder)
    return found


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step, or ``None``."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint_meta(ckpt_dir: str | os.PathLike) -> dict:
    """The ``trainer_meta.json`` of a checkpoint (step, epoch, lr, lr_mean, train_loss, base_model, config...)."""
    path = Path(ckpt_dir) / META_FILE
    if not path.is_file():
        raise CluesError(f"{ckpt_dir} is not a complete checkpoint (no {META_FILE})")
    return json.loads(path.read_text(encoding="utf-8"))


def moment_tensors(model, optimizer) -> dict[str, torch.Tensor]:
    """AdamW moments keyed ``<name>.exp_avg`` / ``<name>.exp_avg_sq`` for every trainable parameter.

    A trainable parameter without optimizer state (no step taken yet) gets zero moments, which is
    exactly AdamW's initial state, so the file always covers every trainable parameter.
    """
    tensors = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        state = optimizer.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            value = state.get(key)
            tensors[f"{name}.{key}"] = (value if value is not None else torch.zeros_like(param)).detach().cpu().contiguous()
    return tensors


def load_moments(ckpt_dir: str | os.PathLike) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{parameter name: (exp_avg, exp_avg_sq)}`` of a checkpoint, names as in ``named_parameters()``."""
    tensors = load_tensors(Path(ckpt_dir) / OPTIMIZER_FILE)
    moments = {}
    for key in tensors:
        if key.endswith(".exp_avg"):
            name = key[: -len(".exp_avg")]
            second = tensors.get(f"{name}.exp_avg_sq")
            if second is None:
                raise CluesError(f"{ckpt_dir}/{OPTIMIZER_FILE}: {name}.exp_avg has no matching .exp_avg_sq")
            moments[name] = (tensors[key], second)
    return moments


def load_adapter_state(model, tensors: dict[str, torch.Tensor], what: str = "the global adapter") -> None:
    """Overwrite a PeftModel's adapter weights with ``tensors`` (PEFT's file names).

    Missing or unexpected adapter tensors raise: a silently partial load would train or score with
    a mix of two adapters. ``what`` names the adapter in that error.
    """
    from peft import set_peft_model_state_dict

    if not tensors:
        raise CluesError(f"{what}: no adapter tensors")
    trainable = next((p for p in model.parameters() if p.requires_grad), None)
    if trainable is None:
        raise CluesError(f"{what}: the model has no trainable (LoRA) parameters to load the adapter into")
    dtype = trainable.dtype
    result = set_peft_model_state_dict(model, {k: v.to(dtype) for k, v in tensors.items()})
    missing = [k for k in result.missing_keys if ".lora_" in k]
    if missing or result.unexpected_keys:
        raise CluesError(
            f"{what} does not match the model's LoRA settings "
            f"(missing: {', '.join(missing[:3]) or '-'}; unexpected: {', '.join(result.unexpected_keys[:3]) or '-'})"
        )


def load_adapter(model, ckpt_dir: str | os.PathLike) -> None:
    """Load a checkpoint's adapter weights into a PeftModel built with the same LoRA settings.

    Cheaper than ``PeftModel.from_pretrained`` when one model visits many checkpoints (scoring).
    """
    load_adapter_state(model, load_tensors(Path(ckpt_dir) / ADAPTER_FILE), f"{ckpt_dir}: adapter")


def restore_moments(model, optimizer, moments: dict, step: int, source: str | os.PathLike) -> None:
    """Put saved AdamW moments back on a fresh optimizer (resumed training, a silo's next federated round).

    Every LoRA parameter gets a gradient at every step, so its AdamW step count is the global step.
    """
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name not in moments:
            raise CluesError(f"{source}: no optimizer moments for {name}")
        exp_avg, exp_avg_sq = moments[name]
        optimizer.state[param] = {
            "step": torch.tensor(float(step)),
            "exp_avg": exp_avg.to(param.device, param.dtype),
            "exp_avg_sq": exp_avg_sq.to(param.device, param.dtype),
        }


def load_rng_state(ckpt_dir: str | os.PathLike) -> torch.Tensor:
    """The global torch RNG state saved with a checkpoint (for resuming)."""
    return load_tensors(Path(ckpt_dir) / RESUME_FILE)["torch_rng_state"]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for item in path.iterdir():
        if item.is_file():
            with open(item, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(path)


def remove_partial(run_dir: str | os.PathLike) -> list[Path]:
    """Delete temporary folders left by a run killed while saving; return what was removed."""
    run_dir = Path(run_dir)
    removed = []
    if run_dir.is_dir():
        for item in run_dir.iterdir():
            if item.is_dir() and item.name.startswith(TMP_PREFIX):
                shutil.rmtree(item, ignore_errors=True)
                removed.append(item)
    return removed


# PEFT keeps these as Python sets and writes them as lists in set order, which changes from one
# process to the next (string hashing is salted): sorted, the same run writes the same bytes.
_SET_VALUED = ("target_modules", "exclude_modules")


def stable_adapter_config(config: dict) -> dict:
    """``adapter_config.json`` content with its set-valued lists sorted (byte-identical reruns)."""
    return {k: sorted(v) if k in _SET_VALUED and isinstance(v, list) else v for k, v in config.items()}


def write_adapter_config(folder: str | os.PathLike, config: dict | None = None) -> None:
    """(Re)write ``folder/adapter_config.json`` stably, in PEFT's own layout (indent 2, sorted keys);
    ``config=None`` rewrites the file PEFT's ``save_pretrained`` just wrote there."""
    from clues.io import atomic_open

    path = Path(folder) / "adapter_config.json"
    if config is None:
        config = json.loads(path.read_text(encoding="utf-8"))
    with atomic_open(path) as handle:
        handle.write(json.dumps(stable_adapter_config(config), indent=2, sort_keys=True))


def save_checkpoint(run_dir: str | os.PathLike, step: int, model, optimizer, meta: dict) -> Path:
    """Write ``run_dir/checkpoint-<step>/`` atomically and return its path.

    ``model`` is the PeftModel, ``optimizer`` its AdamW, ``meta`` the content of ``trainer_meta.json``
    (``step`` is set here). Everything goes into a temporary folder first, metadata last, then one
    ``rename`` publishes it.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"{PREFIX}{step}"
    tmp = run_dir / f"{TMP_PREFIX}{step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        model.save_pretrained(str(tmp))
        write_adapter_config(tmp)
        save_file(moment_tensors(model, optimizer), str(tmp / OPTIMIZER_FILE))
        save_file({"torch_rng_state": torch.get_rng_state()}, str(tmp / RESUME_FILE))
        meta = {**meta, "step": step}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        _fsync_tree(tmp)
        if final.exists():  # only reachable if someone hand-made this folder; replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
