"""One run per output folder at a time.

Two runs writing one ``--out`` mix their stages, checkpoints and results without a word. Every
command that writes an output folder holds an exclusive ``flock`` on ``OUT/.lock`` while it runs. The
kernel drops the lock when the process ends, however it ends (kill -9 included), so a crashed run
never leaves the folder locked, and no stale-lock heuristics (process ids, ages) are needed. The file
stays empty, so two runs of one configuration still write the same bytes.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from clues.errors import CluesError

LOCK_NAME = ".lock"


@contextmanager
def holding(out: str | os.PathLike):
    """Hold ``OUT/.lock`` for the block; a folder another live run holds is a one-line error."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    handle = open(out / LOCK_NAME, "a", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CluesError(f"{out} is being written by another clues run (it holds {out / LOCK_NAME}); "
                             "wait for it to finish, stop it, or choose another --out") from None
        yield
    finally:
        handle.close()  # closing drops the lock
