"""RadImageNet-style labelled 2D trees, the input of the ``tree`` kind: discovery and PNG checks.

Input layout: ``<root>/<modality>/<region>/<label>/<image>.png`` (RadImageNet's
``radiology_ai/CT|MR/...``; ``US`` has no label level and is not selected by
the recipe), optionally with ``RadiologyAI_{train,val,test}.csv`` (a
``filename`` column) beside or above the tree.  One image is one case.  This is a
layout of the whole input, not of a case folder: it is not in the case-layout
registry of :mod:`pipeline.inputs.layouts`.

* Keys: ``image_id`` is an HMAC pseudonym of the path relative to the root;
  file names never reach the corpus.
* Splits: the CSVs when present (``val`` → ``validation``), else a keyed hash
  of the image key with the recipe's fractions.
* Images pass through as stored bytes; each is checked (PNG signature, chunk
  CRCs, IHDR, a pixel limit against decompression bombs, and a full inflate of
  its data to the size the header promises) and goes to the dead letters when
  it fails.

The label pools that name regions and labels are :mod:`pipeline.qa.label_pools`; the
benchmark draw over the discovered images is :mod:`pipeline.qa.benchmark`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import struct
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from itertools import repeat
from operator import itemgetter
from typing import NamedTuple, Protocol

import numpy as np

try:  # ISA-L (python-isal): inflate 1.3-1.4x and CRC-32 ~4x faster than zlib on 224 px PNGs
    from isal import isal_zlib as _zlib
    _INFLATE_ERRORS: tuple[type[Exception], ...] = (zlib.error, _zlib.error)
except ImportError:  # pragma: no cover - isal is a dependency; zlib checks the same bytes
    _zlib = zlib
    _INFLATE_ERRORS = (zlib.error,)
try:  # libdeflate (deflate): the check's inflate of a well-formed PNG in 3/4 of ISA-L's CPU
    from deflate import DeflateError as _DeflateError
    from deflate import zlib_decompress as _libdeflate_zlib
except ImportError:  # pragma: no cover - deflate is a dependency; ISA-L checks the same bytes
    _libdeflate_zlib = None

from pipeline.core import keys
from pipeline.errors import CaseError, ConfigError
from pipeline.inputs.tree import InputTree, is_remote

SPLIT_CSV = {"train": "RadiologyAI_train.csv", "validation": "RadiologyAI_val.csv",
             "test": "RadiologyAI_test.csv"}
IMAGE_SUFFIXES = (".png",)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DEFAULT_MAX_PIXELS = 50_000_000
#: Top-level folders the recipe does not select are counted by name only when the name is a
#: DICOM modality code (PS3.3 C.7.3.1.1.1); any other folder counts as
#: ``excluded_modality_other``: the counts reach the manifest, the card and the report, and
#: a stray folder's name may identify someone.
MODALITY_CODES = frozenset({
    "AR", "AS", "ASMT", "AU", "BDUS", "BI", "BMD", "CD", "CF", "CP", "CR", "CS", "CT", "DD",
    "DF", "DG", "DM", "DOC", "DS", "DX", "EC", "ECG", "EPS", "ES", "FA", "FID", "FS", "GM",
    "HC", "HD", "IO", "IOL", "IVOCT", "IVUS", "KER", "KO", "LEN", "LP", "LS", "MA", "MG",
    "MR", "MS", "NM", "OAM", "OCT", "OP", "OPM", "OPR", "OPT", "OPV", "OSS", "OT", "PLAN",
    "PR", "PT", "PX", "REG", "RESP", "RF", "RG", "RTDOSE", "RTIMAGE", "RTPLAN", "RTRECORD",
    "RTSTRUCT", "RWV", "SEG", "SM", "SMR", "SR", "SRF", "ST", "STAIN", "TG", "US", "VA",
    "VF", "XA", "XC",
})



class RegionNames(Protocol):
    """What discovery needs of the label pools (:class:`pipeline.qa.label_pools.LabelPools`)."""

    def resolve_region(self, modality: str, folder: str) -> str:
        """Region id for a folder name."""
        ...


class TreeImage(NamedTuple):
    """One planned image: key, source path (relative; dead letters only), labels, split.

    A named tuple: a 750K-image tree plans 750K of them (a third of a frozen dataclass's
    cost to make)."""

    key: str
    source: str
    modality: str
    region: str
    label: str
    split: str


def read_split_csvs(root) -> dict[str, str]:
    """``{relative path suffix: split}`` from ``RadiologyAI_*.csv`` in the input folder, or
    in the folder above it (where RadImageNet ships them, beside ``radiology_ai/``)."""
    tree = root if isinstance(root, InputTree) else InputTree(root)
    parent = tree.root.rsplit("/", 1)[0] if is_remote(tree.root) else os.path.dirname(tree.root)
    table: dict[str, str] = {}
    for where in (tree, InputTree(parent) if parent and parent != tree.root else None):
        if where is None:
            continue
        for split, name in SPLIT_CSV.items():
            if not where.isfile(name):
                continue
            reader = csv.DictReader(io.StringIO(where.read_bytes(name).decode("utf-8-sig")))
            if "filename" not in (reader.fieldnames or []):
                raise ConfigError(f"{where.path(name)}: columns: found {reader.fieldnames}, "
                                  "expected 'filename'")
            for row in reader:
                table[_norm(row["filename"])] = split
        if table:
            break
    return table


def _norm(path: str) -> str:
    parts = path.replace("\\", "/").strip("/").split("/")
    return "/".join(parts[-4:])  # modality/region/label/file


def discover_tree(
    root, *, modalities: Iterable[str], pools: RegionNames, pseudonym_key: str,
    fractions: Mapping[str, float], seed: int,
) -> tuple[list[TreeImage], list[dict], dict]:
    """Walk ``root``; returns ``(images sorted by key, rejects, stats)``.

    ``stats`` counts files excluded by the recipe's modality selection and
    images whose split came from the CSVs or from the hash.
    """
    tree = root if isinstance(root, InputTree) else InputTree(root)
    if not tree.exists():
        raise FileNotFoundError(f"--input: {tree.root} is not a directory")
    wanted = {m.upper() for m in modalities}
    split_table = read_split_csvs(tree)
    images, rejects = [], []
    stats: Counter = Counter()
    for modality_dir in tree.listdir(""):
        if not tree.isdir(modality_dir):
            continue
        modality = {"MRI": "MR"}.get(modality_dir.upper(), modality_dir.upper())
        # sizes and modification times remembered while listing: the fingerprints' stats
        files = tree.walk_files(modality_dir, stat=modality in wanted)
        if modality not in wanted:
            name = modality if modality in MODALITY_CODES else "other"
            stats[f"excluded_modality_{name}"] += len(files)
            continue
        rels, regions, labels = [], [], []
        region_of: dict[str, str] = {}
        for rel in files:
            rel_dir, name = rel.rsplit("/", 1)
            if rel_dir.count("/") != 2 or not name.lower().endswith(IMAGE_SUFFIXES):
                rejects.append({"source": rel, "stage": "discover", "reason": "source.not_in_layout",
                                "message": "path: expected <modality>/<region>/<label>/<image>.png"})
                continue
            _, region_dir, label = rel_dir.split("/")
            region = region_of.get(region_dir)
            if region is None:
                region = region_of[region_dir] = pools.resolve_region(modality, region_dir)
            rels.append(rel)
            regions.append(region)
            labels.append(label)
        image_keys = list(map(keys.pseudonyms_under(pseudonym_key, "image"), rels))
        splits = ([split_table.get(_norm(rel)) for rel in rels] if split_table
                  else [None] * len(rels))
        hashed = [n for n, split in enumerate(splits) if split is None]
        for n, split in zip(hashed, assign_splits([image_keys[n] for n in hashed], fractions, seed)):
            splits[n] = split
        if hashed:
            stats["split_by_hash"] += len(hashed)
        if len(rels) > len(hashed):
            stats["split_by_csv"] += len(rels) - len(hashed)
        images += map(TreeImage, image_keys, rels, repeat(modality), regions, labels, splits)
    images.sort(key=itemgetter(0))  # by key
    return images, rejects, dict(stats)


def assign_splits(image_keys: list[str], fractions: Mapping[str, float], seed: int) -> list[str]:
    """:func:`pipeline.core.keys.assign_split` of every key: the same keyed uniforms (one
    SHA-256 each) against the same cumulative fractions, compared by numpy."""
    if not image_keys:
        return []
    names = list(fractions)
    keys.assign_split("", fractions, seed)  # the fractions checked as it checks them
    total = float(sum(fractions.values()))
    bounds, acc = [], 0.0
    for name in names:
        acc += fractions[name] / total
        bounds.append(acc)
    head, tail = f"{int(seed)}\x1f", "\x1fsplit"
    sha256 = hashlib.sha256
    u = np.frombuffer(b"".join([sha256(f"{head}{k}{tail}".encode()).digest()[:8] for k in image_keys]),
                      dtype=">u8").astype(np.float64) / 2.0**64
    # the first split whose cumulative fraction exceeds u; the last one past them all
    which = np.minimum(np.searchsorted(np.array(bounds), u, side="right"), len(names) - 1)
    return [names[i] for i in which.tolist()]


def check_png(data: bytes | memoryview, *, max_pixels: int = DEFAULT_MAX_PIXELS, rel: str = "") -> tuple[int, int]:
    """Validate a PNG without trusting it; returns ``(width, height)``.

    Checks the signature, every chunk's length and CRC, the IHDR fields, a
    pixel limit (``max_pixels``, against decompression bombs: a few KB of
    IDAT can promise gigabytes) and a full inflate of the image data, bounded
    by the size the header promises.

    Raises :class:`CaseError` (``image.unreadable`` or ``image.too_large``)
    naming the field, the value found and the value expected; ``rel`` (the
    file relative to the input root) becomes the error's path.
    """

    def fail(reason: str, message: str, cause: Exception | None = None) -> CaseError:
        err = CaseError("read", reason, message, rel)
        err.__cause__ = cause
        return err

    if data[:8] != PNG_SIGNATURE:  # bytes(): ``data`` may be a memoryview (a unit's buffer)
        raise fail("image.unreadable",
                   f"signature: found {bytes(data[:8])!r}, expected the PNG signature {PNG_SIGNATURE!r}")
    pos, width = 8, None
    idat = []
    _crc32 = _zlib.crc32
    view = memoryview(data)  # chunks are looked at in place: a 47 KB IDAT is never copied
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        name = kind.decode("latin-1")
        chunk = view[pos + 8:pos + 8 + length]
        if len(chunk) != length or pos + 12 + length > len(data):
            raise fail("image.unreadable",
                       f"chunk {name!r} at byte {pos}: truncated: found {len(data) - pos - 8} bytes, "
                       f"expected {length} + 4 (CRC)")
        actual = _crc32(chunk, _crc32(kind)) & 0xFFFFFFFF
        stored = struct.unpack_from(">I", data, pos + 8 + length)[0]
        if actual != stored:
            raise fail("image.unreadable",
                       f"chunk {name!r} at byte {pos}: CRC mismatch: found {stored:#010x}, "
                       f"expected {actual:#010x}")
        if kind == b"IHDR":
            if length != 13:
                raise fail("image.unreadable", f"IHDR: found {length} bytes, expected 13")
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
            if width == 0 or height == 0:
                raise fail("image.unreadable",
                           f"IHDR: found {width}x{height} pixels, expected at least 1x1")
            allowed = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
            if depth not in allowed.get(color, ()):
                raise fail("image.unreadable",
                           f"IHDR: found colour type {color} with bit depth {depth}, expected one of "
                           f"the PNG combinations {allowed}")
            if width * height > max_pixels:
                raise fail("image.too_large",
                           f"IHDR: found {width}x{height} = {width * height} pixels, expected at most "
                           f"{max_pixels} (decompression bomb guard)")
        elif kind == b"IDAT":
            if width is None:
                raise fail("image.unreadable", f"chunk 'IDAT' at byte {pos}: found before IHDR, "
                                               "expected IHDR first")
            idat.append(chunk)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if width is None or not idat:
        raise fail("image.unreadable",
                   f"chunks: found {'no IHDR' if width is None else 'no IDAT'}, expected IHDR and IDAT")
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color]
    row = 1 + math.ceil(width * channels * depth / 8)
    expected = row * height if not interlace else None
    limit = expected if expected is not None else 2 * row * height
    stream = idat[0] if len(idat) == 1 else b"".join(idat)
    if expected is not None and _inflates_to(stream, expected):
        return width, height
    try:  # (also what names the fault of a stream the fast path refused, or accepts it)
        inflater = _zlib.decompressobj()
        raw = inflater.decompress(stream, limit + 1)
    except _INFLATE_ERRORS as err:
        raise fail("image.unreadable", f"IDAT: cannot inflate: {err}", err) from err
    if expected is not None and len(raw) != expected:
        raise fail("image.unreadable",
                   f"IDAT: found {'more' if len(raw) > expected else 'less'} image data than IHDR "
                   f"promises: inflated to {len(raw)} bytes, expected {expected} for {width}x{height}")
    return width, height


def _inflates_to(stream, expected: int) -> bool:
    """Whether the zlib ``stream`` (a PNG's joined IDAT data) inflates, by libdeflate, to
    exactly ``expected`` bytes: a complete stream whose Adler-32 matches, never written past
    ``expected`` bytes (libdeflate stops with an error at the end of its output buffer: the
    decompression-bomb bound).  ``False`` sends :func:`check_png` to its ISA-L inflate, which
    then names the fault (or accepts the stream as it always did: it is the rule, this only
    the fast way through for what it accepts).  Only 32 KB windows (``CMF`` 0x78, what PNG
    encoders write): libdeflate does not hold a stream to a smaller declared window.

    Measured on the bench's 224 px PNGs (~47 KB, 50,400 bytes inflated): 97 µs of CPU an
    image against 125 µs for ISA-L's ``decompressobj`` (zlib's: 175 µs)."""
    if _libdeflate_zlib is None or not len(stream) or stream[0] != 0x78:
        return False
    try:
        return len(_libdeflate_zlib(stream, expected)) == expected
    except _DeflateError:
        return False
