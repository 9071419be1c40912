"""The corpus report: ``OUTPUT/report/index.html``, one self-contained page.

:func:`write_report` reads only the corpus — ``manifest.json``, the Parquet
configs shard by shard with just the columns each statistic needs, and the
dead-letter file for its *reasons* — and writes a page with inline CSS, every
image inline as a base64 PNG ``data:`` URI, and no JavaScript.

What it never does:

* show a source path, file name or dead-letter message: ``dead_letters/`` is
  operator-only, the report is part of the corpus (only stage, reason and
  error type are read, and a reason that does not look like a reason code is
  withheld);
* load every image: statistics read metadata columns; pixels are read only
  for the gallery, whose rows come from the head (first :data:`POOL_ROWS`
  rows, :data:`POOL_VOLUMES` for volumes) of the first non-empty shard of
  each split of the image-bearing config (``images``, ``alignment`` or
  ``volumes``); image sizes of labelled trees (not stored as columns) come
  from the PNG headers of the first :data:`SIZE_SAMPLE` rows of the same
  shards.  Memory is bounded by one shard's metadata columns, whatever the
  corpus size.

Determinism: the same corpus gives the same bytes.  No timestamps; every
listing is sorted, ties broken by name; figures are drawn once by matplotlib's
Agg canvas with the default style, fixed size and dpi, on a layout computed
from their measured labels, and encoded by Pillow without metadata, like the
gallery PNGs.  Rows inside a shard are sorted by key, so a shard's head is a
keyed-hash sample.

Chart cache: each chart is first reduced to a :class:`Chart` (plain data:
everything it draws), whose sha256 :meth:`~Chart.key` also covers
:data:`CHART_VERSION`, the drawing constants and the matplotlib, Pillow and
numpy versions.  :func:`write_report` keeps the PNG of every chart under
``OUTPUT/.radvqa/report-cache/<key>.png`` (build state, never published) and
deletes the entries the new report no longer uses; a chart whose key is there
is copied, without importing matplotlib.  The cache never changes the output:
a stored chart holds the bytes the same drawing produced.

Gallery conventions: 2D boxes are stored-image pixels, ``x_min, y_min``
inclusive, ``x_max, y_max`` exclusive; an image shown at integer scale ``s``
has each box outlined on the outermost pixels of ``[x_min*s, x_max*s) ×
[y_min*s, y_max*s)``.  3D volumes are ``[k, j, i]`` arrays whose axial slice
``a[k]`` is already in display orientation (rows j: anterior at the top;
columns i: the patient's right on the left); a 3D box ``[k0, j0, i0, k1, j1,
i1]`` (maxima exclusive) is drawn on slice ``k`` when ``k0 <= k < k1``.
"""

from __future__ import annotations

import base64
import colorsys
import contextlib
import functools
import gc
import hashlib
import html
import io
import json
import math
import os
import re
import struct
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPORT = "report/index.html"
MANIFEST = "manifest.json"
DEAD_LETTERS = "dead_letters/dead_letters.jsonl"

GALLERY_SIZE = 24  # questions shown in the gallery (2D corpora)
GALLERY_VOLUMES = 4  # volumes shown in the gallery (3D corpora)
QUESTIONS_PER_VOLUME = 8
QUESTIONS_PER_IMAGE = 3
POOL_ROWS = 64  # head rows of the first shard per split the 2D gallery may draw from
POOL_VOLUMES = 4  # the same for volumes (each row is a whole .npy volume)
SIZE_SAMPLE = 1000  # PNG headers read per split for image sizes when not stored as columns
GALLERY_PX = 420  # target of the longer side of a gallery image
TOP_ANSWERS = 8
TOP_TABLE = 40
MAX_DISTINCT = 50_000  # answers tracked per group before the tail is pruned
DPI = 100

QA_CONFIGS = ("qa", "instruct", "benchmark")
SPLIT_ORDER = {"train": 0, "validation": 1, "test": 2}
QTYPE_ORDER = {"closed": 0, "multiple_choice": 1, "open": 2}
STAGE_ORDER = {"discover": 0, "read": 1, "extract": 2, "qa": 3}
KINDS = {
    "slices": "2D slices of CT/MR volumes with per-structure boxes (configs images / structures / qa)",
    "tree": "labelled 2D image tree, RadImageNet style (configs instruct / alignment / benchmark)",
    "volumes": "3D volumes with volume-level questions (configs volumes / qa)",
}
BASELINES = {  # as defined by pipeline.qa.audit: learned on train, scored on each split
    "question_majority": (
        "question majority",
        "for each exact question text, the answer most often given to it on train (texts unseen "
        "on train get the group's most frequent train answer): what a language model memorising "
        "the training questions would score, without looking at the image",
    ),
    "answer_position": (
        "answer position",
        "multiple choice: always the option letter most often correct on train",
    ),
    "frequent_option": (
        "frequent option",
        "multiple choice: the option whose text is offered most often on train",
    ),
    "longest_option": (
        "longest option",
        "multiple choice: the longest option text",
    ),
    "often_correct_option": (
        "often-correct option",
        "multiple choice: the option whose text is correct most often, relative to how often it "
        "is offered, on train",
    ),
}
ANSWER_BOX_COLOUR = (255, 215, 0)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_REASON = re.compile(r"^[A-Za-z0-9_.:\- ]{1,80}$")


# --------------------------------------------------------------------------- reading the corpus


class Corpus:
    """Read access to one built corpus: local folder (plain I/O) or any Beam filesystem."""

    def __init__(self, root: str):
        self.remote = "://" in root
        self.root = root.rstrip("/") if self.remote else os.path.abspath(root)

    def path(self, rel: str) -> str:
        if self.remote:
            from pipeline.io import shards

            return shards.join(self.root, rel)
        return os.path.join(self.root, *rel.split("/"))

    def exists(self, rel: str) -> bool:
        if self.remote:
            from pipeline.io import shards

            return shards.exists(self.root, rel)
        return os.path.isfile(self.path(rel))

    def read(self, rel: str) -> bytes:
        if self.remote:
            from pipeline.io import shards

            return shards.read_bytes(self.root, rel)
        with open(self.path(rel), "rb") as f:
            return f.read()

    def listdir(self, rel: str) -> list[str]:
        """Names of the files directly in folder ``rel`` (none when it does not exist)."""
        if self.remote:
            from apache_beam.io.filesystems import FileSystems

            prefix = self.path(rel).rstrip("/") + "/"
            found = FileSystems.match([prefix + "*"])[0].metadata_list
            return sorted(m.path[len(prefix):] for m in found if "/" not in m.path[len(prefix):])
        try:
            return sorted(e.name for e in os.scandir(self.path(rel)) if e.is_file())
        except FileNotFoundError:
            return []

    def delete(self, rels: list[str]) -> None:
        if self.remote:
            from apache_beam.io.filesystems import FileSystems

            FileSystems.delete([self.path(rel) for rel in rels])
            return
        for rel in rels:
            try:
                os.remove(self.path(rel))
            except FileNotFoundError:
                pass

    def open(self, rel: str):
        if self.remote:
            from apache_beam.io.filesystems import FileSystems

            return FileSystems.open(self.path(rel))
        return open(self.path(rel), "rb")

    def parquet(self, rel: str) -> pq.ParquetFile:
        # buffered reads: taking a shard's first rows reads their pages, not whole column chunks
        return pq.ParquetFile(self.open(rel) if self.remote else self.path(rel), buffer_size=1 << 20)

    def write(self, rel: str, data: bytes) -> str:
        """Write atomically (temporary name, then rename); return the final path."""
        if self.remote:
            from pipeline.io import shards

            shards.write_bytes(self.root, rel, data)
            return self.path(rel)
        final = self.path(rel)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = f"{final}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, final)
        return final


def config_shards(manifest: Mapping, config: str) -> list[str]:
    """The Parquet files of ``config`` listed in the manifest, in split then name order."""
    rels = [p for p in manifest.get("files", {}) if p.startswith(config + "/") and p.endswith(".parquet")]
    return sorted(rels, key=lambda p: (_split_key(split_of(p)), p))


def split_of(rel: str) -> str:
    return rel.split("/", 1)[1].split("-", 1)[0]


def _split_key(split: str) -> tuple:
    return (SPLIT_ORDER.get(split, 3), split)


def _present(pf: pq.ParquetFile, columns: Iterable[str]) -> list[str]:
    """``columns`` (top-level names or dotted nested paths) that the file has."""
    names = set(pf.schema_arrow.names)
    leaves = set(pf.schema.names) | {c.path for c in (pf.schema.column(i) for i in range(len(pf.schema)))}
    out = []
    for c in columns:
        top = c.split(".", 1)[0]
        if c in names or (top in names and any(p == c or p.startswith(c + ".") for p in leaves)):
            out.append(c)
    return out


def _read(corpus: Corpus, rel: str, columns: Iterable[str]) -> pa.Table:
    pf = corpus.parquet(rel)
    return pf.read(columns=_present(pf, columns))


def _head(corpus: Corpus, rel: str, columns: Iterable[str], n: int) -> pa.Table:
    """The first ``n`` rows of a shard (reads at most the row groups they lie in)."""
    pf = corpus.parquet(rel)
    cols = _present(pf, columns)
    for batch in pf.iter_batches(batch_size=n, columns=cols):
        return pa.Table.from_batches([batch])
    return pa.table({c: pa.array([], pa.null()) for c in cols})


def _nested(table: pa.Table, column: str, field_name: str) -> pa.Array:
    """``table[column][field_name]`` for a struct column (nulls where the struct is null)."""
    return pc.struct_field(table.column(column).combine_chunks(), field_name)


def _value_counts(arr) -> Counter:
    out: Counter = Counter()
    if len(arr) == 0:
        return out
    for item in pc.value_counts(arr).to_pylist():
        out[item["values"]] += item["counts"]
    return out


def _group_counts(table: pa.Table, keys: list[str]) -> Counter:
    """Counts of distinct key tuples (nulls kept as None).

    Each key column is dictionary-encoded and the index tuples are counted with numpy:
    Arrow's ``Table.group_by`` imports pyarrow.acero, and with it pandas (about 1 s).
    """
    out: Counter = Counter()
    if table.num_rows == 0:
        return out
    values, codes = [], []
    for k in keys:
        encoded = pc.dictionary_encode(table.column(k).combine_chunks(), null_encoding="encode")
        values.append(encoded.dictionary.to_pylist())
        codes.append(encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64))
    if math.prod(max(1, len(v)) for v in values) < 2 ** 62:  # one mixed-radix code per row
        code = np.zeros(table.num_rows, np.int64)
        for v, c in zip(values, codes):
            code = code * max(1, len(v)) + c
        uniq, counts = np.unique(code, return_counts=True)
        combos = np.empty((len(uniq), len(keys)), np.int64)
        for j in range(len(keys) - 1, -1, -1):
            uniq, combos[:, j] = np.divmod(uniq, max(1, len(values[j])))
    else:
        combos, counts = np.unique(np.stack(codes, axis=1), axis=0, return_counts=True)
    for combo, n in zip(combos.tolist(), counts.tolist()):
        out[tuple(v[i] for v, i in zip(values, combo))] += n
    return out


# --------------------------------------------------------------------------- statistics


@dataclass
class AnswerStats:
    """Answer counts of one (config, task, question type); the tail is pruned past MAX_DISTINCT."""

    n: int = 0
    answers: Counter = field(default_factory=Counter)
    pruned: bool = False

    def add(self, answer, count: int) -> None:
        self.n += count
        self.answers["" if answer is None else str(answer)] += count

    def prune(self) -> None:
        if len(self.answers) > MAX_DISTINCT:
            self.answers = Counter(dict(_top(self.answers, MAX_DISTINCT // 5)))
            self.pruned = True


@dataclass
class Stats:
    qa_groups: dict = field(default_factory=lambda: defaultdict(Counter))  # config -> (split, task, qtype, subtask) -> n
    answers: dict = field(default_factory=lambda: defaultdict(AnswerStats))  # (config, task, qtype) -> stats
    images: Counter = field(default_factory=Counter)  # (split, modality, plane/location) -> images
    body_parts: Counter = field(default_factory=Counter)
    pathologies: Counter = field(default_factory=Counter)  # tree: (location, pathology) -> images
    abnormal: Counter = field(default_factory=Counter)  # tree: location -> abnormal images
    box_labels: Counter = field(default_factory=Counter)
    area_px: np.ndarray | None = None
    area_frac: np.ndarray | None = None
    sizes: Counter = field(default_factory=Counter)  # (width, height) -> images
    sizes_sampled: bool = False
    size_rows: int = 0
    shapes: Counter = field(default_factory=Counter)  # volumes: stored shape -> volumes
    spacings: Counter = field(default_factory=Counter)  # volumes: (in-plane, slice) mm -> volumes


AREA_PX_EDGES = np.logspace(0, 7, 57)
AREA_FRAC_EDGES = np.logspace(-4, 2, 49)  # % of the image (or volume)


def _add_hist(current, values, edges):
    counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
    return counts if current is None else current + counts


def scan_qa(corpus: Corpus, manifest: Mapping, config: str, stats: Stats, log,
            pool: GalleryPool | None = None) -> None:
    """Counts per split/task/question type (and subtask) and answer counts, shard by shard.

    With the gallery's ``pool`` (of this config), the same pass collects every question about
    a pool image into ``pool.questions``: a shard's id column is read with the statistics'
    columns, and only shards that ask about a pool image are read again, for the rest of the
    question columns.
    """
    columns = ["split", "task", "question_type", "subtask", "answer"]
    for rel in config_shards(manifest, config):
        pf = corpus.parquet(rel)
        t = pf.read(columns=_present(pf, columns + ([pool.id_col] if pool else [])))
        if "subtask" not in t.column_names:
            t = t.append_column("subtask", pa.nulls(t.num_rows, pa.string()))
        if pool is not None:
            pool.collect(pf, t)
        for key, n in _group_counts(t, ["split", "task", "question_type", "subtask"]).items():
            stats.qa_groups[config][key] += n
        for (task, qtype, answer), n in _group_counts(t, ["task", "question_type", "answer"]).items():
            stats.answers[(config, task, qtype)].add(answer, n)
        for a in stats.answers.values():
            a.prune()
    log(f"  scanned {config}: {len(config_shards(manifest, config))} shard(s)")


def scan_images(corpus: Corpus, manifest: Mapping, stats: Stats) -> None:
    """``images`` (slices): plane × modality, body part, box labels and areas, image sizes."""
    for rel in config_shards(manifest, "images"):
        t = _read(corpus, rel, ["split", "modality", "plane", "body_part", "width", "height",
                                "boxes.list.element.label", "boxes.list.element.area_px"])
        for (split, modality, plane), n in _group_counts(t, ["split", "modality", "plane"]).items():
            stats.images[(split, modality, plane)] += n
        stats.body_parts.update(_value_counts(t.column("body_part")) if "body_part" in t.column_names
                                else Counter())
        for (w, h), n in _group_counts(t, ["width", "height"]).items():
            stats.sizes[(w, h)] += n
        stats.size_rows += t.num_rows
        boxes = t.column("boxes").combine_chunks()
        flat = pc.list_flatten(boxes)
        stats.box_labels.update(_value_counts(pc.struct_field(flat, "label")))
        area = pc.struct_field(flat, "area_px").to_numpy(zero_copy_only=False).astype(np.float64)
        lengths = pc.fill_null(pc.list_value_length(boxes), 0).to_numpy(zero_copy_only=False)
        pixels = (t.column("width").to_numpy().astype(np.float64)
                  * t.column("height").to_numpy().astype(np.float64))
        frac = 100.0 * area / np.maximum(np.repeat(pixels, lengths), 1.0)
        stats.area_px = _add_hist(stats.area_px, area, AREA_PX_EDGES)
        stats.area_frac = _add_hist(stats.area_frac, frac, AREA_FRAC_EDGES)


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or from Pillow's lazy header read."""
    if data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:  # an unreadable image is the build's business, not the report's
        return None


def scan_alignment(corpus: Corpus, manifest: Mapping, stats: Stats) -> None:
    """``alignment`` (trees): images per location × modality, pathologies; image sizes from
    the PNG headers of the first rows of the first shard of each split (sizes are not columns)."""
    for rel in config_shards(manifest, "alignment"):
        t = _read(corpus, rel, ["split", "metadata.location", "metadata.modality",
                                "metadata.pathology", "metadata.is_abnormal"])
        flat = pa.table({
            "split": t.column("split"),
            "modality": _nested(t, "metadata", "modality"),
            "location": _nested(t, "metadata", "location"),
            "pathology": _nested(t, "metadata", "pathology"),
            "abnormal": _nested(t, "metadata", "is_abnormal"),
        })
        for (split, modality, location), n in _group_counts(flat, ["split", "modality", "location"]).items():
            stats.images[(split, modality, location)] += n
        for (location, pathology), n in _group_counts(flat, ["location", "pathology"]).items():
            stats.pathologies[(location, pathology)] += n
        for (location, abnormal), n in _group_counts(flat, ["location", "abnormal"]).items():
            if abnormal:
                stats.abnormal[location] += n
    for rel in _pool_shards(manifest, "alignment"):
        head = _head(corpus, rel, ["image.bytes"], SIZE_SAMPLE)
        if head.num_rows == 0:
            continue
        for data in _nested(head, "image", "bytes").to_pylist():
            size = png_size(data) if data else None
            if size:
                stats.sizes[size] += 1
        stats.size_rows += head.num_rows
    stats.sizes_sampled = True


def scan_volumes(corpus: Corpus, manifest: Mapping, stats: Stats) -> None:
    """``volumes`` (3D): modality, stored shape, original spacing, 3D box labels and extents."""
    for rel in config_shards(manifest, "volumes"):
        t = _read(corpus, rel, ["split", "modality", "shape", "original_spacing_mm", "boxes3d"])
        for (split, modality), n in _group_counts(t, ["split", "modality"]).items():
            stats.images[(split, modality, "volume")] += n
        for row in t.select([c for c in ("shape", "original_spacing_mm", "boxes3d")
                             if c in t.column_names]).to_pylist():
            shape = tuple(row.get("shape") or ())
            stats.shapes[shape] += 1
            sp = row.get("original_spacing_mm") or []
            if len(sp) == 3:
                stats.spacings[(round(float(sp[0]), 3), round(float(sp[2]), 3))] += 1
            voxels = float(np.prod(shape)) if shape else 0.0
            fracs = []
            for box in row.get("boxes3d") or []:
                stats.box_labels[box["label"]] += 1
                k0, j0, i0, k1, j1, i1 = box["box"]
                fracs.append(100.0 * (k1 - k0) * (j1 - j0) * (i1 - i0) / max(voxels, 1.0))
            stats.area_frac = _add_hist(stats.area_frac, np.asarray(fracs, float), AREA_FRAC_EDGES)


# --------------------------------------------------------------------------- gallery selection


@dataclass
class GalleryItem:
    """One gallery figure: an image (2D row or volume) and its selected questions."""

    image_id: str
    split: str
    questions: list[dict]
    row: dict | None = None  # the image-bearing row (pixels + boxes), filled after selection


def _image_config(manifest: Mapping) -> tuple[str, str, str] | None:
    """(image config, question config, id column) of this corpus kind."""
    files = manifest.get("files", {})
    has = {p.split("/", 1)[0] for p in files if p.endswith(".parquet")}
    if "volumes" in has:
        return "volumes", "qa", "volume_id"
    if "alignment" in has:
        return "alignment", "instruct", "image_id"
    if "images" in has:
        return "images", "qa", "image_id"
    return None


def corpus_kind(manifest: Mapping) -> str:
    """``manifest["kind"]`` when present, else inferred from the configs."""
    if manifest.get("kind") in KINDS:
        return manifest["kind"]
    chosen = _image_config(manifest)
    return {"volumes": "volumes", "alignment": "tree", "images": "slices"}.get(
        chosen[0] if chosen else "", "slices")


def _pool_shards(manifest: Mapping, config: str) -> list[str]:
    """The first non-empty shard of each split of ``config``."""
    files = manifest.get("files", {})
    firsts: dict[str, str] = {}
    for rel in config_shards(manifest, config):
        if (files[rel].get("rows") if isinstance(files[rel], Mapping) else None) != 0:
            firsts.setdefault(split_of(rel), rel)
    return [firsts[s] for s in sorted(firsts, key=_split_key)]


QUESTION_COLUMNS = ["qa_id", "split", "task", "subtask", "question_type", "question", "options",
                    "choices", "answer", "answer_text", "answer_box", "answer_value", "answer_unit",
                    "answer_tolerance"]


GALLERY_COLUMNS = {  # image-bearing columns the gallery shows, per corpus kind
    "slices": ["image", "boxes", "width", "height", "modality", "plane", "slice_index", "window", "split"],
    "tree": ["image", "metadata", "conversations", "split"],
    "volumes": ["npy", "boxes3d", "shape", "modality", "split", "study_order"],
}


@dataclass
class GalleryPool:
    """The rows the gallery may show: the head (first ``POOL_ROWS`` rows, ``POOL_VOLUMES`` for
    volumes) of the first non-empty shard of each split of the image-bearing config, read once
    with every column the gallery draws; and, filled by :func:`scan_qa`, every question of
    ``qa_config`` about them."""

    qa_config: str
    id_col: str
    columns: list[str]  # the gallery's columns, id first
    heads: dict[str, pa.Table]  # shard -> its head
    where: dict[str, str]  # image id -> shard
    patients: dict[str, str | None]  # image id -> patient key, when stored
    questions: list[dict] = field(default_factory=list)

    def collect(self, pf: pq.ParquetFile, t: pa.Table) -> None:
        """Add the questions of one shard (``t`` holds its id column) about pool images."""
        mask = pc.is_in(t.column(self.id_col), value_set=pa.array(sorted(self.where), pa.string()))
        if not pc.any(mask).as_py():
            return
        rest = [c for c in _present(pf, QUESTION_COLUMNS) if c not in t.column_names]
        full = t
        for name, column in zip(rest, pf.read(columns=rest).columns):
            full = full.append_column(name, column)
        self.questions.extend(full.filter(mask).to_pylist())
        self.questions.sort(key=lambda r: r["qa_id"])


def gallery_pool(corpus: Corpus, manifest: Mapping, kind: str) -> GalleryPool | None:
    """The gallery's pool (None without an image-bearing config); questions still empty."""
    chosen = _image_config(manifest)
    if chosen is None:
        return None
    image_config, qa_config, id_col = chosen
    size = POOL_VOLUMES if kind == "volumes" else POOL_ROWS
    columns = [id_col] + GALLERY_COLUMNS[kind]
    heads: dict[str, pa.Table] = {}
    where: dict[str, str] = {}
    patients: dict[str, str | None] = {}
    for rel in _pool_shards(manifest, image_config):
        head = heads[rel] = _head(corpus, rel, columns + ["patient_key"], size)
        ids = head.column(id_col).to_pylist()
        keys = head.column("patient_key").to_pylist() if "patient_key" in head.column_names else [None] * len(ids)
        for image_id, patient in zip(ids, keys):
            where.setdefault(image_id, rel)
            patients.setdefault(image_id, patient)
    return GalleryPool(qa_config, id_col, columns, heads, where, patients)


def select_2d(rows: list[dict], id_col: str, size: int = GALLERY_SIZE,
              per_image: int = QUESTIONS_PER_IMAGE) -> list[GalleryItem]:
    """About ``size`` questions, a few per (task, question type), on few images.

    Each (task, question type) group may show ``ceil(size / groups)`` questions.  Images are
    taken greedily: the one whose questions fill most open places (at most ``per_image``,
    distinct groups first, smallest ``qa_id`` first) wins, ties to the smallest image id.
    """
    def group(r):
        return (r["task"] or "", r["question_type"] or "")

    by_image: dict[str, list[dict]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: r["qa_id"]):
        by_image[r[id_col]].append(r)
    groups = {group(r) for r in rows}
    if not groups:
        return []
    need = dict.fromkeys(groups, math.ceil(size / len(groups)))
    items: list[GalleryItem] = []
    total = 0
    remaining = sorted(by_image)
    while total < size and remaining:
        best, best_picks = None, []
        for image_id in remaining:
            picks = _picks(by_image[image_id], need, group, min(per_image, size - total))
            if len(picks) > len(best_picks):
                best, best_picks = image_id, picks
        if best is None:
            break
        remaining.remove(best)
        for r in best_picks:
            need[group(r)] -= 1
        total += len(best_picks)
        best_picks.sort(key=lambda r: (r["task"] or "", QTYPE_ORDER.get(r["question_type"], 9), r["qa_id"]))
        items.append(GalleryItem(best, best_picks[0].get("split") or "", best_picks))
    return items


def _picks(rows: list[dict], need: Mapping, group: Callable, limit: int) -> list[dict]:
    """Questions of one image that fill open places: one per group first, then more."""
    picks: list[dict] = []
    picked: set[int] = set()  # ids of the picked rows (a dict comparison per row was the cost)
    taken: Counter = Counter()
    for distinct in (True, False):
        for r in rows:
            if len(picks) >= limit:
                return picks
            g = group(r)
            if id(r) in picked or taken[g] >= need[g] or (distinct and taken[g]):
                continue
            picks.append(r)
            picked.add(id(r))
            taken[g] += 1
    return picks


def select_volumes(rows: list[dict], patients: Mapping[str, str] | None = None,
                   n_volumes: int = GALLERY_VOLUMES, per_volume: int = QUESTIONS_PER_VOLUME
                   ) -> list[GalleryItem]:
    """Volumes of different patients covering the most tasks (greedy; ties to the smallest
    volume_id); per volume one question per task first, then the smallest qa_ids."""
    patients = patients or {}
    by_volume: dict[str, list[dict]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: r["qa_id"]):
        by_volume[r["volume_id"]].append(r)
    remaining = sorted(by_volume)
    covered: set = set()
    seen_patients: set = set()
    picked: list[str] = []
    while remaining and len(picked) < n_volumes:
        best = max(remaining, key=lambda v: (patients.get(v) not in seen_patients,
                                             len({r["task"] for r in by_volume[v]} - covered),
                                             len(by_volume[v]), _neg(v)))
        picked.append(best)
        remaining.remove(best)
        covered |= {r["task"] for r in by_volume[best]}
        seen_patients.add(patients.get(best))
    items = []
    for v in picked:
        qs = by_volume[v]
        first: dict[str, dict] = {}
        for r in qs:
            first.setdefault(r["task"], r)
        chosen = list(first.values())
        chosen += [r for r in qs if r not in chosen][: max(0, per_volume - len(chosen))]
        chosen = chosen[: max(per_volume, len(first))]
        chosen.sort(key=lambda r: (r["task"] or "", r.get("subtask") or "", r["qa_id"]))
        items.append(GalleryItem(v, qs[0].get("split") or "", chosen))
    return items


def _neg(text: str) -> tuple:
    """Sort key that makes ``max`` prefer the smallest string on ties."""
    return tuple(-ord(c) for c in text)


def attach_rows(items: list[GalleryItem], pool: GalleryPool) -> None:
    """Fill each item's image row from the head of its shard (only those rows converted)."""
    by_shard: dict[str, set] = defaultdict(set)
    for item in items:
        by_shard[pool.where[item.image_id]].add(item.image_id)
    rows: dict[str, dict] = {}
    for rel in sorted(by_shard):
        head = pool.heads[rel]
        head = head.select([c for c in pool.columns if c in head.column_names])
        mask = pc.is_in(head.column(pool.id_col), value_set=pa.array(sorted(by_shard[rel]), pa.string()))
        for r in head.filter(mask).to_pylist():
            rows[r[pool.id_col]] = r
    for item in items:
        item.row = rows.get(item.image_id)


# --------------------------------------------------------------------------- drawing (Pillow)


def label_colours(labels: Iterable[str]) -> dict[str, tuple[int, int, int]]:
    """A saturated colour per label (golden-ratio hues over the sorted labels)."""
    out = {}
    for i, label in enumerate(sorted(set(labels))):
        hue = (0.02 + i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.9, 1.0 if i % 2 == 0 else 0.85)
        out[label] = (round(r * 255), round(g * 255), round(b * 255))
    return out


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def display_scale(width: int, height: int, target: int = GALLERY_PX) -> float:
    """Integer upscale for small images (boxes stay on whole pixels), downscale for large ones."""
    longest = max(width, height, 1)
    if longest <= target:
        return float(max(1, target // longest))
    return target / longest


def scaled_box(box, scale: float, width: int, height: int) -> tuple[int, int, int, int] | None:
    """Outline rectangle (inclusive ends, display pixels) of a stored box (ends exclusive)."""
    x0, y0, x1, y1 = box
    X0, Y0 = math.floor(x0 * scale), math.floor(y0 * scale)
    X1 = min(width, max(X0 + 1, math.ceil(x1 * scale)))
    Y1 = min(height, max(Y0 + 1, math.ceil(y1 * scale)))
    if X0 >= width or Y0 >= height or X1 <= 0 or Y1 <= 0:
        return None
    return max(X0, 0), max(Y0, 0), X1 - 1, Y1 - 1


def to_rgb(img):
    """Any Pillow image as 8-bit RGB (16-bit and float images min-max scaled)."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        img = Image.fromarray(np.rint(arr).astype(np.uint8), "L")
    return img.convert("RGB")


def _font(size: int = 11):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: bitmap font only
        return ImageFont.load_default()


def draw_boxes(img, boxes: list[tuple[str, tuple[int, int, int, int]]],
               colours: Mapping[str, tuple[int, int, int]], *, labels: bool = True,
               target: int = GALLERY_PX):
    """Scale ``img`` for display and outline every ``(label, (x_min, y_min, x_max, y_max))``.

    Boxes are in stored-image pixels, maxima exclusive.  Label texts are drawn
    first and the outlines last (largest box first), so no text hides a box
    border.  Returns ``(RGB image, scale)``.
    """
    from PIL import Image, ImageDraw

    img = to_rgb(img)
    w, h = img.size
    scale = display_scale(w, h, target)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.NEAREST if scale >= 1 else Image.LANCZOS
    out = img.resize(size, resample)
    draw = ImageDraw.Draw(out)
    width = 2 if scale >= 3 else 1
    rects = []
    for label, box in boxes:
        rect = scaled_box(box, scale, *size)
        if rect is not None:
            rects.append((label, rect))
    if labels:
        font = _font()
        for label, (X0, Y0, _, _) in rects:
            tx0, ty0, tx1, ty1 = draw.textbbox((0, 0), label, font=font)
            tw, th = tx1 - tx0, ty1 - ty0
            ty = Y0 - th - 3 if Y0 - th - 3 >= 0 else min(Y0 + width + 1, max(0, size[1] - th - 2))
            tx = min(X0, max(0, size[0] - tw - 2))
            draw.rectangle([tx, ty, tx + tw + 1, ty + th + 2], fill=(0, 0, 0))
            draw.text((tx + 1 - tx0, ty + 1 - ty0), label, fill=colours[label], font=font)
    for label, rect in sorted(rects, key=lambda lr: (-(lr[1][2] - lr[1][0]) * (lr[1][3] - lr[1][1]),
                                                      lr[0])):
        draw.rectangle(rect, outline=colours[label], width=width)
    return out, scale


def png_bytes(img) -> bytes:
    """PNG at zlib's default level: ``optimize`` took 5x the time for 2-3 % fewer bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


#: Part of a gallery view's cache key: bump with any change to :func:`draw_boxes` that can
#: change its pixels (the library versions, the image, boxes and colours are hashed anyway).
VIEW_VERSION = 1


def boxed_view(src, data: bytes, boxes, colours: Mapping, cache=None) -> tuple[bytes, float]:
    """PNG of ``src`` (decoded from ``data``) scaled for the gallery with ``boxes`` drawn,
    and the scale; from ``cache`` (the report's :class:`ChartCache`) when an identical view
    was drawn before — a regenerated corpus shows the same images."""
    scale = display_scale(*src.size)
    key = None
    if cache is not None:
        spec = {"view": VIEW_VERSION, "libraries": library_versions(), "px": GALLERY_PX,
                "image": hashlib.sha256(data).hexdigest(),
                "boxes": [[label, [int(v) for v in box]] for label, box in boxes],
                "colours": {label: list(colours[label]) for label, _ in boxes}}
        key = "view-" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode("utf-8")).hexdigest()
        png = cache.get(key)
        if png is not None:
            return png, scale
    shown, scale = draw_boxes(src, boxes, colours)
    png = png_bytes(shown)
    if cache is not None:
        cache.put(key, png)
    return png, scale


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def volume_slice(npy: bytes) -> tuple[np.ndarray, int]:
    """The middle axial slice of a stored volume (``[k, j, i]`` in [0, 1]) as uint8, and its k."""
    arr = np.load(io.BytesIO(npy), allow_pickle=False)
    k = arr.shape[0] // 2
    plane = np.nan_to_num(arr[k].astype(np.float32), nan=0.0)
    return np.clip(np.rint(plane * 255.0), 0, 255).astype(np.uint8), k


# --------------------------------------------------------------------------- charts (matplotlib, cached)

# Part of every chart's cache key: bump it with any change to the drawing code below that can
# change a chart's pixels (the specs, the constants below, DPI and the library versions are
# hashed anyway).  A forgotten bump serves charts drawn by the old code.
CHART_VERSION = 2
CHART_RC = {"font.size": 9, "axes.titlesize": 10, "font.family": "DejaVu Sans"}
CHART_LIBRARIES = ("matplotlib", "Pillow", "numpy")
CACHE_DIR = ".radvqa/report-cache"  # build state: <key>.png, one per chart of the last report
PAD_PT = 4.0  # around the figure and between panels, in points
PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6",
           "#9d755d", "#bab0ac", "#eeca3b"]
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


@dataclass(frozen=True)
class Chart:
    """One chart as plain data: ``kind`` names its drawing function in :data:`DRAW`; ``spec``
    holds everything that function draws (values, labels as shown, titles, figure size in
    inches), JSON-serialisable.

    The spec is the whole input of the drawing: :meth:`key` hashes it, so a value drawn but
    left out of it would let a cached chart go stale.
    """

    kind: str
    spec: dict

    def __post_init__(self):
        if self.kind not in DRAW:
            raise ValueError(f"chart: kind {self.kind!r} is not one of {sorted(DRAW)}")

    def key(self) -> str:
        """sha256 of the chart version, the drawing libraries' versions, the drawing constants
        (DPI, rc, padding, palette) and the spec."""
        payload = {"chart": CHART_VERSION, "libraries": library_versions(), "dpi": DPI,
                   "rc": CHART_RC, "pad_pt": PAD_PT, "palette": PALETTE, "kind": self.kind,
                   "spec": self.spec}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that draw and encode charts (no import needed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in CHART_LIBRARIES:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "missing"
    return out


class ChartCache:
    """Chart PNGs by :meth:`Chart.key` under ``OUTPUT/.radvqa/report-cache/<key>.png``.

    A hit needs neither matplotlib nor drawing.  Entries are written atomically (temporary
    name, then rename) and read back only when whole (PNG signature and ``IEND``), so a
    killed write is a miss, never a broken chart.  :meth:`prune` deletes every entry the
    current report did not use: a corpus folder keeps only its current charts.  A cache that
    cannot be read or written costs time, never the report.
    """

    def __init__(self, corpus: Corpus, log: Callable[[str], None] | None = None):
        self.corpus = corpus
        self.log = log or (lambda msg: None)
        self.used: set[str] = set()
        self.hits = 0
        self.misses = 0
        self._stored: set[str] | None = None

    def _names(self) -> set[str]:
        if self._stored is None:  # one listing per report, not one existence check per chart
            try:
                self._stored = set(self.corpus.listdir(CACHE_DIR))
            except OSError as err:
                self.log(f"  report cache: cannot list {CACHE_DIR}: {err}")
                self._stored = set()
        return self._stored

    def get(self, key: str) -> bytes | None:
        self.used.add(key)
        name = f"{key}.png"
        if name not in self._names():
            self.misses += 1
            return None
        try:
            data = self.corpus.read(f"{CACHE_DIR}/{name}")
        except OSError:
            data = b""
        if not (data.startswith(PNG_SIGNATURE) and data.endswith(PNG_END)):
            self.misses += 1
            return None
        self.hits += 1
        return data

    def put(self, key: str, png: bytes) -> None:
        self.used.add(key)
        try:
            self.corpus.write(f"{CACHE_DIR}/{key}.png", png)
        except OSError as err:
            self.log(f"  report cache: cannot store {key}.png: {err}")
            return
        self._names().add(f"{key}.png")

    def prune(self) -> list[str]:
        """Delete every cache file the charts rendered since construction did not use."""
        keep = {f"{key}.png" for key in self.used}
        stale = sorted(n for n in self._names() if n not in keep)
        if stale:
            try:
                self.corpus.delete([f"{CACHE_DIR}/{n}" for n in stale])
            except OSError as err:
                self.log(f"  report cache: cannot delete stale entries: {err}")
                return []
            self._stored = self._names() - set(stale)
        return stale


class Plots:
    """Chart PNGs: from the cache when a chart's key is stored there, else drawn (and stored)."""

    def __init__(self, cache: ChartCache | None = None):
        self.cache = cache

    def render(self, chart: Chart) -> bytes:
        if self.cache is None:
            return render_chart(chart)
        key = chart.key()
        png = self.cache.get(key)
        if png is None:
            png = render_chart(chart)
            self.cache.put(key, png)
        return png


def render_chart(chart: Chart) -> bytes:
    """Draw ``chart`` once on a fixed layout and encode it as PNG (RGB, no metadata).

    Matplotlib is imported here, on the first cache miss only.  The figure uses the default
    style, :data:`CHART_RC` and the Agg canvas; axes are placed by :func:`_arrange` from the
    measured sizes of their labels, so no layout engine draws the figure a second time.
    """
    import matplotlib
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    with _collector_paused(), matplotlib.style.context("default"), matplotlib.rc_context(CHART_RC):
        fig = Figure(figsize=tuple(chart.spec["size"]), dpi=DPI)
        canvas = FigureCanvasAgg(fig)
        grid = DRAW[chart.kind](fig, chart.spec)
        _arrange(fig, canvas.get_renderer(), grid)
        canvas.draw()
        img = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


@contextlib.contextmanager
def _collector_paused():
    """No cyclic garbage collection while one figure is drawn.

    A figure allocates ~10^5 short-lived objects, which start full collections over every
    live object of the process (~2·10^5 in a build, with Beam loaded): 10-15 % of a chart's
    time.  The figure's cycles are collected once the collector runs again.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class Grid:
    """Axes of a figure on a ``rows`` × ``cols`` grid, with an optional figure title and x label."""

    axes: list  # (Axes, row, column)
    rows: int = 1
    cols: int = 1
    header: object = None  # Text above every panel
    footer: object = None  # Text below every panel


def _arrange(fig, renderer, grid: Grid) -> None:
    """Place ``grid``'s axes: equal panels, each column and row as wide as its labels need.

    What each panel needs outside its frame (tick labels, axis labels, title, a legend placed
    right of the axes) is measured with the canvas's renderer; the measurements stay cached
    for the single draw that follows.  Numeric ticks depend on a panel's size, so the panels
    are measured again where they were placed, until nothing moves (at most three passes).
    Sizes in pixels.
    """
    width, height = fig.bbox.width, fig.bbox.height
    pt = fig.dpi / 72.0
    pad = PAD_PT * pt
    head = foot = pad
    if grid.header is not None:
        head += grid.header.get_window_extent(renderer).height + pad
        grid.header.set_y(1.0 - pad / height)
    if grid.footer is not None:
        foot += grid.footer.get_window_extent(renderer).height + pad
        grid.footer.set_y(pad / height)
    placed = None
    for _ in range(3):
        need = [tuple(round(v, 2) for v in _outside(ax, renderer, pt, width / grid.cols))
                for ax, _, _ in grid.axes]
        if need == placed:
            return
        placed = need
        left, right = [0.0] * grid.cols, [0.0] * grid.cols
        top, bottom = [0.0] * grid.rows, [0.0] * grid.rows
        for (_, r, c), (lo, ro, bo, to, _) in zip(grid.axes, need):
            left[c], right[c] = max(left[c], lo), max(right[c], ro)
            bottom[r], top[r] = max(bottom[r], bo), max(top[r], to)
        panel_w = (width - 2 * pad - sum(left) - sum(right) - (grid.cols - 1) * pad) / grid.cols
        for (_, _, c), n in zip(grid.axes, need):  # a title wider than its panel widens the margins
            extra = (n[4] - panel_w) / 2
            left[c], right[c] = max(left[c], extra), max(right[c], extra)
        panel_w = max(1.0, (width - 2 * pad - sum(left) - sum(right) - (grid.cols - 1) * pad) / grid.cols)
        panel_h = max(1.0, (height - head - foot - sum(top) - sum(bottom) - (grid.rows - 1) * pad)
                      / grid.rows)
        for ax, r, c in grid.axes:
            x0 = pad + sum(left[:c]) + sum(right[:c]) + c * (panel_w + pad) + left[c]
            y1 = height - head - sum(top[:r]) - sum(bottom[:r]) - r * (panel_h + pad) - top[r]
            ax.set_position([x0 / width, (y1 - panel_h) / height, panel_w / width, panel_h / height])


def _outside(ax, renderer, pt: float, cell_w: float) -> tuple[float, float, float, float, float]:
    """Pixels ``ax`` needs left, right, below and above its frame, and its title's width."""
    import matplotlib as mpl

    rc = mpl.rcParams

    def size(text):
        if not text.get_visible() or not text.get_text():
            return 0.0, 0.0
        box = text.get_window_extent(renderer)
        return box.width, box.height

    def tick_labels(axis, ends_only: bool):
        lo, hi = sorted(axis.get_view_interval())
        eps = (hi - lo) * 1e-9
        axis.get_majorticklabels()  # sets the labels of the current ticks
        shown = [t.label1 for t in axis.get_major_ticks()
                 if lo - eps <= t.get_loc() <= hi + eps and t.label1.get_visible() and t.label1.get_text()]
        return [size(t) for t in (shown[:1] + shown[-1:] if ends_only and shown else shown)]

    # x tick labels share one line height: only the outermost ones (overhang) need measuring
    ys, xs = tick_labels(ax.yaxis, False), tick_labels(ax.xaxis, True)
    left = max((w for w, _ in ys), default=0.0)
    if left:
        left += (rc["ytick.major.size"] + rc["ytick.major.pad"]) * pt
    label_w, _ = size(ax.yaxis.label)
    if label_w:
        left += label_w + rc["axes.labelpad"] * pt
    bottom = max((h for _, h in xs), default=0.0)
    if bottom:
        bottom += (rc["xtick.major.size"] + rc["xtick.major.pad"]) * pt
    _, label_h = size(ax.xaxis.label)
    if label_h:
        bottom += label_h + rc["axes.labelpad"] * pt
    overhang = max((w for w, _ in xs), default=0.0) / 2  # end tick labels are centred on the ends
    left, right = max(left, overhang), overhang
    title_w, title_h = size(ax.title)
    top = title_h + rc["axes.titlepad"] * pt if title_h else 0.0
    legend = ax.get_legend()
    if legend is not None:  # placed at x = 1.01 (axes fraction) + borderaxespad, centre left
        right = max(right, 0.01 * cell_w + legend.borderaxespad * legend.prop.get_size_in_points() * pt
                    + legend.get_window_extent(renderer).width)
    return left, right, bottom, top, title_w


def _clip(text, n: int) -> str:
    text = str(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def _short(text, n: int = 32) -> str:
    """Shortened text for a plot label; ``$`` escaped so corpus text never turns into mathtext."""
    return _clip(text, n).replace("$", r"\$")


def _plain(value):
    """A number as a JSON-ready Python int or float (numpy scalars included)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    return float(value)


def barh_chart(rows: list[tuple[str, float]], title: str, xlabel: str, fmt: str = "{:,.0f}") -> Chart:
    return Chart("barh", {"size": [9, 0.8 + 0.24 * max(1, len(rows))],
                          "labels": [_short(r[0], 48) for r in rows],
                          "values": [_plain(r[1]) for r in rows],
                          "title": title, "xlabel": xlabel, "fmt": fmt})


def _draw_barh(fig, spec) -> Grid:
    ax = fig.add_subplot()
    n = len(spec["labels"])
    values = spec["values"][::-1]
    bars = ax.barh(range(n), values, color=PALETTE[0])
    ax.set_yticks(range(n), spec["labels"][::-1])
    ax.bar_label(bars, labels=[spec["fmt"].format(v) for v in values], padding=3, fontsize=8)
    ax.set_title(spec["title"])
    ax.set_xlabel(spec["xlabel"])
    ax.margins(x=0.12)
    return Grid([(ax, 0, 0)])


def stacked_chart(categories: list[str], series: list[tuple[str, list[float]]], title: str,
                  xlabel: str) -> Chart:
    return Chart("stacked", {"size": [9, 1.0 + 0.28 * max(1, len(categories))],
                             "categories": [_short(c, 48) for c in categories],
                             "series": [[_short(name, 24), [_plain(v) for v in values]]
                                        for name, values in series],
                             "title": title, "xlabel": xlabel})


def _draw_stacked(fig, spec) -> Grid:
    ax = fig.add_subplot()
    n = len(spec["categories"])
    left = np.zeros(n)
    for i, (name, values) in enumerate(spec["series"]):
        vals = np.asarray(values, float)[::-1]
        ax.barh(range(n), vals, left=left, label=name, color=PALETTE[i % len(PALETTE)])
        left += vals
    ax.set_yticks(range(n), spec["categories"][::-1])
    ax.set_title(spec["title"])
    ax.set_xlabel(spec["xlabel"])
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return Grid([(ax, 0, 0)])


def shares_chart(yes_rows: list[tuple[str, float, float]], mc_rows: list[tuple[str, list[float]]],
                 letters: list[str], config: str) -> Chart:
    """Closed questions: yes/no share per task; multiple choice: share of each correct letter."""
    panels = []
    if yes_rows:
        panels.append({"names": [_short(r[0], 30) for r in yes_rows],
                       "parts": [["yes", [_plain(r[1]) for r in yes_rows]],
                                 ["no", [_plain(r[2]) for r in yes_rows]]],
                       "uniform": 50, "title": f"{config}: closed, yes / no share"})
    if mc_rows:
        panels.append({"names": [_short(r[0], 30) for r in mc_rows],
                       "parts": [[x, [_plain(r[1][i]) for r in mc_rows]] for i, x in enumerate(letters)],
                       "uniform": 100.0 / max(1, len(letters)),
                       "title": f"{config}: multiple choice, correct letter share"})
    return Chart("shares", {"size": [10, 1.3 + 0.3 * max(len(yes_rows), len(mc_rows))],
                            "panels": panels, "xlabel": "% of questions (dashed: uniform)"})


def _draw_shares(fig, spec) -> Grid:
    grid = Grid([], cols=len(spec["panels"]))
    for idx, panel in enumerate(spec["panels"]):
        ax = fig.add_subplot(1, len(spec["panels"]), idx + 1)
        n = len(panel["names"])
        left = np.zeros(n)
        for i, (name, vals) in enumerate(panel["parts"]):
            v = np.asarray(vals, float)[::-1]
            ax.barh(range(n), v, left=left, color=PALETTE[i % 8], label=name)
            left += v
        ax.set_yticks(range(n), panel["names"][::-1])
        ax.set_xlim(0, 100)
        ax.axvline(panel["uniform"], color="#222", lw=0.9, ls="--")
        ax.set_title(panel["title"])
        ax.set_xlabel(spec["xlabel"])
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
        grid.axes.append((ax, 0, idx))
    return grid


def answers_chart(groups: list[tuple[str, AnswerStats]]) -> Chart:
    """One small panel per (task, question type): the top answers' shares, or a note when the
    group's answers are open-ended (more distinct answers than half its questions)."""
    panels = []
    for name, st in groups:
        top = _top(st.answers, TOP_ANSWERS)
        distinct = len(st.answers)
        panel = {"title": f"{_short(name, 38)} (n={st.n:,})"}
        if st.n >= 20 and distinct > 0.5 * st.n:
            panel["note"] = (f"open-ended:\n{distinct:,}{'+' if st.pruned else ''} distinct "
                             f"answers\namong {st.n:,}")
        else:
            panel["labels"] = [_short(a, 22) for a, _ in top]
            panel["shares"] = [100.0 * n / max(1, st.n) for _, n in top]
        panels.append(panel)
    return Chart("answers", {"size": [10, 2.1 * math.ceil(len(groups) / 3)], "cols": 3, "panels": panels,
                             "xlabel": "% of the group's questions (top answers)"})


def _draw_answers(fig, spec) -> Grid:
    cols = spec["cols"]
    rows = math.ceil(len(spec["panels"]) / cols)
    grid = Grid([], rows=rows, cols=cols)
    for idx, panel in enumerate(spec["panels"]):
        ax = fig.add_subplot(rows, cols, idx + 1)
        if "note" in panel:
            ax.text(0.5, 0.5, panel["note"], ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            n = len(panel["labels"])
            ax.barh(range(n), panel["shares"][::-1], color=PALETTE[0])
            ax.set_yticks(range(n), panel["labels"][::-1], fontsize=7.5)
            ax.set_xlim(0, 100)
            ax.tick_params(axis="x", labelsize=7.5)
        ax.set_title(panel["title"], fontsize=8.5)
        grid.axes.append((ax, idx // cols, idx % cols))
    grid.footer = fig.supxlabel(spec["xlabel"], fontsize=8.5, va="bottom")
    return grid


def hist_chart(panels: list[tuple[np.ndarray, np.ndarray, str, str, bool]], title: str) -> Chart:
    """Histogram panels from precomputed ``(counts, edges, xlabel, title, log_x)``, each cut to
    its occupied range."""
    out = []
    for counts, edges, xlabel, sub, log_x in panels:
        nonzero = np.flatnonzero(counts)
        if nonzero.size:
            first, last = int(nonzero[0]), int(nonzero[-1]) + 1
            counts, edges = counts[first:last], edges[first:last + 1]
        out.append({"counts": [_plain(c) for c in counts], "edges": [_plain(e) for e in edges],
                    "xlabel": xlabel, "title": sub, "log_x": bool(log_x)})
    return Chart("hist", {"size": [9, 3.0], "title": title, "panels": out})


def _draw_hist(fig, spec) -> Grid:
    grid = Grid([], cols=len(spec["panels"]))
    grid.header = fig.suptitle(spec["title"], fontsize=10, va="top")
    for idx, panel in enumerate(spec["panels"]):
        ax = fig.add_subplot(1, len(spec["panels"]), idx + 1)
        ax.stairs(panel["counts"], panel["edges"], fill=True, color=PALETTE[0])
        if panel["log_x"]:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(_log_formatter())
            ax.xaxis.set_minor_formatter(_log_formatter())
        ax.set_xlabel(panel["xlabel"])
        ax.set_ylabel("boxes")
        ax.set_title(panel["title"], fontsize=9)
        grid.axes.append((ax, 0, idx))
    return grid


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _log_formatter():
    """Matplotlib's log-axis tick labels (``10^k``, ``c×10^k``) written as plain Unicode.

    The labels are the default formatter's; only their mathtext markup is rewritten, which
    spares building matplotlib's mathtext parser (a large share of a cold chart's time).
    """
    from matplotlib.ticker import LogFormatterSciNotation

    class UnicodeLogFormatter(LogFormatterSciNotation):
        def __call__(self, x, pos=None):
            label = super().__call__(x, pos)
            m = re.fullmatch(r"\$\\mathdefault\{(.*)\}\$", label)
            if not m:
                return label
            body = m.group(1).replace(r"\times", "×")
            return re.sub(r"\^\{(-?\d+)\}", lambda e: e.group(1).translate(_SUPERSCRIPT), body)

    return UnicodeLogFormatter()


def scatter_chart(points: Counter, title: str, xlabel: str, ylabel: str) -> Chart:
    items = sorted(points.items(), key=lambda kv: (-kv[1], kv[0]))
    return Chart("scatter", {"size": [6, 4.2],
                             "points": [[_plain(x), _plain(y), _plain(n)] for (x, y), n in items],
                             "title": title, "xlabel": xlabel, "ylabel": ylabel})


def _draw_scatter(fig, spec) -> Grid:
    ax = fig.add_subplot()
    points = spec["points"]
    total = max(1, sum(n for _, _, n in points))
    ax.scatter([p[0] for p in points], [p[1] for p in points],
               s=[20 + 600 * n / total for _, _, n in points], alpha=0.6, color=PALETTE[0],
               edgecolors="#1f3b5a")
    for x, y, n in points[:6]:
        ax.annotate(f"{x:g}×{y:g} ({n:,})", (x, y), textcoords="offset points", xytext=(6, 6),
                    fontsize=8)
    ax.set_xlabel(spec["xlabel"])
    ax.set_ylabel(spec["ylabel"])
    ax.set_title(spec["title"])
    ax.margins(0.25)
    return Grid([(ax, 0, 0)])


DRAW: dict[str, Callable] = {"barh": _draw_barh, "stacked": _draw_stacked, "shares": _draw_shares,
                             "answers": _draw_answers, "hist": _draw_hist, "scatter": _draw_scatter}


# --------------------------------------------------------------------------- HTML helpers

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 margin:0 auto;max-width:1200px;padding:0 18px 48px;color:#1d2430;background:#fff}
h1{font-size:24px;margin:22px 0 4px}h2{border-bottom:2px solid #dde3ea;padding-bottom:4px;margin-top:38px}
h3{margin:22px 0 6px;font-size:16px}code{background:#f3f6f9;padding:0 3px;border-radius:3px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
th,td{border:1px solid #dde3ea;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f6f9}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
img.plot{max-width:100%;height:auto;display:block;margin:8px 0 22px;border:1px solid #eef1f4}
.v-ok{background:#d6f0da}td.best{font-weight:600;text-decoration:underline}
.wide{overflow-x:auto;max-width:100%}.wide table{font-size:12px}.wide td,.wide th{padding:2px 5px}.v-warn{background:#ffefbf}.v-fail{background:#ffd3d3;font-weight:600}
nav{position:sticky;top:0;background:#fff;padding:8px 0;border-bottom:1px solid #dde3ea;z-index:1}
nav a{margin-right:14px}.note{color:#566170}dl.meta{display:grid;grid-template-columns:max-content 1fr;
 gap:2px 14px;margin:10px 0}dl.meta dt{font-weight:600}dl.meta dd{margin:0;word-break:break-all}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:18px}
figure.item{margin:0;border:1px solid #dde3ea;border-radius:6px;padding:10px;background:#fafbfc}
figure.item .views{display:flex;flex-wrap:wrap;gap:8px}
figure.item img{max-width:100%;height:auto;background:#000}
figure.item .tag{font-size:12px;color:#566170;margin:6px 0}
ul.legend{columns:2;font-size:11.5px;list-style:none;padding:0;margin:6px 0}
ul.legend li{break-inside:avoid}.sw{display:inline-block;width:10px;height:10px;margin-right:5px;
 border:1px solid #0004;vertical-align:-1px}
ol.qa{padding-left:20px;margin:6px 0}ol.qa>li{margin:8px 0}.question{margin:0;font-weight:600}
ol.options{margin:2px 0;padding-left:22px}ol.options li.correct{color:#12692b;font-weight:600}
.answer{margin:2px 0}.answer b{color:#12692b}.caption{font-style:italic;color:#374151;margin:4px 0}
"""


def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def table(headers: list[str], rows: list[list], numeric: Iterable[int] = (),
          classes: Mapping[tuple[int, int], str] | None = None) -> str:
    numeric = set(numeric)
    out = ["<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr></thead><tbody>"]
    for r, row in enumerate(rows):
        cells = []
        for c, value in enumerate(row):
            cls = []
            if c in numeric:
                cls.append("n")
            if classes and (r, c) in classes:
                cls.append(classes[(r, c)])
            attr = f' class="{" ".join(cls)}"' if cls else ""
            cells.append(f"<td{attr}>{esc(value)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def img_tag(png: bytes, alt: str, cls: str = "plot", attrs: str = "") -> str:
    w, h = png_size(png)
    return (f'<img class="{cls}" src="{data_uri(png)}" alt="{esc(alt)}" width="{w}" height="{h}"'
            f"{attrs}>")


def _top(counter: Mapping, n: int) -> list[tuple]:
    return sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0])))[:n]


def _n(x) -> str:
    return f"{int(x):,}"


def _pct(x) -> str:
    return "—" if x is None else f"{100.0 * float(x):.1f} %"


def _safe_reason(reason) -> str:
    """A reason code, or a placeholder when the text could carry a path or free text."""
    text = "" if reason is None else str(reason)
    return text if _REASON.match(text) and "/" not in text else "(withheld: not a reason code)"


# --------------------------------------------------------------------------- sections


def header_section(manifest: Mapping, kind: str) -> str:
    recipe = manifest.get("recipe", {})
    content = recipe.get("content", {}) if isinstance(recipe, Mapping) else {}
    name = recipe.get("name", "?") if isinstance(recipe, Mapping) else str(recipe)
    # the report itself is left out, so a report written during the build (before the
    # manifest lists it) and one rebuilt later with `radvqa report` are the same bytes
    files = {p: f for p, f in manifest.get("files", {}).items() if p != REPORT}
    size = sum(int(f.get("bytes") or 0) for f in files.values())
    versions = manifest.get("versions", {})
    meta = [
        ("recipe", f"{name} (version {content.get('version', '?')}, seed {manifest.get('seed', '?')})"),
        ("fingerprint", manifest.get("fingerprint", "?")),
        ("kind", KINDS[kind]),
        ("input cases", _n(manifest.get("inputs", {}).get("cases", 0))),
        ("input fingerprint", manifest.get("inputs", {}).get("fingerprint", "?")),
        ("files", f"{len(files):,} files besides this report, {size / 1e6:,.2f} MB "
                  "(manifest.json lists each with sha256)"),
        ("versions", ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))),
    ]
    desc = (content.get("description") or "").strip()
    out = [f"<h1>radvqa corpus report — recipe <code>{esc(name)}</code></h1>"]
    if desc:
        out.append(f'<p class="note">{esc(desc)}</p>')
    out.append('<dl class="meta">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in meta)
               + "</dl>")
    return "\n".join(out)


def build_section(manifest: Mapping) -> str:
    counts = manifest.get("counts", {})
    rows = []
    for stage in sorted(counts, key=lambda s: (STAGE_ORDER.get(s, 9), s)):
        c = counts[stage]
        reasons = ", ".join(f"{_safe_reason(k)}: {v:,}" for k, v in sorted(c.get("rejected_by_reason", {}).items()))
        excluded = ", ".join(f"{_safe_reason(k)}: {v:,}" for k, v in sorted(c.get("excluded_by_recipe", {}).items()))
        rows.append([stage, _n(c.get("inputs", 0)), _n(c.get("accepted", 0)), _n(c.get("rejected", 0)),
                     reasons or "—", excluded or "—"])
    out = ['<section id="build"><h2>Build accounting</h2>',
           '<p class="note">Per stage: <code>inputs = accepted + rejected</code>. Stages count their own '
           "units: cases for discover/read/extract, images or volumes for qa.</p>",
           table(["stage", "inputs", "accepted", "rejected", "rejected by reason", "excluded by recipe"],
                 rows, numeric=(1, 2, 3))]
    unknown = manifest.get("labels_unknown_to_pools") or []
    if unknown:
        out.append(f'<p class="note">Labels unknown to the distractor pools (distractors drawn from '
                   f"their own label table): {esc(', '.join(unknown))}</p>")
    out.append("</section>")
    return "\n".join(out)


def counts_section(manifest: Mapping, stats: Stats, kind: str, plots: Plots, qa_configs: list[str]) -> str:
    out = ['<section id="counts"><h2>Counts</h2>', "<h3>Rows per config and split</h3>"]
    files = manifest.get("files", {})
    per: Counter = Counter()
    shards_n: Counter = Counter()
    configs, splits = set(), set()
    for rel, f in files.items():
        if not rel.endswith(".parquet"):
            continue
        config, split = rel.split("/", 1)[0], split_of(rel)
        per[(config, split)] += int(f.get("rows") or 0)
        shards_n[(config, split)] += 1
        configs.add(config)
        splits.add(split)
    splits_sorted = sorted(splits, key=_split_key)
    rows = []
    for config in sorted(configs):
        rows.append([config] + [f"{per[(config, s)]:,} ({shards_n[(config, s)]})" if shards_n[(config, s)]
                                else "—" for s in splits_sorted]
                    + [_n(sum(per[(config, s)] for s in splits_sorted))])
    out.append(table(["config"] + [f"{s} (shards)" for s in splits_sorted] + ["total rows"], rows,
                     numeric=range(1, len(splits_sorted) + 2)))
    bars = [(f"{c} / {s}", per[(c, s)]) for c in sorted(configs) for s in splits_sorted if shards_n[(c, s)]]
    if bars:
        out.append(img_tag(plots.render(barh_chart(bars, "Rows per config and split", "rows")),
                           "bar chart: rows per config and split"))
    msplits = manifest.get("splits") or {}
    if msplits:
        out.append("<h3>Cases per split</h3>")
        srows = [[s, _n(v.get("cases", 0)), _n(v.get("images", 0)), _n(v.get("qa", 0)), _n(v.get("shards", 0))]
                 for s, v in sorted(msplits.items(), key=lambda kv: _split_key(kv[0]))]
        out.append(table(["split", "cases", "images / volumes", "questions", "shards"], srows, numeric=(1, 2, 3, 4)))
    bench = manifest.get("benchmark")
    if isinstance(bench, Mapping):
        comp = bench.get("composition") or {}
        out.append(f'<p class="note">Benchmark: {_n(bench.get("images", 0))} test images, '
                   f'{_n(bench.get("rows", 0))} questions ('
                   + esc(", ".join(f"{k}: {v:,}" for k, v in sorted(comp.items())))
                   + f'), {_n(bench.get("strata", 0))} strata.</p>')

    for config in qa_configs:
        groups = stats.qa_groups.get(config)
        if not groups:
            continue
        out.append(f"<h3>Questions per task and question type — <code>{esc(config)}</code></h3>")
        by_tq: Counter = Counter()
        by_split: dict = defaultdict(Counter)
        for (split, task, qtype, _), n in groups.items():
            by_tq[(task, qtype)] += n
            by_split[(task, qtype)][split] += n
        qtypes = sorted({q for _, q in by_tq}, key=lambda q: (QTYPE_ORDER.get(q, 9), str(q)))
        tasks = sorted({t for t, _ in by_tq}, key=str)
        split_names = sorted({s for (s, *_rest) in groups}, key=_split_key)
        rows = []
        for task, qtype in sorted(by_tq, key=lambda k: (str(k[0]), QTYPE_ORDER.get(k[1], 9), str(k[1]))):
            rows.append([task, qtype] + [_n(by_split[(task, qtype)][s]) for s in split_names]
                        + [_n(by_tq[(task, qtype)])])
        out.append(table(["task", "question type"] + split_names + ["total"], rows,
                         numeric=range(2, len(split_names) + 3)))
        series = [(q, [by_tq[(t, q)] for t in tasks]) for q in qtypes]
        out.append(img_tag(plots.render(stacked_chart(tasks, series, f"{config}: questions per task",
                                                       "questions")),
                           f"stacked bar chart: {config} questions per task and question type"))
        subtasks = Counter()
        for (_, task, qtype, subtask), n in groups.items():
            if subtask is not None:
                subtasks[(task, subtask, qtype)] += n
        if subtasks:
            out.append(f"<h3>Questions per task and subtask — <code>{esc(config)}</code></h3>")
            srows = [[t, s, q, _n(n)] for (t, s, q), n in sorted(subtasks.items(), key=lambda kv: tuple(map(str, kv[0])))]
            out.append(table(["task", "subtask", "question type", "questions"], srows, numeric=(3,)))
            merged: Counter = Counter()
            for (t, s, _), n in subtasks.items():
                merged[f"{t} / {s}"] += n
            bars = sorted(merged.items(), key=lambda kv: kv[0])
            out.append(img_tag(plots.render(barh_chart(bars, f"{config}: questions per task / subtask",
                                                        "questions")),
                               f"bar chart: {config} questions per task and subtask"))
    out.append(region_section(stats, kind, plots))
    out.append("</section>")
    return "\n".join(out)


def region_section(stats: Stats, kind: str, plots: Plots) -> str:
    out = []
    if kind == "tree":
        out.append("<h3>Images per location (region) and modality</h3>")
        by_loc: dict = defaultdict(Counter)
        for (_, modality, location), n in stats.images.items():
            by_loc[location][modality] += n
        modalities = sorted({m for c in by_loc.values() for m in c}, key=str)
        locs = sorted(by_loc, key=lambda loc: (-sum(by_loc[loc].values()), str(loc)))
        rows = [[loc] + [_n(by_loc[loc][m]) for m in modalities] + [_n(sum(by_loc[loc].values())),
                _pct(stats.abnormal[loc] / max(1, sum(by_loc[loc].values())))] for loc in locs]
        out.append(table(["location"] + modalities + ["images", "abnormal"], rows,
                         numeric=range(1, len(modalities) + 3)))
        series = [(m, [by_loc[loc][m] for loc in locs]) for m in modalities]
        out.append(img_tag(plots.render(stacked_chart([str(x) for x in locs], series,
                                                       "Images per location and modality", "images")),
                           "stacked bar chart: images per location and modality"))
        if stats.pathologies:
            out.append("<h3>Images per location and label (pathology)</h3>")
            top = _top(stats.pathologies, TOP_TABLE)
            rows = [[loc, path, _n(n)] for (loc, path), n in top]
            out.append(table(["location", "label", "images"], rows, numeric=(2,)))
            if len(stats.pathologies) > TOP_TABLE:
                out.append(f'<p class="note">Top {TOP_TABLE} of {len(stats.pathologies):,} '
                           "location/label pairs.</p>")
        return "\n".join(out)
    title = "Images per plane and modality" if kind == "slices" else "Volumes per modality"
    out.append(f"<h3>{title}</h3>")
    if kind == "slices":
        out.append('<p class="note">A slice\'s body region is not stored per structure; images are '
                   "counted by plane and modality, and boxes by structure label below.</p>")
    by: dict = defaultdict(Counter)
    for (split, modality, plane), n in stats.images.items():
        by[(modality, plane)][split] += n
    split_names = sorted({s for c in by.values() for s in c}, key=_split_key)
    keys_sorted = sorted(by, key=lambda k: tuple(map(str, k)))
    rows = [[m, p] + [_n(by[(m, p)][s]) for s in split_names] + [_n(sum(by[(m, p)].values()))]
            for m, p in keys_sorted]
    out.append(table(["modality", "plane" if kind == "slices" else "kind"] + split_names + ["total"],
                     rows, numeric=range(2, len(split_names) + 3)))
    if keys_sorted:
        series = [(s, [by[k][s] for k in keys_sorted]) for s in split_names]
        out.append(img_tag(plots.render(stacked_chart([f"{m} {p}" for m, p in keys_sorted], series,
                                                       title + " (stacked by split)", "rows")),
                           f"stacked bar chart: {title.lower()}"))
    if stats.body_parts and any(k for k in stats.body_parts):
        rows = [[k or "(not recorded)", _n(n)] for k, n in _top(stats.body_parts, TOP_TABLE)]
        out.append("<h3>Images per body part (DICOM header, when recorded)</h3>")
        out.append(table(["body part", "images"], rows, numeric=(1,)))
    if stats.box_labels:
        what = "Boxes" if kind == "slices" else "3D boxes"
        out.append(f"<h3>{what} per structure label</h3>")
        top = _top(stats.box_labels, TOP_TABLE)
        out.append(img_tag(plots.render(barh_chart(top, f"{what} per label"
                                                    + (f" (top {TOP_TABLE})" if len(stats.box_labels) > TOP_TABLE else ""),
                                                    what)),
                           f"bar chart: {what} per structure label"))
    return "\n".join(out)


def distributions_section(stats: Stats, kind: str, plots: Plots, qa_configs: list[str]) -> str:
    out = ['<section id="distributions"><h2>Distributions</h2>']
    for config in qa_configs:
        groups = {k: v for k, v in stats.answers.items() if k[0] == config}
        if not groups:
            continue
        out.append(f"<h3>Answers per task — <code>{esc(config)}</code></h3>")
        ordered = sorted(groups.items(), key=lambda kv: (str(kv[0][1]), QTYPE_ORDER.get(kv[0][2], 9),
                                                          str(kv[0][2])))
        panels = [(f"{task} · {qtype}", st) for (_, task, qtype), st in ordered]
        out.append(img_tag(plots.render(answers_chart(panels)),
                           f"bar charts: {config} top answers per task and question type"))
        rows, yes_rows, mc_rows, letters = [], [], [], set()
        for (_, task, qtype), st in ordered:
            top = _top(st.answers, 3)
            distinct = f"{len(st.answers):,}{'+' if st.pruned else ''}"
            shown = "; ".join(f"{_clip(a, 40)} ({100.0 * n / max(1, st.n):.1f} %)" for a, n in top)
            rows.append([task, qtype, _n(st.n), distinct, shown])
            if qtype == "closed":
                yes = st.answers.get("yes", 0)
                no = st.answers.get("no", 0)
                yes_rows.append((task, 100.0 * yes / max(1, st.n), 100.0 * no / max(1, st.n)))
            if qtype == "multiple_choice":
                mc_rows.append((task, st))
                letters |= {a for a in st.answers if len(a) == 1 and a.isalpha()}
        out.append(table(["task", "question type", "questions", "distinct answers", "top answers"],
                         rows, numeric=(2, 3)))
        if yes_rows or mc_rows:
            out.append(f"<h3>Closed questions: yes share; multiple choice: correct letter — "
                       f"<code>{esc(config)}</code></h3>")
            letters_sorted = sorted(letters)
            srows = [[t, "closed", f"yes {y:.1f} % / no {n:.1f} %"] for t, y, n in yes_rows]
            srows += [[t, "multiple choice", " / ".join(
                f"{x} {100.0 * st.answers.get(x, 0) / max(1, st.n):.1f} %" for x in letters_sorted)]
                for t, st in mc_rows]
            out.append(table(["task", "question type", "share"], srows))
            out.append(img_tag(plots.render(shares_chart(
                [(t, y, n) for t, y, n in yes_rows],
                [(t, [100.0 * st.answers.get(x, 0) / max(1, st.n) for x in letters_sorted])
                 for t, st in mc_rows], letters_sorted, config)),
                f"bar charts: {config} yes share of closed questions and correct-letter share of "
                "multiple-choice questions per task"))
    if kind in ("slices", "volumes") and (stats.area_px is not None or stats.area_frac is not None):
        out.append("<h3>Box sizes</h3>")
        panels = []
        if stats.area_px is not None:
            panels.append((stats.area_px, AREA_PX_EDGES, "box area (pixels, mask pixels inside the box)",
                           "structure area per box", True))
        if stats.area_frac is not None:
            label = "% of the image's pixels" if kind == "slices" else "% of the volume (box extent)"
            panels.append((stats.area_frac, AREA_FRAC_EDGES, label, "relative size", True))
        out.append(img_tag(plots.render(hist_chart(panels, "Box area histogram" if kind == "slices"
                                                    else "3D box extent histogram")),
                           "histograms: box areas"))
    out.append("<h3>Image sizes</h3>")
    if stats.sizes:
        note = (f" (from the PNG headers of the first {SIZE_SAMPLE} rows of the first shard of "
                f"each split: {stats.size_rows:,} images)" if stats.sizes_sampled
                else f" ({stats.size_rows:,} images)")
        out.append(f'<p class="note">Stored image width × height{esc(note)}.</p>')
        rows = [[f"{w} × {h}", _n(n)] for (w, h), n in _top(stats.sizes, 12)]
        out.append(table(["width × height (px)", "images"], rows, numeric=(1,)))
        if len(stats.sizes) > 1:
                out.append(img_tag(plots.render(scatter_chart(stats.sizes, "Image sizes (marker area ∝ images)",
                                                           "width (px)", "height (px)")),
                               "scatter plot: image sizes"))
    if stats.shapes:
        rows = [[" × ".join(str(x) for x in shape), _n(n)] for shape, n in _top(stats.shapes, 12)]
        out.append('<p class="note">Stored volume shape <code>[k, j, i]</code> (after resampling).</p>')
        out.append(table(["shape [k, j, i]", "volumes"], rows, numeric=(1,)))
    if stats.spacings:
        rows = [[f"{a:g} mm", f"{b:g} mm", _n(n)] for (a, b), n in _top(stats.spacings, 12)]
        out.append('<p class="note">Original voxel spacing before resampling.</p>')
        out.append(table(["slice spacing (k)", "in-plane spacing (i)", "volumes"], rows, numeric=(2,)))
    out.append("</section>")
    return "\n".join(out)


def audit_section(manifest: Mapping) -> str:
    out = ['<section id="audit"><h2>Shortcut audit</h2>']
    audit = manifest.get("audit")
    if not isinstance(audit, Mapping):
        out.append('<p class="audit-missing"><b>The shortcut audit was not run for this corpus</b> '
                   "(the manifest has no <code>audit</code> entry). It measures how well blind "
                   "baselines — which never look at the image — answer the questions.</p></section>")
        return "\n".join(out)
    verdict = str(audit.get("verdict", "?"))
    margin = audit.get("margin_pp")
    out.append(f'<p>Overall verdict: <span class="{_verdict_class(verdict)}">&nbsp;{esc(verdict)}&nbsp;'
               f"</span> — margin {esc(margin)} percentage points above chance.</p>")
    fail_pp = audit.get("fail_pp")
    out.append(
        '<p class="note">Each row is one group of questions (config, split, task, question type). '
        "A baseline's accuracy is the share of the group's questions it answers correctly without "
        "ever looking at the image. <b>Chance</b> is the reference: <i>uniform</i> — one over the "
        "number of options for multiple choice, 1/2 for yes/no; <i>prior</i> — for open questions, "
        "the accuracy of always giving the group's most frequent train answer. <b>Excess</b> is the "
        "best baseline minus chance in percentage points: within the margin the group is "
        "<span class=\"v-ok\">ok</span>; above it <span class=\"v-warn\">warn</span>"
        + (f", or <span class=\"v-fail\">fail</span> when the excess passes {esc(fail_pp)} pp and the "
           "lower end of the best baseline's 95 % interval is above chance + margin" if fail_pp is not None
           else ", or <span class=\"v-fail\">fail</span>")
        + ". A model could score in a flagged group without using the image. Train rows are scored "
        "on the questions the baselines learned from; the overall verdict is taken over the other "
        "splits (listed first). Entropy is the answer distribution's entropy (bits) against its maximum for the "
        "number of distinct answers; the yes rate is for closed questions; a dash means the "
        "baseline does not apply to the question type.</p>")
    out.append("<dl class=\"meta\">" + "".join(
        f"<dt>{esc(label)}</dt><dd>{esc(text)}</dd>" for label, text in BASELINES.values()) + "</dl>")
    groups = [g for g in audit.get("groups") or [] if isinstance(g, Mapping)]
    if not groups:
        out.append("<p>The audit lists no groups.</p></section>")
        return "\n".join(out)
    extra = sorted({k for g in groups for k in (g.get("baselines") or {}) if k not in BASELINES})
    names = list(BASELINES) + extra
    severity = {"fail": 0, "warn": 1, "ok": 2}
    groups.sort(key=lambda g: (g.get("split") == "train", severity.get(str(g.get("verdict")), 3),
                               str(g.get("config")),
                               _split_key(str(g.get("split"))), str(g.get("task")),
                               QTYPE_ORDER.get(g.get("question_type"), 9)))
    rows, classes = [], {}
    for r, g in enumerate(groups):
        base = g.get("baselines") or {}
        ent, mx = g.get("answer_entropy_bits"), g.get("max_entropy_bits")
        interval = g.get("interval")
        interval = (f"{_fmt_pct(interval[0])} – {_fmt_pct(interval[1])}"
                    if isinstance(interval, (list, tuple)) and len(interval) == 2 else "—")
        best = g.get("best_baseline")
        rows.append([g.get("config"), g.get("split"), g.get("task"), g.get("question_type"),
                     _fmt_int(g.get("n")), g.get("verdict"), _fmt_pp(g.get("excess_pp")),
                     _fmt_pct(g.get("chance")), g.get("reference"),
                     BASELINES[best][0] if best in BASELINES else (best or "—"), interval]
                    + [_fmt_pct(base.get(k)) for k in names]
                    + [f"{_fmt_num(ent)} / {_fmt_num(mx)}", _fmt_pct(g.get("yes_rate"))])
        classes[(r, 5)] = _verdict_class(str(g.get("verdict")))
        if best in names:
            classes[(r, 11 + names.index(best))] = "best"
    headers = (["config", "split", "task", "question type", "n", "verdict", "excess (pp)", "chance",
                "reference", "best baseline", "95 % interval (best)"]
               + [BASELINES[k][0] if k in BASELINES else k for k in names]
               + ["entropy (bits)", "yes rate"])
    numeric = [4, 6, 7, 10] + list(range(11, 11 + len(names) + 2))
    out.append('<div class="wide">' + table(headers, rows, numeric=numeric, classes=classes) + "</div>")
    out.append("</section>")
    return "\n".join(out)


def _verdict_class(verdict: str) -> str:
    return {"ok": "v-ok", "warn": "v-warn", "fail": "v-fail"}.get(verdict, "")


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _fmt_pct(x) -> str:
    return _pct(x) if _is_num(x) else ("—" if x is None else str(x))


def _fmt_pp(x) -> str:
    return f"{float(x):+.1f}" if _is_num(x) else ("—" if x is None else str(x))


def _fmt_num(x) -> str:
    return f"{float(x):.2f}" if _is_num(x) else ("—" if x is None else str(x))


def _fmt_int(x) -> str:
    return f"{int(x):,}" if _is_num(x) else ("—" if x is None else str(x))


def read_dead_letters(corpus: Corpus) -> Counter | None:
    """(stage, reason, error type) -> count from the dead-letter file; None when it is absent.

    Only these three fields are read: source paths and messages never leave this function.
    """
    if not corpus.exists(DEAD_LETTERS):
        return None
    counts: Counter = Counter()
    with corpus.open(DEAD_LETTERS) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                counts[("?", "(unparsable line)", "?")] += 1
                continue
            counts[(_safe_reason(record.get("stage")), _safe_reason(record.get("reason")),
                    _safe_reason(record.get("error_type")))] += 1
    return counts


def dead_letters_section(manifest: Mapping, letters: Counter | None) -> str:
    out = ['<section id="dead-letters"><h2>Dead letters</h2>',
           '<p class="note">Rejected inputs by stage and reason. Reasons and counts only: the '
           "dead-letter file itself (with source paths and messages) is for the operator and is "
           "never shown here.</p>"]
    rows = []
    for stage, c in sorted(manifest.get("counts", {}).items(), key=lambda kv: (STAGE_ORDER.get(kv[0], 9), kv[0])):
        for reason, n in sorted(c.get("rejected_by_reason", {}).items()):
            rows.append([stage, _safe_reason(reason), _n(n)])
    out.append("<h3>From the manifest</h3>")
    out.append(table(["stage", "reason", "rejected"], rows, numeric=(2,)) if rows
               else "<p>No rejections recorded in the manifest.</p>")
    out.append("<h3>From the dead-letter file</h3>")
    if letters is None:
        out.append("<p>No dead-letter file in this corpus.</p>")
    elif not letters:
        out.append("<p>The dead-letter file is empty: nothing was rejected.</p>")
    else:
        rows = [[s, r, e, _n(n)] for (s, r, e), n in sorted(
            letters.items(), key=lambda kv: (STAGE_ORDER.get(kv[0][0], 9), kv[0]))]
        out.append(table(["stage", "reason", "error type", "records"], rows, numeric=(3,)))
        total_manifest = sum(sum(c.get("rejected_by_reason", {}).values())
                             for c in manifest.get("counts", {}).values())
        total_file = sum(letters.values())
        if total_manifest != total_file:
            out.append(f'<p class="note">The file holds {total_file:,} records, the manifest counts '
                       f"{total_manifest:,} rejections.</p>")
    out.append("</section>")
    return "\n".join(out)


# --------------------------------------------------------------------------- gallery HTML


def _question_html(q: dict) -> str:
    options = q.get("options") or q.get("choices") or []
    answer = q.get("answer")
    parts = [f'<li class="q" data-qa-id="{esc(q.get("qa_id"))}">',
             f'<p class="tag">{esc(q.get("task"))}'
             + (f" / {esc(q.get('subtask'))}" if q.get("subtask") else "")
             + f" · {esc(q.get('question_type'))}</p>",
             f'<p class="question">{esc(q.get("question"))}</p>']
    if options:
        items = []
        for i, opt in enumerate(options):
            letter = chr(ord("A") + i)
            cls = ' class="correct"' if letter == answer else ""
            items.append(f"<li{cls}>{esc(opt)}</li>")
        parts.append('<ol class="options" type="A">' + "".join(items) + "</ol>")
    text = q.get("answer_text")
    shown = f"<b>{esc(answer)}</b>"
    if text and text != answer:
        shown += f" — {esc(text)}"
    if q.get("answer_value") is not None:
        unit = q.get("answer_unit") or ""
        tol = q.get("answer_tolerance")
        shown += (f" <span class=\"note\">(value {float(q['answer_value']):g} {esc(unit)}"
                  + (f", tolerance ± {float(tol):g} {esc(unit)}" if tol is not None else "") + ")</span>")
    parts.append(f'<p class="answer">Answer: {shown}</p></li>')
    return "".join(parts)


def _legend(entries: list[tuple[str, tuple, str]]) -> str:
    items = "".join(
        f'<li data-label="{esc(label)}" data-colour="{colour}" data-box="{",".join(str(int(v)) for v in box)}">'
        f'<span class="sw" style="background:{colour}"></span>{esc(label)} '
        f'<span class="note">[{", ".join(str(int(v)) for v in box)}]</span></li>'
        for label, box, colour in entries)
    return f'<ul class="legend">{items}</ul>'


def gallery_2d(items: list[GalleryItem], kind: str, log=print, cache=None) -> list[str]:
    from PIL import Image

    labels = [b["label"] for it in items if it.row for b in (it.row.get("boxes") or [])]
    colours = label_colours(labels)
    figures = []
    for it in items:
        if it.row is None or not (it.row.get("image") or {}).get("bytes"):
            continue
        try:
            with Image.open(io.BytesIO(it.row["image"]["bytes"])) as im:
                im.load()
                src = im.copy()
        except Exception:  # a corrupt stored image: the build's checks should have caught it
            log(f"  gallery: image {it.image_id} could not be decoded; skipped")
            continue
        boxes = [(b["label"], (b["x_min"], b["y_min"], b["x_max"], b["y_max"]))
                 for b in (it.row.get("boxes") or [])]
        data = it.row["image"]["bytes"]
        shown, scale = boxed_view(src, data, boxes, colours, cache)
        views = [img_tag(shown, f"image {it.image_id} with its boxes", cls="view boxes")]
        for q in it.questions:
            if q.get("answer_box"):
                ab, _ = boxed_view(src, data, [("answer", tuple(q["answer_box"]))],
                                   {"answer": ANSWER_BOX_COLOUR}, cache)
                views.append(img_tag(ab, f"answer box of question {q['qa_id']}", cls="view answer-box",
                                     attrs=f' data-qa-id="{esc(q["qa_id"])}" '
                                           f'data-box="{",".join(str(int(v)) for v in q["answer_box"])}" '
                                           f'data-colour="{hex_colour(ANSWER_BOX_COLOUR)}"'))
        row = it.row
        if kind == "slices":
            tag = (f"{row.get('modality')} · {row.get('plane')} · slice {row.get('slice_index')} · "
                   f"{row.get('width')}×{row.get('height')} px · window "
                   f"{(row.get('window') or {}).get('name')} · split {row.get('split') or it.split}")
        else:
            meta = row.get("metadata") or {}
            tag = (f"{meta.get('modality')} · {meta.get('location')} · {meta.get('pathology')} · "
                   f"{src.size[0]}×{src.size[1]} px · split {row.get('split') or it.split}")
        body = [f'<figure class="item" data-kind="{kind}" data-image-id="{esc(it.image_id)}" '
                f'data-scale="{scale:.6g}"><div class="views">' + "".join(views) + "</div><figcaption>",
                f'<p class="tag">{esc(tag)}</p>']
        if boxes:
            body.append(_legend([(label, box, hex_colour(colours[label])) for label, box in boxes]))
        caption = [t.get("value") for t in (row.get("conversations") or []) if t.get("from") == "gpt"]
        if caption:
            body.append(f'<p class="caption">Caption: {esc(caption[0])}</p>')
        body.append('<ol class="qa">' + "".join(_question_html(q) for q in it.questions) + "</ol>")
        body.append("</figcaption></figure>")
        figures.append("".join(body))
    return figures


def gallery_volumes(items: list[GalleryItem], cache=None) -> list[str]:
    from PIL import Image

    slices = {}
    labels = []
    for it in items:
        if it.row is None or not it.row.get("npy"):
            continue
        plane, k = volume_slice(it.row["npy"])
        hits = [(b["label"], b["box"]) for b in (it.row.get("boxes3d") or []) if b["box"][0] <= k < b["box"][3]]
        slices[it.image_id] = (plane, k, hits)
        labels += [label for label, _ in hits]
    colours = label_colours(labels)
    figures = []
    for it in items:
        if it.image_id not in slices:
            continue
        plane, k, hits = slices[it.image_id]
        boxes = [(label, (b[2], b[1], b[5], b[4])) for label, b in hits]  # x = i, y = j
        shown, scale = boxed_view(Image.fromarray(plane, "L"),
                                  repr(plane.shape).encode() + plane.tobytes(), boxes, colours, cache)
        row = it.row
        tag = (f"{row.get('modality')} · volume {' × '.join(str(s) for s in row.get('shape') or [])} "
               f"[k, j, i] · middle axial slice k = {k} · study {row.get('study_order')} · split "
               f"{row.get('split') or it.split}")
        body = [f'<figure class="item" data-kind="volume" data-image-id="{esc(it.image_id)}" '
                f'data-slice-k="{k}" data-scale="{scale:.6g}"><div class="views">'
                + img_tag(shown, f"volume {it.image_id}, axial slice {k}", cls="view boxes")
                + "</div><figcaption>", f'<p class="tag">{esc(tag)}</p>']
        if boxes:
            body.append(_legend([(label, box, hex_colour(colours[label])) for label, box in boxes]))
        body.append('<ol class="qa">' + "".join(_question_html(q) for q in it.questions) + "</ol>")
        body.append("</figcaption></figure>")
        figures.append("".join(body))
    return figures


def gallery_section(pool: GalleryPool | None, kind: str, log, cache=None) -> str:
    """The gallery from ``pool`` (its questions collected by :func:`scan_qa`)."""
    out = ['<section id="gallery"><h2>Gallery</h2>']
    if pool is None:
        out.append("<p>No image-bearing config in this corpus.</p></section>")
        return "\n".join(out)
    if kind == "volumes":
        items = select_volumes(pool.questions, pool.patients)
        attach_rows(items, pool)
        figures = gallery_volumes(items, cache)
        out.append('<p class="note">The middle axial slice of each volume (anterior at the top, the '
                   "patient's right on the left) with every 3D box that crosses it, and that volume's "
                   "questions. Volumes are taken from the first rows of the first shard of each split "
                   "(rows are in keyed-hash order), chosen to cover the tasks.</p>")
    else:
        items = select_2d(pool.questions, pool.id_col)
        attach_rows(items, pool)
        figures = gallery_2d(items, kind, log, cache)
        what = ("each with every stored box outlined (colour per label; boxes are drawn on the "
                "stored pixels, ends exclusive)" if kind == "slices" else "with its caption")
        out.append(f'<p class="note">A few questions per task and question type (smallest '
                   f"<code>qa_id</code> among the images in the first rows of the first shard of each "
                   f"split), grouped by image, {what}. Grounding questions also show the answer box alone "
                   "(yellow). The correct option is shown in green.</p>" if kind == "slices" else
                   f'<p class="note">A few questions per task and question type (smallest '
                   f"<code>qa_id</code> among the images in the first rows of the first shard of each "
                   f"split), grouped by image, {what}. The correct option is shown in green.</p>")
    log(f"  gallery: {len(figures)} figure(s)")
    if not figures:
        out.append("<p>No rows to show.</p>")
    out.append('<div class="gallery">' + "\n".join(figures) + "</div></section>")
    return "\n".join(out)


# --------------------------------------------------------------------------- entry point


def render_report(corpus_dir: str, log=None, cache: ChartCache | None = None) -> str:
    """The report's HTML for the corpus at ``corpus_dir``.

    Reads the corpus; writes nothing but, when given a ``cache``, the charts and gallery
    views it had to draw.
    """
    log = log or (lambda msg: None)
    corpus = Corpus(corpus_dir)
    with corpus.open(MANIFEST) as f:
        manifest = json.loads(f.read())
    kind = corpus_kind(manifest)
    present = {p.split("/", 1)[0] for p in manifest.get("files", {}) if p.endswith(".parquet")}
    qa_configs = [c for c in QA_CONFIGS if c in present]
    stats = Stats()
    pool = gallery_pool(corpus, manifest, kind)
    for config in qa_configs:
        scan_qa(corpus, manifest, config, stats, log, pool if pool and config == pool.qa_config else None)
    if "images" in present:
        scan_images(corpus, manifest, stats)
    if "alignment" in present:
        scan_alignment(corpus, manifest, stats)
    if "volumes" in present:
        scan_volumes(corpus, manifest, stats)
    log("  statistics done")
    plots = Plots(cache)
    name = (manifest.get("recipe") or {}).get("name", "?")
    body = [
        header_section(manifest, kind),
        '<nav><a href="#build">Build</a><a href="#counts">Counts</a><a href="#distributions">'
        'Distributions</a><a href="#audit">Shortcut audit</a><a href="#dead-letters">Dead letters</a>'
        '<a href="#gallery">Gallery</a></nav>',
        build_section(manifest),
        counts_section(manifest, stats, kind, plots, qa_configs),
        distributions_section(stats, kind, plots, qa_configs),
        audit_section(manifest),
        dead_letters_section(manifest, read_dead_letters(corpus)),
        gallery_section(pool, kind, log, cache),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>radvqa report — {esc(name)}</title>"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(corpus_dir: str, log=None) -> str:
    """Write ``corpus_dir/report/index.html`` from the corpus alone; return its path.

    Parameters
    ----------
    corpus_dir
        A built corpus (local folder or a Beam filesystem URL) with its ``manifest.json``.
    log
        Optional ``callable(str)`` for progress lines.
    """
    started = time.monotonic()
    log = log or (lambda msg: None)
    corpus = Corpus(corpus_dir)
    cache = ChartCache(corpus, log)
    page = render_report(corpus_dir, log, cache).encode("utf-8")
    path = corpus.write(REPORT, page)
    stale = cache.prune()
    log(f"  charts: {cache.hits} from the cache, {cache.misses} drawn, {len(stale)} stale removed")
    log(f"  wrote {len(page) / 1e6:.2f} MB in {time.monotonic() - started:.1f} s")
    return path
