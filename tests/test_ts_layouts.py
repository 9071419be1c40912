"""The TotalSegmentator release layouts and DICOM SEG, from files written the way the
releases and the tool write them: the MRI release's ``mri.nii.gz`` cases, the tool's ``--ml``
multilabel output (class map in a NIfTI header extension, or none), and DICOM SEG objects
written with highdicom beside a DICOM series; every layout detected per case."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from pipeline.core.masks import as_mask
from pipeline.errors import CaseError
from pipeline.inputs.class_lists import class_lists
from pipeline.inputs.discovery import discover_cases
from pipeline.inputs.layouts import get_layout
from tests.dicom_factory import uid, write_series

SHAPE = (12, 10, 6)
#: voxel → RAS with i→L, j→P, k→S: the stored array is already canonical
AFFINE = np.diag([-1.5, -1.5, 1.5, 1.0])


def _masks() -> dict[str, np.ndarray]:
    liver = np.zeros(SHAPE, bool)
    liver[2:5, 3:6, 1:4] = True
    kidney = np.zeros(SHAPE, bool)
    kidney[7:9, 1:3, 2:5] = True
    return {"liver": liver, "kidney_left": kidney}


def _nifti(path: Path, array: np.ndarray, dtype=np.uint8) -> nib.Nifti1Image:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(array.astype(dtype), AFFINE)
    img.set_qform(AFFINE, code=1)
    img.set_sform(AFFINE, code=1)
    return img


def _image(case: Path, stem: str) -> None:
    nib.save(_nifti(case / f"{stem}.nii.gz", np.full(SHAPE, 100), np.int16), case / f"{stem}.nii.gz")


def write_release_case(case: Path, stem: str, masks: dict[str, np.ndarray]) -> None:
    """``<stem>.nii.gz`` + ``segmentations/<class>.nii.gz`` (uint8 {0,1}), as the releases."""
    _image(case, stem)
    for name, mask in masks.items():
        path = case / "segmentations" / f"{name}.nii.gz"
        nib.save(_nifti(path, mask), path)


def caret_xml(table: dict[int, str]) -> bytes:
    """The CaretExtension document TotalSegmentator's ``--ml`` output carries (format of
    ``nifti_ext_header.add_label_map_to_nifti``: one ``<Label Key=…>`` per class)."""
    body = "".join(f'<Label Key="{k}" Red="1.0" Green="0.0" Blue="0.0" Alpha="1">'
                   f"<![CDATA[{v}]]></Label>\n" for k, v in table.items())
    return ('<?xml version="1.0" encoding="UTF-8"?> <CaretExtension>  <Date><![CDATA[2013-07-14T05:45:09]]>'
            '</Date>   <VolumeInformation Index="0">   <LabelTable>\n' + body + "\n  </LabelTable>  "
            "<StudyMetaDataLinkSet>  </StudyMetaDataLinkSet>  <VolumeType><![CDATA[Label]]></VolumeType>"
            "   </VolumeInformation></CaretExtension>\n              ").encode()


def write_ml_case(case: Path, stem: str, label: np.ndarray, table: dict[int, str] | None,
                  extension: bytes | None = None) -> None:
    """``<stem>.nii.gz`` + ``segmentations.nii.gz`` (one uint8 label map), the class map in a
    code-0 header extension when ``table`` is given (as ``TotalSegmentator --ml`` writes it)."""
    _image(case, stem)
    img = _nifti(case / "segmentations.nii.gz", label)
    if table is not None or extension is not None:
        img.header.extensions.append(
            nib.nifti1.Nifti1Extension(0, extension if extension is not None else caret_xml(table)))
    nib.save(img, case / "segmentations.nii.gz")


def _series(case: Path) -> list:
    extra = {"FrameOfReferenceUID": uid("for"), "PatientBirthDate": "", "PatientSex": "O",
             "StudyID": "1", "StudyDate": "20200101", "StudyTime": "120000",
             "ReferringPhysicianName": "", "AccessionNumber": "", "SeriesNumber": 1,
             "Manufacturer": "phantom"}
    paths = write_series(case / "dicom", np.full(SHAPE, 40.0), spacing=(0.8, 0.9, 2.0), extra=extra)
    return [pydicom.dcmread(p) for p in paths]


def write_seg(path: Path, source: list, masks: dict[str, np.ndarray]) -> hd.seg.Segmentation:
    """A BINARY DICOM SEG of ``masks`` (canonical ``[i, j, k]``) on the series ``source``
    (one file per k, rows = j, columns = i), written with highdicom as TotalSegmentator's
    ``-ot dicom_seg`` does."""
    names = list(masks)
    pixels = np.stack([np.stack([masks[n][:, :, k].T for n in names], -1)
                       for k in range(SHAPE[2])]).astype(np.uint8)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="TotalSegmentator", version="2.18.0", family=codes.cid7162.ArtificialIntelligence)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=i + 1, segment_label=name, segmented_property_category=codes.SCT.Organ,
        segmented_property_type=codes.SCT.Liver, algorithm_type="AUTOMATIC",
        algorithm_identification=algorithm) for i, name in enumerate(names)]
    seg = hd.seg.Segmentation(
        source_images=source, pixel_array=pixels, segmentation_type="BINARY",
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=99,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="radvqa tests",
        manufacturer_model_name="TotalSegmentator", software_versions="2.18.0",
        device_serial_number="1")
    seg.save_as(path)
    return seg


def _load(root: Path):
    cases, rejected = discover_cases(str(root), pseudonym_key="k")
    assert rejected == [] and len(cases) == 1
    return cases[0], get_layout(cases[0].layout).load(cases[0], str(root), 10**8)


# ----------------------------------------------------------------------- release cases


def test_an_mri_release_case_is_read_as_mr(tmp_path):
    write_release_case(tmp_path, "mri", {**_masks(), "fibula": np.zeros(SHAPE, bool)})
    case, loaded = _load(tmp_path)
    assert (case.layout, case.modality, loaded.volume.modality) == ("totalseg", "MR", "MR")
    assert set(loaded.masks) == {"liver", "kidney_left", "fibula"}
    for name, mask in _masks().items():
        assert np.array_equal(as_mask(loaded.masks[name]).dense(), mask)


def test_every_layout_is_detected_per_case(tmp_path):
    write_release_case(tmp_path / "s0001", "ct", _masks())
    write_release_case(tmp_path / "s0002", "mri", _masks())
    write_ml_case(tmp_path / "s0003", "ct", _masks()["liver"].astype(np.uint8) * 5, None)
    write_seg(tmp_path / "s0004" / "seg.dcm", _series(tmp_path / "s0004"), _masks())
    cases, rejected = discover_cases(str(tmp_path), pseudonym_key="k")
    assert rejected == []
    assert {c.source: (c.layout, c.modality) for c in cases} == {
        "s0001": ("totalseg", "CT"), "s0002": ("totalseg", "MR"), "s0003": ("totalseg_ml", "CT"),
        "s0004": ("dicom_seg", "")}


def test_content_digests_of_the_release_layouts_are_the_digests_load_reads(tmp_path):
    """``content_digests`` (the files hashed, nothing decoded) equal ``load``'s digests for
    the release layouts: what a case whose files' times alone changed is checked against."""
    write_release_case(tmp_path / "s0001", "ct", _masks())
    write_ml_case(tmp_path / "s0002", "ct", _label_map(), {1: "spleen", 3: "kidney_left", 5: "liver"})
    write_ml_case(tmp_path / "s0003", "mri", _masks()["liver"].astype(np.uint8) * 5, None)
    write_seg(tmp_path / "s0004" / "seg.dcm", _series(tmp_path / "s0004"), _masks())
    cases, rejected = discover_cases(str(tmp_path), pseudonym_key="k")
    assert rejected == [] and len(cases) == 4
    for case in cases:
        layout = get_layout(case.layout)
        loaded = layout.load(case, str(tmp_path), 10**8)
        assert layout.content_digests(case, str(tmp_path)) == loaded.digests, case.layout


def test_an_image_named_twice_is_ambiguous(tmp_path):
    write_release_case(tmp_path / "s1", "ct", _masks())
    _image(tmp_path / "s1", "mri")
    _, rejected = discover_cases(str(tmp_path), pseudonym_key="k")
    assert [(r.reason, r.source) for r in rejected] == [("source.ambiguous_image", "s1")]
    assert "ct.nii.gz and mri.nii.gz" in rejected[0].message


# ----------------------------------------------------------------------------- --ml


def _label_map() -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    label[_masks()["liver"]] = 5
    label[_masks()["kidney_left"]] = 3
    return label


def test_ml_output_is_named_by_the_class_map_in_its_header(tmp_path):
    write_ml_case(tmp_path, "ct", _label_map(), {1: "spleen", 3: "kidney_left", 5: "liver"})
    case, loaded = _load(tmp_path)
    assert case.layout == "totalseg_ml"
    assert set(loaded.masks) == {"liver", "kidney_left"}
    for name, mask in _masks().items():
        assert np.array_equal(as_mask(loaded.masks[name]).dense(), mask)
    assert "labels_from_builtin_class_list" not in loaded.notes


@pytest.mark.parametrize("stem, modality", [("ct", "CT"), ("mri", "MR")])
def test_ml_output_without_a_class_map_is_named_by_the_builtin_list(tmp_path, stem, modality):
    label = np.zeros(SHAPE, np.uint8)
    last = len(class_lists()[modality])
    label[0, 0, 0], label[1, 1, 1] = 1, last
    write_ml_case(tmp_path, stem, label, None)
    _, loaded = _load(tmp_path)
    assert set(loaded.masks) == {class_lists()[modality][0], class_lists()[modality][-1]}
    assert loaded.notes["labels_from_builtin_class_list"] == [
        f"segmentations.nii.gz: no class map in the header, named by TotalSegmentator's "
        f"{modality} class list"]


@pytest.mark.parametrize("table, extension, reason, fragment", [
    ({1: "liver"}, None, "labels.unmapped_value", "values: found label values [3, 5]"),
    (None, b"<CaretExtension><LabelTable><Label Key='x'>liver</Label>",
     "labels.bad_extension", "CaretExtension: found XML that does not parse"),
    (None, caret_xml({0: "liver"}), "labels.bad_extension", "found Label Key='0'"),
    (None, caret_xml({1: "liver", 2: "liver"}), "labels.duplicate_name", "name 'liver' twice"),
], ids=["unmapped", "broken-xml", "zero-key", "duplicate"])
def test_a_bad_ml_class_map_is_a_named_rejection(tmp_path, table, extension, reason, fragment):
    write_ml_case(tmp_path, "ct", _label_map(), table, extension)
    case = discover_cases(str(tmp_path), pseudonym_key="k")[0][0]
    with pytest.raises(CaseError) as err:
        get_layout(case.layout).load(case, str(tmp_path), 10**8)
    assert (err.value.reason, err.value.path) == (reason, "segmentations.nii.gz")
    assert fragment in err.value.message


# ------------------------------------------------------------------------- DICOM SEG


def test_dicom_seg_segments_land_on_the_series_voxels(tmp_path):
    write_seg(tmp_path / "seg.dcm", _series(tmp_path), _masks())
    case, loaded = _load(tmp_path)
    assert case.layout == "dicom_seg" and loaded.volume.modality == "CT"
    assert set(loaded.masks) == {"liver", "kidney_left"}
    for name, mask in _masks().items():
        assert np.array_equal(as_mask(loaded.masks[name]).dense(), mask), name


def test_a_segment_without_a_label_is_named_by_its_property_type(tmp_path):
    seg = write_seg(tmp_path / "seg.dcm", _series(tmp_path), {"x": _masks()["liver"]})
    del seg.SegmentSequence[0].SegmentLabel
    seg.save_as(tmp_path / "seg.dcm")
    _, loaded = _load(tmp_path)
    assert set(loaded.masks) == {"liver"}  # CodeMeaning "Liver"


def _shift(seg, mm):
    position = seg.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
    position.ImagePositionPatient = [position.ImagePositionPatient[0] + mm,
                                     *position.ImagePositionPatient[1:]]


@pytest.mark.parametrize("damage, reason, fragment", [
    ("ct", "seg.not_segmentation", "SOPClassUID (0008,0016) / Modality (0008,0060): found"),
    ("garbage", "seg.unreadable", "file: found data pydicom cannot parse"),
    ("half-voxel", "seg.geometry_mismatch", "frame 1 ImagePositionPatient"),
    ("outside", "seg.geometry_mismatch", "inside its grid"),
    ("type", "seg.unsupported_type", "SegmentationType (0062,0001): found 'LABELMAP'"),
    ("no-segments", "seg.bad_value", "SegmentSequence (0062,0002): found no segments"),
    ("spacing", "seg.geometry_mismatch", "columns stepping"),
], ids=lambda v: v if isinstance(v, str) and " " not in v and "." not in v else "")
def test_a_bad_seg_is_a_named_rejection_naming_file_and_field(tmp_path, damage, reason, fragment):
    source = _series(tmp_path)
    seg = write_seg(tmp_path / "seg.dcm", source, _masks())
    if damage == "ct":
        shutil.copy(tmp_path / "dicom" / "slice000.dcm", tmp_path / "seg.dcm")
    elif damage == "garbage":
        (tmp_path / "seg.dcm").write_bytes(b"DICM" * 10)
    else:
        if damage == "half-voxel":
            _shift(seg, 0.4)
        elif damage == "outside":
            _shift(seg, -0.8 * 3)
        elif damage == "type":
            seg.SegmentationType = "LABELMAP"
        elif damage == "no-segments":
            del seg.SegmentSequence
        elif damage == "spacing":
            seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = [1.8, 1.6]
        seg.save_as(tmp_path / "seg.dcm")
    case = discover_cases(str(tmp_path), pseudonym_key="k")[0][0]
    with pytest.raises(CaseError) as err:
        get_layout(case.layout).load(case, str(tmp_path), 10**8)
    assert (err.value.reason, err.value.path) == (reason, "seg.dcm")
    assert fragment in err.value.message


def test_a_structure_in_two_seg_files_is_rejected(tmp_path):
    source = _series(tmp_path)
    write_seg(tmp_path / "a.dcm", source, {"liver": _masks()["liver"]})
    write_seg(tmp_path / "b.dcm", source, {"liver": _masks()["kidney_left"]})
    case = discover_cases(str(tmp_path), pseudonym_key="k")[0][0]
    with pytest.raises(CaseError) as err:
        get_layout(case.layout).load(case, str(tmp_path), 10**8)
    assert (err.value.reason, err.value.path) == ("seg.duplicate_name", "b.dcm")


def test_a_forced_ml_layout_without_its_label_file_is_a_named_rejection(tmp_path):
    write_release_case(tmp_path / "s1", "ct", _masks())
    cases, rejected = discover_cases(str(tmp_path), pseudonym_key="k", layout="totalseg_ml")
    assert cases == [] and [(r.reason, r.source) for r in rejected] == [("source.missing_file", "s1")]


def _mutations(good: bytes, start: int, n: int, seed: int):
    """``n`` corrupt copies of ``good``: flipped bytes, truncations, overwritten runs."""
    rng = np.random.default_rng(seed)
    for it in range(n):
        data = bytearray(good)
        if it % 3 == 0:
            for i in rng.integers(start, len(data), size=int(rng.integers(1, 8))):
                data[i] = int(rng.integers(256))
        elif it % 3 == 1:
            data = data[: int(rng.integers(start, len(data)))]
        else:
            i = int(rng.integers(start, len(data) - 8))
            data[i:i + 4] = bytes(rng.integers(0, 256, 4, dtype=np.uint8))
        yield bytes(data)


def _outcomes(root: Path, target: Path, variants) -> set[str]:
    """Reasons (or ``ok``) of loading the case at ``root`` with each variant written to
    ``target``; an exception other than :class:`CaseError` fails the test."""
    outcomes = set()
    for data in variants:
        target.write_bytes(data)
        case = discover_cases(str(root), pseudonym_key="k")[0][0]
        try:
            get_layout(case.layout).load(case, str(root), 10**8)
            outcomes.add("ok")
        except CaseError as err:
            assert err.path == target.relative_to(root).as_posix()
            outcomes.add(err.reason)
    return outcomes


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_corrupt_seg_files_and_class_maps_land_as_named_reasons(tmp_path):
    seg_root, ml_root = tmp_path / "seg", tmp_path / "ml"
    write_seg(seg_root / "seg.dcm", _series(seg_root), _masks())
    reasons = _outcomes(seg_root, seg_root / "seg.dcm",
                        _mutations((seg_root / "seg.dcm").read_bytes(), 132, 60, 0))
    assert {"seg.unreadable", "seg.bad_value"} <= reasons
    write_ml_case(ml_root, "ct", _label_map(), {1: "spleen", 3: "kidney_left", 5: "liver"})
    raw = gzip.decompress((ml_root / "segmentations.nii.gz").read_bytes())
    (ml_root / "segmentations.nii.gz").unlink()
    header = raw[:int(np.frombuffer(raw[108:112], "<f4")[0])]
    reasons = _outcomes(ml_root, ml_root / "segmentations.nii",
                        (m + raw[len(header):] for m in _mutations(header, 348, 40, 1)))
    assert "labels.bad_extension" in reasons
