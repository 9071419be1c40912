"""The report's statistics, read shard by shard with only the columns each one needs.

Memory is bounded by one shard's metadata columns, whatever the corpus size: the
counters grow with distinct values, not rows, and an answer table keeps at most
:data:`MAX_DISTINCT` answers per group.  Pixels are never read here, except the
PNG headers of the first :data:`SIZE_SAMPLE` rows of the first shard of each split
of a labelled tree, whose image sizes are not stored as columns.
"""

from __future__ import annotations

import io
import math
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pipeline.core.imaging import png_size
from pipeline.io.corpus import Corpus, present_columns
from pipeline.report.gallery import GalleryPool
from pipeline.schema import kernels, pyarrays

MAX_DISTINCT = 50_000  # answers tracked per group before the tail is pruned
SIZE_SAMPLE = 1000  # PNG headers read per split for image sizes when not stored as columns


def top_items(counter: Mapping, n: int) -> list[tuple]:
    """The ``n`` largest counts, ties by the key's text."""
    return sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0])))[:n]


def _nested(table: pa.Table, column: str, field_name: str) -> pa.Array:
    """``table[column][field_name]`` for a struct column (nulls where the struct is null)."""
    return kernels.struct_field(table.column(column).combine_chunks(), field_name)


def _value_counts(arr) -> Counter:
    out: Counter = Counter()
    if len(arr) == 0:
        return out
    for item in kernels.value_counts(arr).to_pylist():
        out[item["values"]] += item["counts"]
    return out


def group_counts(table: pa.Table, keys: list[str]) -> Counter:
    """Counts of distinct key tuples (nulls kept as None).

    Each key column is dictionary-encoded and the index tuples are counted with numpy:
    Arrow's ``Table.group_by`` imports pyarrow.acero, and with it pandas (about 1 s).
    """
    out: Counter = Counter()
    if table.num_rows == 0:
        return out
    values, codes = [], []
    for k in keys:
        encoded = kernels.dictionary_encode(table.column(k).combine_chunks(), null_encoding="encode")
        values.append(encoded.dictionary.to_pylist())
        codes.append(pyarrays.to_numpy(encoded.indices).astype(np.int64))
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
            self.answers = Counter(dict(top_items(self.answers, MAX_DISTINCT // 5)))
            self.pruned = True


@dataclass
class Stats:
    """Everything the report's counts and distributions show, summed over the shards."""

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


def scan_qa(corpus: Corpus, config: str, stats: Stats, log, pool: GalleryPool | None = None) -> None:
    """Counts per split/task/question type (and subtask) and answer counts, shard by shard.

    With the gallery's ``pool`` (of this config), the same pass collects every question about
    a pool image into ``pool.questions``: a shard's id column is read with the statistics'
    columns, and only shards that ask about a pool image are read again, for the rest of the
    question columns.
    """
    columns = ["split", "task", "question_type", "subtask", "answer"]
    for rel in corpus.shards(config):
        pf = corpus.parquet(rel)
        t = pf.read(columns=present_columns(pf, columns + ([pool.id_col] if pool else [])))
        if "subtask" not in t.column_names:
            t = t.append_column("subtask", pa.nulls(t.num_rows, pa.string()))
        if pool is not None:
            pool.collect(pf, t)
        for key, n in group_counts(t, ["split", "task", "question_type", "subtask"]).items():
            stats.qa_groups[config][key] += n
        for (task, qtype, answer), n in group_counts(t, ["task", "question_type", "answer"]).items():
            stats.answers[(config, task, qtype)].add(answer, n)
        for a in stats.answers.values():
            a.prune()
    log(f"  scanned {config}: {len(corpus.shards(config))} shard(s)")


def scan_images(corpus: Corpus, stats: Stats) -> None:
    """``images`` (slices): plane × modality, body part, box labels and areas, image sizes."""
    for rel in corpus.shards("images"):
        t = corpus.read_columns(rel, ["split", "modality", "plane", "body_part", "width", "height",
                                "boxes.list.element.label", "boxes.list.element.area_px"])
        for (split, modality, plane), n in group_counts(t, ["split", "modality", "plane"]).items():
            stats.images[(split, modality, plane)] += n
        stats.body_parts.update(_value_counts(t.column("body_part")) if "body_part" in t.column_names
                                else Counter())
        for (w, h), n in group_counts(t, ["width", "height"]).items():
            stats.sizes[(w, h)] += n
        stats.size_rows += t.num_rows
        boxes = t.column("boxes").combine_chunks()
        flat = kernels.list_flatten(boxes)
        stats.box_labels.update(_value_counts(kernels.struct_field(flat, "label")))
        area = pyarrays.to_numpy(kernels.struct_field(flat, "area_px")).astype(np.float64)
        lengths = kernels.list_value_length(boxes)
        lengths = pyarrays.to_numpy(kernels.fill_null(lengths, pyarrays.scalar(0, lengths.type)))
        pixels = (pyarrays.to_numpy(t.column("width")).astype(np.float64)
                  * pyarrays.to_numpy(t.column("height")).astype(np.float64))
        frac = 100.0 * area / np.maximum(np.repeat(pixels, lengths), 1.0)
        stats.area_px = _add_hist(stats.area_px, area, AREA_PX_EDGES)
        stats.area_frac = _add_hist(stats.area_frac, frac, AREA_FRAC_EDGES)


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, else from Pillow's lazy header read; None when
    neither can read it."""
    try:
        return png_size(data)
    except Exception:  # not a PNG, or a truncated header: Pillow may still read it
        pass
    # Pillow for what is not a PNG only: its import with its decoders is 15 ms of a
    # regenerate's CPU (pipeline.report.views)
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:  # an unreadable image is the build's business, not the report's
        return None


def scan_alignment(corpus: Corpus, stats: Stats) -> None:
    """``alignment`` (trees): images per location × modality, pathologies; image sizes from
    the PNG headers of the first rows of the first shard of each split (sizes are not columns)."""
    for rel in corpus.shards("alignment"):
        t = corpus.read_columns(rel, ["split", "metadata.location", "metadata.modality",
                                "metadata.pathology", "metadata.is_abnormal"])
        flat = pa.table({
            "split": t.column("split"),
            "modality": _nested(t, "metadata", "modality"),
            "location": _nested(t, "metadata", "location"),
            "pathology": _nested(t, "metadata", "pathology"),
            "abnormal": _nested(t, "metadata", "is_abnormal"),
        })
        for (split, modality, location), n in group_counts(flat, ["split", "modality", "location"]).items():
            stats.images[(split, modality, location)] += n
        for (location, pathology), n in group_counts(flat, ["location", "pathology"]).items():
            stats.pathologies[(location, pathology)] += n
        for (location, abnormal), n in group_counts(flat, ["location", "abnormal"]).items():
            if abnormal:
                stats.abnormal[location] += n
    for rel in corpus.first_shards("alignment"):
        head = corpus.read_head(rel, ["image.bytes"], SIZE_SAMPLE)
        if head.num_rows == 0:
            continue
        for data in _nested(head, "image", "bytes").to_pylist():
            size = image_size(data) if data else None
            if size:
                stats.sizes[size] += 1
        stats.size_rows += head.num_rows
    stats.sizes_sampled = True


def scan_volumes(corpus: Corpus, stats: Stats) -> None:
    """``volumes`` (3D): modality, stored shape, original spacing, 3D box labels and extents."""
    for rel in corpus.shards("volumes"):
        t = corpus.read_columns(rel, ["split", "modality", "shape", "original_spacing_mm", "boxes3d"])
        for (split, modality), n in group_counts(t, ["split", "modality"]).items():
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

