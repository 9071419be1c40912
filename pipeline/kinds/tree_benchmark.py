"""The tree kind's benchmark images: which the launcher's stratified plan takes (each
stratum's first ``quota`` accepted candidates) and their stored bytes.

The bytes come from the images' input files, 1,000 small reads, wherever a file is still
the one extracted (its content digest is the one the unit's receipt records): the PNG
without its metadata chunks, as :meth:`pipeline.kinds.tree.TreeKind.extract_cases` stored
it.  Only the others (changed or gone since, or a remote tree) are read back from the test
split's alignment shards, which hold ~470 MB a unit at 224 px.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import keys
from pipeline.core.imaging import strip_png_metadata
from pipeline.inputs.tree import InputTree
from pipeline.io import shards
from pipeline.kinds.tree_tables import image_record
from pipeline.schema import kernels, pyarrays
from pipeline.schema.arrow import TREE_PAYLOAD_SCHEMA


def plan_strata(plan, unit_of: Mapping[str, str]) -> list:
    """The stratified plan as the launcher writes it: ``[stratum, quota, [[key, unit,
    source], …], [modality, region, label]]`` (a stratum's candidates share its fields)."""
    return [[s, q, [[i.key, unit_of[i.key], i.source] for i in cands],
             [cands[0].modality, cands[0].region, cands[0].label]] for s, q, cands in plan]


def benchmark_images(ctx, strata: list, reports: list[dict]) -> tuple[list[tuple[dict, bytes]], dict]:
    """``(picked, short)``: the chosen images' records and stored bytes, sorted by image id,
    and per stratum how many it lacks (too few accepted candidates)."""
    accepted = {r["unit"]: r["cases"] for r in reports}
    tree = InputTree(ctx.input_root)
    picked: list[tuple[dict, bytes]] = []
    from_shards: dict[str, set[str]] = {}
    short = {}
    for stratum, quota, candidates, (modality, region, label) in strata:
        taken = 0
        for key, unit, source in candidates:
            if taken == quota:
                break
            case = accepted.get(unit, {}).get(key)
            if case is None:
                continue
            taken += 1
            data = None if tree.remote else _stored_image(tree, key, source, case[1])
            if data is None:
                from_shards.setdefault(unit, set()).add(key)
            else:
                picked.append((image_record(key, "test", modality, region, label), data))
        if taken < quota:
            short[stratum] = quota - taken
    for unit, wanted in sorted(from_shards.items()):
        picked += _from_shard(ctx.output, unit, wanted)
    picked.sort(key=lambda x: x[0]["image_id"])
    return picked, short


def _stored_image(tree: InputTree, key: str, source: str, content: str) -> bytes | None:
    """An accepted image's stored bytes from its input file while that is the file extracted
    (``content``: the receipt's content digest); else ``None``."""
    try:
        with open(tree.path(source), "rb") as f:
            data = f.read()
    except OSError:
        return None
    return bytes(strip_png_metadata(data)) if keys.digest(key, data) == content else None


def _from_shard(output: str, unit: str, wanted: set[str]) -> list[tuple[dict, bytes]]:
    """The ``wanted`` images of a unit's alignment shard, memory-mapped when local: only
    those rows' bytes are copied out."""
    rel = f"alignment/{unit}.parquet"
    path = shards.join(output, rel)
    # (pq.ParquetFile: pq.read_table imports pyarrow.dataset and pandas, 0.2 s)
    table = pq.ParquetFile(io.BytesIO(shards.read_bytes(output, rel)) if "://" in path else path,
                           memory_map=True).read(list(TREE_PAYLOAD_SCHEMA.names))
    table = kernels.filter(table, kernels.is_in(table["image_id"], pyarrays.array(sorted(wanted), pa.string())))
    columns = [table[c].to_pylist() for c in ("image_id", "modality", "region", "label")]
    return [(image_record(key, "test", *fields), image["bytes"])
            for key, *fields, image in zip(*columns, table["image"].to_pylist())]
