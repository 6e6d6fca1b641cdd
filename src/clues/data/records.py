"""Instruction records: loading and validation of JSONL and JSON files.

Every stage of the pipeline loads user data through :func:`load_records`, so every stage reports bad
input with the same ``FILE:LINE: FIELD: reason`` messages as ``clues data check``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from clues.errors import DataError, Problem

TEXT_FIELDS = ("instruction", "input", "output")
MAX_DEPTH = 100  # nesting levels a record's field may have (JSON itself recurses ~1000 deep)
TOO_DEEP = "invalid JSON: nested too deeply"
_SURROGATE = re.compile("[\ud800-\udfff]")
OPTIONAL_STRING_FIELDS = ("id", "domain", "language")


@dataclass(frozen=True)
class Record:
    """One instruction record.

    ``raw`` is the object exactly as it was read; writing a record back writes ``raw``, so fields the
    project does not know (``source``, ``category``...) survive unchanged, and a derived id is never
    injected into the user's data.
    """

    id: str
    instruction: str
    input: str
    output: str
    domain: str | None = None
    language: str | None = None
    raw: dict = field(default_factory=dict, compare=False, repr=False)
    file: str = field(default="", compare=False, repr=False)
    line: int = field(default=0, compare=False, repr=False)

    @property
    def prompt_key(self) -> tuple[str, str]:
        """What makes two records 'the same question': used for disjointness checks."""
        return (self.instruction.strip(), self.input.strip())


def derived_id(instruction: str, input: str, output: str) -> str:
    """A stable id from the content, for records without one (same content, same id, on any machine)."""
    digest = hashlib.sha256("\x1f".join((instruction, input, output)).encode("utf-8")).hexdigest()
    return f"rec-{digest[:16]}"


def record_from_dict(obj: dict, file: str = "<memory>", line: int = 0) -> Record:
    """Build a validated :class:`Record`; raise :class:`DataError` listing every problem in ``obj``."""
    problems = _validate_object(obj, file, line)
    if problems:
        raise DataError(problems)
    return _make_record(obj, file, line)


def _make_record(obj: dict, file: str, line: int) -> Record:
    instruction = obj.get("instruction", "") or ""
    input_ = obj.get("input", "") or ""
    output = obj["output"]
    rid = obj.get("id")
    if rid is None:
        rid = derived_id(instruction, input_, output)
    return Record(
        id=rid,
        instruction=instruction,
        input=input_,
        output=output,
        domain=obj.get("domain"),
        language=obj.get("language"),
        raw=obj,
        file=file,
        line=line,
    )


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _text_problem(value: Any) -> str | None:
    """Why ``value`` (a field of a record, nested arrays and objects included) cannot be kept as
    text, or None. JSON allows escapes like ``"\\ud800"`` that decode to half a UTF-16 pair, which no
    UTF-8 file, tokenizer or hash can take; and a value nested deeper than :data:`MAX_DEPTH` would
    break writing it back. Walked without recursion, so depth itself cannot crash the check."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels"
        if isinstance(item, dict):
            stack.extend((part, depth + 1) for pair in item.items() for part in pair)
        elif isinstance(item, list):
            stack.extend((part, depth + 1) for part in item)
        elif isinstance(item, str) and (found := _SURROGATE.search(item)):
            return f"lone surrogate \\u{ord(found.group()):04x} at character {found.start() + 1}: not valid Unicode text"
    return None


def _validate_object(obj: Any, file: str, line: int) -> list[Problem]:
    if not isinstance(obj, dict):
        return [Problem(file, line, "-", f"expected a JSON object, got {_type_name(obj)}")]
    unusable = [Problem(file, line, str(key) if _text_problem(key) is None else "-", reason)
                for key, value in obj.items() if (reason := _text_problem(key) or _text_problem(value))]
    if unusable:  # the checks below would hash or print this text
        return unusable
    problems = []
    output = obj.get("output")
    if "output" not in obj:
        problems.append(Problem(file, line, "output", "missing required field"))
    elif not isinstance(output, str):
        problems.append(Problem(file, line, "output", f"expected a string, got {_type_name(output)}"))
    elif not output.strip():
        problems.append(Problem(file, line, "output", "empty string"))
    # instruction and input may be absent or null (= empty), but at least one must carry text.
    typed_ok = True
    for name in ("instruction", "input"):
        value = obj.get(name)
        if value is not None and not isinstance(value, str):
            problems.append(Problem(file, line, name, f"expected a string, got {_type_name(value)}"))
            typed_ok = False
    if typed_ok and not any((obj.get(name) or "").strip() for name in ("instruction", "input")):
        problems.append(Problem(file, line, "instruction", "missing or empty (need a non-empty instruction or input)"))
    for name in OPTIONAL_STRING_FIELDS:
        if name not in obj:
            continue
        if not isinstance(obj[name], str):
            problems.append(Problem(file, line, name, f"expected a string, got {_type_name(obj[name])}"))
        elif not obj[name].strip():
            problems.append(Problem(file, line, name, "empty string"))
    return problems


def _line_of(data: bytes | str, offset: int) -> int:
    return data.count(b"\n" if isinstance(data, bytes) else "\n", 0, offset) + 1


def _iter_jsonl(path: str, data: bytes) -> Iterator[tuple[int, Any] | Problem]:
    for number, raw_line in enumerate(data.split(b"\n"), start=1):
        if not raw_line.strip():
            continue
        try:
            text = raw_line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield Problem(path, number, "-", f"invalid UTF-8 (byte {exc.start + 1} of the line)")
            continue
        try:
            yield number, json.loads(text)
        except json.JSONDecodeError as exc:
            yield Problem(path, number, "-", f"invalid JSON: {exc.msg} (column {exc.colno})")
        except RecursionError:
            yield Problem(path, number, "-", TOO_DEEP)


_WHITESPACE = " \t\r\n"


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WHITESPACE:
        pos += 1
    return pos


def _iter_array(text: str, pos: int, path: str) -> Iterator[tuple[int, Any]]:
    """Yield (line, element) of the JSON array starting at ``text[pos] == '['``.

    The whole document already parsed, so this walk only recovers each element's line number.
    """
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, pos + 1)
    if text[pos] == "]":
        return
    while True:
        pos = _skip_ws(text, pos)
        value, end = decoder.raw_decode(text, pos)
        yield _line_of(text, pos), value
        pos = _skip_ws(text, end)
        if text[pos] == "]":
            return
        pos += 1  # the comma


def _find_key_value(text: str, key: str) -> int:
    """Offset of the value of top-level ``key`` in the JSON object document ``text``."""
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, _skip_ws(text, 0) + 1)
    while text[pos] != "}":
        name, pos = decoder.raw_decode(text, pos)
        pos = _skip_ws(text, _skip_ws(text, pos) + 1)  # the colon
        if name == key:
            return pos
        _, pos = decoder.raw_decode(text, pos)
        pos = _skip_ws(text, pos)
        if text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
    raise KeyError(key)


def _iter_json(path: str, data: bytes) -> Iterator[tuple[int, Any] | Problem]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        yield Problem(path, _line_of(data, exc.start), "-", "invalid UTF-8")
        return
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        yield Problem(path, exc.lineno, "-", f"invalid JSON: {exc.msg} (column {exc.colno})")
        return
    except RecursionError:
        yield Problem(path, 1, "-", TOO_DEEP)
        return
    if isinstance(document, list):
        yield from _iter_array(text, _skip_ws(text, 0), path)
    elif isinstance(document, dict) and isinstance(document.get("instances"), list):
        yield from _iter_array(text, _find_key_value(text, "instances"), path)
    elif isinstance(document, dict) and "instances" in document:
        line = _line_of(text, _find_key_value(text, "instances"))
        yield Problem(path, line, "instances", f"expected an array, got {_type_name(document['instances'])}")
    else:
        yield Problem(path, 1, "-", "expected a JSON array of records or an object with an 'instances' array")


def _is_json_document(path: str, data: bytes) -> bool:
    """JSON (an array, or an object with ``instances``) versus JSONL: by extension, else by content."""
    suffix = Path(path).suffix.lower()
    if suffix in (".json", ".jsonl", ".ndjson"):
        return suffix == ".json"
    head = data.lstrip()[:1]
    if head == b"[":
        return True
    try:
        return head == b"{" and "instances" in json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False


def check_file(path: str | os.PathLike) -> tuple[list[Record], list[Problem]]:
    """Read and validate one file; return the valid records and every problem found (never raises for data)."""
    path = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return [], [Problem(path, 0, "-", "no such file")]
    except IsADirectoryError:
        return [], [Problem(path, 0, "-", "is a directory, expected a JSONL or JSON file")]
    if not data.strip():
        return [], [Problem(path, 1, "-", "empty file: no records")]
    items = _iter_json(path, data) if _is_json_document(path, data) else _iter_jsonl(path, data)
    records: list[Record] = []
    problems: list[Problem] = []
    first_line_of_id: dict[str, int] = {}
    seen_any = False
    for item in items:
        if isinstance(item, Problem):
            problems.append(item)
            seen_any = True
            continue
        line, obj = item
        seen_any = True
        found = _validate_object(obj, path, line)
        if found:
            problems.extend(found)
            continue
        record = _make_record(obj, path, line)
        if record.id in first_line_of_id:
            what = "duplicate id" if "id" in obj else "duplicate record (same content, same derived id)"
            problems.append(Problem(path, line, "id", f"{what} {record.id!r} (first at line {first_line_of_id[record.id]})"))
            continue
        first_line_of_id[record.id] = line
        records.append(record)
    if not seen_any:
        problems.append(Problem(path, 1, "-", "no records"))
    return records, problems


def load_records(path: str | os.PathLike) -> list[Record]:
    """Load a JSONL or JSON file of instruction records; raise :class:`DataError` with every problem."""
    records, problems = check_file(path)
    if problems:
        raise DataError(problems)
    return records


def load_many(paths: Iterable[str | os.PathLike]) -> list[Record]:
    """Load several files, reporting the problems of all of them at once; ids must be unique across files."""
    records: list[Record] = []
    problems: list[Problem] = []
    seen: dict[str, Record] = {}
    for path in paths:
        found, bad = check_file(path)
        problems.extend(bad)
        for record in found:
            if record.id in seen:
                first = seen[record.id]
                problems.append(Problem(record.file, record.line, "id", f"duplicate id {record.id!r} (first at {first.file}:{first.line})"))
                continue
            seen[record.id] = record
            records.append(record)
    if problems:
        raise DataError(problems)
    return records


def shared_flags(records: Iterable[Record], public: Iterable[Record]) -> list[bool]:
    """Per record of ``records``: does it share an id or its content (instruction, input, output,
    stripped) with a record of ``public``? A public set overlapping a silo biases scores, threshold
    and test loss."""
    content = lambda r: (r.instruction.strip(), r.input.strip(), r.output.strip())  # noqa: E731
    public = list(public)
    ids, contents = {r.id for r in public}, {content(r) for r in public}
    return [r.id in ids or content(r) in contents for r in records]



def record_to_json(record: Record) -> dict:
    """The record as it should be written back: the original object, untouched."""
    return record.raw if record.raw else {
        k: v
        for k, v in (
            ("id", record.id),
            ("instruction", record.instruction),
            ("input", record.input),
            ("output", record.output),
            ("domain", record.domain),
            ("language", record.language),
        )
        if v is not None
    }
