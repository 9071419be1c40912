"""The corpus report (``report/index.html``) on the three corpus kinds.

One small corpus per kind is built once for the module — slices (``sample``),
a labelled tree (``radimagenet-vqa``) and volumes (``3d-rad``) — each with one
bad input beside the good ones, so every corpus has a dead letter whose source
path must never reach the report.  The pixel tests check that a box is drawn
on the stored coordinates (ends exclusive): a report drawing boxes one pixel
too far, or with x and y swapped, fails them.  The chart-cache tests check
that a report from the cache draws nothing (and imports no matplotlib) yet
gives the bytes of one drawn afresh, and that the cache keeps only the
current report's charts.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import report as rep
from pipeline.cli import main as cli_main
from pipeline.config.resources import resource_dir
from pipeline.inputs.sample import write_longitudinal_sample, write_sample
from pipeline.inputs.sample_tree import write_tree
from pipeline.io.corpus import Corpus, list_configs, order_splits
from pipeline.launch.build import build
from pipeline.qa.label_pools import load_label_pools
from pipeline.report import charts, dead_letters, drawing, gallery, stats, views
from pipeline.report.audit import BASELINES, audit_section

BAD_FOLDER = "zz-broken-case-4711"
BAD_PNG = "zz-broken-image-4711.png"
SECTIONS = ("build", "counts", "distributions", "audit", "dead-letters", "gallery")


# --------------------------------------------------------------------------- corpora


def _quiet(_msg):
    pass


@pytest.fixture(scope="module")
def slices(tmp_path_factory):
    inp = tmp_path_factory.mktemp("slices-in")
    write_sample(inp, n_patients=4)
    bad = inp / BAD_FOLDER
    (bad / "segmentations").mkdir(parents=True)
    (bad / "ct.nii.gz").write_bytes(b"not a volume")
    shutil.copy(inp / "s0001" / "segmentations" / "liver.nii.gz", bad / "segmentations" / "liver.nii.gz")
    out = tmp_path_factory.mktemp("slices-out")
    result = build("sample", str(out), input_dir=str(inp), max_reject_fraction=1.0, log=_quiet)
    assert result.manifest["counts"]["read"]["rejected"] == 1
    return out


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    inp = tmp_path_factory.mktemp("tree-in")
    write_tree(inp, 300, load_label_pools([resource_dir("distractor_pools") / "radimagenet.yaml"]))
    knee = next(p for p in sorted((inp / "MR" / "knee").iterdir()) if p.is_dir())
    (knee / BAD_PNG).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path_factory.mktemp("tree-out")
    result = build("radimagenet-vqa", str(out), input_dir=str(inp), max_reject_fraction=1.0, log=_quiet)
    assert result.manifest["counts"]["read"]["rejected"] == 1
    return out


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    inp = tmp_path_factory.mktemp("volumes-in")
    write_longitudinal_sample(inp, n_patients=2)
    bad = inp / BAD_FOLDER
    (bad / "segmentations").mkdir(parents=True)
    (bad / "ct.nii.gz").write_bytes(b"not a volume")
    shutil.copy(inp / "p001t1" / "segmentations" / "liver.nii.gz", bad / "segmentations" / "liver.nii.gz")
    out = tmp_path_factory.mktemp("volumes-out")
    result = build("3d-rad", str(out), input_dir=str(inp), max_reject_fraction=1.0, log=_quiet)
    assert result.manifest["counts"]["read"]["rejected"] == 1
    return out


@pytest.fixture(scope="module")
def reports(slices, tree, volumes):
    """kind -> (corpus dir, report path, report bytes), each report written once."""
    out = {}
    for kind, corpus in (("slices", slices), ("tree", tree), ("volumes", volumes)):
        path = rep.write_report(str(corpus))
        out[kind] = (corpus, Path(path), Path(path).read_bytes())
    return out


KINDS = ("slices", "tree", "volumes")


# --------------------------------------------------------------------------- HTML parsing


class Page(HTMLParser):
    """Sections (by id) with their text, images and gallery figures with their attributes."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.sections: dict[str, dict] = {}
        self.images: list[dict] = []
        self.figures: list[dict] = []
        self.tags: list[str] = []
        self.root_attrs: dict = {}
        self._section = None
        self._figure = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "html":
            self.root_attrs = a
        if tag == "section":
            self._section = {"id": a.get("id"), "text": [], "images": [], "tables": 0}
            self.sections[a.get("id")] = self._section
        if tag == "table" and self._section is not None:
            self._section["tables"] += 1
        if tag == "figure":
            self._figure = {"attrs": a, "images": [], "legend": [], "questions": [], "answers": 0}
            self.figures.append(self._figure)
        if tag == "img":
            self.images.append(a)
            if self._section is not None:
                self._section["images"].append(a)
            if self._figure is not None:
                self._figure["images"].append(a)
        if self._figure is not None and tag == "li" and "data-label" in a:
            self._figure["legend"].append(a)
        if self._figure is not None and tag == "li" and "data-qa-id" in a:
            self._figure["questions"].append(a["data-qa-id"])
        if self._figure is not None and tag == "p" and a.get("class") == "answer":
            self._figure["answers"] += 1

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None
        if tag == "figure":
            self._figure = None

    def handle_data(self, data):
        if self._section is not None:
            self._section["text"].append(data)

    def text(self, section: str) -> str:
        return " ".join(" ".join(self.sections[section]["text"]).split())


def _page(reports, kind) -> Page:
    return Page(reports[kind][2].decode("utf-8"))


def _decode(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:40]
    img = Image.open(io.BytesIO(base64.b64decode(src[len(prefix):], validate=True)))
    assert img.format == "PNG"
    img.load()
    return img


def _rows(corpus: Path, config: str, columns: list[str]) -> list[dict]:
    return [r for p in sorted((corpus / config).glob("*.parquet"))
            for r in pq.read_table(p, columns=columns).to_pylist()]


# --------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize(
    "box, scale, size, expected",
    [
        pytest.param((2, 3, 5, 7), 4.0, (40, 40), (8, 12, 19, 27), id="integer-upscale-ends-exclusive"),
        pytest.param((0, 0, 1, 1), 1.0, (10, 10), (0, 0, 0, 0), id="one-pixel-box"),
        pytest.param((10, 0, 20, 4), 0.5, (50, 50), (5, 0, 9, 1), id="downscale"),
        pytest.param((8, 8, 12, 12), 1.0, (10, 10), (8, 8, 9, 9), id="clipped-at-the-border"),
        pytest.param((12, 0, 14, 3), 1.0, (10, 10), None, id="outside"),
    ],
)
def test_scaled_box(box, scale, size, expected):
    assert views.scaled_box(box, scale, *size) == expected


@pytest.mark.parametrize(
    "width, height, scale",
    [(102, 54, 4.0), (16, 16, 26.0), (420, 100, 1.0), (840, 420, 0.5)],
    ids=["slice", "tiny-tree-png", "exactly-target", "large"],
)
def test_display_scale(width, height, scale):
    assert views.display_scale(width, height) == scale


@pytest.mark.parametrize(
    "reason, shown",
    [
        ("volume.unreadable", "volume.unreadable"),
        ("internal.ValueError", "internal.ValueError"),
        ("s0002/ct.nii.gz", "(withheld: not a reason code)"),
        ("cannot read /data/patient 7", "(withheld: not a reason code)"),
        (None, "(withheld: not a reason code)"),
    ],
    ids=["code", "internal", "path", "free-text", "missing"],
)
def test_reasons_that_could_carry_a_path_are_withheld(reason, shown):
    assert dead_letters.safe_reason(reason) == shown


def test_png_size_reads_the_header_only():
    buf = io.BytesIO()
    Image.new("L", (37, 11)).save(buf, format="PNG")
    assert stats.image_size(buf.getvalue()) == (37, 11)
    assert stats.image_size(b"garbage") is None


def test_corpus_lists_shards_in_split_order_and_never_private_files():
    files = {rel: {"rows": 1} for rel in [
        "qa/validation-00000-of-00001.parquet", "qa/train-00001-of-00002.parquet", "qa/extra-00000-of-00001.parquet",
        "qa/train-00000-of-00002.parquet", "qa/test-00000-of-00001.parquet", "images/train-00000-of-00001.parquet",
        "dead_letters/train-00000-of-00001.parquet", ".radvqa/units/train-00000-of-00001.parquet",
        "qa/notes.parquet", "README.md", "report/index.html"]}
    assert list_configs({"files": files}) == {
        "images": ["images/train-00000-of-00001.parquet"],
        "qa": ["qa/train-00000-of-00002.parquet", "qa/train-00001-of-00002.parquet",
               "qa/validation-00000-of-00001.parquet", "qa/test-00000-of-00001.parquet",
               "qa/extra-00000-of-00001.parquet"]}
    assert order_splits(["test", "b", "train", "a", "test"]) == ["train", "test", "a", "b"]


def test_corpus_reads_only_the_dead_letter_fields_asked_for(tmp_path):
    (tmp_path / "dead_letters").mkdir()
    (tmp_path / "dead_letters" / "dead_letters.jsonl").write_text(
        '{"stage": "read", "reason": "volume.unreadable", "source": "s0002/ct.nii.gz"}\n\nnot json\n')
    corpus = Corpus(str(tmp_path))
    assert corpus.has_dead_letters()
    assert list(corpus.read_dead_letters(("stage", "reason", "error_type"))) == [
        ("read", "volume.unreadable", None), None]
    assert not Corpus(str(tmp_path / "elsewhere")).has_dead_letters()


def test_gallery_selection_ignores_row_order():
    rows = [{"qa_id": f"{(i * 7919) % 997:04x}", "image_id": f"img{i % 11}", "task": f"t{i % 3}",
             "question_type": ("closed", "open")[i % 2], "split": "train"} for i in range(90)]
    a = gallery.select_2d(rows, "image_id")
    b = gallery.select_2d(rows[::-1], "image_id")
    assert [(i.image_id, [q["qa_id"] for q in i.questions]) for i in a] == \
           [(i.image_id, [q["qa_id"] for q in i.questions]) for i in b]
    assert sum(len(i.questions) for i in a) == gallery.GALLERY_SIZE
    assert {(q["task"], q["question_type"]) for i in a for q in i.questions} == \
           {(r["task"], r["question_type"]) for r in rows}


def test_audit_table_renders_every_group_with_its_verdict():
    audit = {"margin_pp": 3.0, "verdict": "warn", "groups": [
        {"config": "qa", "split": "test", "task": "existence", "question_type": "closed", "n": 120,
         "chance": 0.5, "reference": "uniform", "answer_entropy_bits": 0.99, "max_entropy_bits": 1.0,
         "yes_rate": 0.5, "baselines": {"question_majority": 0.51, "answer_position": None,
                                        "frequent_option": None, "longest_option": None,
                                        "often_correct_option": None},
         "excess_pp": 1.0, "verdict": "ok"},
        {"config": "qa", "split": "test", "task": "anatomy", "question_type": "multiple_choice",
         "n": 80, "chance": 0.25, "reference": "uniform", "answer_entropy_bits": 1.9,
         "max_entropy_bits": 2.0, "yes_rate": None,
         "baselines": {"question_majority": 0.3, "answer_position": 0.29, "frequent_option": 0.26,
                       "longest_option": 0.41, "often_correct_option": 0.33},
         "excess_pp": 16.0, "verdict": "fail"},
    ]}
    html = audit_section({"audit": audit})
    page = Page(html)
    text = page.text("audit")
    assert "not run" not in text
    assert page.sections["audit"]["tables"] == 1
    assert html.count("<tr>") == 3  # header + 2 groups
    assert html.index("anatomy") < html.index("existence")  # failures first
    assert '<td class="v-fail">fail</td>' in html and '<td class="v-ok">ok</td>' in html
    assert "41.0 %" in html and "+16.0" in html and "25.0 %" in html
    for label, meaning in BASELINES.values():
        assert label in text and meaning[:30] in text


def test_audit_absent_says_not_run():
    assert "audit was not run" in Page(audit_section({})).text("audit")


def test_group_counts_keep_nulls_and_value_types():
    t = pa.table({"a": ["x", None, "x", None, "x"], "b": [True, None, True, False, True],
                  "n": [1, 2, 1, 2, 3]})
    assert stats.group_counts(t, ["a", "b", "n"]) == Counter(
        {("x", True, 1): 2, (None, None, 2): 1, (None, False, 2): 1, ("x", True, 3): 1})
    assert stats.group_counts(t.slice(0, 0), ["a"]) == Counter()


def _chart(**changes) -> charts.Chart:
    spec = {"size": [9, 1.28], "labels": ["liver", "price $5"], "values": [3, 5], "title": "Boxes",
            "xlabel": "boxes", "fmt": "{:,.0f}"}
    return charts.Chart("barh", spec | changes)


@pytest.mark.parametrize(
    "change",
    [{"values": [3, 6]}, {"values": [3, 5.0001]}, {"labels": ["liver", "kidney"]}, {"title": "boxes"},
     {"xlabel": "labels"}, {"size": [9, 1.3]}, {"fmt": "{:.1f}"}],
    ids=["count", "float", "label", "title", "axis-label", "size", "number-format"],
)
def test_chart_key_changes_with_every_drawn_input(change):
    assert _chart().key() == _chart().key()
    assert len(_chart().key()) == 64
    assert _chart(**change).key() != _chart().key()


def test_chart_key_changes_with_the_chart_version_and_the_libraries(monkeypatch):
    base = _chart().key()
    installed = charts.library_versions()
    monkeypatch.setattr(charts, "library_versions", lambda: installed | {"matplotlib": "0.0"})
    assert _chart().key() != base
    monkeypatch.undo()
    monkeypatch.setattr(charts, "CHART_VERSION", charts.CHART_VERSION + 1)
    assert _chart().key() != base


def test_chart_of_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="kind 'pie' is not one of"):
        charts.Chart("pie", {})


# --------------------------------------------------------------------------- the reports


@pytest.mark.parametrize("kind", KINDS)
def test_report_has_every_section(reports, kind):
    corpus, path, data = reports[kind]
    assert path == corpus / "report" / "index.html"
    page = _page(reports, kind)
    assert set(SECTIONS) <= set(page.sections)
    manifest = json.loads((corpus / "manifest.json").read_text())
    header = data.decode()[: data.decode().index('<section id="build"')]
    assert manifest["fingerprint"] in header and manifest["recipe"]["name"] in header
    assert page.sections["build"]["tables"] == 1
    reasons = {r for c in manifest["counts"].values() for r in c["rejected_by_reason"]}
    assert reasons and all(f"{r}: " in page.text("build") for r in reasons)
    counts = page.sections["counts"]
    assert counts["tables"] >= 3 and len(counts["images"]) >= 3
    assert len(page.sections["distributions"]["images"]) >= 2
    if "audit" in manifest:  # the build's shortcut audit: one table row per group
        section = data.decode()[data.decode().index('<section id="audit"'):]
        section = section[: section.index("</section>")]
        assert section.count("<tr>") == 1 + len(manifest["audit"]["groups"])
        assert "Overall verdict" in page.text("audit")
    else:
        assert "audit was not run" in page.text("audit")
    assert page.sections["dead-letters"]["tables"] == 2
    figures = page.figures
    assert len(figures) >= 3
    for fig in figures:
        assert fig["images"] and fig["questions"] and fig["answers"] == len(fig["questions"])
    shown = sum(len(f["questions"]) for f in figures)
    assert 12 <= shown <= 40
    assert len(data) < 5_000_000


@pytest.mark.parametrize("kind", KINDS)
def test_every_image_is_an_inline_png_and_nothing_is_external(reports, kind):
    page = _page(reports, kind)
    assert len(page.images) >= 8
    for img in page.images:
        decoded = _decode(img["src"])
        assert decoded.size == (int(img["width"]), int(img["height"]))
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    text = reports[kind][2].decode()
    assert "http://" not in text and "https://" not in text and "url(" not in text


@pytest.mark.parametrize("kind", KINDS)
def test_report_is_byte_identical_on_a_second_run(reports, kind):
    corpus, path, first = reports[kind]
    again = rep.write_report(str(corpus))
    assert Path(again) == path
    assert path.read_bytes() == first


@pytest.mark.parametrize("kind", KINDS)
def test_dead_letters_show_reasons_never_source_paths(reports, kind):
    corpus, _, data = reports[kind]
    letters = [json.loads(line) for line in (corpus / "dead_letters" / "dead_letters.jsonl").open()]
    assert letters, "each test corpus has one bad input"
    text = data.decode("utf-8")
    for letter in letters:
        source = letter["source"]
        assert source not in text
        assert any("4711" in part for part in source.split("/"))  # the planted bad input
        assert letter["message"] not in text
    assert BAD_FOLDER not in text and BAD_PNG not in text and "4711" not in text
    page = _page(reports, kind)
    dead = page.text("dead-letters")
    for letter in letters:
        assert letter["reason"] in dead


def _border_fraction(img: np.ndarray, rect, colour) -> dict[str, float]:
    """Share of each outline edge's pixels in ``colour``; ``rect`` inclusive (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = rect
    edges = {"left": img[y0:y1 + 1, x0], "right": img[y0:y1 + 1, x1],
             "top": img[y0, x0:x1 + 1], "bottom": img[y1, x0:x1 + 1]}
    return {k: float(np.mean(np.all(v == colour, axis=-1))) for k, v in edges.items()}


def _assert_boxes_on_stored_coordinates(figure: dict, boxes: list[tuple], img: Image.Image,
                                        size: tuple[int, int]):
    """Every stored box outlined exactly on ``[x_min*s, x_max*s)``; one pixel further fails."""
    scale = float(figure["attrs"]["data-scale"])
    assert scale == int(scale) and scale >= 2
    s = int(scale)
    assert img.size == (size[0] * s, size[1] * s)
    arr = np.asarray(img.convert("RGB"))
    colours = {li["data-label"]: tuple(int(li["data-colour"][i:i + 2], 16) for i in (1, 3, 5))
               for li in figure["legend"]}
    assert set(colours) == {label for label, _ in boxes}
    right_bottom, shifted = [], []
    for label, (x0, y0, x1, y1) in boxes:
        exact = _border_fraction(arr, (x0 * s, y0 * s, x1 * s - 1, y1 * s - 1), colours[label])
        assert sum(v >= 0.5 for v in exact.values()) >= 3, (label, exact)
        right_bottom += [exact["right"], exact["bottom"]]
        if (x1 + 1) * s - 1 < arr.shape[1] and (y1 + 1) * s - 1 < arr.shape[0]:
            # the same box drawn with inclusive maxima would sit here
            off = _border_fraction(arr, (x0 * s, y0 * s, (x1 + 1) * s - 1, (y1 + 1) * s - 1), colours[label])
            shifted += [off["right"], off["bottom"]]
    assert np.mean(right_bottom) >= 0.85
    assert not shifted or np.mean(shifted) <= 0.5


def test_slice_gallery_draws_every_box_on_the_stored_coordinates(reports):
    corpus = reports["slices"][0]
    stored = {r["image_id"]: r for r in _rows(corpus, "images", ["image_id", "width", "height", "boxes"])}
    answer_boxes = {r["qa_id"]: r["answer_box"] for r in _rows(corpus, "qa", ["qa_id", "answer_box"])}
    page = _page(reports, "slices")
    checked = grounding = 0
    for fig in page.figures:
        row = stored[fig["attrs"]["data-image-id"]]
        boxes = [(b["label"], (b["x_min"], b["y_min"], b["x_max"], b["y_max"])) for b in row["boxes"]]
        views = [i for i in fig["images"] if "boxes" in i["class"]]
        assert len(views) == 1
        _assert_boxes_on_stored_coordinates(fig, boxes, _decode(views[0]["src"]), (row["width"], row["height"]))
        checked += len(boxes)
        for view in (i for i in fig["images"] if "answer-box" in i["class"]):
            box = answer_boxes[view["data-qa-id"]]
            assert view["data-box"] == ",".join(map(str, box))
            s = int(float(fig["attrs"]["data-scale"]))
            colour = tuple(int(view["data-colour"][i:i + 2], 16) for i in (1, 3, 5))
            arr = np.asarray(_decode(view["src"]).convert("RGB"))
            exact = _border_fraction(arr, (box[0] * s, box[1] * s, box[2] * s - 1, box[3] * s - 1), colour)
            assert min(exact.values()) >= 0.9, exact
            grounding += 1
    assert checked >= 20 and grounding >= 1


def test_slice_gallery_shows_visual_prompt_questions_with_their_prompted_image(reports):
    """A red-box question is shown beside its stored ``image_boxed_easy`` (its wording names
    red only), scaled like the other views: the red outline on the prompted structure's box."""
    corpus = reports["slices"][0]
    stored = {r["image_id"]: r for r in _rows(corpus, "images", ["image_id", "boxes", "prompt_label"])}
    prompted = {r["qa_id"] for r in _rows(corpus, "qa", ["qa_id", "visual_prompt"]) if r["visual_prompt"]}
    page = _page(reports, "slices")
    shown = 0
    for fig in page.figures:
        row = stored[fig["attrs"]["data-image-id"]]
        views = {i["data-qa-id"]: i for i in fig["images"] if "prompt" in i["class"].split()}
        assert set(views) == set(fig["questions"]) & prompted
        s = int(float(fig["attrs"]["data-scale"]))
        for view in views.values():
            assert view["data-column"] == "image_boxed_easy" and view["data-label"] == row["prompt_label"]
            b = next(b for b in row["boxes"] if b["label"] == row["prompt_label"])
            arr = np.asarray(_decode(view["src"]).convert("RGB"))
            exact = _border_fraction(arr, (b["x_min"] * s, b["y_min"] * s, b["x_max"] * s - 1,
                                           b["y_max"] * s - 1), (255, 0, 0))
            assert min(exact.values()) == 1.0, exact
            shown += 1
    assert shown >= 1


def test_an_undecodable_stored_image_is_skipped_and_logged_but_a_drawing_bug_is_not(monkeypatch):
    """A corrupt image skips its figure, an absent prompted image its view (both logged,
    as :class:`views.Undecodable`, also when the decode is deferred to a cache miss); an
    error in drawing a decodable image is a bug and propagates."""
    png = io.BytesIO()
    Image.new("L", (8, 8), 40).save(png, "PNG")
    good, corrupt = png.getvalue(), png.getvalue()[:-30]  # a whole header, no image data
    for data in (None, b"", b"not an image"):
        with pytest.raises(views.Undecodable):
            views.LazyImage.stored(data)
    lazy = views.LazyImage.stored(corrupt)
    assert lazy.size == (8, 8)
    with pytest.raises(views.Undecodable):
        lazy.image()

    from pipeline.report.gallery_html import gallery_2d

    box = {"label": "liver", "x_min": 1, "y_min": 1, "x_max": 4, "y_max": 4}
    red = {"qa_id": "q1", "question": "What is in the red box?", "visual_prompt": "red_box",
           "answer": "liver"}
    item = lambda data, questions=(): gallery.GalleryItem(  # noqa: E731
        "i1", "test", list(questions), {"image": {"bytes": data}, "boxes": [box],
                                        "image_boxed_easy": {"bytes": None}})
    logged = []
    assert gallery_2d([item(corrupt)], "slices", log=logged.append) == []
    assert logged == ["  gallery: image i1 could not be decoded; skipped"]
    logged.clear()
    (figure,) = gallery_2d([item(good, [red])], "slices", log=logged.append)
    assert "image_boxed_easy of question q1 could not be decoded" in logged[0] and 'class="view boxes"' in figure

    def broken(*args, **kwargs):
        raise KeyError("a bug in drawing")

    monkeypatch.setattr(views, "draw_boxes", broken)
    with pytest.raises(KeyError, match="a bug in drawing"):
        gallery_2d([item(good)], "slices", log=logged.append)


def test_volume_gallery_draws_the_3d_boxes_crossing_the_middle_slice(reports):
    corpus = reports["volumes"][0]
    stored = {r["volume_id"]: r for r in _rows(corpus, "volumes", ["volume_id", "shape", "boxes3d"])}
    numeric = {r["qa_id"] for r in _rows(corpus, "qa", ["qa_id", "answer_value"]) if r["answer_value"] is not None}
    page = _page(reports, "volumes")
    assert len(page.figures) >= 2
    for fig in page.figures:
        row = stored[fig["attrs"]["data-image-id"]]
        k = int(fig["attrs"]["data-slice-k"])
        assert k == row["shape"][0] // 2
        boxes = [(b["label"], (b["box"][2], b["box"][1], b["box"][5], b["box"][4]))
                 for b in row["boxes3d"] if b["box"][0] <= k < b["box"][3]]
        assert boxes
        _assert_boxes_on_stored_coordinates(fig, boxes, _decode(fig["images"][0]["src"]),
                                            (row["shape"][2], row["shape"][1]))
    text = page.text("gallery")
    assert "tolerance ±" in text
    assert numeric & {q for f in page.figures for q in f["questions"]}


def test_tree_gallery_shows_images_with_choices_and_answers(reports):
    page = _page(reports, "tree")
    text = page.text("gallery")
    assert "Caption:" in text and "Answer:" in text
    html = reports["tree"][2].decode()
    assert '<ol class="options" type="A">' in html and 'class="correct"' in html
    for fig in page.figures:
        assert _decode(fig["images"][0]["src"]).size[0] >= 300  # 16 px PNGs shown enlarged


@pytest.mark.parametrize("kind", KINDS)
def test_every_plot_fits_its_figure(reports, kind):
    """Axes are placed from their measured labels: nothing reaches a plot's outermost pixels,
    so no tick label, title or legend is cut at the figure's edge."""
    plots = [i for i in _page(reports, kind).images if i["class"] == "plot"]
    assert len(plots) >= 6
    for img in plots:
        arr = np.asarray(_decode(img["src"]).convert("RGB"))
        border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
        assert (border == 255).all(), img["alt"]


# --------------------------------------------------------------------------- the chart cache


def _cache(corpus: Path) -> dict[str, bytes]:
    folder = corpus / ".radvqa" / "report-cache"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


def _charts(cached: dict[str, bytes]) -> dict[str, bytes]:
    """The chart entries of a cache listing (gallery views are ``view-<sha256>.png``)."""
    return {n: d for n, d in cached.items() if not n.startswith("view-")}


def _plot_pngs(data: bytes, cls: str = "plot") -> list[bytes]:
    prefix = "data:image/png;base64,"
    return [base64.b64decode(i["src"][len(prefix):]) for i in Page(data.decode()).images
            if i["class"].split()[0] == cls]


def _no_drawing(chart):
    raise AssertionError(f"a {chart.kind} chart was drawn: the cache should have held it")


@pytest.mark.parametrize("kind", KINDS)
def test_a_second_report_takes_every_chart_from_the_cache(reports, kind, monkeypatch):
    corpus, path, first = reports[kind]
    cached = _cache(corpus)
    chart_entries = {n: d for n, d in cached.items() if not n.startswith("view-")}
    view_entries = {n: d for n, d in cached.items() if n.startswith("view-")}
    assert set(chart_entries.values()) == set(_plot_pngs(first))  # this report's charts, nothing else
    assert all(re.fullmatch(r"[0-9a-f]{64}\.png", name) for name in chart_entries), sorted(chart_entries)
    # and its 2D gallery views (images with boxes drawn), keyed by image, boxes and colours
    assert all(re.fullmatch(r"view-[0-9a-f]{64}\.png", name) for name in view_entries), sorted(view_entries)
    assert view_entries and set(view_entries.values()) == set(_plot_pngs(first, "view"))
    monkeypatch.setattr(drawing, "render_chart", _no_drawing)
    monkeypatch.setattr(views, "draw_boxes", lambda *a, **k: _no_drawing(type("V", (), {"kind": "view"})))
    rep.write_report(str(corpus))
    assert path.read_bytes() == first
    assert _cache(corpus) == cached


@pytest.mark.parametrize("kind", KINDS)
def test_the_cache_never_changes_the_report(reports, kind):
    """Every chart drawn afresh (cache folder deleted) gives the bytes of the cached report."""
    corpus, path, first = reports[kind]
    cached = _cache(corpus)
    shutil.rmtree(corpus / ".radvqa" / "report-cache")
    rep.write_report(str(corpus))
    assert path.read_bytes() == first
    assert _cache(corpus) == cached


def test_a_changed_chart_is_drawn_again_and_stale_entries_are_removed(reports, tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    shutil.copytree(reports["slices"][0], corpus)
    folder = corpus / ".radvqa" / "report-cache"
    before = _charts(_cache(corpus))
    rows_chart = _plot_pngs(reports["slices"][2])[0]  # "rows per config and split"
    # Leftovers: an entry of a chart no longer shown, a killed write, a truncated entry.
    (folder / ("0" * 64 + ".png")).write_bytes(rows_chart)
    (folder / ("1" * 64 + ".png.tmp-0123")).write_bytes(rows_chart[:50])
    truncated = next(name for name, data in sorted(before.items()) if data != rows_chart)
    (folder / truncated).write_bytes(before[truncated][:-12])  # no IEND: a miss, drawn again
    manifest = json.loads((corpus / "manifest.json").read_text())
    shard = next(rel for rel in sorted(manifest["files"]) if rel.startswith("images/"))
    manifest["files"][shard]["rows"] += 1  # changes the rows-per-config table and chart only
    (corpus / "manifest.json").write_text(json.dumps(manifest))
    drawn = []
    draw = drawing.render_chart
    monkeypatch.setattr(drawing, "render_chart", lambda chart: drawn.append(chart) or draw(chart))

    rep.write_report(str(corpus))

    page = (corpus / "report" / "index.html").read_bytes()
    after = _charts(_cache(corpus))
    assert len(drawn) == 2  # the changed chart and the truncated entry's
    assert drawn[0].spec["title"] == "Rows per config and split"
    assert f"{drawn[1].key()}.png" == truncated
    assert after[truncated] == before[truncated]  # drawn again, the same bytes
    assert len(after) == len(before) and len(set(after) - set(before)) == 1  # stale ones removed
    assert set(after.values()) == set(_plot_pngs(page))
    assert _plot_pngs(page)[0] != rows_chart and _plot_pngs(page)[1:] == _plot_pngs(reports["slices"][2])[1:]
    # an uncached render (it writes nothing) gives the same page
    monkeypatch.setattr(drawing, "render_chart", draw)
    assert rep.render_report(str(corpus)).encode("utf-8") == page
    assert _charts(_cache(corpus)) == after


def test_a_report_from_the_cache_does_not_import_matplotlib(reports):
    corpus, path, first = reports["volumes"]
    code = ("import sys; from pipeline.report import write_report; write_report(sys.argv[1]); "
            "assert 'matplotlib' not in sys.modules, 'matplotlib was imported'")
    done = subprocess.run([sys.executable, "-c", code, str(corpus)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert path.read_bytes() == first


def test_cli_report_rebuilds_the_page(reports, capsys):
    corpus, path, first = reports["tree"]
    path.unlink()
    assert cli_main(["report", str(corpus)]) == 0
    assert path.read_bytes() == first
    assert str(path) in capsys.readouterr().out
    assert cli_main(["report", str(corpus / "no-such-corpus")]) == 2


# --------------------------------------------------------------------------- a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHECK_SCRIPT = """<script>
window.addEventListener('load', () => {
  const rows = [...document.images].map(i => {
    const b = i.getBoundingClientRect();
    return [i.className, i.complete && i.naturalWidth > 0, Math.round(b.left), Math.round(b.top),
            Math.round(b.width), Math.round(b.height)];
  });
  document.documentElement.setAttribute('data-check', JSON.stringify(rows));
});
</script>"""
# Only the plots and the gallery, plots shrunk, so that both fit in one 1200 x 3000 viewport.
LAYOUT = ("<style>body>:not(section){display:none}section>:not(img.plot):not(.gallery){display:none}"
          "img.plot{display:inline-block;width:280px;height:auto;margin:2px}"
          ".gallery{grid-template-columns:repeat(4,1fr)}figure.item figcaption{display:none}</style>")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium missing: `make test` installs it (make system-deps)")
def test_the_report_opens_in_a_browser_with_its_gallery_and_plots(reports, tmp_path):
    """Headless Chromium (Debian's ``chromium``) loads the slices report, decodes every image,
    and paints the plots and the gallery: the screenshot is not blank where they are laid out.

    Skipped only when Chromium is absent; ``make test`` always installs it first (its
    ``system-deps`` prerequisite installs Debian's ``chromium`` when missing).  The page is
    loaded from a copy with a check script and a compact layout added; the report itself
    holds no script.
    """
    _, path, data = reports["slices"]
    page = data.decode("utf-8").replace("<body>", "<body>" + LAYOUT, 1).replace("</body>", CHECK_SCRIPT + "</body>", 1)
    html = tmp_path / "index.html"
    html.write_text(page, encoding="utf-8")
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1200,3000",
           "--virtual-time-budget=10000", f"--screenshot={shot}", "--dump-dom", html.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    dom = Page(done.stdout)
    rows = json.loads(dom.root_attrs["data-check"])
    assert len(rows) == len(Page(data.decode()).images)
    assert all(decoded for _, decoded, *_ in rows), "the browser failed to decode an image"
    shot_img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    height, width = shot_img.shape[:2]

    def painted(left, top, w, h):
        region = shot_img[top:top + h, left:left + w]
        return float(np.mean(np.any(region < 235, axis=-1)))

    visible = [(cls, r) for cls, _, *r in rows if r[2] > 0 and r[1] + r[3] <= height and r[0] + r[2] <= width]
    plots = [painted(*r) for cls, r in visible if "plot" in cls]
    gallery = [painted(*r) for cls, r in visible if "view" in cls]
    assert len(plots) >= 6 and min(plots) > 0.02, plots
    assert len(gallery) >= 4 and min(gallery) > 0.3, gallery
