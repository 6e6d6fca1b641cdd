"""CLI command groups: each module parses its options and calls the library; no logic lives here."""

from __future__ import annotations

import sys

from rich.console import Console


def make_console(stderr: bool = False) -> Console:
    """A rich console; when output goes to a file or pipe, wide enough that tables are not cut to 80 columns."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 160, soft_wrap=stderr)
