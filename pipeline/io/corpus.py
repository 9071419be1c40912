"""The one reader of a built corpus, for the report, the exports and the build state.

:class:`Corpus` opens ``OUTPUT/`` — a local folder, read with plain ``os`` and
pyarrow, or any Beam filesystem URL (``gs://…``) — and reads what a built
corpus holds, as :mod:`pipeline.schema.layout` names it:

* ``manifest.json`` (:attr:`Corpus.manifest`, read once), and checked by
  :meth:`Corpus.check_manifest` for a reader that wants a :class:`CorpusError`
  naming the file and the field instead of a bare ``FileNotFoundError``;
* the configs and their Parquet shards, listed from the manifest (never by
  listing folders) in a stable order: configs by name; inside a config, splits
  in :func:`split_key` order (train, validation, test, then any other split by
  name), shards by name.  Only ``<config>/<split>-SSSSS-of-NNNNN.parquet``
  files count (:func:`pipeline.schema.layout.parse_shard`), and never one
  under the private folders (``.radvqa/``, ``dead_letters/``, ``report/``);
* columns of a shard, whole (:meth:`Corpus.read_columns`) or its first rows
  only (:meth:`Corpus.read_head`), each a list of top-level names or dotted
  nested paths of which only those the file has are read; or, checked, a shard
  opened with the columns it must have (:meth:`Corpus.open_shard`) and its rows
  as dicts (:meth:`Corpus.read_rows`), a missing file or column a
  :class:`CorpusError`;
* the dead-letter file, field by field (:meth:`Corpus.read_dead_letters`):
  callers choose the fields, so a source path or message is read only by one
  that asks for it.

Besides reading, :meth:`Corpus.write` and :meth:`Corpus.delete` keep the few
files a reader derives from the corpus beside it (the report and its chart
cache), written under a temporary name, then renamed (:mod:`pipeline.io.atomic`
locally, :func:`pipeline.io.shards.write_bytes` remotely).

Policy stays with the callers: how a corpus kind is inferred, whether they read
checked (a :class:`CorpusError`, which the exports turn into their own error) or
unchecked (the file system's own ``FileNotFoundError`` / ``OSError``), what a
shard's rows become.  Messages name files by the corpus path as the caller gave it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import cached_property

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io import shards
from pipeline.io.atomic import write_file
from pipeline.schema.layout import DEAD_LETTERS_FILE, MANIFEST, PRIVATE_DIRS, parse_shard

#: Splits in their reading order; any other split follows, by name.
SPLIT_ORDER = ("train", "validation", "test")
#: Read-ahead of Parquet reads: taking a shard's first rows reads their pages, not whole
#: column chunks.
BUFFER_SIZE = 1 << 20


class CorpusError(ValueError):
    """A folder that is not a readable corpus, or a corpus file without what a reader needs:
    the message names the file and the field."""


def split_key(split: str) -> tuple[int, str]:
    """Sort key of a split: train, validation, test, then any other split by name."""
    return (SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER), split)


def order_splits(splits: Iterable[str]) -> list[str]:
    """``splits`` without repeats, in :func:`split_key` order."""
    return sorted(set(splits), key=split_key)


def shard_split(rel: str) -> str:
    """Split of a shard path ``<config>/<split>-SSSSS-of-NNNNN.parquet``.

    Raises
    ------
    ValueError
        ``rel`` is not a shard name.
    """
    shard = parse_shard(rel)
    if shard is None:
        raise ValueError(f"{rel}: not named <config>/<split>-SSSSS-of-NNNNN.parquet")
    return shard.split


def list_configs(manifest: Mapping) -> dict[str, list[str]]:
    """Config name -> its Parquet shards (corpus-relative paths), from ``manifest["files"]``.

    Configs by name; shards in split order (:func:`split_key`), then by name.  Files that are
    not named ``<config>/<split>-SSSSS-of-NNNNN.parquet``, and files under the private
    folders, are left out.
    """
    found: dict[str, list[tuple[tuple[int, str], str]]] = {}
    for rel in manifest.get("files", {}):
        shard = parse_shard(rel)
        if (shard is None or shard.ext != "parquet" or not shard.config or "/" in shard.config
                or shard.config in PRIVATE_DIRS or shard.config.startswith(".")):
            continue
        found.setdefault(shard.config, []).append((split_key(shard.split), rel))
    return {config: [rel for _, rel in sorted(found[config])] for config in sorted(found)}


def present_columns(pf: pq.ParquetFile, columns: Iterable[str]) -> list[str]:
    """``columns`` (top-level names or dotted nested paths) that the file has, in order."""
    names = set(pf.schema_arrow.names)
    leaves = set(pf.schema.names) | {c.path for c in (pf.schema.column(i) for i in range(len(pf.schema)))}
    out = []
    for c in columns:
        top = c.split(".", 1)[0]
        if c in names or (top in names and any(p == c or p.startswith(c + ".") for p in leaves)):
            out.append(c)
    return out


def _filesystems():
    """Beam's ``FileSystems``, for remote corpora only.

    Imported on first use: ``apache_beam.io.filesystems`` takes 1.5-2 s to import (measured),
    which a local corpus — every report written by ``radvqa report`` on disk — never needs.
    """
    # measured import cost: see the docstring
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


class Corpus:
    """Read access to one built corpus at ``root``: a local folder or any Beam filesystem URL.

    Paths given to the methods are corpus-relative, ``/``-separated
    (``qa/train-00000-of-00001.parquet``).

    Attributes
    ----------
    location : str
        ``root`` as given: how messages name the corpus and its files.
    root : str
        ``root`` made absolute (a local folder) or without a trailing ``/`` (a URL).
    """

    def __init__(self, root: str):
        self.location = root
        self.remote = "://" in root
        self.root = root.rstrip("/") if self.remote else os.path.abspath(root)

    # ------------------------------------------------------------------ manifest and shards

    @cached_property
    def manifest(self) -> dict:
        """``manifest.json``, parsed (``FileNotFoundError`` when the corpus has none)."""
        with self.open(MANIFEST) as f:
            return json.loads(f.read())

    def check_manifest(self) -> dict:
        """:attr:`manifest`, checked: it exists, parses, and maps ``files`` to their entries.

        Raises
        ------
        CorpusError
            No ``manifest.json`` (``<corpus>/manifest.json: not found (is <corpus> a radvqa
            corpus?)``), one that cannot be read or parsed, or one without a ``files`` mapping.
        """
        shown = self.shown(MANIFEST)
        try:
            manifest = self.manifest
        except FileNotFoundError:
            raise CorpusError(f"{shown}: not found (is {self.location} a radvqa corpus?)") from None
        except (OSError, ValueError) as err:
            raise CorpusError(f"{shown}: unreadable: {err}") from err
        if not isinstance(manifest, Mapping) or not isinstance(manifest.get("files"), Mapping):
            raise CorpusError(f"{shown}: files: missing (expected {{relative_path: {{sha256, rows}}}})")
        return manifest

    @cached_property
    def configs(self) -> dict[str, list[str]]:
        """Config name -> its shards, as :func:`list_configs` orders them."""
        return list_configs(self.manifest)

    def shards(self, config: str, split: str | None = None) -> list[str]:
        """Shards of ``config`` (of one ``split`` when given), in reading order."""
        return [rel for rel in self.configs.get(config, []) if split is None or shard_split(rel) == split]

    def splits(self, config: str) -> list[str]:
        """Splits of ``config`` that have shards, in :func:`split_key` order."""
        return order_splits(shard_split(rel) for rel in self.shards(config))

    def rows(self, rel: str) -> int | None:
        """Rows of a file as the manifest records them (None when not recorded)."""
        entry = self.manifest.get("files", {}).get(rel)
        return entry.get("rows") if isinstance(entry, Mapping) else None

    def first_shards(self, config: str) -> list[str]:
        """The first shard of each split of ``config`` not recorded as empty, in split order."""
        firsts: dict[str, str] = {}
        for rel in self.shards(config):
            if self.rows(rel) != 0:
                firsts.setdefault(shard_split(rel), rel)
        return [firsts[s] for s in order_splits(firsts)]

    # ------------------------------------------------------------------ Parquet

    def parquet(self, rel: str) -> pq.ParquetFile:
        """The Parquet file ``rel``, opened for reading (with :data:`BUFFER_SIZE` read-ahead)."""
        return pq.ParquetFile(self.open(rel) if self.remote else self.path(rel), buffer_size=BUFFER_SIZE)

    def open_shard(self, rel: str, columns: Iterable[str] = ()) -> pq.ParquetFile:
        """Shard ``rel``, opened, with every top-level column of ``columns``.

        Raises
        ------
        CorpusError
            ``rel`` lies under a private folder (never read), is missing or unreadable, or
            lacks one of ``columns``.
        """
        if rel.split("/", 1)[0] in PRIVATE_DIRS:  # operator-only folders: never read as corpus data
            raise CorpusError(f"{rel}: {', '.join(PRIVATE_DIRS)} are never read as corpus data")
        try:
            pf = self.parquet(rel)
        except FileNotFoundError:
            raise CorpusError(f"{self.shown(rel)}: listed in {MANIFEST} but missing") from None
        except OSError as err:
            raise CorpusError(f"{self.shown(rel)}: unreadable Parquet: {err}") from err
        missing = [c for c in columns if c not in pf.schema_arrow.names]
        if missing:
            raise CorpusError(f"{rel}: missing column(s) {', '.join(missing)}")
        return pf

    def read_rows(self, rel: str, columns: Sequence[str], optional: Sequence[str] = ()) -> list[dict]:
        """Every row of shard ``rel`` as a dict of ``columns`` and those of ``optional`` it has
        (top-level names); :class:`CorpusError` as :meth:`open_shard` raises it."""
        pf = self.open_shard(rel, columns)
        names = pf.schema_arrow.names
        return pf.read(columns=list(columns) + [c for c in optional if c in names]).to_pylist()

    def read_columns(self, rel: str, columns: Iterable[str]) -> pa.Table:
        """Every row of ``rel``, with those of ``columns`` the file has."""
        pf = self.parquet(rel)
        return pf.read(columns=present_columns(pf, columns))

    def read_head(self, rel: str, columns: Iterable[str], n: int) -> pa.Table:
        """The first ``n`` rows of ``rel`` (reads at most the row groups they lie in), with those
        of ``columns`` the file has; an empty shard gives a table of null columns.  A local
        shard is memory-mapped: only the pages of those rows are read (the report's image
        heads: a 224 px shard's first row group is 64 MB, read whole through the buffered
        file in 0.1-0.3 s of CPU, 0.01 s mapped; measured)."""
        pf = self.parquet(rel) if self.remote else pq.ParquetFile(self.path(rel), memory_map=True)
        cols = present_columns(pf, columns)
        for batch in pf.iter_batches(batch_size=n, columns=cols):
            return pa.Table.from_batches([batch])
        return pa.table({c: pa.array([], pa.null()) for c in cols})

    # ------------------------------------------------------------------ dead letters

    def has_dead_letters(self) -> bool:
        """Whether the corpus holds its dead-letter file (operator-only, never published)."""
        return self.exists(DEAD_LETTERS_FILE)

    def read_dead_letters(self, fields: Sequence[str]) -> Iterator[tuple | None]:
        """Per record of the dead-letter file, the values of ``fields`` (None where a field is
        absent); None for a line that is not JSON.  Blank lines are skipped."""
        with self.open(DEAD_LETTERS_FILE) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    yield None
                    continue
                yield tuple(record.get(name) for name in fields)

    # ------------------------------------------------------------------ files

    def path(self, rel: str) -> str:
        """Full path (or URL) of ``rel``."""
        if self.remote:
            return shards.join(self.root, rel)
        return os.path.join(self.root, *rel.split("/"))

    def shown(self, rel: str) -> str:
        """``rel`` as messages name it: joined to :attr:`location`, the corpus path as given."""
        if self.remote:
            return self.path(rel)
        return os.path.join(self.location, *rel.split("/"))

    def exists(self, rel: str) -> bool:
        if self.remote:
            return shards.exists(self.root, rel)
        return os.path.isfile(self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        if self.remote:
            return shards.read_bytes(self.root, rel)
        with open(self.path(rel), "rb") as f:
            return f.read()

    def open(self, rel: str):
        """``rel`` opened for binary reading."""
        if self.remote:
            return _filesystems().open(self.path(rel))
        return open(self.path(rel), "rb")

    def listdir(self, rel: str) -> list[str]:
        """Names of the files directly in folder ``rel``, sorted (none when it does not exist)."""
        if self.remote:
            prefix = self.path(rel).rstrip("/") + "/"
            found = _filesystems().match([prefix + "*"])[0].metadata_list
            return sorted(m.path[len(prefix):] for m in found if "/" not in m.path[len(prefix):])
        try:
            return sorted(e.name for e in os.scandir(self.path(rel)) if e.is_file())
        except FileNotFoundError:
            return []

    def write(self, rel: str, data: bytes) -> str:
        """Write ``rel`` atomically (temporary name, then rename); return its full path."""
        if self.remote:
            shards.write_bytes(self.root, rel, data)
            return self.path(rel)
        final = self.path(rel)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        write_file(final, data)
        return final

    def delete(self, rels: list[str]) -> None:
        """Delete the files ``rels`` (a missing local file is no error)."""
        if self.remote:
            _filesystems().delete([self.path(rel) for rel in rels])
            return
        for rel in rels:
            try:
                os.remove(self.path(rel))
            except FileNotFoundError:
                pass
