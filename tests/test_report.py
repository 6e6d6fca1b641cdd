import random
import re

import pytest
from rich.console import Console

from clues.histogram import score_histogram
from clues.report import clean_fractions, print_summary, write_report


def _results():
    return {
        "conditions": {
            "mixed": {"test_loss": {"medical": 2.1, "finance": 2.5}, "mean_test_loss": 2.3, "oracle_gain_recovered": 0.0},
            "clues": {"test_loss": {"medical": 1.9, "finance": 2.3}, "mean_test_loss": 2.1, "oracle_gain_recovered": 0.8,
                      "mcq_accuracy": {"medical": 0.5}},
            "oracle": {"test_loss": {"medical": 1.8, "finance": 2.25}, "mean_test_loss": 2.025, "oracle_gain_recovered": 1.0},
            "perplexity": {"test_loss": {"medical": 2.0, "finance": 2.4}, "mean_test_loss": 2.2, "oracle_gain_recovered": None},
        },
        "selection": {
            "clues": {
                "clinic": {"kept": 30, "total": 40, "tau": 0.0125, "precision": 0.9, "recall": 0.9, "f1": 0.9,
                           "accuracy": 0.85, "auroc": 0.93},
                "bank<&>": {"kept": 18, "total": 40, "tau": 0.0125, "precision": None, "recall": None, "f1": None,
                            "accuracy": None, "auroc": None},
            }
        },
        "timing": {"train": 12.25, "score": 4.5},
        "config": {"model": "tiny", "merge": "ties"},
    }


def _score_data():
    rng = random.Random(0)
    data = {}
    for silo, pollution in (("clinic", 0.25), ("bank<&>", 0.5)):
        clean = [rng.random() >= pollution for _ in range(40)]
        data[silo] = {"scores": [rng.gauss(1.0 if c else -1.0, 1.0) for c in clean], "clean": clean, "tau": 0.0125}
    data["bank<&>"]["clean"] = None  # a silo without labels still gets its histogram
    # what a silo shares in the pipeline: binned counts, not its scores
    clean = [i % 3 > 0 for i in range(30)]
    data["hospital"] = {"histogram": score_histogram([float(i % 7) for i in range(30)], clean), "tau": 9.0}
    return data


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    paths = write_report(_results(), out, _score_data())
    return out, paths


def test_report_files_and_valid_pngs(report_dir):
    from matplotlib.image import imread

    out, paths = report_dir
    names = {p.name for p in out.iterdir()}
    assert {"report.md", "report.html", "score_histograms.png", "test_loss.png", "kept_vs_clean.png"} <= names
    for name in ("score_histograms.png", "test_loss.png", "kept_vs_clean.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = imread(out / name)
        assert image.shape[0] > 100 and image.shape[1] > 100
    assert paths["html"] == out / "report.html"


def test_html_is_self_contained_and_holds_the_tables(report_dir):
    out, _ = report_dir
    text = (out / "report.html").read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text and "<link" not in text
    sources = re.findall(r'src="([^"]*)"', text)
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)
    for needle in ("Test loss by condition", "Selection: clues", "Oracle gain recovered per domain",
                   "Multiple-choice accuracy", "2.1000", "80.0%", "30/40", "bank&lt;&amp;&gt;", "Timing"):
        assert needle in text
    assert "bank<&>" not in text  # escaped


def test_markdown_has_tables_and_links_existing_plots(report_dir):
    out, _ = report_dir
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "| condition | finance | medical | mean | oracle gain recovered |" in text
    assert "| clues | 2.3000 | 1.9000 | 2.1000 | 80.0% |" in text
    assert "| perplexity | 2.4000 | 2.0000 | 2.2000 | – |" in text
    # oracle gain per domain, from the losses: finance (2.5-2.3)/(2.5-2.25) = 80%, medical (2.1-1.9)/(2.1-1.8)
    assert "| clues | 80.0% | 66.7% |" in text
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (out / link).is_file()


def test_report_is_deterministic(report_dir, tmp_path):
    out, _ = report_dir
    write_report(_results(), tmp_path, _score_data())
    for name in ("report.md", "report.html", "test_loss.png", "kept_vs_clean.png", "score_histograms.png"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name


def test_report_without_score_data_or_selection(tmp_path):
    results = {"conditions": _results()["conditions"], "timing": {"train": 1.0, "total": 3.0}}
    # the accuracy may also come as MCQResult.as_dict()
    results["conditions"]["clues"]["mcq_accuracy"] = {"accuracy": {"medical": 0.25}, "skipped": 3}
    write_report(results, tmp_path)
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| clues | 25.0% |" in text
    assert text.count("| total |") == 1
    assert (tmp_path / "test_loss.png").is_file()
    assert not (tmp_path / "score_histograms.png").exists()
    assert not (tmp_path / "kept_vs_clean.png").exists()
    assert "Test loss by condition" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_clean_fraction_from_labels_or_from_precision_and_recall():
    results = _results()
    labelled = {"clinic": {"scores": [0.0] * 4, "clean": [True, True, True, False], "tau": 0.0}}
    assert clean_fractions(results, labelled)["clinic"] == 0.75
    assert clean_fractions(results, _score_data())["hospital"] == pytest.approx(20 / 30)
    # kept * precision / recall / total = 30 * 0.9 / 0.9 / 40
    assert clean_fractions(results, None) == {"clinic": pytest.approx(0.75)}
    # an entry straight from clues.metrics carries the clean count and calls the total "records"
    from_metrics = {"selection": {"clues": {"bank": {"kept": 12, "records": 40, "clean": 10, "precision": 0.8}}}}
    assert clean_fractions(from_metrics, None) == {"bank": 0.25}


def test_print_summary(tmp_path):
    console = Console(record=True, width=160)
    print_summary(_results(), console)
    text = console.export_text()
    for needle in ("Test loss by condition", "mixed", "oracle", "2.0250", "80.0%", "clinic", "30/40", "0.930"):
        assert needle in text
