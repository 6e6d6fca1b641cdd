"""Near-duplicates: records whose words differ from a public record's by at most one word.

A silo record that is a public validation, anchor or test record with its case, spacing or
punctuation changed, or with one word replaced, added or removed, leaks that public record into
training as surely as an exact copy: the test loss, the threshold and the scores all lean on it.
An exact match (same id or same stripped text) is found by :func:`clues.data.records.shared_flags`; this
module finds the rest.

Words are case-folded runs of letters and digits; each CJK character is a word of its own (Chinese
has no spaces, so a run would make a whole sentence one word). Two word sequences are near when
deleting at most one word from each makes them equal (the symmetric-deletion idea): one word
replaced (deleted on both sides), added or removed (deleted on one side), or two neighbours swapped. Each sequence and each of its
one-word deletions is kept as a polynomial hash, computed from prefix and suffix hashes in one pass,
so a record of n words costs O(n), not O(n^2). Records shorter than :data:`MIN_WORDS` are never
near-duplicates: two short answers one word apart are usually different answers.
"""

from __future__ import annotations

import re
import zlib
from typing import Iterable, Sequence

from clues.data.records import Record

MIN_WORDS = 8
_WORDS = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]|[^\W_]+")
_MOD = (1 << 61) - 1
_BASE = 1_000_003


def words(record: Record) -> list[str]:
    """The record's words, instruction, input and answer in order, case-folded."""
    text = "\n".join((record.instruction, record.input, record.output))
    return _WORDS.findall(text.casefold())


def _code(word: str) -> int:
    return zlib.crc32(word.encode("utf-8")) + 1  # stable across processes (str hashes are salted)


def variants(sequence: Sequence[str]) -> set[tuple[int, int]]:
    """``(length, hash)`` of the sequence and of each sequence made by deleting one word from it."""
    codes = [_code(w) for w in sequence]
    n = len(codes)
    prefix = [0] * (n + 1)
    for i, c in enumerate(codes):
        prefix[i + 1] = (prefix[i] * _BASE + c) % _MOD
    suffix, power = [0] * (n + 1), [1] * (n + 1)
    for i in range(n - 1, -1, -1):
        power[n - i] = power[n - i - 1] * _BASE % _MOD
        suffix[i] = (codes[i] * power[n - i - 1] + suffix[i + 1]) % _MOD
    found = {(n, prefix[n])}
    for i in range(n):  # delete word i: the prefix before it, shifted past the suffix after it
        found.add((n - 1, (prefix[i] * power[n - i - 1] + suffix[i + 1]) % _MOD))
    return found


class NearIndex:
    """The public records' sequences and one-word deletions, to test silo records against."""

    def __init__(self, public: Iterable[Record]):
        self.keys: set[tuple[int, int]] = set()
        for record in public:
            sequence = words(record)
            if len(sequence) >= MIN_WORDS:
                self.keys |= variants(sequence)

    def matches(self, record: Record) -> bool:
        sequence = words(record)
        return len(sequence) >= MIN_WORDS and not self.keys.isdisjoint(variants(sequence))


def near_flags(records: Iterable[Record], public: Iterable[Record]) -> list[bool]:
    """Per record: is it within one word of a public record (case, spacing and punctuation ignored)?"""
    index = NearIndex(public)
    return [index.matches(record) for record in records]
