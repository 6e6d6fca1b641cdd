"""Records, validation, the prompt template and loss mask, and the mixed-quality benchmark builder."""

from clues.data.records import Record, check_file, derived_id, load_many, load_records, record_from_dict, record_to_json
from clues.data.template import IGNORE_INDEX, TruncationReport, encode, encode_all, render_prompt

__all__ = [
    "IGNORE_INDEX",
    "Record",
    "TruncationReport",
    "check_file",
    "derived_id",
    "encode",
    "encode_all",
    "load_many",
    "load_records",
    "record_from_dict",
    "record_to_json",
    "render_prompt",
]
