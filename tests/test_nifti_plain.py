"""The plain-NIfTI reader (``pipeline/inputs/readers/nifti_raw.py``) against SimpleITK, the
reader it stands in for, on files written as nibabel (and so TotalSegmentator) writes
them; the files it must decline (then read by SimpleITK, every reason unchanged); and the
PNG encodings and component counts the extraction uses since ``EXTRACT_VERSION`` 4."""

from __future__ import annotations

import gzip
import zlib
from io import BytesIO
from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from pipeline.core import imaging
from pipeline.core.boxes import count_components
from pipeline.core.imaging import draw_prompt, encode_png, encode_prompt_png
from pipeline.errors import CaseError
from pipeline.inputs.readers import read_mask, read_volume
from pipeline.inputs.readers.itk import read_itk
from pipeline.inputs.readers.nifti_raw import read_plain

SHAPE = (24, 20, 9)
LAS = np.array([[-1.5, 0, 0, 30.0], [0, 1.5, 0, -27.0], [0, 0, 2.0, -9.0], [0, 0, 0, 1]])
#: An oblique-free rotation of the axes (x -> y -> -x) with a negative determinant part.
ROTATED = np.array([[0, -1.2, 0, 5.0], [1.5, 0, 0, -7.0], [0, 0, -2.0, 11.0], [0, 0, 0, 1]])


def save(path: Path, data: np.ndarray, affine: np.ndarray, *, sform: int = 1, qform: int = 1,
         endian: str = "<", slope: float | None = None) -> Path:
    header = nibabel.Nifti1Header(endianness=endian)
    header.set_data_dtype(data.dtype)
    image = nibabel.Nifti1Image(data, affine, header)
    image.set_sform(affine if sform else None, code=sform)
    image.set_qform(affine if qform else None, code=qform)
    if slope is not None:
        image.header.set_slope_inter(slope, 0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(image, path)
    return path


def itk_read(path: Path):
    """What the ITK road gives: ``(array [i, j, k], grid)``."""
    return read_itk(str(path), path.name)


def mask_data() -> np.ndarray:
    m = np.zeros(SHAPE, np.uint8)
    m[3:17, 5:11, 2:7] = 1
    m[20, 18, 8] = 1  # a lone voxel in the last slices: data to the stream's end
    return m


@pytest.mark.parametrize("affine", [LAS, ROTATED], ids=["LAS", "rotated"])
@pytest.mark.parametrize("codes", [(1, 1), (1, 0), (0, 1), (2, 1)], ids=["both", "sform", "qform", "aligned"])
@pytest.mark.parametrize("endian", ["<", ">"])
def test_plain_files_read_as_itk_reads_them(tmp_path, affine, codes, endian):
    data = (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 700 - 300).astype(np.int16)
    path = save(tmp_path / "ct.nii.gz", data, affine, sform=codes[0], qform=codes[1], endian=endian)
    plain = read_plain(str(path), "ct.nii.gz")
    assert plain is not None
    array, geometry = itk_read(path)
    assert np.array_equal(plain.array, array) and plain.array.shape == array.shape
    assert plain.geometry.shape == geometry.shape
    assert np.allclose(plain.geometry.spacing, geometry.spacing, rtol=1e-6)
    assert np.allclose(plain.geometry.origin, geometry.origin, atol=1e-4)
    assert np.allclose(plain.geometry.direction, geometry.direction, atol=1e-6)


def test_masks_and_volumes_unchanged_by_the_plain_road(tmp_path, monkeypatch):
    """read_volume / read_mask give the very arrays, grids and digests the ITK road gives."""
    ct = save(tmp_path / "ct.nii.gz", (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 90).astype(np.int16), LAS)
    full = save(tmp_path / "liver.nii.gz", mask_data(), LAS)
    empty = save(tmp_path / "spleen.nii.gz", np.zeros(SHAPE, np.uint8), LAS)
    fast = read_volume(str(ct), "ct.nii.gz", "CT")
    got = [read_mask(str(p), p.name, fast.geometry) for p in (full, empty)]
    monkeypatch.setattr("pipeline.inputs.readers.itk.read_plain", lambda *a, **k: None)
    slow = read_volume(str(ct), "ct.nii.gz", "CT")
    assert np.array_equal(fast.array, slow.array) and fast.array.dtype == slow.array.dtype
    assert fast.geometry == slow.geometry and fast.content_sha256 == slow.content_sha256
    for (mask, sha), p in zip(got, (full, empty)):
        ref, ref_sha = read_mask(str(p), p.name, slow.geometry)
        assert sha == ref_sha
        assert (mask.shape, mask.offset) == (ref.shape, ref.offset)
        assert np.array_equal(mask.crop, ref.crop)
    assert not got[1][0].any()


def test_an_empty_mask_is_never_stored(tmp_path):
    path = save(tmp_path / "m.nii.gz", np.zeros(SHAPE, np.uint8), LAS)
    assert read_plain(str(path), "m.nii.gz", skip_zero=True).array is None
    assert not read_plain(str(path), "m.nii.gz").array.any()


def gz_bytes(path: Path) -> bytes:
    return path.read_bytes()


@pytest.mark.parametrize("case", ["float", "scaled", "4d", "drift", "two_members", "trailing",
                                  "cut", "crc", "no_grid", "nii", "too_large"])
def test_declined_files_take_the_itk_road(tmp_path, case):
    m = mask_data()
    path = tmp_path / "m.nii.gz"
    affine = LAS
    if case == "float":
        save(path, m.astype(np.float32), affine)
    elif case == "scaled":
        save(path, m.astype(np.int16), affine, slope=2.0)
    elif case == "4d":
        save(path, m[..., None], affine)
    elif case == "drift":
        drifted = affine.copy()
        drifted[:3, 1] += 3e-4 * affine[:3, 0]
        save(path, m, drifted, qform=0)
    elif case == "no_grid":
        save(path, m, affine, sform=0, qform=0)
    elif case == "nii":
        path = save(tmp_path / "m.nii", m, affine)
    else:
        save(path, m, affine)
        raw = gz_bytes(path)
        if case == "two_members":
            inner = gzip.decompress(raw)
            path.write_bytes(gzip.compress(inner[:1000]) + gzip.compress(inner[1000:]))
        elif case == "trailing":
            path.write_bytes(raw + b"\0" * 64)
        elif case == "cut":
            path.write_bytes(raw[:len(raw) // 2])
        elif case == "crc":
            path.write_bytes(raw[:-8] + bytes([raw[-8] ^ 0xFF]) + raw[-7:])
    kwargs = {"max_voxels": 100} if case == "too_large" else {}
    assert read_plain(str(path), path.name, **kwargs) is None


def test_bad_files_keep_their_reasons(tmp_path):
    """A file declined by the plain road still reaches its named dead-letter reason."""
    ct = save(tmp_path / "ct.nii.gz", np.zeros(SHAPE, np.int16), LAS)
    image = read_volume(str(ct), "ct.nii.gz", "CT").geometry
    cut = save(tmp_path / "cut.nii.gz", mask_data(), LAS)
    cut.write_bytes(cut.read_bytes()[:200])
    with pytest.raises(CaseError) as err:
        read_mask(str(cut), "cut.nii.gz", image)
    assert err.value.reason == "volume.unreadable"
    shifted = LAS.copy()
    shifted[0, 3] += 6.0
    moved = save(tmp_path / "moved.nii.gz", mask_data(), shifted)
    with pytest.raises(CaseError) as err:
        read_mask(str(moved), "moved.nii.gz", image)
    assert err.value.reason == "mask.geometry_mismatch"
    three = save(tmp_path / "three.nii.gz", mask_data() * 3, LAS)
    with pytest.raises(CaseError) as err:
        read_mask(str(three), "three.nii.gz", image)
    assert err.value.reason == "mask.not_binary"
    with pytest.raises(CaseError) as err:
        read_volume(str(ct), "ct.nii.gz", "CT", max_voxels=100)
    assert err.value.reason == "volume.too_large"


def decoded(data: bytes) -> Image.Image:
    image = Image.open(BytesIO(data))
    image.load()
    return image


def test_rle_pngs_decode_to_the_same_pixels(tmp_path):
    """Read back by Pillow and by SimpleITK's libpng alike."""
    rng = np.random.default_rng(3)
    grey = np.clip(rng.normal(120, 40, (37, 53)), 0, 255).astype(np.uint8)
    rgb = draw_prompt(grey, {"x_min": 3, "y_min": 4, "x_max": 30, "y_max": 20})
    for pixels in (grey, rgb):
        for level in (0, 1, 6):
            data = encode_png(pixels, level, "rle")
            assert np.array_equal(np.asarray(decoded(data)), pixels)
            path = tmp_path / "decoded.png"
            path.write_bytes(data)
            assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), pixels)
            assert data == encode_png(pixels, level, "rle")  # deterministic
    with pytest.raises(ValueError):
        encode_png(grey, 6, "zstd")


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_rle_pngs_are_zlibs_bytes_when_zlib_ng_deflates(level, monkeypatch):
    """zlib-ng runs Z_RLE for its speed only: every PNG is byte for byte the one the
    standard library's zlib writes (runs, noise, flat areas; several deflate blocks)."""
    pytest.importorskip("zlib_ng")
    rng = np.random.default_rng(level)
    runs = np.repeat(rng.integers(0, 256, 60_000), rng.integers(4, 9, 60_000))[:300 * 640]
    images = [runs.astype(np.uint8).reshape(300, 640),
              rng.integers(0, 256, (257, 300), dtype=np.uint8),
              np.zeros((512, 512), np.uint8),
              np.clip(rng.normal(100, 30, (330, 256)), 0, 255).astype(np.uint8)]
    fast = [encode_png(a, level, "rle") for a in images]
    monkeypatch.setattr(imaging, "_rle_lib", zlib)
    assert fast == [encode_png(a, level, "rle") for a in images]


@pytest.mark.parametrize("levels", [40, 252, 253, 256])
def test_prompt_pngs_indexed_when_the_palette_fits(levels):
    """The slice's grey levels plus the outline colours: indexed colour up to 256 entries,
    RGB beyond; the pixels are draw_prompt's either way, and ``default`` keeps the RGB PNG
    of EXTRACT_VERSION 3 byte for byte."""
    grey = (np.arange(32 * 40) % levels).astype(np.uint8).reshape(32, 40)
    target = {"x_min": 2, "y_min": 3, "x_max": 30, "y_max": 25}
    others = [{"x_min": 5, "y_min": 1, "x_max": 9, "y_max": 8},
              {"x_min": 20, "y_min": 20, "x_max": 40, "y_max": 32},
              {"x_min": 0, "y_min": 0, "x_max": 1, "y_max": 1}]
    for other in ([], others):
        want = draw_prompt(grey, target, other)
        image = decoded(encode_prompt_png(grey, target, other, strategy="rle"))
        colours = 1 + len(other)
        assert image.mode == ("P" if levels + colours <= 256 else "RGB")
        assert np.array_equal(np.asarray(image.convert("RGB")), want)
        assert encode_prompt_png(grey, target, other) == encode_png(want)


def test_component_counts_match_simpleitk():
    """cc3d's counts are SimpleITK's, 2D and 3D, fully connected or not, on views too."""
    rng = np.random.default_rng(7)
    for n in range(300):
        shape = rng.integers(1, 25, 2 if n < 200 else 3)
        mask = rng.random(tuple(int(s) for s in shape)) < rng.random()
        if n % 3 == 0:  # a reversed, transposed view, as display_crop hands them
            mask = mask[::-1].T
        for full in (True, False):
            image = sitk.GetImageFromArray(mask.astype(np.uint8))
            f = sitk.ConnectedComponentImageFilter()
            f.SetFullyConnected(full)
            f.Execute(image)
            want = f.GetObjectCount() if mask.any() else 0
            assert count_components(mask, fully_connected=full) == want


def test_a_drifted_mask_reads_on_the_nibabel_road_grid(tmp_path, monkeypatch):
    """A mask whose sform drifts (no qform: ITK refuses it) is read plainly, on the grid and
    with the voxels the nibabel road gives; a sheared one is still declined."""
    drifted = LAS.copy()
    drifted[:3, 1] += 3e-4 * LAS[:3, 0]
    ct = save(tmp_path / "ct.nii.gz", np.zeros(SHAPE, np.int16), drifted, qform=0)
    path = save(tmp_path / "liver.nii.gz", mask_data(), drifted, qform=0)
    assert read_plain(str(path), "liver.nii.gz") is None
    assert read_plain(str(path), "liver.nii.gz", drift=True) is not None
    image = read_volume(str(ct), "ct.nii.gz", "CT")
    assert image.notes["nifti_sform_orthonormalised"]  # the image keeps its note
    notes, ref_notes = {}, {}
    mask, sha = read_mask(str(path), "liver.nii.gz", image.geometry, notes)
    monkeypatch.setattr("pipeline.inputs.readers.itk.read_plain", lambda *a, **k: None)
    ref, ref_sha = read_mask(str(path), "liver.nii.gz", image.geometry, ref_notes)
    assert sha == ref_sha and (mask.shape, mask.offset) == (ref.shape, ref.offset)
    assert np.array_equal(mask.crop, ref.crop)
    # the mask's assumption is the case's too, on either road
    [note] = notes["nifti_sform_orthonormalised"]
    [ref_note] = ref_notes["nifti_sform_orthonormalised"]
    assert note.startswith("liver.nii.gz: sform axes") and "plain NIfTI reader" in note
    assert ref_note.startswith("liver.nii.gz: sform axes") and "nibabel" in ref_note
    sheared = LAS.copy()
    sheared[:3, 1] += 0.05 * LAS[:3, 0]
    bad = save(tmp_path / "bad.nii.gz", mask_data(), sheared, qform=0)
    assert read_plain(str(bad), "bad.nii.gz", drift=True) is None


def test_small_pieces_give_the_same_masks(tmp_path, monkeypatch):
    """Inflated a few bytes at a time (many pieces, most of them zero), masks and the k slab
    their extent is searched in come out as from one piece."""
    ct = save(tmp_path / "ct.nii.gz", np.zeros(SHAPE, np.int16), LAS)
    image = read_volume(str(ct), "ct.nii.gz", "CT").geometry
    rng = np.random.default_rng(5)
    masks = [mask_data()]
    for _ in range(4):
        m = np.zeros(SHAPE, np.uint8)
        lo = rng.integers(0, SHAPE)
        hi = lo + rng.integers(1, 6, size=3)
        m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 255
        masks.append(m)
    paths = [save(tmp_path / f"m{n}.nii.gz", m, LAS) for n, m in enumerate(masks)]
    whole = [read_mask(str(p), p.name, image) for p in paths]
    monkeypatch.setattr("pipeline.inputs.readers.nifti_raw.PIECE", 23)
    for p, (ref, sha) in zip(paths, whole):
        assert read_plain(str(p), p.name, skip_zero=True).k_span is not None
        mask, got_sha = read_mask(str(p), p.name, image)
        assert got_sha == sha and (mask.shape, mask.offset) == (ref.shape, ref.offset)
        assert np.array_equal(mask.crop, ref.crop)


def test_masks_share_one_buffer_and_leave_nothing_behind(tmp_path, monkeypatch):
    """Masks read one after another reuse one buffer (its pages mapped once, not a fresh
    volume a mask) and hand back only the slices holding voxels; what an earlier, fuller
    mask left in the buffer never shows in a later one: not in the zero pieces between its
    voxels, not in the partial slices at its ends (many small pieces, as at real size)."""
    shape = (64, 64, 12)
    ct = save(tmp_path / "ct.nii.gz", np.zeros(shape, np.int16), LAS)
    image = read_volume(str(ct), "ct.nii.gz", "CT").geometry
    full = save(tmp_path / "full.nii.gz", np.ones(shape, np.uint8), LAS)
    sparse = np.zeros(shape, np.uint8)
    rng = np.random.default_rng(3)
    sparse[:, 20:40, 2] = rng.integers(0, 2, (64, 20))  # two slices, six zero ones between
    sparse[10:30, :, 9] = rng.integers(0, 2, (20, 64))
    sparse_path = save(tmp_path / "sparse.nii.gz", sparse, LAS)
    three = save(tmp_path / "three.nii.gz", sparse * 3, LAS)
    monkeypatch.setattr("pipeline.inputs.readers.nifti_raw.PIECE", 4)
    first = read_plain(str(full), "full.nii.gz", skip_zero=True)
    assert first.k_span == (0, shape[2]) and first.array.shape == shape
    second = read_plain(str(sparse_path), "sparse.nii.gz", skip_zero=True)
    assert np.shares_memory(first.array, second.array)  # the same buffer
    assert second.k_span == (2, 10) and second.array.shape == (*shape[:2], 8)
    assert np.array_equal(second.array, sparse[:, :, 2:10])
    read_plain(str(full), "full.nii.gz", skip_zero=True)
    mask, _ = read_mask(str(sparse_path), "sparse.nii.gz", image)
    read_plain(str(full), "full.nii.gz", skip_zero=True)
    with pytest.raises(CaseError) as err:  # the values of the whole file, its zeros included
        read_mask(str(three), "three.nii.gz", image)
    assert err.value.reason == "mask.not_binary" and "found {0, 3}" in err.value.message
    monkeypatch.setattr("pipeline.inputs.readers.itk.read_plain", lambda *a, **k: None)
    ref, _ = read_mask(str(sparse_path), "sparse.nii.gz", image)  # the ITK road
    assert (mask.shape, mask.offset) == (ref.shape, ref.offset) and mask.voxels() == sparse.sum()
    assert np.array_equal(mask.crop, ref.crop)


@pytest.mark.parametrize("fold", [1, 4096, 1 << 20], ids=["every-piece", "some-slices", "at-end"])
def test_peaks_are_the_largest_voxels_along_k_folded_as_written(tmp_path, monkeypatch, fold):
    """``peaks``: the largest voxel along k of each (i, j) over the slices read, folded from
    the buffer as its whole slices are written (every piece, every few slices, or once at
    the end) — never from what an earlier, fuller mask left in the buffer; read_mask reads
    the same crops with them as without (the ITK road)."""
    shape = (64, 64, 12)
    ct = save(tmp_path / "ct.nii.gz", np.zeros(shape, np.int16), LAS)
    image = read_volume(str(ct), "ct.nii.gz", "CT").geometry
    full = save(tmp_path / "full.nii.gz", np.full(shape, 255, np.uint8), LAS)
    rng = np.random.default_rng(8)
    sparse = np.zeros(shape, np.uint8)
    sparse[:, 20:40, 2] = rng.integers(0, 2, (64, 20))
    sparse[10:30, 5:9, 5] = 1  # a slice between zero ones
    sparse[10:30, :, 9] = rng.integers(0, 2, (20, 64))
    paths = [save(tmp_path / "sparse.nii.gz", sparse, LAS),
             save(tmp_path / "one.nii.gz", mask_data(), LAS),
             save(tmp_path / "mixed.nii.gz", sparse * rng.integers(1, 200, shape, np.uint8), LAS)]
    monkeypatch.setattr("pipeline.inputs.readers.nifti_raw.PIECE", 16)
    monkeypatch.setattr("pipeline.inputs.readers.nifti_raw.FOLD", fold)
    for path in paths:
        read_plain(str(full), "full.nii.gz", skip_zero=True)  # the buffer full of 255
        plain = read_plain(str(path), path.name, skip_zero=True, peaks=True)
        assert plain.peaks.shape == plain.array.shape[:2]
        assert np.array_equal(plain.peaks, plain.array.max(axis=2))
        assert np.array_equal(plain.peaks, nibabel.load(path).get_fdata().max(axis=2))
    assert read_plain(str(paths[0]), "s", skip_zero=True).peaks is None  # asked for only
    int16 = save(tmp_path / "int16.nii.gz", sparse.astype(np.int16), LAS)
    assert read_plain(str(int16), "i", skip_zero=True, peaks=True).peaks is None  # uint8 only
    read_plain(str(full), "full.nii.gz", skip_zero=True)
    folded, _ = read_mask(str(paths[0]), "sparse.nii.gz", image)
    monkeypatch.setattr("pipeline.inputs.readers.itk.read_plain", lambda *a, **k: None)
    ref, _ = read_mask(str(paths[0]), "sparse.nii.gz", image)  # the ITK road
    assert (folded.shape, folded.offset) == (ref.shape, ref.offset)
    assert np.array_equal(folded.crop, ref.crop)
