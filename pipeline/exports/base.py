"""What every export shares: its error, its result, its output folder and its JSON list writer.

Every file an export writes goes through :class:`pipeline.io.atomic.AtomicFile`:
written under a temporary name, then renamed onto its path — a reader never sees
half a file, and an export that fails leaves no temporary file behind.  Text is
UTF-8, newlines as written (``\\n``); JSON is written with ``ensure_ascii=False``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from pipeline.io.atomic import AtomicFile


class ExportError(ValueError):
    """An export that cannot be done: names the file and the field."""


@dataclass
class ExportResult:
    """What an export wrote."""

    format: str
    kind: str
    output: str
    boxes: str | None
    files: dict[str, int] = field(default_factory=dict)  # relative path -> rows
    media: int = 0

    @property
    def rows(self) -> int:
        return sum(self.files.values())

    def summary(self) -> str:
        """One line for the CLI."""
        media = "volumes" if self.kind == "volumes" else "images"
        boxes = f", boxes {self.boxes}" if self.boxes else ""
        return (f"radvqa export: {self.format} ({self.kind} corpus{boxes}): {self.rows:,} rows in "
                f"{len(self.files)} file(s), {self.media:,} {media} -> {self.output}")


class JsonList(AtomicFile):
    """A JSON list streamed one record per line (``[`` … ``]``, records joined by ``,\\n``)."""

    def __init__(self, path: str):
        super().__init__(path)
        self.rows = 0
        self.f.write("[")

    def add(self, record: Mapping) -> None:
        """Append one record."""
        self.f.write(("\n" if not self.rows else ",\n") + json.dumps(record, ensure_ascii=False))
        self.rows += 1

    def commit(self) -> None:
        self.f.write("\n]\n" if self.rows else "]\n")
        super().commit()


def prepare_output(out: str) -> None:
    """Create the export folder; :class:`ExportError` when it is a file or not empty."""
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise ExportError(f"output: {out} is a file, expected a folder")
        if os.listdir(out):
            raise ExportError(f"output: {out} is not empty; export into a new folder")
    os.makedirs(out, exist_ok=True)
