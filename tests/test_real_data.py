"""Real data: pyradiomics' lung CTs with tumour masks and brain MR with labels.

* boxes equal the mask extents computed independently from SimpleITK's arrays;
* the same CT written as a DICOM series gives the same slices as its NRRD;
* Debian's dcm2niix converts that series to a geometry that agrees with ours.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.core.geometry import Geometry, canonicalise
from pipeline.engine.extract import SliceSettings, process_case
from pipeline.inputs.discovery import discover_cases
from pipeline.inputs.readers import read_dicom_series, read_volume
from tests.dicom_factory import as_pairs, write_series

SETTINGS = SliceSettings(planes=("axial", "coronal"), ct_windows=("lung",),
                         min_area_px=20, max_per_structure=3, max_per_volume=8)


def _case(root, name, data, stem, image_name, mask_name):
    case = root / name
    (case / "segmentations").mkdir(parents=True)
    shutil.copy(data / f"{stem}_image.nrrd", case / image_name)
    shutil.copy(data / f"{stem}_label.nrrd", case / "segmentations" / mask_name)
    return case


@pytest.fixture(scope="module")
def real_cases(tmp_path_factory, pyradiomics_data):
    root = tmp_path_factory.mktemp("real")
    _case(root, "lung1", pyradiomics_data, "lung1", "ct.nrrd", "lung_nodules.nrrd")
    _case(root, "lung2", pyradiomics_data, "lung2", "ct.nrrd", "lung_nodules.nrrd")
    _case(root, "brain1", pyradiomics_data, "brain1", "mr.nrrd", "brain_lesion.nrrd")
    cases, rejected = discover_cases(str(root), pseudonym_key="k")
    assert rejected == []
    return root, {c.source: c for c in cases}


def _expected_display_boxes(label_path, plane):
    """Mask extents per slice straight from SimpleITK's [k, j, i] array and its direction."""
    img = sitk.ReadImage(str(label_path))
    arr = sitk.GetArrayFromImage(img) != 0  # [k, row j, col i] in file order
    d = np.array(img.GetDirection()).reshape(3, 3)
    # Files here are axis-aligned with positive i and k; j may point anterior (brain).
    assert d[0, 0] == 1 and d[2, 2] == 1
    if d[1, 1] < 0:
        arr = arr[:, ::-1, :]  # make rows run anterior -> posterior
    out = {}
    if plane == "axial":
        for k in range(arr.shape[0]):
            ys, xs = np.nonzero(arr[k])
            if xs.size:
                out[k] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    else:  # coronal: rows = superior -> inferior, columns = i
        for j in range(arr.shape[1]):
            sl = arr[::-1, j, :]
            ys, xs = np.nonzero(sl)
            if xs.size:
                out[j] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return out


@pytest.mark.parametrize("name, label", [("lung1", "lung_nodules"), ("lung2", "lung_nodules"),
                                         ("brain1", "brain_lesion")])
def test_boxes_equal_the_mask_extents(real_cases, pyradiomics_data, name, label):
    root, cases = real_cases
    result = process_case(cases[name], "train", str(root), SETTINGS)
    assert result.images, "real case gave no slices"
    seen = 0
    for plane in ("axial", "coronal"):
        expected = _expected_display_boxes(pyradiomics_data / f"{name}_label.nrrd", plane)
        for row in (r for r in result.images if r["plane"] == plane):
            boxes = {b["label"]: b for b in row["boxes"]}
            b = boxes[label]
            assert (b["x_min"], b["y_min"], b["x_max"], b["y_max"]) == expected[row["slice_index"]]
            seen += 1
    assert seen >= 2
    structure = {s["label"]: s for s in result.structures}[label]
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(pyradiomics_data / f"{name}_label.nrrd"))) != 0
    spacing = sitk.ReadImage(str(pyradiomics_data / f"{name}_label.nrrd")).GetSpacing()
    assert structure["voxels"] == int(mask.sum())
    assert structure["volume_ml"] == pytest.approx(mask.sum() * np.prod(spacing) / 1000, rel=1e-6)  # spacing is float32-quantised


def _write_as_dicom(pyradiomics_data, folder):
    vol = read_volume(str(pyradiomics_data / "lung1_image.nrrd"), "lung1_image.nrrd", "CT")
    g = vol.geometry
    write_series(folder, vol.array, spacing=g.spacing, origin=g.origin, series="lung1",
                 names=[f"IM{(k * 7919) % 1000:04d}.dcm" for k in range(g.shape[2])],
                 instance_numbers=[g.shape[2] - k for k in range(g.shape[2])])
    return vol


def test_dicom_series_gives_the_same_slices_as_its_nrrd(tmp_path, pyradiomics_data, real_cases):
    root, cases = real_cases
    case = tmp_path / "lung1dcm"
    (case / "segmentations").mkdir(parents=True)
    shutil.copy(pyradiomics_data / "lung1_label.nrrd", case / "segmentations" / "lung_nodules.nrrd")
    _write_as_dicom(pyradiomics_data, case / "dicom")
    (dcm_case,), _ = discover_cases(str(tmp_path), pseudonym_key="k")
    assert dcm_case.layout == "dicom"
    from_dicom = process_case(dcm_case, "train", str(tmp_path), SETTINGS)
    from_nrrd = process_case(cases["lung1"], "train", str(root), SETTINGS)
    strip = lambda rows: [(r["plane"], r["slice_index"], r["image"]["bytes"], r["boxes"]) for r in rows]  # noqa: E731
    assert sorted(strip(from_dicom.images), key=str) == sorted(strip(from_nrrd.images), key=str)


def test_dcm2niix_agrees_with_our_dicom_geometry(tmp_path, pyradiomics_data):
    exe = shutil.which("dcm2niix")
    assert exe, "dcm2niix is missing: `make system-deps` installs Debian's dcm2niix"
    vol = _write_as_dicom(pyradiomics_data, tmp_path / "dicom")
    ours = read_dicom_series(as_pairs(tmp_path / "dicom", tmp_path))
    out = tmp_path / "nii"
    out.mkdir()
    subprocess.run([exe, "-z", "y", "-f", "lung1", "-o", str(out), str(tmp_path / "dicom")],
                   check=True, capture_output=True)
    (nifti,) = out.glob("lung1*.nii.gz")
    img = sitk.ReadImage(str(nifti))
    arr = np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))
    theirs, geom = canonicalise(
        arr, Geometry(img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection())
    )
    assert geom.shape == ours.geometry.shape == vol.geometry.shape
    assert np.allclose(geom.spacing, ours.geometry.spacing, atol=1e-4)
    assert np.allclose(geom.origin, ours.geometry.origin, atol=1e-3)
    assert np.array_equal(theirs.astype(np.float32), ours.array)
