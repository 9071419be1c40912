"""A built corpus read through its manifest, for exports: configs, kind, splits, rows and media.

Only the configs listed in ``manifest.json`` are read — never the folders of
:data:`pipeline.schema.layout.PRIVATE_DIRS` (``dead_letters/``, ``.radvqa/``,
``report/``).  Shards are listed in name order and split by their
``<split>-SSSSS-of-NNNNN.parquet`` names (:func:`pipeline.schema.layout.parse_shard`);
media bytes are read one shard, and one batch, at a time.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import pyarrow.parquet as pq

from pipeline.exports.base import ExportError
from pipeline.schema.layout import MANIFEST, PRIVATE_DIRS, parse_shard

KINDS = ("slices", "tree", "volumes")
SPLIT_ORDER = ("train", "validation", "test")


@dataclass(frozen=True)
class Layout:
    """Where one corpus kind keeps its rows and media."""

    kind: str
    rows: str  # config of the QA rows (llava / sharegpt)
    media: str  # config holding the media bytes
    key: str  # media id column (in rows and media)
    options: str  # options column of the rows
    media_dir: str  # folder of the exported media files
    media_columns: tuple[str, ...]  # media config columns read with the bytes


LAYOUTS = {
    "slices": Layout("slices", "qa", "images", "image_id", "options", "images",
                     ("image_id", "image", "width", "height", "plane")),
    "tree": Layout("tree", "instruct", "alignment", "image_id", "choices", "images",
                   ("image_id", "image")),
    "volumes": Layout("volumes", "qa", "volumes", "volume_id", "options", "volumes",
                      ("volume_id", "npy")),
}
BENCHMARK = Layout("tree", "benchmark", "benchmark", "image_id", "choices", "images",
                   ("image_id", "image"))


def read_manifest(corpus: str) -> dict:
    """``manifest.json`` of a corpus; :class:`ExportError` when missing or unreadable."""
    path = os.path.join(corpus, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise ExportError(f"{path}: not found (is {corpus} a radvqa corpus?)") from None
    except (OSError, ValueError) as err:
        raise ExportError(f"{path}: unreadable: {err}") from err
    if not isinstance(manifest.get("files"), Mapping):
        raise ExportError(f"{path}: files: missing (expected {{relative_path: {{sha256, rows}}}})")
    return manifest


def corpus_configs(manifest: Mapping) -> dict[str, list[str]]:
    """Config name -> its Parquet shards (relative paths, sorted), from the manifest.

    ``dead_letters/`` and ``.radvqa/`` are never listed.
    """
    out: dict[str, list[str]] = {}
    for rel in sorted(manifest["files"]):
        parts = rel.split("/")
        if len(parts) != 2 or not rel.endswith(".parquet") or parts[0] in PRIVATE_DIRS \
                or parts[0].startswith("."):
            continue
        out.setdefault(parts[0], []).append(rel)
    return out


def detect_kind(manifest: Mapping, configs: Iterable[str]) -> str:
    """Corpus kind: ``manifest["kind"]`` when present, else inferred from the configs.

    ``volumes`` -> volumes; ``instruct`` or ``alignment`` -> tree; ``images`` and
    ``qa`` -> slices.
    """
    kind = manifest.get("kind")
    if kind is not None:
        if kind not in KINDS:
            raise ExportError(f"{MANIFEST}: kind: {kind!r} is not one of {', '.join(KINDS)}")
        return kind
    configs = set(configs)
    if "volumes" in configs:
        return "volumes"
    if configs & {"instruct", "alignment"}:
        return "tree"
    if {"images", "qa"} <= configs:
        return "slices"
    raise ExportError(f"{MANIFEST}: files: configs {sorted(configs)} are none of images+qa (slices), "
                      f"instruct/alignment (tree) or volumes (volumes)")


def shard_split(rel: str) -> str:
    """Split of a shard path ``<config>/<split>-SSSSS-of-NNNNN.parquet``."""
    shard = parse_shard(rel)
    if shard is None or shard.ext != "parquet":
        raise ExportError(f"{MANIFEST}: files: {rel} is not named <split>-SSSSS-of-NNNNN.parquet")
    return shard.split


def order_splits(splits: Iterable[str]) -> list[str]:
    """train, validation, test first, then any other split by name."""
    splits = set(splits)
    return [s for s in SPLIT_ORDER if s in splits] + sorted(splits - set(SPLIT_ORDER))


def corpus_name(manifest: Mapping) -> str:
    """Default file prefix: ``radvqa_<recipe name>`` with non-alphanumerics as ``_``."""
    recipe = manifest.get("recipe")
    name = recipe.get("name") if isinstance(recipe, Mapping) else None
    return safe_name(f"radvqa_{name}" if name else "radvqa")


def safe_name(name: str) -> str:
    """``name`` with every character outside ``[A-Za-z0-9_]`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)



class Corpus:
    """A built corpus on local disk, read through its manifest.

    Attributes
    ----------
    root : str
        The corpus folder.
    manifest : dict
        Its ``manifest.json``.
    configs : dict of str to list of str
        Config name -> its Parquet shards (:func:`corpus_configs`).
    kind : str
        One of :data:`KINDS` (:func:`detect_kind`).
    """

    def __init__(self, root: str):
        self.root = root
        self.manifest = read_manifest(root)
        self.configs = corpus_configs(self.manifest)
        self.kind = detect_kind(self.manifest, self.configs)

    def shards(self, config: str, split: str | None = None) -> list[str]:
        """Shards of ``config`` (of ``split`` only, when given), in name order."""
        return [s for s in self.configs.get(config, []) if split is None or shard_split(s) == split]

    def splits(self, config: str) -> list[str]:
        """Splits of ``config``'s shards, in :func:`order_splits` order."""
        return order_splits(shard_split(s) for s in self.shards(config))

    def open(self, rel: str) -> pq.ParquetFile:
        """The Parquet file at corpus-relative ``rel``; never one under a private folder."""
        if rel.split("/", 1)[0] in PRIVATE_DIRS:  # operator-only folders: never exported
            raise ExportError(f"{rel}: {', '.join(PRIVATE_DIRS)} are never read by an export")
        path = os.path.join(self.root, *rel.split("/"))
        try:
            return pq.ParquetFile(path)
        except FileNotFoundError:
            raise ExportError(f"{path}: listed in {MANIFEST} but missing") from None
        except OSError as err:
            raise ExportError(f"{path}: unreadable Parquet: {err}") from err

    def read(self, rel: str, columns: Sequence[str], optional: Sequence[str] = ()) -> list[dict]:
        """Rows of ``rel`` (only ``columns`` + those of ``optional`` present)."""
        pf = self.open(rel)
        names = pf.schema_arrow.names
        missing = [c for c in columns if c not in names]
        if missing:
            raise ExportError(f"{rel}: missing column(s) {', '.join(missing)}")
        return pf.read(columns=list(columns) + [c for c in optional if c in names]).to_pylist()

    def media(self, layout: Layout, paired: str, wanted: set[str], where: str) -> Iterator[tuple[str, bytes, dict]]:
        """``(id, bytes, metadata)`` of each wanted media id, reading one shard at a time.

        The paired shard (same unit) first; ids it lacks are looked up in the
        other shards of the media config.  Each id is yielded once.
        """
        remaining = set(wanted)
        shards = self.shards(layout.media)
        order = ([paired] if paired in shards else []) + [s for s in shards if s != paired]
        for rel in order:
            if not remaining:
                break
            pf = self.open(rel)
            missing = [c for c in layout.media_columns if c not in pf.schema_arrow.names]
            if missing:
                raise ExportError(f"{rel}: missing column(s) {', '.join(missing)}")
            ids = set(pf.read(columns=[layout.key]).column(layout.key).to_pylist())
            if not ids & remaining:
                continue
            for batch in pf.iter_batches(batch_size=64, columns=list(layout.media_columns)):
                cols = batch.to_pydict()
                for n, media_id in enumerate(cols[layout.key]):
                    if media_id not in remaining:
                        continue
                    remaining.discard(media_id)
                    value = cols[layout.media_columns[1]][n]
                    data = value["bytes"] if isinstance(value, Mapping) else value
                    if not data:
                        raise ExportError(f"{rel}: {layout.key} {media_id}: empty media bytes")
                    meta = {c: cols[c][n] for c in layout.media_columns[2:]}
                    yield media_id, data, meta
        if remaining:
            raise ExportError(f"{where}: {layout.key} {sorted(remaining)[0]} not found in "
                              f"{layout.media}/ ({len(remaining)} missing)")

