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
listing is sorted, ties broken by name; figures are drawn by matplotlib's Agg
canvas with the default style, fixed size and dpi, and no ``Software``
metadata; gallery PNGs are encoded by Pillow.  Rows inside a shard are
sorted by key, so a shard's head is a keyed-hash sample.

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
BASELINES = {  # as defined by pipeline.audit: learned on train, scored on each split
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
            from pipeline import shards

            return shards.join(self.root, rel)
        return os.path.join(self.root, *rel.split("/"))

    def exists(self, rel: str) -> bool:
        if self.remote:
            from apache_beam.io.filesystems import FileSystems

            return FileSystems.exists(self.path(rel))
        return os.path.isfile(self.path(rel))

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
            from pipeline import shards

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
    """Counts of distinct key tuples (nulls kept as None)."""
    out: Counter = Counter()
    if table.num_rows == 0:
        return out
    grouped = table.select(keys).group_by(keys).aggregate([([], "count_all")])
    cols = [grouped.column(k).to_pylist() for k in keys]
    for *key, n in zip(*cols, grouped.column("count_all").to_pylist()):
        out[tuple(key)] += n
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


def scan_qa(corpus: Corpus, manifest: Mapping, config: str, stats: Stats, log) -> None:
    """Counts per split/task/question type (and subtask) and answer counts, shard by shard."""
    for rel in config_shards(manifest, config):
        t = _read(corpus, rel, ["split", "task", "question_type", "subtask", "answer"])
        if "subtask" not in t.column_names:
            t = t.append_column("subtask", pa.nulls(t.num_rows, pa.string()))
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


def gallery_candidates(corpus: Corpus, manifest: Mapping, image_config: str, qa_config: str,
                       id_col: str, pool: int) -> tuple[dict[str, str], dict[str, str], list[dict]]:
    """The pool's image ids (id -> shard, id -> patient key when stored) and every question
    about them, sorted by qa_id."""
    where: dict[str, str] = {}
    patients: dict[str, str] = {}
    for rel in _pool_shards(manifest, image_config):
        head = _head(corpus, rel, [id_col, "patient_key"], pool)
        ids = head.column(id_col).to_pylist()
        keys = head.column("patient_key").to_pylist() if "patient_key" in head.column_names else [None] * len(ids)
        for image_id, patient in zip(ids, keys):
            where.setdefault(image_id, rel)
            patients.setdefault(image_id, patient)
    ids = pa.array(sorted(where), pa.string())
    rows: list[dict] = []
    for rel in config_shards(manifest, qa_config):
        t = _read(corpus, rel, [id_col])
        mask = pc.is_in(t.column(id_col), value_set=ids)
        if not pc.any(mask).as_py():
            continue
        full = _read(corpus, rel, [id_col] + QUESTION_COLUMNS).filter(mask)
        rows.extend(full.to_pylist())
    rows.sort(key=lambda r: r["qa_id"])
    return where, patients, rows


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
    taken: Counter = Counter()
    for distinct in (True, False):
        for r in rows:
            g = group(r)
            if len(picks) >= limit or r in picks or taken[g] >= need[g] or (distinct and taken[g]):
                continue
            picks.append(r)
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


def attach_rows(corpus: Corpus, items: list[GalleryItem], where: Mapping[str, str],
                id_col: str, columns: list[str], pool: int) -> None:
    """Fill each item's image row from the head of its shard (only those rows' pixels)."""
    by_shard: dict[str, set] = defaultdict(set)
    for item in items:
        by_shard[where[item.image_id]].add(item.image_id)
    rows: dict[str, dict] = {}
    for rel in sorted(by_shard):
        head = _head(corpus, rel, [id_col] + columns, pool)
        mask = pc.is_in(head.column(id_col), value_set=pa.array(sorted(by_shard[rel]), pa.string()))
        for r in head.filter(mask).to_pylist():
            rows[r[id_col]] = r
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
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def volume_slice(npy: bytes) -> tuple[np.ndarray, int]:
    """The middle axial slice of a stored volume (``[k, j, i]`` in [0, 1]) as uint8, and its k."""
    arr = np.load(io.BytesIO(npy), allow_pickle=False)
    k = arr.shape[0] // 2
    plane = np.nan_to_num(arr[k].astype(np.float32), nan=0.0)
    return np.clip(np.rint(plane * 255.0), 0, 255).astype(np.uint8), k


# --------------------------------------------------------------------------- plots (matplotlib)


class Plots:
    """Renders matplotlib figures to PNG bytes deterministically (Agg, default style, no pyplot)."""

    def __init__(self):
        import matplotlib
        import matplotlib.style

        self._mpl = matplotlib

    def figure(self, width: float, height: float):
        from matplotlib.figure import Figure

        return Figure(figsize=(width, height), dpi=DPI, layout="constrained")

    def render(self, draw: Callable) -> bytes:
        """``draw(self)`` returns a figure; render it with the default style and fixed fonts."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        with self._mpl.style.context("default"), self._mpl.rc_context(
            {"font.size": 9, "axes.titlesize": 10, "font.family": "DejaVu Sans"}
        ):
            fig = draw(self)
            FigureCanvasAgg(fig)
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
        return buf.getvalue()


def _clip(text, n: int) -> str:
    text = str(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def _short(text, n: int = 32) -> str:
    """Shortened text for a plot label; ``$`` escaped so corpus text never turns into mathtext."""
    return _clip(text, n).replace("$", r"\$")


def barh_figure(rows: list[tuple[str, float]], title: str, xlabel: str, fmt: str = "{:,.0f}"):
    def draw(p: Plots):
        fig = p.figure(9, 0.8 + 0.24 * max(1, len(rows)))
        ax = fig.add_subplot()
        labels = [_short(r[0], 48) for r in rows][::-1]
        values = [r[1] for r in rows][::-1]
        bars = ax.barh(range(len(rows)), values, color="#4c78a8")
        ax.set_yticks(range(len(rows)), labels)
        ax.bar_label(bars, labels=[fmt.format(v) for v in values], padding=3, fontsize=8)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.margins(x=0.12)
        return fig
    return draw


def stacked_figure(categories: list[str], series: list[tuple[str, list[float]]], title: str,
                   xlabel: str):
    palette = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6",
               "#9d755d", "#bab0ac", "#eeca3b"]

    def draw(p: Plots):
        fig = p.figure(9, 1.0 + 0.28 * max(1, len(categories)))
        ax = fig.add_subplot()
        left = np.zeros(len(categories))
        for i, (name, values) in enumerate(series):
            vals = np.asarray(values, float)[::-1]
            ax.barh(range(len(categories)), vals, left=left, label=_short(name, 24),
                    color=palette[i % len(palette)])
            left += vals
        ax.set_yticks(range(len(categories)), [_short(c, 48) for c in categories][::-1])
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
        return fig
    return draw


def shares_figure(yes_rows: list[tuple[str, float, float]], mc_rows: list[tuple[str, list[float]]],
                  letters: list[str], config: str):
    """Closed questions: yes/no share per task; multiple choice: share of each correct letter."""
    panels = [p for p in (("yes", yes_rows), ("mc", mc_rows)) if p[1]]
    palette = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6", "#9d755d"]

    def draw(p: Plots):
        fig = p.figure(10, 1.3 + 0.3 * max(len(yes_rows), len(mc_rows)))
        for idx, (what, rows) in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), idx + 1)
            names = [_short(r[0], 30) for r in rows][::-1]
            parts = ([("yes", [r[1] for r in rows]), ("no", [r[2] for r in rows])] if what == "yes"
                     else [(x, [r[1][i] for r in rows]) for i, x in enumerate(letters)])
            left = np.zeros(len(rows))
            for i, (name, vals) in enumerate(parts):
                v = np.asarray(vals, float)[::-1]
                ax.barh(range(len(rows)), v, left=left, color=palette[i % len(palette)], label=name)
                left += v
            ax.set_yticks(range(len(rows)), names)
            ax.set_xlim(0, 100)
            ax.axvline(50 if what == "yes" else 100.0 / max(1, len(letters)), color="#222", lw=0.9, ls="--")
            ax.set_title(f"{config}: closed, yes / no share" if what == "yes"
                         else f"{config}: multiple choice, correct letter share")
            ax.set_xlabel("% of questions (dashed: uniform)")
            ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
        return fig
    return draw


def answers_figure(groups: list[tuple[str, AnswerStats]]):
    """One small panel per (task, question type): the top answers' shares."""
    ncols = 3
    nrows = math.ceil(len(groups) / ncols)

    def draw(p: Plots):
        fig = p.figure(10, 2.1 * nrows)
        for idx, (name, st) in enumerate(groups):
            ax = fig.add_subplot(nrows, ncols, idx + 1)
            top = _top(st.answers, TOP_ANSWERS)
            distinct = len(st.answers)
            if st.n >= 20 and distinct > 0.5 * st.n:
                ax.text(0.5, 0.5, f"open-ended:\n{distinct:,}{'+' if st.pruned else ''} distinct "
                        f"answers\namong {st.n:,}", ha="center", va="center", transform=ax.transAxes)
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                shares = [100.0 * n / max(1, st.n) for _, n in top][::-1]
                ax.barh(range(len(top)), shares, color="#4c78a8")
                ax.set_yticks(range(len(top)), [_short(a, 22) for a, _ in top][::-1], fontsize=7.5)
                ax.set_xlim(0, 100)
                ax.tick_params(axis="x", labelsize=7.5)
            ax.set_title(f"{_short(name, 38)} (n={st.n:,})", fontsize=8.5)
        fig.supxlabel("% of the group's questions (top answers)", fontsize=8.5)
        return fig
    return draw


def hist_figure(panels: list[tuple[np.ndarray, np.ndarray, str, str, bool]], title: str):
    """Histogram panels from precomputed ``(counts, edges, xlabel, title, log_x)``."""
    def draw(p: Plots):
        fig = p.figure(9, 3.0)
        fig.suptitle(title, fontsize=10)
        for idx, (counts, edges, xlabel, sub, log_x) in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), idx + 1)
            nonzero = np.flatnonzero(counts)
            if nonzero.size:  # show the occupied range only
                first, last = int(nonzero[0]), int(nonzero[-1]) + 1
                counts, edges = counts[first:last], edges[first:last + 1]
            ax.stairs(counts, edges, fill=True, color="#4c78a8")
            if log_x:
                ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("boxes")
            ax.set_title(sub, fontsize=9)
        return fig
    return draw


def scatter_figure(points: Counter, title: str, xlabel: str, ylabel: str):
    items = sorted(points.items(), key=lambda kv: (-kv[1], kv[0]))

    def draw(p: Plots):
        fig = p.figure(6, 4.2)
        ax = fig.add_subplot()
        total = max(1, sum(points.values()))
        xs = [k[0] for k, _ in items]
        ys = [k[1] for k, _ in items]
        sizes = [20 + 600 * n / total for _, n in items]
        ax.scatter(xs, ys, s=sizes, alpha=0.6, color="#4c78a8", edgecolors="#1f3b5a")
        for (x, y), n in items[:6]:
            ax.annotate(f"{x:g}×{y:g} ({n:,})", (x, y), textcoords="offset points", xytext=(6, 6),
                        fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.margins(0.25)
        return fig
    return draw


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
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        w, h = im.size
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
    files = manifest.get("files", {})
    size = sum(int(f.get("bytes") or 0) for f in files.values())
    versions = manifest.get("versions", {})
    meta = [
        ("recipe", f"{name} (version {content.get('version', '?')}, seed {manifest.get('seed', '?')})"),
        ("fingerprint", manifest.get("fingerprint", "?")),
        ("kind", KINDS[kind]),
        ("input cases", _n(manifest.get("inputs", {}).get("cases", 0))),
        ("input fingerprint", manifest.get("inputs", {}).get("fingerprint", "?")),
        ("files", f"{len(files):,} files, {size / 1e6:,.2f} MB (manifest.json lists each with sha256)"),
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
        out.append(img_tag(plots.render(barh_figure(bars, "Rows per config and split", "rows")),
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
        out.append(img_tag(plots.render(stacked_figure(tasks, series, f"{config}: questions per task",
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
            out.append(img_tag(plots.render(barh_figure(bars, f"{config}: questions per task / subtask",
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
        out.append(img_tag(plots.render(stacked_figure([str(x) for x in locs], series,
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
        out.append(img_tag(plots.render(stacked_figure([f"{m} {p}" for m, p in keys_sorted], series,
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
        out.append(img_tag(plots.render(barh_figure(top, f"{what} per label"
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
        out.append(img_tag(plots.render(answers_figure(panels)),
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
            out.append(img_tag(plots.render(shares_figure(
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
        out.append(img_tag(plots.render(hist_figure(panels, "Box area histogram" if kind == "slices"
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
                out.append(img_tag(plots.render(scatter_figure(stats.sizes, "Image sizes (marker area ∝ images)",
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


def gallery_2d(items: list[GalleryItem], kind: str, log=print) -> list[str]:
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
        shown, scale = draw_boxes(src, boxes, colours)
        views = [img_tag(png_bytes(shown), f"image {it.image_id} with its boxes", cls="view boxes")]
        for q in it.questions:
            if q.get("answer_box"):
                ab, _ = draw_boxes(src, [("answer", tuple(q["answer_box"]))], {"answer": ANSWER_BOX_COLOUR})
                views.append(img_tag(png_bytes(ab), f"answer box of question {q['qa_id']}", cls="view answer-box",
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


def gallery_volumes(items: list[GalleryItem]) -> list[str]:
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
        shown, scale = draw_boxes(Image.fromarray(plane, "L"), boxes, colours)
        row = it.row
        tag = (f"{row.get('modality')} · volume {' × '.join(str(s) for s in row.get('shape') or [])} "
               f"[k, j, i] · middle axial slice k = {k} · study {row.get('study_order')} · split "
               f"{row.get('split') or it.split}")
        body = [f'<figure class="item" data-kind="volume" data-image-id="{esc(it.image_id)}" '
                f'data-slice-k="{k}" data-scale="{scale:.6g}"><div class="views">'
                + img_tag(png_bytes(shown), f"volume {it.image_id}, axial slice {k}", cls="view boxes")
                + "</div><figcaption>", f'<p class="tag">{esc(tag)}</p>']
        if boxes:
            body.append(_legend([(label, box, hex_colour(colours[label])) for label, box in boxes]))
        body.append('<ol class="qa">' + "".join(_question_html(q) for q in it.questions) + "</ol>")
        body.append("</figcaption></figure>")
        figures.append("".join(body))
    return figures


def gallery_section(corpus: Corpus, manifest: Mapping, kind: str, log) -> str:
    out = ['<section id="gallery"><h2>Gallery</h2>']
    chosen = _image_config(manifest)
    if chosen is None:
        out.append("<p>No image-bearing config in this corpus.</p></section>")
        return "\n".join(out)
    image_config, qa_config, id_col = chosen
    if kind == "volumes":
        where, patients, rows = gallery_candidates(corpus, manifest, image_config, qa_config, id_col,
                                                   POOL_VOLUMES)
        items = select_volumes(rows, patients)
        attach_rows(corpus, items, where, id_col,
                    ["npy", "boxes3d", "shape", "modality", "split", "study_order"], POOL_VOLUMES)
        figures = gallery_volumes(items)
        out.append('<p class="note">The middle axial slice of each volume (anterior at the top, the '
                   "patient's right on the left) with every 3D box that crosses it, and that volume's "
                   "questions. Volumes are taken from the first rows of the first shard of each split "
                   "(rows are in keyed-hash order), chosen to cover the tasks.</p>")
    else:
        where, _, rows = gallery_candidates(corpus, manifest, image_config, qa_config, id_col, POOL_ROWS)
        items = select_2d(rows, id_col)
        columns = (["image", "boxes", "width", "height", "modality", "plane", "slice_index", "window", "split"]
                   if kind == "slices" else ["image", "metadata", "conversations", "split"])
        attach_rows(corpus, items, where, id_col, columns, POOL_ROWS)
        figures = gallery_2d(items, kind, log)
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


def render_report(corpus_dir: str, log=None) -> str:
    """The report's HTML for the corpus at ``corpus_dir`` (reads; writes nothing)."""
    log = log or (lambda msg: None)
    corpus = Corpus(corpus_dir)
    with corpus.open(MANIFEST) as f:
        manifest = json.loads(f.read())
    kind = corpus_kind(manifest)
    present = {p.split("/", 1)[0] for p in manifest.get("files", {}) if p.endswith(".parquet")}
    qa_configs = [c for c in QA_CONFIGS if c in present]
    stats = Stats()
    for config in qa_configs:
        scan_qa(corpus, manifest, config, stats, log)
    if "images" in present:
        scan_images(corpus, manifest, stats)
    if "alignment" in present:
        scan_alignment(corpus, manifest, stats)
    if "volumes" in present:
        scan_volumes(corpus, manifest, stats)
    log("  statistics done")
    plots = Plots()
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
        gallery_section(corpus, manifest, kind, log),
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
    page = render_report(corpus_dir, log).encode("utf-8")
    path = Corpus(corpus_dir).write(REPORT, page)
    log(f"  wrote {len(page) / 1e6:.2f} MB in {time.monotonic() - started:.1f} s")
    return path
