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
