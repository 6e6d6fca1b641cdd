"""The `clues` command: a thin layer that parses options and calls the library."""

from __future__ import annotations

import sys

import click
import typer
from rich.console import Console

from clues.commands import bench as bench_commands
from clues.commands import data as data_commands
from clues.commands import federate as federate_commands
from clues.commands import run as run_commands
from clues.commands import score as score_commands
from clues.commands import train as train_commands
from clues.errors import CluesError, os_cause

app = typer.Typer(
    help="CLUES: find the high-quality records in private data silos, train one model on them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data_commands.app, name="data")
app.command("score")(score_commands.score)
app.command("select")(score_commands.select)
app.command("train")(train_commands.train)
app.command("run")(run_commands.run)
app.command("demo")(run_commands.demo)
app.command("federate")(federate_commands.federate)
app.command("certs")(federate_commands.certs)
app.command("bench")(bench_commands.bench)


def main() -> None:
    """Entry point: user errors print as one clear message and exit 1, without a traceback."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own rich bars show progress; tqdm's would interleave
    try:
        code = app(standalone_mode=False)
    except CluesError as exc:
        _fail(f"error: {exc}")
    except OSError as exc:  # a full disk, a read-only folder, a file where a folder should be: say which and why
        where = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
        cause = exc.strerror or str(exc)
        _fail(f"error: {where}: {cause}" if where else _unwritable(cause))
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except Exception as exc:  # safetensors' writer reports a full disk in a text of its own
        cause = os_cause(exc)
        if cause is None:
            raise
        _fail(_unwritable(cause))
    sys.exit(code if isinstance(code, int) else 0)


def _unwritable(cause: str) -> str:
    """A file operation that failed without a path to name (a library's own write, a temporary file)."""
    return f"error: a file could not be written or read: {cause}; finished stages are kept, rerun once the cause is fixed"


def _fail(text: str) -> None:
    Console(stderr=True, soft_wrap=True).print(text, highlight=False, markup=False, style="red")
    sys.exit(1)


if __name__ == "__main__":
    main()
