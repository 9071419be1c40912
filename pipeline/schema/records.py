"""Records that cross modules: frozen dataclasses, each checking its invariants.

Each record is built where a stage ends and read where another begins; its
``__post_init__`` rejects a value that breaks the contract, naming the field and the
value found.  Records are converted to dicts only at a file boundary (``as_dict`` /
``to_json``), with exactly the keys the corpus and its build state have always held.

* :class:`FileReceipt` — a file the build wrote (:mod:`pipeline.io.shards`).
* :class:`DeadLetter` — a case that could not become rows (:mod:`pipeline.engine.dead_letters`).
* :class:`CaseResult` — a kind's extraction of one case (:mod:`pipeline.engine.execute`).
* :class:`BuildResult` — what :func:`pipeline.launch.build.build` returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class FileReceipt:
    """A written file: path relative to the output root, sha256 (hex), size in bytes, rows
    (None for a file that is not a table)."""

    path: str
    sha256: str
    bytes: int
    rows: int | None = None

    def __post_init__(self) -> None:
        if len(self.sha256) != 64 or not set(self.sha256) <= _HEX:
            raise ValueError(f"FileReceipt {self.path}: sha256 must be 64 lowercase hex digits, "
                             f"got {self.sha256!r}")
        if self.bytes < 0:
            raise ValueError(f"FileReceipt {self.path}: bytes must be >= 0, got {self.bytes}")
        if self.rows is not None and self.rows < 0:
            raise ValueError(f"FileReceipt {self.path}: rows must be None or >= 0, got {self.rows}")

    def as_dict(self) -> dict:
        """The manifest's and receipts' file entry (the path is its key there)."""
        return {"sha256": self.sha256, "bytes": self.bytes, "rows": self.rows}


@dataclass(frozen=True)
class DeadLetter:
    """One dead-letter record: the one place a source path (relative to the input) appears.

    ``stage`` is where the case failed (``read``, ``extract``, ``qa``), ``reason`` a short
    slug (``geometry.mismatch``), ``error_type`` the exception's class name, ``unit`` the
    work unit that met it (empty when the caller adds it later).
    """

    case_key: str
    source: str
    stage: str
    reason: str
    error_type: str
    message: str
    unit: str = ""

    def __post_init__(self) -> None:
        for name in ("case_key", "source", "stage", "reason", "error_type", "message", "unit"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"DeadLetter.{name} must be a str, got {type(value).__name__} "
                                f"{value!r}")
        if not self.stage or not self.reason:
            raise ValueError(f"DeadLetter for {self.case_key!r}: stage and reason must be set, got "
                             f"stage={self.stage!r} reason={self.reason!r}")

    def to_json(self) -> dict:
        """The record as written to ``dead_letters/`` (this key order, serialised sorted)."""
        return {
            "case_key": self.case_key,
            "source": self.source,
            "stage": self.stage,
            "reason": self.reason,
            "error_type": self.error_type,
            "message": self.message,
            "unit": self.unit,
        }


@dataclass(frozen=True)
class CaseResult:
    """What a kind's ``extract_case`` returns: rows per payload config
    (``{config: [row dict, …]}``), the content digest of the case's inputs, and notes
    (``{name: [values]}``, e.g. empty masks) counted in the report."""

    rows: dict
    content: str
    notes: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.rows, Mapping):
            raise TypeError(f"CaseResult.rows must map config -> rows, got {type(self.rows).__name__}")
        if not isinstance(self.content, str) or not self.content:
            raise ValueError(f"CaseResult.content must be a non-empty digest, got {self.content!r}")
        if not isinstance(self.notes, Mapping):
            raise TypeError(f"CaseResult.notes must map name -> values, got "
                            f"{type(self.notes).__name__}")


@dataclass(frozen=True)
class BuildResult:
    """A finished build: its output folder, the manifest written, wall seconds, the
    fraction of cases rejected, and the exit code (0 ok, 3 too many rejected, 4 the audit
    failed)."""

    output: str
    manifest: dict
    seconds: float
    reject_fraction: float
    exit_code: int
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 <= self.reject_fraction <= 1.0:
            raise ValueError(f"BuildResult.reject_fraction must be in [0, 1], got {self.reject_fraction}")
        if self.exit_code not in (0, 3, 4):
            raise ValueError(f"BuildResult.exit_code must be 0, 3 or 4, got {self.exit_code}")
        if self.seconds < 0:
            raise ValueError(f"BuildResult.seconds must be >= 0, got {self.seconds}")
