"""The four ways the benchmark makes a record low-quality (CLUES paper, section 5 of CLUES.md).

Every corruption is a pure function of ``(record, seed, pool/vocabulary)``: the same arguments give the
same result on any machine, because all randomness comes from a ``random.Random`` seeded with the
given integer. Only ``output`` changes; the prompt, the id and every other field stay as they were,
so a corrupted record is indistinguishable from a clean one except by the quality of its answer.

Each function guarantees what the benchmark's labels rely on: the new output differs from the old
one and is not empty. When that is impossible for the record at hand (a one-character answer cannot
be truncated, a pool without a different answer cannot supply one) it raises :class:`CorruptionError`
instead of returning an unchanged record that the labels would wrongly call corrupted.
"""

from __future__ import annotations

import dataclasses
import random
import re
import string
from typing import Callable, Sequence

from clues.data.records import Record
from clues.errors import CluesError

MISMATCHED = "mismatched_answer"
INCOMPLETE = "incomplete_answer"
MIXED_LANGUAGE = "mixed_language"
RANDOM_NOISE = "random_noise"
NAMES = (MISMATCHED, INCOMPLETE, MIXED_LANGUAGE, RANDOM_NOISE)

# Random draws before giving up. A valid record needs one or two; the limit only stops pathological input.
ATTEMPTS = 64
# Below this many whitespace-separated words a text is cut and perturbed by characters instead
# (short MCQ answers such as "B. 5 mg", and Chinese or Japanese text, which has no spaces).
MIN_WORDS = 4
_WORD = re.compile(r"(\S+)(\s*)")
_FALLBACK_ALPHABET = string.ascii_letters + string.digits


class CorruptionError(CluesError):
    """The corruption cannot change this record (its answer is too short, or the pool has no other answer)."""


def with_output(record: Record, output: str) -> Record:
    """A copy of ``record`` whose output (and written-back ``raw`` object) is ``output``; nothing else changes."""
    return dataclasses.replace(record, output=output, raw={**record.raw, "output": output} if record.raw else {})


def units(text: str) -> tuple[str, list[tuple[str, str]], bool]:
    """Split ``text`` into ``(leading whitespace, [(unit, separator), ...], by_words)``.

    Units are words when the text has at least ``MIN_WORDS`` of them, characters otherwise; the
    separators keep the original whitespace, so joining everything back gives ``text`` again.
    """
    words = [(m.group(1), m.group(2)) for m in _WORD.finditer(text)]
    if len(words) >= MIN_WORDS:
        return text[: len(text) - len(text.lstrip())], words, True
    return "", [(ch, "") for ch in text], False


def _join(lead: str, parts: Sequence[tuple[str, str]]) -> str:
    return lead + "".join(unit + sep for unit, sep in parts)


def _changed(record: Record, make: Callable[[random.Random], str | None], seed: int, what: str) -> Record:
    """Draw candidates from ``make`` until one is a non-empty output different from the record's."""
    rng = random.Random(seed)
    for _ in range(ATTEMPTS):
        output = make(rng)
        if output is not None and output.strip() and output != record.output:
            return with_output(record, output)
    raise CorruptionError(f"{what}: could not change the output of record {record.id!r} ({record.output[:40]!r})")


def mismatched_answer(record: Record, pool: Sequence[Record], seed: int) -> Record:
    """Replace the answer by the answer of another record of ``pool`` (a question paired with a wrong answer).

    Only pool records with a different output qualify, so the result always differs; in a pool with
    many repeated answers (yes/no questions) the other answer is still found.
    """
    donors = [other.output for other in pool if other.output != record.output and other.output.strip()]
    if not donors:
        raise CorruptionError(f"{MISMATCHED}: the pool has no answer different from that of record {record.id!r}")
    return _changed(record, lambda rng: rng.choice(donors), seed, MISMATCHED)


def incomplete_answer(record: Record, seed: int) -> Record:
    """Cut the answer short (keep its first 20-80%) or delete a span from it (20-50% of it), by words or characters.

    Either way at least one unit goes, so the result is strictly shorter than the answer, never empty.
    """
    lead, parts, _ = units(record.output)
    n = len(parts)
    if n < 2:
        raise CorruptionError(f"{INCOMPLETE}: the answer of record {record.id!r} is too short to cut ({record.output!r})")

    def make(rng: random.Random) -> str:
        if rng.random() < 0.5:
            keep = rng.randint(max(1, round(0.2 * n)), max(1, min(n - 1, round(0.8 * n))))
            return _join(lead, parts[:keep]).rstrip()
        width = rng.randint(max(1, round(0.2 * n)), max(1, min(n - 1, round(0.5 * n))))
        start = rng.randint(0, n - width)
        return _join(lead, parts[:start] + parts[start + width :]).strip()

    return _changed(record, make, seed, INCOMPLETE)


def mixed_language(record: Record, pool: Sequence[Record], seed: int) -> Record:
    """Replace the answer by the answer of a ``pool`` record in another language than the record's.

    The pool is real data in other languages (the shipped multilingual medical sets), so the new
    answer is fluent text, just in the wrong language for the question.
    """
    donors = [
        other.output
        for other in pool
        if other.language and other.language != record.language and other.output != record.output and other.output.strip()
    ]
    if not donors:
        raise CorruptionError(
            f"{MIXED_LANGUAGE}: the pool has no answer in a language other than {record.language!r} for record {record.id!r}"
        )
    return _changed(record, lambda rng: rng.choice(donors), seed, MIXED_LANGUAGE)


def random_noise(record: Record, seed: int, vocabulary: Sequence[str] = ()) -> Record:
    """Shuffle the answer's words (or characters), or substitute about a quarter of them.

    Substitutes come from ``vocabulary`` (the builder passes the words of the silo's own answers, so
    the noise looks like the silo's text) and, without one, from letters and digits. A replacement
    unit is never whitespace, so the separators of the answer survive.
    """
    lead, parts, by_words = units(record.output)
    words = [w for w in vocabulary if w and not any(c.isspace() for c in w)]
    if not by_words:  # characters are replaced by characters
        words = [c for w in words for c in w]
    words = words or list(_FALLBACK_ALPHABET)

    def make(rng: random.Random) -> str:
        if len(parts) >= 2 and rng.random() < 0.5:
            shuffled = [unit for unit, _ in parts]
            rng.shuffle(shuffled)
            return _join(lead, [(unit, sep) for unit, (_, sep) in zip(shuffled, parts)])
        positions = [i for i, (unit, _) in enumerate(parts) if not unit.isspace()]
        if not positions:
            return None
        noisy = list(parts)
        for i in rng.sample(positions, max(1, round(0.25 * len(positions)))):
            unit = rng.choice(words)
            if unit == noisy[i][0]:
                unit = rng.choice(_FALLBACK_ALPHABET.replace(unit, "") if len(unit) == 1 else _FALLBACK_ALPHABET)
            noisy[i] = (unit, noisy[i][1])
        return _join(lead, noisy)

    return _changed(record, make, seed, RANDOM_NOISE)


def corrupt(
    name: str,
    record: Record,
    seed: int,
    *,
    pool: Sequence[Record] = (),
    foreign: Sequence[Record] = (),
    vocabulary: Sequence[str] = (),
) -> Record:
    """Apply the corruption called ``name``: ``pool`` feeds mismatched answers, ``foreign`` mixed languages."""
    if name == MISMATCHED:
        return mismatched_answer(record, pool, seed)
    if name == INCOMPLETE:
        return incomplete_answer(record, seed)
    if name == MIXED_LANGUAGE:
        return mixed_language(record, foreign, seed)
    if name == RANDOM_NOISE:
        return random_noise(record, seed, vocabulary)
    raise CluesError(f"unknown corruption {name!r}; known: {', '.join(NAMES)}")
