"""NIfTI headers as the public releases write them (nibabel), quirks included; the same
float-drift rule for NRRD, MHA and DICOM orientation.

* About 140 of TotalSegmentator's 1,228 CT cases carry an sform a few 1e-4 off
  orthonormal with qform_code 0; ITK ≥ 5.2 refuses them ("ITK only supports
  orthonormal direction cosines"), nibabel reads them.  Each test first checks
  that SimpleITK really refuses the file, so it proves the fix.
* Orientations vary (RAS, LAS, LPS …): the same image stored each way reads to
  the same canonical array and grid.
* Masks whose grid differs from the image's by float rounding are accepted.
* Sheared, oblique and over-drifted grids are rejected, naming the file, the
  field, what was found and what was expected.
"""

from __future__ import annotations

from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk
from nibabel.orientations import axcodes2ornt, ornt_transform

from pipeline.core.geometry import DRIFT_MAX_SHIFT_VOXELS
from pipeline.engine.extract import SliceSettings, process_case
from pipeline.errors import CaseError
from pipeline.inputs.discovery import discover_cases
from pipeline.inputs.readers import read_dicom_series, read_mask, read_volume
from pipeline.inputs.readers.nifti_header import check_nifti_sform
from tests.dicom_factory import as_pairs, ramp_volume, write_series

SHAPE = (40, 36, 12)
CT = (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 500 - 250).astype(np.int16)
MASK = np.zeros(SHAPE, np.uint8)
MASK[10:30, 8:28, 3:9] = 1
#: RAS affine of the releases' 1.5 mm grid, stored LAS (x reversed), as many TotalSegmentator
#: cases are.
LAS = np.array([[-1.5, 0, 0, 30.0], [0, 1.5, 0, -27.0], [0, 0, 1.5, -9.0], [0, 0, 0, 1]])


def drifted(affine: np.ndarray, cosine: float) -> np.ndarray:
    """``affine`` with its y axis leaning ``cosine`` toward its x axis (float drift)."""
    out = affine.copy()
    out[:3, 1] += cosine * affine[:3, 0] * np.linalg.norm(affine[:3, 1]) / np.linalg.norm(
        affine[:3, 0])
    return out


def write(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    """Write as nibabel does for the releases: sform (code 1) only, qform_code 0."""
    image = nibabel.Nifti1Image(data, affine)
    image.set_sform(affine, code=1)
    image.set_qform(None, code=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(image, path)
    return path


def itk_refuses(path: Path) -> bool:
    try:
        sitk.ReadImage(str(path))
    except RuntimeError as err:
        assert "orthonormal" in str(err)
        return True
    return False


def case(root: Path, name: str, affine: np.ndarray, mask_affine=None) -> Path:
    folder = root / name
    write(folder / "ct.nii.gz", CT, affine)
    write(folder / "segmentations" / "liver.nii.gz", MASK,
          affine if mask_affine is None else mask_affine)
    return folder


def test_a_release_ct_itk_refuses_is_read_and_noted(tmp_path):
    root = tmp_path / "input"
    folder = case(root, "s0000", drifted(LAS, 3e-4))
    case(root, "clean", LAS)
    assert itk_refuses(folder / "ct.nii.gz") and itk_refuses(folder / "segmentations/liver.nii.gz")
    sources, rejects = discover_cases(str(root), pseudonym_key="k")
    assert not rejects
    by_name = {s.files[0][1].split("/")[0]: s for s in sources}
    settings = SliceSettings()
    result = process_case(by_name["s0000"], "train", str(root), settings)
    clean = process_case(by_name["clean"], "train", str(root), settings)
    note, mask_note = result.notes["nifti_sform_orthonormalised"]
    assert note.startswith("s0000/ct.nii.gz: sform axes 3.0e-04 off orthogonal with qform_code 0, "
                           "which ITK refuses; read with nibabel"), note
    assert mask_note.startswith("s0000/segmentations/liver.nii.gz: sform axes 3.0e-04"), mask_note
    assert "nifti_sform_orthonormalised" not in clean.notes
    # The same voxels and the same slices as the file without drift.
    fields = ("label", "shape", "box3d", "voxels", "components", "laterality")
    assert ([[r[f] for f in fields] for r in result.structures]
            == [[r[f] for f in fields] for r in clean.structures])
    assert len(result.images) == len(clean.images)
    drift = read_volume(str(folder / "ct.nii.gz"), "s0000/ct.nii.gz", "CT")
    plain = read_volume(str(root / "clean/ct.nii.gz"), "clean/ct.nii.gz", "CT")
    np.testing.assert_array_equal(drift.array, plain.array)
    # The drifted axis is a little longer (1.5 * sqrt(1 + 9e-8)): one float32 step.
    np.testing.assert_allclose(drift.geometry.spacing, plain.geometry.spacing, rtol=1e-6)
    np.testing.assert_allclose(drift.geometry.origin, plain.geometry.origin, atol=0.05)


def test_the_drift_is_measured_as_the_largest_voxel_move(tmp_path):
    path = write(tmp_path / "ct.nii.gz", CT, drifted(LAS, 3e-4))
    sform = check_nifti_sform(str(path), "ct.nii.gz")
    assert sform.cosine == pytest.approx(3e-4, rel=1e-3) and sform.qform_code == 0
    # Independent check: the nearest rotation to the unit axes moves the far corner most.
    m = drifted(LAS, 3e-4)[:3, :3]
    unit = m / np.linalg.norm(m, axis=0)
    u, _, vt = np.linalg.svd(unit)
    corner = (np.array(SHAPE) - 1) * 1.5
    expected = np.linalg.norm((u @ vt - unit) @ corner) / 1.5
    assert sform.shift_voxels == pytest.approx(expected, rel=1e-3)
    assert sform.shift_voxels < 0.02  # 40 x 36 x 12 voxels: far below a voxel
    g = sform.geometry
    np.testing.assert_allclose(g.matrix.T @ g.matrix, np.eye(3), atol=1e-12)  # orthonormal


@pytest.mark.parametrize("codes", ["RAS", "LAS", "LPS", "PIR", "SLA"])
@pytest.mark.parametrize("cosine", [0.0, 3e-4])
def test_every_orientation_reads_to_the_same_canonical_volume(tmp_path, codes, cosine):
    base = nibabel.Nifti1Image(CT, drifted(LAS, cosine))
    stored = base.as_reoriented(ornt_transform(axcodes2ornt("LAS"), axcodes2ornt(codes)))
    assert nibabel.aff2axcodes(stored.affine) == tuple(codes)
    path = write(tmp_path / "ct.nii.gz", np.asanyarray(stored.dataobj), stored.affine)
    assert itk_refuses(path) == (cosine > 0)
    volume = read_volume(str(path), "ct.nii.gz", "CT")
    reference = read_volume(str(write(tmp_path / "ref.nii.gz", CT, LAS)), "ref.nii.gz", "CT")
    np.testing.assert_array_equal(volume.array, reference.array)
    np.testing.assert_allclose(volume.geometry.spacing, reference.geometry.spacing, rtol=1e-6)
    np.testing.assert_allclose(volume.geometry.origin, reference.geometry.origin, atol=0.05)
    assert bool(volume.notes) == (cosine > 0)


@pytest.mark.parametrize("change", [
    {"spacing": 1 + 1e-6},               # TotalSegmentator issue #13: rounding of pixdim
    {"origin": 1e-4},                    # float32 rounding of the translation (mm)
    {"spacing": 1 + 1e-6, "drift": 3e-4},  # and the mask drifted like its image
])
def test_masks_off_the_image_grid_by_float_rounding_are_accepted(tmp_path, change):
    image_affine = drifted(LAS, 3e-4) if "drift" in change else LAS
    mask_affine = image_affine.copy()
    mask_affine[:3, :3] *= change.get("spacing", 1.0)
    mask_affine[:3, 3] += change.get("origin", 0.0)
    image_path = write(tmp_path / "ct.nii.gz", CT, image_affine)
    mask_path = write(tmp_path / "liver.nii.gz", MASK, mask_affine)
    image = read_volume(str(image_path), "ct.nii.gz", "CT")
    mask, _ = read_mask(str(mask_path), "liver.nii.gz", image.geometry)
    assert mask.voxels() == MASK.sum()


@pytest.mark.parametrize("change, fragment", [
    ({"spacing": 1.01}, "spacing (1.515, 1.515, 1.515) != image spacing (1.5, 1.5, 1.5)"),
    ({"origin": 0.3}, "origin"),
])
def test_masks_off_the_grid_beyond_rounding_are_rejected_as_before(tmp_path, change, fragment):
    mask_affine = LAS.copy()
    mask_affine[:3, :3] *= change.get("spacing", 1.0)
    mask_affine[:3, 3] += change.get("origin", 0.0)
    image = read_volume(str(write(tmp_path / "ct.nii.gz", CT, LAS)), "ct.nii.gz", "CT")
    with pytest.raises(CaseError) as info:
        read_mask(str(write(tmp_path / "liver.nii.gz", MASK, mask_affine)), "liver.nii.gz",
                  image.geometry)
    assert info.value.reason == "mask.geometry_mismatch" and fragment in info.value.message


def _rotated(degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    out = LAS.copy()
    out[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ LAS[:3, :3]
    return out


def test_a_sheared_grid_is_rejected_naming_the_matrix(tmp_path):
    path = write(tmp_path / "ct.nii.gz", CT, drifted(LAS, 0.05))
    with pytest.raises(CaseError) as info:
        read_volume(str(path), "s1/ct.nii.gz", "CT")
    err = info.value
    assert (err.reason, err.path) == ("geometry.non_orthogonal", "s1/ct.nii.gz")
    assert err.message.startswith("direction (NIfTI sform srow_x/y/z): axes are not orthogonal: "
                                  "found [[-1.5")
    assert "(axes 5.0e-02 off orthogonal), expected orthogonal axes within 0.001" in err.message


@pytest.mark.parametrize("cosine", [0.0, 3e-4])
def test_an_oblique_grid_is_rejected_as_before(tmp_path, cosine):
    path = write(tmp_path / "ct.nii.gz", CT, drifted(_rotated(20), cosine))
    assert itk_refuses(path) == (cosine > 0)
    with pytest.raises(CaseError) as info:
        read_volume(str(path), "s1/ct.nii.gz", "CT")
    assert (info.value.reason, info.value.path) == ("geometry.oblique", "s1/ct.nii.gz")
    assert "direction: axis 0 is oblique" in info.value.message


def test_a_drift_just_over_the_bound_is_rejected_with_the_displacement(tmp_path):
    shape = (300, 300, 2)  # a drift of 6e-4 moves the far corner by 0.127 voxel
    zeros = np.zeros(shape, np.int16)
    under = write(tmp_path / "under.nii.gz", zeros, drifted(LAS, 4e-4))
    over = write(tmp_path / "over.nii.gz", zeros, drifted(LAS, 6e-4))
    assert itk_refuses(under) and itk_refuses(over)
    assert check_nifti_sform(str(under), "under.nii.gz").shift_voxels < DRIFT_MAX_SHIFT_VOXELS
    with pytest.raises(CaseError) as info:
        read_volume(str(over), "s2/ct.nii.gz", "CT")
    err = info.value
    assert (err.reason, err.path) == ("geometry.non_orthogonal", "s2/ct.nii.gz")
    assert ("axes 6.0e-04 off orthogonal; made orthonormal they would move voxel centres by up "
            "to 0.127 voxel across the 300 x 300 x 2 grid, expected at most 0.1 voxel") in err.message


def test_a_drifted_file_with_a_valid_qform_is_left_to_itk(tmp_path):
    # With a qform ITK reads the file itself (as before): no nibabel, no note.
    affine = drifted(LAS, 3e-4)
    image = nibabel.Nifti1Image(CT, affine)
    image.set_sform(affine, code=1)
    image.set_qform(LAS, code=1)
    nibabel.save(image, tmp_path / "ct.nii.gz")
    assert not itk_refuses(tmp_path / "ct.nii.gz")
    volume = read_volume(str(tmp_path / "ct.nii.gz"), "ct.nii.gz", "CT")
    assert volume.notes == {}


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_nrrd_and_mha_with_float_drift_are_orthonormalised_and_noted(tmp_path, suffix):
    # ITK reads these without complaint; the canonical grid needs orthonormal axes.
    image = sitk.GetImageFromArray(np.ascontiguousarray(CT.T))
    image.SetSpacing((1.5, 1.5, 1.5))
    image.SetDirection((1, 3e-4, 0, 0, 1, 0, 0, 0, 1))
    sitk.WriteImage(image, str(tmp_path / f"ct{suffix}"))
    volume = read_volume(str(tmp_path / f"ct{suffix}"), f"c/ct{suffix}", "CT")
    np.testing.assert_array_equal(volume.array, CT)
    [note] = volume.notes["direction_orthonormalised"]
    assert note.startswith(f"c/ct{suffix}: direction cosines 3.0e-04 off orthogonal, read on the "
                           "nearest orthonormal axes; voxel centres moved by at most 0.0"), note


def test_dicom_orientation_with_float_drift_is_orthonormalised_and_noted(tmp_path):
    vol = ramp_volume((12, 10, 4))
    write_series(tmp_path / "dicom", vol, orientations=[(1, 0, 0, 3e-4, 1, 0)] * 4)
    volume = read_dicom_series(as_pairs(tmp_path / "dicom", tmp_path))
    np.testing.assert_array_equal(volume.array, vol)
    [note] = volume.notes["direction_orthonormalised"]
    assert note.startswith("dicom/slice000.dcm: ImageOrientationPatient row and column 3.0e-04 off "
                           "orthogonal"), note
