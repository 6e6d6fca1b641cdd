"""Threshold policies, selection and the selection metrics, on hand-checked numbers."""

from __future__ import annotations

import json

import pytest

from clues.errors import CluesError
from clues.metrics import average_precision, corruption_metrics, evaluate, load_labels, roc_auc, selection_metrics
from clues.select import parse_policy, select, silo_thresholds, summary, threshold


def test_mean_and_quantile_thresholds():
    scores = [4.0, 1.0, 3.0, 2.0]
    assert threshold(scores, "mean") == 2.5
    assert threshold(scores, "quantile:0") == 1.0
    assert threshold(scores, "quantile:1") == 4.0
    assert threshold(scores, "quantile:0.5") == 2.5
    assert threshold(scores, "quantile:0.25") == pytest.approx(1.75)
    assert str(parse_policy("quantile:0.25")) == "quantile:0.25"


def test_conformal_threshold_is_the_kth_lowest_anchor_and_keeps_clean_records_at_the_promised_rate():
    import random

    from clues.select import conformal_rank

    assert [conformal_rank(n, 0.1) for n in (1, 9, 10, 19, 40)] == [1, 1, 1, 2, 4]
    assert threshold([5.0, 1.0, 3.0, 2.0], "conformal:0.1") == 1.0
    assert threshold([float(i) for i in range(40)], "conformal:0.1") == 3.0
    assert str(parse_policy("conformal:0.1")) == "conformal:0.1"
    # exchangeable anchors and clean records: a clean record is kept with probability >= 1 - alpha
    rng = random.Random(0)
    for n, alpha in ((10, 0.1), (40, 0.1), (40, 0.25)):
        misses = 0
        trials = 4000
        for _ in range(trials):
            tau = threshold([rng.gauss(0, 1) for _ in range(n)], f"conformal:{alpha}")
            misses += rng.gauss(0, 1) < tau
        expected = conformal_rank(n, alpha) / (n + 1)
        assert expected <= alpha + 1 / (n + 1) and abs(misses / trials - expected) < 0.02


@pytest.mark.parametrize("bad", ["median", "quantile:", "quantile:1.5", "quantile:x", "", "conformal:0", "conformal:1", "conformal:x"])
def test_bad_policy_is_an_error(bad):
    with pytest.raises(CluesError):
        parse_policy(bad)


def test_threshold_needs_scores():
    with pytest.raises(CluesError, match="no anchor scores"):
        threshold([], "mean")
    with pytest.raises(CluesError, match="not finite"):
        threshold([1.0, float("nan")], "mean")


def test_global_and_per_silo_thresholds():
    anchors = {"a": [1.0, 3.0], "b": [10.0, 20.0, 30.0]}
    assert silo_thresholds(anchors, "mean", "per-silo") == {"a": 2.0, "b": 20.0}
    assert silo_thresholds(anchors, "mean", "global") == {"a": 12.8, "b": 12.8}
    assert silo_thresholds(anchors, "quantile:0.5", "global") == {"a": 10.0, "b": 10.0}
    with pytest.raises(CluesError, match="mode"):
        silo_thresholds(anchors, "mean", "both")


def test_selection_keeps_scores_at_or_above_tau():
    decisions = select([0.5, 1.0, 1.5, float("nan")], 1.0)
    assert decisions == [False, True, True, False]
    assert summary(decisions) == {"kept": 2, "total": 4, "kept_ratio": 0.5}


def test_selection_metrics_clean_is_positive():
    decisions = [True, True, True, False, False, True]
    clean = [True, True, False, True, False, False]
    m = selection_metrics(decisions, clean)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 2, 1, 1)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert m["accuracy"] == pytest.approx(0.5)
    empty = selection_metrics([False, False], [True, False])
    assert empty["precision"] is None and empty["recall"] == 0.0 and empty["f1"] == 0.0


def _auc_by_pairs(scores, clean):
    pos = [s for s, c in zip(scores, clean) if c]
    neg = [s for s, c in zip(scores, clean) if not c]
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg) / (len(pos) * len(neg))


def test_roc_auc_with_ties_equals_pair_counting():
    scores = [0.1, 0.4, 0.4, 0.4, 0.9, 0.2, 0.9, 0.0]
    clean = [False, True, False, True, True, False, False, True]
    assert roc_auc(scores, clean) == pytest.approx(_auc_by_pairs(scores, clean))
    assert roc_auc([1, 2, 3], [False, True, True]) == 1.0
    assert roc_auc([1, 1, 1], [False, True, True]) == 0.5
    assert roc_auc([1, 2], [True, True]) is None


def _ap_by_thresholds(scores, positive):
    """Average precision the slow way: precision at every distinct threshold, weighted by the recall it adds."""
    total = sum(positive)
    area, last_recall = 0.0, 0.0
    for t in sorted(set(scores), reverse=True):
        chosen = [p for s, p in zip(scores, positive) if s >= t]
        recall = sum(chosen) / total
        area += (recall - last_recall) * (sum(chosen) / len(chosen))
        last_recall = recall
    return area


@pytest.mark.parametrize("scores, positive", [
    ([0.9, 0.8, 0.7, 0.6, 0.5], [True, False, True, False, False]),
    ([3, 1, 2, 2, 0, 2], [False, True, True, False, True, True]),  # ties
    ([1.0, 1.0, 1.0], [True, False, False]),  # one tie group: the base rate
])
def test_average_precision_equals_the_threshold_sum(scores, positive):
    assert average_precision(scores, positive) == pytest.approx(_ap_by_thresholds(scores, positive))
    assert average_precision(scores, [False] * len(scores)) is None


def test_corruption_metrics_per_type():
    #          clean clean clean  noise  noise  cut    cut
    scores = [0.9, 0.7, 0.5, 0.1, 0.8, 0.6, 0.4]
    clean = [True, True, True, False, False, False, False]
    kinds = [None, None, None, "noise", "noise", "cut", "cut"]
    kept = [True, True, False, False, True, True, False]
    # Recall is the share of a type's records the selection *dropped*: with three "cut" records of
    # which one is dropped, it is 1/3 (the share kept would be 2/3).
    three_cuts = corruption_metrics([0.9, 0.1, 0.2, 0.3], [True, False, False, False], [None, "cut", "cut", "cut"],
                                    [True, False, True, True])
    assert three_cuts["cut"]["recall"] == pytest.approx(1 / 3)
    out = corruption_metrics(scores, clean, kinds, kept)
    assert sorted(out) == ["cut", "noise"]
    assert out["noise"]["auroc"] == pytest.approx(roc_auc([0.9, 0.7, 0.5, 0.1, 0.8], clean[:5]))
    assert out["cut"]["auroc"] == pytest.approx(roc_auc([0.9, 0.7, 0.5, 0.6, 0.4], clean[:3] + [False, False]))
    # detecting "noise": ranked by lowest score, 0.1 (noise) first, then 0.5 (clean), 0.7, 0.8 (noise)
    assert out["noise"]["auprc"] == pytest.approx((1 / 1 + 2 / 4) / 2)
    assert out["noise"]["base_rate"] == pytest.approx(2 / 5) and out["noise"]["count"] == 2
    assert out["noise"]["recall"] == pytest.approx(1 / 2) and out["cut"]["recall"] == pytest.approx(1 / 2)
    assert "recall" not in corruption_metrics(scores, clean, kinds)["cut"]


def test_evaluate_per_silo_with_labels_file(tmp_path):
    labels_path = tmp_path / "labels.jsonl"
    rows = [
        {"id": "a1", "silo": "a", "clean": True, "corruption": None},
        {"id": "a2", "silo": "a", "clean": False, "corruption": "mismatched_answer"},
        {"id": "b1", "silo": "b", "clean": True, "corruption": None},
        {"id": "b2", "silo": "b", "clean": False, "corruption": "random_noise"},
    ]
    labels_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    labels = load_labels(labels_path)
    scores = {"a1": 2.0, "a2": 1.0, "b1": 0.5, "b2": 3.0}
    report = evaluate(labels, scores=scores, tau=1.5)
    assert report["silos"]["a"]["recall"] == 1.0 and report["silos"]["a"]["auroc"] == 1.0
    assert report["silos"]["b"]["recall"] == 0.0 and report["silos"]["b"]["auroc"] == 0.0
    assert report["overall"]["kept"] == 2 and report["overall"]["accuracy"] == 0.5
    per_silo = evaluate(labels, scores=scores, tau={"a": 1.5, "b": 0.4})
    assert per_silo["silos"]["b"]["kept"] == 2
    decided = evaluate(labels, decisions={"a1": True, "a2": False})
    assert decided["overall"]["precision"] == 1.0 and "auroc" not in decided["overall"]
    with pytest.raises(CluesError, match="no label"):
        evaluate(labels, scores={"zz": 1.0}, tau=0.0)


def test_bad_labels_file(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"id": "x", "clean": "yes"}\n')
    with pytest.raises(CluesError, match="labels.jsonl:1"):
        load_labels(path)


def test_select_command_with_tau_and_pooled_anchor_scores(tmp_path):
    from typer.testing import CliRunner

    from clues.cli import app

    data = tmp_path / "data.jsonl"
    originals = [
        {"id": "r1", "instruction": "q1", "output": "a1", "source": "x", "extra": {"k": [1, 2]}},
        {"id": "r2", "instruction": "q2", "output": "a2"},
        {"instruction": "q3", "output": "a3"},
    ]
    data.write_text("".join(json.dumps(o) + "\n" for o in originals))
    from clues.data import load_records

    ids = [r.id for r in load_records(data)]
    scores = tmp_path / "scores.jsonl"
    scores.write_text("".join(json.dumps({"id": i, "score": s, "per_checkpoint": [s]}) + "\n" for i, s in zip(ids, [3.0, 1.0, 2.0])))
    out = tmp_path / "kept.jsonl"
    runner = CliRunner()
    res = runner.invoke(app, ["select", "--data", str(data), "--scores", str(scores), "--tau", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert [json.loads(x) for x in out.read_text().splitlines()] == [originals[0], originals[2]]
    assert "2/3" in res.output
    anchors = tmp_path / "anchor_scores.jsonl"
    anchors.write_text('{"id": "n1", "score": 0.5}\n{"id": "n2", "score": 2.5}\n')
    res = runner.invoke(app, ["select", "--data", str(data), "--scores", str(scores), "--anchor-scores", str(anchors),
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "kept 2/3" in res.output  # tau = mean(0.5, 2.5) = 1.5
    res = runner.invoke(app, ["select", "--data", str(data), "--scores", str(scores), "--out", str(out)])
    assert isinstance(res.exception, CluesError)
    scores.write_text(json.dumps({"id": ids[0], "score": 1.0}) + "\n")
    res = runner.invoke(app, ["select", "--data", str(data), "--scores", str(scores), "--tau", "0", "--out", str(out)])
    assert isinstance(res.exception, CluesError) and "no score" in str(res.exception)


def test_run_defaults_select_per_silo_at_the_conformal_rank_unless_the_config_says_otherwise():
    from clues.config import make_config

    base = {"silos": {"a": "a.jsonl"}, "validation": "v.jsonl", "anchor": "x.jsonl", "test": "t.jsonl"}
    select_settings = make_config(dict(base)).select
    assert (select_settings.policy, select_settings.mode) == ("conformal:0.1", "per-silo")
    select_settings = make_config({**base, "select": {"policy": "mean", "mode": "global"}}).select
    assert (select_settings.policy, select_settings.mode) == ("mean", "global")
    assert make_config(dict(base)).equal_steps is True


def test_thresholds_take_each_silos_own_domain_anchors():
    from types import SimpleNamespace

    from clues.select import own_domain_anchors

    anchors = [SimpleNamespace(domain=d) for d in ("finance", "medical", "finance", "medical")]
    reply = {"anchor_scores": [1.0, 2.0, 3.0, 4.0], "domains": ["medical"]}
    assert own_domain_anchors(reply, anchors) == [2.0, 4.0]
    assert own_domain_anchors({**reply, "domains": []}, anchors) == [1.0, 2.0, 3.0, 4.0]  # no domain: all
    assert own_domain_anchors({**reply, "domains": ["law"]}, anchors) == [1.0, 2.0, 3.0, 4.0]  # none shared: all


def test_a_silo_whose_domain_no_anchor_shares_is_named_in_a_warning():
    """Its threshold falls back to every anchor (other domains'): said, once per such silo, never for a
    silo with an anchor of its own or one that names no domain (data without domain labels)."""
    from types import SimpleNamespace

    from clues.select import anchor_warnings, own_domain_anchors

    anchors = [SimpleNamespace(domain="finance"), SimpleNamespace(domain="medical")]
    replies = {"bank": {"domains": ["finance"], "anchor_scores": [1.0, 5.0]},
               "school": {"domains": ["exam", "law"], "anchor_scores": [2.0, 3.0]},
               "plain": {"domains": [], "anchor_scores": [4.0, 6.0]}}
    assert anchor_warnings(replies, anchors) == [
        "silo 'school': no anchor is of its domain (exam, law); its threshold comes from the anchors of other domains"]
    assert own_domain_anchors(replies["school"], anchors) == [2.0, 3.0]  # the fallback the warning names
    assert own_domain_anchors(replies["bank"], anchors) == [1.0]
