"""The mixed-quality silo benchmark: reproducible, disjoint, exactly polluted, labelled, self-describing."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clues.commands.data import app  # the `clues data` group, independent of the other command groups
from clues.data import build as build_module
from clues.data import check_file, shipped
from clues.data.build import build_benchmark, make_benchmark
from clues.data.scenarios import SCENARIOS
from clues.errors import CluesError
from clues.io import read_jsonl

PUBLIC = ("validation.jsonl", "anchor.jsonl", "test.jsonl")


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sources() -> dict[str, tuple[str, dict]]:
    """Every shipped record by id: (dataset short name, the record object as shipped)."""
    return {r.id: (name, r.raw) for name in shipped.FILES for r in shipped.load(name, "all")}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "mixed"
    build_benchmark("mixed", out, seed=0)
    return out


@pytest.fixture(scope="module")
def built(mixed) -> dict[str, object]:
    """Every scenario in memory (the mixed one read back from disk, the others from make_benchmark)."""
    benches = {name: make_benchmark(name, seed=0) for name in SCENARIOS if name != "mixed"}
    disk = build_module.Benchmark(
        files={path: read_jsonl(mixed / path) for path in _files(mixed) if path.endswith(".jsonl")},
        manifest=json.loads((mixed / "manifest.json").read_text(encoding="utf-8")),
    )
    return {"mixed": disk, **benches}


def test_writes_exactly_the_promised_files(mixed):
    silos = [f"silos/{name}.jsonl" for name in json.loads((mixed / "manifest.json").read_text())["silos"]]
    assert sorted(_files(mixed)) == sorted([*PUBLIC, "labels.jsonl", "probe.jsonl", "manifest.json", *silos])
    for path in [*PUBLIC, *silos]:
        records, problems = check_file(mixed / path)
        assert not problems and records
    assert not [p for p in mixed.parent.iterdir() if p.name.startswith(".")], "a temporary folder was left behind"


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(mixed, tmp_path):
    build_benchmark("mixed", tmp_path / "again", seed=0)
    assert _files(tmp_path / "again") == _files(mixed)
    build_benchmark("mixed", tmp_path / "other", seed=1)
    other = _files(tmp_path / "other")
    assert sorted(other) == sorted(_files(mixed))
    assert all(other[path] != _files(mixed)[path] for path in ("validation.jsonl", "labels.jsonl", "silos/bank.jsonl"))


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_public_sets_and_silos_are_pairwise_disjoint(built, scenario):
    bench = built[scenario]
    parts = {path: rows for path, rows in bench.files.items() if path not in ("labels.jsonl", "probe.jsonl")}
    seen_id, seen_key = {}, {}
    for path, rows in parts.items():
        for row in rows:
            key = (row.get("instruction", "").strip(), row.get("input", "").strip())
            assert row["id"] not in seen_id, f"{row['id']} in {seen_id.get(row['id'])} and {path}"
            assert key not in seen_key, f"same question in {seen_key.get(key)} and {path}"
            seen_id[row["id"]], seen_key[key] = path, path


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_pollution_is_exact_and_labels_cover_every_silo_record_once(built, scenario):
    bench = built[scenario]
    labels = bench.files["labels.jsonl"]
    manifest = bench.manifest
    assert Counter((l["silo"], l["id"]) for l in labels).most_common(1)[0][1] == 1
    for name, info in manifest["silos"].items():
        rows = bench.files[info["file"]]
        mine = [l for l in labels if l["silo"] == name]
        assert [l["id"] for l in mine] == [r["id"] for r in rows]
        polluted = sum(not l["clean"] for l in mine)
        assert abs(polluted / len(rows) - info["requested_pollution"]) <= 0.02
        assert info["actual_pollution"] == round(polluted / len(rows), 4) and info["size"] == len(rows)
        assert info["corruption_mix"] == {
            c: sum(l["corruption"] == c for l in mine) for c in manifest["corruptions"]
        }
        assert all((l["corruption"] is None) == l["clean"] for l in mine)
    assert len(labels) == sum(len(bench.files[i["file"]]) for i in manifest["silos"].values())


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_clean_records_equal_their_source_and_corrupted_ones_differ_only_in_output(built, sources, scenario):
    bench = built[scenario]
    clean = {(l["silo"], l["id"]): l["clean"] for l in bench.files["labels.jsonl"]}
    for name, info in bench.manifest["silos"].items():
        (domain,) = info["domains"]
        for row in bench.files[info["file"]]:
            _, source = sources[row["id"]]
            expected = {**source, "domain": domain}  # the benchmark's domain label, nothing else added
            assert list(row) == list(expected), "a silo record gained or lost a field"
            if clean[(name, row["id"])]:
                assert row == expected
            else:
                assert row["output"] != source["output"] and row["output"].strip()
                assert {k: v for k, v in row.items() if k != "output"} == {k: v for k, v in expected.items() if k != "output"}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_only_benchmark_split_records_and_public_sets_are_clean_and_sized(built, sources, scenario):
    bench = built[scenario]
    manifest = bench.manifest
    for path, rows in bench.files.items():
        for row in rows:
            record_id = row.get("id", row.get("of"))  # probe rows name the test record they twin
            dataset, source = sources[record_id]
            assert not shipped.reserved_for_pretraining(dataset, record_id), f"{record_id} is reserved for pretraining"
            if path in PUBLIC:
                assert row == {**source, "domain": row["domain"]}
    for path in PUBLIC:
        per_domain = Counter(r["domain"] for r in bench.files[path])
        part = path.removesuffix(".jsonl")
        assert per_domain == {d: info[part] for d, info in manifest["domains"].items()}
    if scenario == "mixed":
        assert all(info["anchor"] == 10 for info in manifest["domains"].values())


def test_manifest_matches_the_files(mixed):
    manifest = json.loads((mixed / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["scenario"] == "mixed" and manifest["seed"] == 0 and manifest["clues_version"]
    for path, info in manifest["files"].items():
        data = (mixed / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == info["sha256"]
        assert data.count(b"\n") == info["records"]
    for name, info in manifest["silos"].items():
        rows = read_jsonl(mixed / info["file"])
        assert info["languages"] == sorted({r["language"] for r in rows})
        assert info["sources"] and set(info["sources"]) >= {r["source"] for r in rows}
        assert set(info["seeds"]) == {"split", "pollute", "corrupt"}


def test_scenarios_have_the_promised_shape():
    finance = SCENARIOS["finance"]
    assert [s.pollution for s in finance.silos] == [0.8, 0.2, 0.1, 0.5]
    assert {d.source for d in finance.domains} == {"fiqa"}
    multilingual = SCENARIOS["multilingual"]
    assert sorted(d.language for d in multilingual.domains) == ["en", "es", "fr", "ja", "ru", "zh"]
    assert len({s.domain for s in multilingual.silos}) == 6
    medical = SCENARIOS["medical"]
    assert len(medical.silos) >= 10 and all(0.2 <= s.pollution <= 0.4 for s in medical.silos)
    mixed = SCENARIOS["mixed"]
    assert len({s.domain for s in mixed.silos}) == len(mixed.silos) >= 3
    assert len({s.pollution for s in mixed.silos}) == len(mixed.silos)
    # The real-model scenarios: at least 4 silos of at least 48 records (the demo), 64 (the benchmark).
    small, english = SCENARIOS["mixed-small"], SCENARIOS["english"]
    assert [(s.domain, s.pollution) for s in small.silos] == [(s.domain, s.pollution) for s in mixed.silos]
    assert all(s.size == 48 for s in small.silos) and all(s.size == 64 for s in english.silos)
    assert len(english.silos) == 4 and {d.source for d in english.domains} <= {"medmeadow", "fiqa", "mmed_mcq"}
    assert all(d.language in (None, "en") for d in english.domains)


def test_refuses_a_non_empty_folder_and_forces_only_over_a_previous_benchmark(tmp_path):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for force in (False, True):  # --force never deletes a folder this builder did not write
        with pytest.raises(CluesError, match="not empty|not a benchmark"):
            build_benchmark("finance", out, force=force)
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    build_benchmark("finance", out)  # an empty folder is fine
    with pytest.raises(CluesError, match="--force"):
        build_benchmark("finance", out, seed=1)
    build_benchmark("finance", out, seed=1, force=True)
    assert json.loads((out / "manifest.json").read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench"]


def test_a_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build_module, "write_json", boom)  # dies after the JSONL files, before the manifest
    with pytest.raises(KeyboardInterrupt):
        build_benchmark("finance", tmp_path / "bench")
    assert list(tmp_path.iterdir()) == []


def test_unknown_scenario_lists_the_known_ones(tmp_path):
    with pytest.raises(CluesError, match="known scenarios: mixed, mixed-small, english, finance"):
        build_benchmark("nope", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_cli_build_and_scenarios(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["build", "--scenario", "finance", "--out", str(tmp_path / "b"), "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "bank-1" in result.output and "80%" in result.output
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["seed"] == 3
    again = runner.invoke(app, ["build", "--scenario", "finance", "--out", str(tmp_path / "b")])
    assert isinstance(again.exception, CluesError)
    listing = runner.invoke(app, ["scenarios"])
    assert listing.exit_code == 0 and all(name in listing.output for name in SCENARIOS)


def test_mixed_language_answers_come_from_another_language(built, sources):
    bench = built["mixed"]
    languages_of = {}
    for _, raw in sources.values():
        languages_of.setdefault(raw["output"], set()).add(raw["language"])
    kinds = {(l["silo"], l["id"]): l["corruption"] for l in bench.files["labels.jsonl"]}
    checked = 0
    for name, info in bench.manifest["silos"].items():
        for row in bench.files[info["file"]]:
            if kinds[(name, row["id"])] == "mixed_language":
                assert languages_of[row["output"]] - {row["language"]}
                checked += 1
    assert checked > 0
