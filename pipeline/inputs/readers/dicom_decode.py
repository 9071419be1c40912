"""DICOM pixel data decoded to stored values, with the checks decoders skip.

Every transfer syntax with an installed decoder is decoded by pydicom (native,
deflated, RLE, JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, HTJ2K through
pylibjpeg, pylibjpeg-openjpeg, pylibjpeg-rle, GDCM or Pillow); 12-bit JPEG
Extended, which pydicom does not hand to GDCM, is decoded by GDCM directly.
Native pixel data must hold every byte Rows × Columns × frames × BitsAllocated
promise, and every JPEG-family frame must end with its end marker, since
decoders return a partial image from a cut codestream without an error.
"""

from __future__ import annotations

import gdcm
import numpy as np
from pydicom.encaps import generate_frames
from pydicom.uid import UID

from pipeline.errors import CaseError
from pipeline.inputs.readers.dicom_files import DicomFile, one_line

#: Transfer syntaxes whose frames are JPEG-family codestreams ending in EOI/EOC (FFD9).
_JPEG_FAMILY_PREFIXES = ("1.2.840.10008.1.2.4.5", "1.2.840.10008.1.2.4.7", "1.2.840.10008.1.2.4.8",
                         "1.2.840.10008.1.2.4.9", "1.2.840.10008.1.2.4.20")
_JPEG_EXTENDED_12BIT = "1.2.840.10008.1.2.4.51"


def transfer_syntax(f: DicomFile) -> tuple[str, str]:
    """``(UID, name)`` of a file's transfer syntax."""
    uid = str(f.ds.file_meta.TransferSyntaxUID)
    name = UID(uid).name
    return uid, (name if name != uid else "unknown transfer syntax")


def decode_file(f: DicomFile) -> np.ndarray:
    """Stored pixel values of every frame: ``(rows, cols)`` or ``(frames, rows, cols)``."""
    ds = f.ds
    uid, name = transfer_syntax(f)
    rows, cols = int(ds.Rows), int(ds.Columns)
    encapsulated = ds["PixelData"].is_undefined_length
    if not encapsulated:
        bits = int(ds.get("BitsAllocated", 0) or 0)
        expected = rows * cols * f.frames * bits // 8 if bits >= 8 else 0
        found = len(ds.PixelData or b"")  # a zero length field reads as None
        if bits not in (8, 16, 32, 64):
            raise CaseError(
                "read", "dicom.unsupported_pixels",
                f"BitsAllocated (0028,0100): found {bits}, expected 8, 16, 32 or 64",
                f.rel,
            )
        if found < expected:
            raise CaseError(
                "read", "dicom.truncated_pixel_data",
                f"PixelData (7FE0,0010): found {found} bytes, expected {expected} "
                f"({rows} rows x {cols} columns x {f.frames} frame(s) x {bits} bits, "
                f"{name}); the file is cut short or its Rows/Columns/BitsAllocated are wrong",
                f.rel,
            )
    elif uid.startswith(_JPEG_FAMILY_PREFIXES):
        _check_codestreams(f, name)
    try:
        pixels = ds.pixel_array
    except Exception as err:  # pydicom raises many types for undecodable data
        pixels = None
        attempts = f"pydicom: {type(err).__name__}: {one_line(err)}"
        if uid == _JPEG_EXTENDED_12BIT:
            try:
                pixels = _decode_with_gdcm(f)
            except Exception as gdcm_err:  # noqa: BLE001 - reported with the first attempt
                attempts += f"; GDCM: {type(gdcm_err).__name__}: {one_line(gdcm_err)}"
        if pixels is None:
            raise CaseError(
                "read", "dicom.undecodable",
                f"PixelData (7FE0,0010): found {name} ({uid}) data no installed decoder can "
                f"decode (tried {attempts}), expected decodable pixel data",
                f.rel,
            ) from err
    expected_shape = (rows, cols) if f.frames == 1 else (f.frames, rows, cols)
    if pixels.shape != expected_shape:
        raise CaseError(
            "read", "dicom.unsupported_pixels",
            f"PixelData (7FE0,0010): decoded to shape {pixels.shape} ({name}), expected "
            f"{expected_shape} from Rows/Columns/NumberOfFrames",
            f.rel,
        )
    return pixels


def _check_codestreams(f: DicomFile, name: str) -> None:
    """Every JPEG/JPEG-LS/JPEG 2000 frame must end with its EOI/EOC marker (FFD9).

    Decoders happily return a partial image from a cut codestream; the end
    marker is what tells a complete frame from a truncated one.
    """
    try:
        frames = list(generate_frames(f.ds.PixelData, number_of_frames=f.frames))
    except Exception:  # noqa: BLE001 - malformed fragments are the decoder's to report
        return
    if len(frames) < f.frames:
        raise CaseError(
            "read", "dicom.truncated_pixel_data",
            f"PixelData (7FE0,0010): found {len(frames)} encapsulated frame(s), expected "
            f"{f.frames} (NumberOfFrames, {name})",
            f.rel,
        )
    for i, frame in enumerate(frames):
        if b"\xff\xd9" not in frame.rstrip(b"\x00")[-4:]:
            raise CaseError(
                "read", "dicom.truncated_pixel_data",
                f"PixelData (7FE0,0010): frame {i + 1} of {f.frames}: found {len(frame)} bytes "
                f"ending without the end-of-image marker FFD9, expected a complete {name} "
                "codestream",
                f.rel,
            )


def _decode_with_gdcm(f: DicomFile) -> np.ndarray:
    """Stored values decoded by GDCM directly (12-bit JPEG Extended, which pydicom refuses)."""
    reader = gdcm.ImageReader()
    reader.SetFileName(f.path)
    if not reader.Read():
        raise ValueError("gdcm.ImageReader cannot read the file")
    image = reader.GetImage()
    buffer = image.GetBuffer()
    if buffer is None:
        raise ValueError("GDCM returned no pixel buffer")
    raw = buffer.encode("utf-8", "surrogateescape")
    scalar = image.GetPixelFormat().GetScalarTypeAsString()
    dtype = {"UINT8": np.uint8, "INT8": np.int8, "UINT16": np.uint16, "INT16": np.int16,
             "UINT32": np.uint32, "INT32": np.int32}.get(scalar)
    if dtype is None:
        raise ValueError(f"GDCM pixel type {scalar} is not supported")
    rows, cols = int(f.ds.Rows), int(f.ds.Columns)
    expected = rows * cols * f.frames * np.dtype(dtype).itemsize
    if len(raw) != expected:
        raise ValueError(f"GDCM returned {len(raw)} bytes, expected {expected}")
    shape = (f.frames, rows, cols) if f.frames > 1 else (rows, cols)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)
