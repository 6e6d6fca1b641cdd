"""docs/privacy.md lists every message kind; the runs' own tests check every field that crosses
against it (conftest.assert_crossings_documented, called on real boundary logs)."""

from __future__ import annotations

from clues import protocol
from conftest import assert_crossings_documented, documented_crossings


def test_every_message_kind_has_rows_and_every_row_names_a_real_kind():
    fields, tensors = documented_crossings()
    kinds = {kind for _, kind, _ in fields} | {kind for _, kind in tensors}
    assert kinds == set(protocol.KINDS)


def test_an_undocumented_field_fails_the_check():
    """The guard itself: a crossing with a field the page does not list is refused."""
    import pytest

    good = {"direction": "silo->server", "kind": protocol.SELECTION, "meta_keys": ["kept", "total"], "tensor_keys": 0}
    assert_crossings_documented([good])
    for bad in ({**good, "meta_keys": ["kept", "record_ids"]}, {**good, "tensor_keys": 3}):
        with pytest.raises(AssertionError, match="docs/privacy.md"):
            assert_crossings_documented([bad])
