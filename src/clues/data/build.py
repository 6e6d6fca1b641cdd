"""Build a mixed-quality silo benchmark from the shipped real data, with known pollution.

``build_benchmark("mixed", "bench/")`` writes::

    bench/silos/<silo>.jsonl   private records of each silo (no trace of which ones are corrupted)
    bench/validation.jsonl     public high-quality data, per domain
    bench/anchor.jsonl         the tiny public anchor set (default 10 per domain)
    bench/test.jsonl           clean held-out records, per domain
    bench/labels.jsonl         {"id", "silo", "clean", "corruption"} for every silo record
    bench/probe.jsonl          {"of", "corruption", "output"}: one corrupted answer per test record
                               and corruption type (the quality probe of clues.evaluate)
    bench/manifest.json        sizes, requested and actual pollution, corruption mix, seeds, sources

Guarantees the tests check: only the ``benchmark`` split of the shipped data is used (never a record
reserved for pretraining the default model); records are deduplicated by id and by (instruction,
input) before splitting, so the public sets and every silo are pairwise disjoint on both; each
silo's pollution is an exact count (within one record of the requested share); a clean silo record
equals its source record except for the ``domain`` label, a corrupted one differs only in ``output``;
the same seed gives byte-identical files (no sets iterated, no time stamps, no absolute paths).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import clues
from clues.data import corruptions, shipped
from clues.data.records import Record, record_to_json
from clues.data.scenarios import SCENARIOS, Scenario, get
from clues.errors import CluesError
from clues.io import write_json, write_jsonl

__all__ = ["SCENARIOS", "Benchmark", "build_benchmark", "make_benchmark"]


def derive_seed(seed: int, *names: str) -> int:
    """A 63-bit seed fixed by the build seed and a purpose (``split``, a silo name...), stable across machines."""
    text = "\x1f".join([str(seed), *names])
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:16], 16) >> 1


def exact_counts(total: int, weights: tuple[tuple[str, float], ...]) -> dict[str, int]:
    """Split ``total`` into integer counts proportional to ``weights`` (largest remainder, ties by order)."""
    norm = sum(w for _, w in weights)
    shares = [(name, total * w / norm) for name, w in weights]
    counts = {name: int(share) for name, share in shares}
    left = total - sum(counts.values())
    by_remainder = sorted(range(len(shares)), key=lambda i: -(shares[i][1] - int(shares[i][1])))
    for i in by_remainder[:left]:
        counts[shares[i][0]] += 1
    return counts


def _size_bytes(record: Record) -> int:
    return len((record.instruction + record.input + record.output).encode("utf-8"))


def _relabel(record: Record, domain: str) -> Record:
    """The record with the benchmark's domain label; the ``domain`` key keeps its place in the object."""
    return replace(record, domain=domain, raw={**record.raw, "domain": domain})


@dataclass
class Benchmark:
    """A built benchmark in memory: the rows of every file, and the manifest describing them."""

    files: dict[str, list[dict]] = field(default_factory=dict)  # relative path -> rows
    manifest: dict = field(default_factory=dict)


def _jsonl_bytes(rows: list[dict]) -> bytes:
    """Exactly what :func:`clues.io.write_jsonl` writes, so the manifest can carry each file's hash."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def _check(scenario: Scenario) -> None:
    names = [d.name for d in scenario.domains]
    for silo in scenario.silos:
        if silo.domain not in names:
            raise CluesError(f"scenario {scenario.name!r}: silo {silo.name!r} has unknown domain {silo.domain!r}")
        if not 0.0 <= silo.pollution <= 1.0:
            raise CluesError(f"scenario {scenario.name!r}: silo {silo.name!r} pollution must be in [0, 1]")
        unknown = [name for name, _ in silo.mix if name not in corruptions.NAMES]
        if unknown:
            raise CluesError(f"scenario {scenario.name!r}: unknown corruption(s) {unknown}")
    if len(set(s.name for s in scenario.silos)) != len(scenario.silos):
        raise CluesError(f"scenario {scenario.name!r}: silo names must be unique")


def _domain_pools(scenario: Scenario) -> dict[str, list[Record]]:
    """Each domain's usable records in file order: benchmark split, language, size cap, first of duplicates.

    Deduplication runs across all domains of the scenario, so two domains cut from one dataset can
    never share a record or a question.
    """
    seen_ids: set[str] = set()
    seen_keys: set[tuple[str, str]] = set()
    pools: dict[str, list[Record]] = {}
    for domain in scenario.domains:
        pool = []
        for record in shipped.load(domain.source):  # the benchmark split only
            if domain.language and record.language != domain.language:
                continue
            if scenario.max_bytes and _size_bytes(record) > scenario.max_bytes:
                continue
            if record.id in seen_ids or record.prompt_key in seen_keys:
                continue
            seen_ids.add(record.id)
            seen_keys.add(record.prompt_key)
            pool.append(_relabel(record, domain.name))
        pools[domain.name] = pool
    return pools


# A borrowed answer must show its language: "B. K 7.0mEq/L" or "да" could pass for any language.
MIN_DONOR_LETTERS = 16


def _foreign_pool(scenario: Scenario, public: list[Record]) -> list[Record]:
    """Answers the mixed-language corruption may borrow: other-language records of ``foreign_sources``.

    Public (validation/anchor/test) records are left out so no test answer is planted in a silo; with
    a size cap, long answers are left out too, so a corrupted record stays about as short as the rest;
    answers with fewer than ``MIN_DONOR_LETTERS`` letters are left out, so the new answer is clearly
    in another language.
    """
    excluded = {r.id for r in public}
    cap = scenario.max_bytes // 2 if scenario.max_bytes else None
    pool = []
    for source in scenario.foreign_sources:
        for record in shipped.load(source):
            if record.id in excluded or not record.language:
                continue
            if cap and len(record.output.encode("utf-8")) > cap:
                continue
            if sum(ch.isalpha() for ch in record.output) < MIN_DONOR_LETTERS:
                continue
            pool.append(record)
    return pool


def _vocabulary(records: list[Record]) -> list[str]:
    """The words (or characters) of the records' answers, first occurrence first: what noise substitutes."""
    return list(dict.fromkeys(unit for r in records for unit, _ in corruptions.units(r.output)[1] if not unit.isspace()))


def _corrupt_silo(silo, records: list[Record], foreign: list[Record], seed: int):
    """Corrupt an exact ``pollution`` share of ``records``; return (records, labels, mix counts)."""
    rng = random.Random(derive_seed(seed, "pollute", silo.name))
    n_bad = round(silo.pollution * len(records))
    plan = [name for name, count in exact_counts(n_bad, silo.mix).items() for _ in range(count)]
    rng.shuffle(plan)
    chosen = dict(zip(sorted(rng.sample(range(len(records)), n_bad)), plan))
    vocabulary = _vocabulary(records)
    done = {name: 0 for name in corruptions.NAMES}
    out, labels = [], []
    for i, record in enumerate(records):
        name = chosen.get(i)
        if name is not None:
            record, name = _corrupt_one(name, record, records, foreign, vocabulary, derive_seed(seed, "corrupt", silo.name, record.id))
            done[name] += 1
        out.append(record)
        labels.append({"id": record.id, "silo": silo.name, "clean": name is None, "corruption": name})
    return out, labels, done


def _corrupt_one(name, record, pool, foreign, vocabulary, seed):
    """Apply ``name``; if it cannot change this record, the next corruption in ``NAMES`` order (recorded as used)."""
    start = corruptions.NAMES.index(name)
    order = corruptions.NAMES[start:] + corruptions.NAMES[:start]
    for candidate in order:
        try:
            return corruptions.corrupt(candidate, record, seed, pool=pool, foreign=foreign, vocabulary=vocabulary), candidate
        except corruptions.CorruptionError:
            continue
    raise CluesError(f"no corruption can change record {record.id!r} of the benchmark")


def _probe_rows(domain, test: list[Record], foreign: list[Record], seed: int) -> list[dict]:
    """A corrupted version of the first ``domain.probe`` test records under every corruption type.

    The evaluation asks whether a model prefers each test record's real answer to these (a model
    trained on answers to other questions learns to accept them): the same four corruptions the
    silos suffer, made from public data only (other test answers of the domain, the foreign pool).
    A corruption that cannot change a record (a one-character answer cannot be cut) is left out.
    """
    probed = test if domain.probe is None else test[: domain.probe]
    vocabulary = _vocabulary(test)
    rows = []
    for record in probed:
        for name in corruptions.NAMES:
            try:
                bad = corruptions.corrupt(name, record, derive_seed(seed, "probe", name, record.id),
                                          pool=test, foreign=foreign, vocabulary=vocabulary)
            except corruptions.CorruptionError:
                continue
            rows.append({"of": record.id, "corruption": name, "output": bad.output})
    return rows


def make_benchmark(scenario_name: str, seed: int = 0) -> Benchmark:
    """Build the benchmark of ``scenario_name`` in memory (see the module docstring for what it holds)."""
    scenario = get(scenario_name)
    _check(scenario)
    pools = _domain_pools(scenario)

    public = {"validation": [], "anchor": [], "test": []}
    silo_sources: dict[str, list[Record]] = {}
    domains_manifest = {}
    for domain in scenario.domains:
        pool = list(pools[domain.name])
        random.Random(derive_seed(seed, "split", domain.name)).shuffle(pool)
        silos = [s for s in scenario.silos if s.domain == domain.name]
        need = domain.validation + domain.anchor + domain.test + sum(s.size for s in silos)
        if need > len(pool):
            raise CluesError(
                f"scenario {scenario.name!r}: domain {domain.name!r} needs {need} records, "
                f"but {shipped.FILES[domain.source]} has only {len(pool)} usable ones"
            )
        cut = 0
        for part in ("validation", "anchor", "test"):
            size = getattr(domain, part)
            public[part].extend(pool[cut : cut + size])
            cut += size
        for silo in silos:
            silo_sources[silo.name] = pool[cut : cut + silo.size]
            cut += silo.size
        domains_manifest[domain.name] = {
            "dataset": shipped.FILES[domain.source],
            "language": domain.language,
            "usable": len(pool),
            "validation": domain.validation,
            "anchor": domain.anchor,
            "test": domain.test,
            "silos": [s.name for s in silos],
        }

    foreign = _foreign_pool(scenario, [r for part in public.values() for r in part])
    bench = Benchmark()
    labels: list[dict] = []
    silos_manifest = {}
    for silo in scenario.silos:
        sources = silo_sources[silo.name]
        records, silo_labels, mix = _corrupt_silo(silo, sources, foreign, seed)
        bench.files[f"silos/{silo.name}.jsonl"] = [record_to_json(r) for r in records]
        labels.extend(silo_labels)
        polluted = sum(mix.values())
        domain = scenario.domain(silo.domain)
        silos_manifest[silo.name] = {
            "file": f"silos/{silo.name}.jsonl",
            "size": len(records),
            "domains": [silo.domain],
            "languages": sorted({r.language for r in sources if r.language}),
            "requested_pollution": silo.pollution,
            "actual_pollution": round(polluted / len(records), 4),
            "polluted": polluted,
            "corruption_mix": mix,
            "requested_mix": {name: weight for name, weight in silo.mix},
            "seeds": {
                "split": derive_seed(seed, "split", silo.domain),
                "pollute": derive_seed(seed, "pollute", silo.name),
                "corrupt": f"per record: derive_seed({seed}, 'corrupt', {silo.name!r}, id)",
            },
            "dataset": shipped.FILES[domain.source],
            "sources": sorted({r.raw.get("source", "") for r in sources} - {""}),
        }
    for part in ("validation", "anchor", "test"):
        bench.files[f"{part}.jsonl"] = [record_to_json(r) for r in public[part]]
    bench.files["labels.jsonl"] = labels
    bench.files["probe.jsonl"] = [
        row for domain in scenario.domains
        for row in _probe_rows(domain, [r for r in public["test"] if r.domain == domain.name], foreign, seed)
    ]

    bench.manifest = {
        "scenario": scenario.name,
        "description": scenario.description,
        "seed": seed,
        "clues_version": clues.__version__,
        "max_bytes": scenario.max_bytes,
        "corruptions": list(corruptions.NAMES),
        "mixed_language_donors": {
            "datasets": [shipped.FILES[s] for s in scenario.foreign_sources],
            "records": len(foreign),
        },
        "domains": domains_manifest,
        "silos": silos_manifest,
        "files": {
            path: {"records": len(rows), "sha256": hashlib.sha256(_jsonl_bytes(rows)).hexdigest()}
            for path, rows in sorted(bench.files.items())
        },
    }
    return bench


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` to ``out``; an existing ``out`` is only removed once ``tmp`` is in place."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{secrets.token_hex(4)}")
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old)


def _looks_like_a_benchmark(folder: Path) -> bool:
    try:
        return "scenario" in json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def _check_out(out: Path, force: bool) -> None:
    """Refuse to overwrite anything but an empty folder, or (with ``force``) a previous benchmark.

    ``--force`` deletes the old folder, so it only ever deletes one that this builder wrote: a typo
    such as ``--out ~ --force`` must not wipe a home folder.
    """
    if not out.exists():
        return
    if out.is_dir() and not any(out.iterdir()):
        return
    if not force:
        raise CluesError(f"{out} exists and is not empty; pass --force to replace a previous benchmark there")
    if not out.is_dir() or not _looks_like_a_benchmark(out):
        raise CluesError(f"{out} is not a benchmark folder (no manifest.json of a previous build); refusing to replace it")


def build_benchmark(scenario_name: str, out_dir: str | os.PathLike, seed: int = 0, force: bool = False) -> dict:
    """Build the benchmark of ``scenario_name`` into ``out_dir``; return its manifest.

    The files are written into a hidden sibling folder that is renamed to ``out_dir`` only at the
    end, so a killed build never leaves half a benchmark. An existing ``out_dir`` must be empty, or
    hold a previous benchmark and ``force`` be given.
    """
    out = Path(out_dir).resolve()
    _check_out(out, force)
    bench = make_benchmark(scenario_name, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.building-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        for path, rows in bench.files.items():
            write_jsonl(tmp / path, rows)
        write_json(tmp / "manifest.json", bench.manifest)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return bench.manifest
