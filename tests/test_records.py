"""Loaders on good and bad files: every problem reported as FILE:LINE: FIELD: reason."""

import json

import pytest

from clues.data import check_file, derived_id, load_many, load_records, record_to_json
from clues.errors import DataError


def _messages(path):
    return [str(p) for p in check_file(path)[1]]


def test_jsonl_good_file_keeps_extra_fields(tmp_path):
    path = tmp_path / "a.jsonl"
    rows = [{"id": "x1", "instruction": "Say hi", "input": "", "output": "hi", "source": "s", "extra": [1, 2]},
            {"instruction": "", "input": "2+2?", "output": "4", "domain": "math", "language": "en"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    records = load_records(path)
    assert [r.id for r in records] == ["x1", derived_id("", "2+2?", "4")]
    assert record_to_json(records[0]) == rows[0]
    assert record_to_json(records[1]) == rows[1]  # no derived id injected into the user's data
    assert records[1].domain == "math" and records[1].line == 2


def test_derived_id_is_stable_and_content_based():
    assert derived_id("a", "b", "c") == derived_id("a", "b", "c")
    assert derived_id("a", "b", "c") != derived_id("a", "b", "d")
    assert derived_id("ab", "", "c") != derived_id("a", "b", "c")


@pytest.mark.parametrize("layout", ["array", "instances"])
def test_json_layouts_with_line_numbers(tmp_path, layout):
    rows = [{"instruction": "q1", "output": "a1"}, {"instruction": "q2", "output": ""}]
    body = json.dumps(rows, indent=2) if layout == "array" else json.dumps({"meta": {"v": 1}, "instances": rows}, indent=2)
    path = tmp_path / "d.json"
    path.write_text(body, encoding="utf-8")
    records, problems = check_file(path)
    assert len(records) == 1
    expected_line = body.splitlines().index(next(l for l in body.splitlines() if '"q2"' in l)) + 1
    # the problem points at the line where the bad record starts
    assert len(problems) == 1 and problems[0].field == "output" and problems[0].reason == "empty string"
    assert abs(problems[0].line - expected_line) <= 1


def test_every_error_message(tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = [
        '{"instruction": "ok", "output": "fine", "id": "a"}',   # 1 good
        '{"instruction": "ok", "output": "dup", "id": "a"}',    # 2 duplicate id
        '{"instruction": "ok"',                                 # 3 bad JSON
        '{"instruction": "ok"}',                                # 4 missing output
        '{"instruction": "ok", "output": "  "}',                # 5 empty output
        '{"instruction": 3, "output": "x"}',                    # 6 wrong type
        '{"instruction": "", "input": "", "output": "x"}',      # 7 no instruction nor input
        '[1, 2]',                                               # 8 not an object
        '{"instruction": "ok", "output": "x", "id": 7}',        # 9 id wrong type
        '{"instruction": "ok", "output": "x", "domain": null}', # 10 domain wrong type
    ]
    raw = ("\n".join(lines) + "\n").encode() + b'{"instruction": "\xff", "output": "x"}\n'  # 11 invalid UTF-8
    path.write_bytes(raw)
    got = _messages(path)
    p = str(path)
    assert got == [
        f"{p}:2: id: duplicate id 'a' (first at line 1)",
        f"{p}:3: -: invalid JSON: Expecting ',' delimiter (column 21)",
        f"{p}:4: output: missing required field",
        f"{p}:5: output: empty string",
        f"{p}:6: instruction: expected a string, got int",
        f"{p}:7: instruction: missing or empty (need a non-empty instruction or input)",
        f"{p}:8: -: expected a JSON object, got array",
        f"{p}:9: id: expected a string, got int",
        f"{p}:10: domain: expected a string, got null",
        f"{p}:11: -: invalid UTF-8 (byte 18 of the line)",
    ]
    with pytest.raises(DataError) as err:
        load_records(path)
    assert str(err.value).splitlines() == got


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n  \n")
    assert _messages(empty) == [f"{empty}:1: -: empty file: no records"]
    assert _messages(tmp_path / "nope.jsonl") == [f"{tmp_path / 'nope.jsonl'}:0: -: no such file"]
    arr = tmp_path / "e.json"
    arr.write_text("[]")
    assert _messages(arr) == [f"{arr}:1: -: no records"]


def test_json_document_errors(tmp_path):
    bad = tmp_path / "b.json"
    bad.write_text('[\n {"instruction": "a", "output": "b"},\n {"instruction": }\n]')
    assert _messages(bad) == [f"{bad}:3: -: invalid JSON: Expecting value (column 18)"]
    wrong = tmp_path / "w.json"
    wrong.write_text('{"instances": {"a": 1}}')
    assert _messages(wrong) == [f"{wrong}:1: instances: expected an array, got object"]
    bad_utf8 = tmp_path / "u.json"
    bad_utf8.write_bytes(b'[\n{"instruction": "a", "output": "\xfe"}]')
    assert _messages(bad_utf8) == [f"{bad_utf8}:2: -: invalid UTF-8"]


def test_duplicate_content_without_ids(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": "b"}\n')
    (problem,) = check_file(path)[1]
    assert problem.line == 2 and problem.field == "id" and "duplicate record" in problem.reason


def test_load_many_checks_ids_across_files(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"id": "k", "instruction": "a", "output": "b"}\n')
    b.write_text('{"id": "k", "instruction": "c", "output": "d"}\n')
    with pytest.raises(DataError, match=r"b.jsonl:1: id: duplicate id 'k' \(first at .*a.jsonl:1\)"):
        load_many([a, b])


def test_cli_check_exit_codes(tmp_path):
    from typer.testing import CliRunner

    from clues.cli import app

    good = tmp_path / "g.jsonl"
    good.write_text('{"instruction": "a", "output": "b"}\n')
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"instruction": "a"}\n')
    runner = CliRunner()
    ok = runner.invoke(app, ["data", "check", str(good)])
    assert ok.exit_code == 0, ok.output
    fail = runner.invoke(app, ["data", "check", str(good), str(bad)])
    assert fail.exit_code == 1
    assert f"{bad}:1: output: missing required field" in fail.output
