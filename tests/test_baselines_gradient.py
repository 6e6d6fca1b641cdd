"""DataInf and LESS against slow, explicit references.

The references take batch-size-1 ``loss.backward()`` gradients (``_reference_raw`` of test_scoring),
then write each paper's formula out with whole matrices: DataInf's per-layer inverse-Hessian
approximation as an explicit ``d_l x d_l`` matrix, LESS's cosine per validation record. The streamed
scorers must agree to a relative error of 1e-4, at any batch size.
"""

from __future__ import annotations

import pytest
import torch

from clues import checkpoint as ckpt
from clues.baselines import ScoringInputs, score_records
from clues.baselines.less import _unit_rows
from clues.data.records import record_from_dict
from clues.errors import CluesError
from clues.scoring.engine import ScoreSettings
from test_scoring import B1, B2, EPS, SUBSETS, _make_run, scoring_setup
from test_scoring import _assert_close as assert_scores_close

OWN = ("finance",)


@pytest.fixture(scope="module")
def setup(one_thread, tmp_path_factory, tiny_tokenizer):
    # A validation record without a domain: its own group (LESS) and an "other" domain (DataInf's v).
    nodomain = record_from_dict({"id": "nodomain", "instruction": "Name a colour.", "output": "Blue, like the sky."})
    return scoring_setup(tmp_path_factory.mktemp("baselines"), tiny_tokenizer, [nodomain])


def _score(setup, method, batch_size=3, **settings):
    inputs = ScoringInputs(base_model=str(setup["model_dir"]), validation=setup["validation"], run_dir=setup["run"],
                           settings=ScoreSettings(batch_size=batch_size, **settings))
    return score_records(method, inputs, {"data": setup["records"], "anchor": setup["anchors"]})


def _assert_close(got, expected, rtol=1e-4):
    assert got.dtype == torch.float64
    assert_scores_close(got, expected, rtol)


def _layers(names):
    """{LoRA module: [its parameter names]}, the reference's own grouping of A and B."""
    out = {}
    for n in names:
        out.setdefault(n.split(".lora_")[0], []).append(n)
    return out


def _reference_datainf(raw, subset, w_other=1.0):
    c = raw[-1]  # DataInf uses the last checkpoint only
    names = [n for n in c["names"] if SUBSETS[subset](n)]
    scores = {"data": torch.zeros(len(c["data"]), dtype=torch.float64), "anchor": torch.zeros(len(c["anchor"]), dtype=torch.float64)}
    for layer in _layers(names).values():
        flat = lambda grads: torch.cat([grads[n].reshape(-1) for n in layer]).double()  # noqa: E731
        by_domain = {}
        for domain, grads in c["val"]:
            by_domain.setdefault(domain, []).append(flat(grads))
        weight = {d: 1.0 if d in OWN else w_other for d in by_domain}
        v = sum(weight[d] * torch.stack(g).mean(0) for d, g in by_domain.items()) / sum(weight.values())
        G = torch.stack([flat(g) for g in c["data"]])  # [n, d_l]
        n, d = G.shape
        lam = 0.1 * (G * G).sum() / (n * d)
        eye = torch.eye(d, dtype=torch.float64)
        M = sum(eye - torch.outer(g, g) / (lam + g @ g) for g in G) / (n * lam)
        for which in scores:
            Z = torch.stack([flat(g) for g in c[which]])
            scores[which] += Z @ (M @ v)  # M is symmetric: v^T M g(z)
    return scores


def _reference_less(raw, which, kind, subset):
    totals = None
    for c in raw:
        names = [n for n in c["names"] if SUBSETS[subset](n)]
        flat = lambda grads: torch.cat([grads[n].reshape(-1) for n in names]).double()  # noqa: E731
        m = torch.cat([c["moments"][n][0].reshape(-1) for n in names]).double()
        v = torch.cat([c["moments"][n][1].reshape(-1) for n in names]).double()
        per_domain = {}
        for grads in c[which]:
            g = flat(grads)
            G = g if kind == "none" else (B1 * m + (1 - B1) * g) / torch.sqrt(B2 * v + (1 - B2) * g * g + EPS)
            cosines = {}
            for domain, vgrads in c["val"]:
                cosines.setdefault(domain, []).append(float(torch.nn.functional.cosine_similarity(G, flat(vgrads), dim=0)))
            for domain, values in cosines.items():
                per_domain.setdefault(domain, []).append(c["eta"] * sum(values) / len(values))
        scores = torch.tensor(list(per_domain.values()), dtype=torch.float64)  # [domains, records]
        totals = scores if totals is None else totals + scores
    return totals.max(dim=0).values  # sum over checkpoints first, then the best domain


@pytest.mark.parametrize("subset", ["all", "q", r"layers\.1\..*(v|o)_proj\.lora_B"])
def test_datainf_matches_explicit_matrices(setup, subset):
    scores = _score(setup, "datainf", params=subset)
    expected = _reference_datainf(setup["raw"], subset)
    _assert_close(scores["data"], expected["data"])
    _assert_close(scores["anchor"], expected["anchor"])


def test_datainf_domain_weighting(setup):
    scores = _score(setup, "datainf", w_other=0.25)
    _assert_close(scores["data"], _reference_datainf(setup["raw"], "all", w_other=0.25)["data"])


@pytest.mark.parametrize("kind, subset", [("adam", "all"), ("adam", "lora_B"), ("none", "first-layer")])
def test_less_matches_explicit_cosines(setup, kind, subset):
    scores = _score(setup, "less", precondition=kind, params=subset)
    _assert_close(scores["data"], _reference_less(setup["raw"], "data", kind, subset))
    _assert_close(scores["anchor"], _reference_less(setup["raw"], "anchor", kind, subset))


@pytest.mark.parametrize("method", ["datainf", "less"])
def test_batch_size_does_not_change_scores(setup, method):
    one, eight = _score(setup, method, batch_size=1), _score(setup, method, batch_size=8)
    for name in one:
        _assert_close(eight[name], one[name], rtol=1e-5)


def test_zero_gradients_have_cosine_zero():
    G = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float64)
    unit = _unit_rows(G)
    assert torch.equal(unit, torch.tensor([[0.6, 0.8], [0.0, 0.0]], dtype=torch.float64))
    assert not torch.isnan(unit).any()


def test_errors_are_clear(setup, tmp_path):
    no_run = ScoringInputs(base_model=str(setup["model_dir"]), validation=setup["validation"])
    for method in ("datainf", "less"):
        with pytest.raises(CluesError, match="warm-up training run"):
            score_records(method, no_run, {"data": setup["records"][:1]})
    inputs = ScoringInputs(base_model=str(setup["model_dir"]), validation=setup["validation"], run_dir=setup["run"])
    with pytest.raises(CluesError, match="silo's records"):
        score_records("datainf", inputs, {"data": []})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CluesError, match="no complete checkpoint"):
        score_records("less", ScoringInputs(base_model=str(setup["model_dir"]), validation=setup["validation"], run_dir=empty),
                      {"data": setup["records"][:1]})
    bare = _make_run(tmp_path / "bare", setup["model_dir"], checkpoints=1, with_moments=False)
    no_moments = ScoringInputs(base_model=str(setup["model_dir"]), validation=setup["validation"], run_dir=bare)
    with pytest.raises(CluesError, match="moments"):
        score_records("less", no_moments, {"data": setup["records"][:1]})
    # DataInf uses plain gradients and needs no optimizer state.
    assert score_records("datainf", no_moments, {"data": setup["records"][:2]})["data"].shape == (2,)
    assert ckpt.list_checkpoints(bare)
