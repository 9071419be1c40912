"""The class map a NIfTI-1 label file carries in its header extension.

TotalSegmentator's ``--ml`` output (``totalsegmentator/nifti_ext_header.py``,
``add_label_map_to_nifti``) appends one extension (ecode 0) holding a CaretExtension XML
document whose ``LabelTable`` has one ``<Label Key="N" …><![CDATA[name]]></Label>`` per
class.  :func:`read_label_table` reads that table from the header bytes only (the voxel data
is never decompressed), so a layout can name a label map's values before it is read.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from xml.etree import ElementTree

from pipeline.errors import CaseError

#: Header bytes read at most (a label table of a few hundred classes is a few tens of KB).
MAX_HEADER_BYTES = 16 << 20


def _head(path: str, n: int) -> bytes:
    """The first ``n`` bytes of the (possibly gzipped) file."""
    with open(path, "rb") as f:
        magic = f.read(2)
    opener = gzip.open if magic == b"\x1f\x8b" else open
    with opener(path, "rb") as f:
        return f.read(n)


def read_label_table(path: str, rel: str) -> dict[int, str] | None:
    """``{label value: name}`` from the CaretExtension label table of NIfTI-1 file ``path``
    (``rel`` for messages); ``None`` when the file carries no such table (no extension,
    another kind of extension, or not a NIfTI-1 file).  A table that is there but broken
    raises :class:`CaseError` (``labels.bad_extension``) naming the file and the field."""
    try:
        head = _head(path, 352)
        if len(head) < 352:
            return None
        for endian in ("<", ">"):
            if struct.unpack(endian + "i", head[:4])[0] == 348:
                break
        else:
            return None  # not NIfTI-1 (NIfTI-2, NRRD, MHA): no CaretExtension there
        vox_offset = int(struct.unpack(endian + "f", head[108:112])[0])
        if head[348] == 0 or vox_offset <= 352:
            return None
        head = _head(path, min(vox_offset, MAX_HEADER_BYTES))
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, struct.error, ValueError,
            OverflowError):
        return None  # the reader of the label map names what is wrong with the file
    pos = 352
    while pos + 8 <= len(head):
        size, code = struct.unpack(endian + "ii", head[pos:pos + 8])
        if size < 8 or pos + size > len(head):
            raise CaseError(
                "read", "labels.bad_extension",
                f"NIfTI extension at byte {pos}: found esize {size} (code {code}), expected a "
                f"size of 8..{len(head) - pos} bytes within vox_offset {vox_offset}",
                rel,
            )
        data = head[pos + 8:pos + size]
        if b"<CaretExtension" in data or b"<LabelTable" in data:
            return _parse_caret(data, rel)
        pos += size
    return None


def _parse_caret(data: bytes, rel: str) -> dict[int, str]:
    try:
        root = ElementTree.fromstring(data.rstrip(b"\x00 \n\r\t"))
    except (ElementTree.ParseError, LookupError, ValueError) as err:  # LookupError: a bad encoding name
        raise CaseError(
            "read", "labels.bad_extension",
            f"NIfTI extension CaretExtension: found XML that does not parse ({err}), expected "
            "a LabelTable of <Label Key=\"N\">name</Label>",
            rel,
        ) from err
    table: dict[int, str] = {}
    for label in root.iter("Label"):
        key, name = label.get("Key", ""), (label.text or "").strip()
        try:
            value = int(key)
        except ValueError:
            value = -1
        if value <= 0 or not name:
            raise CaseError(
                "read", "labels.bad_extension",
                f"NIfTI extension LabelTable: found Label Key={key!r} named {name!r}, expected a "
                "positive integer Key and a non-empty name",
                rel,
            )
        if value in table or name in table.values():
            raise CaseError(
                "read", "labels.duplicate_name",
                f"NIfTI extension LabelTable: found Key {value} / name {name!r} twice, expected "
                "each value and name once",
                rel,
            )
        table[value] = name
    if not table:
        raise CaseError(
            "read", "labels.bad_extension",
            "NIfTI extension LabelTable: found no Label, expected one per class", rel,
        )
    return table
