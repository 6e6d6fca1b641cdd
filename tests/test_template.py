"""The one prompt template and loss mask: the prompt/response token boundary, truncation, chat mode."""

import pytest

from clues.data import IGNORE_INDEX, encode, encode_all, record_from_dict, render_prompt
from clues.errors import CluesError


def _rec(instruction="Explain inflation.", input="", output="Prices rise over time as money loses value."):
    return record_from_dict({"instruction": instruction, "input": input, "output": output})


def test_alpaca_prompt_variants():
    assert render_prompt(_rec()).endswith("### Instruction:\nExplain inflation.\n\n### Response:\n")
    with_input = render_prompt(_rec(input="in 2022"))
    assert "### Input:\nin 2022\n\n### Response:\n" in with_input
    only_input = render_prompt(_rec(instruction="", input="What is 2+2?"))
    assert "### Instruction:\nWhat is 2+2?\n\n### Response:\n" in only_input


def test_boundary_labels_mask_prompt_exactly(tiny_tokenizer):
    tok = tiny_tokenizer
    record = _rec()
    enc = encode(record, tok, 512)
    prompt_ids = tok(render_prompt(record))["input_ids"]
    response_ids = tok(record.output, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert enc["input_ids"] == prompt_ids + response_ids
    assert enc["labels"][: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert enc["labels"][len(prompt_ids):] == response_ids
    assert enc["truncated"] is None
    # the labelled tokens decode back to exactly the answer (plus end of sequence)
    labelled = [t for t in enc["labels"] if t != IGNORE_INDEX]
    assert tok.decode(labelled[:-1]) == record.output and labelled[-1] == tok.eos_token_id


def test_truncation_keeps_response_and_response_marker(tiny_tokenizer):
    tok = tiny_tokenizer
    record = _rec(input="context " * 200, output="Short answer.")
    enc = encode(record, tok, 64)
    assert len(enc["input_ids"]) == 64 and enc["truncated"] == "prompt"
    response_ids = tok("Short answer.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert enc["labels"][-len(response_ids):] == response_ids
    assert sum(l != IGNORE_INDEX for l in enc["labels"]) == len(response_ids)
    marker = tok("### Response:\n", add_special_tokens=False)["input_ids"]
    prompt_part = enc["input_ids"][: 64 - len(response_ids)]
    assert tok.decode(prompt_part).endswith("Response:\n")
    assert tok.decode(prompt_part[: len(marker)]) == tok.decode(tok(render_prompt(record))["input_ids"][: len(marker)])


def test_truncation_cuts_response_when_it_cannot_fit(tiny_tokenizer):
    enc = encode(_rec(output="word " * 300), tiny_tokenizer, 48)
    assert len(enc["input_ids"]) == 48 and enc["truncated"] == "response"
    assert sum(l != IGNORE_INDEX for l in enc["labels"]) >= 48 - 16


def test_truncations_are_counted(tiny_tokenizer):
    records = [_rec(), _rec(input="x " * 300, output="ok"), _rec(output="y " * 400)]
    encodings, report = encode_all(records, tiny_tokenizer, 160)
    assert len(encodings) == 3
    assert (report.total, report.prompt, report.response) == (3, 1, 1)
    assert "2 of 3 records truncated" in report.summary()


def test_chat_template(tiny_tokenizer):
    tok = tiny_tokenizer
    with pytest.raises(CluesError, match="no chat template"):
        encode(_rec(), tok, 128, template="chat")
    tok = tok.__class__(tokenizer_object=tok.backend_tokenizer, eos_token=tok.eos_token, pad_token=tok.pad_token)
    tok.chat_template = "{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}<|assistant|>"
    record = _rec(input="in 2022")
    enc = encode(record, tok, 256, template="chat")
    prompt = tok("<|user|>Explain inflation.\n\nin 2022\n<|assistant|>", add_special_tokens=False)["input_ids"]
    assert enc["input_ids"][: len(prompt)] == prompt
    assert enc["labels"][: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert enc["labels"][len(prompt)] != IGNORE_INDEX


def test_unknown_template_and_tiny_max_length(tiny_tokenizer):
    with pytest.raises(CluesError, match="unknown template"):
        encode(_rec(), tiny_tokenizer, 128, template="vicuna")
    with pytest.raises(CluesError, match="too small"):
        encode(_rec(), tiny_tokenizer, 8)


def test_a_huge_record_is_cut_before_tokenizing_and_encodes_as_the_whole_text_would(tiny_tokenizer):
    """A record of megabytes: the tokenizer never sees more than max_length * MAX_TOKEN_CHARS characters
    at each end of a field, and the encoding equals the one computed from the whole text by hand
    (prompt: head and the response-marker tail; answer: its head)."""
    import random

    from clues.data.template import MAX_TOKEN_CHARS, cut_prompt

    words = "the loan rate rises when inflation stays high for a year and banks price risk".split()
    rng = random.Random(0)
    text = lambda n: " ".join(rng.choice(words) for _ in range(n))  # noqa: E731
    record = _rec(instruction=text(20), input=text(150_000) + " The last words of the input.", output=text(120_000))
    assert len(record.input) > 4 * 48 * MAX_TOKEN_CHARS
    seen = []

    class Spy:
        """The tiny tokenizer, noting the length of every text it is given."""

        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __call__(self, text, **options):
            seen.append(len(text))
            return self.inner(text, **options)

    short_answer = _rec(instruction=record.instruction, input=record.input, output="Rates rise.")
    for case, max_length, truncated in ((record, 48, "response"), (short_answer, 64, "prompt")):
        seen.clear()
        enc = encode(case, Spy(tiny_tokenizer), max_length)
        assert max(seen) <= 2 * max_length * MAX_TOKEN_CHARS + len(case.instruction) + 400  # both ends, the template
        prompt = tiny_tokenizer(render_prompt(case), verbose=False)["input_ids"]
        response = tiny_tokenizer(case.output, add_special_tokens=False, verbose=False)["input_ids"] + [tiny_tokenizer.eos_token_id]
        if truncated == "response":  # not even the answer fits: a 16-token prompt, the answer's head
            want = cut_prompt(prompt, 16) + response[: max_length - 16]
        else:  # the whole answer, the prompt's head and its response-marker tail
            want = cut_prompt(prompt, max_length - len(response)) + response
        assert enc["truncated"] == truncated and enc["input_ids"] == want
