"""The ``rle`` PNGs of a slice since ``EXTRACT_VERSION`` 5 (``pipeline/core/imaging.py``):
Up-filtered rows deflated in bands, each band's bytes shared by the plain PNG and the
visual prompts wherever their filtered rows are the same; the pixels are those of
:func:`~pipeline.core.imaging.draw_prompt` and the bytes are zlib's, every time."""

from __future__ import annotations

import struct
import zlib
from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from pipeline.core import imaging
from pipeline.core.imaging import draw_prompt, encode_png, encode_slice_pngs


def box(x0, y0, x1, y1, label="b"):
    return {"label": label, "x_min": x0, "y_min": y0, "x_max": x1, "y_max": y1}


#: On a 200-row slice: the boxed prompt's outlines change rows 10-171 (filtered), the
#: easy one's 70-110, so the bands are rows 0-9, 10-69, 70-110, 111-171 and 172-199.
TARGET = box(20, 70, 90, 110)
OTHERS = [box(40, 80, 70, 100), box(100, 150, 140, 171), box(5, 10, 30, 31)]


def slice_(levels: int, seed: int = 0) -> np.ndarray:
    """A CT-like 200 x 150 slice: air (0) around a noisy body using ``levels`` grey levels."""
    rng = np.random.default_rng(seed)
    g = np.zeros((200, 150), np.uint8)
    g[20:190, 15:140] = rng.integers(1, levels, (170, 125))
    return g


def chunk(png: bytes, name: bytes) -> bytes:
    pos, out = 8, b""
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        if kind == name:
            out += png[pos + 8:pos + 8 + length]
        pos += 12 + length
    return out


def idat(png: bytes) -> bytes:
    return chunk(png, b"IDAT")


def rgb(png: bytes) -> tuple[str, np.ndarray]:
    image = Image.open(BytesIO(png))
    image.load()
    return image.mode, np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("levels", [60, 250])
def test_prompts_share_the_plain_pngs_bands_and_decode_to_draw_prompts_pixels(levels):
    g = slice_(levels)
    prompts = [(TARGET, OTHERS), (TARGET, [])]
    plain, (hard, easy) = encode_slice_pngs(g, prompts, level=6, strategy="rle")
    assert np.array_equal(np.asarray(Image.open(BytesIO(plain))), g)
    for (target, others), png in zip(prompts, (hard, easy)):
        mode, pixels = rgb(png)
        assert mode == "P" and np.array_equal(pixels, draw_prompt(g, target, others))
        assert zlib.decompress(idat(png))  # a whole zlib stream, its Adler-32 right
    # the plain PNG's stream is its five bands' deflated bytes; the easy prompt reuses all
    # but the middle one, the boxed prompt the first and the last
    raw = imaging._up_rows(g)
    bands = [(0, 10), (10, 70), (70, 111), (111, 172), (172, 200)]
    seg = imaging._deflate([(raw[a:z], z == 200) for a, z in bands], 6)
    head = b"\x78\x01"
    assert idat(plain) == head + b"".join(seg) + struct.pack(">I", zlib.adler32(raw.tobytes()))
    assert idat(easy).startswith(head + seg[0] + seg[1]) and idat(easy)[:-4].endswith(seg[3] + seg[4])
    assert idat(hard).startswith(head + seg[0]) and idat(hard)[:-4].endswith(seg[4])
    assert not idat(hard).startswith(head + seg[0] + seg[1])
    assert encode_slice_pngs(g, [], level=6, strategy="rle")[0] == encode_png(g, 6, "rle")
    # deterministic, and zlib's own bytes when zlib-ng deflates
    assert encode_slice_pngs(g, prompts, level=6, strategy="rle") == (plain, [hard, easy])


def test_slice_pngs_are_zlibs_bytes_when_zlib_ng_deflates(monkeypatch):
    pytest.importorskip("zlib_ng")
    cases = [(slice_(levels, seed), level) for seed, levels in enumerate((30, 200, 256))
             for level in (1, 6)]
    prompts = [(TARGET, OTHERS), (TARGET, [])]
    fast = [encode_slice_pngs(g, prompts, level=level, strategy="rle") for g, level in cases]
    monkeypatch.setattr(imaging, "_rle_lib", zlib)
    assert fast == [encode_slice_pngs(g, prompts, level=level, strategy="rle") for g, level in cases]


def test_outline_colours_take_levels_above_the_slice_or_else_unused_ones():
    """Above the slice's highest level when there is room (a short palette); else the
    lowest unused levels; with too few of those, an RGB PNG.  The pixels never change."""
    g = slice_(100)  # levels 0..99: the colours at 100, 101, 102, 103
    plain, (hard,) = encode_slice_pngs(g, [(TARGET, OTHERS)], level=6, strategy="rle")
    palette = np.frombuffer(chunk(hard, b"PLTE"), np.uint8).reshape(-1, 3)
    assert len(palette) == 104 and palette[100].tolist() == [255, 0, 0]
    assert np.array_equal(palette[:100], np.repeat(np.arange(100, dtype=np.uint8)[:, None], 3, 1))
    top = g.copy()
    top[0, 0], top[0, 1] = 255, 254  # the top used; 100..253 unused: red at 100 again
    _, (hard,) = encode_slice_pngs(top, [(TARGET, OTHERS)], level=6, strategy="rle")
    mode, pixels = rgb(hard)
    assert mode == "P" and np.array_equal(pixels, draw_prompt(top, TARGET, OTHERS))
    assert chunk(hard, b"PLTE")[300:303] == bytes((255, 0, 0)) and len(chunk(hard, b"PLTE")) == 768
    lifted = top.copy()
    lifted[lifted < 7] = 7  # 0..6 unused, the lowest levels: red at 0, the others 1, 2, 3
    _, (hard,) = encode_slice_pngs(lifted, [(TARGET, OTHERS)], level=6, strategy="rle")
    mode, pixels = rgb(hard)
    assert mode == "P" and np.array_equal(pixels, draw_prompt(lifted, TARGET, OTHERS))
    assert chunk(hard, b"PLTE")[:12] == bytes((255, 0, 0, 0, 200, 0, 0, 100, 255, 255, 220, 0))
    full = (np.arange(200 * 150) % 256).astype(np.uint8).reshape(200, 150)  # every level used
    _, (hard, easy) = encode_slice_pngs(full, [(TARGET, OTHERS), (TARGET, [])], level=6,
                                        strategy="rle")
    for png, others in ((hard, OTHERS), (easy, [])):
        mode, pixels = rgb(png)
        assert mode == "RGB" and np.array_equal(pixels, draw_prompt(full, TARGET, others))


@pytest.mark.parametrize("level", [0, 1, 9])
def test_every_level_and_shape_decodes(level):
    rng = np.random.default_rng(level)
    for h, w in ((1, 1), (63, 5), (64, 7), (65, 9), (129, 33)):
        g = rng.integers(0, 200, (h, w), dtype=np.uint8)
        prompts = [(box(0, 0, w, h), [box(0, h // 2, max(1, w // 2), h)]), (box(0, 0, w, h), [])]
        plain, pngs = encode_slice_pngs(g, prompts, level=level, strategy="rle")
        assert np.array_equal(np.asarray(Image.open(BytesIO(plain))), g)
        for (target, others), png in zip(prompts, pngs):
            assert np.array_equal(rgb(png)[1], draw_prompt(g, target, others))


def test_adler32_extend_is_zlibs_adler32_of_the_whole():
    """From a prefix's Adler-32, a part's alone (before = 1: zlib's adler32_combine) or the
    Adler-32s of any string before and after that part: the whole's, at every length."""
    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    other = rng.integers(0, 256, 70_000, dtype=np.uint8).tobytes()
    cuts = (0, 1, 65_520, 65_521, 65_522, 131_042, 199_999, 200_000)
    for cut in cuts:
        a, b = data[:cut], data[cut:]
        assert imaging._adler32_extend(zlib.adler32(a), 1, zlib.adler32(b), len(b)) == zlib.adler32(data)
        for end in (cut, min(cut + 65_521, 200_000), 200_000):
            part = data[cut:end]
            for before in (b"", other, data[:cut]):  # the part after anything
                assert imaging._adler32_extend(zlib.adler32(a), zlib.adler32(before),
                                               zlib.adler32(before + part), len(part)) \
                    == zlib.adler32(data[:end])


def _bands_deflated_apart(png: bytes, edges: list[int]) -> bytes:
    """The IDAT a PNG of the slice must hold: its own Up-filtered rows (decoded from it),
    each band deflated by a compressor of its own, zlib's header and their Adler-32."""
    index = np.asarray(Image.open(BytesIO(png)))
    raw = imaging._up_rows(index)
    out = b"\x78\x01"
    for a, z in zip(edges, edges[1:]):
        c = zlib.compressobj(6, zlib.DEFLATED, -15, imaging.MEM_LEVEL, zlib.Z_RLE)
        out += c.compress(raw[a:z]) + c.flush(zlib.Z_FINISH if z == len(raw) else zlib.Z_FULL_FLUSH)
    return out + struct.pack(">I", zlib.adler32(raw.tobytes()))


@pytest.mark.parametrize("seed", range(6))
def test_every_png_is_its_own_rows_deflated_in_the_slices_bands(seed):
    """Whatever the prompts' boxes (overlapping, apart, at the edges, a band between two
    prompts crossed by neither), each PNG's IDAT is its own scanlines deflated band by band
    and its own Adler-32: the shared bands and the Adler-32s made from the plain image's
    prefixes are the bytes an encoder of that PNG alone would write."""
    rng = np.random.default_rng(seed)
    g = slice_(120, seed)

    def random_box():
        x0, y0 = int(rng.integers(0, 140)), int(rng.integers(0, 190))
        return box(x0, y0, int(rng.integers(x0 + 1, 151)), int(rng.integers(y0 + 1, 201)))

    for _ in range(10):
        target = random_box()
        prompts = [(target, [random_box() for _ in range(int(rng.integers(0, 4)))]), (target, []),
                   (random_box(), [random_box()])]
        plain, pngs = encode_slice_pngs(g, prompts, level=6, strategy="rle")
        cuts = {0, 200} | {e for t, o in prompts for e in (
            min(b["y_min"] for b in (t, *o)), max(b["y_max"] for b in (t, *o)) + 1) if e < 200}
        edges = sorted(cuts)
        for png, drawn in zip((plain, *pngs), (None, *prompts)):
            assert idat(png) == _bands_deflated_apart(png, edges)
            if drawn:
                assert np.array_equal(rgb(png)[1], draw_prompt(g, *drawn))


def test_lowest_unused_levels_are_the_histograms_first_empty_bins():
    rng = np.random.default_rng(11)
    for used in (1, 3, 200, 252, 253, 255, 256):
        levels = rng.permutation(256)[:used]
        g = rng.choice(levels, size=(40, 30)).astype(np.uint8)
        empty = np.flatnonzero(np.bincount(g.ravel(), minlength=256) == 0)
        for k in (1, 4):
            assert imaging._lowest_unused(g, k) == empty[:k].tolist()


@pytest.mark.parametrize("prompts", [
    [(TARGET, OTHERS), (TARGET, [])],  # bands shared between the prompts, a plain one between
    [(box(0, 0, 150, 12), [box(10, 185, 60, 200)]), (box(0, 0, 150, 12), [])],  # top, bottom
    [(box(30, 150, 90, 200), [box(5, 0, 40, 30)])],  # the bottom band crossed: its end
], ids=["shared", "top-bottom", "last-band"])
def test_prompt_scanlines_never_read_rows_outside_their_bands(prompts, monkeypatch):
    """A prompt's outlined rows are copied only where its new bands read them: with every
    other row of that copy garbage, its PNGs are still draw_prompt's pixels, in zlib's
    bytes (the deflated bands of an image drawn whole)."""
    g = slice_(120, seed=3)
    before = encode_slice_pngs(g, prompts, level=6, strategy="rle")

    def garbage_like(a, *args, **kwargs):
        return np.full_like(a, 0xAB, *args, **kwargs)

    monkeypatch.setattr(imaging.np, "empty_like", garbage_like)
    plain, pngs = encode_slice_pngs(g, prompts, level=6, strategy="rle")
    assert (plain, pngs) == before
    for (target, others), png in zip(prompts, pngs):
        mode, pixels = rgb(png)
        assert mode == "P" and np.array_equal(pixels, draw_prompt(g, target, others))
        index = np.asarray(Image.open(BytesIO(png)))
        assert zlib.decompress(idat(png)) == imaging._up_rows(index).tobytes()
