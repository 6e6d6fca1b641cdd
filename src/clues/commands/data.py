"""`clues data ...`: validate record files and build the mixed-quality silo benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer
from clues.commands import make_console

from clues.data.records import check_file

app = typer.Typer(help="Validate record files; build benchmark consortia.", no_args_is_help=True)
console = make_console()
err = make_console(stderr=True)


@app.command("check")
def check(files: List[Path] = typer.Argument(..., help="JSONL or JSON record files.")) -> None:
    """Validate files; print every problem as FILE:LINE: FIELD: reason; exit 0 only if all are valid."""
    bad = 0
    for path in files:
        records, problems = check_file(path)
        for problem in problems:
            err.print(str(problem), markup=False, highlight=False)
        if problems:
            bad += 1
            console.print(f"[red]✗[/red] {path}: {len(problems)} problem(s)")
        else:
            console.print(f"[green]✓[/green] {path}: {len(records)} records")
    if bad:
        raise typer.Exit(1)


# Short column headers for the corruption counts of the build summary.
_MIX_HEADERS = {"mismatched_answer": "mism", "incomplete_answer": "cut", "mixed_language": "lang", "random_noise": "noise"}


@app.command("build")
def build(
    scenario: str = typer.Option("mixed", "--scenario", "-s", help="Scenario name (see `clues data scenarios`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for the benchmark."),
    seed: int = typer.Option(0, "--seed", help="Seed of the splits and corruptions; same seed, same bytes."),
    force: bool = typer.Option(False, "--force", help="Replace a previous benchmark in the output folder."),
) -> None:
    """Build a mixed-quality silo benchmark with known pollution from the shipped real data."""
    from rich import box
    from rich.table import Table

    from clues.data.build import build_benchmark

    manifest = build_benchmark(scenario, out, seed=seed, force=force)
    table = Table(
        title=f"scenario {manifest['scenario']}, seed {seed}: {out}",
        caption="n: records; asked/actual: pollution; mism, cut, lang, noise: records per corruption "
        "(mismatched answer, incomplete, other language, random noise)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("silo", no_wrap=True)
    table.add_column("domain", no_wrap=True)
    for column in ("n", "asked", "actual", *(_MIX_HEADERS.get(n, n) for n in manifest["corruptions"])):
        table.add_column(column, justify="right")
    for name, silo in manifest["silos"].items():
        table.add_row(
            name,
            ", ".join(silo["domains"]),
            str(silo["size"]),
            f"{silo['requested_pollution']:.0%}",
            f"{silo['actual_pollution']:.1%}",
            *(str(silo["corruption_mix"][n]) for n in manifest["corruptions"]),
        )
    console.print(table)
    files = manifest["files"]
    console.print(
        f"public sets: validation {files['validation.jsonl']['records']}, anchor {files['anchor.jsonl']['records']}, "
        f"test {files['test.jsonl']['records']} records over {len(manifest['domains'])} domain(s); "
        f"ground truth in {out / 'labels.jsonl'}"
    )


@app.command("scenarios")
def scenarios() -> None:
    """List the benchmark scenarios that `clues data build` knows."""
    from rich import box
    from rich.table import Table

    from clues.data.scenarios import SCENARIOS

    table = Table(title="benchmark scenarios (`clues data build --scenario NAME`)", box=box.SIMPLE_HEAD)
    for column in ("name", "silos", "records", "pollution per silo", "domains"):
        table.add_column(column, no_wrap=column == "name")
    for scenario in SCENARIOS.values():
        table.add_row(
            scenario.name,
            str(len(scenario.silos)),
            str(sum(s.size for s in scenario.silos)),
            " ".join(f"{s.pollution:.0%}" for s in scenario.silos),
            ", ".join(d.name for d in scenario.domains),
        )
    console.print(table)
    for scenario in SCENARIOS.values():
        console.print(f"[bold]{scenario.name}[/bold]: {scenario.description}")
