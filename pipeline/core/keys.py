"""Stable keys, seeded randomness, pseudonyms, splits and shards.

Contract (changing anything here changes every corpus ever built):

* Keys come from identity, never from arrival order, ``hash()``, wall time
  or the machine.  All digests are SHA-256 (``hashlib``) or HMAC-SHA256.
* :func:`rng` returns a fresh ``numpy.random.Generator`` seeded from
  ``(seed, key, purpose)``; every random choice in radvqa uses its own one.
  :func:`rng_integers` gives the integers those generators draw, many keys at once.
* :func:`pseudonym` maps identifying text (a source-relative path, a patient
  id) to a keyed HMAC-SHA256 digest, so the corpus never carries the text.
* :func:`assign_split` maps a patient key to a split by thresholding a keyed
  uniform number against cumulative fractions.  A patient's split depends on
  its key and the fractions only: adding patients never moves others.
* :func:`plan_shards` range-partitions sorted keys into contiguous shards
  (TFDS style), so shard membership is a function of the key set only;
  shard *names* are :mod:`pipeline.schema.layout`'s.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
import os
import re
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

#: Used when neither the environment nor the recipe sets a pseudonym key.
DEFAULT_PSEUDONYM_KEY = "radvqa-default-pseudonym-key"
PSEUDONYM_KEY_ENV = "RADVQA_PSEUDONYM_KEY"
KEY_HEX_CHARS = 20


#: Set in the 8-byte length prefix of a bytes part: no text part is 2**63 bytes long, so a
#: bytes part never hashes like the text of the same bytes (``b"x"`` and ``"x"`` differ).
_BYTES_TAG = 1 << 63


def digest(*parts: object) -> str:
    """SHA-256 hex digest of ``parts`` joined unambiguously (length-prefixed).

    A ``bytes``-like part is hashed as its bytes (its length prefix tagged), anything
    else as the UTF-8 of ``str(part)`` — so ``digest("x", 1) == digest("x", "1")``.
    """
    h = hashlib.sha256()
    for part in parts:
        add_part(h, part)
    return h.hexdigest()


def source_digest(paths: Iterable, *, root=None, dists: Iterable[str] = (),
                  extra: Iterable = ()) -> str:
    """The digest of the code behind a stored result, the key under which a later build
    reuses it: each file's name (relative to ``root``, else its base name) and bytes, in
    the order given; each distribution's installed version (``missing`` when absent);
    then ``extra``."""
    parts: list = []
    for path in paths:
        path = Path(path)
        parts += [path.relative_to(root).as_posix() if root else path.name, path.read_bytes()]
    for dist in dists:
        parts.append(f"{dist}={installed_version(dist)}")
    return digest(*parts, *extra)


@functools.cache
def installed_version(dist: str) -> str:
    """``importlib.metadata.version(dist)``, ``"missing"`` when it is not installed; read from
    the metadata file's header lines alone.  ``version()`` parses the whole file with the email
    parser (numpy's holds its licences): 0.5 ms a look-up, and a regenerate of the sample made
    16 of them for 9 distributions (measured).  The distribution is found as
    ``importlib.metadata`` finds it (:func:`_metadata_file`); only when that cannot be done
    from the directory listings alone is ``importlib.metadata`` imported (its import is
    ~12 ms of every regenerate's CPU: email, zipfile, csv; measured)."""
    found = _metadata_file(dist)
    if found is not None:
        with open(found, encoding="utf-8") as f:
            version = _header_version(f)
        if version is not None:
            return version
    # importlib.metadata only here: its import (email, zipfile, csv) is ~12 ms of a regenerate
    from importlib import metadata

    try:
        found = metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return "missing"
    text = found.read_text("METADATA") or found.read_text("PKG-INFO") or ""
    version = _header_version(text.splitlines())
    return found.version if version is None else version


def _header_version(lines) -> str | None:
    """The ``Version`` header of a metadata file's lines (``None``: not in its headers)."""
    for line in lines:
        if not line.strip():  # the end of the headers
            break
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() == "version":
            return value.strip()
    return None


def _normalised(name: str) -> str:
    """A distribution's name as importlib.metadata compares them (``Prepared.normalize``)."""
    return re.sub(r"[-_.]+", "-", name).lower().replace("-", "_")


@functools.cache
def _listed(root: str) -> dict[str, list[str]]:
    """The ``*.dist-info`` and ``*.egg-info`` entries of a folder by their normalised
    distribution name (the part before the first ``-``), in listing order; listed once a
    process, as importlib.metadata lists each ``sys.path`` folder once."""
    out: dict[str, list[str]] = {}
    try:
        names = os.listdir(root)
    except OSError:
        return out
    for n in names:
        low = n.lower()
        if low.endswith((".dist-info", ".egg-info")):
            out.setdefault(_normalised(low.rpartition(".")[0].partition("-")[0]), []).append(n)
    return out


def _metadata_file(dist: str) -> str | None:
    """The metadata file of the distribution ``importlib.metadata.distribution(dist)`` finds,
    found the way it searches: the first ``sys.path`` folder listing a ``*.dist-info`` or
    ``*.egg-info`` folder whose name, normalised, is the distribution's.  ``None`` (the
    caller asks ``importlib.metadata``) when this is not certain from folder listings: a
    ``sys.path`` entry that is a file (a zip), a finder of distributions besides the path's,
    no match, two matches in one folder (``importlib.metadata`` takes the first listed), or
    a match without its metadata file."""
    if any(hasattr(finder, "find_distributions") and getattr(finder, "__name__", "") != "PathFinder"
           and type(finder).__name__ != "PathFinder" for finder in sys.meta_path):
        return None
    wanted = _normalised(dist)
    for entry in sys.path:
        root = entry or "."
        if os.path.isfile(root) or root.lower().rstrip("/").endswith(".egg"):
            return None  # a zip, or an egg's folder (its EGG-INFO): importlib.metadata's
        matches = _listed(root).get(wanted)
        if not matches:
            continue
        if len(matches) > 1:
            return None
        name = matches[0]
        path = os.path.join(root, name, "METADATA" if name.lower().endswith(".dist-info") else "PKG-INFO")
        return path if os.path.isfile(path) else None
    return None


def add_part(h, part: object) -> None:
    """Add one part of :func:`digest` to the hash ``h``: its 8-byte length prefix (tagged
    for bytes), then its bytes — for callers that hash a common prefix once and copy it."""
    if isinstance(part, (bytes, bytearray, memoryview)):
        h.update((len(part) | _BYTES_TAG).to_bytes(8, "big"))
        h.update(part)
    else:
        data = str(part).encode("utf-8")
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)


def stable_key(*parts: object, n: int = KEY_HEX_CHARS) -> str:
    """Short stable identifier (hex) derived from ``parts``."""
    return digest(*parts)[:n]


def stable_keys_under(*prefix: object, n: int = KEY_HEX_CHARS):
    """``key(*parts)`` equal to ``stable_key(*prefix, *parts, n=n)``, with ``prefix`` hashed
    once: for the many ids of one image (its questions' ``qa_id``)."""
    h = hashlib.sha256()
    for part in prefix:
        add_part(h, part)

    def key(*parts: object) -> str:
        c = h.copy()
        for part in parts:
            if type(part) is str:  # its length prefix and bytes in one update
                c.update(_FRAMED.get(part) or _framed(part))
            else:
                add_part(c, part)
        return c.hexdigest()[:n]
    return key


#: :func:`add_part`'s bytes of a text part (length prefix + UTF-8), by text: the few names
#: under which many keys are made (a question family's ``qa_id`` part, once per image).
_FRAMED: dict[str, bytes] = {}


def _framed(part: str) -> bytes:
    data = part.encode("utf-8")
    framed = len(data).to_bytes(8, "big") + data
    if len(_FRAMED) < 4096:
        _FRAMED[part] = framed
    return framed


def rng(seed: int, key: str, purpose: str) -> np.random.Generator:
    """A generator seeded from ``(seed, key, purpose)`` and nothing else."""
    d = hashlib.sha256(f"{int(seed)}\x1f{key}\x1f{purpose}".encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(d[:16], "big")))


def rng_integers(seed: int, keys: Sequence[str], purpose: str, highs: Sequence[int]) -> list[int]:
    """``[int(rng(seed, key, purpose).integers(high)) for key, high in zip(keys, highs)]``,
    the same integers, without making the generators: their seeds' ``SeedSequence`` pools
    mixed for all the keys at once in ``uint64`` arrays (the hash constants it walks through
    are the same for every seed), each ``PCG64``'s first output from its state, and numpy's
    bounded draw from it (Lemire's, on the output's low then high 32 bits).  About a fifth
    of the generators' time for a plane's 72 images; checked against numpy for every path
    (``tests/test_keys.py``), the rare third draw left to the generator itself."""
    data = b"".join(hashlib.sha256(f"{int(seed)}\x1f{key}\x1f{purpose}".encode()).digest()[:16]
                    for key in keys)
    u = np.uint64
    words = np.frombuffer(data, ">u4").reshape(-1, 4)[:, ::-1].astype(u)  # least significant first
    pool = list(_hashmix(words, *_SS_INIT).T)
    for (src, dst), (x, m) in zip(_SS_PAIRS, _SS_MIX):
        r = (u(0xCA01F9DD) * pool[dst] - u(0x4973F715) * _hashmix(pool[src], x, m)) & u(0xFFFFFFFF)
        pool[dst] = r ^ r >> u(16)
    state = _hashmix(np.stack(pool, 1)[:, [0, 1, 2, 3, 0, 1, 2, 3]], *_SS_OUT)
    seeds, out = (state[:, 1::2] << u(32) | state[:, 0::2]).tolist(), []  # PCG64's 4 uint64
    for key, high, (s0, s1, s2, s3) in zip(keys, highs, seeds):
        if not 1 <= high < 1 << 32:
            out.append(int(rng(seed, key, purpose).integers(high)))
            continue
        inc = (s2 << 64 | s3) << 1 & _M128 | 1  # PCG64 seeded, then stepped once: its output
        s = ((inc + (s0 << 64 | s1)) * _PCG_MULT + inc) * _PCG_MULT + inc & _M128
        x, rot = (s >> 64 ^ s) & _M64, s >> 122
        raw = (x >> rot | x << (64 - rot)) & _M64
        m, threshold = (raw & 0xFFFFFFFF) * high, (2 ** 32 - high) % high
        if m & 0xFFFFFFFF < threshold:
            m = (raw >> 32) * high
            if m & 0xFFFFFFFF < threshold:
                m = int(rng(seed, key, purpose).integers(high)) << 32
        out.append(m >> 32)
    return out


def _hashmix(values: np.ndarray, x, m) -> np.ndarray:
    """``SeedSequence``'s hashmix of 32-bit ``values`` (uint64) with hash constants ``x``
    before and ``m`` after its step."""
    h = (values ^ x) * m & np.uint64(0xFFFFFFFF)
    return h ^ h >> np.uint64(16)


def _ss_constants(init: int, mult: int, n: int) -> list[tuple[int, int]]:
    out = []
    for _ in range(n):
        out.append((init, init * mult & 0xFFFFFFFF))
        init = out[-1][1]
    return out


_SS_A = _ss_constants(0x43B0D7E5, 0x931E8875, 16)  # numpy's INIT_A, MULT_A: the pool's mixing
_SS_INIT = tuple(np.array(c, np.uint64) for c in zip(*_SS_A[:4]))
_SS_MIX = [(np.uint64(x), np.uint64(m)) for x, m in _SS_A[4:]]
_SS_PAIRS = [(src, dst) for src in range(4) for dst in range(4) if src != dst]
_SS_OUT = tuple(np.array(c, np.uint64) for c in zip(*_ss_constants(0x8B51F9DD, 0x58F38DED, 8)))
_PCG_MULT, _M128, _M64 = 0x2360ED051FC65DA44385DF649FCCF645, (1 << 128) - 1, (1 << 64) - 1


def unit_interval(seed: int, key: str, purpose: str) -> float:
    """A uniform number in [0, 1) derived from ``(seed, key, purpose)``."""
    d = hashlib.sha256(f"{int(seed)}\x1f{key}\x1f{purpose}".encode()).digest()
    return int.from_bytes(d[:8], "big") / 2.0**64


def unit_intervals(seed: int, key: str, purpose: str) -> tuple[float, ...]:
    """Eight uniforms in [0, 1) derived from ``(seed, key, purpose)`` by one SHA-512: for a
    caller that needs several per key (one hash instead of eight)."""
    d = hashlib.sha512(f"{int(seed)}\x1f{key}\x1f{purpose}".encode()).digest()
    return tuple(int.from_bytes(d[i:i + 8], "big") / 2.0**64 for i in range(0, 64, 8))


def resolve_pseudonym_key(recipe_key: str | None = None) -> tuple[str, bool]:
    """Return ``(key, is_default)``; the environment wins over the recipe."""
    key = os.environ.get(PSEUDONYM_KEY_ENV) or recipe_key
    if key:
        return key, False
    return DEFAULT_PSEUDONYM_KEY, True


def warn_if_default_key(is_default: bool) -> None:
    if is_default:
        warnings.warn(
            f"pseudonyms use the built-in default key; set ${PSEUDONYM_KEY_ENV} "
            "(or the recipe's privacy.pseudonym_key) for real data",
            stacklevel=2,
        )


def pseudonym(key: str, kind: str, text: str, n: int = KEY_HEX_CHARS) -> str:
    """Keyed HMAC-SHA256 pseudonym of ``text`` within namespace ``kind``."""
    mac = hmac.new(key.encode("utf-8"), f"{kind}\x1f{text}".encode(), hashlib.sha256)
    return mac.hexdigest()[:n]


def pseudonyms_under(key: str, kind: str, n: int = KEY_HEX_CHARS):
    """``name(text)`` equal to ``pseudonym(key, kind, text, n)``: the HMAC keyed and fed the
    namespace once, copied for each text (a tree's discovery names every image: 10K
    pseudonyms 0.026 -> 0.015 s of CPU, measured)."""
    base = hmac.new(key.encode("utf-8"), f"{kind}\x1f".encode(), "sha256")

    def name(text: str) -> str:
        mac = base.copy()
        mac.update(text.encode())
        return mac.hexdigest()[:n]
    return name


def assign_split(patient_key: str, fractions: Mapping[str, float], seed: int) -> str:
    """Split of a patient: keyed uniform number against cumulative fractions.

    ``fractions`` is iterated in the order given (recipes list train first).
    """
    total = float(sum(fractions.values()))
    if total <= 0 or any(v < 0 for v in fractions.values()):
        raise ValueError(f"splits: fractions must be >= 0 and sum > 0, got {dict(fractions)}")
    u = unit_interval(seed, patient_key, "split")
    acc = 0.0
    names = list(fractions)
    for name in names:
        acc += fractions[name] / total
        if u < acc:
            return name
    return names[-1]


def plan_shards(keys: Iterable[str], items_per_shard: int) -> list[list[str]]:
    """Range-partition the sorted ``keys`` into contiguous, near-equal shards."""
    ordered = sorted(set(keys))
    if not ordered:
        return []
    if items_per_shard < 1:
        raise ValueError(f"items_per_shard must be >= 1, got {items_per_shard}")
    n = math.ceil(len(ordered) / items_per_shard)
    bounds = [i * len(ordered) // n for i in range(n + 1)]
    return [ordered[bounds[i] : bounds[i + 1]] for i in range(n)]


def choose(gen: np.random.Generator, items: Sequence, k: int) -> list:
    """``k`` distinct items drawn without replacement, in draw order."""
    if k > len(items):
        raise ValueError(f"cannot choose {k} of {len(items)} items")
    idx = gen.choice(len(items), size=k, replace=False)
    return [items[int(i)] for i in idx]


class KeyedStream:
    """A light deterministic random stream seeded by ``(seed, key, purpose)``.

    Each draw is ``sha256(prefix, counter)``: no generator state to construct,
    about a microsecond per draw — what the 7.5M-question text path needs.
    Offers the subset of ``numpy.random.Generator`` that radvqa's samplers use
    (``integers(n)``, ``random()``), so either can be passed to them.
    """

    __slots__ = ("_seed", "_key", "_purpose", "_prefix", "_n")

    def __init__(self, seed: int, key: str, purpose: str):
        # hashed on the first draw: many streams a question generator opens are never drawn
        self._seed, self._key, self._purpose = seed, key, purpose
        self._prefix = None
        self._n = 0

    def _u64(self) -> int:
        if self._prefix is None:
            self._prefix = hashlib.sha256(
                f"{int(self._seed)}\x1f{self._key}\x1f{self._purpose}".encode()).digest()
        self._n += 1
        d = hashlib.sha256(self._prefix + self._n.to_bytes(8, "big")).digest()
        return int.from_bytes(d[:8], "big")

    def random(self) -> float:
        """Uniform in [0, 1)."""
        return (self._u64() >> 11) / float(1 << 53)

    def integers(self, n: int) -> int:
        """Uniform integer in ``[0, n)`` (rejection sampling: no modulo bias)."""
        if n < 1:
            raise ValueError(f"integers: n must be >= 1, got {n}")
        limit = (1 << 64) - ((1 << 64) % n)
        while True:
            v = self._u64()
            if v < limit:
                return v % n
