"""Dead letters: cases that could not become rows, recorded instead of crashing the build.

A dead letter is a :class:`~pipeline.schema.records.DeadLetter`; it travels (from a kind's
``render``, through the Beam tag, into the unit's part file) as the record's
``to_json()`` dict.  Each unit writes its own parts, ``dead_letters/units/<unit>.<stage>.jsonl``;
the launcher merges them with the discovery rejects into ``dead_letters/dead_letters.jsonl``
(:func:`merge_dead_letters`).  Files hold one JSON object a line, keys sorted, records in
:func:`sort_dead` order, so the same failures give the same bytes.  ``dead_letters/`` is
operator-only: the one place a source path appears.
"""

from __future__ import annotations

import hashlib
import json
import traceback
from collections import Counter
from collections.abc import Iterable, Sequence

from pipeline.engine.units import UnitRef
from pipeline.errors import CaseError
from pipeline.io import shards
from pipeline.schema.layout import DEAD_LETTERS_FILE
from pipeline.schema.records import DeadLetter


def dead_letter(case_key: str, source: str, err: CaseError, unit: str = "") -> dict:
    """A dead-letter record for ``err`` (its path, else ``source``), as written to file."""
    return DeadLetter(
        case_key=case_key,
        source=err.path or source,
        stage=err.stage,
        reason=err.reason,
        error_type=type(err.__cause__).__name__ if err.__cause__ else "CaseError",
        message=err.message,
        unit=unit,
    ).to_json()


def internal_error(stage: str, exc: Exception) -> CaseError:
    """A CaseError for an unforeseen exception: never crash the build on one case."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {tb[-1].name}:{tb[-1].lineno}" if tb else ""
    err = CaseError(stage, f"internal.{type(exc).__name__}", f"{type(exc).__name__}: {exc}{where}")
    err.__cause__ = exc
    return err


def stage_counts(inputs: int, rejected: Counter) -> dict:
    """A stage's ``{inputs, accepted, rejected, rejected_by_reason}`` from its rejections."""
    n = sum(rejected.values())
    return {"inputs": inputs, "accepted": inputs - n, "rejected": n,
            "rejected_by_reason": dict(sorted(rejected.items()))}


def jsonl(records: Iterable[dict]) -> bytes:
    """One JSON object a line (keys sorted, UTF-8 kept), in the given order."""
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records).encode()


def sort_dead(letters: Iterable[dict]) -> list[dict]:
    """Dead letters in file order: stage, case key, source, reason, message."""
    return sorted(letters, key=lambda d: (d["stage"], d["case_key"], d["source"], d["reason"],
                                          d["message"]))


def merge_dead_letters(output: str, refs: Sequence[UnitRef], rejects: list[dict]) -> dict:
    """``dead_letters/dead_letters.jsonl`` from discovery rejects and every unit's parts;
    returns the file entries of the merged file and of the parts (all operator-only)."""
    letters = list(rejects)
    files = {}
    for ref in refs:
        for stage in ("extract", "qa"):
            rel = ref.dead_part(stage)
            if shards.exists(output, rel):
                data = shards.read_bytes(output, rel)
                part = [json.loads(line) for line in data.decode("utf-8").splitlines() if line]
                letters += part
                files[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                              "rows": len(part)}
    receipt = shards.write_bytes(output, DEAD_LETTERS_FILE, jsonl(sort_dead(letters)))
    files[DEAD_LETTERS_FILE] = receipt.as_dict() | {"rows": len(letters)}
    return files
