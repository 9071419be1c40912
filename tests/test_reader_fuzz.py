"""Fuzzing the readers: broken files of every kind end as a named CaseError, never a crash.

Real files are mutated the ways files break in transfer and by buggy writers:
cut short at many offsets, bytes flipped in the NIfTI header and in the gzip
stream, DICOM data elements broken (value representation bytes, length fields,
item and sequence delimiters).  Each mutant runs through the readers a build
uses (``read_volume`` and ``read_mask`` for NIfTI, ``read_dicom_series`` for a
DICOM series); every outcome must be a volume or a :class:`CaseError` with a
named reason and a message naming the field (``found`` … ``expected``) — never
another exception, which a build would dead-letter as ``internal.<Type>``.

Deterministic: every choice comes from one seeded ``numpy`` generator per source
file, so the same mutants are tried on every run; about 200 inputs, a few
seconds.  ``python -m pytest tests/test_reader_fuzz.py -s`` prints what each
kind of mutation led to.
"""

from __future__ import annotations

import gzip
import shutil
import struct
import warnings
from collections import Counter
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from pipeline.core.geometry import canonicalise
from pipeline.errors import CaseError
from pipeline.inputs.readers import read_dicom_series, read_mask, read_volume
from pipeline.inputs.readers.itk import read_itk
from tests.dicom_factory import restamp

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SEED = 20261203
SHAPE = (20, 18, 8)
MAX_VOXELS = 1_000_000


def _nifti_sources(folder: Path) -> dict[str, Path]:
    """The NIfTI files mutated: written by nibabel the way the releases write them."""
    ct = (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 400 - 200).astype(np.int16)
    mask = np.zeros(SHAPE, np.uint8)
    mask[5:15, 4:12, 2:6] = 1
    drift = np.diag([-1.5, -1.5, 1.5, 1.0])
    drift[0, 1] = drift[1, 0] = 3e-4 * 1.5  # float drift: ITK refuses, nibabel reads
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, data, affine, suffix in (
        ("ct_drift", ct, drift, ".nii.gz"),
        ("ct_plain", ct, np.diag([1.0, -1.0, 2.0, 1.0]), ".nii"),
        ("ct_float", ct.astype(np.float32), np.diag([-1.0, 1.0, 2.0, 1.0]), ".nii.gz"),
        ("mask", mask, np.diag([-1.5, -1.5, 1.5, 1.0]), ".nii.gz"),
    ):
        image = nibabel.Nifti1Image(data, affine)
        image.set_qform(None, code=0)
        image.set_sform(affine, code=1)
        path = folder / f"{name}{suffix}"
        nibabel.save(image, path)
        out[name] = path
    return out


#: Header bytes that mean something to a reader: sizeof_hdr, dim, datatype, bitpix, pixdim,
#: vox_offset, scl_slope/inter, xyzt_units, qform/sform codes, quatern, srow, magic.
_HEADER_FIELDS = [*range(0, 4), *range(40, 56), *range(70, 76), *range(76, 120), 123,
                  *range(252, 328), *range(344, 348)]


def _nifti_mutants(path: Path, rng: np.random.Generator, n: int):
    """``(kind, bytes)``: truncations, header byte flips, gzip stream byte flips."""
    data = path.read_bytes()
    gz = path.name.endswith(".gz")
    raw = gzip.decompress(data) if gz else data
    cuts = sorted({0, 4, 100, 347, 348, 352, len(data) - 1, len(data) - 4,
                   *rng.integers(1, len(data), n // 3).tolist()})
    for cut in cuts[: n // 3]:
        yield f"truncated at byte {cut}", data[:cut]
    for _ in range(n // 3):
        at = int(rng.choice(_HEADER_FIELDS)) if rng.random() < 0.75 else int(rng.integers(0, 352))
        flipped = bytearray(raw)
        flipped[at] ^= int(rng.integers(1, 256))
        yield f"header byte {at} flipped", gzip.compress(bytes(flipped), mtime=0) if gz else bytes(flipped)
    for _ in range(n - 2 * (n // 3)):
        at = int(rng.integers(0, len(data)))
        flipped = bytearray(data)
        flipped[at] ^= int(rng.integers(1, 256))
        yield f"{'gzip stream' if gz else 'data'} byte {at} flipped", bytes(flipped)


# DICOM ---------------------------------------------------------------------------------

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
             b"UV"}
_DELIMITERS = (b"\xfe\xff\x00\xe0", b"\xfe\xff\x0d\xe0", b"\xfe\xff\xdd\xe0")  # item, ends


def _explicit_elements(data: bytes) -> list[tuple[int, bytes]]:
    """``(offset of the element's header, VR)`` of the top-level elements of an explicit VR
    little endian file (after the 128-byte preamble and 'DICM')."""
    out, at = [], 132
    while at + 8 <= len(data):
        vr = data[at + 4:at + 6]
        if not vr.isalpha():
            break
        if vr in _LONG_VRS:
            length = struct.unpack("<I", data[at + 8:at + 12])[0]
            head = 12
        else:
            length = struct.unpack("<H", data[at + 6:at + 8])[0]
            head = 8
        out.append((at, vr))
        if length == 0xFFFFFFFF:  # undefined length: delimiters follow; stop walking here
            break
        at += head + length
    return out


def _dicom_mutants(path: Path, rng: np.random.Generator, n: int):
    """``(kind, bytes)``: truncations, corrupt VR bytes, wrong length fields, broken
    item/sequence delimiters."""
    data = path.read_bytes()
    elements = _explicit_elements(data)
    assert len(elements) > 20, path
    for cut in sorted(rng.integers(1, len(data), n // 4).tolist()):
        yield f"truncated at byte {cut}", data[:cut]
    for _ in range(n // 4):
        at, vr = elements[int(rng.integers(0, len(elements)))]
        bad = bytes(rng.choice(list(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ\x00\xff"), 2).tolist())
        mutant = bytearray(data)
        mutant[at + 4:at + 6] = bad
        yield f"VR {vr.decode()} -> {bad!r}", bytes(mutant)
    for _ in range(n // 4):
        at, vr = elements[int(rng.integers(0, len(elements)))]
        mutant = bytearray(data)
        if vr in _LONG_VRS:
            old = struct.unpack("<I", data[at + 8:at + 12])[0]
            new = int(rng.choice([0, 1, old + 1, max(0, old - 1), 0xFFFFFFFE, 0xFFFFFFFF]))
            mutant[at + 8:at + 12] = struct.pack("<I", new)
        else:
            old = struct.unpack("<H", data[at + 6:at + 8])[0]
            new = int(rng.choice([0, 1, old + 1, max(0, old - 1), 0xFFFF]))
            mutant[at + 6:at + 8] = struct.pack("<H", new)
        yield f"length of a {vr.decode()} element {old} -> {new}", bytes(mutant)
    marks = [i for d in _DELIMITERS for i in _find_all(data, d)]
    for _ in range(n - 3 * (n // 4)):
        mutant = bytearray(data)
        if marks:
            at = int(rng.choice(marks))
            part = int(rng.integers(0, 8))  # the tag (4 bytes) or the length (4 bytes)
            mutant[at + part] ^= int(rng.integers(1, 256))
            yield f"delimiter byte {part} at {at} flipped", bytes(mutant)
        else:
            at = int(rng.integers(132, len(data)))
            mutant[at] ^= int(rng.integers(1, 256))
            yield f"byte flipped at {at}", bytes(mutant)


def _find_all(data: bytes, needle: bytes) -> list[int]:
    out, at = [], data.find(needle)
    while at != -1:
        out.append(at)
        at = data.find(needle, at + 1)
    return out


def _real(name: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_testdata_file(name)


# the runs ------------------------------------------------------------------------------

def _outcome(read, *args, **kwargs) -> str:
    """``accepted`` or the CaseError's reason; any other exception fails the test."""
    try:
        read(*args, **kwargs)
    except CaseError as err:
        assert not err.reason.startswith("internal"), err
        assert "found" in err.message and "expected" in err.message, err
        assert err.path, err
        return err.reason
    return "accepted"


def _report(title: str, results: Counter) -> None:
    print(f"\n{title}: {sum(results.values())} mutants")
    for (kind, reason), count in sorted(results.items()):
        print(f"  {kind:<22} {reason:<34} {count}")


def _kind(label: str) -> str:
    return label.split(" at ")[0].split(" byte ")[0].split(" of a ")[0].split(" -> ")[0]


def test_broken_nifti_files_end_as_named_case_errors(tmp_path):
    sources = _nifti_sources(tmp_path / "sources")
    mask_path = sources.pop("mask")
    image = read_volume(str(sources["ct_drift"]), "c/ct.nii.gz", "CT")
    results: Counter = Counter()
    for n, (name, path) in enumerate(sorted(sources.items())):
        rng = np.random.default_rng([SEED, n])
        suffix = ".nii.gz" if path.name.endswith(".gz") else ".nii"
        for i, (label, data) in enumerate(_nifti_mutants(path, rng, 30)):
            target = tmp_path / f"{name}_{i}{suffix}"
            target.write_bytes(data)
            reason = _outcome(read_volume, str(target), f"c/{target.name}", "CT",
                              max_voxels=MAX_VOXELS)
            results[(_kind(label), reason)] += 1
    rng = np.random.default_rng([SEED, 99])
    for i, (label, data) in enumerate(_nifti_mutants(mask_path, rng, 30)):
        target = tmp_path / f"mask_{i}.nii.gz"
        target.write_bytes(data)
        reason = _outcome(read_mask, str(target), f"c/segmentations/{target.name}",
                          image.geometry)
        results[("mask " + _kind(label), reason)] += 1
    _report("NIfTI", results)
    assert sum(results.values()) >= 110
    assert sum(c for (_, r), c in results.items() if r != "accepted") > 50


def test_broken_dicom_files_end_as_named_case_errors(tmp_path):
    results: Counter = Counter()
    sources = ("CT_small.dcm", "MR_small.dcm", "MR_small_jp2klossless.dcm")
    for n, name in enumerate(sources):
        rng = np.random.default_rng([SEED, 100 + n])
        clean = tmp_path / f"clean_{n}"
        restamp(_real(name), clean)
        files = sorted(clean.glob("*.dcm"))
        for i, (label, data) in enumerate(_dicom_mutants(files[1], rng, 32)):
            folder = tmp_path / f"{n}_{i}"
            shutil.copytree(clean, folder)
            (folder / files[1].name).write_bytes(data)
            pairs = [(str(p), f"c/dicom/{p.name}") for p in sorted(folder.glob("*.dcm"))]
            reason = _outcome(read_dicom_series, pairs, max_voxels=MAX_VOXELS)
            results[(_kind(label), reason)] += 1
    _report("DICOM", results)
    assert sum(results.values()) >= 90
    assert sum(c for (_, r), c in results.items() if r != "accepted") > 40


def test_an_element_with_corrupt_value_representation_is_named(tmp_path):
    # pydicom parses lazily and raises NotImplementedError on first use of an element whose
    # VR bytes are not a VR: it must reach the dead letters as dicom.bad_element.
    restamp(_real("CT_small.dcm"), tmp_path / "dicom")
    path = sorted((tmp_path / "dicom").glob("*.dcm"))[1]
    data = bytearray(path.read_bytes())
    at = data.find(b"\x20\x00\x32\x00DS")  # ImagePositionPatient, explicit VR little endian
    data[at + 4:at + 6] = b"QQ"
    length = struct.unpack("<H", data[at + 6:at + 8])[0]
    path.write_bytes(bytes(data))
    with pytest.raises(NotImplementedError):  # what pydicom does on its own
        pydicom.dcmread(path).ImagePositionPatient  # noqa: B018
    pairs = [(str(p), f"c/dicom/{p.name}") for p in sorted((tmp_path / "dicom").glob("*.dcm"))]
    with pytest.raises(CaseError) as info:
        read_dicom_series(pairs)
    err = info.value
    assert err.reason == "dicom.bad_element" and err.path == f"c/dicom/{path.name}"
    assert err.message.startswith("ImagePositionPatient (0020,0032): found value representation "
                                  f"'QQ' with {length} bytes"), err.message


def test_pixel_data_with_a_zero_length_field_is_truncated_pixel_data(tmp_path):
    # Found by the fuzzer (seed 7, 1,500 mutants): pydicom reads a zero-length PixelData
    # as None, which reached len() as internal.TypeError.
    restamp(_real("CT_small.dcm"), tmp_path / "dicom")
    path = sorted((tmp_path / "dicom").glob("*.dcm"))[1]
    data = bytearray(path.read_bytes())
    at = data.rfind(b"\xe0\x7f\x10\x00OW")
    data[at + 8:at + 12] = struct.pack("<I", 0)
    path.write_bytes(bytes(data))
    pairs = [(str(p), f"c/dicom/{p.name}") for p in sorted((tmp_path / "dicom").glob("*.dcm"))]
    with pytest.raises(CaseError) as info:
        read_dicom_series(pairs)
    assert info.value.reason == "dicom.truncated_pixel_data"
    assert info.value.message.startswith("PixelData (7FE0,0010): found 0 bytes, expected 32768")


def test_a_corrupt_element_inside_a_sequence_is_named_with_its_path(tmp_path):
    source = Path(_real("eCT_Supplemental.dcm"))
    data = bytearray(source.read_bytes())
    at = data.find(b"\x28\x00\x30\x00DS")  # PixelSpacing inside the functional groups
    assert at > 0
    data[at + 4:at + 6] = b"QQ"
    (tmp_path / "dicom").mkdir()
    target = tmp_path / "dicom" / "enhanced.dcm"
    target.write_bytes(bytes(data))
    with pytest.raises(CaseError) as info:
        read_dicom_series([(str(target), "c/dicom/enhanced.dcm")])
    assert info.value.reason == "dicom.bad_element"
    assert "item 1 > " in info.value.message and "PixelSpacing (0028,0030)" in info.value.message


def test_the_mutants_are_the_same_on_every_run(tmp_path):
    path = _nifti_sources(tmp_path)["ct_drift"]
    first = list(_nifti_mutants(path, np.random.default_rng([SEED, 0]), 30))
    again = list(_nifti_mutants(path, np.random.default_rng([SEED, 0]), 30))
    assert first == again and len(first) == 30


def test_read_itk_still_reads_what_the_mutants_start_from(tmp_path):
    sources = _nifti_sources(tmp_path)
    for name, path in sources.items():
        array, geometry = read_itk(str(path), name)
        canon, _ = canonicalise(array, geometry)
        assert canon.shape == SHAPE, name
