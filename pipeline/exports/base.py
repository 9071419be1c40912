"""What every export shares: its error, its result, and its one atomic file writer.

Every file an export writes goes through :class:`AtomicFile`: written under
``<path>.tmp-export``, then renamed onto ``path`` — a reader never sees half a
file, and an export that fails leaves no temporary file behind.  Text is UTF-8,
newlines as written (``\\n``); JSON is written with ``ensure_ascii=False``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO

#: Suffix of a file while it is being written.
TMP_SUFFIX = ".tmp-export"


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


class AtomicFile:
    """A file written under ``<path>.tmp-export`` and renamed onto ``path`` on :meth:`commit`.

    Text (``binary=False``) is UTF-8 with newlines written as given.  As a context
    manager it commits when the block ends normally and aborts (removes the
    temporary file) on an exception.

    Parameters
    ----------
    path : str
        Final path of the file.
    binary : bool
        Open for bytes (media) instead of text.
    """

    def __init__(self, path: str, *, binary: bool = False):
        self.path = path
        self.tmp = f"{path}{TMP_SUFFIX}"
        self.f: IO = (open(self.tmp, "wb") if binary
                      else open(self.tmp, "w", encoding="utf-8", newline=""))

    def commit(self) -> None:
        """Close and rename onto the final path."""
        self.f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Close and remove the temporary file; the final path is not touched."""
        self.f.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


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


def write_file(path: str, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically."""
    with AtomicFile(path, binary=isinstance(data, bytes)) as out:
        out.f.write(data)


def write_json(path: str, value) -> None:
    """Write ``value`` as indented, key-sorted JSON (UTF-8, ``ensure_ascii=False``) atomically."""
    write_file(path, json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True) + "\n")


def prepare_output(out: str) -> None:
    """Create the export folder; :class:`ExportError` when it is a file or not empty."""
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise ExportError(f"output: {out} is a file, expected a folder")
        if os.listdir(out):
            raise ExportError(f"output: {out} is not empty; export into a new folder")
    os.makedirs(out, exist_ok=True)
