"""What the benchmark scripts share: the 95% t-interval over seeds, and the one way a result file is written.

A result file is the JSON object ``{"benchmark", "command", ...}``: the command line that reproduces
it comes first, so every figure a doc quotes can be traced back to how it was made.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

# Two-sided 95% Student t quantiles by degrees of freedom (1.96 beyond).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval (0 for a single value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def command_line(script: str, argv) -> str:
    """``python benchmarks/<script> <arguments>``: the command that reproduces a result."""
    return f"python benchmarks/{script} " + " ".join(argv if argv is not None else sys.argv[1:])


def write_result(path, benchmark: str, script: str, argv, **payload) -> Path:
    """Write ``{"benchmark", "command", **payload}`` as indented JSON to ``path`` (folders made as needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": benchmark, "command": command_line(script, argv), **payload}
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path
