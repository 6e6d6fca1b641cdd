"""The scoring engine against a slow, obviously correct reference.

The reference scores one record at a time: a batch of one, ``loss.backward()``, the ``.grad`` of the
chosen parameters concatenated by hand, the preconditioner written out, the validation gradient a
plain per-domain mean of such gradients. The engine (batched hooks, streaming, projection folded into
the validation side) must agree to a relative error of 1e-4 on every score.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from clues import checkpoint as ckpt
from clues.data import shipped
from clues.data.batching import pad_batch
from clues.data.records import record_from_dict
from clues.data.template import encode
from clues.errors import CluesError, DataError
from clues.loss import per_record_loss
from clues.scoring.engine import ScoreSettings, score_run
from clues.scoring.params import select_blocks
from clues.scoring.projection import project, rademacher_matrix

MAX_LENGTH = 72
TARGETS = ("q_proj", "v_proj", "o_proj")
B1, B2, EPS = 0.9, 0.999, 1e-8

# The reference's own, independent reading of each parameter subset.
SUBSETS = {
    "all": lambda n: True,
    "q": lambda n: ".q_proj.lora_" in n,
    "v": lambda n: ".v_proj.lora_" in n,
    "lora_A": lambda n: ".lora_A." in n,
    "lora_B": lambda n: ".lora_B." in n,
    "first-layer": lambda n: ".layers.0." in n,
    "last-layer": lambda n: ".layers.1." in n,
    r"layers\.1\..*(v|o)_proj\.lora_B": lambda n: ".layers.1." in n and (".v_proj.lora_B" in n or ".o_proj.lora_B" in n),
}


def _records():
    """Training records of mixed lengths, some truncated; validation from two domains."""
    fiqa = shipped.load("fiqa", "all")
    med = shipped.load("medmeadow", "all")
    data = [fiqa[i] for i in (0, 3, 5, 8, 13, 21, 34)]
    short = record_from_dict({"id": "short", "instruction": "Say yes.", "output": "Yes.", "domain": "finance"})
    validation = [fiqa[i] for i in (40, 41, 42)] + [med[i] for i in (1, 2)]
    anchors = [fiqa[i] for i in (50, 51, 52)]
    return data + [short], validation, anchors


def _make_run(root, model_dir, checkpoints=2, dropout=0.0, with_moments=True):
    """A training run written by the real checkpoint writer, with random adapters and moments."""
    from peft import LoraConfig, get_peft_model

    from clues.model import load_model

    base, _ = load_model(str(model_dir))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=list(TARGETS)))
    gen = torch.Generator().manual_seed(7)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params)
    for c in range(checkpoints):
        with torch.no_grad():
            for p in params:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        for p in params:
            optimizer.state[p] = {
                "exp_avg": torch.randn(p.shape, generator=gen) * 0.02,
                "exp_avg_sq": (torch.randn(p.shape, generator=gen) * 0.05) ** 2,
            }
        meta = {
            "lr_mean": 1e-3 * (c + 1),
            "base_model": str(model_dir),
            "config": {"max_length": MAX_LENGTH, "template": "alpaca"},
            "optimizer": {"betas": [B1, B2], "eps": EPS},
        }
        path = ckpt.save_checkpoint(root, 10 * (c + 1), model, optimizer, meta)
        if not with_moments:
            (path / ckpt.OPTIMIZER_FILE).unlink()
    return root


def _single_grads(model, tokenizer, record):
    """Batch of one, loss.backward(): {param name: .grad} of every LoRA weight."""
    enc = encode(record, tokenizer, MAX_LENGTH)
    batch = pad_batch([enc], tokenizer.pad_token_id)
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    per_record_loss(logits, batch["labels"]).sum().backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if ".lora_" in n}


def _reference_raw(run_dir, model_dir, records, validation, anchors):
    """Per checkpoint: eta, moments, and the batch-size-1 gradients of every record."""
    from peft import PeftModel

    from clues.model import load_model

    out = []
    for path in ckpt.list_checkpoints(run_dir):
        base, tokenizer = load_model(str(model_dir))
        model = PeftModel.from_pretrained(base, str(path))
        model.eval()
        for n, p in model.named_parameters():
            p.requires_grad_(".lora_" in n)
        names = [n for n, _ in model.named_parameters() if ".lora_" in n]
        out.append({
            "eta": ckpt.load_checkpoint_meta(path)["lr_mean"],
            "names": names,
            "moments": ckpt.load_moments(path),
            "data": [_single_grads(model, tokenizer, r) for r in records],
            "anchor": [_single_grads(model, tokenizer, r) for r in anchors],
            "val": [(r.domain, _single_grads(model, tokenizer, r)) for r in validation],
        })
    return out


def _reference_scores(raw, which, kind, subset, own=("finance",), w_other=1.0, proj=None):
    totals = None
    for c in raw:
        names = [n for n in c["names"] if SUBSETS[subset](n)]
        flat = lambda grads: torch.cat([grads[n].reshape(-1) for n in names]).double()  # noqa: E731
        by_domain = {}
        for domain, grads in c["val"]:
            by_domain.setdefault(domain, []).append(flat(grads))
        weight = {d: 1.0 if d in own else w_other for d in by_domain}
        gval = sum(weight[d] * torch.stack(v).mean(0) for d, v in by_domain.items()) / sum(weight.values())
        m = torch.cat([c["moments"][n][0].reshape(-1) for n in names]).double()
        v = torch.cat([c["moments"][n][1].reshape(-1) for n in names]).double()
        scores = []
        for grads in c[which]:
            g = flat(grads)
            if kind == "none":
                G = g
            elif kind == "sqrtv":
                G = g / (torch.sqrt(v) + EPS)
            else:
                G = (B1 * m + (1 - B1) * g) / torch.sqrt(B2 * v + (1 - B2) * g * g + EPS)
            if proj:
                R = rademacher_matrix(G.numel(), proj, seed=0)
                scores.append(c["eta"] * float((R.T @ G) @ (R.T @ gval)))
            else:
                scores.append(c["eta"] * float(G @ gval))
        scores = torch.tensor(scores, dtype=torch.float64)
        totals = scores if totals is None else totals + scores
    return totals


def scoring_setup(root, tokenizer, extra_validation=()) -> dict:
    """A tiny model folder, a two-checkpoint run with random adapters and moments, the records and the
    batch-size-1 reference gradients (shared by the engine and the gradient-baseline tests)."""
    from conftest import make_tiny_llama

    model_dir = root / "tiny-llama"
    make_tiny_llama(tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    run = _make_run(root / "run", model_dir, dropout=0.3)
    records, validation, anchors = _records()
    validation = validation + list(extra_validation)
    raw = _reference_raw(run, model_dir, records, validation, anchors)
    return {"root": root, "model_dir": model_dir, "run": run, "records": records,
            "validation": validation, "anchors": anchors, "raw": raw}


@pytest.fixture(scope="module")
def setup(one_thread, tmp_path_factory, tiny_tokenizer):
    return scoring_setup(tmp_path_factory.mktemp("scoring"), tiny_tokenizer)


def _assert_close(engine, reference, rtol=1e-4):
    """Scores agree to ``rtol`` of the largest reference score.

    Scores are dot products of float32 gradients: their rounding error scales with the magnitudes
    of the gradients, not with the (possibly near-zero) score itself. An element-wise relative
    test therefore fails by chance whenever a score lies near zero or the summation order changes
    (threads, batch composition); the norm-wise test is what float32 guarantees.
    """
    assert engine.shape == reference.shape
    scale = reference.abs().max().clamp(min=1e-30)
    err = (engine - reference).abs().max() / scale
    assert float(err) <= rtol, f"max error {float(err):.2e} of the largest score\n{engine}\n{reference}"


@pytest.mark.parametrize("kind", ["adam", "none", "sqrtv"])
@pytest.mark.parametrize("subset", list(SUBSETS))
def test_engine_matches_reference(setup, kind, subset):
    settings = ScoreSettings(precondition=kind, params=subset, batch_size=3)
    result = score_run(setup["run"], {"data": setup["records"], "anchor": setup["anchors"]}, setup["validation"], settings)
    _assert_close(result.total("data"), _reference_scores(setup["raw"], "data", kind, subset))
    _assert_close(result.total("anchor"), _reference_scores(setup["raw"], "anchor", kind, subset))
    assert result.etas == [1e-3, 2e-3]
    assert result.per_checkpoint["data"].shape == (len(setup["records"]), 2)


@pytest.mark.parametrize("kind", ["adam", "none"])
def test_projection_matches_explicit_both_sides(setup, kind):
    settings = ScoreSettings(precondition=kind, params="q", project=64, batch_size=4)
    result = score_run(setup["run"], {"data": setup["records"]}, setup["validation"], settings)
    _assert_close(result.total("data"), _reference_scores(setup["raw"], "data", kind, "q", proj=64))


def test_domain_weighting(setup):
    settings = ScoreSettings(precondition="none", w_other=0.25, domains=("medical",), batch_size=8)
    result = score_run(setup["run"], {"data": setup["records"]}, setup["validation"], settings)
    expected = _reference_scores(setup["raw"], "data", "none", "all", own=("medical",), w_other=0.25)
    _assert_close(result.total("data"), expected)


def test_own_domain_only_skips_the_other_domains_validation_records(setup):
    """--w-other 0: the other domains' validation records are never run, and the progress total holds."""
    done = []
    settings = ScoreSettings(precondition="none", w_other=0.0, domains=("medical",), batch_size=8)
    result = score_run(setup["run"], {"data": setup["records"]}, setup["validation"], settings, progress=done.append)
    expected = _reference_scores(setup["raw"], "data", "none", "all", own=("medical",), w_other=0.0)
    _assert_close(result.total("data"), expected)
    assert sum(done) == 2 * (len(setup["validation"]) + len(setup["records"]))
    medical = [r for r in setup["validation"] if r.domain == "medical"]
    alone = score_run(setup["run"], {"data": setup["records"]}, medical, ScoreSettings(precondition="none", batch_size=8))
    _assert_close(result.total("data"), alone.total("data"), rtol=1e-5)


def test_batch_size_and_composition_do_not_change_scores(setup):
    records = setup["records"]
    scores = []
    for batch_size, order in ((1, records), (8, records), (3, records[::-1])):
        result = score_run(setup["run"], {"data": order}, setup["validation"], ScoreSettings(batch_size=batch_size))
        s = result.total("data")
        scores.append(s if order is records else s.flip(0))
    _assert_close(scores[1], scores[0], rtol=1e-5)
    _assert_close(scores[2], scores[0], rtol=1e-5)


def test_scores_are_deterministic_despite_lora_dropout(setup):
    """The adapter was configured with dropout 0.3: scoring runs in eval mode, so two runs agree exactly."""
    a = score_run(setup["run"], {"data": setup["records"][:3]}, setup["validation"], ScoreSettings()).total("data")
    b = score_run(setup["run"], {"data": setup["records"][:3]}, setup["validation"], ScoreSettings()).total("data")
    assert torch.equal(a, b)


def test_params_that_match_nothing_are_an_error(setup):
    with pytest.raises(CluesError, match="matches no LoRA parameter"):
        score_run(setup["run"], {"data": setup["records"][:1]}, setup["validation"], ScoreSettings(params="k_proj"))
    with pytest.raises(CluesError, match="regex"):
        score_run(setup["run"], {"data": setup["records"][:1]}, setup["validation"], ScoreSettings(params="(["))


def test_param_subsets_select_exactly(setup):
    from peft import PeftModel

    from clues.model import load_model

    base, _ = load_model(str(setup["model_dir"]))
    model = PeftModel.from_pretrained(base, str(ckpt.list_checkpoints(setup["run"])[0]))
    every = [n for n, _ in model.named_parameters() if ".lora_" in n]
    for spec, rule in SUBSETS.items():
        chosen = [b.name for b in select_blocks(model, spec)]
        assert chosen == [n for n in every if rule(n)], spec
        assert chosen, spec
    assert len(select_blocks(model, "all")) == 2 * 2 * len(TARGETS)


def test_missing_moments_with_adam_is_an_error(setup, tmp_path):
    run = _make_run(tmp_path / "run", setup["model_dir"], checkpoints=1, with_moments=False)
    with pytest.raises(CluesError, match="moments"):
        score_run(run, {"data": setup["records"][:2]}, setup["validation"], ScoreSettings(precondition="adam"))
    # The plain gradient needs no moments.
    score_run(run, {"data": setup["records"][:2]}, setup["validation"], ScoreSettings(precondition="none"))


def test_adapter_that_does_not_fit_the_base_model(setup, tmp_path, tiny_tokenizer):
    from conftest import make_tiny_llama

    other = tmp_path / "other-base"
    make_tiny_llama(tiny_tokenizer, layers=1).save_pretrained(other)
    tiny_tokenizer.save_pretrained(other)
    run = tmp_path / "run"
    src = ckpt.list_checkpoints(setup["run"])[0]
    import shutil

    shutil.copytree(src, run / src.name)
    meta = json.loads((run / src.name / ckpt.META_FILE).read_text())
    meta["base_model"] = str(other)
    (run / src.name / ckpt.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CluesError, match="does not fit the base model"):
        score_run(run, {"data": setup["records"][:1]}, setup["validation"], ScoreSettings(precondition="none"))


def test_projection_is_seeded_rademacher():
    R = rademacher_matrix(5000, 16, seed=3)
    assert torch.equal(R, rademacher_matrix(5000, 16, seed=3))
    assert not torch.equal(R, rademacher_matrix(5000, 16, seed=4))
    assert set(torch.unique(R * 4).tolist()) == {-1.0, 1.0}
    x = torch.randn(2, 5000, dtype=torch.float64)
    assert torch.allclose(project(x, 16, seed=3), x @ R)


def test_cli_score_and_select(setup, tmp_path):
    """End to end through the command line: files, input order, threshold, selection."""
    from typer.testing import CliRunner

    from clues.cli import app

    def write(path, records):
        path.write_text("".join(json.dumps(r.raw) + "\n" for r in records), encoding="utf-8")
        return path

    data = write(tmp_path / "data.jsonl", setup["records"])
    val = write(tmp_path / "val.jsonl", setup["validation"])
    anc = write(tmp_path / "anc.jsonl", setup["anchors"])
    out = tmp_path / "out"
    runner = CliRunner()
    res = runner.invoke(app, ["score", "--run", str(setup["run"]), "--data", str(data), "--validation", str(val),
                              "--anchor", str(anc), "--out", str(out), "--batch-size", "4"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [r.id for r in setup["records"]]
    assert all(len(r["per_checkpoint"]) == 2 and abs(sum(r["per_checkpoint"]) - r["score"]) < 1e-12 for r in rows)
    _assert_close(torch.tensor([r["score"] for r in rows], dtype=torch.float64),
                  _reference_scores(setup["raw"], "data", "adam", "all"))
    anchors = [json.loads(line)["score"] for line in (out / "anchor_scores.jsonl").read_text().splitlines()]
    threshold = json.loads((out / "threshold.json").read_text())
    assert threshold["policy"] == "mean" and threshold["tau"] == pytest.approx(sum(anchors) / len(anchors))

    kept_path = tmp_path / "kept.jsonl"
    res = runner.invoke(app, ["select", "--data", str(data), "--scores", str(out / "scores.jsonl"),
                              "--threshold-file", str(out / "threshold.json"), "--out", str(kept_path)])
    assert res.exit_code == 0, res.output
    kept = [json.loads(line) for line in kept_path.read_text().splitlines()]
    expected = [r.raw for r, s in zip(setup["records"], rows) if s["score"] >= threshold["tau"]]
    assert kept == expected
    assert f"{len(expected)}/{len(rows)}" in res.output


@pytest.mark.parametrize("content, message", [("", "empty file"), ('{"instruction": "x"}\n', "output: missing")])
def test_bad_validation_or_anchor_file_reports_file_and_line(setup, tmp_path, content, message):
    from typer.testing import CliRunner

    from clues.cli import app

    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(setup["records"][0].raw) + "\n", encoding="utf-8")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content, encoding="utf-8")
    for flag in ("--validation", "--anchor"):
        args = {"--data": good, "--validation": good, "--anchor": good, flag: bad}
        argv = ["score", "--run", str(setup["run"]), "--out", str(tmp_path / "o")]
        for k, v in args.items():
            argv += [k, str(v)]
        res = CliRunner().invoke(app, argv)
        assert isinstance(res.exception, DataError), res.output
        assert re.search(rf"{re.escape(str(bad))}:1: .*{message}", str(res.exception))
