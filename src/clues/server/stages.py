"""Resumable pipeline stages: a finished stage whose inputs and config did not change is skipped.

Each stage ends by writing ``DIR/.stages/<name>.json`` atomically, holding a fingerprint of what
went in (config values and input file hashes) and the stage's small JSON result; its wall time goes
to ``DIR/timing.json`` (``timing``), the one file that differs between two runs with the same seed. A rerun after an
interruption finds the markers of the stages that finished and recomputes only the rest; a changed
input or option changes the fingerprint, so the stage (and, through its result, every later one)
runs again.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

from clues.io import write_json


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (inputs are fingerprinted by content, not by name or mtime)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(key: Any) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode("utf-8")).hexdigest()


class Stages:
    """Runs named stages under ``root``, skipping those already finished with the same key."""

    def __init__(self, root: str | Path, console=None):
        self.root = Path(root)
        self.console = console
        self.timing: dict[str, float] = {}
        self._timing_file = self.root / "timing.json"
        try:  # the wall times of stages finished by an earlier, interrupted run
            self._earlier = json.loads(self._timing_file.read_text(encoding="utf-8")).get("timing", {})
        except (OSError, ValueError, AttributeError):
            self._earlier = {}

    def _marker(self, name: str) -> Path:
        return self.root / ".stages" / f"{name.replace('/', '__')}.json"

    def run(self, name: str, key: Any, work: Callable[[], Any]) -> Any:
        """Return the stored result of stage ``name`` if it finished with ``key``; else run ``work``."""
        marker = self._marker(name)
        print_key = fingerprint(key)
        if marker.exists():
            stored = json.loads(marker.read_text(encoding="utf-8"))
            if stored.get("fingerprint") == print_key:
                self.timing[name] = self._earlier.get(name, 0.0)
                if self.console is not None:
                    self.console.print(f"[dim]· {name}: finished earlier, skipped[/dim]")
                return stored["result"]
        start = time.perf_counter()
        result = work()
        seconds = round(time.perf_counter() - start, 3)
        self.timing[name] = seconds
        write_json(marker, {"fingerprint": print_key, "result": result})
        self._earlier[name] = seconds
        write_json(self._timing_file, {"timing": self._earlier})
        return result
