"""Records/s of forward + backward in the LoRA fine-tuning regime, the number the issue sizes models by.

One step = a batch of ``batch`` records of ``tokens`` tokens through the model with a LoRA adapter
(the paper's r=16 on the architecture's q/v modules), the full causal-LM loss, and backward. Only the
adapter trains, but backward still runs through every layer, as in training and in per-sample
gradient scoring.

    python -m clues.model.throughput [--model default] [--batch 16] [--tokens 128] [--steps 5] [--threads N]

On a CPU shared with other jobs two torch threads can be many times slower than one (each thread
waits for the other at every barrier), so the wall-clock figure is a lower bound; ``--threads 1``
together with the CPU time per step shows what the cores can do.
"""

from __future__ import annotations

import argparse
import time

import torch

from clues.model.lora import LoraSettings, attach_lora


def records_per_second(model, batch: int = 16, tokens: int = 128, steps: int = 5, warmup: int = 1, seed: int = 0) -> float:
    """Median records/s over ``steps`` timed steps (after ``warmup``), on random token ids.

    ``model`` should already carry its LoRA adapter; the median resists the noise of a shared CPU.
    """
    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, tokens), generator=generator)
    mask = torch.ones_like(ids)
    model.train()
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        out = model(input_ids=ids, attention_mask=mask, labels=ids)
        out.loss.backward()
        model.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    model.eval()
    times.sort()
    return batch / times[len(times) // 2]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from clues.model.loading import load_model

    model, _ = load_model(args.model)
    model = attach_lora(model, LoraSettings())
    cpu_start = time.process_time()
    rate = records_per_second(model, args.batch, args.tokens, args.steps)
    cpu_per_step = (time.process_time() - cpu_start) / (args.steps + 1)
    print(
        f"{args.model}: {rate:.1f} records/s forward+backward, "
        f"{args.batch / cpu_per_step:.1f} records per CPU-second "
        f"(batch {args.batch} x {args.tokens} tokens, LoRA r=16, torch threads {torch.get_num_threads()})"
    )


if __name__ == "__main__":
    main()
