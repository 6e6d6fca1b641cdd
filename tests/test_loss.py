import torch

from clues.data import encode, record_from_dict
from clues.data.batching import length_sorted_batches, pad_batch
from clues.loss import batch_record_losses, per_record_loss, reduce_tokens


def _records():
    texts = [("Define APR.", "", "Annual percentage rate."), ("Translate", "bonjour", "hello there, my friend"),
             ("Q", "What is a stock?", "A share of ownership in a company, traded on an exchange.")]
    return [record_from_dict({"instruction": i, "input": x, "output": o}) for i, x, o in texts]


def test_batched_loss_equals_a_plain_forward_of_each_record(tiny_llama):
    """The padded, response-only batch against the obvious computation: each record alone, unpadded,
    full logits, cross-entropy of every token whose label is a response token, averaged by hand."""
    model, tok = tiny_llama
    encs = [encode(r, tok, 64) for r in _records()]
    batched = batch_record_losses(model, pad_batch(encs, tok.pad_token_id))
    expected = []
    with torch.no_grad():
        for e in encs:
            ids = torch.tensor([e["input_ids"]])
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
            terms = [-log_probs[t - 1, e["input_ids"][t]] for t in range(1, len(e["input_ids"])) if e["labels"][t] != -100]
            assert terms, "every record has response tokens"
            expected.append(sum(terms) / len(terms))
    torch.testing.assert_close(batched.double(), torch.stack(expected), rtol=1e-5, atol=1e-5)


def test_loss_ignores_prompt_tokens(tiny_llama):
    """Changing a prompt-token label position's content changes inputs, but a label of -100 never counts."""
    logits = torch.randn(1, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, -100]])
    expected = (torch.nn.functional.cross_entropy(logits[0, 1], torch.tensor(3))
                + torch.nn.functional.cross_entropy(logits[0, 2], torch.tensor(4))) / 2
    torch.testing.assert_close(per_record_loss(logits, labels)[0], expected)


def test_tail_reduction_is_the_mean_of_each_rows_worst_tenth():
    """Against a plain per-row sort; rows of different lengths in one batch, a row shorter than ten tokens."""
    generator = torch.Generator().manual_seed(0)
    token_loss = torch.rand(3, 25, generator=generator)
    mask = torch.zeros(3, 25, dtype=torch.bool)
    mask[0, :25] = True  # 25 tokens: the worst 2
    mask[1, 3:7] = True  # 4 tokens: the worst 1
    mask[2, 1:21] = True  # 20 tokens: the worst 2
    expected = []
    for row, keep in zip(token_loss, mask):
        values = sorted(row[keep].tolist(), reverse=True)
        worst = values[: max(1, len(values) // 10)]
        expected.append(sum(worst) / len(worst))
    torch.testing.assert_close(reduce_tokens(token_loss, mask, "tail"), torch.tensor(expected))
    torch.testing.assert_close(reduce_tokens(token_loss, mask, "mean"),
                               torch.tensor([row[keep].mean().item() for row, keep in zip(token_loss, mask)]))
    import pytest

    with pytest.raises(ValueError, match="reduction"):
        reduce_tokens(token_loss, mask, "median")


def test_tail_of_the_response_only_path_equals_the_full_logits(tiny_llama):
    model, tok = tiny_llama
    encs = [encode(r, tok, 64) for r in _records()]
    batch = pad_batch(encs, tok.pad_token_id)
    with torch.no_grad():
        full = per_record_loss(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                               batch["labels"], "tail")
        fast = batch_record_losses(model, batch, "tail")
        single = torch.stack([batch_record_losses(model, pad_batch([e], tok.pad_token_id), "tail")[0] for e in encs])
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast, single, rtol=1e-5, atol=1e-6)
    assert bool((fast >= batch_record_losses(model, batch) - 1e-6).all())


def test_record_without_response_is_an_error():
    import pytest

    with pytest.raises(ValueError):
        per_record_loss(torch.randn(1, 3, 5), torch.full((1, 3), -100))


def test_length_sorted_batches_cover_all():
    batches = length_sorted_batches([5, 1, 3, 3, 9], 2)
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]
    assert batches[0] == [1, 2]
