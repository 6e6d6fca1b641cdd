"""Print the "Methods compared" table of finished `clues bench` runs as Markdown, for docs/results.md.

    python benchmarks/results_tables.py clues-bench/finance/run clues-bench/multilingual/run

Each argument is a run folder holding results.json (or a sweep folder holding pollution-*/run). The
tables are rebuilt from results.json with the report's own code, so they equal the runs' report.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from clues.report import methods_table, table_markdown


def main(folders: list[str]) -> None:
    for folder in map(Path, folders):
        results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        if (folder / "timing.json").is_file():  # wall times (scoring s, stage times) live apart from results
            results.update(json.loads((folder / "timing.json").read_text(encoding="utf-8")))
        table = methods_table(results)
        if table is None:
            print(f"{folder}: not a benchmark run (fewer than two selection methods)", file=sys.stderr)
            continue
        table.title = str(folder)
        print(table_markdown(table))
        # the sum of the stage times, not "total": a resumed run's total counts only its last session
        stages = sum(v for k, v in (results.get("timing") or {}).items() if k != "total")
        print(f"Model `{results['config']['model']}`; stages took {stages / 60:.1f} min in all.\n")


if __name__ == "__main__":
    main(sys.argv[1:])
