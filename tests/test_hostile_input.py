"""Hostile input through the real CLI, and reproducible outputs.

Bad input of every kind (records, labels and scores files, checkpoints, config values, thresholds)
must end in one ``error: ...`` line naming the file, line or key, exit status 1, no traceback and no
half-written output. Each kind runs at least once as a real ``python -m clues.cli`` process; the
other cases call :func:`clues.cli.main` in this process (same code, no interpreter start-up).

A run repeated with the same seed writes the same bytes, wall times apart in ``timing.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "FLWR_TELEMETRY_ENABLED": "0",
       "PYTHONWARNINGS": "ignore"}

GOOD = [
    {"id": "g1", "instruction": "Define APR.", "output": "Annual percentage rate, the yearly cost of a loan.", "domain": "finance"},
    {"id": "g2", "instruction": "What is a stock?", "output": "A share of ownership in a company.", "domain": "finance"},
    {"id": "g3", "instruction": "Name a symptom of flu.", "output": "Fever.", "domain": "medical"},
    {"id": "g4", "instruction": "What does a cardiologist treat?", "output": "Diseases of the heart.", "domain": "medical"},
]
PUBLIC = [
    {"id": "p1", "instruction": "What is an ETF?", "output": "An exchange-traded fund.", "domain": "finance"},
    {"id": "p2", "instruction": "Define inflation.", "output": "A general rise of prices.", "domain": "finance"},
]


def clues(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    """The real command in its own process: what a user sees, tracebacks included."""
    return subprocess.run([sys.executable, "-m", "clues.cli", *map(str, args)], capture_output=True, text=True,
                          env=env or ENV, cwd=cwd, timeout=600)


def assert_error(code: int, text: str, *needles: str) -> str:
    """Exit 1, no traceback, exactly one ``error:`` line, the last one, holding every needle."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert code == 1, text
    assert "Traceback" not in text, text
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], text
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def files(tmp_path) -> dict[str, Path]:
    """Good silo and public files, and records files that are broken in every way found so far."""
    f = {
        "good": write_jsonl(tmp_path / "good.jsonl", GOOD),
        "public": write_jsonl(tmp_path / "public.jsonl", PUBLIC),
        "deep": tmp_path / "deep.jsonl",
        "deep_json": tmp_path / "deep.json",
        "surrogate": tmp_path / "surrogate.jsonl",
        "surrogate_field": tmp_path / "surrogate_field.jsonl",
    }
    f["deep"].write_text('{"instruction": "x", "output": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    f["deep_json"].write_text("[" * 100_000 + "]" * 100_000 + "\n")
    # JSON escapes can spell half a UTF-16 pair, which no UTF-8 file, tokenizer or hash takes
    f["surrogate"].write_text('{"id": "s1", "instruction": "Say hi", "output": "hi \\ud800 there"}\n')
    f["surrogate_field"].write_text('{"id": "s2", "instruction": "Say hi", "output": "hi", "note": {"k": ["\\udfff"]}}\n')
    return f


# --- records files ------------------------------------------------------------------------------------


def test_data_check_names_deep_nesting_and_lone_surrogates(files):
    done = clues("data", "check", files["deep"], files["deep_json"], files["surrogate"], files["surrogate_field"], files["good"])
    text = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in text, text
    assert f"{files['deep']}:1: -: invalid JSON: nested too deeply" in text
    assert f"{files['deep_json']}:1: -: invalid JSON: nested too deeply" in text
    assert f"{files['surrogate']}:1: output: lone surrogate \\ud800 at character 4" in text
    assert f"{files['surrogate_field']}:1: note: lone surrogate \\udfff" in text
    assert f"{files['good']}: 4 records" in text


def test_train_refuses_a_lone_surrogate_before_writing_anything(files, tmp_path, clues_here):
    code, text = clues_here("train", "--data", files["surrogate"], "--out", tmp_path / "run")
    assert_error(code, text, f"{files['surrogate']}:1: output: lone surrogate")
    assert not (tmp_path / "run").exists()


def test_select_refuses_bad_records(files, tmp_path, clues_here):
    scores = write_jsonl(tmp_path / "scores.jsonl", [{"id": "s1", "score": 1.0}, {"id": "s2", "score": 1.0}])
    for name, needle in (("surrogate", ":1: output: lone surrogate"), ("surrogate_field", ":1: note: lone surrogate"),
                         ("deep", ":1: -: invalid JSON: nested too deeply")):
        code, text = clues_here("select", "--data", files[name], "--scores", scores, "--tau", "0", "--out", tmp_path / "kept.jsonl")
        assert_error(code, text, f"{files[name]}{needle}")
        assert not (tmp_path / "kept.jsonl").exists()


# --- labels and scores files --------------------------------------------------------------------------


BROKEN_ROWS = {  # name: (file content, what the error must say after FILE:LINE)
    "not_json": ('{"id": "g1", "score": 1}\n{"id": "g2", "score": \n', ":2: -: invalid JSON"),
    "not_object": ('{"id": "g1", "score": 1}\n[1, 2]\n', ":2: -: expected a JSON object"),
    "deep": ('{"id": "g1", "score": 1}\n' + "[" * 50_000 + "]" * 50_000 + "\n", ":2: -: invalid JSON: nested too deeply"),
    "bad_utf8": (b'{"id": "g1", "score": 1}\n{"id": "\xff"}\n', ":2: -: invalid UTF-8"),
}


def _write(path: Path, content) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def test_a_broken_scores_file_is_named_and_nothing_is_written(files, tmp_path, clues_here):
    kept = tmp_path / "kept.jsonl"
    cases = {**BROKEN_ROWS, "score_not_a_number": ('{"id": "g1", "score": "high"}\n', ":1: score:"),
             "no_id": ('{"score": 1}\n', ":1: id:"), "missing": (None, ": cannot read a scores file")}
    for name, (content, needle) in cases.items():
        path = tmp_path / f"scores-{name}.jsonl"
        if content is not None:
            _write(path, content)
        code, text = clues_here("select", "--data", files["good"], "--scores", path, "--tau", "0", "--out", kept)
        assert_error(code, text, f"{path}{needle}")
        assert not kept.exists(), name
    # once as a real process
    path = tmp_path / "scores-not_json.jsonl"
    done = clues("select", "--data", files["good"], "--scores", path, "--tau", "0", "--out", kept)
    assert_error(done.returncode, done.stdout + done.stderr, f"{path}:2: -: invalid JSON")
    assert not kept.exists()


def test_a_broken_labels_file_is_named_and_nothing_is_written(files, tmp_path, clues_here):
    scores = write_jsonl(tmp_path / "scores.jsonl", [{"id": r["id"], "score": float(i)} for i, r in enumerate(GOOD)])
    kept = tmp_path / "kept.jsonl"
    cases = {**BROKEN_ROWS, "clean_not_bool": ('{"id": "g1", "clean": "yes"}\n', ":1: clean:")}
    for name, (content, needle) in cases.items():
        path = _write(tmp_path / f"labels-{name}.jsonl", content)
        code, text = clues_here("select", "--data", files["good"], "--scores", scores, "--tau", "1", "--out", kept, "--labels", path)
        assert_error(code, text, f"{path}{needle}")
        assert not kept.exists(), name
    # `clues run` reads the labels before it makes its output folder
    out = tmp_path / "run-out"
    labels = tmp_path / "labels-not_json.jsonl"
    done = clues("run", "--silo", f"bank={files['good']}", "--validation", files["public"], "--anchor", files["public"],
                 "--test", files["public"], "--labels", labels, "--out", out)
    assert_error(done.returncode, done.stdout + done.stderr, f"{labels}:2: -: invalid JSON")
    assert not out.exists()


# --- checkpoints ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """One tiny local model folder for the whole module."""
    from conftest import make_tiny_llama

    folder = tmp_path_factory.mktemp("model") / "tiny-llama"
    make_tiny_llama(tiny_tokenizer).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, model_dir) -> Path:
    """A finished two-step run (a checkpoint per step) of the tiny model on the good records."""
    from clues.data import record_from_dict
    from clues.train import TrainConfig, train

    config = TrainConfig(model=str(model_dir), max_steps=2, save_every=1, batch_size=2, max_length=48)
    run = tmp_path_factory.mktemp("trained") / "run"
    train(config, [record_from_dict(r) for r in GOOD], run)
    return run


@pytest.fixture()
def trained_run(finished_run, model_dir, tmp_path):
    """A copy of the finished run for one test to damage, and the `clues train` options that made it."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    return run, ["--model", model_dir, "--max-steps", "2", "--save-every", "1", "--batch-size", "2", "--max-length", "48"]


def test_a_truncated_checkpoint_says_which_file_and_what_to_do(trained_run, files, tmp_path, clues_here):
    run, options = trained_run
    damaged = run / "checkpoint-2" / "adapter_model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-100])
    done = clues("train", "--data", files["good"], "--out", run, *options)
    assert_error(done.returncode, done.stdout + done.stderr, str(damaged), "truncated",
                 f"delete {run / 'checkpoint-2'}", "rerun")
    code, text = clues_here("score", "--run", run, "--data", files["good"], "--validation", files["public"],
                            "--anchor", files["public"], "--out", tmp_path / "scores")
    assert_error(code, text, str(damaged), "truncated")
    assert not (tmp_path / "scores").exists()


def test_a_corrupt_checkpoint_header_is_named(trained_run, files, tmp_path, clues_here):
    run, _ = trained_run
    damaged = run / "checkpoint-1" / "optimizer.safetensors"
    damaged.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + damaged.read_bytes()[24:])
    code, text = clues_here("score", "--run", run, "--data", files["good"], "--validation", files["public"],
                            "--anchor", files["public"], "--out", tmp_path / "scores")
    assert_error(code, text, str(damaged), "damaged file", f"delete {run / 'checkpoint-1'}")
    assert not (tmp_path / "scores").exists()


# --- config values ----------------------------------------------------------------------------------------


CONFIG_CASES = {  # name: (TOML lines after the paths, what the error must say after the file name)
    "lr_inf": ("[train]\nlr = inf", " [train]: lr must be finite, got inf"),
    "epochs_float": ("[train]\nepochs = 1.5", " [train]: epochs must be an integer"),
    "epochs_bool": ("[train]\nepochs = true", " [train]: epochs must be an integer (or left out), got true"),
    "lora_alpha": ("[train]\nlora_alpha = -8", " [train]: lora_alpha must be > 0, got -8"),
    "max_grad_norm": ("[train]\nmax_grad_norm = -1.0", " [train]: max_grad_norm must be >= 0"),
    "lora_targets": ("[train]\nlora_targets = 3", " [train]: lora_targets must be an array of strings"),
    "eval_batch_size": ("eval_batch_size = 0", ": eval_batch_size must be >= 1, got 0"),
    "answers": ('answers = "yes"', ': answers must be true or false, got "yes"'),
    "drop_overlap": ('drop_overlap = 1', ': drop_overlap must be true or false, got 1'),
    "conditions_string": ('conditions = "clues"', ': conditions must be an array of strings, got "clues"'),
    "w_other": ("[score]\nw_other = nan", " [score]: w_other must be finite, got nan"),
    "policy": ("[select]\npolicy = 3", " [select]: policy must be a string, got 3"),
    "match_count": ("[select]\nmatch_count = 1", " [select]: match_count must be true or false"),
    "density": ("[merge]\ndensity = 0.0", " [merge]: density must be in (0, 1]"),
    "weights": ("[merge.weights]\nbank = nan", " [merge]: weights must be finite"),
    "weights_typo": ("[merge.weights]\nbnak = 2.0", ": [merge.weights] 'bnak' is not a silo of this run (silos: bank)"),
    "section_not_table": ("train = 3", ": train must be a table"),
    "silo_number": ("[silos]\nbank = 3", ": [silos] bank must be a file path"),
    "silo_table": ("[silos.bank]\nfile = 'x.jsonl'", ": [silos] bank must be a file path"),
    "path_number": ("test = 5", ": test must be a file path"),
}


def _config(tmp_path: Path, name: str, body: str, files) -> Path:
    top = f'validation = "{files["public"]}"\nanchor = "{files["public"]}"\n'
    if not body.startswith("test ="):
        top += f'test = "{files["public"]}"\n'
    silos = "" if "[silos" in body else f'[silos]\nbank = "{files["good"]}"\n'
    # top-level keys first, then tables
    text = top + body + "\n" + silos if not body.startswith("[") else top + silos + body + "\n"
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def test_every_bad_config_value_is_named_with_its_file_and_key(files, tmp_path, clues_here):
    out = tmp_path / "out"
    for name, (body, needle) in CONFIG_CASES.items():
        path = _config(tmp_path, name, body, files)
        code, text = clues_here("run", "--config", path, "--out", out)
        assert_error(code, text, f"{path}{needle}")
        assert not out.exists(), name
    # the same checks for `clues federate` (before Flower starts), its [federated] table included
    path = tmp_path / "lr_inf.toml"
    code, text = clues_here("federate", "--config", path, "--out", out)
    assert_error(code, text, f"{path} [train]: lr must be finite")
    for body, needle in (("rounds = 1.5", "rounds must be an integer, got 1.5"), ("score_rounds = 2", "score_rounds must be"),
                         ("round_timeout = -1.0", "round_timeout must be > 0"), ("roundz = 3", "unknown key 'roundz'")):
        path = _config(tmp_path, "federated", "[federated]\n" + body, files)
        code, text = clues_here("federate", "--config", path, "--out", out)
        assert_error(code, text, f"{path} [federated]: {needle}")
    # and once as a real process
    done = clues("run", "--config", tmp_path / "epochs_bool.toml", "--out", out)
    assert_error(done.returncode, done.stdout + done.stderr, f"{tmp_path / 'epochs_bool.toml'} [train]: epochs must be an integer")
    assert not out.exists()


def test_bad_flag_values_are_refused_like_config_values(files, tmp_path, clues_here):
    for flag, value, needle in (("--lr", "inf", "lr must be finite"), ("--lora-alpha", "-1", "lora_alpha must be > 0"),
                                ("--warmup-ratio", "nan", "warmup_ratio must be finite")):
        code, text = clues_here("train", "--data", files["good"], "--out", tmp_path / "run", flag, value)
        assert_error(code, text, needle)
        assert not (tmp_path / "run").exists()
    # a flag's bad value is blamed on the flag, not on the config file it overrides
    path = _config(tmp_path, "fine", "[train]\nlr = 0.001", files)
    for command in ("run", "federate"):
        for flag, value, needle in (("--lr", "-1", "--lr -1.0: lr must be > 0, got -1.0"),
                                    ("--threshold", "bogus", "--threshold bogus: unknown threshold policy 'bogus'")):
            code, text = clues_here(command, "--config", path, "--out", tmp_path / "out", flag, value)
            assert_error(code, text, needle)
            assert str(path) not in text and not (tmp_path / "out").exists()
    federated = (("--rounds", "0", "--rounds 0: rounds must be >= 1, got 0"),
                 ("--score-rounds", "99", "--score-rounds 99: --score-rounds must be rounds between 1 and 10"),
                 ("--fraction-train", "0", "--fraction-train 0.0: fraction_train must be in (0, 1]"))
    for flag, value, needle in federated:
        code, text = clues_here("federate", "--config", path, "--out", tmp_path / "out", flag, value)
        assert_error(code, text, needle)
        assert str(path) not in text and not (tmp_path / "out").exists()
    # a model folder that is not one is refused before any silo trains, by both modes
    for command in ("run", "federate"):
        code, text = clues_here(command, "--config", path, "--out", tmp_path / "out", "--model", tmp_path)
        assert_error(code, text, f"{tmp_path} has no config.json, so it is not a Hugging Face model folder")
        assert not (tmp_path / "out").exists()
    # the demo checks its merge before it builds its benchmark
    code, text = clues_here("demo", "--model", "default", "--merge", "magic", "--out", tmp_path / "demo")
    assert_error(code, text, "--merge/--merge-space: method must be one of")
    assert not (tmp_path / "demo").exists()


# --- thresholds -------------------------------------------------------------------------------------------


def test_a_threshold_that_is_not_finite_is_refused(files, tmp_path, clues_here):
    scores = write_jsonl(tmp_path / "scores.jsonl", [{"id": r["id"], "score": 1.0} for r in GOOD])
    kept = tmp_path / "kept.jsonl"
    done = clues("select", "--data", files["good"], "--scores", scores, "--tau", "nan", "--out", kept)
    assert_error(done.returncode, done.stdout + done.stderr, "--tau must be a finite number, got nan")
    for tau in ("inf", "-inf"):
        code, text = clues_here("select", "--data", files["good"], "--scores", scores, "--tau", tau, "--out", kept)
        assert_error(code, text, f"--tau must be a finite number, got {tau}")
    threshold = tmp_path / "threshold.json"
    threshold.write_text('{"tau": NaN}')
    code, text = clues_here("select", "--data", files["good"], "--scores", scores, "--threshold-file", threshold, "--out", kept)
    assert_error(code, text, f"{threshold}: tau must be a finite number")
    assert not kept.exists()


# --- public sets shared with a silo: a warning that carries counts only --------------------------------------


def test_a_silo_sharing_public_records_is_warned_with_counts_only(files, tmp_path, monkeypatch):
    from rich.console import Console

    from clues import protocol
    from clues.config import make_config
    from clues.server.fleet import open_local_fleet
    from clues.server.merging import MergingServer

    crossed = []
    same_id = {**GOOD[0], "output": "A different answer under the same id."}
    same_text = {**{k: v for k, v in GOOD[1].items() if k != "id"}, "id": "public-copy"}
    validation = write_jsonl(tmp_path / "validation.jsonl", [PUBLIC[0], same_id])
    test = write_jsonl(tmp_path / "test.jsonl", [PUBLIC[1], same_text])
    config = make_config({"silos": {"bank": str(files["good"])}, "validation": str(validation),
                          "anchor": str(files["public"]), "test": str(test), "out": str(tmp_path / "out")})
    console = Console(record=True, width=400)
    fleet = open_local_fleet(config, console, tap=lambda name, direction, blob: crossed.append((direction, blob)))
    counts = MergingServer(config, fleet, console).check_overlap()
    assert counts == {"bank": {"validation": 1, "anchor": 0, "test": 1}}
    said = console.export_text()
    assert "warning: silo 'bank' shares records with public sets (validation 1, test 1 records" in said
    replies = [protocol.Message.from_bytes(blob) for direction, blob in crossed if direction == "silo->server"]
    assert [m.meta["public_overlap"] for m in replies] == [{"validation": 1, "anchor": 0, "test": 1}]
    wire = b"".join(blob for direction, blob in crossed if direction == "silo->server")
    for row in GOOD:  # no id or text of the silo's records in the reply or the warning
        assert row["id"].encode() not in wire and row["id"] not in said
        assert row["output"].encode() not in wire and row["output"] not in said


# --- reproducibility ------------------------------------------------------------------------------------------


def test_the_same_run_twice_writes_the_same_bytes_apart_from_timing(tmp_path, model_dir, clues_here):
    """`clues run` twice into the same folder: every file is byte-identical except timing.json (results.json
    held wall times). PEFT writes target_modules in set order, which changes with each process's string
    hashing: they must come out sorted. The test set shares one record with a silo: a warning, a count only."""
    from conftest import small_consortium

    silos, public, labels = small_consortium(tmp_path / "data", 6, {"validation": 2, "anchor": 2, "test": 2})
    rows = [json.loads(line) for line in Path(silos["clinic"]).read_text().splitlines()]
    with open(public["test"], "a", encoding="utf-8") as handle:
        handle.write(json.dumps({**rows[0], "id": "test-copy"}) + "\n")
    targets = ["v_proj", "q_proj", "o_proj", "k_proj"]
    config = tmp_path / "run.toml"
    config.write_text("\n".join([
        f'model = "{model_dir}"', f'validation = "{public["validation"]}"', f'anchor = "{public["anchor"]}"',
        f'test = "{public["test"]}"', f'labels = "{labels}"', 'conditions = ["mixed", "clues"]', "[silos]",
        *(f'{name} = "{path}"' for name, path in silos.items()),
        "[train]", "epochs = 1", "batch_size = 6", "max_length = 48", f"lora_targets = {json.dumps(targets)}",
        "[score]", "batch_size = 6", ""]))
    out, first = tmp_path / "out", tmp_path / "first"
    said = []
    for _ in range(2):
        if out.exists():
            shutil.move(out, first)
        code, text = clues_here("run", "--config", config, "--out", out)
        assert code == 0, text
        said.append(text)
    for text in said:
        assert "warning: silo 'clinic' shares records with public sets (test 1 records" in text
        assert rows[0]["id"] not in text and rows[0]["output"][:40] not in text
    files_first = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files_first == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    different = [str(p) for p in files_first if (first / p).read_bytes() != (out / p).read_bytes()]
    assert set(different) <= {"timing.json"}, different  # wall times may round alike
    results = json.loads((out / "results.json").read_text())
    timing = json.loads((out / "timing.json").read_text())
    assert "timing" not in results and "scoring_seconds" not in results
    assert timing["timing"]["total"] > 0 and "clues" in timing["scoring_seconds"]
    adapter = json.loads((out / "server" / "adapters" / "mixed" / "clinic" / "adapter_config.json").read_text())
    assert adapter["target_modules"] == sorted(targets)


def _tiny_run(tmp_path: Path, model_dir, *train_lines: str, conditions: str = '["mixed", "clues"]', answers: bool = True) -> Path:
    """A two-silo run config on the tiny model (6 records per silo, one epoch), mixed and clues."""
    from conftest import small_consortium

    silos, public, labels = small_consortium(tmp_path / "data", 6, {"validation": 2, "anchor": 2, "test": 2})
    config = tmp_path / "run.toml"
    config.write_text("\n".join([
        f'model = "{model_dir}"', f'validation = "{public["validation"]}"', f'anchor = "{public["anchor"]}"',
        f'test = "{public["test"]}"', f'labels = "{labels}"', f"conditions = {conditions}",
        f"answers = {'true' if answers else 'false'}", "[silos]", *(f'{name} = "{path}"' for name, path in silos.items()),
        "[train]", "epochs = 1", "batch_size = 6", "max_length = 48", *train_lines, "[score]", "batch_size = 6", ""]))
    return config


def test_a_diverged_run_is_refused_instead_of_keeping_everything(tmp_path, model_dir, clues_here):
    """lr 1e30 saturates the tiny model: its loss stays finite but every gradient is 0, so CLUES would
    score every record 0.0 and keep all of them with exit 0. The silo refuses to rank; the run says so."""
    code, text = clues_here("run", "--config", _tiny_run(tmp_path, model_dir, "lr = 1e30"), "--out", tmp_path / "out")
    assert code == 1 and "Traceback" not in text, text
    assert "cannot rank them: the training run probably diverged" in text, text
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_full_disk_is_one_line_and_the_rerun_finishes(tmp_path, model_dir):
    """Files capped at 64 kB (RLIMIT_FSIZE: a full disk without root): the run stops with one error line
    naming the cause, whichever write hits the cap first (a library's write may carry no path to name);
    once the cap is lifted the same command finishes."""
    import resource
    import signal

    def capped():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the cap fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))

    config, out = _tiny_run(tmp_path, model_dir, conditions='["mixed", "clues"]', answers=False), tmp_path / "out"
    full = subprocess.run([sys.executable, "-m", "clues.cli", "run", "--config", str(config), "--out", str(out)],
                          capture_output=True, text=True, env=ENV, timeout=600, preexec_fn=capped)
    assert_error(full.returncode, full.stdout + full.stderr, "File too large")
    done = clues("run", "--config", config, "--out", out)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((out / "results.json").read_text())["conditions"]["clues"]["mean_test_loss"] > 0


def test_a_full_disk_inside_safetensors_is_named_by_its_cause_and_may_cross_as_fixed_words():
    """safetensors' writer does not raise OSError: its text carries the OS's words, which the CLI and a
    silo's public reason both use (never a path). Produced for real, in a process with capped files."""
    code = ("import resource, signal, torch\n"
            "from safetensors.torch import save_file\n"
            "from clues.errors import os_cause\n"
            "from clues.failures import public_reason\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
            "try:\n"
            "    save_file({'a': torch.zeros(10000)}, '/tmp/clues-capped-test.safetensors')\n"
            "except Exception as exc:\n"
            "    print(type(exc).__name__, '|', os_cause(exc), '|', public_reason(exc))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert done.stdout.strip() == ("SafetensorError | File too large | a file operation failed: File too large "
                                   "(details in the silo's silo-errors.log)"), done.stdout + done.stderr


def test_a_validation_file_without_a_silos_domain_is_refused_before_anything_trains(tmp_path, model_dir, clues_here):
    """With [score] w_other = 0 (the default) a silo scores along its own domain's validation gradient;
    a validation file without that domain used to stop the run at scoring, after every silo trained."""
    from conftest import small_consortium

    from clues.io import read_jsonl, write_jsonl

    silos, public, labels = small_consortium(tmp_path / "data", 6, {"validation": 2, "anchor": 2, "test": 2})
    bank_domains = sorted({r["domain"] for r in read_jsonl(silos["bank"])})
    others = [r for r in read_jsonl(public["validation"]) if r["domain"] not in bank_domains]
    validation = tmp_path / "validation.jsonl"
    write_jsonl(validation, others)
    config = tmp_path / "run.toml"
    config.write_text("\n".join([
        f'model = "{model_dir}"', f'validation = "{validation}"', f'anchor = "{public["anchor"]}"',
        f'test = "{public["test"]}"', f'labels = "{labels}"', 'conditions = ["mixed", "clues"]', "[silos]",
        *(f'{name} = "{path}"' for name, path in silos.items()),
        "[train]", "epochs = 1", "batch_size = 6", "max_length = 48", ""]))
    code, text = clues_here("run", "--config", config, "--out", tmp_path / "out")
    assert_error(code, text, f"silo 'bank': the validation file {validation} has no record of its domain ({', '.join(bank_domains)}",
                 "and [score] w_other is 0")
    assert not list((tmp_path / "out").glob("silos/*/runs/*"))  # refused before the first training step


def test_clues_score_twice_writes_the_same_bytes_apart_from_timing(trained_run, files, tmp_path, clues_here):
    run, _ = trained_run
    for name in ("a", "b"):
        code, text = clues_here("score", "--run", run, "--data", files["good"], "--validation", files["public"],
                                "--anchor", files["public"], "--out", tmp_path / name)
        assert code == 0, text
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert "timing.json" in names and "seconds" not in (tmp_path / "a" / "score_meta.json").read_text()
    # timing.json holds wall times; two runs may round to the same figures, so it may or may not differ.
    differ = [n for n in names if (tmp_path / "a" / n).read_bytes() != (tmp_path / "b" / n).read_bytes()]
    assert set(differ) <= {"timing.json"}, differ


def test_a_one_step_run_trains(files, tmp_path, model_dir, clues_here):
    """Warm-up covers the only step; the scheduler's factor after it divided by zero."""
    code, text = clues_here("train", "--data", files["good"], "--out", tmp_path / "run", "--model", model_dir,
                            "--max-steps", "1", "--max-length", "48")
    assert code == 0, text
    assert (tmp_path / "run" / "checkpoint-1" / "trainer_meta.json").is_file()


# -- operating-system errors: one line naming the path and the cause ----------------------------------------


def test_an_out_that_is_a_file_is_one_error_line_naming_it(tmp_path, clues_here):
    taken = tmp_path / "results-i-keep.txt"
    taken.write_text("mine")
    code, text = clues_here("demo", "--model", "default", "--out", taken)
    assert code == 1 and "Traceback" not in text
    assert text.strip().splitlines() == [f"error: {taken}: File exists"]
    assert taken.read_text() == "mine"


def test_certificates_for_a_century_are_refused_before_anything_is_written(tmp_path, clues_here):
    code, text = clues_here("certs", "--out", tmp_path / "certs", "--days", "100000000")
    assert code == 1 and text.strip() == "error: --days must be between 1 and 3650 (ten years), got 100000000"
    assert not (tmp_path / "certs").exists()


def test_a_folder_another_run_is_writing_is_refused_and_a_crashed_run_leaves_no_lock(tmp_path, clues_here):
    """Two runs never write one --out at once; the lock is the kernel's, so a process that died
    holding it (kill -9) leaves nothing stuck."""
    from clues.out_lock import holding

    out = tmp_path / "busy"
    with holding(out):
        code, text = clues_here("demo", "--model", "default", "--out", out)
    assert code == 1 and "is being written by another clues run" in text and "Traceback" not in text
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written by the refused run
    crashed = subprocess.run([sys.executable, "-c", "import os, sys\nfrom clues.out_lock import holding\n"
                              f"with holding({str(out)!r}):\n    os.kill(os.getpid(), 9)"])
    assert crashed.returncode == -9
    with holding(out):  # free again
        pass
