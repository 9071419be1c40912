"""The records that cross modules: their invariants, and the dicts they write."""

from __future__ import annotations

import json

import pytest

from pipeline.engine.dead_letters import dead_letter, internal_error, jsonl
from pipeline.errors import CaseError
from pipeline.schema.records import BuildResult, CaseResult, DeadLetter, FileReceipt

SHA = "ab" * 32


def test_a_dead_letter_writes_the_keys_in_their_historic_order():
    err = CaseError("read", "geometry.mismatch", "shape (2, 2) != (2, 3)", "case1/ct.nii.gz")
    letter = dead_letter("k1", "case1", err, "train-00000-of-00001")
    assert list(letter) == ["case_key", "source", "stage", "reason", "error_type", "message", "unit"]
    assert letter["source"] == "case1/ct.nii.gz" and letter["error_type"] == "CaseError"
    assert jsonl([letter]) == (json.dumps(letter, sort_keys=True, ensure_ascii=False) + "\n").encode()


def test_an_internal_error_names_the_exception_type():
    try:
        raise KeyError("x")
    except KeyError as exc:
        letter = dead_letter("k1", "case1", internal_error("qa", exc))
    assert letter["reason"] == "internal.KeyError" and letter["error_type"] == "KeyError"
    assert letter["unit"] == ""


@pytest.mark.parametrize("make, message", [
    (lambda: FileReceipt("a.parquet", "xyz", 1), "sha256 must be 64 lowercase hex digits, got 'xyz'"),
    (lambda: FileReceipt("a.parquet", SHA, -1), "bytes must be >= 0, got -1"),
    (lambda: FileReceipt("a.parquet", SHA, 1, -2), "rows must be None or >= 0, got -2"),
    (lambda: DeadLetter("k", "s", "", "r", "E", "m"), "stage='' reason='r'"),
    (lambda: DeadLetter("k", "s", "read", "r", "E", 3), "message must be a str, got int 3"),
    (lambda: CaseResult({}, ""), "content must be a non-empty digest, got ''"),
    (lambda: CaseResult([], "d"), "rows must map config -> rows, got list"),
    (lambda: BuildResult("o", {}, 1.0, 1.5, 0), "reject_fraction must be in [0, 1], got 1.5"),
    (lambda: BuildResult("o", {}, 1.0, 0.0, 2), "exit_code must be 0, 3 or 4, got 2"),
], ids=["sha", "bytes", "rows", "stage", "message-type", "content", "rows-type", "fraction", "exit"])
def test_a_record_that_breaks_its_contract_is_refused_with_the_value_found(make, message):
    with pytest.raises((ValueError, TypeError)) as info:
        make()
    assert message in str(info.value)


def test_a_file_receipt_as_dict_is_the_manifest_entry():
    assert FileReceipt("a.parquet", SHA, 10, 3).as_dict() == {"sha256": SHA, "bytes": 10, "rows": 3}
