"""Per-message overhead of a silo's Flower ClientApp process, on the deployment engine's terms.

Flower 1.42's SuperNode runs each message in a fresh ``flwr-clientapp`` process (both isolation
modes: ``subprocess`` and ``process`` alike pull one task and exit), so every message pays for a
Python start, the imports, reading the silo's records and building the model before the silo's
handler runs. This script measures that cost side by side in one run, with the real ClientApp
(``clues.flower.client_app``) answering real messages:

- ``fresh``: one process per message, timed from spawn to exit (what the deployment engine does);
- ``warm``: the same message answered again by a process that already answered one (what a
  ClientApp kept alive between messages would cost).

Messages: ``hello`` (the silo's name and count: almost no work) and ``fit`` (one local AdamW step
on 8 records of the shipped default model). Silo: the ``clinic`` silo of the shipped ``mixed``
benchmark. Prints a table and writes JSON (default ``benchmarks/results/clientapp_overhead.json``).

    python benchmarks/clientapp_overhead.py [--repeats 3] [--threads 1]

Not counted: what Flower adds around the process (pulling the task and the FAB over the SuperNode's
Runtime API, pushing the reply), the same for both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

KINDS = ("hello", "fit")


def _message(kind: str):
    """The server's request of ``kind`` as a Flower message addressed to node 1."""
    from flwr.app import Message
    from flwr.supercore.task_identity import TaskIdentity

    from clues import protocol
    from clues.config import TrainConfig
    from clues.federated_model import initial_adapter
    from clues.flower.records import MESSAGE_TYPES, to_records

    for key, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 1)):  # what a ServerApp process has set
        setattr(TaskIdentity, key, value)
    if kind == "hello":
        request = protocol.Message(protocol.HELLO)
    else:
        config = TrainConfig(model="default", batch_size=8, max_length=128)
        request = protocol.Message(protocol.FIT, {"tag": "fl-mixed", "subset": "all", "round": 1, "steps": 1,
                                                  "lr": 1e-3, "config": config.to_dict()}, initial_adapter(config))
    return Message(to_records(request), dst_node_id=1, message_type=MESSAGE_TYPES[request.kind], group_id="1")


def worker(kind: str, count: int, silo_file: str, workdir: str) -> None:
    """Answer ``count`` identical messages with the deployed ClientApp; print each one's seconds."""
    from flwr.app import Context, RecordDict

    from clues.flower.client_app import app

    context = Context(1, 1, {"silo-file": silo_file, "silo-name": "clinic", "workdir": workdir}, RecordDict(), {})
    message = _message(kind)
    seconds = []
    for _ in range(count):
        start = time.perf_counter()
        reply = app(message, context)
        seconds.append(time.perf_counter() - start)
        assert not reply.has_error(), reply.error
    print(json.dumps(seconds))


def _run(kind: str, count: int, silo_file: Path, workdir: Path, threads: int) -> tuple[float, list[float]]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "FLWR_TELEMETRY_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--worker", kind, "--count", str(count), "--silo-file", str(silo_file),
                           "--workdir", str(workdir)], capture_output=True, text=True, env=env, check=True)
    return time.perf_counter() - start, json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "clientapp_overhead.json")
    parser.add_argument("--work", type=Path, default=Path("/tmp/clues-clientapp-overhead"))
    parser.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--silo-file", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.count, args.silo_file, args.workdir)
        return
    from clues.data.build import build_benchmark

    bench = args.work / "benchmark"
    if not (bench / "manifest.json").exists():
        build_benchmark("mixed", bench, seed=0)
    silo_file = bench / "silos" / "clinic.jsonl"
    rows = {}
    for kind in KINDS:
        fresh = [_run(kind, 1, silo_file, args.work / f"fresh-{kind}-{i}", args.threads)[0] for i in range(args.repeats)]
        _, inside = _run(kind, 1 + args.repeats, silo_file, args.work / f"warm-{kind}", args.threads)
        rows[kind] = {"fresh_s": min(fresh), "warm_s": min(inside[1:]), "first_in_process_s": inside[0]}
        rows[kind]["overhead_s"] = rows[kind]["fresh_s"] - rows[kind]["warm_s"]
    print(f"{'message':8} {'fresh process (s)':>18} {'warm process (s)':>17} {'overhead (s)':>13} {'ratio':>7}")
    for kind, row in rows.items():
        print(f"{kind:8} {row['fresh_s']:18.2f} {row['warm_s']:17.3f} {row['overhead_s']:13.2f} "
              f"{row['fresh_s'] / row['warm_s']:7.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": args.threads, "repeats": args.repeats, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
