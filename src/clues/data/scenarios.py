"""Benchmark scenarios: which shipped data becomes which silo, how polluted, and how big each public set is.

A scenario is plain data (frozen dataclasses), so adding one is adding a literal below; the builder
(:mod:`clues.data.build`) does the rest. A *domain* is the unit of public data: each domain has its
own validation, anchor and test records, cut from one shipped dataset (optionally one language of
it), and its label is written into the ``domain`` field of every record, so domain-weighted
validation (CLUES.md section 2) can tell the domains apart. Every silo draws from exactly one domain.
"""

from __future__ import annotations

from dataclasses import dataclass

from clues.data.corruptions import INCOMPLETE, MISMATCHED, MIXED_LANGUAGE, RANDOM_NOISE
from clues.errors import CluesError

# The paper's four kinds of low-quality data, in equal shares unless a silo says otherwise.
EVEN_MIX = ((MISMATCHED, 1.0), (INCOMPLETE, 1.0), (MIXED_LANGUAGE, 1.0), (RANDOM_NOISE, 1.0))


@dataclass(frozen=True)
class Domain:
    """Public data of one domain: ``validation``, ``anchor`` and ``test`` records cut from ``source``."""

    name: str
    source: str  # a key of clues.data.shipped.FILES
    validation: int
    test: int
    anchor: int = 10
    language: str | None = None  # keep only records in this language
    probe: int | None = None  # test records with corrupted twins in probe.jsonl (None: every test record)


@dataclass(frozen=True)
class Silo:
    """One silo: ``size`` private records of ``domain``, a ``pollution`` share of them corrupted in the ``mix``."""

    name: str
    domain: str
    size: int
    pollution: float
    mix: tuple[tuple[str, float], ...] = EVEN_MIX


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    domains: tuple[Domain, ...]
    silos: tuple[Silo, ...]
    # Drop records whose instruction+input+output exceed this many UTF-8 bytes (None: keep all).
    # Bytes, not characters: byte-level tokenizers spend more tokens on multi-byte scripts.
    max_bytes: int | None = None
    # Shipped datasets whose other-language answers feed the mixed-language corruption
    # (benchmark split only, never a public record of the scenario).
    foreign_sources: tuple[str, ...] = ("mmed_mcq", "casimedicos")

    def domain(self, name: str) -> Domain:
        return next(d for d in self.domains if d.name == name)


MMED_LANGUAGES = ("en", "zh", "ja", "fr", "ru", "es")

MIXED_DOMAINS = (
    Domain("medical", "medmeadow", validation=50, test=50),
    Domain("finance", "fiqa", validation=50, test=50),
    Domain("medical-mcq", "mmed_mcq", validation=50, test=50, language="en"),
    Domain("medical-zh", "mmed_mcq", validation=50, test=50, language="zh"),
)
# The demo's silos: (name, domain, pollution).
MIXED_SILOS = (("clinic", "medical", 0.2), ("bank", "finance", 0.5), ("exam-board", "medical-mcq", 0.7),
               ("hospital-zh", "medical-zh", 0.3))
# The real-model scenarios' public sets: smaller, so a 135M model on 2 CPU cores runs them in minutes.
SMALL_MIXED_DOMAINS = (
    Domain("medical", "medmeadow", validation=16, test=32, probe=16),
    Domain("finance", "fiqa", validation=16, test=32, probe=16),
    Domain("medical-mcq", "mmed_mcq", validation=16, test=32, language="en", probe=16),
    Domain("medical-zh", "mmed_mcq", validation=16, test=32, language="zh", probe=16),
)
ENGLISH_DOMAINS = SMALL_MIXED_DOMAINS[:3]
# The pollution sweep (the paper's Fig. 4): the demo's four domains, every silo polluted alike.
POLLUTION_SWEEP = (0.2, 0.5, 0.8)


def _pollution(share: float) -> Scenario:
    percent = round(100 * share)
    return Scenario(
        name=f"pollution-{percent}",
        description=f"The pollution sweep at {percent}%: the demo's four domains and silos, every silo {percent}% polluted.",
        domains=MIXED_DOMAINS,
        silos=tuple(Silo(name, domain, 150, share) for name, domain in
                    (("clinic", "medical"), ("bank", "finance"), ("exam-board", "medical-mcq"), ("hospital-zh", "medical-zh"))),
        max_bytes=1200,
        foreign_sources=("casimedicos",),
    )


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            name="mixed",
            description="The demo default: four silos of four domains (medical, finance, medical MCQ in English "
            "and in Chinese) at 20/50/70/30% pollution; short records, small enough for a CPU demo.",
            domains=MIXED_DOMAINS,
            silos=tuple(Silo(name, domain, 150, share) for name, domain, share in MIXED_SILOS),
            max_bytes=1200,
            # Only CC BY 4.0 answers are borrowed in the default demo (see shipped/LICENSES.md).
            foreign_sources=("casimedicos",),
        ),
        Scenario(
            name="mixed-small",
            description="The real-model demo (SmolLM2-135M): the `mixed` silos, domains and pollution "
            "(20/50/70/30%) with 48 records per silo and 16/32 validation/test records per domain.",
            domains=SMALL_MIXED_DOMAINS,
            silos=tuple(Silo(name, domain, 48, share) for name, domain, share in MIXED_SILOS),
            max_bytes=1200,
            foreign_sources=("casimedicos",),
        ),
        Scenario(
            name="english",
            description="Four English silos of 64 records (two medical QA, finance, medical MCQ) at 20/50/70/30% "
            "pollution: the real-model benchmark.",
            domains=ENGLISH_DOMAINS,
            silos=(
                Silo("clinic", "medical", 64, 0.2),
                Silo("bank", "finance", 64, 0.5),
                Silo("exam-board", "medical-mcq", 64, 0.7),
                Silo("hospital", "medical", 64, 0.3),
            ),
            max_bytes=1200,
            foreign_sources=("casimedicos",),
        ),
        Scenario(
            name="finance",
            description="The paper's quality-heterogeneity setting: four FiQA silos at 80/20/10/50% pollution.",
            domains=(Domain("finance", "fiqa", validation=60, test=90),),
            silos=tuple(Silo(f"bank-{i}", "finance", 120, p) for i, p in enumerate((0.8, 0.2, 0.1, 0.5), start=1)),
        ),
        Scenario(
            name="multilingual",
            description="Domain heterogeneity: one medical MCQ silo per language (en, zh, ja, fr, ru, es), "
            "each language its own domain, pollution 10-60%.",
            domains=tuple(
                Domain(f"medical-{lang}", "mmed_mcq", validation=50, test=50, language=lang) for lang in MMED_LANGUAGES
            ),
            silos=tuple(
                Silo(f"hospital-{lang}", f"medical-{lang}", 240, p)
                for lang, p in zip(MMED_LANGUAGES, (0.2, 0.5, 0.3, 0.6, 0.4, 0.1))
            ),
            foreign_sources=("mmed_mcq",),
        ),
        Scenario(
            name="medical",
            description="Ten IID silos of English medical QA (Medical Meadow WikiDoc), 20-40% polluted.",
            domains=(Domain("medical", "medmeadow", validation=150, test=200),),
            silos=tuple(
                Silo(f"hospital-{i:02d}", "medical", 180, p)
                for i, p in enumerate((0.2, 0.3, 0.4, 0.25, 0.35, 0.3, 0.2, 0.4, 0.35, 0.25), start=1)
            ),
        ),
        *(_pollution(share) for share in POLLUTION_SWEEP),
    )
}


def get(name: str) -> Scenario:
    """The scenario called ``name``; an unknown name is a user error that lists the known ones."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise CluesError(f"unknown scenario {name!r}; known scenarios: {', '.join(SCENARIOS)}") from None
