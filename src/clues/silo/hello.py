"""``hello``: the silo's name and record count, so the server can address and weigh it.

With ``public`` sets in the request, how many own records share an id or the content with each
(a count only: which records they are stays in the silo), how many more are near-duplicates of one
(within one word, case and spacing ignored: :mod:`clues.data.near_duplicates`), and the silo's
domain labels, so the server can refuse a validation file without them before anything trains. With
``drop_overlap`` the silo leaves those records out of everything that follows (``Silo.leave_out``)
and says how many.
"""

from __future__ import annotations

from clues import protocol
from clues.data.near_duplicates import near_flags
from clues.data.records import record_from_dict, shared_flags
from clues.protocol import Message


def answer(silo, message: Message) -> Message:
    reply = {"silo": silo.name, "records": len(silo.records), "labelled": silo.labels is not None}
    if message.meta.get("public"):
        records = silo.all_records  # counted on the whole file, whatever an earlier run left out
        sets = {name: [record_from_dict(r, name, n) for n, r in enumerate(rows, 1)]
                for name, rows in message.meta["public"].items()}
        exact = {name: shared_flags(records, rows) for name, rows in sets.items()}
        near = {name: near_flags(records, rows) for name, rows in sets.items()}
        reply["public_overlap"] = {name: sum(flags) for name, flags in exact.items()}
        reply["public_near"] = {name: sum(n and not e for n, e in zip(near[name], exact[name])) for name in sets}
        copies = {r.id for name in sets for r, e, n in zip(records, exact[name], near[name]) if e or n}
        silo.leave_out(copies if message.meta.get("drop_overlap") else set())
        if message.meta.get("drop_overlap"):
            reply["dropped"] = len(copies)
        reply["records"] = len(silo.records)
        reply["domains"] = list(silo.domains)  # public labels (score replies carry them too): checked against validation
    return Message(protocol.INFO, reply)
