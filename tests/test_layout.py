"""The house has floors: a module imports only from its own floor or the ones below (docs/architecture.md).

Imports inside functions count too: a lazy import that runs back up a floor is still a loop. None is
allowed: the method names the run config checks live on the ground floor (clues.methods).
"""

from __future__ import annotations

import ast
from pathlib import Path

import clues

FLOORS = [  # from the ground up
    {"__init__", "errors", "names", "methods", "io", "fieldcheck", "histogram", "stats", "out_lock"},  # __init__: the version only
    {"data"},
    {"checkpoint"},
    {"model", "loss"},
    {"select"},
    {"config"},
    {"train", "federated_model"},
    {"scoring"},
    {"metrics", "evaluate", "answers"},
    {"baselines"},
    {"merge"},
    {"protocol", "failures"},
    {"silo"},
    {"verdict"},
    {"report", "plots", "sweep"},
    {"server"},
    {"flower"},
    {"commands", "cli"},
]
FLOOR = {name: level for level, names in enumerate(FLOORS) for name in names}
UPSTAIRS: set[str] = set()  # imports allowed to run up a floor: none


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "clues":
            yield from ([node.module] if node.module != "clues" else [f"clues.{a.name}" for a in node.names])
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "clues")


def test_no_import_runs_up_a_floor():
    root = Path(clues.__file__).parent
    upward, unplaced = [], set()
    for path in sorted(root.rglob("*.py")):
        mine = path.relative_to(root).parts[0].removesuffix(".py")
        for module in _imports(path):
            theirs = module.split(".")[1] if "." in module else "__init__"
            for name in (mine, theirs):
                if name not in FLOOR:
                    unplaced.add(name)
            if mine in FLOOR and theirs in FLOOR and FLOOR[theirs] > FLOOR[mine]:
                upward.append(f"{path.relative_to(root)} imports {module}")
    assert not unplaced, f"place these modules on a floor in FLOORS: {sorted(unplaced)}"
    assert sorted(set(upward) - UPSTAIRS) == []
