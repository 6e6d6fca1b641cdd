"""Shared fixtures: a tiny byte-level BPE tokenizer and a tiny random Llama, built in milliseconds.

They exercise the real code paths (transformers, PEFT, tokenizers) without any download; tests of
the shipped default model load it from the package instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from clues.data import shipped

    texts = []
    for name in ("fiqa", "medmeadow", "mmed_mcq"):
        for record in shipped.load(name, "all")[:150]:
            texts.extend([record.instruction, record.input, record.output])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A 512-token byte-level BPE trained on a few shipped records (any UTF-8 text encodes)."""
    return _tiny_tokenizer()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: one thread is many times faster than several fighting over a shared CPU
    (module-scoped: the modules of exact gradient tests request it through their setup fixture)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_tiny_llama(tokenizer, seed: int = 0, layers: int = 2):
    """A random Llama with q/k/v/o projections like the real ones, small enough for exact tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    config._attn_implementation = "eager"
    model = LlamaForCausalLM(config)
    model.eval()
    return model


@pytest.fixture()
def tiny_llama(tiny_tokenizer):
    """(model, tokenizer): a fresh tiny random Llama for each test."""
    return make_tiny_llama(tiny_tokenizer), tiny_tokenizer


@pytest.fixture()
def tiny_model_dir(tmp_path, tiny_tokenizer):
    """A local Hugging Face model folder (config, safetensors, tokenizer) holding the tiny Llama."""
    model = make_tiny_llama(tiny_tokenizer)
    folder = tmp_path / "tiny-llama"
    model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def small_consortium(root: Path, per_silo: int, public_per_domain: dict[str, int], silos=("clinic", "bank")):
    """A few silos cut from the shipped `mixed` benchmark (real text, real corruptions), small
    enough for an end-to-end run on the tiny model: ``(silo files, public files, labels file)``."""
    from clues.data.build import build_benchmark
    from clues.io import read_jsonl, write_jsonl

    bench = root / "bench"
    build_benchmark("mixed", bench, seed=0)
    small = root / "small"
    silo_files = {}
    for name in silos:
        write_jsonl(small / f"{name}.jsonl", read_jsonl(bench / "silos" / f"{name}.jsonl")[:per_silo])
        silo_files[name] = str(small / f"{name}.jsonl")
    public = {}
    for name, count in public_per_domain.items():
        by_domain: dict[str, list] = {}
        for row in read_jsonl(bench / f"{name}.jsonl"):
            by_domain.setdefault(row["domain"], []).append(row)
        write_jsonl(small / f"{name}.jsonl", [r for d in sorted(by_domain) for r in by_domain[d][:count]])
        public[name] = str(small / f"{name}.jsonl")
    write_jsonl(small / "labels.jsonl", read_jsonl(bench / "labels.jsonl"))
    return silo_files, public, str(small / "labels.jsonl")


def assert_nothing_private_crossed(messages, raw_wire: bytes, private_rows, tokenizer, also=()) -> None:
    """The privacy boundary check shared by merging and federated tests.

    ``messages`` are the decoded silo->server messages, ``raw_wire`` their bytes as they crossed:
    no record id, no snippet of an input or output and no run of six of the records' token ids may
    appear, and no integer tensor may cross at all. ``also``: what the server made of failures (the
    reasons in ``results.json``, its console output), held to the same rule.
    """
    import json
    import re

    texts = [str(text) for text in also]
    for message in messages:
        texts.append(json.dumps(message.meta, ensure_ascii=False))
        for name, tensor in message.tensors.items():
            texts.append(name)
            assert tensor.is_floating_point(), f"integer tensor {name} crossed the boundary"
    wire = "\n".join(texts)
    for row in private_rows:
        assert row["id"] not in wire and row["id"].encode() not in raw_wire
        for field in ("input", "output"):  # instructions are shared templates, not private text
            snippet = row[field].strip()[:40]
            if len(snippet) >= 12:
                assert snippet not in wire and snippet.encode() not in raw_wire, (field, snippet)
    integers = [int(x) for x in re.findall(r"(?<![\d.eE+-])-?\d+(?![\d.eE])", wire)]
    for row in private_rows[:8]:
        ids = tokenizer(row["output"], add_special_tokens=False)["input_ids"][:6]
        assert len(ids) == 6
        assert not any(integers[i : i + 6] == ids for i in range(len(integers) - 5))


@pytest.fixture()
def clues_here(capsys, monkeypatch):
    """The ``clues`` command in this process: ``call(*args) -> (exit status, stdout + stderr)``.
    An exception other than the CLI's own exit (a traceback, for a user) fails the test."""
    import sys

    from clues.cli import main

    def call(*args) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["clues", *map(str, args)])
        with pytest.raises(SystemExit) as stop:
            main()
        captured = capsys.readouterr()
        return stop.value.code, captured.out + captured.err

    return call


def documented_crossings() -> tuple[set, set]:
    """docs/privacy.md's field table: ``{(direction, kind, field)}`` and ``{(direction, kind)}`` whose
    tensors are described (a row whose field cell starts with "tensors")."""
    doc = Path(__file__).resolve().parent.parent / "docs" / "privacy.md"
    fields, tensors = set(), set()
    for line in doc.read_text(encoding="utf-8").splitlines():
        if not line.startswith(("| server->silo |", "| silo->server |")):
            continue
        direction, kind, cell = (c.strip() for c in line.strip().strip("|").split("|")[:3])
        if cell.startswith("tensors"):
            tensors.add((direction, kind))
        else:
            fields.update((direction, kind, name.strip()) for name in cell.split(","))
    return fields, tensors


def assert_crossings_documented(rows) -> None:
    """Every boundary-log row (``direction``, ``kind``, ``meta_keys``, ``tensor_keys``) is in docs/privacy.md:
    a field or tensors that cross without a row there fail, so the page cannot fall behind the code."""
    fields, tensors = documented_crossings()
    missing = sorted({(r["direction"], r["kind"], key) for r in rows for key in r["meta_keys"]} - fields)
    assert not missing, f"fields that cross but docs/privacy.md does not list: {missing}"
    untold = sorted({(r["direction"], r["kind"]) for r in rows if r["tensor_keys"]} - tensors)
    assert not untold, f"tensors that cross but docs/privacy.md does not describe: {untold}"
