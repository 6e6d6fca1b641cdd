"""`clues data ...`: validate record files and build the mixed-quality silo benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer
from rich.console import Console

from clues.data.records import check_file

app = typer.Typer(help="Validate record files; build benchmark consortia.", no_args_is_help=True)
console = Console()
err = Console(stderr=True, soft_wrap=True)


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
