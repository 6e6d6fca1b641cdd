"""Federated CLUES, from the server's side (CLUES.md section 4, federated), over any :class:`Fleet`.

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

Each condition, the selection and each evaluation is a stage (:mod:`clues.server.stages`): a rerun
after an interruption skips the finished ones (their adapters are read back from
``server/adapters``) and reruns an interrupted condition from its first round, where every silo
starts its optimizer afresh. A silo that fails or does not answer is left out of that round, and
the round log says so.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Mapping

import torch
from rich.console import Console

from clues import protocol
from clues.methods import METHODS
from clues.checkpoint import load_adapter_state
from clues.config import FedSettings, RunConfig
from clues.data import record_to_json
from clues.data.template import padding_id
from clues.errors import CluesError
from clues.protocol import Message
from clues.server.fleet import Fleet
from clues.server.overlap import PUBLIC_SETS, load_public_sets, overlap_request, say_dropped, warn_overlap
from clues.server.results import (
    FEDERATED_SCORE_KEYS,
    public_scores,
    save_adapter,
    subset_of,
    write_outputs,
)
from clues.server.stages import Stages, file_digest


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
        self.validation, self.anchor, self.test, self.probe = load_public_sets(config)
        self.out.mkdir(parents=True, exist_ok=True)
        self.stages = Stages(self.out, self.console)
        self.round_log: list[dict] = []
        self.failures: list[dict] = []
        self.warnings: list[str] = []
        self.scoring_seconds: dict[str, float] = {}
        self.local_warmup = False  # LESS and DataInf: each silo's local warm-up run, asked for once
        # What every stage depends on: a changed option, silo file or public set reruns the run.
        self.key = {"config": config.to_dict(), "federated": fed.to_dict(),
                    "silos": {n: file_digest(p) if Path(p).is_file() else p for n, p in config.silos.items()},
                    "public": {name: file_digest(getattr(config, name)) for name in PUBLIC_SETS},
                    "probe": file_digest(config.probe) if config.probe else None}

    # -- pieces ---------------------------------------------------------------------------------------
    def _model(self):
        from clues.federated_model import lora_model

        return lora_model(self.config.train)

    def _lr(self, round_: int) -> float:
        from clues.train import lr_factor, warmup_steps

        total = self.fed.rounds
        return self.config.train.lr * lr_factor(round_ - 1, total, warmup_steps(total, self.config.train.warmup_ratio))

    def _silos(self) -> list[str]:
        """The fleet's silos by name: the same sample and FedAvg order whatever the fleet (Flower's Grid sorts too)."""
        return sorted(self.fleet.silos())

    def _sample(self, condition: str, round_: int) -> list[str]:
        silos = self._silos()
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

    def _stage(self, name: str, upstream, work: Callable[[], object]):
        """Run ``work`` as the resumable stage ``name``; its rounds and failures are part of its result."""
        def run():
            rounds, failures = len(self.round_log), len(self.fleet.failures)
            value = work()
            return {"value": value, "rounds": self.round_log[rounds:], "failures": self.fleet.failures[failures:]}

        ran = []

        def run_here():
            ran.append(name)
            return run()

        done = self.stages.run(name, {**self.key, "stage": name, "upstream": upstream}, run_here)
        if not ran:  # finished earlier: its log entries come from the marker
            self.round_log.extend(done["rounds"])
        self.failures.extend(done["failures"])
        return done["value"]

    def _adapter_dir(self, condition: str) -> Path:
        return self.out / "server" / "adapters" / condition

    def _save_adapter(self, condition: str, adapter: dict) -> None:
        """The global adapter as a PEFT folder whose config names the base model."""
        from clues.model import base_model_id

        model, _ = self._model()
        folder = self._adapter_dir(condition)
        folder.mkdir(parents=True, exist_ok=True)
        model.peft_config["default"].save_pretrained(str(folder))  # PEFT's adapter_config.json, then ours
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = base_model_id(self.config.model)
        save_adapter(folder, adapter, config)

    def _load_adapter(self, condition: str) -> dict:
        from clues.checkpoint import ADAPTER_FILE, load_tensors

        return load_tensors(self._adapter_dir(condition) / ADAPTER_FILE)

    def evaluate_round(self, adapter: dict) -> dict:
        """Per-domain test loss of the global adapter (the per-round curve)."""
        from clues.evaluate import macro_mean, per_domain_loss

        model, tokenizer = self._model()
        load_adapter_state(model, adapter)
        train = self.config.train
        losses = per_domain_loss(model, tokenizer, self.test, train.max_length, self.config.eval_batch_size, train.template)
        return {"test_loss": losses, "mean_test_loss": macro_mean(losses)}

    def evaluate_final(self, adapter: dict) -> dict:
        from clues.evaluate import evaluate_condition

        model, tokenizer = self._model()
        load_adapter_state(model, adapter)
        train = self.config.train
        return evaluate_condition(model, tokenizer, self.test, train.max_length, self.config.eval_batch_size, train.template,
                                  probe=self.probe, answers=self.config.answers)

    # -- scoring ----------------------------------------------------------------------------------------
    def score_checkpoint(self, round_: int, adapter: dict, eta: float) -> tuple[dict[str, list[float]], dict]:
        """Validation direction at the global adapter -> every silo scores its records; anchors scored alike.

        Returns ``({"server" or silo: anchor scores at this checkpoint}, {silo: its reply})``.
        """
        from clues.scoring.engine import Scorer, compact_encodings, validation_weights
        from clues.scoring.preconditioners import needs_moments
        from clues.silo.fed_score import direction_from_tensors, direction_tensors

        settings = self.config.score
        train = self.config.train
        model, tokenizer = self._model()
        load_adapter_state(model, adapter)
        scorer = Scorer.for_model(model, padding_id(tokenizer), settings.params, settings.batch_size)
        # One global direction: every validation domain weighs the same (the consortium's target).
        weights = validation_weights(self.validation, (), 1.0)
        flat = scorer.validation_gradient(compact_encodings(self.validation, tokenizer, train.max_length, train.template), weights)
        wire = direction_tensors(scorer, flat)
        silo_anchors = needs_moments(settings.precondition)
        meta = {"round": round_, "checkpoint": f"round-{round_}", "eta": eta, "config": train.to_dict(),
                "settings": {k: v for k, v in asdict(settings).items() if k in ("precondition", "params", "batch_size")},
                "moments_of": "fl-mixed", "checkpoints": [f"round-{r}" for r in self.fed.checkpoints]}
        if silo_anchors:
            meta["anchor"] = [record_to_json(r) for r in self.anchor]
        silos = self._silos()
        replies = self.fleet.exchange({s: Message(protocol.FED_SCORE, meta, {**adapter, **wire}) for s in silos}, round_)
        self._log_round("fl-mixed", round_, protocol.FED_SCORE, silos, replies)
        metas = {name: reply.meta for name, reply in replies.items()}
        if silo_anchors:
            return {name: m["anchor_scores"] for name, m in metas.items() if "anchor_scores" in m}, metas
        direction = direction_from_tensors(scorer, wire)  # the very (float32) direction the silos received
        anchors = compact_encodings(self.anchor, tokenizer, train.max_length, train.template)
        return {"server": (eta * scorer.score(anchors, direction, "none")).tolist()}, metas

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
    def rounds(self, condition: str, initial: dict, score: bool = False) -> tuple[dict, list[dict], list[dict], dict]:
        """FedAvg rounds of ``condition``: ``(final adapter, per-round curve, anchor columns, last score replies)``."""
        adapter, curve, anchors, lrs, scores = initial, [], [], [], {}
        checkpoints = set(self.fed.checkpoints) if score else set()
        train = self.config.train.to_dict()
        joined: set[str] = set()  # silos that have trained in this run of the condition
        for round_ in range(1, self.fed.rounds + 1):
            lr = self._lr(round_)
            asked = self._sample(condition, round_)
            meta = {"tag": condition, "subset": subset_of(condition), "round": round_, "steps": self.fed.local_steps,
                    "lr": lr, "config": train}
            # A silo's first round in this run starts its optimizer afresh, whatever an earlier or
            # interrupted run left in its folder (a silo first sampled in round 3 must not reuse it).
            requests = {s: Message(protocol.FIT, {**meta, "first": s not in joined}, adapter) for s in asked}
            joined.update(asked)
            replies = self.fleet.exchange(requests, round_)
            self._log_round(condition, round_, protocol.FIT, asked, replies)
            usable = {n: m for n, m in replies.items() if m.tensors and m.meta.get("num_examples", 0) > 0}
            if usable:
                adapter = fedavg(usable)
            else:
                self.console.print(f"[yellow]{condition} round {round_}: no adapter came back; the global model is unchanged[/yellow]")
            lrs.append(lr)
            if round_ in checkpoints:
                column, scores = self.score_checkpoint(round_, adapter, sum(lrs) / len(lrs))
                anchors.append(column)
                lrs = []
            point = {"round": round_, **self.evaluate_round(adapter),
                     "train_loss": _mean([m.meta.get("train_loss") for m in usable.values()])}
            curve.append(point)
            self.console.print(f"{condition} round {round_}/{self.fed.rounds}: {len(usable)}/{len(asked)} silos, "
                               f"test loss {point['mean_test_loss']:.4f}")
        return adapter, curve, anchors, scores

    def train_condition(self, condition: str, initial: dict, score: bool = False) -> dict:
        """``condition``'s rounds as a stage; its final adapter is kept in ``server/adapters/<condition>``."""
        def work():
            final, curve, anchors, scores = self.rounds(condition, initial, score)
            self._save_adapter(condition, final)
            return {"curve": curve, "anchors": anchors, "scores": scores}

        return self._stage(condition, None, work)

    def select(self, tau: float | Mapping[str, float] | None, method: str = "clues",
               counts: Mapping[str, int] | None = None) -> dict:
        """Every silo keeps ``score >= tau`` (its own tau when ``tau`` maps silos to thresholds) of ``method``'s
        scores, or (``counts``) its ``counts[silo]`` best records."""
        silos = self._silos()
        taus = tau if isinstance(tau, Mapping) else dict.fromkeys(silos, tau)
        requests = {s: Message(protocol.SELECT, {"method": method, **({"count": counts[s]} if counts else {"tau": taus[s]})})
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
        from clues.methods import NEEDS_WARMUP

        silos = self._silos()
        train = self.config.train.to_dict()
        if method in NEEDS_WARMUP and not self.local_warmup:
            request = Message(protocol.TRAIN, {"tag": "mixed", "subset": "all", "config": train, "return_adapter": False})
            replies = self.fleet.exchange({s: request for s in silos}, None)
            self._log_round("local-warmup", 0, protocol.TRAIN, silos, replies)
            self.local_warmup = True
        settings = json.loads(json.dumps(asdict(self.config.score), default=list))
        meta = {"run": "mixed", "method": method, "settings": settings, "config": train,
                "validation": [record_to_json(r) for r in self.validation], "anchor": [record_to_json(r) for r in self.anchor]}
        replies = self.fleet.exchange({s: Message(protocol.SCORE, meta) for s in silos}, None)
        self._log_round(f"fl-{method}", 0, protocol.SCORE, silos, replies)
        return {name: reply.meta for name, reply in replies.items()}

    def baseline(self, method: str, clues_selection: Mapping[str, dict], initial: dict) -> dict:
        """Score, select and train ``fl-<method>``: its scores, selection, curve and scoring time.

        A baseline is scored inside each silo, on the silo's own terms, so its tau is set as in merging
        mode: per silo from the silo's scores of the anchors of its own domain (``[select] mode =
        "per-silo"``, the default), or one tau from all anchor scores pooled (``"global"``). ``random``
        and ``--match-count`` keep, per silo, as many records as federated CLUES kept there.
        """
        from clues.select import anchor_warnings, own_domain_anchors, silo_thresholds

        started = time.perf_counter()
        scores = self.score_method(method)
        seconds = round(time.perf_counter() - started, 3)
        if method == "random" or self.config.select.match_count:
            counts = {s: clues_selection[s]["kept"] for s in self.fleet.silos() if s in clues_selection}
            selection = self.select(None, method, counts)
        else:
            self.warnings += [line for line in anchor_warnings(scores, self.anchor) if line not in self.warnings]
            own = {name: own_domain_anchors(reply, self.anchor) for name, reply in scores.items()}
            selection = self.select(silo_thresholds(own, self.config.select.policy, self.config.select.mode), method)
        final, curve, _, _ = self.rounds(f"fl-{method}", initial)
        self._save_adapter(f"fl-{method}", final)
        return {"scores": scores, "selection": selection, "curve": curve, "scoring_seconds": seconds}

    # -- the whole run ------------------------------------------------------------------------------------
    def run(self) -> dict:
        from clues.evaluate import add_oracle_gain
        from clues.federated_model import initial_adapter

        started = time.perf_counter()
        request = overlap_request(self.validation, self.anchor, self.test, drop=self.config.drop_overlap)
        replies = self.fleet.exchange({s: request for s in self.fleet.silos()}, None)
        warn_overlap(self.console, {n: r.meta.get("public_overlap", {}) for n, r in replies.items()},
                     {n: r.meta.get("public_near", {}) for n, r in replies.items()})
        say_dropped(self.console, {n: r.meta.get("dropped") or 0 for n, r in replies.items()})
        self.failures = list(self.fleet.failures)  # those of joining (hello) and of this overlap check
        wanted = [c for c in ("mixed", "clues", "oracle") if c in self.config.conditions]
        initial = initial_adapter(self.config.train)
        curves, selection, tau, last_scores = {}, {}, None, {}

        mixed = self.train_condition("fl-mixed", initial, score="clues" in wanted)
        curves["fl-mixed"], trained = mixed["curve"], ["fl-mixed"]
        if "clues" in wanted:
            last_scores = mixed["scores"]
            tau = self.threshold(mixed["anchors"])
            self.console.print(f"tau = {tau:.6g} (from the anchors at score rounds {list(self.fed.checkpoints)})")
            selection["fl-clues"] = self._stage("select", {"tau": tau}, lambda: self.select(tau))
            curves["fl-clues"] = self.train_condition("fl-clues", initial)["curve"]
            trained.append("fl-clues")
        baselines = {}
        for method in (m for m in METHODS if m != "clues" and m in self.config.conditions):
            name = f"fl-{method}"
            done = self._stage(name, {"clues": selection.get("fl-clues")},
                               lambda method=method: self.baseline(method, selection.get("fl-clues", {}), initial))
            baselines[name], selection[name], curves[name] = done["scores"], done["selection"], done["curve"]
            self.scoring_seconds[name] = done["scoring_seconds"]
            trained.append(name)
        if "oracle" in wanted and self.config.labels:
            curves["fl-oracle"] = self.train_condition("fl-oracle", initial)["curve"]
            trained.append("fl-oracle")
        conditions = {}
        for condition in trained:
            conditions[condition] = self._stage(f"evaluate-{condition}", {"curve": curves[condition][-1:],
                                                                          "answers": self.config.answers},
                                                lambda condition=condition: self.evaluate_final(self._load_adapter(condition)))
        add_oracle_gain(conditions, mixed="fl-mixed", oracle="fl-oracle")
        scores = {**({"fl-clues": last_scores} if last_scores else {}), **baselines}
        results = {
            "conditions": conditions,
            "selection": selection,
            "scores": {method: public_scores(per_silo, FEDERATED_SCORE_KEYS) for method, per_silo in scores.items()},
            "scoring_seconds": self.scoring_seconds,
            "federated": {"engine": self.fleet.engine, "silos": self.fleet.silos(), "tau": tau,
                          "curves": curves, "rounds": self.round_log, "failures": self.failures},
            "timing": {**self.stages.timing, "total": round(time.perf_counter() - started, 3)},
            "config": {**self.config.to_dict(), "federated": self.fed.to_dict()},
        }
        warnings = failure_warnings(self.failures) + self.warnings
        if warnings:
            results["warnings"] = warnings
        write_outputs(results, self.out)
        return results


def _mean(values) -> float | None:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def failure_warnings(failures: list[dict]) -> list[str]:
    """One line per silo that failed or stayed silent: how many requests, in which rounds."""
    by_silo: dict[str, list[dict]] = {}
    for failure in failures:
        by_silo.setdefault(str(failure.get("silo")), []).append(failure)
    lines = []
    for silo, missed in by_silo.items():
        rounds = sorted({f["round"] for f in missed if isinstance(f.get("round"), int)})
        where = f" (rounds {', '.join(map(str, rounds))})" if rounds else ""
        lines.append(f"silo {silo!r}: {len(missed)} replies missing{where}, failed or timed out "
                     f"({missed[-1].get('reason') or missed[-1].get('kind')}); the run went on without them")
    return lines
