"""Atomic file output: a reader never sees a half-written file, even if the writer is killed."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, TextIO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[TextIO]:
    """Write to a temporary file beside ``path`` and rename it into place only on success.

    The file gets the permissions a plain ``open`` would give it (mkstemp's private 0600 would make
    shared outputs unreadable for the rest of a group).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write one compact JSON object per line (UTF-8, non-ASCII kept), atomically; return the count."""
    count = 0
    with atomic_open(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def write_json(path: str | os.PathLike, obj) -> None:
    """Write an indented JSON document atomically."""
    with atomic_open(path) as handle:
        json.dump(obj, handle, ensure_ascii=False, indent=2)
        handle.write("\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file the project wrote itself (no validation; use ``clues.data.load_records`` for user data)."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_rows(path: str | os.PathLike, what: str) -> list[tuple[int, dict]]:
    """``(line, object)`` for every row of a JSONL file a user hands back to us (scores, labels).

    Unlike :func:`read_jsonl` it trusts nothing: a missing file, bad UTF-8, bad JSON, JSON nested too
    deeply or a row that is not an object is a :class:`~clues.errors.CluesError` naming ``FILE:LINE``.
    ``what`` says what the file should be ("a scores file"), for the message.
    """
    from clues.errors import CluesError

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CluesError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    rows = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            raise CluesError(f"{path}:{number}: -: invalid UTF-8; expected {what}") from None
        except json.JSONDecodeError as exc:
            raise CluesError(f"{path}:{number}: -: invalid JSON: {exc.msg} (column {exc.colno}); expected {what}") from None
        except RecursionError:
            raise CluesError(f"{path}:{number}: -: invalid JSON: nested too deeply; expected {what}") from None
        if not isinstance(row, dict):
            raise CluesError(f"{path}:{number}: -: expected a JSON object per line ({what})")
        rows.append((number, row))
    return rows
