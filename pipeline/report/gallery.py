"""The gallery's rows and questions: which images (or volumes) it shows, chosen from rows
read once, and which of their questions.

The pool is the head (first :data:`POOL_ROWS` rows, :data:`POOL_VOLUMES` for volumes)
of the first non-empty shard of each split of the image-bearing config (``images``,
``alignment`` or ``volumes``).  Rows inside a shard are sorted by key, so a shard's
head is a keyed-hash sample; selection breaks every tie by id, so it ignores row order.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.corpus import Corpus, present_columns
from pipeline.report.contents import QTYPE_ORDER, image_config
from pipeline.schema import kernels, pyarrays

GALLERY_SIZE = 24  # questions shown in the gallery (2D corpora)
GALLERY_VOLUMES = 4  # volumes shown in the gallery (3D corpora)
QUESTIONS_PER_VOLUME = 8
QUESTIONS_PER_IMAGE = 3
POOL_ROWS = 64  # head rows of the first shard per split the 2D gallery may draw from
POOL_VOLUMES = 4  # the same for volumes (each row is a whole .npy volume)


@dataclass
class GalleryItem:
    """One gallery figure: an image (2D row or volume) and its selected questions."""

    image_id: str
    split: str
    questions: list[dict]
    row: dict | None = None  # the image-bearing row (pixels + boxes), filled after selection


QUESTION_COLUMNS = ["qa_id", "split", "task", "subtask", "question_type", "question", "options",
                    "choices", "answer", "answer_text", "answer_box", "answer_value", "answer_unit",
                    "answer_tolerance", "visual_prompt"]


GALLERY_COLUMNS = {  # image-bearing columns the gallery shows, per corpus kind
    "slices": ["image", "boxes", "width", "height", "modality", "plane", "slice_index", "window", "split",
               "image_boxed", "image_boxed_easy", "prompt_label"],
    "tree": ["image", "metadata", "conversations", "split"],
    "volumes": ["npy", "boxes3d", "shape", "modality", "split", "study_order"],
}


@dataclass
class GalleryPool:
    """The rows the gallery may show: the head (first ``POOL_ROWS`` rows, ``POOL_VOLUMES`` for
    volumes) of the first non-empty shard of each split of the image-bearing config, read once
    with every column the gallery draws; and, filled by :func:`pipeline.report.stats.scan_qa`, every question of
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
        mask = kernels.is_in(t.column(self.id_col), pyarrays.array(sorted(self.where), pa.string()))
        if not kernels.any_true(mask):
            return
        rest = [c for c in present_columns(pf, QUESTION_COLUMNS) if c not in t.column_names]
        full = t
        for name, column in zip(rest, pf.read(columns=rest).columns):
            full = full.append_column(name, column)
        self.questions.extend(kernels.filter(full, mask).to_pylist())
        self.questions.sort(key=lambda r: r["qa_id"])


def gallery_pool(corpus: Corpus, kind: str) -> GalleryPool | None:
    """The gallery's pool (None without an image-bearing config); questions still empty."""
    chosen = image_config(corpus.configs)
    if chosen is None:
        return None
    media, qa_config, id_col = chosen
    size = POOL_VOLUMES if kind == "volumes" else POOL_ROWS
    columns = [id_col] + GALLERY_COLUMNS[kind]
    heads: dict[str, pa.Table] = {}
    where: dict[str, str] = {}
    patients: dict[str, str | None] = {}
    for rel in corpus.first_shards(media):
        head = heads[rel] = corpus.read_head(rel, columns + ["patient_key"], size)
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
        mask = kernels.is_in(head.column(pool.id_col), pyarrays.array(sorted(by_shard[rel]), pa.string()))
        for r in kernels.filter(head, mask).to_pylist():
            rows[r[pool.id_col]] = r
    for item in items:
        item.row = rows.get(item.image_id)

