"""Display orientation, windows, slice selection, boxes, components and laterality."""

import numpy as np
import pytest

from pipeline.core import keys, slices
from pipeline.core.boxes import (
    body_midline,
    count_components,
    laterality,
    mask_box,
    slice_boxes,
    structure_stats,
)
from pipeline.core.geometry import Geometry
from pipeline.core.imaging import encode_png, png_size
from pipeline.core.slices import (
    PLANE_AXIS,
    PLANES,
    Window,
    apply_window,
    apply_window_table,
    ct_window,
    display_slice,
    display_slices,
    display_spacing,
    display_to_index,
    mr_window,
    select_slices,
    window_indices,
    window_table,
)
from pipeline.engine.extract import SliceSettings, extract_case, plane_prompts, prompt_boxes
from pipeline.inputs.discovery import CaseSource
from pipeline.inputs.readers import Volume

SHAPE = (10, 12, 8)  # i: right->left, j: anterior->posterior, k: inferior->superior


def marker(i, j, k):
    v = np.zeros(SHAPE, dtype=np.int16)
    v[i, j, k] = 1
    return v


@pytest.mark.parametrize(
    "plane, index, voxel, pixel",
    [
        # Patient's right (i=0), anterior (j=0) -> top-left of an axial image.
        ("axial", 3, (0, 0, 3), (0, 0)),
        ("axial", 3, (9, 11, 3), (11, 9)),  # left-posterior -> bottom-right (row, col)
        # Coronal: superior (k=7) at the top, patient's right on the left.
        ("coronal", 4, (0, 4, 7), (0, 0)),
        ("coronal", 4, (9, 4, 0), (7, 9)),
        # Sagittal: superior at the top, anterior on the left.
        ("sagittal", 2, (2, 0, 7), (0, 0)),
        ("sagittal", 2, (2, 11, 0), (7, 11)),
    ],
    ids=["axial-RA", "axial-LP", "coronal-RS", "coronal-LI", "sagittal-AS", "sagittal-PI"],
)
def test_radiological_display_convention(plane, index, voxel, pixel):
    img = display_slice(marker(*voxel), plane, index)
    assert tuple(np.argwhere(img)[0]) == pixel
    # display_to_index inverts the mapping.
    row, col = pixel
    assert tuple(display_to_index(plane, index, col, row, SHAPE)) == tuple(float(v) for v in voxel)


def test_display_spacing():
    assert display_spacing((0.7, 0.8, 3.0), "axial") == (0.7, 0.8)
    assert display_spacing((0.7, 0.8, 3.0), "coronal") == (0.7, 3.0)
    assert display_spacing((0.7, 0.8, 3.0), "sagittal") == (0.8, 3.0)


@pytest.mark.parametrize(
    "value, expected", [(-1000, 0), (-160, 0), (40, 128), (240, 255), (3000, 255), (-60, 64)],
    ids=["air", "lower-edge", "center", "upper-edge", "bone", "quarter"],
)
def test_soft_tissue_window(value, expected):
    assert apply_window(np.array([value]), ct_window("soft_tissue"))[0] == expected


def test_unknown_window_names_the_choices():
    with pytest.raises(ValueError, match="unknown CT window 'lungs'.*'lung'"):
        ct_window("lungs")
    with pytest.raises(ValueError, match="width must be > 0"):
        Window("x", 0, 0)


def test_mr_window_uses_percentiles_of_the_foreground():
    vol = np.zeros((10, 10, 10), np.float32)
    vol[2:8, 2:8, 2:8] = np.linspace(100, 1100, 216).reshape(6, 6, 6)
    w = mr_window(vol, 0.0, 100.0)
    assert w.name == "mr_p0-100"
    assert w.center - w.width / 2 == pytest.approx(100)
    assert w.center + w.width / 2 == pytest.approx(1100)


def test_select_slices_spread_largest_and_caps():
    masks = {"a": np.zeros(SHAPE, bool), "b": np.zeros(SHAPE, bool)}
    for k, area in enumerate([0, 1, 5, 9, 9, 5, 1, 0]):
        masks["a"][:area, 0, k] = True
    masks["b"][0:3, 5, 6] = True
    assert select_slices(masks, "axial", min_area_px=5, max_per_structure=2) == [3, 5]
    assert select_slices(masks, "axial", min_area_px=5, max_per_structure=2, strategy="largest") == [3, 4]
    assert select_slices(masks, "axial", min_area_px=1, max_per_structure=9) == [1, 2, 3, 4, 5, 6]
    assert select_slices(masks, "axial", min_area_px=1, max_per_structure=9, max_per_volume=2) == [2, 5]
    assert select_slices(masks, "axial", min_area_px=100) == []


@pytest.mark.parametrize(
    "rows, cols, box",
    [((2, 5), (3, 7), (3, 2, 7, 5)), ((0, 1), (0, 1), (0, 0, 1, 1)), ((9, 12), (7, 10), (7, 9, 10, 12))],
    ids=["inner", "corner-pixel", "touches-far-edges"],
)
def test_mask_box_is_tight_with_exclusive_maxima(rows, cols, box):
    m = np.zeros((12, 10), bool)
    m[rows[0]:rows[1], cols[0]:cols[1]] = True
    assert mask_box(m) == box
    x0, y0, x1, y1 = box
    assert m[y0:y1, x0:x1].sum() == m.sum()


def test_empty_mask_has_no_box():
    assert mask_box(np.zeros((4, 4), bool)) is None
    assert count_components(np.zeros((4, 4), bool)) == 0


def test_components_use_8_connectivity():
    m = np.zeros((6, 6), bool)
    m[0, 0] = m[1, 1] = True  # diagonal neighbours: one component
    m[4:6, 4:6] = True
    assert count_components(m) == 2


@pytest.mark.parametrize("shape", [(3, 3, 3), (1, 1, 31), (31, 1, 1), (1, 5, 3), (3, 1, 5),
                                   (5, 5, 5), (2, 5, 5), (3, 3, 9)])
def test_count_components_of_small_odd_volumes(shape):
    """Isolated voxels two apart fill cc3d's 26-connected union-find past its quarter of
    the voxels on small or thin volumes with odd sides (cc3d raised): counted all the same."""
    import scipy.ndimage as ndi

    mask = np.zeros(shape, dtype=bool)
    mask[::2, ::2, ::2] = True
    want = ndi.label(mask, structure=np.ones((3, 3, 3)))[1]
    assert want == np.prod([-(-n // 2) for n in shape])
    assert count_components(mask) == want
    assert count_components(mask, fully_connected=False) == want


def test_count_components_3d_equal_scipys():
    """Random small volumes, thin ones included, and their densest isolated-voxel patterns."""
    import scipy.ndimage as ndi

    rng = np.random.default_rng(13)
    for t in range(1500):
        shape = tuple(int(v) for v in rng.integers(1, 9, size=3))
        mask = rng.random(shape) < rng.uniform(0.05, 0.9)
        if t % 3 == 0:
            mask[:] = False
            mask[tuple(slice(int(rng.integers(0, 2)), None, 2) for _ in range(3))] = True
        want = ndi.label(mask, structure=np.ones((3, 3, 3)))[1]
        assert count_components(mask) == want, shape



@pytest.mark.parametrize(
    "i_min, i_max, centroid, expected",
    [(0, 10, 5.0, "right"), (60, 70, 65.0, "left"), (40, 60, 50.0, "midline"),
     (45, 60, 52.0, "midline"), (30, 80, 62.0, "midline")],
    ids=["right", "left", "centred", "near-midline", "spans-midline"],
)
def test_laterality_from_patient_coordinates(i_min, i_max, centroid, expected):
    assert laterality(i_min, i_max, centroid, 49.5, 1.0) == expected


def test_slice_boxes_and_structure_stats_on_a_phantom():
    # A body of air-free tissue, a "liver" on the patient's right, a "spleen" on the left.
    vol = np.full((40, 30, 6), -1000, np.float32)
    vol[2:38, 3:27, :] = 40
    liver = np.zeros(vol.shape, bool)
    liver[4:14, 5:15, 1:5] = True
    spleen = np.zeros(vol.shape, bool)
    spleen[28:34, 18:24, 2:4] = True
    geom = Geometry(vol.shape, (1.5, 1.2, 4.0), (-30.0, -20.0, 100.0))
    mid = body_midline(vol, "CT")
    assert np.allclose(mid, 19.5)
    boxes = {b["label"]: b for b in slice_boxes({"liver": liver, "spleen": spleen}, "axial", 2, geom, mid)}
    assert (boxes["liver"]["x_min"], boxes["liver"]["y_min"], boxes["liver"]["x_max"],
            boxes["liver"]["y_max"]) == (4, 5, 14, 15)
    assert boxes["liver"]["area_px"] == 100
    assert boxes["liver"]["area_mm2"] == pytest.approx(100 * 1.5 * 1.2)
    assert boxes["liver"]["laterality"] == "right"
    assert boxes["spleen"]["laterality"] == "left"
    assert boxes["liver"]["centroid_lps"] == pytest.approx([-30 + 8.5 * 1.5, -20 + 9.5 * 1.2, 108.0])
    stats = structure_stats("liver", liver, geom, mid)
    assert stats["box3d"] == [4, 5, 1, 14, 15, 5]
    assert stats["volume_ml"] == pytest.approx(400 * 1.5 * 1.2 * 4.0 / 1000)
    assert stats["laterality"] == "right"
    assert structure_stats("none", np.zeros(vol.shape, bool), geom, mid) is None


def test_png_encoder_round_trips_through_pillow():
    from io import BytesIO

    from PIL import Image

    gray = (np.arange(35 * 17) % 256).astype(np.uint8).reshape(17, 35)
    data = encode_png(gray)
    assert png_size(data) == (35, 17)
    assert np.array_equal(np.asarray(Image.open(BytesIO(data))), gray)
    rgb = np.stack([gray, gray[::-1], 255 - gray], axis=-1)
    assert np.array_equal(np.asarray(Image.open(BytesIO(encode_png(rgb)))), rgb)
    assert encode_png(gray) == data


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.uint8, np.int8, np.dtype(">i2")])
def test_window_tables_give_apply_windows_pixels(dtype):
    """A CT's integers windowed through a lookup table: every value of the type, each window,
    the very pixels apply_window gives from float64."""
    info = np.iinfo(dtype)
    values = np.arange(info.min, info.max + 1).astype(dtype).reshape(-1, 256)
    for name in ("soft_tissue", "lung", "bone", "brain"):
        window = ct_window(name)
        table = window_table(window, dtype)
        assert np.array_equal(apply_window_table(values, table),
                              apply_window(values.astype(np.float64), window))
        assert np.array_equal(apply_window_table(values.T[::-1], table),  # a strided view
                              apply_window(values.T[::-1].astype(np.float64), window))
    assert window_table(ct_window("lung"), np.float32) is None
    assert window_table(ct_window("lung"), np.int32) is None


def test_slice_boxes_are_those_of_the_pixels():
    """Box, area and centroid of irregular masks, from per-row and per-column counts, equal
    those computed from the pixels' own coordinates (the centroid to the last bit)."""
    rng = np.random.default_rng(11)
    shape = (23, 19, 7)
    geom = Geometry(shape, (0.7, 0.9, 2.5), (10.0, -5.0, 30.0))
    masks = {f"m{n}": rng.random(shape) < rng.uniform(0.02, 0.5) for n in range(6)}
    masks["m0"][:] = False
    masks["m0"][3:5, 7, 2:4] = True
    mid = np.full(shape[2], 11.0)
    for plane, n in (("axial", 7), ("coronal", 19), ("sagittal", 23)):
        for index in range(n):
            boxes = {b["label"]: b for b in slice_boxes(masks, plane, index, geom, mid)}
            for label, mask in masks.items():
                ys, xs = np.nonzero(display_slice(mask, plane, index))
                if not xs.size:
                    assert label not in boxes
                    continue
                b = boxes[label]
                assert (b["x_min"], b["y_min"], b["x_max"], b["y_max"]) == (
                    xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
                assert b["area_px"] == xs.size
                assert (b["centroid_x"], b["centroid_y"]) == (round(float(xs.mean()), 4),
                                                              round(float(ys.mean()), 4))


def test_a_ct_extracts_the_same_rows_from_its_integers_as_from_float32():
    """Volume.voxels kept as int16 (the reader's buffer) and the same voxels as float32 give
    the same image and structure rows, PNG bytes included."""
    rng = np.random.default_rng(5)
    shape = (40, 36, 12)
    hu = np.full(shape, -1000, np.int16)
    hu[3:37, 4:32, :] = rng.integers(-200, 1600, (34, 28, 12), dtype=np.int16)
    liver = np.zeros(shape, bool)
    liver[5:16, 6:20, 2:10] = True
    bone = hu > 900
    geom = Geometry(shape, (1.5, 1.5, 3.0), (0.0, 0.0, 0.0))
    case = CaseSource("key", "patient", "case", "totalseg", "", (("image", "case/ct.nii.gz"),))
    settings = SliceSettings(planes=PLANES, ct_windows=("soft_tissue", "lung", "bone"),
                             min_area_px=4, boxed=True)
    rows = [extract_case(case, "train", Volume(voxels, geom, "CT"),
                         {"liver": liver, "bone": bone}, settings)
            for voxels in (hu, hu.astype(np.float32))]
    volume = Volume(hu, geom, "CT")
    assert volume.voxels is hu and volume.array.dtype == np.float32
    assert volume.voxels is volume.array  # one copy held once the float32 one is made
    assert rows[0] == rows[1] and len(rows[0][0]) > 10


def test_structure_centroids_and_midlines_are_those_of_the_voxels():
    """structure_stats' centroid from per-plane counts is the mean of the voxels' own indices
    to the last bit; a CT's midline from the largest value along j is body_mask's."""
    rng = np.random.default_rng(12)
    shape = (21, 17, 9)
    geom = Geometry(shape, (0.8, 0.8, 1.5), (-3.0, 4.0, 50.0))
    hu = np.where(rng.random(shape) < 0.3, rng.integers(-400, 900, shape), -1000).astype(np.int16)
    hu[:, :, 4] = -1000  # a level without body
    mid = body_midline(hu, "CT")
    body = (hu > -500).any(axis=1)
    for k in range(shape[2]):
        cols = np.flatnonzero(body[:, k])
        if cols.size:
            assert mid[k] == (cols[0] + cols[-1]) / 2.0
    assert np.array_equal(mid, body_midline(hu.astype(np.float32), "CT"))
    for n in range(5):
        mask = rng.random(shape) < rng.uniform(0.01, 0.6)
        stats = structure_stats(f"m{n}", mask, geom, mid)
        centroid = np.argwhere(mask).mean(axis=0)
        assert stats["centroid_lps"] == [round(float(v), 4) for v in geom.index_to_lps(centroid)]
        assert stats["voxels"] == int(mask.sum())


def _midline_of_every_column(hu: np.ndarray) -> np.ndarray:
    """body_midline's definition read off the whole volume (the code before the edge scan)."""
    present = hu.max(axis=1) > -500
    mid = np.full(hu.shape[2], np.nan)
    for k in range(hu.shape[2]):
        cols = np.flatnonzero(present[:, k])
        if cols.size:
            mid[k] = (cols[0] + cols[-1]) / 2.0
    fill = float(np.nanmedian(mid)) if np.isfinite(mid).any() else (hu.shape[0] - 1) / 2.0
    mid[~np.isfinite(mid)] = fill
    return mid


def test_ct_midline_read_in_the_buffers_order_is_the_whole_volumes():
    """A CT's body edges are read with every negatively strided axis flipped back to the
    buffer's order: the same midline as every column read, on volumes of all sizes, flipped
    on any axis, in NIfTI's memory order or permuted, with levels without body."""
    rng = np.random.default_rng(5)
    for trial in range(120):
        shape = tuple(int(n) for n in rng.integers(1, 90, 3))
        hu = np.full(shape, -1000, np.int16)
        for _ in range(int(rng.integers(0, 4))):
            lo = [int(rng.integers(0, n)) for n in shape]
            hi = [int(rng.integers(a, n + 1)) for a, n in zip(lo, shape)]
            hu[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = rng.integers(-499, 1000)
        if trial % 3 == 0:  # [k, j, i] in memory, as a NIfTI's buffer
            hu = np.ascontiguousarray(hu.transpose(2, 1, 0)).transpose(2, 1, 0)
        elif trial % 3 == 1:  # another order in memory
            hu = np.ascontiguousarray(hu.transpose(1, 2, 0)).transpose(2, 0, 1)
        flips = rng.random(3) < 0.5  # a reoriented view: some strides negative
        hu = hu[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
        assert np.array_equal(body_midline(hu, "CT"), _midline_of_every_column(hu)), trial


def test_ct_midline_read_at_the_edges_is_the_whole_volumes():
    """A NIfTI buffer's edges are read first, then wider, then whole levels: the same
    midline as every column read, with body inside, at and beyond the first edge blocks,
    levels without body, odd and even row counts, flipped axes and unsigned voxels."""
    rng = np.random.default_rng(21)
    for trial in range(40):
        shape = (int(rng.integers(250, 560)), int(rng.integers(2, 30)), int(rng.integers(1, 150)))
        hu = np.full(shape[::-1], -1000, np.int16)  # [k, j, i] in memory
        for k in range(shape[2]):
            if rng.random() < 0.15:
                continue  # a level without body
            margin = int(rng.choice([0, 5, 31, 32, 33, 63, 64, 70, 127, 128, shape[0] // 2 - 1]))
            lo = min(margin + int(rng.integers(0, 3)), shape[0] - 1)
            hi = max(shape[0] - 1 - margin - int(rng.integers(0, 3)), lo)
            for col in (lo, hi, *rng.integers(lo, hi + 1, 3)):
                hu[k, int(rng.integers(0, shape[1])), col] = rng.integers(-499, 1000)
        hu = hu.transpose(2, 1, 0)
        flips = rng.random(3) < 0.5
        hu = hu[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
        assert np.array_equal(body_midline(hu, "CT"), _midline_of_every_column(hu)), trial
        if trial % 4 == 0:  # unsigned: every voxel above -500
            u = (hu.astype(np.int32) + 1000).astype(np.uint16)
            assert np.array_equal(body_midline(u, "CT"), _midline_of_every_column(u)), trial


def test_sagittal_windows_of_a_nifti_buffer_are_unchanged():
    """A sagittal slice of a buffer with i fastest is gathered once for all the windows:
    the same pixels as each window's lookup on the strided view."""
    rng = np.random.default_rng(8)
    hu = rng.integers(-1024, 2000, (40, 30, 20)).astype(np.int16)
    by_k = np.ascontiguousarray(hu.transpose(2, 1, 0)).transpose(2, 1, 0)
    view = display_slice(by_k, "sagittal", 7)
    assert view.strides[-1] != view.itemsize
    for name in ("soft_tissue", "lung", "bone"):
        table = window_table(ct_window(name), view.dtype)
        assert np.array_equal(apply_window_table(np.ascontiguousarray(view), table),
                              apply_window_table(view, table))


@pytest.mark.parametrize("group_bytes", [1, 3000, 1 << 23])
def test_display_slices_gathered_from_the_buffer_are_display_slice(monkeypatch, group_bytes):
    """A plane's slices taken in groups along the buffer's fastest axis (a sagittal plane of
    a NIfTI's buffer) are display_slice's pixels, slice by slice, in the order asked for:
    every plane, memory order and flip, groups of one slice up to all of them."""
    monkeypatch.setattr(slices, "GATHER_BYTES", group_bytes)
    gathers, take = [], np.take
    monkeypatch.setattr(np, "take", lambda a, i, axis=None, **kw: (
        gathers.append(axis) if axis == 2 else None, take(a, i, axis=axis, **kw))[1])
    rng = np.random.default_rng(9)
    hu = rng.integers(-1024, 2000, (23, 17, 11)).astype(np.int16)
    for trial in range(48):
        volume = hu
        if trial % 3 == 0:  # [k, j, i] in memory, as a NIfTI's buffer
            volume = np.ascontiguousarray(hu.transpose(2, 1, 0)).transpose(2, 1, 0)
        elif trial % 3 == 1:
            volume = np.ascontiguousarray(hu.transpose(1, 0, 2)).transpose(1, 0, 2)
        flips = [(trial >> b) & 1 for b in (2, 3, 4)]
        volume = volume[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
        if trial % 7 == 6:  # not a whole buffer: taken one slice at a time
            volume = volume[1:-1, :, 1:]
        for plane in PLANES:
            n = volume.shape[PLANE_AXIS[plane]]
            indices = sorted(rng.choice(n, size=int(rng.integers(1, n + 1)), replace=False).tolist())
            got = list(display_slices(volume, plane, indices))
            assert len(got) == len(indices)
            for index, view in zip(indices, got):
                assert np.array_equal(view, display_slice(volume, plane, index)), (trial, plane)
                table = window_table(ct_window("lung"), view.dtype)
                assert np.array_equal(np.take(table, window_indices(view)),
                                      apply_window_table(display_slice(volume, plane, index), table))
    # gathered (the buffer's fastest axis: sagittal for [k, j, i], else axial) unless the
    # groups are of one slice
    assert (len(gathers) > 10) == (group_bytes > 1)


def test_a_box_centroid_point_is_display_to_index():
    """slice_boxes' one-point conversion gives display_to_index's very floats."""
    from pipeline.core.boxes import _display_point

    rng = np.random.default_rng(2)
    for plane in PLANES:
        for _ in range(200):
            x, y = float(rng.uniform(0, 600)), float(rng.uniform(0, 600))
            index, nk = int(rng.integers(0, 500)), int(rng.integers(1, 700))
            want = display_to_index(plane, index, x, y, (1, 1, nk))
            got = _display_point(plane, index, x, y, nk)
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
    with pytest.raises(ValueError):
        _display_point("oblique", 0, 0.0, 0.0, 3)


def _prompt_boxes_one_at_a_time(image_id, boxes, min_area_px):
    """The visual prompt as ``prompt_boxes`` defined it before ``slice_prompts``: each image
    sorting and measuring the slice's boxes on its own."""
    eligible = sorted((b for b in boxes if b["area_px"] >= min_area_px), key=lambda b: b["label"])
    if not eligible:
        return None
    target = eligible[int(keys.rng(0, image_id, "prompt").integers(len(eligible)))]

    def centre(b):
        return ((b["x_min"] + b["x_max"]) / 2.0, (b["y_min"] + b["y_max"]) / 2.0)

    tx, ty = centre(target)

    def nearness(b):
        cx, cy = centre(b)
        return (cx - tx) ** 2 + (cy - ty) ** 2, b["label"]

    return target, sorted((b for b in boxes if b["label"] != target["label"]), key=nearness)[:3]


def test_a_planes_prompts_are_each_images_prompt_boxes():
    """plane_prompts (a plane's slices and windows at once) draws and orders as prompt_boxes
    of each image alone did: the same target, the same neighbours in the same order — ties
    in distance broken by label, then by the slice's order (boxes at the same place, labels
    repeated), areas under the threshold never drawn, slices without one left unprompted."""
    rng = np.random.default_rng(3)
    for plane in range(30):
        ids, boxes = [], []
        for n in range(int(rng.integers(0, 12))):
            count = int(rng.integers(0, 9))
            slice_boxes_ = []
            for _ in range(count):
                x0, y0 = (int(v) for v in rng.integers(0, 6, 2) * 4)  # few places: equal distances
                slice_boxes_.append({"label": f"s{int(rng.integers(0, count + 1))}", "x_min": x0,
                                     "y_min": y0, "x_max": x0 + int(rng.integers(1, 9)),
                                     "y_max": y0 + int(rng.integers(1, 9)),
                                     "area_px": int(rng.integers(0, 100))})
            ids.append([f"plane{plane}/{n}/{w}" for w in ("soft_tissue", "lung", "bone")])
            boxes.append(slice_boxes_)
        expected = [[_prompt_boxes_one_at_a_time(i, b, 50) for i in row] for row, b in zip(ids, boxes)]
        assert plane_prompts(ids, boxes, 50) == expected
        assert [[prompt_boxes(i, b, 50) for i in row] for row, b in zip(ids, boxes)] == expected
