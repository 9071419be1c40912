"""The built-in phantoms: determinism, anatomy invariants, real DICOM, and the same
volume stored as DICOM, NIfTI in RAS and NIfTI in another axis order giving
identical slices."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pipeline.engine.extract import SliceSettings, process_case
from pipeline.inputs.discovery import discover_cases
from pipeline.inputs.phantoms import LESIONS, ORGANS, make_phantom, situs_inversus
from pipeline.inputs.sample import FORMS, write_case, write_sample


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_write_sample_is_byte_identical_twice(tmp_path):
    a = write_sample(tmp_path / "a", n_patients=8)
    b = write_sample(tmp_path / "b", n_patients=8)
    assert a == b == [f"s{i:04d}" for i in range(1, 9)]
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")


@pytest.mark.parametrize("index", range(10), ids=lambda i: f"phantom{i}")
def test_phantom_anatomy(index):
    p = make_phantom(index)
    organs = [p.masks[n] for n in ORGANS]
    assert all(m.any() for m in organs), [n for n in ORGANS if not p.masks[n].any()]
    assert int(np.sum(organs, axis=0).max()) == 1  # organs are mutually exclusive
    centroid = {n: np.argwhere(p.masks[n]).mean(axis=0) for n in ORGANS}
    # the liver is on the patient's right (low i), the spleen on the left — mirrored in situs inversus
    assert (centroid["liver"][0] < centroid["spleen"][0]) != situs_inversus(index)
    assert (centroid["inferior_vena_cava"][0] < centroid["aorta"][0]) != situs_inversus(index)
    assert centroid["kidney_left"][0] > centroid["kidney_right"][0]  # kidneys keep their side
    assert abs(centroid["kidney_right"][2] - centroid["kidney_left"][2]) > 1.5  # one sits lower (slices)
    for lesion in (n for n in LESIONS if n in p.masks):
        assert p.masks[lesion].any()
    if "liver_tumor" in p.masks:
        assert not (p.masks["liver_tumor"] & ~p.masks["liver"]).any()


def test_patients_vary_where_questions_should_depend_on_the_image():
    """Mirrored organs, either kidney lower, joined or separate colon limbs, nodules on
    either side and in different numbers — over the first twelve phantoms."""
    from pipeline.core.boxes import count_components

    lower, colon, nodule_sides, nodule_counts = set(), set(), set(), set()
    for index in range(12):
        p = make_phantom(index, lesions={"lung_nodules": 1.0})
        z = {n: np.argwhere(p.masks[n]).mean(axis=0)[2] for n in ("kidney_left", "kidney_right")}
        lower.add(min(z, key=z.get))
        counts = {count_components(p.masks["colon"][:, :, k]) for k in range(p.image.shape[2])}
        assert 2 in counts  # the two limbs below the transverse colon
        colon.add(1 in counts)
        nodules = p.masks["lung_nodules"]
        left = sum(p.masks[n] for n in ORGANS if n.startswith("lung_") and n.endswith("left"))
        nodule_sides.add("left" if (nodules & (left > 0)).any() else "right")
        nodule_counts.add(count_components(nodules))
    assert sum(situs_inversus(i) for i in range(12)) == 6
    assert lower == {"kidney_left", "kidney_right"}
    assert colon == {True, False}
    assert nodule_sides == {"left", "right"}
    assert len(nodule_counts) >= 2


def test_dicom_form_is_a_real_series_out_of_order(tmp_path):
    p = make_phantom(0)
    write_case(p, tmp_path / "case", "dicom")
    files = sorted((tmp_path / "case" / "dicom").glob("*.dcm"))
    assert len(files) == p.image.shape[2]
    datasets = [pydicom.dcmread(f) for f in files]
    z = [float(d.ImagePositionPatient[2]) for d in datasets]
    inst = [int(d.InstanceNumber) for d in datasets]
    assert z != sorted(z) and z != sorted(z, reverse=True)  # file names do not follow slices
    order = np.argsort(z)
    assert [inst[i] for i in order] != sorted(inst)  # nor do InstanceNumbers
    stack = np.stack([datasets[i].pixel_array * float(datasets[i].RescaleSlope)
                      + float(datasets[i].RescaleIntercept) for i in order], axis=-1)
    assert np.array_equal(np.transpose(stack, (1, 0, 2)), np.clip(p.image, -1024, 3071))
    assert datasets[0].RescaleIntercept == -1024


def test_same_volume_in_every_storage_gives_identical_slices(tmp_path):
    p = make_phantom(0)
    for form in ("dicom", "totalseg", "totalseg_reoriented"):
        write_case(p, tmp_path / form, form)
    cases, rejected = discover_cases(str(tmp_path), pseudonym_key="k")
    assert not rejected and len(cases) == 3
    settings = SliceSettings(planes=("axial", "coronal", "sagittal"), ct_windows=("soft_tissue", "bone"),
                             max_per_volume=6)
    results = {}
    for case in cases:
        r = process_case(case, "train", str(tmp_path), settings)
        results[case.layout + ("-" + case.source if case.layout == "totalseg" else "")] = [
            (x["plane"], x["slice_index"], x["window"]["name"], x["image"]["bytes"], x["boxes"])
            for x in sorted(r.images, key=lambda x: (x["plane"], x["slice_index"], x["window"]["name"]))
        ]
    first, *rest = results.values()
    assert len(first) > 10
    for other in rest:
        assert other == first


def test_multilabel_form_uses_a_user_label_set(tmp_path):
    import json

    p = make_phantom(4)
    write_case(p, tmp_path / "case", "multilabel")
    labels = json.loads((tmp_path / "case" / "labels.json").read_text())
    assert "renal_parenchyma_left" in labels.values() and "liver" in labels.values()
    (case,), _ = discover_cases(str(tmp_path), pseudonym_key="k")
    r = process_case(case, "train", str(tmp_path), SliceSettings())
    assert "portal_vein_custom" in r.notes["labels_absent"]  # named in labels.json, not in the map
    assert {b["label"] for x in r.images for b in x["boxes"]} >= {"renal_parenchyma_left", "liver"}
    assert r.images[0]["modality"] == "CT"


def test_forms_are_validated():
    with pytest.raises(ValueError, match="form must be one of"):
        write_case(make_phantom(0), Path("/nonexistent"), "png")
    with pytest.raises(ValueError, match="dicom form is for CT"):
        write_case(make_phantom(3), Path("/nonexistent"), "dicom")
    assert set(FORMS) == {"dicom", "totalseg", "totalseg_reoriented", "multilabel"}
