"""The configuration of a whole `clues run` / `clues federate`: loadable from TOML, overridable by flags.

Every settings dataclass lives here with its checks (:mod:`clues.fieldcheck`: types and ranges):
:class:`TrainConfig` ([train]), :class:`ScoreSettings` ([score]), :class:`SelectSettings`,
:class:`MergeSettings`, :class:`FedSettings` ([federated]) and :class:`RunConfig`, which holds them.
The code they configure imports them from here (``clues.train`` and ``clues.scoring.engine`` name
them too), so this module sits low in the house and imports nothing above the model loaders.

Every option of training, scoring, thresholding and merging is reachable from the file::

    model = "default"
    out = "runs/consortium"
    validation = "validation.jsonl"
    anchor = "anchor.jsonl"
    test = "test.jsonl"
    labels = "labels.jsonl"          # optional: known pollution (benchmarks only)
    probe = "probe.jsonl"            # optional: corrupted twins of test answers (the quality probe)
    conditions = ["mixed", "clues", "oracle"]   # add: "clues+perplexity+tail", "loss", "perplexity", "tail", "ifd", "datainf", "less", "rds", "random"
    equal_steps = true               # retraining conditions take as many optimizer steps as "mixed"
    answers = true                   # every condition answers the test questions; the answers are checked

    [silos]
    clinic = "silos/clinic.jsonl"
    bank = "silos/bank.jsonl"

    [train]                          # TrainConfig fields
    epochs = 3
    lr = 2e-4

    [score]                          # ScoreSettings fields
    precondition = "adam"

    [select]
    policy = "mean"                  # or "quantile:0.25"
    mode = "global"                  # or "per-silo"
    match_count = false              # true: every baseline keeps as many records per silo as CLUES

    [merge]
    method = "ties"                  # ties | linear | dare_ties | dare_linear
    space = "delta"                  # delta (the weight changes B@A) | factor (PEFT's, the authors' scripts)
    density = 0.2

    [federated]                      # clues federate only (FedSettings)
    rounds = 10
    local_steps = 5

Relative paths are resolved against the folder of the TOML file. Unknown keys are errors that name
the file and the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from clues.data.template import DEFAULT_MAX_LENGTH, TEMPLATES
from clues.errors import CluesError
from clues.fieldcheck import AT_LEAST_1, FRACTION, NON_NEGATIVE, POSITIVE, SHARE, check_fields, show
from clues.methods import METHODS
from clues.model.loading import PRESET_TRAIN
from clues.names import check_silo_name
from clues.select import MODES, parse_policy

PRECONDITIONERS = ("adam", "none", "sqrtv")


def check_kind(kind: str) -> None:
    """A preconditioner name (:mod:`clues.scoring.preconditioners`) is one of :data:`PRECONDITIONERS`."""
    if kind not in PRECONDITIONERS:
        raise CluesError(f"unknown preconditioner {kind!r}; choose one of {', '.join(PRECONDITIONERS)}")


# -- training ([train]) -----------------------------------------------------------------------------

DEFAULT_EPOCHS = 3
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Checked with every field's type by TrainConfig.__post_init__ (clues.fieldcheck).
TRAIN_RANGES = {
    **dict.fromkeys(("epochs", "max_steps", "batch_size", "grad_accum", "lora_r", "lora_layers", "save_every", "max_length"), AT_LEAST_1),
    "lr": POSITIVE, "warmup_ratio": FRACTION, "weight_decay": NON_NEGATIVE, "adam_beta1": FRACTION,
    "adam_beta2": FRACTION, "adam_eps": POSITIVE, "max_grad_norm": NON_NEGATIVE, "lora_alpha": POSITIVE,
    "lora_dropout": FRACTION, "seed": NON_NEGATIVE,
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (and must match when a run is resumed).

    ``lr`` defaults to 1e-3, fifty times the paper's 2e-5 (tuned for 7B models). Measured on the
    shipped default model (96 FiQA records, 3 epochs, batch 16, docs/benchmarks.md): held-out loss
    moved by -0.0006 at 2e-5, -0.008 at 2e-4 and -0.063 at 1e-3; a rank-16 adapter on a small model
    needs the larger step to learn anything within a few epochs (and to leave a gradient trace). ``epochs`` and ``max_steps`` are
    exclusive; with neither, ``epochs`` is 3 (the paper trained 3-4 epochs). ``save_every=None``
    saves at the end of each epoch (plus the last step); ``lora_targets=None`` is the architecture's
    q/v default. ``batch_size`` is the micro-batch; a step uses ``batch_size * grad_accum`` records.
    """

    model: str = "default"
    epochs: int | None = None
    max_steps: int | None = None
    lr: float = 1e-3
    batch_size: int = 16
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] | None = None
    lora_layers: int | None = None
    max_length: int = DEFAULT_MAX_LENGTH
    save_every: int | None = None
    seed: int = 0
    template: str = "alpaca"
    dtype: str = "float32"
    device: str = "cpu"
    # Run the frozen layers below the first adapted one once per record and reuse their output
    # (clues.model.frozen_prefix). Exact, so it is not part of what must match on resume.
    cache_frozen: bool = True

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        if self.epochs is not None and self.max_steps is not None:
            raise CluesError("give either epochs or max_steps, not both")
        if self.epochs is None and self.max_steps is None:
            set_("epochs", DEFAULT_EPOCHS)
        if isinstance(self.lora_targets, str):
            set_("lora_targets", tuple(t.strip() for t in self.lora_targets.split(",") if t.strip()) or None)
        elif isinstance(self.lora_targets, (list, tuple)):
            set_("lora_targets", tuple(self.lora_targets) or None)
        check_fields(self, TRAIN_RANGES)
        if self.template not in TEMPLATES:
            raise CluesError(f"unknown template {self.template!r}; choose one of {', '.join(TEMPLATES)}")
        if self.dtype not in DTYPES:
            raise CluesError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.dtype != "float32" and self.device == "cpu":
            raise CluesError(f"dtype {self.dtype} on CPU is slow and imprecise; training on CPU runs in float32")

    @property
    def records_per_step(self) -> int:
        return self.batch_size * self.grad_accum

    def lora_settings(self):
        from clues.model import LoraSettings

        return LoraSettings(r=self.lora_r, alpha=self.lora_alpha, dropout=self.lora_dropout,
                            target_modules=self.lora_targets, layers=self.lora_layers)

    def to_dict(self) -> dict:
        """JSON-ready (tuples become lists): what ``trainer_meta.json`` records as ``config``."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Rebuild a config from ``trainer_meta.json`` (unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# -- scoring ([score]) ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScoreSettings:
    """How to score. ``domains``: the silo's own domain(s) (weight 1 in the validation gradient);
    ``None`` means the domains of the first record set passed to :func:`score_run` (the silo's data).
    Other validation domains weigh ``w_other``."""

    precondition: str = "adam"
    params: str = "all"
    project: int | None = None
    seed: int = 0
    batch_size: int = 8
    w_other: float = 1.0
    domains: tuple[str, ...] | None = None
    device: str = "cpu"
    # Run the layers below the first LoRA layer once per record, for all checkpoints (exact; see
    # clues.model.frozen_prefix).
    cache_frozen: bool = True

    def __post_init__(self):
        check_fields(self, {"batch_size": AT_LEAST_1, "project": AT_LEAST_1, "w_other": NON_NEGATIVE, "seed": NON_NEGATIVE})
        check_kind(self.precondition)


# -- selection, merging, federated rounds, the run ---------------------------------------------------


# Conditions that are not selection methods: the base model alone, all records, the clean records.
# The others are the selection methods of clues.baselines (METHODS).
REFERENCES = ("base", "mixed", "oracle")
MERGE_METHODS = ("ties", "linear", "dare_ties", "dare_linear")
MERGE_SPACES = ("factor", "delta")


@dataclass(frozen=True)
class MergeSettings:
    """How the silos' adapters become one. TIES at density 0.2 is the paper's; it runs on the real weight
    changes (``delta``) by default, not on the LoRA factors as PEFT and the authors' scripts do
    (``factor``): factor-space TIES trims coordinates that mean nothing across adapters. On the default
    model's design seeds delta-space TIES doubled what clean data gains over all records on the quality
    probe (+1.7 ± 0.7 points against +0.8 ± 0.3) and lowered every condition's test loss further; on
    SmolLM2, factor-space TIES left a merged model in which no training data changed a single probe
    preference (docs/results.md, "Where selection can pay")."""

    method: str = "ties"
    space: str = "delta"
    density: float = 0.2
    weights: dict[str, float] | None = None
    delta_rank: int | str | None = None
    seed: int = 0

    def __post_init__(self):
        check_fields(self, {"density": SHARE, "seed": NON_NEGATIVE},
                     {"method": MERGE_METHODS, "space": MERGE_SPACES})
        if self.delta_rank is not None and self.delta_rank != "concat" and not (isinstance(self.delta_rank, int) and self.delta_rank >= 1):
            raise CluesError(f"delta_rank must be a rank >= 1 or \"concat\", got {show(self.delta_rank)}")


@dataclass(frozen=True)
class SelectSettings:
    policy: str = "mean"
    mode: str = "global"
    # Every method other than CLUES keeps, per silo, as many records as CLUES kept (ranking quality
    # without threshold quality). ``random`` always does.
    match_count: bool = False

    def __post_init__(self):
        check_fields(self, choices={"mode": MODES})
        parse_policy(self.policy)


@dataclass(frozen=True)
class FedSettings:
    """Federated mode: rounds per condition, local steps per round, score rounds, sampling, round timeout (seconds)."""

    rounds: int = 10
    local_steps: int = 5
    score_rounds: tuple[int, ...] | None = None
    fraction_train: float = 1.0
    round_timeout: float = 600.0
    seed: int = 0

    def __post_init__(self):
        check_fields(self, {"rounds": AT_LEAST_1, "local_steps": AT_LEAST_1, "fraction_train": SHARE,
                            "round_timeout": POSITIVE, "seed": NON_NEGATIVE})
        if self.score_rounds is not None:
            bad = [r for r in self.score_rounds if not 1 <= r <= self.rounds]
            if bad or not self.score_rounds:
                raise CluesError(f"--score-rounds must be rounds between 1 and {self.rounds}, got {list(self.score_rounds)}")
            object.__setattr__(self, "score_rounds", tuple(sorted(set(self.score_rounds))))

    @property
    def checkpoints(self) -> tuple[int, ...]:
        """The score rounds; by default three spread over the warm-up, the last one included."""
        if self.score_rounds:
            return self.score_rounds
        return tuple(sorted({max(1, math.ceil(self.rounds * k / 3)) for k in (1, 2, 3)}))

    def to_dict(self) -> dict:
        return {**asdict(self), "score_rounds": list(self.checkpoints)}


def fed_settings(values: dict, where: str = "config") -> FedSettings:
    """:class:`FedSettings` from a ``[federated]`` table (TOML lists become tuples); a problem, an unknown
    key included, names the file and the table."""
    return _build(FedSettings, values, f"{where} [federated]")


@dataclass(frozen=True)
class RunConfig:
    silos: dict[str, str]
    validation: str
    anchor: str
    test: str
    labels: str | None = None
    probe: str | None = None
    out: str = "clues-run"
    model: str = "default"
    conditions: tuple[str, ...] = ("mixed", "clues", "oracle")
    eval_batch_size: int = 16
    # Every condition answers the test questions (greedy) and the answers are checked
    # (clues.answers): language, complete, fluent, relevant. Off: losses and probe only.
    answers: bool = True
    # Every retraining condition takes as many optimizer steps as training on all records (the paper
    # compares at equal epochs, which gives a condition on fewer records fewer steps).
    equal_steps: bool = True
    # Each silo leaves out, before anything trains, its records that copy a public validation, anchor
    # or test record exactly or within one word (clues.data.near_duplicates); only counts cross.
    drop_overlap: bool = False
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreSettings = field(default_factory=ScoreSettings)
    select: SelectSettings = field(default_factory=SelectSettings)
    merge: MergeSettings = field(default_factory=MergeSettings)

    def __post_init__(self):
        if not self.silos:
            raise CluesError("no silo given (use --silo NAME=FILE, or a [silos] table in the config)")
        check_fields(self, {"eval_batch_size": AT_LEAST_1})
        for name in self.silos:  # also where silos come from neither flags nor TOML (a job file, the API)
            check_silo_name(name, "silos")
        conditions = REFERENCES + METHODS
        unknown = [c for c in self.conditions if c not in conditions]
        if unknown:
            raise CluesError(f"unknown condition {unknown[0]!r}; choose from {', '.join(conditions)}")
        if "oracle" in self.conditions and not self.labels:
            object.__setattr__(self, "conditions", tuple(c for c in self.conditions if c != "oracle"))
        if ("random" in self.conditions or self.select.match_count) and "clues" not in self.conditions:
            # random (and --match-count) keep as many records per silo as CLUES kept
            object.__setattr__(self, "conditions", (*self.conditions, "clues"))
        if any(c in METHODS for c in self.conditions) and "mixed" not in self.conditions:
            # CLUES, LESS and DataInf score with the checkpoints of the warm-up run on all records:
            # that run is 'mixed', the reference every method is measured against.
            object.__setattr__(self, "conditions", ("mixed", *self.conditions))
        if self.train.model != self.model:
            object.__setattr__(self, "train", replace(self.train, model=self.model))
        for name in self.merge.weights or {}:  # a misspelt silo would silently weigh 1.0
            if name not in self.silos:
                raise CluesError(f"[merge.weights] {name!r} is not a silo of this run (silos: {', '.join(self.silos)})")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["train"] = self.train.to_dict()
        return data


# Scoring defaults of a run, under what the config says. The validation gradient is that of the
# silo's own domain(s) only (w_other = 0; the paper mixes every domain, the authors' own script gives
# the other languages weight 0): mixing domains inverts the ranking of other-language answers in the
# English silos (docs/benchmarks.md, "The real model"). Federated CLUES scores along one global
# direction instead (every domain weighs the same: the global model serves them all); the methods a
# silo scores on its own warm-up run (a fusion's CLUES part, LESS, DataInf) keep these defaults there too.
SCORE_DEFAULTS = {"w_other": 0.0}
# Federated scoring defaults to plain gradients: the global model's Adam moments live in the silos.
FEDERATED_SCORE_DEFAULTS = {"precondition": "none"}
# Threshold defaults of a run, under what the config says: per silo, from the anchors of its own
# domain, at the rank that keeps a clean record with probability >= 90% when anchors and clean
# records are exchangeable (clues.select.conformal_rank). The paper's pooled anchor mean kept about
# half of the clean records on every score tried (docs/results.md, "Choosing the threshold").
SELECT_DEFAULTS = {"policy": "conformal:0.1", "mode": "per-silo"}

_SECTIONS = {"train": TrainConfig, "score": ScoreSettings, "select": SelectSettings, "merge": MergeSettings}
_PATH_KEYS = ("validation", "anchor", "test", "labels", "probe", "out")


def _build(cls, values: dict, where: str):
    """``cls(**values)``; a problem (unknown key, wrong type, out of range) is an error naming ``where`` and the key."""
    if not isinstance(values, dict):
        raise CluesError(f"{where} must be a table, got {show(values)}")
    known = {f.name for f in fields(cls)}
    for key in values:
        if key not in known:
            raise CluesError(f"{where}: unknown key {key!r}; known: {', '.join(sorted(known))}")
    try:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    except (TypeError, CluesError) as exc:
        raise CluesError(f"{where}: {exc}") from exc


def load_toml(path: str | Path) -> dict:
    """Read a run config file into plain values (paths resolved), ready for :func:`make_config`."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CluesError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise CluesError(f"{path}: invalid TOML: {exc}") from None
    base = path.parent

    def resolve(key: str, value):
        if not isinstance(value, str) or not value.strip():
            raise CluesError(f"{path}: {key} must be a file path (a non-empty string), got {show(value)}")
        return str((base / value).resolve())

    for key in _PATH_KEYS:
        if key in data:
            data[key] = resolve(key, data[key])
    if "silos" in data:
        if not isinstance(data["silos"], dict):
            raise CluesError(f"{path}: [silos] must be a table of NAME = \"FILE\"")
        data["silos"] = {check_silo_name(name, f"{path}: [silos]"): resolve(f"[silos] {name}", file)
                         for name, file in data["silos"].items()}
    for section in (*_SECTIONS, "federated"):
        if section in data and not isinstance(data[section], dict):
            raise CluesError(f"{path}: {section} must be a table ([{section}]), got {show(data[section])}")
    data["_source"] = str(path)
    return data


def make_config(values: dict) -> RunConfig:
    """Build a :class:`RunConfig` from plain values (TOML content merged with command-line flags)."""
    where = values.pop("_source", "config")
    values = dict(values)
    flags = values.pop("_flags", {})
    sections = {name: values.pop(name, {}) or {} for name in _SECTIONS}
    for (section, key), flag in flags.items():  # a flag's value checked on its own: the error names the flag
        if isinstance(sections.get(section), dict) and key in sections[section]:
            try:
                _SECTIONS[section](**{key: sections[section][key]})
            except (TypeError, CluesError) as exc:
                raise CluesError(f"{flag} {sections[section][key]}: {exc}") from None
    if isinstance(sections["train"], dict):  # a preset's CPU regime, under what the config says
        sections["train"] = {**PRESET_TRAIN.get(str(values.get("model", "default")), {}), **sections["train"]}
    if isinstance(sections["score"], dict):
        sections["score"] = {**SCORE_DEFAULTS, **sections["score"]}
    if isinstance(sections["select"], dict):
        sections["select"] = {**SELECT_DEFAULTS, **sections["select"]}
    built = {name: _build(cls, sections[name], f"{where} [{name}]") for name, cls in _SECTIONS.items()}
    for required in ("validation", "anchor", "test"):
        if not values.get(required):
            raise CluesError(f"{where}: missing {required!r} (a JSONL/JSON file of public records)")
    known = {f.name for f in fields(RunConfig)} - set(_SECTIONS)
    for key in values:
        if key not in known:
            raise CluesError(f"{where}: unknown key {key!r}; known: {', '.join(sorted(known | set(_SECTIONS)))}")
    if isinstance(values.get("conditions"), list):  # a string stays a string, and is refused as one
        values["conditions"] = tuple(values["conditions"])
    try:
        return RunConfig(**values, **built)
    except CluesError as exc:
        raise CluesError(f"{where}: {exc}") from exc
