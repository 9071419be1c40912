"""DICOM series and ITK readers: ordering, rescale, geometry, clear rejections, the registry."""

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.errors import CaseError
from pipeline.inputs.readers import (
    MASK_READERS,
    READERS,
    list_files,
    mask_reader_for,
    read_dicom_series,
    read_mask,
    read_volume,
    reader_for,
)
from tests.dicom_factory import as_pairs, ramp_volume, write_series
from tests.probe import python_probe

VOL = ramp_volume()


def test_series_is_ordered_by_position_not_by_name_or_instance_number(tmp_path):
    nk = VOL.shape[2]
    names = [f"{n}.dcm" for n in ("zz", "aa", "mm", "bb")]
    write_series(tmp_path / "dicom", VOL, names=names, instance_numbers=[3, 1, 4, 2])
    vol = read_dicom_series(as_pairs(tmp_path / "dicom", tmp_path))
    assert vol.modality == "CT"
    assert np.array_equal(vol.array, VOL)  # rescale applied: values are HU again
    assert vol.geometry.shape == VOL.shape
    assert np.allclose(vol.geometry.spacing, (0.8, 0.9, 2.0))
    assert np.allclose(vol.geometry.origin, (-100.0, -80.0, 40.0))
    assert nk == 4


def test_feet_first_stack_and_flipped_rows_give_the_same_canonical_volume(tmp_path):
    # Rows run posterior->anterior (column cosine -y) and slices are listed top-down.
    flipped = VOL[:, ::-1, :]
    nj = VOL.shape[1]
    origin = (-100.0, -80.0 + (nj - 1) * 0.9, 40.0)
    write_series(
        tmp_path / "dicom", flipped, origin=origin,
        orientations=[(1, 0, 0, 0, -1, 0)] * VOL.shape[2],
    )
    vol = read_dicom_series(as_pairs(tmp_path / "dicom", tmp_path))
    assert np.array_equal(vol.array, VOL)
    assert np.allclose(vol.geometry.origin, (-100.0, -80.0, 40.0))


def test_rescale_slope_and_intercept_are_applied(tmp_path):
    write_series(tmp_path / "d", VOL, slope=2.0, intercept=-2048.0)
    vol = read_dicom_series(as_pairs(tmp_path / "d", tmp_path))
    assert np.allclose(vol.array, np.round((VOL + 2048) / 2) * 2 - 2048)


def test_the_largest_series_is_chosen_and_headers_are_allow_listed(tmp_path):
    write_series(tmp_path / "d", VOL, series="main", extra={"BodyPartExamined": "CHEST",
                                                           "InstitutionName": "Secret Hospital"})
    write_series(tmp_path / "d", VOL[:, :, :2], series="scout", names=["x1.dcm", "x2.dcm"])
    vol = read_dicom_series(as_pairs(tmp_path / "d", tmp_path))
    assert vol.geometry.shape == VOL.shape
    assert vol.header == {"Modality": "CT", "BodyPartExamined": "CHEST"}


def _positions(steps):
    z, out = 40.0, []
    for s in [0.0, *steps]:
        z += s
        out.append((-100.0, -80.0, z))
    return out


@pytest.mark.parametrize(
    "kwargs, reason, fragment",
    [
        ({"positions": _positions([2.0, 2.0, 3.0])}, "dicom.irregular_spacing", "slice step found 3.000 mm"),
        ({"positions": _positions([2.0, 0.0, 2.0])}, "dicom.duplicate_position", "expected distinct positions"),
        ({"orientations": [(1, 0, 0, 0, 1, 0)] * 3 + [(1, 0, 0, 0, 0, 1)]}, "dicom.orientation_varies",
         "ImageOrientationPatient"),
        ({"positions": [(-100.0, -80.0 + 0.5 * k, 40.0 + 2 * k) for k in range(4)]}, "dicom.gantry_tilt",
         "in-plane"),
        ({"modality": "US"}, "dicom.unsupported_modality", "Modality (0008,0060): found 'US'"),
    ],
    ids=["irregular-spacing", "duplicate-position", "orientation-varies", "gantry-tilt", "not-ct-or-mr"],
)
def test_inconsistent_series_are_rejected_with_field_and_values(tmp_path, kwargs, reason, fragment):
    write_series(tmp_path / "dicom", VOL, **kwargs)
    with pytest.raises(CaseError) as err:
        read_dicom_series(as_pairs(tmp_path / "dicom", tmp_path))
    assert err.value.reason == reason
    assert fragment in err.value.message
    assert err.value.path.startswith("dicom/")


def test_non_dicom_files_only_is_a_clear_rejection(tmp_path):
    (tmp_path / "dicom").mkdir()
    (tmp_path / "dicom" / "notes.dcm").write_text("not dicom")
    with pytest.raises(CaseError) as err:
        read_dicom_series(as_pairs(tmp_path / "dicom", tmp_path))
    assert err.value.reason == "dicom.no_images"
    assert "dicom/notes.dcm" in err.value.message


def _write_nifti(path, canon, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), ras=True):
    arr = canon[::-1, ::-1, :] if ras else canon
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(arr, (2, 1, 0))))
    img.SetSpacing(spacing)
    if ras:
        first = (origin[0] + (canon.shape[0] - 1) * spacing[0],
                 origin[1] + (canon.shape[1] - 1) * spacing[1], origin[2])
        img.SetOrigin(first)
        img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    else:
        img.SetOrigin(origin)
    sitk.WriteImage(img, str(path))


def test_nifti_in_ras_reads_back_canonical(tmp_path):
    _write_nifti(tmp_path / "ct.nii.gz", VOL.astype(np.int16))
    vol = read_volume(str(tmp_path / "ct.nii.gz"), "ct.nii.gz", "CT")
    assert np.array_equal(vol.array, VOL)
    assert np.allclose(vol.geometry.origin, (0, 0, 0))


@pytest.mark.parametrize(
    "mask_kwargs, values, reason, fragment",
    [
        ({"spacing": (1.0, 1.0, 3.0)}, (0, 1), "mask.geometry_mismatch", "spacing (1, 1, 3) != image spacing"),
        ({"origin": (5.0, 0.0, 0.0)}, (0, 1), "mask.geometry_mismatch", "origin"),
        ({}, (0, 1, 2), "mask.not_binary", "values: found {0, 1, 2}"),
    ],
    ids=["spacing", "origin", "not-binary"],
)
def test_bad_masks_are_rejected_naming_the_field(tmp_path, mask_kwargs, values, reason, fragment):
    _write_nifti(tmp_path / "ct.nii.gz", VOL.astype(np.int16))
    image = read_volume(str(tmp_path / "ct.nii.gz"), "ct.nii.gz", "CT")
    mask = (np.arange(VOL.size).reshape(VOL.shape) % len(values)).astype(np.uint8)
    _write_nifti(tmp_path / "m.nii.gz", mask, **mask_kwargs)
    with pytest.raises(CaseError) as err:
        read_mask(str(tmp_path / "m.nii.gz"), "segmentations/m.nii.gz", image.geometry)
    assert err.value.reason == reason
    assert fragment in err.value.message
    assert err.value.path == "segmentations/m.nii.gz"


def test_mask_with_255_is_binary(tmp_path):
    _write_nifti(tmp_path / "ct.nii.gz", VOL.astype(np.int16))
    image = read_volume(str(tmp_path / "ct.nii.gz"), "ct.nii.gz", "CT")
    _write_nifti(tmp_path / "m.nii.gz", (VOL > 0).astype(np.uint8) * 255)
    mask, _ = read_mask(str(tmp_path / "m.nii.gz"), "m", image.geometry)
    assert np.array_equal(mask.dense(), VOL > 0)


def test_nan_volume_is_rejected(tmp_path):
    bad = VOL.copy()
    bad[1, 1, 1] = np.nan
    _write_nifti(tmp_path / "mr.nii.gz", bad)
    with pytest.raises(CaseError, match="found 1 NaN/inf values"):  # ITK would read it as 0
        read_volume(str(tmp_path / "mr.nii.gz"), "mr.nii.gz", "MR")


def test_voxel_limit(tmp_path):
    _write_nifti(tmp_path / "ct.nii.gz", VOL.astype(np.int16))
    with pytest.raises(CaseError) as err:
        read_volume(str(tmp_path / "ct.nii.gz"), "ct.nii.gz", "CT", max_voxels=10)
    assert err.value.reason == "volume.too_large"


@pytest.mark.parametrize(
    "names, chosen",
    [
        (["ct.nii.gz"], "itk"),
        (["CT.NRRD"], "itk"),
        (["image.mha"], "itk"),
        (["IM0001", "IM0002"], "dicom"),
        (["a.dcm"], "dicom"),
        (["b.dcm", "DICOMDIR", "notes.txt"], "dicom"),
    ],
    ids=["nifti", "nrrd-upper-case", "mha", "dicom-no-suffix", "dicom-one-file", "dicom-strays"],
)
def test_reader_is_chosen_from_the_file_names(names, chosen):
    files = [(f"/in/case/{n}", f"case/{n}") for n in names]
    assert reader_for(files).name == chosen


@pytest.mark.parametrize(
    "names",
    [[], ["a.nii.gz", "b.nii.gz"], ["ct.nii.gz", "IM0001"]],
    ids=["no-files", "two-volumes", "volume-beside-dicom"],
)
def test_no_reader_names_the_file_and_lists_what_was_tried(names):
    files = [(f"/in/case/{n}", f"case/{n}") for n in names]
    with pytest.raises(CaseError) as err:
        reader_for(files)
    assert err.value.reason == "volume.no_reader"
    assert err.value.path == (files[0][1] if files else "")
    for reader in READERS:
        assert f"{reader.name}: {reader.takes}" in err.value.message


def test_registry_reads_the_same_volumes_as_the_readers(tmp_path):
    write_series(tmp_path / "dicom", VOL)
    files = list_files(str(tmp_path), "dicom")
    via_registry = reader_for(files).read(files)
    direct = read_dicom_series(files)
    assert np.array_equal(via_registry.array, direct.array)
    assert via_registry.content_sha256 == direct.content_sha256
    _write_nifti(tmp_path / "mr.nii.gz", VOL.astype(np.int16))
    files = [(str(tmp_path / "mr.nii.gz"), "mr.nii.gz")]
    vol = reader_for(files).read(files, modality="MR")
    assert vol.modality == "MR" and np.array_equal(vol.array, VOL)


@pytest.mark.parametrize(
    "names",
    [["IM0001", "IM0002"], ["ct.nii.gz"], ["ct.nii.gz", "IM0001"], ["a.nii.gz", "b.nii.gz"]],
    ids=["dicom", "one-volume", "volume-beside-dicom", "two-volumes"],
)
def test_a_folder_named_as_one_image_goes_whole_to_the_folder_reader(names):
    files = [(f"/in/case/dicom/{n}", f"case/dicom/{n}") for n in names]
    assert reader_for(files, folder=True).name == "dicom"


def test_masks_and_label_maps_are_read_through_the_mask_registry(tmp_path):
    _write_nifti(tmp_path / "ct.nii.gz", VOL.astype(np.int16))
    _write_nifti(tmp_path / "m.nii.gz", (VOL > VOL.mean()).astype(np.uint8))
    image = read_volume(str(tmp_path / "ct.nii.gz"), "ct.nii.gz", "CT")
    reader = mask_reader_for(str(tmp_path / "m.nii.gz"), "m.nii.gz")
    assert reader in MASK_READERS and reader.name == "itk"
    via_registry = reader.read_mask(str(tmp_path / "m.nii.gz"), "m.nii.gz", image.geometry)
    direct = read_mask(str(tmp_path / "m.nii.gz"), "m.nii.gz", image.geometry)
    assert np.array_equal(via_registry[0].dense(), direct[0].dense()) and via_registry[1] == direct[1]
    with pytest.raises(CaseError) as err:
        mask_reader_for(str(tmp_path / "m.png"), "segmentations/m.png")
    assert err.value.reason == "mask.no_reader" and err.value.path == "segmentations/m.png"


@pytest.mark.parametrize("dtype, values, ok", [
    (np.uint8, (0, 1), True), (np.uint8, (0, 255), True), (np.uint16, (0, 1), True),
    (np.int16, (0, 1), True), (np.int8, (0, -1), False), (np.uint8, (0, 1, 255), False),
    (np.int16, (0, 1, -1), False)])
def test_mask_values_checked_by_one_maximum_or_in_full(tmp_path, dtype, values, ok):
    """An unsigned {0, 1} mask (the releases') is checked by its maximum alone; any other is
    checked value by value, with the same verdicts as before."""
    _write_nifti(tmp_path / "ct.nii.gz", VOL.astype(np.int16))
    image = read_volume(str(tmp_path / "ct.nii.gz"), "ct.nii.gz", "CT")
    data = np.zeros(VOL.shape, dtype=dtype)
    body = np.argwhere(VOL > 0)
    for n, (i, j, k) in enumerate(body):
        data[i, j, k] = values[1 + n % (len(values) - 1)]
    _write_nifti(tmp_path / "m.nii.gz", data)
    if ok:
        mask, _ = read_mask(str(tmp_path / "m.nii.gz"), "m", image.geometry)
        assert np.array_equal(mask.dense(), VOL > 0)
    else:
        with pytest.raises(CaseError) as err:
            read_mask(str(tmp_path / "m.nii.gz"), "m", image.geometry)
        assert err.value.reason == "mask.not_binary"


def test_layouts_import_the_readers_only_when_a_case_is_read():
    """Discovery (the layouts' detect and files) needs only the readers' file-name helpers:
    the registry and the readers behind it are imported by the first case read."""
    probe = ("import sys; import pipeline.inputs.layouts as L; "
             "lazy = [m for m in ('pipeline.inputs.readers.registry', 'pipeline.inputs.readers.itk', "
             "'pipeline.inputs.readers.dicom') if m in sys.modules]; "
             "from pipeline.inputs import readers; from pipeline.inputs.readers import reader_for; "
             "print(lazy, reader_for is readers.registry.reader_for, readers.READERS is readers.registry.READERS)")
    assert python_probe(probe) == "[] True True"
    with pytest.raises(AttributeError, match="no attribute 'read_png'"):
        import pipeline.inputs.readers as readers

        readers.read_png  # noqa: B018


@pytest.mark.parametrize("sub", ["case/segmentations", "./case/segmentations/", "case", "."])
def test_list_files_gives_each_file_its_path_relative_to_the_root(tmp_path, monkeypatch, sub):
    # each folder's relative path is worked out once: the pairs are still os.path.relpath's
    import os
    for name in ("segmentations/b.nii.gz", "segmentations/a.nii.gz", "segmentations/.hidden",
                 "segmentations/deep/er/c.nii.gz", "ct.nii.gz"):
        path = tmp_path / "case" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    for root in (str(tmp_path), str(tmp_path) + "/", "."):
        if root == ".":
            monkeypatch.chdir(tmp_path)
        found = list_files(root, sub)
        walked = sorted(
            os.path.join(d, n) for d, _, names in os.walk(os.path.join(root, sub))
            for n in names if not n.startswith(".")
        )
        assert sorted(full for full, _ in found) == walked
        assert [rel for _, rel in found] == [os.path.relpath(full, root) for full, _ in found]
    assert [rel for _, rel in list_files(str(tmp_path), "case/segmentations")] == [
        "case/segmentations/a.nii.gz", "case/segmentations/b.nii.gz",
        "case/segmentations/deep/er/c.nii.gz",
    ]
