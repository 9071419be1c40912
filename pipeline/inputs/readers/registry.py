"""The readers, in the order they are asked, and the choice of one from the files.

Adding a format is one module with a class following
:class:`~pipeline.inputs.readers.base.Reader` plus one line in :data:`READERS`.
"""

from __future__ import annotations

from pipeline.errors import CaseError
from pipeline.inputs.readers.base import Files, Reader
from pipeline.inputs.readers.dicom import DicomReader
from pipeline.inputs.readers.itk import ItkReader

#: Every reader, asked in this order; the first that accepts the files reads them.
READERS: tuple[Reader, ...] = (
    ItkReader(),
    DicomReader(),
)


def reader_for(files: Files) -> Reader:
    """The first reader of :data:`READERS` that accepts ``files`` (sorted ``(absolute,
    relative)`` pairs, see :func:`~pipeline.inputs.readers.base.list_files`).

    Raises :class:`CaseError` (``volume.no_reader``) naming the first file and
    listing every reader tried with what it takes.
    """
    for reader in READERS:
        if reader.accepts(files):
            return reader
    shown = ", ".join(rel for _, rel in files[:3]) + (", …" if len(files) > 3 else "")
    tried = "; ".join(f"{reader.name}: {reader.takes}" for reader in READERS)
    raise CaseError(
        "read", "volume.no_reader",
        f"files: found {len(files)} file(s) ({shown or 'none'}) that no reader accepts, "
        f"expected one of (tried {tried})",
        files[0][1] if files else "",
    )
