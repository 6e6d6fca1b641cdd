"""Scoring throughput and memory: the engine against a batch-size-1 loop and a plain forward+backward.

One process, one model, the same records and the same thread count for the three methods, measured
in interleaved rounds (best round kept), so machine noise hits them alike:

- engine: :class:`clues.scoring.engine.Scorer` (hooked per-record gradients, Adam preconditioner,
  streamed inner products), what ``clues score`` runs;
- loop: the obviously correct reference (batch of one, ``loss.backward()``, ``.grad`` concatenated,
  Adam formula, dot product): the authors' approach, minus their pickling to disk;
- fwd+bwd: a plain batched forward+backward of the summed loss over the same length-sorted batches,
  no per-record anything: the floor no gradient scorer can beat.

Peak memory: ``score_run`` on 1,000 and on 8,000 records, each in a fresh subprocess, reading
``ru_maxrss``. Streaming means the two should be within 10%.

    python benchmarks/scoring.py                      # default model (a random small Llama if absent)
    python benchmarks/scoring.py --model smollm2-135m --records 32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from clues import checkpoint as ckpt
from clues.data import shipped
from clues.data.batching import pad_batch
from clues.data.records import record_from_dict
from clues.loss import per_record_loss
from clues.scoring.engine import ScoreSettings, Scorer, compact_encodings, load_scoring_model, score_run
from clues.scoring.preconditioners import AdamHyper

HERE = Path(__file__).resolve().parent


def records(n: int, offset: int = 0):
    """``n`` real FiQA records (cycled, with distinct ids when n exceeds the file)."""
    pool = shipped.load("fiqa", "all")
    out = []
    for i in range(n):
        r = pool[(offset + i) % len(pool)]
        out.append(record_from_dict({**r.raw, "id": f"{r.id}-{i}"}))
    return out


def random_small_model(folder: Path) -> str:
    """A random 4-layer Llama with a BPE tokenizer trained on shipped text (stand-in until the default model ships)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from clues.model.tokenizer_training import train_tokenizer

    texts = [t for r in shipped.load("medmeadow", "all")[:400] for t in (r.instruction, r.input, r.output)]
    tok = train_tokenizer(texts, vocab_size=2048, model_max_length=512)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def make_run(run_dir: Path, base: str, max_length: int) -> None:
    """One checkpoint with random LoRA weights (B not zero) and plausible Adam moments."""
    from clues.model import LoraSettings, attach_lora, base_model_id, load_model

    model, _ = load_model(base)
    model = attach_lora(model, LoraSettings())
    gen = torch.Generator().manual_seed(0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            optimizer.state[p] = {"exp_avg": torch.randn(p.shape, generator=gen) * 1e-3,
                                  "exp_avg_sq": (torch.randn(p.shape, generator=gen) * 1e-3) ** 2}
    meta = {"lr_mean": 1e-4, "base_model": base_model_id(base),
            "config": {"max_length": max_length, "template": "alpaca"},
            "optimizer": {"betas": [0.9, 0.999], "eps": 1e-8}}
    ckpt.save_checkpoint(run_dir, 1, model, optimizer, meta)


def reference_loop(model, encodings, pad_id, names, direction, moments, hyper=AdamHyper()):
    """Batch size 1, loss.backward(), explicit concatenation and formula (the tests' reference)."""
    params = dict(model.named_parameters())
    m = torch.cat([moments[n][0].reshape(-1) for n in names]).double()
    v = torch.cat([moments[n][1].reshape(-1) for n in names]).double()
    scores = []
    for enc in encodings:
        batch = pad_batch([enc], pad_id)
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        per_record_loss(logits, batch["labels"]).sum().backward()
        g = torch.cat([params[n].grad.reshape(-1) for n in names]).double()
        G = (hyper.beta1 * m + (1 - hyper.beta1) * g) / torch.sqrt(hyper.beta2 * v + (1 - hyper.beta2) * g * g + hyper.eps)
        scores.append(float(G @ direction))
    return torch.tensor(scores, dtype=torch.float64)


def plain_forward_backward(scorer: Scorer, encodings):
    """The floor: the same batches, one backward of the summed loss, nothing per record."""
    for _, batch in scorer._batches(encodings):
        scorer.model.zero_grad(set_to_none=True)
        logits = scorer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        per_record_loss(logits, batch["labels"]).sum().backward()


def vmap_per_record_grads(model, blocks, batches):
    """The alternative to hooks: ``torch.func.vmap(grad(loss))`` over the records of each batch.

    The loss is written out without :func:`per_record_loss`'s "no response token" check, because vmap
    cannot run data-dependent Python control flow; otherwise it is the same mean response-token loss.
    """
    from torch.func import functional_call, grad, vmap

    params = {b.name: b.param.detach() for b in blocks}

    def loss_one(p, ids, mask, labels):
        logits = functional_call(model, p, (), {"input_ids": ids[None], "attention_mask": mask[None]}).logits
        shifted, target = logits[0, :-1].float(), labels[1:]
        keep = target != -100
        token = torch.nn.functional.cross_entropy(shifted, target.clamp(min=0), reduction="none")
        return (token * keep).sum() / keep.sum()

    for batch in batches:
        vmap(grad(loss_one), in_dims=(None, 0, 0, 0))(params, batch["input_ids"], batch["attention_mask"], batch["labels"])


def hook_per_record_grads(model, blocks, batches):
    from clues.scoring.per_sample import per_record_gradients

    for batch in batches:
        for _ in per_record_gradients(model, batch, blocks):
            pass


def rss_child(args) -> None:
    """Score ``args.records`` records with ``score_run`` and print the peak RSS (KiB on Linux)."""
    torch.set_num_threads(args.threads)
    data = records(args.records)
    validation = records(16, offset=600)
    anchors = records(10, offset=620)
    started = time.perf_counter()
    score_run(args.run, {"data": data, "anchor": anchors}, validation, ScoreSettings(batch_size=args.batch_size))
    print(json.dumps({"records": args.records, "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "seconds": time.perf_counter() - started}))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="default, smollm2-135m, a local HF folder, or 'random-small'")
    parser.add_argument("--records", type=int, default=48, help="records timed per method and round")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rss", default="1000,8000", help="record counts for the peak-memory runs ('' to skip)")
    parser.add_argument("--rss-max-length", type=int, default=48, help="max_length of the peak-memory runs (time budget)")
    parser.add_argument("--out", default=str(HERE / "results" / "scoring.json"))
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        return rss_child(args)

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="clues-bench-"))
    base = args.model
    if base == "random-small" or (base == "default" and not _default_available()):
        print("default model not shipped yet: using a random 4-layer Llama (hidden 128)" if base == "default" else "")
        base = random_small_model(tmp / "random-small")
        shown = "random-small (4 layers, hidden 128, vocab 2048)"
    else:
        shown = base
    run = tmp / "run"
    make_run(run, base, args.max_length)
    model, tokenizer, meta = load_scoring_model(ckpt.list_checkpoints(run))
    pad_id = tokenizer.pad_token_id
    scorer = Scorer.for_model(model, pad_id, "all", args.batch_size)
    names = [b.name for b in scorer.blocks]
    moments = ckpt.load_moments(ckpt.list_checkpoints(run)[0])
    data = records(args.records)
    encodings = compact_encodings(data, tokenizer, args.max_length, "alpaca")
    val = compact_encodings(records(16, offset=600), tokenizer, args.max_length, "alpaca")
    direction = scorer.validation_gradient(val, [1 / len(val)] * len(val))
    tokens = sum(len(e["input_ids"]) for e in encodings) / len(encodings)

    batches = [b for _, b in scorer._batches(encodings)]
    times = {"engine": [], "loop": [], "fwd_bwd": [], "grads_hooks": [], "grads_vmap": []}
    check = None
    for _ in range(args.rounds):
        t = time.perf_counter(); fast = scorer.score(encodings, direction, "adam", moments); times["engine"].append(time.perf_counter() - t)
        t = time.perf_counter(); slow = reference_loop(model, encodings, pad_id, names, direction, moments); times["loop"].append(time.perf_counter() - t)
        t = time.perf_counter(); plain_forward_backward(scorer, encodings); times["fwd_bwd"].append(time.perf_counter() - t)
        t = time.perf_counter(); hook_per_record_grads(model, scorer.blocks, batches); times["grads_hooks"].append(time.perf_counter() - t)
        t = time.perf_counter(); vmap_per_record_grads(model, scorer.blocks, batches); times["grads_vmap"].append(time.perf_counter() - t)
        check = float(((fast - slow).abs() / slow.abs().clamp(min=1e-30)).max())
    rate = {k: args.records / min(v) for k, v in times.items()}
    result = {
        "command": "python benchmarks/scoring.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": shown, "parameters": sum(p.numel() for p in model.parameters()),
        "lora_parameters": sum(b.numel for b in scorer.blocks), "records": args.records,
        "mean_tokens": round(tokens, 1), "batch_size": args.batch_size, "max_length": args.max_length,
        "threads": args.threads, "rounds": args.rounds, "cpu": _cpu_name(),
        "records_per_s": {k: round(v, 2) for k, v in rate.items()},
        "engine_vs_loop": round(rate["engine"] / rate["loop"], 2),
        "engine_vs_fwd_bwd": round(rate["engine"] / rate["fwd_bwd"], 2),
        "per_record_grads_hooks_vs_vmap": round(rate["grads_hooks"] / rate["grads_vmap"], 2),
        "max_relative_error_engine_vs_loop": check,
    }
    print(f"model {shown}: {args.records} records, mean {tokens:.0f} tokens, batch {args.batch_size}, {args.threads} threads")
    for k in times:
        print(f"  {k:11s} {rate[k]:8.2f} records/s")
    print(f"  engine / loop = {result['engine_vs_loop']:.2f}x   engine / fwd+bwd = {result['engine_vs_fwd_bwd']:.2f}x   "
          f"max rel. error vs loop = {check:.1e}")

    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")  # the timings survive a long memory phase

    rss = {}
    rss_run = tmp / "rss-run"
    if args.rss.strip():
        make_run(rss_run, base, args.rss_max_length)
    for n in [int(x) for x in args.rss.split(",") if x.strip()]:
        cmd = [sys.executable, __file__, "--rss-child", "--run", str(rss_run), "--records", str(n),
               "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rss[n] = row
        print(f"  peak RSS scoring {n:5d} records: {row['maxrss_kib'] / 1024:7.1f} MiB ({row['seconds']:.0f}s)")
    if len(rss) >= 2:
        lo, hi = min(rss), max(rss)
        result["peak_rss_mib"] = {str(n): round(r["maxrss_kib"] / 1024, 1) for n, r in rss.items()}
        result["rss_max_length"] = args.rss_max_length
        result["rss_ratio"] = round(rss[hi]["maxrss_kib"] / rss[lo]["maxrss_kib"], 3)
        print(f"  RSS({hi}) / RSS({lo}) = {result['rss_ratio']:.3f}")
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.machine()


def _default_available() -> bool:
    from clues.model import DEFAULT_DIR

    return (DEFAULT_DIR / "model.safetensors").is_file()


if __name__ == "__main__":
    main()
