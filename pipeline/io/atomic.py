"""The atomic writer of local files: written under a temporary name, then renamed.

:class:`AtomicFile` streams one local file under ``<path>.tmp-<hex>``
(:data:`pipeline.io.shards.TMP_MARK`) and renames it onto ``path`` when it is
complete (``os.replace``), so a reader never sees half a file and a write that
fails leaves no temporary file behind.  :func:`write_file` writes a whole
``str`` or ``bytes`` value through it.  The exports write every file this way,
and :meth:`pipeline.io.corpus.Corpus.write` every local file a reader keeps beside a
corpus (the report, its chart cache).

Files that may be remote (``gs://``, ``s3://``) — every shard and receipt of a
build — go through :func:`pipeline.io.shards.write_bytes` instead, Beam's
``FileSystems`` with the same temporary-name-then-rename rule.

Text (``binary=False``) is UTF-8 with newlines written as given (``newline=""``).
"""

from __future__ import annotations

import os
import uuid
from typing import IO

from pipeline.io.shards import TMP_MARK


class AtomicFile:
    """A local file written under a temporary name and renamed onto ``path`` on :meth:`commit`.

    As a context manager it commits when the block ends normally and aborts (removes
    the temporary file) on an exception.  The folder of ``path`` must exist.

    Parameters
    ----------
    path : str
        Final path of the file.
    binary : bool
        Open for bytes instead of text.

    Attributes
    ----------
    f : file object
        The temporary file, open for writing.
    """

    def __init__(self, path: str, *, binary: bool = False):
        self.path = path
        self.tmp = f"{path}{TMP_MARK}{uuid.uuid4().hex}"
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


def write_file(path: str, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8, or bytes) to the local ``path`` atomically."""
    with AtomicFile(path, binary=isinstance(data, bytes)) as out:
        out.f.write(data)
