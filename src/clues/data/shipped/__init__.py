"""Real public instruction data shipped inside the package (see LICENSES.md beside this file).

The default run needs nothing else: no hub, no network. One rule here decides which shipped records
are reserved for pretraining the default model; the benchmark builder never puts them in a silo,
validation, anchor or test file, so the shipped model has never seen a benchmark record.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

from clues.data.records import Record, load_records

FILES = {
    "fiqa": "fiqa_en.jsonl",
    "medmeadow": "medmeadow_wikidoc_patient_en.jsonl",
    "pubmedqa": "pubmedqa_pqal_en.jsonl",
    "mmed_mcq": "mmed_mcq_6lang.jsonl",
    "casimedicos": "casimedicos_rationale_3lang.jsonl",
}

# FiQA is small (648 records) and the finance scenario needs all of it, so none is reserved.
PRETRAIN_FRACTION = {"fiqa": 0.0, "medmeadow": 0.25, "pubmedqa": 0.25, "mmed_mcq": 0.25, "casimedicos": 0.25}


def path_of(name: str) -> Path:
    """Filesystem path of a shipped dataset by its short name (a key of FILES)."""
    if name not in FILES:
        raise KeyError(f"unknown shipped dataset {name!r}; known: {', '.join(FILES)}")
    return Path(str(resources.files(__name__).joinpath(FILES[name])))


def _bucket(record_id: str) -> float:
    """A uniform number in [0, 1) fixed by the id alone (same on every machine and Python)."""
    return int(hashlib.sha256(record_id.encode("utf-8")).hexdigest()[:8], 16) / 16**8


def _group_of(name: str, record_id: str) -> str:
    """CasiMedicos documents are parallel across languages (`...-<doc>-<lang>`): a translation of a
    pretraining document must not land in the benchmark, so the whole group goes one way."""
    return record_id.rsplit("-", 1)[0] if name == "casimedicos" else record_id


def reserved_for_pretraining(name: str, record_id: str) -> bool:
    """True if this shipped record belongs to the default model's pretraining corpus."""
    return _bucket(_group_of(name, record_id)) < PRETRAIN_FRACTION[name]


def load(name: str, split: str = "benchmark") -> list[Record]:
    """Records of a shipped dataset: ``split`` is ``benchmark`` (usable for silos/validation/test),
    ``pretrain`` (the reserved part) or ``all``."""
    records = load_records(path_of(name))
    if split == "all":
        return records
    if split not in ("benchmark", "pretrain"):
        raise ValueError(f"split must be 'benchmark', 'pretrain' or 'all', not {split!r}")
    want = split == "pretrain"
    return [r for r in records if reserved_for_pretraining(name, r.id) == want]
