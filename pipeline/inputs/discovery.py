"""Input discovery: case folders, their layout, and patient mapping.

A *case* is one immediate sub-folder of the input root (or the root itself
when it is a case).  Its layout is detected from its files (``--layout``
overrides):

=============== ============================================================
totalseg        ``ct.nii.gz`` or ``mr.nii.gz`` (also .nii/.nrrd/.mha) +
                ``segmentations/<structure>.nii.gz``
multilabel      ``image.nii.gz`` + ``labels.nii.gz`` + ``labels.json``
dicom           ``dicom/`` (DICOM files, any names) + ``segmentations/``
=============== ============================================================

An optional ``meta.csv`` (TotalSegmentator style, ``;`` or ``,`` separated)
at the root maps ``image_id`` (the case folder) to ``patient_id`` and
``study_order``; without it every case is its own patient.

Case keys are HMAC pseudonyms of the source-relative folder path; patient keys
HMAC pseudonyms of the patient id.  Neither the path nor the id is kept in
anything that reaches the corpus: the ``source`` field travels only to the
dead-letter output.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field

from pipeline.core import keys
from pipeline.errors import CaseError
from pipeline.inputs.readers import VOLUME_SUFFIXES, is_volume_file, strip_volume_suffix

LAYOUTS = ("totalseg", "multilabel", "dicom")
META_TABLE = "meta.csv"


@dataclass(frozen=True)
class CaseSource:
    """One planned case.  ``source`` and ``files`` are relative to the input root."""

    key: str
    patient_key: str
    source: str
    layout: str
    modality: str
    files: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    study_order: int = 0

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"CaseSource.layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.modality not in ("CT", "MR", ""):
            raise ValueError(f"CaseSource.modality must be CT, MR or '', got {self.modality!r}")

    def file(self, role: str) -> str:
        for r, path in self.files:
            if r == role:
                return path
        raise KeyError(role)


@dataclass(frozen=True)
class Rejected:
    """A folder that could not be planned as a case."""

    source: str
    reason: str
    message: str


def detect_layout(names: set[str]) -> str | None:
    """Layout of a case folder from the names of its entries."""
    stems = {strip_volume_suffix(n).lower(): n for n in names if is_volume_file(n)}
    if "dicom" in names:
        return "dicom"
    if "image" in stems and "labels" in stems:
        return "multilabel"
    if "ct" in stems or "mr" in stems:
        return "totalseg"
    return None


def read_meta_table(root) -> dict[str, tuple[str, int]]:
    """``{case folder: (patient id, study order)}`` from ``root/meta.csv`` if present
    (``root``: a folder or an :class:`~pipeline.inputs.tree.InputTree`)."""
    tree = _tree(root)
    if not tree.isfile(META_TABLE):
        return {}
    text = tree.read_bytes(META_TABLE).decode("utf-8-sig")
    dialect = ";" if text.split("\n", 1)[0].count(";") > text.split("\n", 1)[0].count(",") else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=dialect)
    if not reader.fieldnames or "image_id" not in reader.fieldnames:
        raise CaseError(
            "discover", "meta.missing_column",
            f"columns: found {reader.fieldnames}, expected an 'image_id' column",
            META_TABLE,
        )
    table = {}
    for line, row in enumerate(reader, start=2):
        case = (row.get("image_id") or "").strip()
        if not case:
            continue
        patient = (row.get("patient_id") or "").strip() or case
        order_text = (row.get("study_order") or "").strip()
        try:
            order = int(order_text) if order_text else 0
        except ValueError as err:
            raise CaseError(
                "discover", "meta.bad_value",
                f"line {line}: study_order: found {order_text!r}, expected an integer",
                META_TABLE,
            ) from err
        table[case] = (patient, order)
    return table


def _tree(root):
    from pipeline.inputs.tree import InputTree

    return root if isinstance(root, InputTree) else InputTree(root)


def discover_cases(
    root, *, pseudonym_key: str, layout: str = "auto"
) -> tuple[list[CaseSource], list[Rejected]]:
    """Plan every case below ``root`` (a folder, a filesystem URL or an
    :class:`~pipeline.inputs.tree.InputTree`); folders that are not cases are returned as
    rejected."""
    tree = _tree(root)
    if not tree.exists():
        raise FileNotFoundError(f"--input: {tree.root} is not a directory")
    entries = tree.listdir("")
    names = set(entries)
    root_kind = detect_layout(names)
    if root_kind == "multilabel" or (root_kind is not None and "segmentations" in names):
        folders = ["."]  # the input folder is itself one case
    else:
        folders = [e for e in entries if tree.isdir(e) and not e.startswith(".")]
    meta = read_meta_table(tree) if folders != ["."] else {}
    cases, rejected = [], []
    for folder in folders:
        found = set(tree.listdir(folder if folder != "." else ""))
        kind = detect_layout(found) if layout == "auto" else layout
        if kind is None:
            rejected.append(
                Rejected(
                    folder, "source.unknown_layout",
                    f"entries: found {sorted(found)[:8]}, expected ct/mr volume + segmentations/, "
                    "image + labels + labels.json, or dicom/ + segmentations/",
                )
            )
            continue
        try:
            files, modality = _case_files(tree, folder, found, kind)
        except CaseError as err:
            rejected.append(Rejected(err.path or folder, err.reason, err.message))
            continue
        patient, order = meta.get(folder, (folder, 0))
        cases.append(
            CaseSource(
                key=keys.pseudonym(pseudonym_key, "case", folder),
                patient_key=keys.pseudonym(pseudonym_key, "patient", patient),
                source=folder,
                layout=kind,
                modality=modality,
                files=tuple(files),
                study_order=order,
            )
        )
    cases.sort(key=lambda c: c.key)
    return cases, rejected


def _rel(folder: str, *parts: str) -> str:
    return "/".join(p for p in (folder, *parts) if p and p != ".")


def _pick(found: set[str], stem: str) -> str | None:
    for suffix in VOLUME_SUFFIXES:
        for name in sorted(found):
            if name.lower() == stem + suffix:
                return name
    return None


def _case_files(tree, folder: str, found: set[str], kind: str):
    files: list[tuple[str, str]] = []
    modality = ""
    if kind == "totalseg":
        ct, mr = _pick(found, "ct"), _pick(found, "mr")
        if ct and mr:
            raise CaseError(
                "discover", "source.ambiguous_image",
                f"entries: found both {ct} and {mr}, expected one image", _rel(folder),
            )
        image = ct or mr
        if image is None:
            raise CaseError(
                "discover", "source.missing_image",
                f"entries: found {sorted(found)[:8]}, expected ct.nii.gz or mr.nii.gz", _rel(folder),
            )
        modality = "CT" if ct else "MR"
        files.append(("image", _rel(folder, image)))
    elif kind == "multilabel":
        image, labels = _pick(found, "image"), _pick(found, "labels")
        if image is None or labels is None or "labels.json" not in found:
            raise CaseError(
                "discover", "source.missing_file",
                f"entries: found {sorted(found)[:8]}, expected image.nii.gz, labels.nii.gz and "
                "labels.json",
                _rel(folder),
            )
        files += [
            ("image", _rel(folder, image)),
            ("labels", _rel(folder, labels)),
            ("labels_json", _rel(folder, "labels.json")),
        ]
    elif kind == "dicom":
        dicom = _rel(folder, "dicom")
        if not tree.isdir(dicom) or not _has_files(tree, dicom, lambda name: True):
            raise CaseError(
                "discover", "dicom.no_files",
                "dicom/: found no files, expected the DICOM files of a CT or MR series",
                _rel(folder, "dicom"),
            )
        files.append(("dicom", _rel(folder, "dicom")))
    if kind in ("totalseg", "dicom"):
        segmentations = _rel(folder, "segmentations")
        if "segmentations" not in found or not tree.isdir(segmentations):
            raise CaseError(
                "discover", "source.missing_segmentations",
                f"entries: found {sorted(found)[:8]}, expected a segmentations/ folder of "
                "per-structure masks",
                _rel(folder),
            )
        if not _has_files(tree, segmentations, is_volume_file):
            raise CaseError(
                "discover", "source.missing_segmentations",
                "segmentations/: found no mask files, expected one <structure>.nii.gz (or "
                ".nrrd/.mha) per structure",
                _rel(folder, "segmentations"),
            )
        files.append(("segmentations", _rel(folder, "segmentations")))
    return files, modality


def _has_files(tree, rel: str, accept) -> bool:
    """Whether folder ``rel`` holds (at any depth) a non-hidden file ``accept`` likes."""
    return any(accept(f.rsplit("/", 1)[-1]) for f in tree.walk_files(rel))


def read_labels_json(path: str, rel: str) -> dict[int, str]:
    """``labels.json`` as ``{int value: name}`` with values and names checked."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError) as err:  # JSONDecodeError, UnicodeDecodeError
        raise CaseError(
            "read", "labels.unreadable",
            f"JSON: found invalid JSON ({err}), expected an object {{\"1\": \"name\", …}}", rel,
        ) from err
    if not isinstance(raw, dict) or not raw:
        raise CaseError(
            "read", "labels.bad_format",
            f"JSON: found {type(raw).__name__} {str(raw)[:40]}, expected a non-empty object "
            "{\"1\": \"name\", …}", rel,
        )
    out: dict[int, str] = {}
    for k, v in raw.items():
        try:
            value = int(k)
        except ValueError as err:
            raise CaseError(
                "read", "labels.bad_format", f"key {k!r}: found a non-integer key, expected an "
                "integer label value", rel,
            ) from err
        if value <= 0 or not isinstance(v, str) or not v.strip():
            raise CaseError(
                "read", "labels.bad_format",
                f"key {k!r}: found {v!r}, expected a positive value mapped to a non-empty name", rel,
            )
        out[value] = v.strip()
    names = list(out.values())
    if len(set(names)) != len(names):
        raise CaseError("read", "labels.duplicate_name",
                        f"names: found duplicates in {names}, expected each name once", rel)
    return out
