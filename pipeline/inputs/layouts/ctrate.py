"""CT-RATE layout: chest CT volumes ``<split>_<patient>_<scan>_<reconstruction>.nii.gz`` with
the 18-finding label table, no masks.  A layout of the whole input (like the labelled 2D tree),
discovered by :func:`discover`, not folder by folder.

* Volumes anywhere below the root: CT-RATE's own nested download
  (``dataset/train/train_1/train_1_a/train_1_a_1.nii.gz``, ``dataset/valid/valid_12/…``) or
  flat folders.  ``<split>`` is ``train`` or ``valid``; the scan letter orders a patient's
  studies (``a`` first); reconstructions of one scan share its labels, so one is used: the
  lowest-numbered (``train_1_a_1`` over ``train_1_a_2``).
* The label table: a CSV with ``VolumeName`` and CT-RATE's 18 finding columns
  (``multi_abnormality_labels.csv``, or the release's ``multi_abnormality_labels/
  {train,valid}_predicted_labels.csv``); a finding is present when its cell is ``1``.  Findings
  become labels in snake case (``Lung nodule`` -> ``lung_nodule``, :func:`finding_label`).
* Optional metadata (``*metadata*.csv`` with ``VolumeName``, ``RescaleSlope``,
  ``RescaleIntercept``, ``XYSpacing`` like ``[0.75, 0.75]``, ``ZSpacing``): CT-RATE's
  volumes store raw values, so when a volume has a metadata row its voxels become
  ``slope * value + intercept`` HU and its spacing is the metadata's (as CT-CLIP's own
  preprocessing does); without one the header is trusted, and the case says so in its notes.
* The official split is honoured: ``train`` -> train, ``valid`` -> validation.
* Patients are ``<split>_<patient>``; case keys pseudonymise the scan (``train_1_a``).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import os
import re
import string

import numpy as np

from pipeline.core import keys
from pipeline.core.geometry import Geometry
from pipeline.core.volume_facts import CT_RATE_FINDINGS
from pipeline.errors import CaseError
from pipeline.inputs.layouts.base import LoadedCase, listed_files, read_image
from pipeline.inputs.tree import InputTree

NAME = re.compile(r"^(train|valid)_(\d+)_([a-z]+)_(\d+)\.nii(?:\.gz)?$")
SPLITS = {"train": "train", "valid": "validation"}
METADATA_COLUMNS = ("VolumeName", "RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing")


def finding_label(name: str) -> str:
    """A CT-RATE finding column as a label: ``Lung nodule`` -> ``lung_nodule``."""
    return name.strip().lower().replace(" ", "_")


def parse_name(name: str) -> tuple[str, str, str, int] | None:
    """``(split, patient, scan letter, reconstruction)`` of a CT-RATE volume file name, else None."""
    m = NAME.match(name)
    return (m.group(1), m.group(2), m.group(3), int(m.group(4))) if m else None


def scan_order(letter: str) -> int:
    """Study order of a scan letter: ``a`` -> 1, ``b`` -> 2, … ``aa`` after ``z``."""
    n = 0
    for ch in letter:
        n = n * 26 + string.ascii_lowercase.index(ch) + 1
    return n


def _csv_header(tree: InputTree, rel: str) -> list[str]:
    text = tree.read_bytes(rel)[:65536].decode("utf-8-sig", errors="replace")
    return next(csv.reader(io.StringIO(text.split("\n", 1)[0])), [])


def tables(tree: InputTree, files: list[str]) -> tuple[list[str], list[str]]:
    """``(label tables, metadata tables)`` among the CSVs ``files``, by their headers."""
    labels, metadata = [], []
    for rel in files:
        if not rel.lower().endswith(".csv"):
            continue
        header = _csv_header(tree, rel)
        if "VolumeName" in header and all(f in header for f in CT_RATE_FINDINGS):
            labels.append(rel)
        elif all(c in header for c in METADATA_COLUMNS):
            metadata.append(rel)
    return labels, metadata


def is_root(tree: InputTree) -> bool:
    """Whether an input root is CT-RATE: a label table at the root, in ``dataset/``, or in a
    ``multi_abnormality_labels/`` folder of either (cheap: no walk of the volumes)."""
    folders = ["", "dataset", "multi_abnormality_labels", "dataset/multi_abnormality_labels"]
    csvs = [f"{d}/{n}" if d else n for d in folders if d == "" or tree.isdir(d)
            for n in tree.listdir(d) if n.lower().endswith(".csv")]
    return bool(tables(tree, [c for c in csvs if tree.isfile(c)])[0])


@functools.lru_cache(maxsize=8)
def _read_table(path: str, size: int, mtime: int) -> dict[str, dict[str, str]]:
    """``{VolumeName: row}`` of a local CSV (cached by path, size and mtime)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        return {row["VolumeName"].strip(): row for row in csv.DictReader(f)}


def read_table(path: str) -> dict[str, dict[str, str]]:
    st = os.stat(path)
    return _read_table(path, st.st_size, st.st_mtime_ns)


def present_findings(row: dict[str, str], where: str) -> list[str]:
    """The labels of the findings marked ``1`` in a label-table row."""
    out = []
    for name in CT_RATE_FINDINGS:
        value = (row.get(name) or "").strip()
        if value not in ("0", "1", "0.0", "1.0"):
            raise CaseError("read", "labels.bad_value", f"{name}: found {value!r}, expected 0 or 1", where)
        if float(value) == 1.0:
            out.append(finding_label(name))
    return out


def discover(tree: InputTree, pseudonym_key: str):
    """``(cases, rejected)`` of a CT-RATE input: one case per scan (its lowest reconstruction).

    Cases are the fields of a :class:`~pipeline.inputs.discovery.CaseSource` (the discovery
    module imports the layouts, not the reverse); rejected are ``(source, reason, message)``.
    """
    files = tree.walk_files("")
    label_tables, metadata_tables = tables(tree, [f for f in files if f.lower().endswith(".csv")])
    scans: dict[tuple[str, str, str], list[tuple[int, str]]] = {}
    for rel in files:
        parsed = parse_name(rel.rsplit("/", 1)[-1])
        if parsed:
            split, patient, scan, recon = parsed
            scans.setdefault((split, patient, scan), []).append((recon, rel))
    labelled: dict[str, str] = {}  # VolumeName -> label table holding it
    for table in label_tables:
        text = tree.read_bytes(table).decode("utf-8-sig")
        for row in csv.DictReader(io.StringIO(text)):
            labelled.setdefault((row.get("VolumeName") or "").strip(), table)
    meta_of: dict[str, str] = {}
    for table in metadata_tables:
        text = tree.read_bytes(table).decode("utf-8-sig")
        for row in csv.DictReader(io.StringIO(text)):
            meta_of.setdefault((row.get("VolumeName") or "").strip(), table)
    cases, rejected = [], []
    for (split, patient, scan), recons in sorted(scans.items()):
        recon, rel = min(recons)
        name = rel.rsplit("/", 1)[-1]
        scan_id = f"{split}_{patient}_{scan}"
        if name not in labelled:
            rejected.append((rel, "labels.missing_row",
                             f"VolumeName: {name} is in no label table ({', '.join(label_tables)})"))
            continue
        case_files = [("image", rel), ("labels", labelled[name])]
        if name in meta_of:
            case_files.append(("metadata", meta_of[name]))
        cases.append({
            "key": keys.pseudonym(pseudonym_key, "case", scan_id),
            "patient_key": keys.pseudonym(pseudonym_key, "patient", f"{split}_{patient}"),
            "source": rel, "layout": LAYOUT.name, "modality": "CT", "files": tuple(case_files),
            "study_order": scan_order(scan), "split": SPLITS[split],
        })
    return cases, rejected


def _float(row: dict[str, str], column: str, where: str) -> float:
    text = (row.get(column) or "").strip().strip("[]").split(",")[0].strip()
    try:
        value = float(text)
    except ValueError:
        raise CaseError("read", "metadata.bad_value",
                        f"{column}: found {row.get(column)!r}, expected a number", where) from None
    if not np.isfinite(value):
        raise CaseError("read", "metadata.bad_value", f"{column}: found {value}, expected finite", where)
    return value


class CtRateLayout:
    """CT-RATE volumes + label table (see the module docstring)."""

    name = "ct-rate"
    expected = "CT-RATE volumes (<split>_<patient>_<scan>_<reconstruction>.nii.gz) + label table"
    #: Findings come from the label table, not masks.
    label_findings = True

    def detect(self, names: set[str]) -> bool:
        return False  # a layout of the whole input (is_root), never of one case folder

    def holds_one_case(self, names: set[str]) -> bool:
        return False

    def files(self, tree: InputTree, folder: str, found: set[str]):
        raise CaseError("discover", "source.unknown_layout",
                        "ct-rate is a layout of the whole input, not of a case folder", folder)

    def load(self, case, root: str, max_voxels: int) -> LoadedCase:
        """The scan's volume (HU and spacing from its metadata row when there is one), no
        masks, and its present findings (``LoadedCase.findings``)."""
        volume = read_image(case, root, max_voxels)
        name = case.file("image").rsplit("/", 1)[-1]
        labels_rel = case.file("labels")
        row = read_table(os.path.join(root, labels_rel)).get(name)
        if row is None:
            raise CaseError("read", "labels.missing_row", f"VolumeName: {name} not found", labels_rel)
        present = present_findings(row, f"{labels_rel}: {name}")
        notes = dict(volume.notes)
        meta_rel = dict(case.files).get("metadata")
        meta = read_table(os.path.join(root, meta_rel)).get(name) if meta_rel else None
        if meta is None:
            notes["ct_rate_header_trusted"] = [f"{case.file('image')}: no metadata row; header spacing and values used"]
        else:
            where = f"{meta_rel}: {name}"
            slope, intercept = _float(meta, "RescaleSlope", where), _float(meta, "RescaleIntercept", where)
            xy, z = _float(meta, "XYSpacing", where), _float(meta, "ZSpacing", where)
            if min(xy, z) <= 0:
                raise CaseError("read", "metadata.bad_value", f"spacing: found {xy}, {z}, expected > 0", where)
            geometry = Geometry(volume.geometry.shape, (xy, xy, z), volume.geometry.origin)
            volume = dataclasses.replace(volume, voxels=(volume.array * slope + intercept).astype(np.float32),
                                         geometry=geometry)
        return LoadedCase(volume, {}, (volume.content_sha256,), labels_rel, notes, tuple(present))

    fingerprint_paths = staticmethod(listed_files)


LAYOUT = CtRateLayout()
