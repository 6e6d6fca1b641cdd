"""The one prompt template and the one loss mask of the project.

Training, scoring, baselines and evaluation all call :func:`encode`, so the prompt a record is scored
with is the prompt it was trained with, and only response tokens ever carry a label (the authors'
scripts mixed templates, masks and precisions between stages; CLUES.md section 6).

The prompt and the response are tokenized separately and concatenated, so the prompt/response token
boundary is exact: no BPE merge can straddle it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from clues.data.records import Record
from clues.errors import CluesError

IGNORE_INDEX = -100

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)

TEMPLATES = ("alpaca", "chat")
# Tokens per record everywhere a caller does not say (training, scoring, baselines, evaluation).
DEFAULT_MAX_LENGTH = 256

# When the prompt must be cut, keep its last tokens: they hold the "### Response:" marker (or the
# chat template's assistant header) that tells the model an answer starts here.
PROMPT_TAIL_TOKENS = 8
# A response is only cut when even this much prompt cannot fit beside it.
MIN_PROMPT_TOKENS = 16


def render_prompt(record: Record, tokenizer=None, template: str = "alpaca") -> str:
    """The prompt text of a record (everything before the response)."""
    if template == "alpaca":
        if record.instruction.strip() and record.input.strip():
            return ALPACA_WITH_INPUT.format(instruction=record.instruction, input=record.input)
        return ALPACA_NO_INPUT.format(instruction=record.instruction.strip() or record.input)
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise CluesError("template 'chat' asked, but the tokenizer has no chat template; use --template alpaca")
        user = "\n\n".join(part for part in (record.instruction, record.input) if part.strip())
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
    raise CluesError(f"unknown template {template!r}; choose one of {', '.join(TEMPLATES)}")


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    # verbose=False: the full text may exceed model_max_length before `encode` truncates it (reported there).
    return list(tokenizer(text, add_special_tokens=special, verbose=False)["input_ids"])


def prompt_tokens(record: Record, tokenizer, template: str = "alpaca") -> list[int]:
    """The record's whole prompt as token ids (the alpaca prompt starts with the tokenizer's special tokens;
    the chat template writes its own)."""
    return _ids(tokenizer, render_prompt(record, tokenizer, template), special=template == "alpaca")


def response_tokens(record: Record, tokenizer) -> list[int]:
    """The record's answer as token ids, end-of-sequence included: what the loss is taken over."""
    return _ids(tokenizer, record.output, special=False) + [tokenizer.eos_token_id]


def cut_prompt(prompt: list[int], budget: int) -> list[int]:
    """Shorten the prompt to ``budget`` tokens, keeping its head and its response-marker tail."""
    if len(prompt) <= budget:
        return prompt
    tail = min(PROMPT_TAIL_TOKENS, budget // 2)
    return prompt[: budget - tail] + prompt[len(prompt) - tail :]


# No token of a real tokenizer spans more characters than this (SmolLM2's longest: 81). A field longer
# than max_length * MAX_TOKEN_CHARS characters cannot fit anyway; it is shortened before tokenizing.
MAX_TOKEN_CHARS = 256


def bounded(record: Record, max_length: int) -> Record:
    """``record`` with every field cut to what ``max_length`` tokens can use, so one huge record costs
    no more memory than a long one. The prompt keeps as many characters at each end as ``max_length``
    tokens could span, so its head and its tail (what :func:`cut_prompt` keeps) tokenize as before;
    the answer keeps its head (a cut answer keeps its head too)."""
    cap = max_length * MAX_TOKEN_CHARS

    def ends(text: str) -> str:
        return text if len(text) <= 2 * cap else text[:cap] + text[-cap:]

    if max(len(record.instruction), len(record.input), len(record.output)) <= cap:
        return record
    return replace(record, instruction=ends(record.instruction), input=ends(record.input), output=record.output[:cap])


def encode(record: Record, tokenizer, max_length: int, template: str = "alpaca") -> dict:
    """Token ids and labels of one record: ``labels`` is -100 on every prompt token.

    Returns ``{"input_ids", "labels", "truncated"}``; ``truncated`` is ``None``, ``"prompt"`` (the
    prompt was shortened, the whole response kept) or ``"response"`` (the response itself was cut).
    Truncation keeps the response whenever the response plus a minimal prompt fits.
    """
    if max_length < MIN_PROMPT_TOKENS + 1:
        raise CluesError(f"max_length={max_length} is too small; need at least {MIN_PROMPT_TOKENS + 1} tokens")
    if tokenizer.eos_token_id is None:
        raise CluesError("the tokenizer has no end-of-sequence token; a response could never end")
    record = bounded(record, max_length)
    prompt = prompt_tokens(record, tokenizer, template)
    response = response_tokens(record, tokenizer)
    truncated = None
    if len(prompt) + len(response) > max_length:
        if len(response) + min(len(prompt), MIN_PROMPT_TOKENS) <= max_length:
            prompt = cut_prompt(prompt, max_length - len(response))
            truncated = "prompt"
        else:
            prompt = cut_prompt(prompt, min(len(prompt), MIN_PROMPT_TOKENS))
            response = response[: max_length - len(prompt)]
            truncated = "response"
    return {
        "input_ids": prompt + response,
        "labels": [IGNORE_INDEX] * len(prompt) + response,
        "truncated": truncated,
    }


@dataclass
class TruncationReport:
    """Counts of truncated records, so no truncation is ever silent."""

    total: int = 0
    prompt: int = 0
    response: int = 0
    ids: list[str] = field(default_factory=list)

    def add(self, record_id: str, truncated: str | None) -> None:
        self.total += 1
        if truncated == "prompt":
            self.prompt += 1
        elif truncated == "response":
            self.response += 1
        if truncated:
            self.ids.append(record_id)

    def summary(self) -> str:
        if not (self.prompt or self.response):
            return f"no record truncated ({self.total} encoded)"
        return (
            f"{self.prompt + self.response} of {self.total} records truncated "
            f"({self.prompt} prompt only, {self.response} response cut)"
        )


def encode_all(records, tokenizer, max_length: int, template: str = "alpaca", console=None):
    """Encode many records; return ``(encodings, TruncationReport)`` and print the report if any cut."""
    report = TruncationReport()
    encodings = []
    for record in records:
        enc = encode(record, tokenizer, max_length, template)
        report.add(record.id, enc["truncated"])
        encodings.append(enc)
    if console is not None and (report.prompt or report.response):
        console.print(f"[yellow]truncation (max_length={max_length}): {report.summary()}[/yellow]")
    return encodings, report


def padding_id(tokenizer) -> int:
    """The id right padding uses: the tokenizer's pad token, else its end-of-sequence token.

    Which one never matters for a result (padding is masked out of every loss), only that it is a
    valid id.
    """
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
