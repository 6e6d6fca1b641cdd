"""`clues run`: the whole method on a consortium, from the server's side of the boundary.

Stages, each resumable (:mod:`clues.server.stages`):

1. every silo trains a LoRA adapter on all its records (the ``mixed`` condition; its checkpoints
   are also CLUES' warm-up run, as in the paper);
2. every silo scores its records and the public anchors on its own checkpoints against the public
   validation gradient, and reports the anchor scores and a score summary;
3. the server sets tau from the anchor scores (global or per silo) and sends it;
4. every silo keeps its records with score >= tau and reports counts;
5. every silo retrains from the base model on its kept records (``clues``), and on its clean records
   (``oracle``, benchmarks with labels only);
6. per condition the server merges the silos' adapters (TIES by default, :mod:`clues.merge`) and
   evaluates the merged model on the public test set, per domain;
7. results.json and the report.

The server holds only public data (validation, anchor, test) and what the silos send; it reaches
them through a :class:`~clues.server.fleet.Fleet` (in-process silos, or Flower's Grid with
``--fleet flower``), which moves serialized messages only.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console

from clues import protocol
from clues.methods import METHODS, OWN_DOMAIN_DIRECTION
from clues.config import RunConfig
from clues.data import record_to_json
from clues.errors import CluesError
from clues.protocol import Message
from clues.select import anchor_warnings, own_domain_anchors, silo_thresholds
from clues.server.fleet import Fleet
from clues.server.overlap import PUBLIC_SETS, load_public_sets, overlap_request, say_dropped, warn_overlap
from clues.server.results import public_scores, save_adapter, subset_of, write_outputs
from clues.server.stages import Stages, file_digest


class MergingServer:
    """Orchestrates one merging-mode run over ``fleet``; knows the silos only by name."""

    def __init__(self, config: RunConfig, fleet: Fleet, console: Console | None = None):
        self.config = config
        self.fleet = fleet
        self.console = console or Console()
        self.out = Path(config.out)
        # Every input is validated before anything is written: bad input leaves no half-made run folder.
        self.validation, self.anchor, self.test, self.probe = load_public_sets(config)
        absent = [name for name in config.silos if name not in fleet.silos()]
        if absent:
            raise CluesError(f"silo {absent[0]!r} is not in the fleet (it has {', '.join(fleet.silos()) or 'no silo'})")
        self.silos = list(config.silos)  # the config's order, whatever the transport's: the merge is order-sensitive
        # --drop-overlap changes what a silo trains on: every stage of that silo is another one
        self.silo_digest = {name: file_digest(path) + ("+drop-overlap" if config.drop_overlap else "")
                            for name, path in config.silos.items()}
        self.public_key = {name: file_digest(getattr(config, name)) for name in PUBLIC_SETS}
        if config.probe:
            self.public_key["probe"] = file_digest(config.probe)
        self.out.mkdir(parents=True, exist_ok=True)
        self.stages = Stages(self.out, self.console)
        self.selection: dict[str, dict] = {}  # per method, per silo: what each kept
        self.warnings: list[str] = []  # said on the console and at the top of the report

    def warn(self, lines) -> None:
        for line in lines:
            if line not in self.warnings:
                self.warnings.append(line)
                self.console.print(f"warning: {line}", style="yellow", markup=False, highlight=False)

    def _ask(self, silo: str, kind: str, meta: dict) -> Message:
        return self.fleet.request(silo, Message(kind, meta))

    def check_overlap(self) -> dict[str, dict[str, int]]:
        """Warn when a silo holds records of a public set; asked once, the counts kept as a stage result."""
        request = overlap_request(self.validation, self.anchor, self.test, drop=self.config.drop_overlap)
        replies = {
            name: self.stages.run(f"overlap-{name}", {"silo": self.silo_digest[name], "public": self.public_key, "v": 3},
                                  lambda name=name: _overlap_reply(self._ask(name, request.kind, request.meta)))
            for name in self.silos
        }
        counts = {name: reply["public_overlap"] for name, reply in replies.items()}
        say_dropped(self.console, {name: reply.get("dropped") or 0 for name, reply in replies.items()})
        warn_overlap(self.console, counts, {name: reply.get("public_near") or {} for name, reply in replies.items()})
        self.check_validation_domains({name: reply.get("domains") or [] for name, reply in replies.items()})
        return counts

    def check_validation_domains(self, domains: dict[str, list[str]]) -> None:
        """Refuse, before anything trains, a validation file that has no record of a silo's domain when
        other domains weigh 0 (``[score] w_other = 0``, the default): the silo's CLUES direction would be
        empty, and the run would stop at scoring, hours later."""
        if self.config.score.w_other > 0 or not any(c in OWN_DOMAIN_DIRECTION for c in self.config.conditions):
            return
        present = {r.domain for r in self.validation}
        for name, own in domains.items():
            if own and not present & set(own):
                raise CluesError(f"silo {name!r}: the validation file {self.config.validation} has no record of its "
                                 f"domain ({', '.join(own)}; it has {', '.join(sorted(map(str, present))) or 'none'}), "
                                 "and [score] w_other is 0: add validation records of that domain, or set w_other > 0")

    # -- stages -------------------------------------------------------------------------------------
    def train_condition(self, condition: str) -> dict:
        """Every silo trains on its subset for ``condition``; adapters land in server/adapters/<condition>/."""
        config = self.config.train.to_dict()
        results = {}
        for name in self.silos:
            request = {"tag": condition, "subset": subset_of(condition), "config": config}
            if self.config.equal_steps and condition != "mixed":
                request["steps_of"] = "all"
            key = {"silo": self.silo_digest[name], "config": config, "condition": condition,
                   "upstream": self._selection_key(condition, name) if condition in METHODS else None,
                   **({"steps_of": "all"} if "steps_of" in request else {})}

            def work(name=name, request=request):
                self.console.rule(f"[bold]{condition}[/bold]: training silo {name}")
                reply = self._ask(name, protocol.TRAIN, request)
                if reply.tensors:
                    save_adapter(self.out / "server" / "adapters" / condition / name, reply.tensors,
                                 reply.meta["adapter_config"])
                return reply.meta

            results[name] = self.stages.run(f"train-{condition}-{name}", key, work)
        return results

    def score(self, method: str = "clues") -> dict:
        """Every silo scores its records and the public anchors with ``method``; replies hold anchor scores and summaries."""
        settings = json.loads(json.dumps(self.config.score.__dict__, default=list))
        train = self.config.train.to_dict()
        results = {}
        for name in self.silos:
            key = {"silo": self.silo_digest[name], "train": train, "score": settings, "public": self.public_key,
                   "method": method}

            def work(name=name):
                self.console.rule(f"[bold]scoring ({method})[/bold]: silo {name}")
                meta = {"run": "mixed", "method": method, "settings": settings, "config": train,
                        "validation": [record_to_json(r) for r in self.validation],
                        "anchor": [record_to_json(r) for r in self.anchor]}
                return self._ask(name, protocol.SCORE, meta).meta

            results[name] = self.stages.run(f"score-{method}-{name}", key, work)
        return results

    def select(self, scores: dict, method: str = "clues") -> dict:
        """tau from ``method``'s own anchor scores; or, for ``random`` and ``--match-count``, CLUES' kept count per silo."""
        match = method != "clues" and (method == "random" or self.config.select.match_count)
        if not match:
            self.warn(anchor_warnings(scores, self.anchor))
        taus = silo_thresholds({n: own_domain_anchors(s, self.anchor) for n, s in scores.items()},
                               self.config.select.policy, self.config.select.mode)
        results = {}
        for name in self.silos:
            request = {"method": method}
            if match:
                request["count"] = self.selection["clues"][name]["kept"]
            else:
                request["tau"] = taus[name]
            key = {**request, "scores": scores[name]["summary"], "silo": self.silo_digest[name]}
            results[name] = self.stages.run(
                f"select-{method}-{name}", key, lambda name=name, request=request: self._ask(name, protocol.SELECT, request).meta
            )
        self.selection[method] = results
        return results

    def _selection_key(self, method: str, silo: str) -> dict:
        chosen = self.selection[method][silo]
        return {"tau": chosen.get("tau"), "count": chosen.get("count"), "kept": chosen["kept"]}

    def merge(self, condition: str, trained: dict) -> Path | None:
        from clues.merge import merge_adapters

        merge = self.config.merge
        silos = [n for n in self.silos if (self.out / "server" / "adapters" / condition / n).exists()
                 and trained[n].get("records", 0) > 0]
        if not silos:
            return None
        weights = [float((merge.weights or {}).get(n, 1.0)) for n in silos]
        out = self.out / "server" / "merged" / condition
        key = {"trained": {n: trained[n] for n in silos}, "merge": merge.__dict__, "weights": weights}

        def work():
            merge_adapters([self.out / "server" / "adapters" / condition / n for n in silos], out,
                           method=merge.method, space=merge.space, weights=weights, density=merge.density,
                           seed=merge.seed, delta_rank=merge.delta_rank)
            return {"silos": silos, "weights": weights}

        self.stages.run(f"merge-{condition}", key, work)
        return out

    def evaluate(self, condition: str, adapter: Path | None, upstream) -> dict:
        """Test loss per domain (and MCQ accuracy) of the base model with ``adapter`` (None: the base alone).

        The stage key holds the adapter's own bytes: the same trained silos merged another way (a rerun
        with another ``[merge]``) are another model, and must not reuse this one's evaluation.
        """
        from clues.merge.adapters import CONFIG_FILE, WEIGHTS_FILE

        merged = {name: file_digest(adapter / name) for name in (CONFIG_FILE, WEIGHTS_FILE)} if adapter else None
        key = {"condition": condition, "upstream": upstream, "adapter": merged, "test": self.public_key["test"],
               "probe": self.public_key.get("probe"), "answers": self.config.answers,
               "model": self.config.model, "train": self.config.train.to_dict()}

        def work():
            from clues.evaluate import evaluate_condition
            from clues.model import load_model
            from clues.model.frozen_prefix import shared_prefix

            self.console.rule(f"[bold]evaluating[/bold] {condition} on {len(self.test)} test records")
            model, tokenizer = load_model(self.config.model, device=self.config.train.device)
            if adapter is not None:
                from peft import PeftModel

                from clues.model.lora import peft_quietly

                with peft_quietly():
                    model = PeftModel.from_pretrained(model, str(adapter))
            train = self.config.train
            return evaluate_condition(model, tokenizer, self.test, train.max_length, self.config.eval_batch_size,
                                      train.template, console=self.console, prefix_start=shared_prefix(model, train),
                                      probe=self.probe, answers=self.config.answers)

        return self.stages.run(f"evaluate-{condition}", key, work)

    # -- the whole run --------------------------------------------------------------------------------
    def run(self) -> dict:
        from clues.evaluate import add_oracle_gain

        started = time.perf_counter()
        conditions = self.config.conditions
        trained, scores = {}, {}
        self.selection.clear()
        self.warnings.clear()
        self.check_overlap()
        if "mixed" in conditions:
            trained["mixed"] = self.train_condition("mixed")
        for method in (m for m in METHODS if m in conditions):  # CLUES first: random and --match-count need its counts
            scores[method] = self.score(method)
            self.select(scores[method], method)
            trained[method] = self.train_condition(method)
        if "oracle" in conditions:
            trained["oracle"] = self.train_condition("oracle")
        evaluated = {}
        if "base" in conditions:
            evaluated["base"] = self.evaluate("base", None, None)
        for condition, per_silo in trained.items():
            merged = self.merge(condition, per_silo)
            evaluated[condition] = self.evaluate(condition, merged, per_silo)
        add_oracle_gain(evaluated)
        results = {
            "conditions": evaluated,
            "selection": dict(self.selection),
            "scores": {m: public_scores(per_silo) for m, per_silo in scores.items()},
            "scoring_seconds": {m: round(sum(self.stages.timing.get(f"score-{m}-{n}", 0.0) for n in self.silos), 3)
                                for m in scores},
            "training": trained,
            "timing": {**self.stages.timing, "total": round(time.perf_counter() - started, 3)},
            "config": self.config.to_dict(),
            **({"warnings": list(self.warnings)} if self.warnings else {}),
        }
        write_outputs(results, self.out)
        return results


def _overlap_reply(reply: Message) -> dict:
    """What the overlap stage keeps of a silo's hello reply: the counts and its domain labels."""
    return {key: reply.meta.get(key) for key in ("public_overlap", "public_near", "domains", "dropped")}
