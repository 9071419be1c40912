"""Privacy: canary strings in every identifying place of the inputs, none in any output byte.

The inputs carry a unique canary in every PHI-bearing DICOM attribute of PS3.15 Annex E's
Basic Application Level Confidentiality Profile that a CT image can hold (names, IDs, dates
and times, UIDs, accession number, institution, physicians, descriptions, comments,
sequences, private tags, file meta), in NIfTI header text (``descrip``, ``aux_file``,
``intent_name``, ``db_name``, a comment extension, the gzip file name), in NRRD header
fields, in PNG ancillary chunks (tEXt, zTXt, iTXt, tIME, eXIf, iCCP, a private chunk, bytes
after IEND), in ``meta.csv`` and in sidecar files, and in every case folder and file name
that is not a label by design (``segmentations/<structure>``, ``labels.json`` names and the tree's
``<region>/<label>`` folders are labels).  Each corpus kind is built from them and every
output byte is scanned — raw files, every Parquet cell and its key-value metadata, PNG
chunks (inflated), base64 images inside JSON, TSV and HTML, the manifest, the card, the
report, ``.radvqa/`` and ``dead_letters/`` — and so are the llava, sharegpt and vlmevalkit
exports.  Only a rejected case's relative source path may appear, and only in
``dead_letters/``.

Pseudonyms are checked against HMAC-SHA256 as :mod:`pipeline.core.keys` defines it, for a key
from the recipe, from the environment (which wins) and the built-in default (which warns).
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import hmac
import io
import json
import re
import shutil
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
import pytest
import SimpleITK as sitk
import yaml
from pydicom.dataset import Dataset

from pipeline.config.recipes import load_recipe
from pipeline.config.resources import resource_dir
from pipeline.core import keys
from pipeline.core.imaging import PNG_KEEP, encode_png, strip_png_metadata
from pipeline.exports.registry import export_corpus
from pipeline.inputs.phantoms import make_phantom
from pipeline.inputs.readers import read_dicom_series
from pipeline.inputs.sample import write_case
from pipeline.launch.build import build
from pipeline.launch.card import DEIDENTIFICATION
from pipeline.launch.finalise import fingerprint, public_recipe
from pipeline.schema.layout import PRIVATE_DIRS
from tests.dicom_factory import as_pairs, ramp_volume, write_series

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: A root for canary UIDs; the digits after it are what makes each one unique.
CANARY_UID_ROOT = "1.2.826.0.1.3680043.10.999"
TEXT_CHUNKS = {b"tEXt", b"zTXt", b"iTXt", b"tIME", b"eXIf", b"iCCP", b"sPLT"}

# Free text in a CS attribute is the point of some inputs here; pydicom warns on reading it.
pytestmark = pytest.mark.filterwarnings("ignore:.*VR CS:UserWarning")


# ----------------------------------------------------------------------------- canaries


@dataclass(frozen=True)
class Canary:
    needle: bytes  # lower case (matched case-insensitively) unless ``exact``
    where: str  # the input place it was put in
    exact: bool = False
    dead_letters_ok: bool = False  # a rejected case's path: allowed in dead_letters/ only


class Canaries:
    """Unique strings, each remembered with the input place it went into."""

    def __init__(self):
        self.items: list[Canary] = []
        self._n = 0

    def _next(self) -> int:
        self._n += 1
        assert self._n < 1000, "three digits per token: no token may be a prefix of another"
        return self._n

    def _add(self, needle: str | bytes, where: str, **kw) -> None:
        data = needle.encode() if isinstance(needle, str) else needle
        self.items.append(Canary(data if kw.get("exact") else data.lower(), where, **kw))

    def text(self, where: str, *, dead_letters_ok: bool = False) -> str:
        """``ZQCANARYnnn``: 11 characters, fits SH/CS/AE (16) and NIfTI's intent_name."""
        token = f"ZQCANARY{self._next():03d}"
        self._add(token, where, dead_letters_ok=dead_letters_ok)
        return token

    def uid(self, where: str) -> str:
        """A valid UID whose last component (13 digits) is unique; the digits are a canary."""
        digits = f"86420{self._next():03d}97531"
        self._add(digits, f"{where} (UID digits)")
        return f"{CANARY_UID_ROOT}.{digits}"

    def date(self, where: str) -> str:
        n = self._next()
        value = f"{1900 + n:04d}{1 + n % 12:02d}{1 + n % 28:02d}"
        self._add(value, where)
        return value

    def time(self, where: str) -> str:
        n = self._next()
        value = f"{n % 24:02d}{n * 7 % 60:02d}{n * 13 % 60:02d}.97{n:04d}"
        self._add(value, where)
        return value

    def datetime(self, where: str) -> str:
        date, time = self.date(where + " (date part)"), self.time(where + " (time part)")
        return date + time

    def raw(self, data: bytes, where: str) -> bytes:
        """A binary canary, matched byte for byte."""
        self._add(data, where, exact=True)
        return data


class Scanner:
    def __init__(self, canaries: Canaries):
        self.text = {c.needle: c for c in canaries.items if not c.exact}
        self.exact = [c for c in canaries.items if c.exact]
        self.pattern = re.compile(b"|".join(re.escape(n) for n in sorted(self.text, key=len,
                                                                           reverse=True)))

    def hits(self, blob: bytes) -> set[Canary]:
        found = {self.text[m.group()] for m in self.pattern.finditer(blob.lower())}
        return found | {c for c in self.exact if c.needle in blob}


def find(root: Path, canaries: Canaries, *, skip=lambda rel: False) -> dict[str, set]:
    """``{part: canaries found}`` for every file under ``root`` (hidden folders included):
    its relative path, its bytes and everything decodable inside them (:func:`expand`).
    A :class:`Problem` (e.g. a text chunk kept in a stored PNG) is reported as found."""
    scanner, out = Scanner(canaries), {}
    files = sorted(p for p in root.rglob("*") if p.is_file())
    assert files, f"nothing to scan under {root}"
    for path in files:
        rel = path.relative_to(root).as_posix()
        if skip(rel):
            continue
        for part, blob in [(f"{rel} (path)", rel.encode()), *expand(rel, path.read_bytes())]:
            hits = {blob} if isinstance(blob, Problem) else scanner.hits(blob)
            if hits:
                out.setdefault(part, set()).update(hits)
    return out


def scan(root: Path, canaries: Canaries, *, dead_letters=("dead_letters",)) -> list[str]:
    """Every canary found under ``root``, as ``file | part: canary (where)``.

    Canaries marked ``dead_letters_ok`` may appear in the ``dead_letters`` folders.
    """
    out = []
    for part, hits in find(root, canaries).items():
        operator_only = part.split("/", 1)[0] in dead_letters
        for hit in hits:
            if isinstance(hit, Problem):
                out.append(f"{part}: {hit.text}")
            elif not (hit.dead_letters_ok and operator_only):
                out.append(f"{part}: {hit.needle!r} ({hit.where})")
    return sorted(out)


@dataclass(frozen=True)
class Problem:
    text: str


BASE64_RUN = re.compile(rb"[A-Za-z0-9+/]{64,}={0,2}")


def expand(where: str, data: bytes):
    """``(part, bytes)``: the data itself and everything decodable inside it."""
    yield where, data
    if data[:2] == b"\x1f\x8b":
        yield from expand(f"{where} | gunzip", gzip.decompress(data))
    elif data.startswith(PNG_SIGNATURE):
        yield from png_parts(where, data)
    elif data[:4] == b"PAR1":
        yield from parquet_parts(where, data)
    elif not data.startswith(b"\x93NUMPY"):
        for m in BASE64_RUN.finditer(data):
            try:
                decoded = base64.b64decode(m.group(), validate=True)
            except ValueError:
                continue
            if decoded.startswith((PNG_SIGNATURE, b"PAR1", b"\x1f\x8b", b"\x93NUMPY")):
                yield from expand(f"{where} | base64 at {m.start()}", decoded)


def png_parts(where: str, data: bytes):
    """Every chunk's payload, compressed text and profiles inflated, the inflated image
    data, and anything after IEND; a text/time/EXIF chunk is a problem in itself."""
    pos, idat = 8, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        here = f"{where} | PNG {kind.decode('latin-1')}"
        if kind in TEXT_CHUNKS or kind not in PNG_KEEP:
            yield here, Problem(f"stored PNG keeps a {kind!r} chunk")
        try:
            if kind in (b"zTXt", b"iCCP"):
                yield here, zlib.decompress(chunk.split(b"\0", 1)[1][1:])
            elif kind == b"iTXt":
                _, rest = chunk.split(b"\0", 1)
                flag, rest = rest[0], rest[2:]
                text = rest.split(b"\0", 2)[2]
                yield here, zlib.decompress(text) if flag else text
        except (zlib.error, IndexError):
            yield here, Problem("undecodable compressed chunk")
        if kind == b"IDAT":
            idat.append(chunk)
        pos += 12 + length
        if kind == b"IEND":
            break
    if pos < len(data):
        yield f"{where} | after IEND", data[pos:]
    if idat:
        try:
            yield f"{where} | IDAT inflated", zlib.decompress(b"".join(idat))
        except zlib.error:
            yield where, Problem("IDAT does not inflate")


def _walk(value, row: int, texts: list, binaries: list) -> None:
    """Struct fields and list items down to scalars: text to ``texts``, bytes to ``binaries``."""
    if isinstance(value, dict):
        for v in value.values():
            _walk(v, row, texts, binaries)
    elif isinstance(value, list):
        for v in value:
            _walk(v, row, texts, binaries)
    elif isinstance(value, bytes):
        binaries.append((row, value))
    elif value is not None:
        texts.append(str(value))


def parquet_parts(where: str, data: bytes):
    """Schema and key-value metadata, every column's cells (structs and lists walked),
    and each binary cell expanded (stored PNG and .npy bytes)."""
    pf = pq.ParquetFile(io.BytesIO(data))
    meta = pf.metadata.metadata or {}
    yield f"{where} | key-value metadata", b"\n".join(k + b"=" + v for k, v in meta.items())
    table = pf.read()
    yield f"{where} | schema", str(table.schema).encode()
    for name in table.column_names:
        texts: list[str] = []
        binaries: list[tuple[int, bytes]] = []
        for row, value in enumerate(table.column(name).to_pylist()):
            _walk(value, row, texts, binaries)
        yield f"{where} | column {name}", "\n".join(texts).encode()
        for row, blob in binaries:
            yield from expand(f"{where} | column {name} row {row}", blob)


# ------------------------------------------------------------------------ DICOM inputs


def annex_e_attributes(c: Canaries) -> dict:
    """A canary in every PHI-bearing attribute of the Basic Profile a CT image can carry,
    each value valid for its VR (SH/CS ≤ 16 characters, DA/TM/DT digits, UIDs) — except
    BodyPartExamined, free text on purpose.  Age, sex and weight get plain values: too short
    to be told apart from other bytes, and no more read than the rest."""
    pn = ("PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
          "ResponsiblePerson", "ReferringPhysicianName", "PerformingPhysicianName",
          "OperatorsName", "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy",
          "RequestingPhysician", "ContentCreatorName")
    text = ("PatientID", "IssuerOfPatientID", "OtherPatientIDs", "PatientAddress",
            "PatientTelephoneNumbers", "MilitaryRank", "BranchOfService", "MedicalRecordLocator",
            "EthnicGroup", "Occupation", "PatientComments", "AdditionalPatientHistory",
            "CountryOfResidence", "RegionOfResidence", "PatientReligiousPreference",
            "MedicalAlerts", "Allergies", "ResponsibleOrganization", "AccessionNumber", "StudyID",
            "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
            "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers", "StationName",
            "DeviceSerialNumber", "DetectorID", "GantryID", "StudyDescription",
            "SeriesDescription", "ProtocolName", "ImageComments", "AdmittingDiagnosesDescription",
            "DerivationDescription", "PerformedProcedureStepID",
            "PerformedProcedureStepDescription", "RequestedProcedureDescription", "AdmissionID",
            "RequestingService", "VisitComments", "Manufacturer", "ManufacturerModelName",
            "SoftwareVersions", "PatientState")
    dates = ("PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate",
             "InstanceCreationDate", "PerformedProcedureStepStartDate")
    times = ("PatientBirthTime", "StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime",
             "InstanceCreationTime", "PerformedProcedureStepStartTime")
    uids = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
            "SynchronizationFrameOfReferenceUID", "IrradiationEventUID", "InstanceCreatorUID")
    out: dict = {}
    for k in pn:
        out[k] = f"{c.text(f'DICOM {k} (family)')}^{c.text(f'DICOM {k} (given)')}"
    for k in text:
        out[k] = c.text(f"DICOM {k}")
    for k in dates:
        out[k] = c.date(f"DICOM {k}")
    for k in times:
        out[k] = c.time(f"DICOM {k}")
    out["AcquisitionDateTime"] = c.datetime("DICOM AcquisitionDateTime")
    for k in uids:
        out[k] = c.uid(f"DICOM {k}")
    # Free text where a code string belongs: must be dropped, not passed on.
    out["BodyPartExamined"] = f"liver of {c.text('DICOM BodyPartExamined (free text)')}"
    out["PatientSex"], out["PatientAge"], out["PatientWeight"] = "O", "061Y", 71.5
    out["OtherPatientIDsSequence"] = [_item(
        PatientID=c.text("DICOM OtherPatientIDsSequence > PatientID"),
        IssuerOfPatientID=c.text("DICOM OtherPatientIDsSequence > IssuerOfPatientID"))]
    out["RequestAttributesSequence"] = [_item(
        RequestedProcedureID=c.text("DICOM RequestAttributesSequence > RequestedProcedureID"),
        ScheduledProcedureStepID=c.text("DICOM RequestAttributesSequence > ScheduledProcedureStepID"),
        ScheduledProcedureStepDescription=c.text(
            "DICOM RequestAttributesSequence > ScheduledProcedureStepDescription"))]
    out["ReferencedStudySequence"] = [_item(
        ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.1",
        ReferencedSOPInstanceUID=c.uid("DICOM ReferencedStudySequence > ReferencedSOPInstanceUID"))]
    out["ProcedureCodeSequence"] = [_item(
        CodeValue=c.text("DICOM ProcedureCodeSequence > CodeValue"),
        CodingSchemeDesignator="99ZQ",
        CodeMeaning=c.text("DICOM ProcedureCodeSequence > CodeMeaning"))]
    return out


def _item(**values) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def stamp_phi(ds: Dataset, attributes: dict, private: dict) -> None:
    """Set the Annex E attributes, a private block, and canaries in the file meta."""
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    block = ds.private_block(0x0029, private["creator"], create=True)
    block.add_new(0x10, "LO", private["LO"])
    block.add_new(0x11, "UT", private["UT"])
    block.add_new(0x12, "OB", private["OB"])
    ds.file_meta.SourceApplicationEntityTitle = private["AE"]
    ds.file_meta.ImplementationVersionName = private["SH"]


def write_dicom_case(root: Path, c: Canaries) -> str:
    """Phantom 0 as a DICOM case: every Annex E attribute a canary, canary file and folder
    names, a second (ignored) series, a non-image DICOM object and a stray text file."""
    folder = f"{c.text('case folder name (DICOM)')}_dicom"
    case = root / folder
    write_case(make_phantom(0), case, "dicom")
    attributes = annex_e_attributes(c)
    private = {"creator": c.text("DICOM private creator"), "LO": c.text("DICOM private LO"),
               "UT": f"free text {c.text('DICOM private UT')}",
               "OB": b"\x00" + c.text("DICOM private OB").encode() + b"\x00",
               "AE": c.text("DICOM file meta SourceApplicationEntityTitle"),
               "SH": c.text("DICOM file meta ImplementationVersionName")}
    sop_stem = c.uid("DICOM SOPInstanceUID")
    sub = case / "dicom" / c.text("folder name inside dicom/")
    sub.mkdir()
    stem = c.text("DICOM file names")
    originals = sorted((case / "dicom").glob("*.dcm"))
    for k, path in enumerate(originals):
        ds = pydicom.dcmread(path)
        stamp_phi(ds, attributes, private)
        ds.SOPInstanceUID = f"{sop_stem}.{k + 1}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(sub / f"{stem}_{k:03d}.dcm", enforce_file_format=True)
        path.unlink()
    # A one-slice second series (a scout) with canaries of its own: noted, not used.
    ds = pydicom.dcmread(sub / f"{stem}_000.dcm")
    ds.SeriesInstanceUID = c.uid("DICOM SeriesInstanceUID (ignored series)")
    ds.SOPInstanceUID = c.uid("DICOM SOPInstanceUID (ignored series)")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesDescription = c.text("DICOM SeriesDescription (ignored series)")
    ds.save_as(case / "dicom" / f"{c.text('DICOM file name (ignored series)')}.dcm",
               enforce_file_format=True)
    # A non-image object (a dose report) and a stray file: skipped, noted.
    sr = Dataset()
    sr.file_meta = pydicom.dataset.FileMetaDataset()
    sr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"
    sr.file_meta.MediaStorageSOPInstanceUID = c.uid("DICOM dose report SOPInstanceUID")
    sr.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID
    sr.SOPInstanceUID = sr.file_meta.MediaStorageSOPInstanceUID
    sr.Modality = "SR"
    sr.PatientName = c.text("DICOM dose report PatientName")
    sr.ContentSequence = [_item(ValueType="TEXT", TextValue=c.text("DICOM dose report TextValue"))]
    sr.save_as(case / "dicom" / f"{c.text('DICOM file name (dose report)')}.dcm",
               enforce_file_format=True)
    (case / "dicom" / f"{c.text('stray file name in dicom/')}.txt").write_text(
        f"scanned by {c.text('stray file content in dicom/')}\n")
    return folder


# ------------------------------------------------------------------------ NIfTI inputs


def patch_nifti(path: Path, c: Canaries, what: str) -> None:
    """Canaries in a NIfTI-1 file's header text, a comment extension and the gzip name."""
    raw = gzip.decompress(path.read_bytes())
    header = bytearray(raw[:348])
    assert struct.unpack("<i", header[:4])[0] == 348, f"{path}: not a little-endian NIfTI-1 file"
    data = raw[int(struct.unpack("<f", header[108:112])[0]):]
    for offset, size, field in ((148, 80, "descrip"), (228, 24, "aux_file"),
                                (328, 16, "intent_name"), (14, 18, "db_name")):
        value = c.text(f"NIfTI {field} ({what})").encode()
        header[offset:offset + size] = value.ljust(size, b"\0")
    comment = f"acquired for {c.text(f'NIfTI comment extension ({what})')}".encode()
    esize = -(-(8 + len(comment)) // 16) * 16
    extension = struct.pack("<4b2i", 1, 0, 0, 0, esize, 6) + comment.ljust(esize - 8, b"\0")
    header[108:112] = struct.pack("<f", 348 + len(extension))
    buf = io.BytesIO()
    name = f"{c.text(f'gzip file name ({what})')}.nii"
    with gzip.GzipFile(filename=name, mode="wb", fileobj=buf, mtime=0) as gz:
        gz.write(bytes(header) + extension + data)
    path.write_bytes(buf.getvalue())
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()  # still a valid NIfTI, its header text where readers see it
    assert reader.GetMetaData("descrip").startswith("ZQCANARY"), path


def write_nifti_case(root: Path, c: Canaries) -> str:
    """Phantom 1, TotalSegmentator layout: canary header text, a BIDS-style sidecar."""
    folder = f"{c.text('case folder name (TotalSegmentator)')}_nifti"
    case = root / folder
    write_case(make_phantom(1), case, "totalseg")
    patch_nifti(case / "ct.nii.gz", c, "ct.nii.gz")
    patch_nifti(case / "segmentations" / "liver.nii.gz", c, "segmentations/liver.nii.gz")
    (case / "ct.json").write_text(json.dumps({
        "PatientName": c.text("sidecar ct.json PatientName"),
        "AcquisitionDateTime": c.datetime("sidecar ct.json AcquisitionDateTime"),
        "InstitutionName": c.text("sidecar ct.json InstitutionName")}))
    return folder


def write_multilabel_case(root: Path, c: Canaries) -> str:
    """Phantom 4, multilabel layout: canary NIfTI and NRRD header text, a modality hint
    that is not a modality."""
    folder = f"{c.text('case folder name (multilabel)')}_multilabel"
    case = root / folder
    write_case(make_phantom(4), case, "multilabel")
    patch_nifti(case / "image.nii.gz", c, "image.nii.gz")
    (case / "modality.txt").write_text(c.text("modality.txt content") + "\n")
    # The label map as NRRD, whose header carries free text too (content, key:=value).
    labels = sitk.ReadImage(str(case / "labels.nii.gz"))
    labels.SetMetaData("NRRD_content", c.text("NRRD content field (labels.nrrd)"))
    labels.SetMetaData("PatientName", c.text("NRRD key:=value PatientName (labels.nrrd)"))
    sitk.WriteImage(labels, str(case / "labels.nrrd"), useCompression=True)
    (case / "labels.nii.gz").unlink()
    return folder


def write_volume_inputs(root: Path, c: Canaries) -> dict:
    """The three volume cases and a meta.csv with canary patient ids (the DICOM and the
    NIfTI case are one patient) and canary extra columns."""
    dicom, nifti, multi = write_dicom_case(root, c), write_nifti_case(root, c), write_multilabel_case(root, c)
    p1, p2 = c.text("meta.csv patient_id (patient 1)"), c.text("meta.csv patient_id (patient 2)")
    rows = ["image_id;patient_id;study_order;age;gender;institute;study_type"]
    for folder, patient, order in ((dicom, p1, 1), (nifti, p1, 2), (multi, p2, 1)):
        rows.append(f"{folder};{patient};{order};{c.text('meta.csv age')};"
                    f"{c.text('meta.csv gender')};{c.text('meta.csv institute')};"
                    f"{c.text('meta.csv study_type')}")
    (root / "meta.csv").write_text("\n".join(rows) + "\n")
    return {"cases": {dicom: p1, nifti: p1, multi: p2}, "dicom": dicom}


def write_broken_cases(root: Path, c: Canaries) -> dict:
    """A case rejected when read and a folder rejected at discovery, canary-named."""
    broken = f"{c.text('rejected case folder (read)', dead_letters_ok=True)}_broken"
    (root / broken / "segmentations").mkdir(parents=True)
    (root / broken / "ct.nii.gz").write_bytes(b"not a volume")
    shutil.copy(root / next(p.name for p in root.iterdir() if p.name.endswith("_nifti"))
                / "segmentations" / "liver.nii.gz", root / broken / "segmentations" / "liver.nii.gz")
    unknown = f"{c.text('rejected folder (discover)', dead_letters_ok=True)}_unknown"
    (root / unknown).mkdir()
    (root / unknown / f"{c.text('file in rejected folder', dead_letters_ok=True)}.txt").write_text("x")
    return {"read": broken, "discover": unknown}


# ------------------------------------------------------------------------- tree inputs


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _exif(c: Canaries, n: int) -> bytes:
    """A big-endian TIFF/EXIF block with ImageDescription and Artist canaries."""
    desc = c.text(f"PNG eXIf ImageDescription (image {n})").encode() + b"\0"
    artist = c.text(f"PNG eXIf Artist (image {n})").encode() + b"\0"
    first = 8 + 2 + 2 * 12 + 4
    return (b"MM\x00\x2a" + struct.pack(">IH", 8, 2)
            + struct.pack(">HHII", 0x010E, 2, len(desc), first)
            + struct.pack(">HHII", 0x013B, 2, len(artist), first + len(desc))
            + struct.pack(">I", 0) + desc + artist)


def canary_png(c: Canaries, n: int, *, only_trailing: bool = False) -> bytes:
    """A small PNG carrying canaries in every ancillary place (or only after IEND)."""
    pixels = (np.arange(256, dtype=np.uint16).reshape(16, 16) * (n + 3) % 251).astype(np.uint8)
    plain = encode_png(pixels, 6)
    ihdr_end = 8 + 25
    iend = plain[-12:]
    tail = c.text(f"PNG bytes after IEND (image {n})").encode()
    if only_trailing:
        return plain + tail
    before = b"".join([
        _chunk(b"tEXt", b"Author\0" + c.text(f"PNG tEXt (image {n})").encode()),
        _chunk(b"zTXt", b"Comment\0\0" + zlib.compress(c.text(f"PNG zTXt (image {n})").encode())),
        _chunk(b"iTXt", b"Description\0\x01\x00en\0Beschreibung\0"
               + zlib.compress(c.text(f"PNG iTXt compressed (image {n})").encode())),
        _chunk(b"iTXt", b"Title\0\x00\x00\0\0" + c.text(f"PNG iTXt (image {n})").encode()),
        _chunk(b"tIME", c.raw(struct.pack(">HBBBBB", 1901 + n, 2, 3, 4, 5, 6), f"PNG tIME (image {n})")),
        _chunk(b"eXIf", _exif(c, n)),
        _chunk(b"iCCP", c.text(f"PNG iCCP profile name (image {n})").encode() + b"\0\0"
               + zlib.compress(b"profile " + c.text(f"PNG iCCP profile (image {n})").encode())),
        _chunk(b"prVt", c.text(f"PNG private chunk (image {n})").encode()),
    ])
    after = _chunk(b"tEXt", b"Software\0" + c.text(f"PNG tEXt after IDAT (image {n})").encode())
    return plain[:ihdr_end] + before + plain[ihdr_end:-12] + after + iend + tail


def write_tree_inputs(root: Path, c: Canaries) -> dict:
    """CT images in two regions (four labels in one), canary file names and PNG metadata; the folders
    ``<modality>/<region>/<label>`` are labels and stay canary-free.  Plus a broken PNG and
    a file outside the layout (rejected: their paths may appear in dead_letters/ only) and a
    stray top-level folder the recipe does not select."""
    images = {}
    n = 0
    # four abdomen labels: a benchmark region needs at least as many labels as options
    for region, labels in (("abdomen", ("liver_lesion", "renal_lesion", "splenic_lesion", "normal")),
                           ("chest", ("nodule", "normal"))):
        for label in labels:
            d = root / "CT" / region / label
            d.mkdir(parents=True)
            for _ in range(6 if region == "abdomen" else 4):
                name = f"{c.text(f'PNG file name (image {n})')}.png"
                (d / name).write_bytes(canary_png(c, n, only_trailing=n % 4 == 3))
                images[f"CT/{region}/{label}/{name}"] = n
                n += 1
    bad = root / "CT" / "chest" / "normal" / f"{c.text('broken PNG file name', dead_letters_ok=True)}.png"
    data = bytearray(canary_png(c, 99))
    data[40] ^= 0xFF  # CRC mismatch
    bad.write_bytes(bytes(data))
    stray = root / "CT" / "abdomen" / f"{c.text('PNG outside the layout', dead_letters_ok=True)}.png"
    stray.write_bytes(encode_png(np.zeros((4, 4), np.uint8)))
    extra = root / f"{c.text('stray top-level folder name')}_extras"
    extra.mkdir()
    (extra / f"{c.text('file in stray top-level folder')}.png").write_bytes(canary_png(c, 98))
    (root / f"{c.text('stray top-level file name')}.txt").write_text(c.text("stray top-level file content"))
    return images


# ------------------------------------------------------------------------------ builds


def hmac_pseudonym(key: str, kind: str, text: str) -> str:
    """HMAC-SHA256 of ``kind \\x1f text`` under ``key``, first 20 hex digits (keys.py)."""
    return hmac.new(key.encode(), f"{kind}\x1f{text}".encode(), hashlib.sha256).hexdigest()[:20]


def recipe_copy(folder: Path, builtin: str, key: str | None, **changes) -> str:
    """A copy of a built-in recipe with ``privacy.pseudonym_key = key`` and sections updated."""
    data = yaml.safe_load((resource_dir("recipes") / f"{builtin}.yaml").read_text())
    for section, values in changes.items():
        data[section] = values if not isinstance(values, dict) else {**data.get(section, {}), **values}
    data["name"] = f"privacy-{builtin}"
    if key is not None:
        data["privacy"] = {"pseudonym_key": key}
    path = folder / f"privacy-{builtin}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


@dataclass
class Built:
    out: Path
    result: object
    log: list[str]
    warned: list[str]
    exports: dict


def run_build(recipe: str, out: Path, input_dir: Path, exports=("llava", "sharegpt", "vlmevalkit"),
              **kw) -> Built:
    log: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = build(recipe, str(out), input_dir=str(input_dir), log=log.append,
                       max_reject_fraction=1.0, **kw)
    done = {}
    for fmt in exports:
        target = out.parent / f"{out.name}-export-{fmt}"
        tree = result.manifest["kind"] == "tree"
        splits = None  # every split for llava/sharegpt
        if fmt == "vlmevalkit" and not tree:  # every split with images, not only test
            splits = [s for s, n in result.manifest["splits"].items() if n["images"]]
        export_corpus(str(out), str(target), fmt, splits=splits,
                      captions=fmt != "vlmevalkit" and tree)
        done[fmt] = target
    return Built(out, result, log, [str(w.message) for w in caught], done)


@contextlib.contextmanager
def quiet_pydicom():
    """Write invalid values (free text in a CS attribute) without pydicom's warnings."""
    from pydicom import config

    previous = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        yield
    finally:
        config.settings.writing_validation_mode = previous


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Inputs with canaries, and every corpus built from them (with exports)."""
    c = Canaries()
    base = tmp_path_factory.mktemp("privacy")
    recipe_key, env_key = c.text("recipe privacy.pseudonym_key"), c.text("$RADVQA_PSEUDONYM_KEY")
    volumes_in = base / "volumes-in"
    with quiet_pydicom():
        facts = write_volume_inputs(volumes_in, c)
    tree_in = base / "tree-in"
    tree_images = write_tree_inputs(tree_in, c)
    broken_in = base / "broken-in"
    shutil.copytree(volumes_in, broken_in)
    broken = write_broken_cases(broken_in, c)
    recipes = base / "recipes"
    recipes.mkdir()
    slices_recipe = recipe_copy(recipes, "sample", recipe_key, slices={"planes": ["axial"]})
    tree_recipe = recipe_copy(recipes, "radimagenet-vqa", recipe_key,
                              splits={"fractions": {"train": 0.5, "test": 0.5}},
                              benchmark={"images": 4})
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(keys.PSEUDONYM_KEY_ENV, raising=False)
        slices = run_build(slices_recipe, base / "slices", volumes_in)
        tree = run_build(tree_recipe, base / "tree", tree_in)
        volumes = run_build("3d-rad", base / "volumes", volumes_in, exports=("llava",))  # sharegpt refuses volumes
        mp.setenv(keys.PSEUDONYM_KEY_ENV, env_key)
        env = run_build(slices_recipe, base / "slices-env", broken_in)
    return {"canaries": c, "recipe_key": recipe_key, "env_key": env_key, "facts": facts,
            "inputs": [volumes_in, tree_in, broken_in, recipes],
            "tree_images": tree_images, "broken": broken, "slices": slices, "tree": tree,
            "volumes": volumes, "env": env, "base": base}


def _no_leaks(built: Built, c: Canaries) -> None:
    assert [p for p in (built.out / ".radvqa" / "units").iterdir()]  # build state is scanned too
    found = scan(built.out, c)
    for fmt, target in built.exports.items():
        found += [f"export {fmt}: {hit}" for hit in scan(target, c, dead_letters=())]
    assert not found, "canaries reached the output:\n" + "\n".join(found)


# ------------------------------------------------------------------------------- tests


def test_scanner_finds_canaries_wherever_they_are_hidden(tmp_path):
    """The scanner itself: compressed Parquet cells, metadata, PNG chunks, base64 text."""
    c = Canaries()
    cell, meta, png_name = c.text("cell"), c.text("metadata"), c.text("png")
    table = pa.table({"a": [f"row {cell}"] * 50, "b": [{"x": [1.0], "img": canary_png(c, 1)}] * 1
                      + [None] * 49}).replace_schema_metadata({"k": meta})
    pq.write_table(table, tmp_path / "t.parquet", compression="zstd")
    parts = dict(parquet_parts("t", (tmp_path / "t.parquet").read_bytes()))
    assert cell.encode() in parts["t | column a"] and meta.encode() in parts["t | key-value metadata"]
    png = _chunk(b"zTXt", b"k\0\0" + zlib.compress(png_name.encode()))
    html = b"<img src='data:image/png;base64," + base64.b64encode(
        encode_png(np.zeros((8, 8), np.uint8))[:33] + png + encode_png(np.zeros((8, 8), np.uint8))[33:]) + b"'>"
    (tmp_path / "r.html").write_bytes(html)
    found = "\n".join(scan(tmp_path, c))
    for c_ in c.items:
        assert f"({c_.where})" in found, c_.where
    assert "stored PNG keeps a b'zTXt' chunk" in found


def test_every_canary_is_planted_in_the_inputs(world):
    """Positive control: each canary is where it was put — in a header the readers parse
    (DICOM, NIfTI), a PNG chunk, a table, a file or folder name, the recipe — except the
    environment's key, which is in no file."""
    c = world["canaries"]
    planted = set()
    for root in world["inputs"]:
        # the masks are 24 plain phantoms per case: only the one given canaries is read
        for hits in find(root, c, skip=lambda rel: "/segmentations/" in rel
                         and not rel.endswith("/liver.nii.gz")).values():
            planted |= hits
    missing = sorted(x.where for x in set(c.items) - planted)
    assert missing == ["$RADVQA_PSEUDONYM_KEY"]
    assert len(c.items) > 300


def test_canaries_never_reach_the_slices_corpus(world):
    built = world["slices"]
    assert built.result.manifest["counts"]["extract"]["accepted"] == 3
    assert built.result.manifest["counts"]["discover"]["rejected"] == 0
    _no_leaks(built, world["canaries"])


def test_canaries_never_reach_the_volumes_corpus(world):
    built = world["volumes"]
    assert built.result.manifest["counts"]["extract"]["accepted"] == 3
    _no_leaks(built, world["canaries"])


def test_canaries_never_reach_the_tree_corpus(world):
    built = world["tree"]
    counts = built.result.manifest["counts"]
    assert counts["read"]["accepted"] == len(world["tree_images"])
    assert counts["read"]["rejected_by_reason"] == {"image.unreadable": 1}
    assert counts["discover"]["rejected_by_reason"] == {"source.not_in_layout": 1}
    assert counts["discover"]["excluded_by_recipe"] == {"excluded_modality_other": 1}
    assert built.result.manifest["benchmark"]["images"] > 0
    _no_leaks(built, world["canaries"])


def test_stored_tree_pngs_keep_their_pixels_without_metadata(world):
    stored = [r["image"]["bytes"] for r in pq.read_table(world["tree"].out / "alignment").to_pylist()]
    assert len(stored) == len(world["tree_images"])
    for data in stored:
        kinds = []
        pos = 8
        while pos < len(data):
            length, kind = struct.unpack(">I4s", data[pos:pos + 8])
            kinds.append(kind)
            pos += 12 + length
        assert kinds == [b"IHDR", b"IDAT", b"IEND"] and pos == len(data)


def test_rejected_paths_appear_only_in_dead_letters(world):
    built, c = world["env"], world["canaries"]
    _no_leaks(built, c)  # dead_letters_ok canaries are allowed under dead_letters/ only
    letters = [json.loads(line) for line in
               (built.out / "dead_letters" / "dead_letters.jsonl").read_text().splitlines()]
    broken = world["broken"]
    assert sorted((d["stage"], d["source"]) for d in letters) == sorted([
        ("discover", broken["discover"]), ("read", f"{broken['read']}/ct.nii.gz")])
    # the scan above found their canaries nowhere else; the full names, to be explicit:
    outside = [p for p in built.out.rglob("*") if p.is_file()
               and p.relative_to(built.out).parts[0] != "dead_letters"]
    for path in outside:
        data = path.read_bytes()
        assert not any(name.encode() in data for name in broken.values()), path
    tree_letters = (world["tree"].out / "dead_letters" / "dead_letters.jsonl").read_text()
    assert len(tree_letters.splitlines()) == 2


def test_exports_never_include_dead_letters(world):
    for built in (world["env"], world["tree"], world["slices"]):
        for fmt, target in built.exports.items():
            for path in target.rglob("*"):
                rel = path.relative_to(target).as_posix()
                assert not any(part in rel for part in PRIVATE_DIRS), (fmt, rel)
                if path.is_file():
                    data = path.read_bytes()
                    assert b"dead_letters" not in data and b"volume.unreadable" not in data, (fmt, rel)
    assert set(PRIVATE_DIRS) == {"dead_letters", ".radvqa", "report"}


def _column(out: Path, config: str, name: str) -> list:
    return pq.read_table(out / config, columns=[name]).column(name).to_pylist()


def test_pseudonyms_are_hmac_sha256_of_the_recipe_key(world):
    built, key, facts = world["slices"], world["recipe_key"], world["facts"]
    expected_cases = {hmac_pseudonym(key, "case", folder) for folder in facts["cases"]}
    assert set(_column(built.out, "images", "case_key")) == expected_cases
    assert set(_column(built.out, "structures", "case_key")) == expected_cases
    pairs = set(zip(_column(built.out, "images", "case_key"),
                    _column(built.out, "images", "patient_key")))
    assert pairs == {(hmac_pseudonym(key, "case", f), hmac_pseudonym(key, "patient", p))
                     for f, p in facts["cases"].items()}
    assert len({p for _, p in pairs}) == 2  # the DICOM and NIfTI cases are one patient
    assert all(keys.pseudonym(key, "case", f) == hmac_pseudonym(key, "case", f) for f in facts["cases"])
    tree = world["tree"]
    assert set(_column(tree.out, "alignment", "image_id")) == {
        hmac_pseudonym(key, "image", rel) for rel in world["tree_images"]}
    for b in (built, tree):
        assert not [m for m in b.log if "warning" in m.lower()]
        assert not [w for w in b.warned if "pseudonym" in w]


def test_the_environment_key_wins_and_gives_other_pseudonyms(world):
    env, facts = world["env"], world["facts"]
    keys_env = set(_column(env.out, "images", "case_key"))
    assert keys_env == {hmac_pseudonym(world["env_key"], "case", f) for f in facts["cases"]}
    assert not keys_env & set(_column(world["slices"].out, "images", "case_key"))
    assert not set(_column(env.out, "images", "patient_key")) & set(
        _column(world["slices"].out, "images", "patient_key"))
    assert not [m for m in env.log if "warning" in m.lower()]
    assert not [w for w in env.warned if "pseudonym" in w]
    letters = (env.out / "dead_letters" / "dead_letters.jsonl").read_text()
    for source in world["broken"].values():
        assert hmac_pseudonym(world["env_key"], "case", source) in letters


def test_the_default_key_warns_and_the_card_says_so(world):
    built, facts = world["volumes"], world["facts"]
    assert any("warning: pseudonyms use the built-in default key" in m for m in built.log)
    assert set(_column(built.out, "volumes", "case_key")) == {
        hmac_pseudonym(keys.DEFAULT_PSEUDONYM_KEY, "case", f) for f in facts["cases"]}
    card = (built.out / "README.md").read_text()
    assert "built with the built-in default pseudonym key" in card
    for name in ("slices", "tree", "env"):
        assert "built-in default pseudonym key" not in (world[name].out / "README.md").read_text()


def test_the_pseudonym_key_is_never_published(world):
    for name in ("slices", "tree", "env"):
        out = world[name].out
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["recipe"]["content"]["privacy"] == {"pseudonym_key": "<redacted>"}
        for rel in ("manifest.json", "README.md", "report/index.html"):
            text = (out / rel).read_text().lower()
            assert world["recipe_key"].lower() not in text and world["env_key"].lower() not in text
    data = {"name": "x", "privacy": {"pseudonym_key": "secret"}}
    assert public_recipe(data)["privacy"]["pseudonym_key"] == "<redacted>"
    assert data["privacy"]["pseudonym_key"] == "secret"  # the recipe itself is untouched


def test_the_published_fingerprint_does_not_depend_on_the_key(tmp_path):
    a = load_recipe(recipe_copy(tmp_path, "sample", "first-secret"))
    (tmp_path / "b").mkdir()
    b = load_recipe(recipe_copy(tmp_path / "b", "sample", "second-secret"))
    assert fingerprint(a, 1) == fingerprint(b, 1)


def test_the_card_states_what_is_and_is_not_deidentified(world):
    statement = "\n".join(DEIDENTIFICATION)
    for phrase in ("HMAC-SHA256", "No file or folder name of the input reaches",
                   "`BodyPartExamined` (only when it is a plain DICOM code string)",
                   "private tags", "NIfTI/NRRD/MHA header text", "PNG text, time and EXIF chunks",
                   "What radvqa does not de-identify", "text burned into the pixels",
                   "faces", "head CT/MR volumes",
                   "`dead_letters/` is operator-only", "no export includes it",
                   "must not be published"):
        assert phrase in statement, phrase
    for name in ("slices", "tree", "volumes", "env"):
        card = (world[name].out / "README.md").read_text()
        assert statement in card, name


def test_the_dicom_case_keeps_only_allow_listed_header_values(world):
    rows = pq.read_table(world["slices"].out / "images", columns=["case_key", "body_part",
                                                                  "modality"]).to_pylist()
    dicom_key = hmac_pseudonym(world["recipe_key"], "case", world["facts"]["dicom"])
    mine = [r for r in rows if r["case_key"] == dicom_key]
    assert mine and all(r["body_part"] == "" and r["modality"] == "CT" for r in mine)


@pytest.mark.parametrize("value, kept", [
    ("ABDOMEN", "ABDOMEN"),
    ("CHEST_TO_PELVIS", "CHEST_TO_PELVIS"),
    ("HEAD NECK", "HEAD NECK"),
    ("ABDOMEN ", "ABDOMEN"),
    ("Abdomen", None),
    ("liver of ZQCANARY", None),
    ("SMITH^JOHN", None),
    ("ABDOMEN/PELVIS", None),
    ("A VERY LONG BODY PART", None),
    (["ABDOMEN", "PELVIS"], None),
    ("", None),
], ids=["code", "underscore", "space", "padding", "lower-case", "free-text", "person-name",
        "slash", "over-16", "multi-valued", "empty"])
def test_body_part_examined_passes_only_as_a_plain_code_string(tmp_path, value, kept):
    with quiet_pydicom():
        write_series(tmp_path / "d", ramp_volume(), extra={"BodyPartExamined": value,
                                                          "InstitutionName": "ZQCANARY Hospital"})
    header = read_dicom_series(as_pairs(tmp_path / "d", tmp_path)).header
    assert header == ({"Modality": "CT"} | ({"BodyPartExamined": kept} if kept else {}))


@pytest.mark.parametrize("tail, chunks", [
    (b"", []),
    (b"trailing text", []),
    (b"", [b"tEXt"]),
    (b"trailing", [b"tIME", b"eXIf"]),
], ids=["clean", "after-IEND", "text-chunk", "both"])
def test_strip_png_metadata_drops_chunks_and_bytes_after_iend(tail, chunks):
    plain = encode_png(np.arange(16, dtype=np.uint8).reshape(4, 4))
    extra = b"".join(_chunk(k, b"x") for k in chunks)
    data = plain[:33] + extra + plain[33:] + tail
    stripped = strip_png_metadata(data)
    assert stripped == plain
    if not tail and not chunks:
        assert stripped is data  # nothing to drop: the very same bytes
