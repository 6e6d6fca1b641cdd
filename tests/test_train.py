"""Training: checkpoints scoring can trace, an exact resume, the schedule, gradient accumulation, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from clues import checkpoint as ckpt
from clues import train as train_mod
from clues.data import encode, record_from_dict
from clues.data.batching import pad_batch
from clues.errors import CluesError
from clues.train import TrainConfig, lr_factor, train
from conftest import make_tiny_llama

TEXTS = [
    ("Define APR.", "", "Annual percentage rate, the yearly cost of a loan."),
    ("Translate to English", "bonjour", "hello"),
    ("What is a stock?", "", "A share of ownership in a company."),
    ("Name a symptom of flu.", "", "Fever."),
    ("Summarise", "The patient had a cough for three weeks.", "Chronic cough."),
    ("What is an ETF?", "", "An exchange-traded fund: a basket of assets traded like one stock."),
    ("Is 7 prime?", "", "Yes."),
    ("Capital of France?", "", "Paris."),
    ("Define inflation.", "", "A general rise of prices over time."),
    ("What does a cardiologist treat?", "", "Diseases of the heart."),
]
RECORDS = [record_from_dict({"instruction": i, "input": x, "output": o}) for i, x, o in TEXTS]
FAST = dict(max_length=48, batch_size=4, lr=1e-2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer):
    """One tiny local model folder for the whole module (saves time against the per-test fixture)."""
    folder = tmp_path_factory.mktemp("model") / "tiny-llama"
    make_tiny_llama(tiny_tokenizer).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, model_dir):
    """A 7-step run over 10 records (3 steps/epoch, a partial last batch), logits captured at each save."""
    run_dir = tmp_path_factory.mktemp("run")
    config = TrainConfig(model=model_dir, max_steps=7, warmup_ratio=0.3, **FAST)
    probe = pad_batch([encode(r, _tokenizer(model_dir), 48) for r in RECORDS[:3]], 1)
    live_logits = {}
    real_save = ckpt.save_checkpoint

    def save_and_probe(run, step, model, optimizer, meta):
        model.eval()
        with torch.no_grad():
            live_logits[step] = model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
        model.train()
        return real_save(run, step, model, optimizer, meta)

    mp = pytest.MonkeyPatch()
    mp.setattr(ckpt, "save_checkpoint", save_and_probe)
    try:
        final = train(config, RECORDS, run_dir)
    finally:
        mp.undo()
    return config, run_dir, final, probe, live_logits


def _tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def test_checkpoints_per_epoch_and_final(finished_run):
    _, run_dir, final, _, _ = finished_run
    steps = [ckpt.checkpoint_step(p) for p in ckpt.list_checkpoints(run_dir)]
    assert steps == [3, 6, 7]
    assert final == run_dir / "checkpoint-7"
    for name in ("adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors", "trainer_meta.json"):
        assert (final / name).is_file()


def test_checkpoint_loads_with_peft_and_gives_the_trained_logits(finished_run, model_dir):
    from peft import PeftModel

    from clues.model import load_model

    _, run_dir, _, probe, live_logits = finished_run
    for path in ckpt.list_checkpoints(run_dir):
        base, _ = load_model(model_dir)
        model = PeftModel.from_pretrained(base, str(path)).eval()
        with torch.no_grad():
            logits = model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
        torch.testing.assert_close(logits, live_logits[ckpt.checkpoint_step(path)], rtol=0, atol=1e-6)
    base, _ = load_model(model_dir)
    with torch.no_grad():
        untrained = base(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
    assert not torch.allclose(untrained, live_logits[7], atol=1e-4), "training did not change the model"


def test_moments_are_named_like_the_trainable_parameters(finished_run, model_dir):
    from clues.model import attach_lora, load_model

    config, run_dir, final, _, _ = finished_run
    model = attach_lora(load_model(model_dir)[0], config.lora_settings())
    trainable = {n: p.shape for n, p in model.named_parameters() if p.requires_grad}
    raw = load_file(str(final / "optimizer.safetensors"))
    assert set(raw) == {f"{n}.{k}" for n in trainable for k in ("exp_avg", "exp_avg_sq")}
    moments = ckpt.load_moments(final)
    assert set(moments) == set(trainable)
    for name, (exp_avg, exp_avg_sq) in moments.items():
        assert exp_avg.shape == exp_avg_sq.shape == trainable[name]
        assert bool((exp_avg_sq >= 0).all())
    assert any(float(v.abs().sum()) > 0 for _, v in moments.values())
    ckpt.load_adapter(model, final)  # the cheap loader the scoring engine uses accepts it


def test_lr_and_lr_mean_follow_the_schedule_by_hand(finished_run):
    # 7 steps, warm-up ceil(0.3 * 7) = 3: step lrs are 1/3, 2/3, 1 | 1, 3/4, 1/2 | 1/4 (times the base lr).
    config, run_dir, _, _, _ = finished_run
    metas = [ckpt.load_checkpoint_meta(p) for p in ckpt.list_checkpoints(run_dir)]
    base = config.lr
    assert [m["lr_mean"] / base for m in metas] == pytest.approx([2 / 3, 0.75, 0.25])
    assert [m["lr"] / base for m in metas] == pytest.approx([1.0, 0.5, 0.25])
    assert [m["epoch"] for m in metas] == pytest.approx([1.0, 2.0, 7 / 3])
    assert [lr_factor(s, 7, 3) for s in range(7)] == pytest.approx([1 / 3, 2 / 3, 1, 1, 0.75, 0.5, 0.25])
    meta = metas[-1]
    assert meta["config"] == config.to_dict() and meta["base_model"] == config.model
    assert meta["train_loss"] > 0 and meta["step"] == 7


def _adapter(path):
    return load_file(str(path / "adapter_model.safetensors"))


def test_resume_after_interruptions_equals_an_uninterrupted_run(tmp_path, model_dir, monkeypatch):
    # Dropout on, so the resumed run must also restore the RNG to make the same dropout masks.
    config = TrainConfig(model=model_dir, max_steps=7, save_every=2, batch_size=3, max_length=48, lr=1e-2)
    reference = train(config, RECORDS, tmp_path / "ref")

    run_dir = tmp_path / "run"
    real_save_file = ckpt.save_file

    def die_while_saving_step_4(tensors, path, *a, **k):
        real_save_file(tensors, path, *a, **k)
        if "checkpoint-4" in path:
            raise KeyboardInterrupt("killed while writing checkpoint-4")

    monkeypatch.setattr(ckpt, "save_file", die_while_saving_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(config, RECORDS, run_dir)
    monkeypatch.setattr(ckpt, "save_file", real_save_file)
    assert [p.name for p in ckpt.list_checkpoints(run_dir)] == ["checkpoint-2"]
    (run_dir / ".tmp-checkpoint-4-99").mkdir()  # what a SIGKILL mid-save leaves behind
    (run_dir / "checkpoint-5").mkdir()  # a folder without metadata is never a checkpoint
    assert [p.name for p in ckpt.list_checkpoints(run_dir)] == ["checkpoint-2"]

    real_step, calls = train_mod.optimizer_step, []

    def die_at_the_third_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed during a step")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_mod, "optimizer_step", die_at_the_third_step)
    with pytest.raises(RuntimeError):
        train(config, RECORDS, run_dir)  # resumes at 2, saves 4, dies in step 5
    monkeypatch.setattr(train_mod, "optimizer_step", real_step)
    assert [p.name for p in ckpt.list_checkpoints(run_dir)] == ["checkpoint-2", "checkpoint-4"]
    assert not (run_dir / ".tmp-checkpoint-4-99").exists()

    final = train(config, RECORDS, run_dir)
    assert final.name == reference.name == "checkpoint-7"
    ref, got = _adapter(reference), _adapter(final)
    assert set(ref) == set(got)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=0, atol=1e-6)
    for name, (m, v) in ckpt.load_moments(reference).items():
        m2, v2 = ckpt.load_moments(final)[name]
        torch.testing.assert_close(m2, m, rtol=0, atol=1e-6)
        torch.testing.assert_close(v2, v, rtol=0, atol=1e-6)
    for a, b in zip(ckpt.list_checkpoints(tmp_path / "ref"), ckpt.list_checkpoints(run_dir)):
        ma, mb = ckpt.load_checkpoint_meta(a), ckpt.load_checkpoint_meta(b)
        assert (ma["step"], ma["lr_mean"]) == (mb["step"], mb["lr_mean"])
        assert ma["train_loss"] == pytest.approx(mb["train_loss"], abs=1e-6)

    assert train(config, RECORDS, run_dir) == final  # finished: nothing more to do
    with pytest.raises(CluesError, match="lr: 0.01 there, 0.02 now"):
        train(TrainConfig(model=model_dir, max_steps=7, save_every=2, batch_size=3, max_length=48, lr=2e-2), RECORDS, run_dir)
    with pytest.raises(CluesError, match="different records"):
        train(config, RECORDS[:-1], run_dir)


def test_grad_accumulation_2x8_equals_1x16(tmp_path, model_dir):
    many = RECORDS + [record_from_dict({"instruction": f"Repeat {i}", "output": f"{i} " * (i + 1)}) for i in range(6)]
    runs = {}
    for batch_size, accum in ((16, 1), (8, 2)):
        config = TrainConfig(model=model_dir, max_steps=2, batch_size=batch_size, grad_accum=accum,
                             lora_dropout=0.0, max_length=48, lr=1e-2)
        runs[(batch_size, accum)] = _adapter(train(config, many, tmp_path / f"{batch_size}x{accum}"))
    one, two = runs[(16, 1)], runs[(8, 2)]
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-6)


def test_optimizer_step_weighs_each_record_the_same(tiny_llama):
    """Micro-batches of unequal size: the step's loss is still the plain mean over its records."""
    from clues.loss import batch_record_losses
    from clues.model import LoraSettings, attach_lora

    model, tok = tiny_llama
    model = attach_lora(model, LoraSettings(dropout=0.0))
    encs = [encode(r, tok, 48) for r in RECORDS[:3]]
    with torch.no_grad():
        expected = batch_record_losses(model, pad_batch(encs, tok.pad_token_id)).mean()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)
    loss = train_mod.optimizer_step(model, optimizer, [pad_batch(encs[:1], tok.pad_token_id), pad_batch(encs[1:], tok.pad_token_id)])
    assert loss == pytest.approx(float(expected), rel=1e-5)


def test_a_step_whose_loss_is_not_finite_is_refused_before_the_weights_move(tiny_llama):
    """A LoRA weight that is NaN makes the loss NaN: the step raises TrainingDiverged (public fixed
    words: a federation learns why) and the optimizer never steps, so every other weight is unchanged."""
    from clues.errors import TrainingDiverged
    from clues.failures import public_reason
    from clues.model import LoraSettings, attach_lora

    model, tok = tiny_llama
    model = attach_lora(model, LoraSettings(dropout=0.0))
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        params[0][0, 0] = float("nan")
    before = [p.detach().clone() for p in params[1:]]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    batch = pad_batch([encode(r, tok, 48) for r in RECORDS[:3]], tok.pad_token_id)
    with pytest.raises(TrainingDiverged, match=r"a step's mean loss is nan at learning rate 0.01") as caught:
        train_mod.optimizer_step(model, optimizer, [batch])
    assert public_reason(caught.value) == TrainingDiverged.PUBLIC
    assert all(torch.equal(a, b) for a, b in zip(before, params[1:]))
    assert not optimizer.state  # no step was taken


def test_config_validation():
    with pytest.raises(CluesError, match="either"):
        TrainConfig(epochs=2, max_steps=5)
    assert TrainConfig().epochs == 3
    assert TrainConfig(lora_targets="q_proj, v_proj").lora_targets == ("q_proj", "v_proj")
    assert TrainConfig.from_dict(json.loads(json.dumps(TrainConfig(max_steps=4).to_dict()))) == TrainConfig(max_steps=4)
    with pytest.raises(CluesError):
        TrainConfig(batch_size=0)


def test_cli_bad_data_reports_file_and_line(tmp_path, monkeypatch, capsys):
    from clues import cli

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n', encoding="utf-8")
    monkeypatch.setattr("sys.argv", ["clues", "train", "--data", str(bad), "--out", str(tmp_path / "out"), "--model", "nowhere"])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code != 0
    assert f"{bad}:2: output: missing required field" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
