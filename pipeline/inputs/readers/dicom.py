"""DICOM series: the reader, and the allow-list of header fields that may reach the corpus.

Reading a DICOM folder happens in three passes, so that a stray object (a
screenshot, a dose report, a DICOMDIR) never spoils the image series beside it
while anything wrong with the series itself rejects the case:

1. parse every file (header only matters here) and classify it: not DICOM, a
   DICOM object without pixels, or an image object; a file that claims to be
   DICOM but is cut short or malformed rejects the case at once
   (:mod:`~pipeline.inputs.readers.dicom_files`);
2. group image objects by SeriesInstanceUID and pick the CT/MR series with the
   most image planes (a plane is a single-frame file or one frame of a
   multi-frame file) (:mod:`~pipeline.inputs.readers.dicom_files`);
3. check that series' planes (orientation, grid, positions) and decode them
   (:mod:`~pipeline.inputs.readers.dicom_series`,
   :mod:`~pipeline.inputs.readers.dicom_decode`).

Nothing from a file's header leaves this module except the allow-listed fields
of :data:`HEADER_ALLOW_LIST`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from pipeline.errors import CaseError
from pipeline.inputs.readers.base import Files, Volume, file_sha256, is_volume_file

#: DICOM attributes allowed to reach the corpus (no free text, no identifiers).
HEADER_ALLOW_LIST = ("Modality", "BodyPartExamined")
#: An allow-listed value passes only as a plain DICOM code string (VR CS: uppercase letters,
#: digits, space, underscore; at most 16 characters).  Anything else — free text, lower
#: case, a person name (``^``), several values — is dropped: scanners write site and
#: operator text into BodyPartExamined, and a value that is not a code is not needed.
HEADER_CODE_STRING = re.compile(r"[A-Z0-9_ ]{1,16}")


def read_dicom_series(
    paths: Sequence[tuple[str, str]], *, max_voxels: int | None = None
) -> Volume:
    """Read one DICOM series from ``[(absolute path, relative path), …]``.

    Files are grouped by SeriesInstanceUID; the CT or MR series with the most
    image planes is used (a tie is ambiguous and rejected); other series and
    files that are not DICOM images are listed in ``Volume.notes``.  A plane is
    a single-frame image or one frame of an enhanced multi-frame image, whose
    position, orientation, pixel spacing and rescale come from its per-frame
    (or shared) functional groups.

    Planes are ordered by their position along the slice normal,
    ``dot(ImagePositionPatient, row × col)`` — never by file name,
    InstanceNumber or frame number — and must share one orientation, size and
    pixel spacing, with one plane per position (several planes per position
    is a 4D series), evenly spaced (1 %), and no in-plane shift between planes
    (gantry tilt).  At least two planes are required: a single image is not a
    volume.

    Pixel data of every transfer syntax pydicom has a decoder for is decoded
    (native, deflated, RLE, JPEG baseline/extended/lossless, JPEG-LS,
    JPEG 2000, HTJ2K through pylibjpeg, pylibjpeg-openjpeg, pylibjpeg-rle,
    GDCM or Pillow; 12-bit JPEG Extended, which pydicom does not hand to GDCM,
    is decoded by GDCM directly).  Rescale slope/intercept is applied per
    plane, so CT arrays are in HU (a CT RescaleType other than HU is
    rejected).  MONOCHROME1 MR volumes are inverted over the whole volume so
    that bright means high signal as in MONOCHROME2; CT values are Hounsfield
    units whatever the photometric interpretation.

    A file without a file meta header is read when its data set can be parsed
    (pydicom ``force=True``) and its pixel data is native: the transfer syntax
    is then the encoding pydicom detected.  Encapsulated pixel data without a
    transfer syntax is rejected, as the codec would be a guess.
    """
    # Imported here, not at the top: these modules load pydicom and its decoders (GDCM,
    # pylibjpeg), measured at 0.23-0.38 s and 39 MB of RSS per process; only DICOM cases
    # need them, and a NIfTI build's workers never read one.
    from pipeline.inputs.readers.dicom_decode import transfer_syntax
    from pipeline.inputs.readers.dicom_files import (
        DicomFile,
        check_elements,
        choose_series,
        parse_dicom_file,
    )
    from pipeline.inputs.readers.dicom_series import assemble_series

    files: list[DicomFile] = []
    digests = []
    skipped: list[str] = []
    for path, rel in sorted(paths, key=lambda p: p[1]):
        with open(path, "rb") as f:
            data = f.read()
        digests.append(hashlib.sha256(data).hexdigest())
        parsed = parse_dicom_file(path, rel, data)
        if isinstance(parsed, str):
            skipped.append(f"{rel}: {parsed}")
        else:
            files.append(parsed)
    if not files:
        detail = "; ".join(skipped[:3]) or "no files"
        raise CaseError(
            "read", "dicom.no_images",
            f"PixelData (7FE0,0010): found no DICOM image among {len(paths)} files ({detail}), "
            "expected a CT or MR image series",
            paths[0][1] if paths else "",
        )
    drift: dict = {}
    try:
        chosen, ignored = choose_series(files)
        array, geometry, modality = assemble_series(chosen, max_voxels=max_voxels,
                                                    notes=drift)
        header = allowed_header(chosen[0].ds)
    except CaseError:
        raise
    except Exception:
        # pydicom converts values lazily: a corrupt element (its VR bytes, its length)
        # fails where it is first used; name it (dicom.bad_element) if that is what failed.
        for f in files:
            check_elements(f.ds, f.rel)
        raise
    header["Modality"] = modality
    notes = dict(drift)
    if skipped:
        notes["dicom_files_skipped"] = skipped
    if ignored:
        notes["dicom_series_ignored"] = ignored
    inferred = [f"{f.rel}: no file meta header, read as {transfer_syntax(f)[1]}"
                for f in chosen if f.inferred_syntax]
    if inferred:
        notes["dicom_transfer_syntax_inferred"] = inferred
    return Volume(array, geometry, modality, header, _series_sha256(digests), notes)


def series_digest(files: Files) -> str:
    """:func:`read_dicom_series`'s ``content_sha256`` of ``files`` without parsing them (a
    case whose rows are kept when only its files' times changed is checked by it)."""
    return _series_sha256([file_sha256(path) for path, _ in sorted(files, key=lambda p: p[1])])


def _series_sha256(digests: Sequence[str]) -> str:
    """A series' ``content_sha256``: the sha256 of its files' sha256s (hex, in order of
    relative path; every file, strays included) — one formula for the read and the check."""
    return hashlib.sha256("".join(digests).encode()).hexdigest()


def allowed_header(ds) -> dict[str, str]:
    """The :data:`HEADER_ALLOW_LIST` attributes of ``ds`` whose value is a plain code string
    (:data:`HEADER_CODE_STRING`, padding removed); every other value is dropped."""
    header = {}
    for keyword in HEADER_ALLOW_LIST:
        element = ds.get(keyword)
        value = getattr(element, "value", element)
        if not isinstance(value, str):  # absent, empty, binary or multi-valued
            continue
        value = value.strip(" \x00")
        if HEADER_CODE_STRING.fullmatch(value):
            header[keyword] = value
    return header


class DicomReader:
    """The :class:`~pipeline.inputs.readers.base.Reader` of a folder of DICOM files."""

    name = "dicom"
    takes = "a folder of DICOM files (any names, none a NIfTI, NRRD or MHA file)"

    def accepts(self, files: Files, *, folder: bool = False) -> bool:
        """At least one file; of files picked by name, none named like an ITK volume (DICOM
        files carry any name, often none).  A folder's listing is taken whole: files in it
        that are not DICOM images are skipped and listed in ``Volume.notes``."""
        return bool(files) and (folder or not any(is_volume_file(rel) for _, rel in files))

    def read(self, files: Files, *, modality: str = "CT",
             max_voxels: int | None = None) -> Volume:
        """:func:`read_dicom_series` of the files; the modality is the series' own."""
        return read_dicom_series(files, max_voxels=max_voxels)

    def content_digest(self, files: Files) -> str:
        """The ``content_sha256`` :meth:`read` gives these files, from their bytes alone
        (nothing parsed): the sha256 of every file's digest, in order of relative path."""
        return series_digest(files)
