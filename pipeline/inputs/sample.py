"""The built-in sample: the phantoms (:mod:`pipeline.inputs.phantoms`) written as input folders.

``write_sample(dir)`` writes the phantoms as input folders in every layout
radvqa reads: CT as real DICOM series (file names and InstanceNumbers not in
slice order), TotalSegmentator NIfTI (RAS and another axis order), a
multilabel map with a user's own label names, and MR as NIfTI; plus a
TotalSegmentator-style ``meta.csv``.  ``write_longitudinal_sample(dir)`` writes CT
patients with several studies each.  Two writes give identical bytes.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from pipeline.core import keys
from pipeline.inputs.phantoms import (
    Phantom,
    longitudinal_lesions,
    longitudinal_values,
    make_phantom,
    modality_of,
)

SAMPLE_VERSION = "2"

#: The multilabel case's user label set: two names the pools know, others they do not.
USER_LABELS = {
    "liver": "liver", "spleen": "spleen", "kidney_left": "renal_parenchyma_left",
    "kidney_right": "renal_parenchyma_right", "aorta": "great_vessel",
    "liver_tumor": "hepatic_mass",
}
FORMS = ("dicom", "totalseg", "totalseg_reoriented", "multilabel")


# ----------------------------------------------------------------------------- writing


def _uid(*parts) -> str:
    return "2.25." + str(int(hashlib.sha256(repr(parts).encode()).hexdigest()[:30], 16))


def _orient(canon: np.ndarray, p: Phantom, perm, flips):
    """Store ``canon`` with file axis c = canonical axis perm[c], reversed where flips[c]."""
    arr = np.transpose(canon, perm)
    first = [0, 0, 0]
    direction = np.zeros((3, 3))
    for c in range(3):
        a = perm[c]
        direction[a, c] = -1.0 if flips[c] else 1.0
        if flips[c]:
            arr = np.flip(arr, axis=c)
            first[a] = canon.shape[a] - 1
    origin = np.asarray(p.origin) + np.asarray(first) * np.asarray(p.spacing)
    spacing = tuple(p.spacing[perm[c]] for c in range(3))
    return np.ascontiguousarray(arr), spacing, tuple(origin), tuple(direction.ravel())


def _write_nifti(path: Path, canon: np.ndarray, p: Phantom, perm=(0, 1, 2), flips=(False,) * 3):
    """NIfTI via SimpleITK, gzip with mtime 0 so the bytes never change."""
    # SimpleITK: 0.2 s to import, needed only when a file is written (builds import this
    # module for SAMPLE_VERSION alone)
    import SimpleITK as sitk

    arr, spacing, origin, direction = _orient(canon, p, perm, flips)
    img = sitk.GetImageFromArray(np.transpose(arr, (2, 1, 0)))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "x.nii")
        sitk.WriteImage(img, raw)
        data = Path(raw).read_bytes()
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        gz.write(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


RAS = ((0, 1, 2), (True, True, False))
PIL = ((1, 2, 0), (False, True, False))  # file axes: → posterior, → inferior, → left


def _write_dicom(folder: Path, p: Phantom, index: int) -> None:
    # pydicom: 1 s to import, needed only when a DICOM series is written
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian

    folder.mkdir(parents=True, exist_ok=True)
    ni, nj, nk = p.image.shape
    study, series, frame = _uid(p.name, "study"), _uid(p.name, "series"), _uid(p.name, "for")
    order = keys.rng(0, p.name, "instance-numbers").permutation(nk)
    for k in range(nk):
        sop = _uid(p.name, "sop", k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.FrameOfReferenceUID = frame
        ds.PatientName = f"Phantom^Patient{index + 1:04d}"
        ds.PatientID = p.patient_id
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyDate = ds.SeriesDate = "20200101"
        ds.StudyTime = "120000"
        ds.AccessionNumber = f"ACC{index + 1:06d}"
        ds.InstitutionName = "Phantom General Hospital"
        ds.ReferringPhysicianName = "Doctor^Referring"
        ds.StudyDescription = "CT ABDOMEN PHANTOM"
        ds.SeriesDescription = "AXIAL 5MM"
        ds.Modality = "CT"
        ds.BodyPartExamined = "ABDOMEN"
        ds.SeriesNumber = 2
        ds.InstanceNumber = int(order[k]) + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [p.origin[0], p.origin[1], round(p.origin[2] + k * p.spacing[2], 4)]
        ds.PixelSpacing = [p.spacing[1], p.spacing[0]]
        ds.SliceThickness = p.spacing[2]
        ds.Rows, ds.Columns = nj, ni
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        stored = np.clip(p.image[:, :, k].T + 1024, 0, 4095).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        name = hashlib.sha256(sop.encode()).hexdigest()[:12].upper()
        ds.save_as(folder / f"{name}.dcm", enforce_file_format=True)


def write_case(phantom: Phantom, case_dir: Path, form: str) -> None:
    """Write one phantom as an input case folder in ``form`` (see :data:`FORMS`)."""
    case_dir = Path(case_dir)
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if form == "dicom" and phantom.modality != "CT":
        raise ValueError("the dicom form is for CT phantoms")
    index = int(phantom.name[1:]) - 1
    if form == "multilabel":
        _write_nifti(case_dir / "image.nii.gz", phantom.image.astype(
            np.int16 if phantom.modality == "CT" else np.float32), phantom, *RAS)
        values = {name: n for n, name in enumerate(USER_LABELS, start=1)}
        label = np.zeros(phantom.image.shape, np.uint8)
        for name in USER_LABELS:  # lesions come last: they take precedence
            if name in phantom.masks:
                label[phantom.masks[name]] = values[name]
        _write_nifti(case_dir / "labels.nii.gz", label, phantom, *RAS)
        table = {str(values[k]): v for k, v in USER_LABELS.items()}
        table[str(len(values) + 1)] = "portal_vein_custom"  # named but absent from the volume
        (case_dir / "labels.json").write_text(json.dumps(table, indent=2) + "\n")
        return
    if form == "dicom":
        _write_dicom(case_dir / "dicom", phantom, index)
        orient = ((0, 1, 2), (False, False, False))  # the series' own space
    else:
        stem = "ct" if phantom.modality == "CT" else "mr"
        orient = RAS if form == "totalseg" else PIL
        image = phantom.image.astype(np.int16 if phantom.modality == "CT" else np.float32)
        _write_nifti(case_dir / f"{stem}.nii.gz", image, phantom, *orient)
    for name, mask in sorted(phantom.masks.items()):
        _write_nifti(case_dir / "segmentations" / f"{name}.nii.gz", mask.astype(np.uint8),
                     phantom, *orient)


def form_of(index: int) -> str:
    if modality_of(index) == "MR":
        return "totalseg"
    return {1: "totalseg", 2: "totalseg_reoriented", 4: "multilabel"}.get(index % 10, "dicom")


def write_sample(output_dir: str | Path, n_patients: int = 10, seed: int = 0) -> list[str]:
    """Write ``n_patients`` phantom cases (≥ 8) plus ``meta.csv``; returns the case names."""
    if n_patients < 1:
        raise ValueError(f"n_patients must be >= 1, got {n_patients}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    rows = ["image_id;patient_id;study_order;age;gender;institute;study_type"]
    for index in range(n_patients):
        phantom = make_phantom(index, seed)
        write_case(phantom, out / phantom.name, form_of(index))
        names.append(phantom.name)
        rows.append(f"{phantom.name};{phantom.patient_id};1;{40 + index % 40};"
                    f"{'mf'[index % 2]};Phantom General Hospital;"
                    f"{'ct abdomen' if phantom.modality == 'CT' else 'mr abdomen'}")
    (out / "meta.csv").write_text("\n".join(rows) + "\n")
    (out / "README.txt").write_text(
        "radvqa built-in sample: synthetic CT/MR phantoms (not patient data).\n"
        "Layouts: dicom/ + segmentations/ (CT DICOM series), ct|mr.nii.gz + segmentations/\n"
        "(TotalSegmentator, RAS or another axis order), image + labels + labels.json (multilabel).\n"
        f"Sample version {SAMPLE_VERSION}, seed {seed}.\n"
    )
    return sorted(names)


def write_longitudinal_sample(output_dir: str | Path, n_patients: int = 4, timepoints: int = 3,
                              seed: int = 0) -> list[str]:
    """CT patients with ``timepoints`` studies each (TotalSegmentator layout) and a
    ``meta.csv`` giving ``patient_id`` and ``study_order``; lesions follow
    :data:`~pipeline.inputs.phantoms.TIMELINES`."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = ["image_id;patient_id;study_order;age;gender;institute;study_type"]
    names = []
    for p in range(n_patients):
        for t in range(timepoints):
            phantom = make_phantom(p, seed, lesions=longitudinal_lesions(p, t), modality="CT",
                                   timepoint=t, lesion_values=longitudinal_values(p, seed))
            name = f"p{p + 1:03d}t{t + 1}"
            write_case(phantom, out / name, "totalseg")
            names.append(name)
            rows.append(f"{name};PAT-L{p + 1:03d};{t + 1};{50 + p};{'mf'[p % 2]};"
                        "Phantom General Hospital;ct chest abdomen")
    (out / "meta.csv").write_text("\n".join(rows) + "\n")
    return names


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="radvqa-sample", description="write the built-in sample")
    ap.add_argument("--output", required=True)
    ap.add_argument("--patients", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    names = write_sample(args.output, args.patients, args.seed)
    print(f"wrote {len(names)} cases to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
