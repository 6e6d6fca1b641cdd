"""The CLUES score, streamed over checkpoints and batches (CLUES.md sections 2 and 3).

    S(z) = sum_c eta_c * < G_c(z), g_val,c >

For every checkpoint c of a training run: load its adapter into one model, compute the (domain
weighted) mean validation gradient ``g_val,c`` once, then walk the records batch by batch, turning
each batch's per-record gradients into ``[batch]`` scores right away. Nothing of size
records x parameters is ever held, so memory depends on the model and the batch size only.

Anchors (and any other record set) go through :meth:`Scorer.score` exactly like training records,
on the same checkpoints, with the same eta, validation direction and preconditioner: the authors'
scripts looked anchors up at different checkpoints (CLUES.md section 6).
"""

from __future__ import annotations

import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from clues import checkpoint as ckpt
from clues.config import ScoreSettings  # the settings live with every other one
from clues.data.batching import length_sorted_batches, pad_batch
from clues.data.records import Record
from clues.data.template import DEFAULT_MAX_LENGTH, encode, padding_id
from clues.errors import CluesError
from clues.loss import batch_record_losses
from clues.model.frozen_prefix import fill_prefix
from clues.scoring.params import LoraBlock, select_blocks
from clues.scoring.per_sample import per_record_gradients
from clues.scoring.preconditioners import AdamHyper, needs_moments, precondition
from clues.scoring.projection import projected_direction

Progress = Callable[[int], None]


def validation_weights(validation: Sequence[Record], own_domains, w_other: float) -> list[float]:
    """Per-record weights making ``sum_i w_i grad_i`` the weighted mean of per-domain mean gradients.

    Domain d gets weight 1 if it is one of the silo's own domains (or no own domain is known), else
    ``w_other``; the weights are normalised to sum to one, so the scale of the direction does not
    depend on how many domains there are. Records without a domain form one group.
    """
    own = set(own_domains or ())
    counts: dict[str | None, int] = {}
    for record in validation:
        counts[record.domain] = counts.get(record.domain, 0) + 1
    domain_weight = {d: (1.0 if not own or d in own else w_other) for d in counts}
    total = sum(domain_weight.values())
    if total <= 0:
        raise CluesError(
            f"every validation domain has weight 0 (own domains {sorted(own)} absent from the validation "
            f"file, whose domains are {sorted(str(d) for d in counts)}, and --w-other 0)"
        )
    return [domain_weight[r.domain] / (total * counts[r.domain]) for r in validation]


def compact_encodings(records: Sequence[Record], tokenizer, max_length: int, template: str) -> list[dict]:
    """Encode records with the project template, storing ids as int32 arrays (4 bytes a token, not ~36)."""
    out = []
    for record in records:
        enc = encode(record, tokenizer, max_length, template)
        out.append({
            "input_ids": array.array("i", enc["input_ids"]),
            "labels": array.array("i", enc["labels"]),
            "truncated": enc["truncated"],
        })
    return out


@dataclass
class Scorer:
    """A PeftModel (eval mode, LoRA weights requiring grad) and the chosen LoRA blocks."""

    model: object
    pad_token_id: int
    blocks: list[LoraBlock]
    batch_size: int = 8

    @classmethod
    def for_model(cls, model, pad_token_id: int, params: str = "all", batch_size: int = 8) -> "Scorer":
        model.eval()
        blocks = select_blocks(model, params)
        for block in blocks:
            block.param.requires_grad_(True)
        return cls(model, pad_token_id, blocks, batch_size)

    @property
    def dim(self) -> int:
        return sum(b.numel for b in self.blocks)

    def _batches(self, encodings: Sequence[dict]):
        lengths = [len(e["input_ids"]) for e in encodings]
        for indices in length_sorted_batches(lengths, self.batch_size):
            yield indices, pad_batch([encodings[i] for i in indices], self.pad_token_id)

    def validation_gradient(self, encodings: Sequence[dict], weights: Sequence[float], progress: Progress | None = None) -> torch.Tensor:
        """``sum_i weights[i] * grad L_i`` over the chosen blocks, flat ``float64`` in block order (plain gradient)."""
        if self.model.training:
            raise CluesError("scoring needs the model in eval mode (LoRA dropout off)")
        params = [b.param for b in self.blocks]
        total = torch.zeros(self.dim, dtype=torch.float64)
        device = params[0].device
        for indices, batch in self._batches(encodings):
            with torch.enable_grad():
                losses = batch_record_losses(self.model, batch)
                w = torch.tensor([weights[i] for i in indices], dtype=losses.dtype, device=device)
                grads = torch.autograd.grad((losses * w).sum(), params)
            total += torch.cat([g.detach().reshape(-1).to("cpu", torch.float64) for g in grads])
            if progress:
                progress(len(indices))
        return total

    def gradient_batches(
        self,
        encodings: Sequence[dict],
        kind: str = "none",
        moments: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
        hyper: AdamHyper = AdamHyper(),
    ):
        """Yield ``(indices, G)`` per batch: ``G[b]`` the flat (block order) preconditioned gradient of
        record ``indices[b]``, ``float64`` on the model's device.

        For the baselines that need more than one inner product per record (LESS: norms and one
        direction per domain; DataInf: per-layer norms). Holds one ``[batch, dim]`` tensor at a time.
        """
        device = self.blocks[0].param.device
        if needs_moments(kind):
            moments = _moments_for(self.blocks, moments, kind, device)
        for indices, batch in self._batches(encodings):
            parts = []
            for block, grads in per_record_gradients(self.model, batch, self.blocks):
                m, v = moments[block.name] if moments else (None, None)
                parts.append(precondition(kind, grads.to(torch.float64), m, v, hyper).reshape(len(indices), -1))
            yield list(indices), torch.cat(parts, dim=1)

    def layer_slices(self) -> dict[str, list[slice]]:
        """Where each LoRA layer (its chosen A and/or B blocks) sits in a flat gradient: ``{module: [slices]}``."""
        spans: dict[str, list[slice]] = {}
        offset = 0
        for block in self.blocks:
            spans.setdefault(block.module_name, []).append(slice(offset, offset + block.numel))
            offset += block.numel
        return spans

    def score(
        self,
        encodings: Sequence[dict],
        direction: torch.Tensor,
        kind: str,
        moments: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
        hyper: AdamHyper = AdamHyper(),
        progress: Progress | None = None,
    ) -> torch.Tensor:
        """``<G(z), direction>`` for every record, ``float64 [N]`` in input order, streamed batch by batch."""
        device = self.blocks[0].param.device  # the arithmetic stays where the gradients are (CPU or GPU)
        if needs_moments(kind):
            moments = _moments_for(self.blocks, moments, kind, device)
        pieces, offset = {}, 0
        for block in self.blocks:
            pieces[block.name] = direction[offset : offset + block.numel].to(device)
            offset += block.numel
        scores = torch.zeros(len(encodings), dtype=torch.float64)
        for indices, batch in self._batches(encodings):
            batch_scores = torch.zeros(len(indices), dtype=torch.float64, device=device)
            for block, grads in per_record_gradients(self.model, batch, self.blocks):
                m, v = moments[block.name] if moments else (None, None)
                g = precondition(kind, grads.to(torch.float64), m, v, hyper)
                batch_scores += g.reshape(len(indices), -1) @ pieces[block.name]
            scores[list(indices)] = batch_scores.cpu()
            if progress:
                progress(len(indices))
        return scores


def _moments_for(blocks, moments, kind, device="cpu"):
    if not moments:
        raise CluesError(f"preconditioner {kind!r} needs the checkpoint's Adam moments, and there are none")
    missing = [b.name for b in blocks if b.name not in moments]
    if missing:
        raise CluesError(
            f"preconditioner {kind!r}: no Adam moments for {len(missing)} of the chosen parameters "
            f"(e.g. {missing[0]}); use --precondition none or a checkpoint saved with its optimizer state"
        )
    out = {}
    for b in blocks:
        m, v = moments[b.name]
        if tuple(m.shape) != tuple(b.param.shape) or tuple(v.shape) != tuple(b.param.shape):
            raise CluesError(f"Adam moments of {b.name} have shape {tuple(m.shape)}, the parameter {tuple(b.param.shape)}")
        out[b.name] = (m.to(device, torch.float64), v.to(device, torch.float64))
    return out


@dataclass
class RunScores:
    """Scores of every record set, ``[N, checkpoints]`` each, already multiplied by eta_c."""

    checkpoints: list[str]
    etas: list[float]
    per_checkpoint: dict[str, torch.Tensor] = field(default_factory=dict)

    def total(self, name: str) -> torch.Tensor:
        return self.per_checkpoint[name].sum(dim=1)


def _checkpoint_eta(meta: dict, path: Path) -> float:
    eta = meta.get("lr_mean")
    if not isinstance(eta, (int, float)) or eta != eta:
        raise CluesError(f"{path}: trainer_meta.json has no numeric lr_mean (the learning-rate weight eta_c)")
    return float(eta)


def _hyper(meta: dict) -> AdamHyper:
    opt = meta.get("optimizer") or {}
    betas = opt.get("betas") or (0.9, 0.999)
    return AdamHyper(float(betas[0]), float(betas[1]), float(opt.get("eps", 1e-8)))


def load_scoring_model(checkpoints: Sequence[Path], base_model: str | None = None, device: str = "cpu"):
    """The base model of the run with the first checkpoint's adapter attached: ``(peft_model, tokenizer, meta)``.

    An adapter that does not fit the base model (another architecture or size, other module names)
    raises :class:`CluesError` instead of PEFT's long traceback or, worse, a partial load.
    """
    from peft import PeftModel

    from clues.model import load_model
    from clues.model.lora import peft_quietly

    meta = ckpt.load_checkpoint_meta(checkpoints[0])
    base = base_model or meta.get("base_model") or (meta.get("config") or {}).get("model")
    if not base:
        raise CluesError(f"{checkpoints[0]}: trainer_meta.json names no base model; pass --model")
    model, tokenizer = load_model(base, device=device)
    try:
        with peft_quietly():
            peft_model = PeftModel.from_pretrained(model, str(checkpoints[0]), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CluesError(f"the adapter in {checkpoints[0]} does not fit the base model {base!r}: {first}") from exc
    peft_model.eval()
    return peft_model, tokenizer, meta


def _load_adapter(model, path: Path, base: str) -> None:
    try:
        ckpt.load_adapter(model, path)
    except (RuntimeError, CluesError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise CluesError(f"the adapter in {path} does not fit the base model {base!r}: {first}") from exc


@dataclass
class OpenRun:
    """A training run opened for scoring: a :class:`Scorer` on its model, and the validation and
    record sets encoded as the run trained (its own max_length and template)."""

    checkpoints: list[Path]
    scorer: Scorer
    base: str
    validation: list[dict]
    sets: dict[str, list[dict]]


def open_run(
    run_dir: str | Path,
    record_sets: Mapping[str, Sequence[Record]],
    validation: Sequence[Record],
    settings: ScoreSettings = ScoreSettings(),
    base_model: str | None = None,
    console=None,
    method: str | None = None,
    last_only: bool = False,
) -> OpenRun:
    """Load ``run_dir``'s base model with its first checkpoint's adapter (its last with ``last_only``,
    keeping only that checkpoint) and encode every set. Shared by CLUES and the gradient baselines
    (``method`` names the one asking, in error messages), so all score the very same tokens."""
    checkpoints = ckpt.list_checkpoints(run_dir)
    if not checkpoints:
        what = f"score {method} with" if method else "score with"
        raise CluesError(f"{run_dir}: no complete checkpoint (checkpoint-<step>/ with trainer_meta.json) to {what}")
    if not validation:
        raise CluesError(f"{method} needs validation records, and the validation set is empty" if method
                         else "the validation set is empty")
    if last_only:
        checkpoints = checkpoints[-1:]
    model, tokenizer, first_meta = load_scoring_model(checkpoints, base_model, settings.device)
    base = base_model or first_meta.get("base_model") or "?"
    config = first_meta.get("config") or {}
    max_length, template = int(config.get("max_length", DEFAULT_MAX_LENGTH)), config.get("template", "alpaca")
    pad_id = padding_id(tokenizer)
    scorer = Scorer.for_model(model, pad_id, settings.params, settings.batch_size)
    val_enc = compact_encodings(validation, tokenizer, max_length, template)
    set_enc = {name: compact_encodings(records, tokenizer, max_length, template) for name, records in record_sets.items()}
    if settings.cache_frozen:
        # The base model's layers below the first LoRA layer are the same at every checkpoint.
        for encs in [val_enc, *set_enc.values()]:
            fill_prefix(model, encs, pad_id, settings.batch_size)
    if console is not None:
        cut = sum(1 for encs in [val_enc, *set_enc.values()] for e in encs if e["truncated"])
        if cut:
            console.print(f"[yellow]{cut} records truncated to max_length={max_length} (the training run's limit)[/yellow]")
    return OpenRun(checkpoints, scorer, base, val_enc, set_enc)


def checkpoint_state(scorer: Scorer, path: Path, base: str, kind: str, who: str = ""):
    """Load checkpoint ``path``'s adapter into the scorer's model; return ``(eta_c, moments or None, AdamHyper)``.

    ``who`` (e.g. ``"less with "``) names the method in the error about missing Adam moments.
    """
    meta = ckpt.load_checkpoint_meta(path)
    eta = _checkpoint_eta(meta, path)
    _load_adapter(scorer.model, path, base)  # strict: every LoRA tensor present, every shape right
    moments = None
    if needs_moments(kind):
        if not (path / ckpt.OPTIMIZER_FILE).is_file():
            raise CluesError(
                f"{path}: no {ckpt.OPTIMIZER_FILE} (Adam moments), needed by {who}--precondition {kind}; "
                "use --precondition none"
            )
        moments = ckpt.load_moments(path)
    return eta, moments, _hyper(meta)


def score_run(
    run_dir: str | Path,
    record_sets: Mapping[str, Sequence[Record]],
    validation: Sequence[Record],
    settings: ScoreSettings = ScoreSettings(),
    base_model: str | None = None,
    progress: Progress | None = None,
    console=None,
) -> RunScores:
    """Score every record set (e.g. ``{"data": ..., "anchor": ...}``) on every checkpoint of ``run_dir``.

    ``progress(n)`` is called after every ``n`` records processed; the total is
    ``checkpoints * (len(validation) + sum of set sizes)``.
    """
    domains = settings.domains
    if domains is None:  # the silo's own domains: those of its data (the first set), not of the public anchors
        first = next(iter(record_sets.values()), [])
        domains = sorted({r.domain for r in first if r.domain})
    weights = validation_weights(validation, domains, settings.w_other)
    # Validation records of weight 0 (other domains with --w-other 0) add nothing: never run them.
    used = [i for i, w in enumerate(weights) if w > 0]
    skipped = len(validation) - len(used)
    validation, weights = [validation[i] for i in used], [weights[i] for i in used]
    run = open_run(run_dir, record_sets, validation, settings, base_model, console)
    scorer = run.scorer
    if progress and skipped:
        progress(skipped * len(run.checkpoints))  # they count as done, so the total stays as documented

    result = RunScores([], [], {name: torch.zeros(len(records), len(run.checkpoints), dtype=torch.float64) for name, records in record_sets.items()})
    for c, path in enumerate(run.checkpoints):
        eta, moments, hyper = checkpoint_state(scorer, path, run.base, settings.precondition)
        direction = scorer.validation_gradient(run.validation, weights, progress)
        if settings.project:
            direction = projected_direction(direction, settings.project, settings.seed)
        for name, encs in run.sets.items():
            if encs:
                result.per_checkpoint[name][:, c] = eta * scorer.score(encs, direction, settings.precondition, moments, hyper, progress)
        result.checkpoints.append(path.name)
        result.etas.append(eta)
    return result
