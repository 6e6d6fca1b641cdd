"""Federated CLUES, from the server's side (CLUES.md section 4, federated), for any transport.

1. ``fl-mixed`` = warm-up: FedAvg rounds over the LoRA parameters, every silo on all its records
   (``local_steps`` AdamW steps per round, learning rate from the usual warm-up + linear decay
   schedule over the rounds).
2. At the score rounds (default: three spread over the warm-up) the server computes the validation
   gradient at the current global adapter (public data) and sends it with the adapter; every silo
   adds ``eta * <G(z), g_val>`` to its records' scores, where eta is the mean learning rate of the
   rounds since the previous score round. The server scores the anchors at the same global
   adapters the same way (with ``adam`` every silo scores them with its own moments and the
   server pools their anchor scores), so one tau is truly global.
3. tau from the anchor scores (:mod:`clues.select` policies) goes to every silo; each keeps
   ``S(z) >= tau`` and reports counts.
4. ``fl-clues``: FedAvg rounds from the same initial adapter on the kept records; ``fl-oracle``
   (labelled benchmarks) on the clean records.

Baselines (``clues bench --collab federated``): every other selection method scores inside the silos
(:mod:`clues.baselines`; LESS and DataInf on a local warm-up run each silo trains once), its global tau
comes from its own anchor scores (``random`` and ``--match-count``: CLUES' count per silo), and
``fl-<method>`` runs FedAvg rounds on what each silo kept.

After every round the server evaluates the global adapter on the public test set per domain (the
per-round curves); at the end each condition gets the full evaluation of ``results.json``.

The silos are reached through a :class:`Fleet`: the Flower Grid (simulation and deployment
engines alike, :mod:`clues.collab.flower.server_app`) or :class:`LocalFleet` (in-process channels).
A silo that fails or does not answer is left out of that round, and the round log says so.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Protocol

import torch
from rich.console import Console

from clues import protocol
from clues.baselines import METHODS
from clues.config import RunConfig
from clues.data import load_records, record_to_json
from clues.errors import CluesError
from clues.evaluate import load_probe
from clues.fieldcheck import AT_LEAST_1, NON_NEGATIVE, POSITIVE, SHARE, check_fields
from clues.protocol import Message

CONDITIONS = {"fl-mixed": "all", "fl-clues": "kept", "fl-oracle": "clean"}  # baselines: fl-<method> on "kept:<method>"


def subset_of(condition: str) -> str:
    return CONDITIONS.get(condition, f"kept:{condition.removeprefix('fl-')}")


@dataclass(frozen=True)
class FedSettings:
    """Rounds per condition, local steps per round, score rounds, sampling, round timeout (seconds)."""

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


class Fleet(Protocol):
    """The server's handle of the silos, whatever carries the messages."""

    def silos(self) -> list[str]: ...

    def exchange(self, requests: Mapping[str, Message], round: int | None = None) -> dict[str, Message]:
        """Send each silo its request; return the replies that came back (failures are logged, left out)."""


class LocalFleet:
    """In-process silos behind :class:`~clues.channel.LocalChannel` (serialized bytes, boundary log)."""

    def __init__(self, channels: Mapping, console: Console | None = None):
        self.channels = dict(channels)
        self.console = console or Console(quiet=True)
        self.failures: list[dict] = []

    def silos(self) -> list[str]:
        return list(self.channels)

    def exchange(self, requests, round=None):
        replies = {}
        for name, message in requests.items():
            try:
                replies[name] = self.channels[name].request(message, round)
            except Exception as exc:  # a failing silo must not stop the consortium
                from clues.failures import SiloFailure

                reason = exc.reason if isinstance(exc, SiloFailure) else str(exc)  # a silo's: public terms only
                self.failures.append({"round": round, "silo": name, "kind": message.kind, "reason": reason})
                self.console.print(f"silo {name} failed in round {round} ({message.kind}): {reason}", style="yellow",
                                   markup=False, highlight=False)
        return replies


def fedavg(replies: Mapping[str, Message]) -> dict[str, torch.Tensor]:
    """FedAvg of the replied adapters, weighted by each silo's record count, with Flower's aggregation."""
    from flwr.app import ArrayRecord, MetricRecord, RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    contents = [
        RecordDict({"arrays": ArrayRecord(m.tensors), "metrics": MetricRecord({"num-examples": int(m.meta["num_examples"])})})
        for m in replies.values()
    ]
    return {k: v.float() for k, v in aggregate_arrayrecords(contents, "num-examples").to_torch_state_dict().items()}


class FederatedServer:
    """Runs the federated conditions over a :class:`Fleet`; holds only public data and what silos send."""

    def __init__(self, config: RunConfig, fed: FedSettings, fleet: Fleet, console: Console | None = None):
        self.config, self.fed, self.fleet = config, fed, fleet
        self.console = console or Console()
        self.out = Path(config.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.validation = load_records(config.validation)
        self.anchor = load_records(config.anchor)
        self.test = load_records(config.test)
        self.probe = load_probe(config.probe, self.test) if config.probe else None
        self.round_log: list[dict] = []
        self.timing: dict[str, float] = {}
        self._local_warmup = False
        self.scoring_seconds: dict[str, float] = {}

    # -- pieces ---------------------------------------------------------------------------------------
    def _model(self):
        from clues.federated_model import lora_model

        return lora_model(self.config.train)

    def _lr(self, round_: int) -> float:
        from clues.train import lr_factor, warmup_steps

        total = self.fed.rounds
        return self.config.train.lr * lr_factor(round_ - 1, total, warmup_steps(total, self.config.train.warmup_ratio))

    def _sample(self, condition: str, round_: int) -> list[str]:
        silos = self.fleet.silos()
        count = max(1, math.ceil(self.fed.fraction_train * len(silos)))
        if count >= len(silos):
            return silos
        return sorted(random.Random(f"{self.fed.seed}-{condition}-{round_}").sample(silos, count))

    def _log_round(self, condition: str, round_: int, kind: str, asked: list[str], replies: Mapping[str, Message]) -> None:
        missing = [s for s in asked if s not in replies]
        self.round_log.append({"condition": condition, "round": round_, "kind": kind, "asked": asked,
                               "answered": sorted(replies), "missing": missing})
        if missing:
            self.console.print(f"[yellow]{condition} round {round_} ({kind}): no answer from {', '.join(missing)}; "
                               f"the round completes with {len(replies)} of {len(asked)} silos[/yellow]")

    def evaluate_round(self, adapter: dict) -> dict:
        """Per-domain test loss of the global adapter (the per-round curve)."""
        from clues.evaluate import macro_mean, per_domain_loss
        from clues.federated_model import load_adapter_state

        model, tokenizer = self._model()
        load_adapter_state(model, adapter)
        train = self.config.train
        losses = per_domain_loss(model, tokenizer, self.test, train.max_length, self.config.eval_batch_size, train.template)
        return {"test_loss": losses, "mean_test_loss": macro_mean(losses)}

    def evaluate_final(self, adapter: dict) -> dict:
        from clues.evaluate import evaluate_condition
        from clues.federated_model import load_adapter_state

        model, tokenizer = self._model()
        load_adapter_state(model, adapter)
        train = self.config.train
        return evaluate_condition(model, tokenizer, self.test, train.max_length, self.config.eval_batch_size, train.template,
                                  probe=self.probe)

    # -- scoring ----------------------------------------------------------------------------------------
    def score_checkpoint(self, round_: int, adapter: dict, eta: float) -> dict[str, list[float]]:
        """Validation direction at the global adapter -> every silo scores its records; anchors scored alike.

        Returns ``{"server" or silo: anchor scores at this checkpoint}``.
        """
        from clues.federated_model import load_adapter_state
        from clues.scoring.engine import Scorer, compact_encodings, validation_weights
        from clues.scoring.preconditioners import needs_moments
        from clues.silo_federated import direction_from_tensors, direction_tensors

        settings = self.config.score
        train = self.config.train
        model, tokenizer = self._model()
        load_adapter_state(model, adapter)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        scorer = Scorer.for_model(model, pad_id, settings.params, settings.batch_size)
        # One global direction: every validation domain weighs the same (the consortium's target).
        weights = validation_weights(self.validation, (), 1.0)
        flat = scorer.validation_gradient(compact_encodings(self.validation, tokenizer, train.max_length, train.template), weights)
        wire = direction_tensors(scorer, flat)
        silo_anchors = needs_moments(settings.precondition)
        meta = {"round": round_, "checkpoint": f"round-{round_}", "eta": eta, "config": train.to_dict(),
                "settings": {k: v for k, v in asdict(settings).items() if k in ("precondition", "params", "batch_size")},
                "moments_of": "fl-mixed"}
        if silo_anchors:
            meta["anchor"] = [record_to_json(r) for r in self.anchor]
        silos = self.fleet.silos()
        replies = self.fleet.exchange({s: Message(protocol.FED_SCORE, meta, {**adapter, **wire}) for s in silos}, round_)
        self._log_round("fl-mixed", round_, protocol.FED_SCORE, silos, replies)
        self._last_scores = {name: reply.meta for name, reply in replies.items()}
        if silo_anchors:
            return {name: reply.meta["anchor_scores"] for name, reply in replies.items() if "anchor_scores" in reply.meta}
        direction = direction_from_tensors(scorer, wire)  # the very (float32) direction the silos received
        anchors = compact_encodings(self.anchor, tokenizer, train.max_length, train.template)
        return {"server": (eta * scorer.score(anchors, direction, "none")).tolist()}

    def threshold(self, anchor_columns: list[dict[str, list[float]]]) -> float:
        """tau from the anchors' summed scores (summed over checkpoints, pooled over silos when they scored them)."""
        from clues.select import threshold

        pooled: dict[str, list[float]] = {}
        for column in anchor_columns:
            for who, scores in column.items():
                pooled[who] = [a + b for a, b in zip(pooled[who], scores)] if who in pooled else list(scores)
        complete = [who for who in pooled if all(who in column for column in anchor_columns)]
        if not complete:
            raise CluesError("no anchor scores from any score round: cannot set the threshold")
        return threshold([s for who in complete for s in pooled[who]], self.config.select.policy)

    # -- one condition ------------------------------------------------------------------------------------
    def rounds(self, condition: str, initial: dict, score: bool = False) -> tuple[dict, list[dict], list[dict]]:
        """FedAvg rounds of ``condition``; returns (final adapter, per-round curve, anchor columns)."""
        adapter, curve, anchors, lrs = initial, [], [], []
        checkpoints = set(self.fed.checkpoints) if score else set()
        train = self.config.train.to_dict()
        for round_ in range(1, self.fed.rounds + 1):
            lr = self._lr(round_)
            asked = self._sample(condition, round_)
            meta = {"tag": condition, "subset": subset_of(condition), "round": round_, "steps": self.fed.local_steps,
                    "lr": lr, "config": train}
            replies = self.fleet.exchange({s: Message(protocol.FIT, meta, adapter) for s in asked}, round_)
            self._log_round(condition, round_, protocol.FIT, asked, replies)
            usable = {n: m for n, m in replies.items() if m.tensors and m.meta.get("num_examples", 0) > 0}
            if usable:
                adapter = fedavg(usable)
            else:
                self.console.print(f"[yellow]{condition} round {round_}: no adapter came back; the global model is unchanged[/yellow]")
            lrs.append(lr)
            if round_ in checkpoints:
                anchors.append(self.score_checkpoint(round_, adapter, sum(lrs) / len(lrs)))
                lrs = []
            point = {"round": round_, **self.evaluate_round(adapter),
                     "train_loss": _mean([m.meta.get("train_loss") for m in usable.values()])}
            curve.append(point)
            self.console.print(f"{condition} round {round_}/{self.fed.rounds}: {len(usable)}/{len(asked)} silos, "
                               f"test loss {point['mean_test_loss']:.4f}")
        return adapter, curve, anchors

    def select(self, tau: float | None, method: str = "clues", counts: Mapping[str, int] | None = None) -> dict:
        """Every silo keeps ``score >= tau`` of ``method``'s scores, or (``counts``) its ``counts[silo]`` best records."""
        silos = self.fleet.silos()
        requests = {s: Message(protocol.SELECT, {"method": method, **({"count": counts[s]} if counts else {"tau": tau})})
                    for s in silos}
        replies = self.fleet.exchange(requests, None)
        self._log_round(f"fl-{method}", 0, protocol.SELECT, silos, replies)
        return {name: {**reply.meta, "auroc": reply.meta.get("auroc"), "tau": reply.meta.get("tau")} for name, reply in replies.items()}

    # -- baselines ------------------------------------------------------------------------------------------
    def score_method(self, method: str) -> dict[str, dict]:
        """A baseline scored inside every silo (clues.baselines), anchors included; replies by silo.

        LESS and DataInf score with a local warm-up run: each silo first fine-tunes on all its records,
        as in merging mode (their gradients need optimizer checkpoints of the silo's own data).
        """
        from clues.baselines import NEEDS_WARMUP

        silos = self.fleet.silos()
        train = self.config.train.to_dict()
        if method in NEEDS_WARMUP and not self._local_warmup:
            request = Message(protocol.TRAIN, {"tag": "mixed", "subset": "all", "config": train, "return_adapter": False})
            replies = self.fleet.exchange({s: request for s in silos}, None)
            self._log_round("local-warmup", 0, protocol.TRAIN, silos, replies)
            self._local_warmup = True
        settings = json.loads(json.dumps(asdict(self.config.score), default=list))
        meta = {"run": "mixed", "method": method, "settings": settings, "config": train,
                "validation": [record_to_json(r) for r in self.validation], "anchor": [record_to_json(r) for r in self.anchor]}
        replies = self.fleet.exchange({s: Message(protocol.SCORE, meta) for s in silos}, None)
        self._log_round(f"fl-{method}", 0, protocol.SCORE, silos, replies)
        return {name: reply.meta for name, reply in replies.items()}

    def baseline(self, method: str, clues_selection: Mapping[str, dict], initial: dict) -> tuple[dict, dict, dict, list]:
        """Score, select and train ``fl-<method>``: ``(scores, selection, final adapter, curve)``.

        tau is global (mean of the method's anchor scores pooled over silos); ``random`` and
        ``--match-count`` keep, per silo, as many records as federated CLUES kept there.
        """
        from clues.select import threshold

        started = time.perf_counter()
        scores = self.score_method(method)
        self.scoring_seconds[f"fl-{method}"] = round(time.perf_counter() - started, 3)
        if method == "random" or self.config.select.match_count:
            counts = {s: clues_selection[s]["kept"] for s in self.fleet.silos() if s in clues_selection}
            selection = self.select(None, method, counts)
        else:
            tau = threshold([a for reply in scores.values() for a in reply["anchor_scores"]], self.config.select.policy)
            selection = self.select(tau, method)
        final, curve, _ = self.rounds(f"fl-{method}", initial)
        return scores, selection, final, curve

    def _save_adapter(self, condition: str, adapter: dict) -> None:
        from safetensors.torch import save_file

        from clues.model import base_model_id

        model, _ = self._model()
        folder = self.out / "server" / "adapters" / condition
        folder.mkdir(parents=True, exist_ok=True)
        model.peft_config["default"].save_pretrained(str(folder))  # adapter_config.json
        _point_config_at_base(folder, base_model_id(self.config.model))
        save_file(adapter, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})

    # -- the whole run ------------------------------------------------------------------------------------
    def run(self) -> dict:
        from clues.evaluate import add_oracle_gain
        from clues.federated_model import initial_adapter

        from clues.pipeline import overlap_request, warn_overlap

        started = time.perf_counter()
        request = overlap_request(self.validation, self.anchor, self.test)
        replies = self.fleet.exchange({s: request for s in self.fleet.silos()}, None)
        warn_overlap(self.console, {n: r.meta.get("public_overlap", {}) for n, r in replies.items()})
        wanted = [c for c in ("mixed", "clues", "oracle") if c in self.config.conditions]
        initial = initial_adapter(self.config.train)
        conditions, curves, selection = {}, {}, {}
        tau = None

        def timed(name, work):
            t0 = time.perf_counter()
            value = work()
            self.timing[name] = round(time.perf_counter() - t0, 3)
            return value

        final, curves["fl-mixed"], anchors = timed("fl-mixed", lambda: self.rounds("fl-mixed", initial, score="clues" in wanted))
        adapters = {"fl-mixed": final}
        if "clues" in wanted:
            tau = self.threshold(anchors)
            self.console.print(f"tau = {tau:.6g} (from the anchors at score rounds {list(self.fed.checkpoints)})")
            selection = {"fl-clues": timed("select", lambda: self.select(tau))}
            adapters["fl-clues"], curves["fl-clues"], _ = timed("fl-clues", lambda: self.rounds("fl-clues", initial))
        baselines = {}
        for method in (m for m in METHODS if m != "clues" and m in self.config.conditions):
            name = f"fl-{method}"
            started_method = time.perf_counter()
            baselines[name], selection[name], adapters[name], curves[name] = self.baseline(method, selection.get("fl-clues", {}), initial)
            self.timing[name] = round(time.perf_counter() - started_method, 3)
        if "oracle" in wanted and self.config.labels:
            adapters["fl-oracle"], curves["fl-oracle"], _ = timed("fl-oracle", lambda: self.rounds("fl-oracle", initial))
        for condition, adapter in adapters.items():
            self._save_adapter(condition, adapter)
            conditions[condition] = timed(f"evaluate-{condition}", lambda adapter=adapter: self.evaluate_final(adapter))
        add_oracle_gain(conditions, mixed="fl-mixed", oracle="fl-oracle")
        scores = getattr(self, "_last_scores", {})
        results = {
            "conditions": conditions,
            "selection": selection,
            "scores": {method: {n: {k: s[k] for k in ("summary", "histogram", "checkpoints", "auroc", "roc") if k in s}
                                for n, s in per_silo.items()}
                       for method, per_silo in {**({"fl-clues": scores} if scores else {}), **baselines}.items()},
            "scoring_seconds": self.scoring_seconds,
            "federated": {"engine": getattr(self.fleet, "engine", "local"), "silos": self.fleet.silos(), "tau": tau,
                          "curves": curves, "rounds": self.round_log,
                          "failures": getattr(self.fleet, "failures", [])},
            "timing": {**self.timing, "total": round(time.perf_counter() - started, 3)},
            "config": {**self.config.to_dict(), "federated": self.fed.to_dict()},
        }
        write_outputs(results, self.out)
        return results


def write_outputs(results: dict, out: str | Path) -> None:
    """results.json and the report (tables, score histograms with tau, per-round curves); wall times in timing.json."""
    from clues.report import write_results

    tau = (results.get("federated") or {}).get("tau")
    score_data = {name: {"histogram": s["histogram"], "tau": tau}
                  for name, s in ((results.get("scores") or {}).get("fl-clues") or {}).items() if "histogram" in s} if tau is not None else None
    write_results(results, out, score_data)


def add_comparison(results: dict, merging: dict) -> dict:
    """Put a merging-mode run's conditions (mixed, clues, oracle...) and selection next to the federated ones."""
    for name, entry in (merging.get("conditions") or {}).items():
        results["conditions"].setdefault(name, entry)
    for method, silos in (merging.get("selection") or {}).items():
        results["selection"].setdefault(method, silos)
    results["compared_with"] = {"config": merging.get("config")}
    return results


def _mean(values) -> float | None:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def _point_config_at_base(folder: Path, base: str) -> None:
    import json

    from clues.checkpoint import write_adapter_config

    path = folder / "adapter_config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["base_model_name_or_path"] = base
    write_adapter_config(folder, data)  # target_modules sorted: the same run writes the same bytes
