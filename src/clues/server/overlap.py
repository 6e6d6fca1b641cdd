"""The public sets both servers start with: reading them, and checking that no silo holds them.

Validation, anchor and test records should be disjoint from every silo, or scores, the threshold and
the test loss are biased. The server sends the public sets in a ``hello``; each silo counts its
records sharing an id or the content with each set and answers counts only (which records they are
stays in the silo); the server warns, naming the sets and the counts.
"""

from __future__ import annotations

from clues import protocol
from clues.data import load_records, record_to_json
from clues.evaluate import load_probe
from clues.protocol import Message

PUBLIC_SETS = ("validation", "anchor", "test")


def load_public_sets(config) -> tuple[list, list, list, list[dict] | None]:
    """``(validation, anchor, test, probe)`` of a run config, every file checked (the probe against
    the test set; None without one) before the server writes anything."""
    validation, anchor, test = (load_records(getattr(config, name)) for name in PUBLIC_SETS)
    return validation, anchor, test, load_probe(config.probe, test) if config.probe else None


def overlap_request(validation, anchor, test, drop: bool = False) -> Message:
    """A ``hello`` carrying the public sets: each silo answers how many of its records share an id or
    the content with each set, or nearly (counts only cross the boundary); with ``drop`` it also leaves
    those records out of everything that follows."""
    public = dict(zip(PUBLIC_SETS, (validation, anchor, test)))
    meta = {"public": {name: [record_to_json(r) for r in rows] for name, rows in public.items()}}
    return Message(protocol.HELLO, {**meta, "drop_overlap": True} if drop else meta)


def say_dropped(console, dropped: dict[str, int]) -> None:
    """One line per silo that left records out (``--drop-overlap``), counts only."""
    for silo, count in dropped.items():
        if count:
            console.print(f"silo {silo!r} left out {count} records that copy public records (--drop-overlap)",
                          markup=False, highlight=False)


def warn_overlap(console, counts: dict[str, dict[str, int]], near: dict[str, dict[str, int]] | None = None) -> None:
    """One warning line per silo whose records also appear in a public set (counts and set names only):
    exact copies, then near-duplicates (within one word, case and spacing ignored)."""
    for silo, per_set in counts.items():
        shared = ", ".join(f"{name} {per_set[name]}" for name in PUBLIC_SETS if per_set.get(name))
        close = (near or {}).get(silo) or {}
        almost = ", ".join(f"{name} {close[name]}" for name in PUBLIC_SETS if close.get(name))
        if almost:
            console.print(f"[yellow]warning: silo {silo!r} holds near-duplicates of public records ({almost} records "
                          "within one word, case and spacing ignored): public validation, anchor and test data "
                          "should be disjoint from every silo[/yellow]", soft_wrap=True)
        if shared:
            console.print(f"[yellow]warning: silo {silo!r} shares records with public sets ({shared} records, same id "
                          "or same content): public validation, anchor and test data should be disjoint from every "
                          "silo, or scores, the threshold and the test loss are biased[/yellow]", soft_wrap=True)
