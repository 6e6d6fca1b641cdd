"""A silo's failure as it may cross the privacy boundary: the error's kind and a public summary.

An exception raised inside a silo may quote private data: a record id ("1 records have no label
(e.g. 'r17')"), a line of a record file, a value. Its text must not reach the server. So every
transport (the in-process :class:`~clues.server.fleet.LocalFleet`, the Flower ClientApp) turns a
failure into an ``error`` :class:`~clues.protocol.Message` on the silo's side, before anything
crosses: the exception's class name, the request kind and a public reason, that is

- the ``public`` text of a :class:`SiloError` (fixed words, counts, names the server already knows);
- for a :class:`~clues.errors.DataError`, the number of problems; for a diverged training, fixed words;
- for a failed file operation (a full disk), the operating system's words for the cause, not the path;
- for anything else, nothing but the class name.

The full message and traceback go to ``silo-errors.log`` in the silo's own work folder (or, when the
silo could not even be set up, to the SuperNode's own stderr), where the silo's operator reads them.
The reply is an ordinary message, so the boundary log and the boundary test see it like any other.
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

from clues import protocol
from clues.errors import CluesError, DataError, TrainingDiverged, os_cause
from clues.protocol import Message

LOG_NAME = "silo-errors.log"


class SiloError(CluesError):
    """An error raised inside a silo whose ``public`` text may be told to the server.

    ``public`` defaults to the message itself: use the default only for messages made of fixed words,
    counts and names the server already knows; give a separate ``public`` text when the message
    names a record, a file or a value.
    """

    def __init__(self, message: str, public: str | None = None):
        super().__init__(message)
        self.public = message if public is None else public


class SiloFailure(CluesError):
    """Server side: a silo answered a request with an error (its public reason only)."""

    def __init__(self, silo: str, kind: str, reason: str, log: Path | None = None):
        """``log``: where the silo's log lies when the silo runs in this process; named in the message
        the operator reads, never in ``reason`` (which goes into results.json)."""
        where = f" ({log})" if log is not None and LOG_NAME in reason else ""
        super().__init__(f"silo {silo!r} failed to answer {kind!r}: {reason}{where}")
        self.silo, self.kind, self.reason = silo, kind, reason


def public_reason(exc: BaseException) -> str:
    """What the server may learn of ``exc``: never its message unless it was declared public."""
    if isinstance(exc, SiloError):
        return exc.public
    if isinstance(exc, TrainingDiverged):
        return TrainingDiverged.PUBLIC
    cause = os_cause(exc)  # a full disk, a read-only folder: the OS's own words, never the path
    if cause:
        return f"a file operation failed: {cause} (details in the silo's {LOG_NAME})"
    if isinstance(exc, DataError):
        return f"{len(exc.problems)} problems in the silo's data (details in the silo's {LOG_NAME})"
    return f"details in the silo's {LOG_NAME}"


def failure_reply(request_kind: str, exc: BaseException, silo: str | None = None,
                  workdir: str | Path | None = None) -> Message:
    """The ``error`` reply for ``exc``; the full text is logged locally first (work folder, else stderr)."""
    _log_locally(request_kind, exc, workdir)
    meta = {"error": type(exc).__name__, "request": request_kind, "reason": public_reason(exc)}
    if silo is not None:
        meta["silo"] = silo  # the name it reports in hello anyway: lets the server say which silo failed
    return Message(protocol.ERROR, meta)


def describe(reply: Message) -> str:
    """Server side: one line for an ``error`` reply, e.g. ``SiloError: 1 records have no label``."""
    return f"{reply.meta.get('error', 'error')}: {reply.meta.get('reason', '')}".rstrip(": ")


def _log_locally(request_kind: str, exc: BaseException, workdir: str | Path | None) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text = f"{stamp} while answering {request_kind!r}:\n" + "".join(traceback.format_exception(exc)) + "\n"
    if workdir is not None:
        try:
            folder = Path(workdir)
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / LOG_NAME, "a", encoding="utf-8") as handle:
                handle.write(text)
            return
        except OSError:
            pass
    sys.stderr.write(text)
