"""The readers, in the order they are asked, and the choice of one from the files.

Adding a format is one module with a class following
:class:`~pipeline.inputs.readers.base.Reader` (images) or
:class:`~pipeline.inputs.readers.base.MaskReader` (masks, label maps) plus one line in
:data:`READERS` or :data:`MASK_READERS`.
"""

from __future__ import annotations

from pipeline.errors import CaseError
from pipeline.inputs.readers.base import Files, MaskReader, Reader
from pipeline.inputs.readers.dicom import DicomReader
from pipeline.inputs.readers.itk import ItkReader
from pipeline.inputs.readers.seg import SegReader

#: Every image reader, asked in this order; the first that accepts the files reads them.
READERS: tuple[Reader, ...] = (
    ItkReader(),
    DicomReader(),
)

#: Every mask reader, asked in this order; the first that accepts a file reads it.
MASK_READERS: tuple[MaskReader, ...] = (
    ItkReader(),
    SegReader(),
)


def reader_for(files: Files, *, folder: bool = False) -> Reader:
    """The first reader of :data:`READERS` that accepts ``files`` (sorted ``(absolute,
    relative)`` pairs, see :func:`~pipeline.inputs.readers.base.list_files`); ``folder``:
    the files are a whole folder a layout names as one image (see
    :meth:`~pipeline.inputs.readers.base.Reader.accepts`).

    Raises :class:`CaseError` (``volume.no_reader``) naming the first file and
    listing every reader tried with what it takes.
    """
    for reader in READERS:
        if reader.accepts(files, folder=folder):
            return reader
    shown = ", ".join(rel for _, rel in files[:3]) + (", …" if len(files) > 3 else "")
    tried = "; ".join(f"{reader.name}: {reader.takes}" for reader in READERS)
    raise CaseError(
        "read", "volume.no_reader",
        f"files: found {len(files)} file(s) ({shown or 'none'}) that no reader accepts, "
        f"expected one of (tried {tried})",
        files[0][1] if files else "",
    )


def mask_reader_for(path: str, rel: str) -> MaskReader:
    """The first reader of :data:`MASK_READERS` that accepts the mask or label map file
    ``rel`` (absolute ``path``).

    Raises :class:`CaseError` (``mask.no_reader``) naming the file and listing every
    reader tried with what it takes.
    """
    for reader in MASK_READERS:
        if reader.accepts_mask(path, rel):
            return reader
    tried = "; ".join(f"{reader.name}: {reader.takes}" for reader in MASK_READERS)
    raise CaseError(
        "read", "mask.no_reader",
        f"file: found {rel} that no mask reader accepts, expected one of (tried {tried})",
        rel,
    )
