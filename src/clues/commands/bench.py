"""`clues bench`: every selection method on one benchmark, through the same collaborative pipeline.

Each method is one condition of a `clues run`: the silos score their records and the public anchors
with it, the server sets its threshold from its own anchor scores (or, with ``--match-count`` and for
``random``, asks each silo for as many records as CLUES kept there), the silos retrain on what they
kept, and the merged model is evaluated. ``mixed`` and ``oracle`` are the references.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from clues.commands import make_console
from clues.commands.run import _execute, add_sections, benchmark_values, config_values, merge_flags
from clues.errors import CluesError
from clues.out_lock import holding

console = make_console()

# `--scenario pollution` runs these three benchmarks and adds the sweep summary.
SWEEP = "pollution"


def _methods(text: str) -> list[str]:
    from clues.baselines import check_methods
    from clues.methods import METHODS

    methods = list(METHODS) if text.strip() == "all" else [m.strip() for m in text.split(",") if m.strip()]
    check_methods(methods)
    if not methods:
        raise CluesError("--methods: name at least one method")
    return methods


def _run(values: dict, methods: list[str], match_count: bool, flags: dict, source: str, collab: str,
         sections: dict | None = None) -> dict:
    values = dict(values)
    for key, value in flags.items():
        if value is not None:
            values[key] = str(value)
    add_sections(values, sections or {})
    values["conditions"] = ["mixed", *methods, "oracle"]
    values["select"] = {**values.get("select", {}), "match_count": match_count}
    values["_source"] = source
    if not values.get("labels"):
        raise CluesError("clues bench needs labels (known pollution) to measure selection: add labels to the config")
    if collab == "merge":
        return _execute(values)
    return _federated(values)


def _federated(values: dict) -> dict:
    """The same comparison with FedAvg instead of merging (`clues federate`'s defaults, its [federated] table)."""
    from clues.config import FEDERATED_SCORE_DEFAULTS, fed_settings, make_config
    from clues.flower.simulation import simulate
    from clues.report import print_summary

    fed = fed_settings(values.pop("federated", {}) or {}, values.get("_source", "config"))
    values["score"] = {**FEDERATED_SCORE_DEFAULTS, **values.get("score", {})}
    config = make_config(values)
    results = simulate(config, fed, console)
    print_summary(results, console)
    console.print(f"\nresults: {Path(config.out) / 'results.json'}  report: {Path(config.out) / 'report.html'}")
    return results


def bench(
    scenario: Optional[str] = typer.Option(None, "--scenario", help="Shipped scenario (see `clues data scenarios`), or 'pollution' for the 20/50/80% sweep."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="A `clues run` TOML with labels: bench your own consortium."),
    methods: str = typer.Option("all", "--methods", help="Comma-separated: clues, clues+perplexity+tail, clues+perplexity+ifd, loss, perplexity, tail, ifd, datainf, less, rds, random (default all)."),
    collab: str = typer.Option("merge", "--collab", help="merge (TIES merging of the silos' adapters) or federated (FedAvg on Flower's simulation engine)."),
    match_count: bool = typer.Option(False, "--match-count", help="Every method keeps, per silo, as many records as CLUES kept."),
    model: Optional[str] = typer.Option(None, "--model", help="'default', 'smollm2-135m' or a local Hugging Face folder."),
    merge: Optional[str] = typer.Option(None, "--merge", help="ties (default), linear, dare_ties, dare_linear."),
    merge_space: Optional[str] = typer.Option(None, "--merge-space", help="delta (default: the weight changes B@A) or factor (PEFT's, the authors' scripts)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the benchmark build."),
    out: Path = typer.Option(Path("clues-bench"), "--out", help="Output folder. Rerun to resume."),
) -> None:
    """Compare CLUES with mixed, oracle, random, perplexity, IFD, DataInf, LESS and RDS+ on one benchmark."""
    if (scenario is None) == (config_file is None):
        raise CluesError("give exactly one of --scenario NAME and --config FILE")
    if collab not in ("merge", "federated"):
        raise CluesError(f"--collab {collab!r}: choose merge or federated")
    chosen = _methods(methods)
    folder = "run" if collab == "merge" else "federated"
    flags = {"model": model}
    section, also = merge_flags(merge, merge_space)
    sections = {"merge": section}
    started = time.perf_counter()
    if config_file is not None:  # the run's own folder is locked by the run, after its inputs are checked
        values = config_values(config_file, [], {}, {})
        values.setdefault("out", str(out / folder))
        _run(values, chosen, match_count, flags, f"clues bench --config {config_file}{also}", collab, sections)
    else:
        _bench_scenario(out, scenario, seed, folder, chosen, match_count, flags, also, collab, sections)
    console.print(f"bench wall time: {time.perf_counter() - started:.0f} s")


def _bench_scenario(out, scenario, seed, folder, chosen, match_count, flags, also, collab, sections) -> None:
    """Build the shipped benchmark(s) in ``out`` and bench them; ``out`` is held for the whole sweep."""
    from clues.data.scenarios import POLLUTION_SWEEP

    with holding(out):  # one bench per output folder
        if scenario == SWEEP:
            from clues.sweep import write_sweep

            runs = {}
            for share in POLLUTION_SWEEP:
                name = f"pollution-{round(100 * share)}"
                console.rule(f"[bold]{name}[/bold]")
                runs[share] = _run(benchmark_values(out / name, name, seed, folder), chosen, match_count, flags,
                                   f"clues bench --scenario {name}{also}", collab, sections)
            paths = write_sweep(runs, out)
            console.print(f"sweep summary: {paths['markdown']}  {paths['html']}")
        else:
            _run(benchmark_values(out, scenario, seed, folder), chosen, match_count, flags, f"clues bench --scenario {scenario}{also}", collab, sections)
