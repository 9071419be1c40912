"""RadImageNet-style labelled 2D trees: source, label pools, questions, benchmark.

Input layout: ``<root>/<modality>/<region>/<label>/<image>.png`` (RadImageNet's
``radiology_ai/CT|MR/...``; ``US`` has no label level and is not selected by
the recipe), optionally with ``RadiologyAI_{train,val,test}.csv`` (a
``filename`` column) beside or above the tree.  One image is one case.

* Keys: ``image_id`` is an HMAC pseudonym of the path relative to the root;
  file names never reach the corpus.
* Splits: the CSVs when present (``val`` → ``validation``), else a keyed hash
  of the image key with the recipe's fractions.
* Images pass through as stored bytes; each is checked (PNG signature, chunk
  CRCs, IHDR, a pixel limit against decompression bombs, and a full inflate of
  its data to the size the header promises) and goes to the dead letters when
  it fails.
* Questions: nine per image plus a caption (template families under
  ``templates/radimagenet``), drawn from :class:`LabelPools`: anatomy options
  from the other regions of the same modality, pathology options from the same
  region, never a synonym of the answer.
* Benchmark: a stratified (modality × region × pathology) draw of test images,
  planned on the launcher from the file list alone, so it never depends on
  shards or workers.
"""

from __future__ import annotations

import csv
import io
import math
import os
import struct
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core import keys
from pipeline.errors import CaseError, ConfigError

SPLIT_CSV = {"train": "RadiologyAI_train.csv", "validation": "RadiologyAI_val.csv",
             "test": "RadiologyAI_test.csv"}
IMAGE_SUFFIXES = (".png",)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DEFAULT_MAX_PIXELS = 50_000_000
#: Top-level folders the recipe does not select are counted by name only when the name is a
#: DICOM modality code (PS3.3 C.7.3.1.1.1); any other folder counts as
#: ``excluded_modality_other``: the counts reach the manifest, the card and the report, and
#: a stray folder's name may identify someone.
MODALITY_CODES = frozenset({
    "AR", "AS", "ASMT", "AU", "BDUS", "BI", "BMD", "CD", "CF", "CP", "CR", "CS", "CT", "DD",
    "DF", "DG", "DM", "DOC", "DS", "DX", "EC", "ECG", "EPS", "ES", "FA", "FID", "FS", "GM",
    "HC", "HD", "IO", "IOL", "IVOCT", "IVUS", "KER", "KO", "LEN", "LP", "LS", "MA", "MG",
    "MR", "MS", "NM", "OAM", "OCT", "OP", "OPM", "OPR", "OPT", "OPV", "OSS", "OT", "PLAN",
    "PR", "PT", "PX", "REG", "RESP", "RF", "RG", "RTDOSE", "RTIMAGE", "RTPLAN", "RTRECORD",
    "RTSTRUCT", "RWV", "SEG", "SM", "SMR", "SR", "SRF", "ST", "STAIN", "TG", "US", "VA",
    "VF", "XA", "XC",
})


# --------------------------------------------------------------------------- pools


@dataclass(frozen=True)
class LabelPools:
    """Regions and labels per modality, display names, abnormal flags, synonyms."""

    modalities: dict  # modality -> {"display", "metadata", "regions": {region: {"display", "aliases", "labels"}}}
    normal_label: str = "normal"
    normal_display: str = "no pathology seen"
    overrides: dict = field(default_factory=dict)
    synonyms: dict = field(default_factory=dict)  # label -> frozenset of its group
    added: tuple = ()  # (modality, region, label) found in the tree, not in the pools

    # Pools protocol used by the shared samplers -------------------------------
    def known(self, label: str) -> bool:
        return any(label in r["labels"] for m in self.modalities.values() for r in m["regions"].values())

    def display(self, label: str) -> str:
        if label == self.normal_label:
            return self.normal_display
        return self.overrides.get(label) or label.replace("_", " ").strip()

    def related(self, a: str, b: str) -> bool:
        return a == b or b in self.synonyms.get(a, ()) or self.display(a).lower() == self.display(b).lower()

    # Label facts --------------------------------------------------------------
    def is_abnormal(self, label: str) -> bool:
        return label != self.normal_label

    def modality_display(self, modality: str) -> str:
        return self.modalities[modality]["display"]

    def modality_metadata(self, modality: str) -> str:
        return self.modalities[modality]["metadata"]

    def region_display(self, modality: str, region: str) -> str:
        return self.modalities[modality]["regions"][region]["display"]

    def regions(self, modality: str) -> list[str]:
        return sorted(self.modalities[modality]["regions"])

    def labels(self, modality: str, region: str) -> list[str]:
        return sorted(self.modalities[modality]["regions"][region]["labels"])

    def resolve_region(self, modality: str, folder: str) -> str:
        """Region id for a folder name (id, display or alias, case-insensitive)."""
        wanted = folder.lower().replace(" ", "_")
        for rid, r in self.modalities.get(modality, {}).get("regions", {}).items():
            names = {rid.lower(), r["display"].lower().replace(" ", "_")}
            names |= {a.lower().replace(" ", "_") for a in r.get("aliases", ())}
            if wanted in names:
                return rid
        return folder

    def with_observed(self, triples: Iterable[tuple[str, str, str]]) -> LabelPools:
        """Pools extended by the (modality, region, label) triples found in a tree."""
        mods = {m: {**v, "regions": {r: {**rv, "labels": set(rv["labels"])} for r, rv in v["regions"].items()}}
                for m, v in self.modalities.items()}
        added = []
        for modality, region, label in sorted(set(triples)):
            mod = mods.setdefault(modality, {"display": modality, "metadata": modality.lower(),
                                             "regions": {}})
            reg = mod["regions"].setdefault(
                region, {"display": region.replace("_", " ").strip(), "aliases": (), "labels": set()})
            if label not in reg["labels"]:
                reg["labels"].add(label)
                added.append((modality, region, label))
        for mod in mods.values():
            for reg in mod["regions"].values():
                reg["labels"] = tuple(sorted(reg["labels"] | {self.normal_label}))
        return LabelPools(mods, self.normal_label, self.normal_display, self.overrides,
                          self.synonyms, tuple(added))

    def draw(self, answer: str, candidates: list[str], k: int, gen) -> list[str]:
        """``k`` of ``candidates`` (sorted first), never the answer or its synonyms."""
        pool = sorted(c for c in set(candidates) if not self.related(answer, c))
        out: list[str] = []
        while len(out) < k and pool:
            pick = pool.pop(gen.integers(len(pool)))
            if all(not self.related(pick, x) for x in out):
                out.append(pick)
        return out


def load_label_pools(paths: Iterable[str | Path]) -> LabelPools:
    from pipeline.config.recipes import load_yaml
    from pipeline.config.validation import validate

    modalities: dict = {}
    overrides: dict = {}
    synonyms: dict = defaultdict(set)
    normal = ("normal", "no pathology seen")
    for path in paths:
        data = load_yaml(Path(path))
        validate(data, "label_pool", str(path))
        normal = (data.get("normal_label", normal[0]), data.get("normal_display", normal[1]))
        for m, spec in data["modalities"].items():
            mod = modalities.setdefault(m, {"display": spec["display"], "metadata": spec["metadata"],
                                            "images": spec.get("images"), "regions": {}})
            for rid, r in spec["regions"].items():
                if rid in mod["regions"]:
                    raise ConfigError(f"{path}: modalities.{m}.regions.{rid}: defined twice")
                mod["regions"][rid] = {
                    "display": r["display"], "aliases": tuple(r.get("aliases", ())),
                    "images": r.get("images"),
                    "labels": {name: (v or {}).get("images") for name, v in r["labels"].items()},
                }
        overrides.update(data.get("display_overrides") or {})
        for group in data.get("synonym_groups") or []:
            for label in group:
                synonyms[label] |= set(group) - {label}
    for m in modalities.values():
        for r in m["regions"].values():
            r["counts"] = dict(r["labels"])
            r["labels"] = tuple(sorted(set(r["labels"]) | {normal[0]}))
    return LabelPools(modalities, normal[0], normal[1], overrides,
                      {k: frozenset(v) for k, v in synonyms.items()})


# -------------------------------------------------------------------------- source


@dataclass(frozen=True)
class TreeImage:
    """One planned image: key, source path (relative; dead letters only), labels, split."""

    key: str
    source: str
    modality: str
    region: str
    label: str
    split: str


def read_split_csvs(root) -> dict[str, str]:
    """``{relative path suffix: split}`` from ``RadiologyAI_*.csv`` in the input folder, or
    in the folder above it (where RadImageNet ships them, beside ``radiology_ai/``)."""
    from pipeline.inputs.tree import InputTree, is_remote

    tree = root if isinstance(root, InputTree) else InputTree(root)
    parent = tree.root.rsplit("/", 1)[0] if is_remote(tree.root) else os.path.dirname(tree.root)
    table: dict[str, str] = {}
    for where in (tree, InputTree(parent) if parent and parent != tree.root else None):
        if where is None:
            continue
        for split, name in SPLIT_CSV.items():
            if not where.isfile(name):
                continue
            reader = csv.DictReader(io.StringIO(where.read_bytes(name).decode("utf-8-sig")))
            if "filename" not in (reader.fieldnames or []):
                raise ConfigError(f"{where.path(name)}: columns: found {reader.fieldnames}, "
                                  "expected 'filename'")
            for row in reader:
                table[_norm(row["filename"])] = split
        if table:
            break
    return table


def _norm(path: str) -> str:
    parts = path.replace("\\", "/").strip("/").split("/")
    return "/".join(parts[-4:])  # modality/region/label/file


def discover_tree(
    root, *, modalities: Iterable[str], pools: LabelPools, pseudonym_key: str,
    fractions: Mapping[str, float], seed: int,
) -> tuple[list[TreeImage], list[dict], dict]:
    """Walk ``root``; returns ``(images sorted by key, rejects, stats)``.

    ``stats`` counts files excluded by the recipe's modality selection and
    images whose split came from the CSVs or from the hash.
    """
    from pipeline.inputs.tree import InputTree

    tree = root if isinstance(root, InputTree) else InputTree(root)
    if not tree.exists():
        raise FileNotFoundError(f"--input: {tree.root} is not a directory")
    wanted = {m.upper() for m in modalities}
    split_table = read_split_csvs(tree)
    images, rejects = [], []
    stats: Counter = Counter()
    for modality_dir in tree.listdir(""):
        if not tree.isdir(modality_dir):
            continue
        modality = {"MRI": "MR"}.get(modality_dir.upper(), modality_dir.upper())
        files = tree.walk_files(modality_dir)
        if modality not in wanted:
            name = modality if modality in MODALITY_CODES else "other"
            stats[f"excluded_modality_{name}"] += len(files)
            continue
        for rel in files:
            rel_dir, name = rel.rsplit("/", 1)
            if rel_dir.count("/") != 2 or not name.lower().endswith(IMAGE_SUFFIXES):
                rejects.append({"source": rel, "stage": "discover", "reason": "source.not_in_layout",
                                "message": "path: expected <modality>/<region>/<label>/<image>.png"})
                continue
            _, region_dir, label = rel_dir.split("/")
            region = pools.resolve_region(modality, region_dir)
            key = keys.pseudonym(pseudonym_key, "image", rel)
            split = split_table.get(_norm(rel))
            if split is None:
                split = keys.assign_split(key, fractions, seed)
                stats["split_by_hash"] += 1
            else:
                stats["split_by_csv"] += 1
            images.append(TreeImage(key, rel, modality, region, label, split))
    images.sort(key=lambda i: i.key)
    return images, rejects, dict(stats)


def check_png(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, rel: str = "") -> tuple[int, int]:
    """Validate a PNG without trusting it; returns ``(width, height)``.

    Checks the signature, every chunk's length and CRC, the IHDR fields, a
    pixel limit (``max_pixels``, against decompression bombs: a few KB of
    IDAT can promise gigabytes) and a full inflate of the image data, bounded
    by the size the header promises.

    Raises :class:`CaseError` (``image.unreadable`` or ``image.too_large``)
    naming the field, the value found and the value expected; ``rel`` (the
    file relative to the input root) becomes the error's path.
    """

    def fail(reason: str, message: str, cause: Exception | None = None) -> CaseError:
        err = CaseError("read", reason, message, rel)
        err.__cause__ = cause
        return err

    if data[:8] != PNG_SIGNATURE:
        raise fail("image.unreadable",
                   f"signature: found {data[:8]!r}, expected the PNG signature {PNG_SIGNATURE!r}")
    pos, width = 8, None
    idat = []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        name = kind.decode("latin-1")
        chunk = data[pos + 8:pos + 8 + length]
        crc = data[pos + 8 + length:pos + 12 + length]
        if len(chunk) != length or len(crc) != 4:
            raise fail("image.unreadable",
                       f"chunk {name!r} at byte {pos}: truncated: found {len(data) - pos - 8} bytes, "
                       f"expected {length} + 4 (CRC)")
        actual = zlib.crc32(kind + chunk) & 0xFFFFFFFF
        stored = struct.unpack(">I", crc)[0]
        if actual != stored:
            raise fail("image.unreadable",
                       f"chunk {name!r} at byte {pos}: CRC mismatch: found {stored:#010x}, "
                       f"expected {actual:#010x}")
        if kind == b"IHDR":
            if length != 13:
                raise fail("image.unreadable", f"IHDR: found {length} bytes, expected 13")
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
            if width == 0 or height == 0:
                raise fail("image.unreadable",
                           f"IHDR: found {width}x{height} pixels, expected at least 1x1")
            allowed = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
            if depth not in allowed.get(color, ()):
                raise fail("image.unreadable",
                           f"IHDR: found colour type {color} with bit depth {depth}, expected one of "
                           f"the PNG combinations {allowed}")
            if width * height > max_pixels:
                raise fail("image.too_large",
                           f"IHDR: found {width}x{height} = {width * height} pixels, expected at most "
                           f"{max_pixels} (decompression bomb guard)")
        elif kind == b"IDAT":
            if width is None:
                raise fail("image.unreadable", f"chunk 'IDAT' at byte {pos}: found before IHDR, "
                                               "expected IHDR first")
            idat.append(chunk)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if width is None or not idat:
        raise fail("image.unreadable",
                   f"chunks: found {'no IHDR' if width is None else 'no IDAT'}, expected IHDR and IDAT")
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color]
    row = 1 + math.ceil(width * channels * depth / 8)
    expected = row * height if not interlace else None
    limit = expected if expected is not None else 2 * row * height
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(b"".join(idat), limit + 1)
    except zlib.error as err:
        raise fail("image.unreadable", f"IDAT: cannot inflate: {err}", err) from err
    if expected is not None and len(raw) != expected:
        raise fail("image.unreadable",
                   f"IDAT: found {'more' if len(raw) > expected else 'less'} image data than IHDR "
                   f"promises: inflated to {len(raw)} bytes, expected {expected} for {width}x{height}")
    return width, height


# ----------------------------------------------------------------------- benchmark


def capped_quotas(total: int, weights: Mapping[str, int], cap: float, seed: int, salt: str = "",
                  limits: Mapping[str, int] | None = None) -> dict[str, int]:
    """Integer quotas summing to at most ``total``: in proportion to ``weights``, none above
    its limit (default: its weight) nor above ``cap`` of the sum (water-filling: what a
    capped item cannot take goes to the others in proportion), largest remainders first
    (ties by keyed hash).  With fewer items than ``1 / cap`` the cap is an even share."""
    limits = dict(limits or weights)
    names = sorted(k for k, v in weights.items() if v > 0 and limits.get(k, 0) > 0)
    if not names or total <= 0:
        return {k: 0 for k in weights}
    cap = max(cap, 1.0 / len(names))  # fewer items than 1 / cap: even shares
    n = min(total, capacity({k: limits[k] for k in names}, cap))
    bound = {k: min(limits[k], cap * n) for k in names}
    share: dict[str, float] = {}
    free, budget = set(names), float(n)
    while free:
        weight = sum(weights[k] for k in free)
        fits = {k: budget * weights[k] / weight for k in free}
        over = {k for k in free if fits[k] > bound[k]}
        if not over:
            share.update(fits)
            break
        for k in over:
            share[k] = bound[k]
            budget -= bound[k]
        free -= over
    quotas = {k: int(share.get(k, 0.0)) for k in names}
    order = sorted(names, key=lambda k: (-(share.get(k, 0.0) - quotas[k]),
                                         keys.unit_interval(seed, salt + k, "bench")))
    left = n - sum(quotas.values())
    for k in order:  # largest remainders, within each bound
        if left <= 0:
            break
        if quotas[k] < math.floor(bound[k] + 1e-9):
            quotas[k] += 1
            left -= 1
    return {k: quotas.get(k, 0) for k in weights}


def capacity(limits: Mapping[str, int], cap: float) -> int:
    """The largest total ``Q`` that items of these sizes can fill with none above
    ``floor(cap * Q)`` (not monotone in ``Q`` because of the floor: scanned downwards)."""
    sizes = sorted(limits.values())
    for q in range(sum(sizes), 0, -1):
        per = math.floor(cap * q + 1e-9)
        if sum(min(v, per) for v in sizes) >= q:
            return q
    return 0


def select_benchmark(
    images: list[TreeImage], n_images: int, seed: int, cap: float = 0.25, options: int = 4,
) -> list[tuple[str, int, list[TreeImage]]]:
    """Stratified benchmark plan over the test images: ``[(stratum, quota, candidates)]``.

    Strata are modality × region × pathology.  Quotas follow the test split's proportions
    — modality by size; within a modality each region, and within a region each label, in
    proportion to its size but never more than ``cap`` (a quarter) of its parent's quota,
    or an even share where there are fewer than four (:func:`capped_quotas`); images the
    rounding leaves over go one each to the strata with most images left.  Regions whose
    test images hold fewer than ``options`` labels are left out.  The cap is what lets the benchmark's multiple-choice
    questions be fair: an answer that is more than a quarter of its region (78 % of MR hip
    images are labral pathology) would be the best blind guess whenever it is offered.
    Each stratum's candidates are ordered by a keyed hash and the first ``quota`` readable
    ones are taken: deterministic, and independent of shards and workers.
    """
    tree: dict[str, dict[str, dict[str, list[TreeImage]]]] = {}
    for img in images:
        if img.split == "test":
            tree.setdefault(img.modality, {}).setdefault(img.region, {}).setdefault(
                img.label, []).append(img)
    if n_images <= 0:
        return []
    # A region whose test images hold fewer labels than a question has options cannot
    # give four same-region options: it stays out of the benchmark (and is reported).
    for m in list(tree):
        for r in [r for r, labels in tree[m].items() if len(labels) < options]:
            del tree[m][r]
        if not tree[m]:
            del tree[m]
    if not tree:
        return []

    def even(n_items: int) -> float:
        return max(cap, 1.0 / n_items)

    cap_r = {(m, r): capacity({lab: len(v) for lab, v in labels.items()}, even(len(labels)))
             for m, regions in tree.items() for r, labels in regions.items()}
    cap_m = {m: capacity({r: cap_r[(m, r)] for r in regions}, even(len(regions)))
             for m, regions in tree.items()}
    n = min(n_images, sum(cap_m.values()))
    sizes_m = {m: sum(len(x) for r in regions.values() for x in r.values())
               for m, regions in tree.items()}
    q_m = capped_quotas(n, sizes_m, 1.0, seed, "m/", limits=cap_m)
    quotas: dict[tuple[str, str, str], int] = {}
    for m in sorted(tree):
        regions = tree[m]
        q_r = capped_quotas(q_m[m], {r: sum(len(x) for x in labels.values())
                                     for r, labels in regions.items()}, cap, seed, f"{m}/",
                            limits={r: cap_r[(m, r)] for r in regions})
        for r in sorted(regions):
            labels = regions[r]
            q_l = capped_quotas(q_r[r], {lab: len(v) for lab, v in labels.items()}, cap, seed,
                                f"{m}/{r}/")
            for lab in sorted(labels):
                quotas[(m, r, lab)] = q_l[lab]
    # Floors can leave a few images unplaced: give them, one each, to the strata with the
    # most images left (a cap may then be passed by one image).
    left = n - sum(quotas.values())
    spare = sorted(quotas, key=lambda k: (-(len(tree[k[0]][k[1]][k[2]]) - quotas[k]),
                                          keys.unit_interval(seed, "/".join(k), "bench")))
    for k in spare:
        if left <= 0:
            break
        if quotas[k] < len(tree[k[0]][k[1]][k[2]]):
            quotas[k] += 1
            left -= 1
    plan = []
    for (m, r, lab), q in sorted(quotas.items()):
        if q:
            ranked = sorted(tree[m][r][lab], key=lambda i: keys.unit_interval(seed, i.key, "bench-rank"))
            plan.append((f"{m}/{r}/{lab}", q, ranked))
    return plan


# ----------------------------------------------------------------- synthetic tree


def label_frequencies(pools: LabelPools, modality: str) -> dict[tuple[str, str], float]:
    """``{(region, label): weight}`` from the pools' image counts.

    MR: the listed label counts, and per region the rest of its image count as
    ``normal``.  CT (no counts known): 30 % normal, the rest uniform, regions
    equal — an assumption, stated in the README.
    """
    weights: dict[tuple[str, str], float] = {}
    mod = pools.modalities[modality]
    for rid, r in sorted(mod["regions"].items()):
        counts = {k: v for k, v in r.get("counts", {}).items() if v}
        if counts:
            listed = sum(counts.values())
            region_total = r.get("images") or listed
            for label, c in counts.items():
                weights[(rid, label)] = float(c)
            weights[(rid, pools.normal_label)] = float(max(region_total - listed, 0.05 * region_total))
        else:
            labels = [x for x in r["labels"] if x != pools.normal_label]
            weights[(rid, pools.normal_label)] = 0.3
            for label in labels:
                weights[(rid, label)] = 0.7 / max(1, len(labels))
    return weights


def write_tree(root: str | Path, n_images: int, pools: LabelPools, *, seed: int = 0,
               size: int = 16, with_csv: bool = False) -> dict[str, int]:
    """Write a RadImageNet-style tree of ``n_images`` small PNGs with the pools' label
    frequencies (MR and CT in RadImageNet-VQA's 604,775 : 228,902 proportion, plus a
    few US images that the recipe drops).  Deterministic; returns counts per modality.
    """
    import numpy as np

    from pipeline.core.imaging import encode_png

    root = Path(root)
    mods = {m: pools.modalities[m].get("images") or 1 for m in sorted(pools.modalities)}
    total_w = sum(mods.values())
    plan: list[tuple[str, str, str]] = []
    for m, w in mods.items():
        n_mod = round(n_images * w / total_w)
        freqs = label_frequencies(pools, m)
        fw = sum(freqs.values())
        items = sorted(freqs.items())
        alloc = [(k, n_mod * v / fw) for k, v in items]
        counts = {k: int(x) for k, x in alloc}
        rest = n_mod - sum(counts.values())
        for k, _ in sorted(alloc, key=lambda kv: -(kv[1] - int(kv[1])))[:rest]:
            counts[k] += 1
        for (region, label), c in counts.items():
            plan.extend((m, region, label) for _ in range(c))
    plan = plan[:n_images] if len(plan) > n_images else plan
    gen = np.random.Generator(np.random.PCG64(seed))
    base = gen.integers(0, 256, size=(size, size), dtype=np.uint8)
    written: Counter = Counter()
    made_dirs = set()
    csv_rows = defaultdict(list)
    for n, (m, region, label) in enumerate(plan):
        d = root / m / region / label
        if d not in made_dirs:
            d.mkdir(parents=True, exist_ok=True)
            made_dirs.add(d)
        pixels = np.roll(base, n % (size * size)) ^ np.uint8(n % 251)
        name = f"{region}{n:07d}.png"
        (d / name).write_bytes(encode_png(pixels, 1))
        written[m] += 1
        if with_csv:
            split = ("train", "val", "test")[0 if n % 10 < 8 else 1 if n % 10 == 8 else 2]
            csv_rows[split].append(f"radiology_ai/{m}/{region}/{label}/{name}")
    us = root / "US" / "abdomen"
    us.mkdir(parents=True, exist_ok=True)
    for n in range(max(1, n_images // 1000)):
        (us / f"us{n:05d}.png").write_bytes(encode_png(base, 1))
        written["US"] += 1
    if with_csv:
        for split, rows in csv_rows.items():
            (root / f"RadiologyAI_{split}.csv").write_text("filename\n" + "\n".join(rows) + "\n")
    return dict(written)
